"""The runtime tests' session set-up (helpers live in helpers.py)."""
from __future__ import annotations

import os

import pytest

from dae_py.runtime.lab import cleanup_stale


@pytest.fixture(scope="session", autouse=True)
def _remove_stale_labs() -> None:
    """Leftovers of crashed earlier runs (their pid is gone); live parallel runs are spared."""
    if os.geteuid() == 0:
        cleanup_stale()
