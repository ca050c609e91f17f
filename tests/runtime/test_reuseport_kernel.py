"""The kernel facts docs/relay-workers.md builds on, checked on this kernel with the compiled
program and bare sockets (bench/reuseport_assign.py): bpf_sk_assign into a SO_REUSEPORT group
spreads TCP connections over its listeners, and picks a UDP socket by (client, destination), so
one client's datagrams to several destinations do not stay on one socket."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import have_root_bpf

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]


def test_sk_assign_spreads_tcp_over_the_group_and_splits_a_udp_client_by_destination() -> None:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    r = subprocess.run([sys.executable, "-m", "bench.reuseport_assign", "--tcp", "200", "--clients", "40",
                        "--dsts", "8"], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert sum(res["tcp_per_socket"]) == 200 and min(res["tcp_per_socket"]) >= 50, res  # ~100 each
    assert sum(res["udp_datagrams_per_socket"]) == 40 * 8 * 2
    assert res["udp_pairs_always_same_socket"] == res["udp_pairs"] == 40 * 8
    # all 8 destinations of a client on one of 2 sockets: p = 1/128 per client
    assert res["udp_clients_on_one_socket"] <= 5, res
