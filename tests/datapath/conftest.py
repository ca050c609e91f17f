"""Fixtures for the datapath tests: own namespaces (always removed), compiled test programs."""
from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import lab


@pytest.fixture
def make_netns(require_root: None) -> Iterator[Callable[[], str]]:
    """Factory for fresh network namespaces; every one is removed after the test, pass or
    fail (veths inside, or with one end inside, go with it)."""
    made: list[str] = []

    def make() -> str:
        name = lab.unique()
        made.append(name)
        lab.create_netns(name)
        return name

    yield make
    for name in reversed(made):
        lab.remove_netns(name)


@pytest.fixture
def ns(make_netns: Callable[[], str]) -> str:
    return make_netns()


@pytest.fixture(scope="session")
def bpf_objects(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The test programs (tests/datapath/progs), compiled once per session."""
    if os.geteuid() != 0 or shutil.which("clang") is None:
        pytest.skip("needs root and clang")
    out = tmp_path_factory.mktemp("bpf")
    return {
        "pass_a": lab.compile_bpf(lab.PROGS / "pass.bpf.c", out / "pass_a.o"),
        "pass_b": lab.compile_bpf(lab.PROGS / "pass.bpf.c", out / "pass_b.o", "VARIANT_B"),
        "tproxy": lab.compile_bpf(lab.PROGS / "tproxy.bpf.c", out / "tproxy.o"),
    }


@pytest.fixture
def prog_fds(require_root: None, bpf_objects: dict[str, Path]) -> Iterator[dict[str, int]]:
    """fds of two different pass-through programs ('a', 'b'); closed after the test."""
    fds = {"a": lab.load_prog(bpf_objects["pass_a"]), "b": lab.load_prog(bpf_objects["pass_b"])}
    yield fds
    for fd in fds.values():
        os.close(fd)


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "run" / "state.json"
