"""Connections *into* the LAN through a gateway whose fallback is a proxy: a WAN host's
connection to a LAN server must work (its SYN arrives on the WAN side, so the LAN server's
SYN-ACK is the first segment lan_ingress sees of it; only a SYN opens a flow there, anything
else with no flow entry is routed as it is). A LAN client's own connections are still proxied
in the same run, and no flow entry is made for the inbound connection's segments."""
from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest

from dae_py.runtime.lab import http_get

from .helpers import Gw, Lab, client_get, flow_lines, gateway, lab_config, proxy_lab

pytestmark = pytest.mark.root

LAN_PORT = 8090


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in proxy_lab():
        lab.start_http_peer(LAN_PORT, ns="client")
        yield lab


@pytest.fixture(scope="module")
def gw(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    config = lab_config(lab.topo, rules=["dport(8080) -> direct"], fallback="proxy")
    with gateway(lab, config, tmp_path_factory.mktemp("inbound")) as g:
        yield g


def upstream_get(lab: Lab, host: str, port: int) -> dict[str, Any]:
    """GET / from the upstream (WAN) namespace to a LAN host, through the gateway."""
    with lab.socket("upstream", socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.settimeout(5)
        s.connect((host, port))
        return http_get(s, host)


@pytest.mark.parametrize("family", [4, 6])
def test_a_wan_host_reaches_a_lan_server_while_lan_flows_are_proxied(lab: Lab, gw: Gw, family: int) -> None:
    t = lab.topo
    client, upstream = (t.client_ip4, t.upstream_ip4) if family == 4 else (t.client_ip6, t.upstream_ip6)
    for _ in range(3):  # several connections, each a fresh 4-tuple
        body = upstream_get(lab, client, LAN_PORT)
        assert body["peer"] == upstream  # routed, not proxied: the LAN server sees the WAN host
    proxied = client_get(lab, t.upstream_ip4, 8081)
    assert proxied["peer"] == t.upstream_ip4  # danted's address: the LAN client's flow went through the proxy
    gw.wait_log(r"relay\.tcp: tcp \S+ -> \S+:8081 ")
    assert [f for f in flow_lines(gw.log_text()) if f.src.endswith(f":{LAN_PORT}")] == []  # the relay never saw it
