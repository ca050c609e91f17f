"""dial_mode on a real gateway: flows are routed and dialled by the name their first bytes carry.

The datapath sends every flow to 10.233.0.0/16 (local in the upstream namespace, so any address
there reaches the peers) to the `proxy` group (fallback): a SOCKS5 peer that logs each request's
address type and address, then connects out from the upstream address. So where a flow went
shows at the servers by the source address they saw: the upstream's own (through the proxy) or
the gateway's WAN address (the relay dialled it direct); and what the proxy was asked for shows in
its log (ATYP 3: a name, ATYP 1: an IPv4 address).
"""
from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import pytest

from dae_py.runtime.lab import http_get
from dae_py.runtime.lab.peers import Listen, Peer
from tests.runtime.helpers import Lab, gateway, lab_config, runtime_lab

pytestmark = pytest.mark.root

PEERS = str(Path(__file__).with_name("lab_peers.py"))
SOCKS_PORT, TLS_PORT, HTTP_PORT, BANNER_PORT, ZONE_PORT, QUIC_PORT = 1080, 8443, 8081, 2525, 5300, 443
NAMES = {"z.proxied.test": "10.233.3.3", "a.named.test": "10.233.1.1"}  # the SOCKS peer's resolver


def start_peer(lab: Lab, kind: str, port: int, *args: str) -> Peer:
    peer = Peer(tracker=lab.procs, name=f"{kind}-{port}", ns=lab.ns("upstream") or "",
                argv=[sys.executable, PEERS, kind, str(port), *args], log_path=lab.dir / f"{kind}-{port}.log",
                listens=[Listen("tcp", port, 4)], port=port, cwd=lab.dir)
    lab.peers.append(peer)
    return peer.start()


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        t = lab.topo
        lab.run("upstream", ["ip", "route", "add", "local", "10.233.0.0/16", "dev", "lo"], check=True)
        lab.run("gateway", ["ip", "route", "add", "10.233.0.0/16", "via", t.upstream_ip4], check=True)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "tls.key",
                        "-out", "tls.pem", "-days", "2", "-subj", "/CN=sniff lab"],
                       check=True, capture_output=True, cwd=lab.dir)
        for f in ("tls.key", "tls.pem"):
            (lab.dir / f).chmod(0o644)
        start_peer(lab, "socks", SOCKS_PORT, t.upstream_ip4, str(lab.dir / "socks.jsonl"), json.dumps(NAMES))
        start_peer(lab, "tls", TLS_PORT, str(lab.dir / "tls.pem"), str(lab.dir / "tls.key"))
        start_peer(lab, "banner", BANNER_PORT)
        lab.start_http_peer(HTTP_PORT)
        lab.start_udp_echo(QUIC_PORT)
        lab.start_dnsmasq(ZONE_PORT, {"a.named.test": ["10.233.1.1"]}, ttl=30)
        yield lab


def config(lab: Lab, mode: str, dns: bool = False) -> str:
    t = lab.topo
    # the lab's own addresses (the gateway's dns.bind among them) direct, everything else by name or proxy
    text = lab_config(t, rules=["dip(10.231.0.0/16) -> direct", "domain(suffix: direct.test) -> direct"],
                      fallback="proxy",
                      extra_global=f"  dial_mode: {mode}\n  sniffing_timeout: 300ms")
    if dns:
        text += (f"dns:\n  bind: ['{t.gateway_lan_ip4}:53']\n  upstream:\n    zone: 'udp://{t.upstream_ip4}:{ZONE_PORT}'\n"
                 "  routing:\n    request:\n      fallback: zone\n")
    return text


def socks_requests(lab: Lab) -> list[dict[str, Any]]:
    path = lab.dir / "socks.jsonl"
    lines = path.read_text().splitlines() if path.exists() else []
    return [r for r in map(json.loads, lines) if r["cmd"] == 1 and r["port"] != 8080]  # not health checks


def tls_get(lab: Lab, ip: str, sni: str | None) -> dict[str, Any]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with lab.socket("client") as raw:
        raw.settimeout(5)
        raw.connect((ip, TLS_PORT))
        with ctx.wrap_socket(raw, server_hostname=sni) as s:
            return json.loads(s.makefile().readline())


def http_host(lab: Lab, ip: str, host: str) -> dict[str, Any]:
    with lab.socket("client") as s:
        s.settimeout(5)
        s.connect((ip, HTTP_PORT))
        return http_get(s, host)


