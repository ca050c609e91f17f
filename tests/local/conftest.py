"""The local-routing tests' session set-up: stale labs of crashed runs go first."""
from __future__ import annotations

import os

import pytest

from dae_py.runtime.lab import cleanup_stale


@pytest.fixture(scope="session", autouse=True)
def _remove_stale_labs() -> None:
    if os.geteuid() == 0:
        cleanup_stale()
