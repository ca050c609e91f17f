"""Fixtures for the lab's own tests: one shared lab with the standard peers per module.

Read-only tests share it (starting peers costs ~0.1 s each); tests that stop, restart or tear
down build their own `Lab`.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator

import pytest

from dae_py.runtime.lab import Lab, cleanup_stale

log = logging.getLogger(__name__)


@pytest.fixture(scope="session", autouse=True)
def _remove_stale_labs() -> None:
    """Leftovers of crashed earlier runs (their pid is gone); live parallel runs are spared."""
    if os.geteuid() == 0:
        cleanup_stale()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    """A lab with http peer :8080, UDP echo :9000, danted :1080, tinyproxy :8888 upstream."""
    with Lab() as lab:
        lab.start_http_peer(8080)
        lab.start_udp_echo(9000)
        lab.start_danted(1080)
        lab.start_tinyproxy(8888)
        yield lab
