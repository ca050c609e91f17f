"""`-> proxy(mark: 0x800)` in the lab (issue 12): the relay's upstream connection to the node
carries the rule's mark (SO_MARK) in place of so_mark_from_dae, as the kernel sees it (`ss -e`
in the gateway namespace prints each socket's fwmark), while a rule to the same group without a
mark keeps the default so_mark."""
from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dae_py.contract.manifest import DEFAULT_SO_MARK
from tests.runtime.helpers import Lab, client_get, gateway, lab_config, proxy_lab, udp_exchange

pytestmark = pytest.mark.root

MARK = 0x800


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in proxy_lab():
        lab.start_http_peer(8082)
        yield lab


def node_marks(lab: Lab, node_ip: str) -> list[int]:
    """The fwmark of each established TCP socket in the gateway namespace towards the node."""
    out = lab.run("gateway", ["ss", "-tneH", "state", "established", "dst", f"{node_ip}:1080"], check=True).stdout
    return [int(m, 16) for m in re.findall(r"fwmark:0x([0-9a-f]+)", out)]


def held_connection(lab: Lab, host: str, port: int) -> socket.socket:
    """A client connection through the gateway, left idle: the relay has dialed the node and
    keeps that upstream connection while this one is open."""
    s = lab.socket("client", socket.AF_INET)
    s.settimeout(5)
    s.connect((host, port))
    return s


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_the_upstream_socket_of_a_marked_group_route_carries_the_mark(lab: Lab, tmp_path: Path) -> None:
    t = lab.topo
    # warm_pool 0: the sockets to the node are the flows' own (tests/relay/test_warmpool_lab.py
    # shows the pool's sockets carry the view's mark as well)
    cfg = lab_config(t, fallback="direct", rules=[f"dip({t.upstream_ip4}) && dport(8081) -> proxy(mark: 0x800)",
                                                   f"dip({t.upstream_ip4}) && dport(8082) -> proxy"],
                     extra_global="  warm_pool: 0")
    with gateway(lab, cfg, tmp_path):
        # both still reach the peer through the node (the peer sees the node's address)
        assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4
        assert client_get(lab, t.upstream_ip4, 8082)["peer"] == t.upstream_ip4
        with held_connection(lab, t.upstream_ip4, 8081):
            wait_for(lambda: MARK in node_marks(lab, t.upstream_ip4))
        wait_for(lambda: MARK not in node_marks(lab, t.upstream_ip4))
        with held_connection(lab, t.upstream_ip4, 8082):
            wait_for(lambda: DEFAULT_SO_MARK in node_marks(lab, t.upstream_ip4))
            assert MARK not in node_marks(lab, t.upstream_ip4)


def test_a_marked_udp_route_associates_through_the_node_with_the_mark(lab: Lab, tmp_path: Path) -> None:
    """UDP to the group goes over a SOCKS5 UDP ASSOCIATE; its control connection (open as long
    as the association) carries the mark too."""
    t = lab.topo
    cfg = lab_config(t, fallback="direct", rules=[f"dip({t.upstream_ip4}) && dport(9001) -> proxy(mark: 0x800)"])
    with gateway(lab, cfg, tmp_path):
        peer, _, payload, _, _ = udp_exchange(lab, t.upstream_ip4, 9001, b"marked")
        assert (peer, payload) == (t.upstream_ip4, b"marked")  # relayed by the node
        wait_for(lambda: MARK in node_marks(lab, t.upstream_ip4))
