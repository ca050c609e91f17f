"""Shared test set-up.

Tests that need root, BPF or the network lab skip on a machine without privileges, but under CI
(`CI=true`) a skip is a failure: the suite must prove the datapath for real there.
"""
from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def have_root_bpf() -> str | None:
    """Why root/BPF tests can't run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (CAP_BPF, CAP_NET_ADMIN)"
    if not Path("/sys/fs/bpf").exists() and not Path("/sys/kernel/btf/vmlinux").exists():
        return "kernel without BPF support"
    if shutil.which("clang") is None:
        return "clang is not installed"
    return None


@pytest.fixture
def require_root() -> None:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = have_root_bpf()
    if reason is None:
        return
    for item in items:
        if item.get_closest_marker("root"):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if IN_CI and report.skipped:
        # Under CI a skip hides an untested datapath: turn it into a failure.
        report.outcome = "failed"
        report.longrepr = f"skipped under CI=true (a skip is a failure here): {report.longrepr}"
