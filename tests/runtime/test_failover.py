"""Failover in a group of two real danted nodes, and a group with every node down."""
from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.runtime.lab import Peer

from .helpers import (
    Gw,
    Lab,
    client_get,
    flow_lines,
    gateway,
    lab_config,
    refused_promptly,
    runtime_lab,
    udp_exchange,
    wait_for,
)

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        lab.start_http_peer(8081)
        lab.start_udp_echo(9001)
        yield lab


@pytest.fixture
def nodes(lab: Lab) -> Iterator[tuple[Peer, Peer]]:
    """Two danted nodes, d1 on :1080 and d2 on :1081; running again after the test."""
    existing = {p.name: p for p in lab.peers}
    d1 = existing.get("danted-1080") or lab.start_danted(1080)
    d2 = existing.get("danted-1081") or lab.start_danted(1081)
    d1.start()
    d2.start()
    try:
        yield d1, d2
    finally:
        d1.start()
        d2.start()


@pytest.fixture
def gw(lab: Lab, nodes: tuple[Peer, Peer], tmp_path: Path) -> Iterator[Gw]:
    t = lab.topo
    cfg = lab_config(
        t, fallback="direct",
        rules=[f"dip({t.upstream_ip4}, '{t.upstream_ip6}') && dport(8081, 9001) -> pair"],
        nodes={"d1": f"socks5://{t.upstream_ip4}:1080", "d2": f"socks5://{t.upstream_ip4}:1081"},
        # fixed(0): d1 while it is alive, so which node carries a flow is known
        groups={"pair": "{policy: 'fixed(0)', filter: ['name(d1, d2)']}"})
    with gateway(lab, cfg, tmp_path) as g:
        yield g


def node_of(gw: Gw, client_port: int) -> str:
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        for f in flow_lines(gw.log_text()):
            if f.src.endswith(f":{client_port}"):
                return f.node
        time.sleep(0.05)
    raise AssertionError(f"no relay line for client port {client_port}")


def test_failover_to_the_second_node(lab: Lab, gw: Gw, nodes: tuple[Peer, Peer]) -> None:
    """Stop the first node's server: new flows (TCP v4 and v6, UDP) go through the second."""
    t = lab.topo
    d1, _d2 = nodes
    body = client_get(lab, t.upstream_ip4, 8081)
    assert body["peer"] == t.upstream_ip4
    assert node_of(gw, body["client_port"]) == "d1"

    d1.stop()
    for dst in (t.upstream_ip4, t.upstream_ip6, t.upstream_ip4):
        t0 = time.monotonic()
        body = client_get(lab, dst, 8081)
        assert time.monotonic() - t0 < 2.0
        assert body["peer"] == dst
        assert node_of(gw, body["client_port"]) == "d2"
    assert "group 'pair' [tcp]: node 'd1' is down" in gw.log_text()

    peer, _, payload, _, sport = udp_exchange(lab, t.upstream_ip4, 9001, b"after-failover")
    assert (peer, payload) == (t.upstream_ip4, b"after-failover")
    assert node_of(gw, sport) == "d2"
    assert gw.alive


def test_all_nodes_down_refuses_at_once(lab: Lab, gw: Gw, nodes: tuple[Peer, Peer]) -> None:
    """Both servers stopped: the client's connection is reset at once (the relay accepted it
    via tproxy, then closes it), with a log line; later flows too; the runtime lives on, and
    flows work again once a node is back (health checks or the next dial find it)."""
    t = lab.topo
    d1, d2 = nodes
    d1.stop()
    d2.stop()
    since = gw.log_len()
    refused_promptly(lab, t.upstream_ip4, 8081, limit=2.0)   # both dials fail: "every node failed"
    gw.wait_log(r"tcp \S+ -> 10\.231\.2\.2:8081 via pair refused: group 'pair': "
                r"every node failed: .*'d1'.*'d2'", since=since)
    since = gw.log_len()
    refused_promptly(lab, t.upstream_ip6, 8081, limit=2.0)   # now known down: refused without a dial
    gw.wait_log(r"via pair refused: group 'pair': all nodes down for tcp", since=since)
    # UDP: nothing comes back, and the log says why
    with pytest.raises(TimeoutError):
        udp_exchange(lab, t.upstream_ip4, 9001, b"nobody", timeout=1.5)
    gw.wait_log(r"udp \S+ -> 10\.231\.2\.2:9001 via pair refused", since=since)
    # direct flows do not care
    assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.client_ip4
    assert gw.alive

    # d2 back: within a health-check round (check_interval 5s) flows go through it again
    d2.start()

    def works() -> bool:
        try:
            return client_get(lab, t.upstream_ip4, 8081, timeout=2)["peer"] == t.upstream_ip4
        except OSError:
            return False

    wait_for(works, timeout=12, step=0.5)
    gw.wait_log(r"group 'pair' \[tcp\]: node 'd2' is alive again")
