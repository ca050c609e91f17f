"""Direct flows stay in the kernel: the program's per-outbound counters see them, the relay
never does (neither its per-flow log lines nor its own per-outbound counters).

Both sets of counters come from the runtime's exit line
`kernel: direct=Np/NB ... ; relay: <RelayStats>`, printed after the datapath is removed.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Lab, client_get, flow_lines, gateway, lab_config, parse_exit_stats, runtime_lab, udp_exchange

pytestmark = pytest.mark.root

N_TCP = 5  # direct TCP flows per address family
N_UDP = 3  # direct UDP exchanges per address family


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        lab.start_danted(1080)
        lab.start_http_peer(8081)
        lab.start_http_peer(8084)
        lab.start_udp_echo(9000)
        yield lab


def test_direct_flows_never_reach_the_relay(lab: Lab, tmp_path: Path) -> None:
    t = lab.topo
    rules = [f"dip({t.upstream_ip4}) && dport(8081) -> proxy", "dport(8084) -> block"]
    cfg = lab_config(t, rules=rules, fallback="direct")
    request_bytes = 0
    with gateway(lab, cfg, tmp_path) as gw:
        for dst, client in ((t.upstream_ip4, t.client_ip4), (t.upstream_ip6, t.client_ip6)):
            for _ in range(N_TCP):
                assert client_get(lab, dst, 8080)["peer"] == client
                request_bytes += len(f"GET / HTTP/1.1\r\nHost: {dst}\r\nConnection: close\r\n\r\n")
            for i in range(N_UDP):
                peer, _, payload, _, _ = udp_exchange(lab, dst, 9000, b"u%d" % i)
                assert (peer, payload) == (client, b"u%d" % i)
        # one proxied flow, so the relay has something to count, and one blocked attempt
        assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4
        with lab.socket("client", socket.AF_INET) as s:
            s.settimeout(1.5)
            with pytest.raises(TimeoutError):
                s.connect((t.upstream_ip4, 8084))
        time.sleep(0.2)
    log = gw.log_text()
    kernel, relay = parse_exit_stats(log)

    # the kernel classified and passed every direct packet...
    direct_packets, direct_bytes = kernel["direct"]
    # per TCP flow the client sends at least SYN, ACK, the request and FIN; per UDP one datagram
    assert direct_packets >= 2 * (4 * N_TCP + N_UDP), kernel
    assert direct_bytes >= request_bytes, kernel
    assert kernel["proxy"][0] > 0 and kernel["block"][0] >= 1, kernel
    # ...and the relay saw none of them (nor the blocked one): only the proxied flow
    assert "direct" not in relay and "block" not in relay, relay
    assert relay == {"proxy": 1}, relay
    flows = flow_lines(log)
    assert [(f.proto, f.dst, f.outbound) for f in flows] == \
        [("tcp", f"{t.upstream_ip4}:8081", "proxy")], flows
