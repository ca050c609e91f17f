"""Fixtures for the libbpf layer tests: compiled test objects, packets, a bpffs scratch dir."""
from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PROGS = Path(__file__).resolve().parent / "progs"
BPFFS = Path("/sys/fs/bpf")
CLANG_CMD = ["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c"]


def compile_bpf(source: Path, out_dir: Path) -> Path:
    """Compile one test program the way the project's compiler does."""
    obj = out_dir / (source.stem + ".o")
    proc = subprocess.run([*CLANG_CMD, str(source), "-o", str(obj)],
                          capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.fail(f"clang failed on {source.name}:\n{proc.stderr}")
    return obj


@pytest.fixture(scope="session")
def bpf_objs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every tests/bpf/progs/*.c compiled once per session, by stem."""
    out = tmp_path_factory.mktemp("bpf-objs")
    return {src.stem: compile_bpf(src, out) for src in sorted(PROGS.glob("*.c"))}


@pytest.fixture
def bpffs_dir() -> Iterator[Path]:
    """A unique directory on bpffs, removed with everything pinned in it even if the test
    fails (pins outlive the process, so a leak would persist until reboot)."""
    path = Path(tempfile.mkdtemp(prefix="dae-py-test-", dir=BPFFS))
    try:
        yield path
    finally:
        for entry in path.iterdir():
            entry.unlink()
        path.rmdir()