def test_domain_plus_plus_reroutes_by_sniffed_name_and_server_first_flows_proceed(lab: Lab,
                                                                                  tmp_path: Path) -> None:
    t = lab.topo
    with gateway(lab, config(lab, "domain++"), tmp_path / "gw") as gw:
        # nothing resolved these names through the gateway: only the sniffed name can route them
        assert tls_get(lab, "10.233.3.1", "x.direct.test") == {"peer": t.gateway_wan_ip4, "sni": "x.direct.test"}
        assert http_host(lab, "10.233.3.2", "y.direct.test")["peer"] == t.gateway_wan_ip4
        # the control flows stay on the proxy: by name when one was sniffed, by address otherwise
        assert tls_get(lab, "10.233.3.3", "z.proxied.test") == {"peer": t.upstream_ip4, "sni": "z.proxied.test"}
        assert http_host(lab, "10.233.3.4", "10.233.3.4")["peer"] == t.upstream_ip4
        assert tls_get(lab, "10.233.3.6", None)["peer"] == t.upstream_ip4
        asked = [(r["atyp"], r["host"]) for r in socks_requests(lab)]
        assert asked == [(3, "z.proxied.test"), (1, "10.233.3.4"), (1, "10.233.3.6")], asked
        # a server-first protocol: the client sends nothing; the flow goes on after sniffing_timeout
        with lab.socket("client") as s:
            s.settimeout(5)
            t0 = time.monotonic()
            s.connect(("10.233.3.5", BANNER_PORT))
            line = s.makefile().readline()
            waited = time.monotonic() - t0
        assert json.loads(line)["peer"] == t.upstream_ip4
        assert 0.25 <= waited < 3.0, waited
        assert gw.alive
        gw.wait_log(r"sniffed x\.direct\.test \(\d+ bytes read\), dialled as 10\.233\.3\.1:8443, re-routed")


def quic_exchange(lab: Lab, ip: str, datagrams: list[bytes], timeout: float = 3.0) -> list[str]:
    """Send `datagrams` to ip:443 from one client socket; the peers the UDP echo saw, per reply."""
    from dae_py.runtime.lab import parse_udp_echo

    seen = []
    with lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        for d in datagrams:
            s.sendto(d, (ip, QUIC_PORT))
        try:
            for _ in datagrams:
                seen.append(parse_udp_echo(s.recv(65535))[0])
        except TimeoutError:
            pass
    return seen


def test_domain_plus_plus_reroutes_quic_by_its_initial(lab: Lab, tmp_path: Path) -> None:
    from tests.sniff.hellos import crypto_frame, handshake_message, python_hello, seal_initial

    t = lab.topo
    dcid = bytes(range(8))
    one = seal_initial(crypto_frame(0, handshake_message(python_hello("q.direct.test", ("h3",)))), dcid)
    msg = handshake_message(python_hello("q2.direct.test", ("h3",)))
    later = seal_initial(crypto_frame(200, msg[200:]), dcid, pn=1)
    first = seal_initial(crypto_frame(0, msg[:200]), dcid)
    with gateway(lab, config(lab, "domain++"), tmp_path / "gw") as gw:
        assert quic_exchange(lab, "10.233.3.7", [one]) == [t.gateway_wan_ip4]
        # the hello in two Initials, the end first: both held, then both replayed direct
        assert quic_exchange(lab, "10.233.3.8", [later, first]) == [t.gateway_wan_ip4] * 2
        # control: an Initial naming no direct.test server stays on the proxy (whose SOCKS peer
        # carries no UDP: no answer)
        other = seal_initial(crypto_frame(0, handshake_message(python_hello("q.other.test"))), dcid)
        assert quic_exchange(lab, "10.233.3.9", [other], timeout=1.5) == []
        gw.wait_log(r"sniffed q2\.direct\.test \(QUIC, 2 datagrams\), routed to outbound 0")


def resolve(lab: Lab, name: str) -> list[str]:
    q = dns.message.make_query(name, "A")
    with lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        r = dns.query.udp(q, lab.topo.gateway_lan_ip4, timeout=5, sock=s)
    return [rd.address for rrset in r.answer for rd in rrset if rrset.rdtype == 1]


def test_domain_dials_the_name_only_where_dns_agrees(lab: Lab, tmp_path: Path) -> None:
    t = lab.topo
    before = len(socks_requests(lab))
    with gateway(lab, config(lab, "domain", dns=True), tmp_path / "gw") as gw:
        gw.wait_log(r"dns listening on 10\.231\.1\.1:53")
        assert resolve(lab, "a.named.test") == ["10.233.1.1"]
        assert tls_get(lab, "10.233.1.1", "a.named.test") == {"peer": t.upstream_ip4, "sni": "a.named.test"}
        # the same name to an address DNS did not give it, and a name DNS never answered
        assert tls_get(lab, "10.233.1.2", "a.named.test")["peer"] == t.upstream_ip4
        assert tls_get(lab, "10.233.1.3", "never.resolved.test")["peer"] == t.upstream_ip4
        # domain does not re-route: a direct.test name stays on the proxy, dialled by address
        assert http_host(lab, "10.233.1.4", "b.direct.test")["peer"] == t.upstream_ip4
    asked = [(r["atyp"], r["host"]) for r in socks_requests(lab)[before:]]
    assert asked == [(3, "a.named.test"), (1, "10.233.1.2"), (1, "10.233.1.3"), (1, "10.233.1.4")], asked
