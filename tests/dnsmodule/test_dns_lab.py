"""The DNS module in a running gateway: clients resolve through dns.bind, and domain() rules
split their real TCP flows, from the first connection after each answer.

dnsmasq (upstream namespace) serves a test zone: 200 proxied and 200 direct names, each on an
address no other name has (10.232.0.0/16 is local in the upstream namespace), a CNAME chain,
AAAA names, 2 s TTLs. unbound serves another zone over DoT and DoH with a test CA the test
makes. The HTTP peer answers with the source address it saw: danted's (proxied) or the
client's (direct).
"""
from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.runtime.helpers import Gw, Lab, client_get, gateway, lab_config, runtime_lab
from tests.trust import trusting

pytestmark = pytest.mark.root

TRIALS = 200
ZONE_PORT = 5300
DOT_PORT = 853
DOH_PORT = 443
HTTP_PORT = 8081
DEAD = "10.231.2.99"
V6_DIRECT = "fd00:231:2::3"  # on the upstream link, no host: queries to it are never answered


def proxied(i: int) -> str:
    return f"p{i}.proxied.test"


def direct(i: int) -> str:
    return f"d{i}.direct.test"


def make_certs(d: Path, ip: str) -> Path:
    """A test CA and a server certificate for `ip` (IP SAN) signed by it; returns the CA file."""
    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, cwd=d)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
        "-days", "2", "-subj", "/CN=dae-py lab CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
        "-subj", f"/CN={ip}")
    (d / "san.ext").write_text(f"subjectAltName=IP:{ip}\n")
    run("openssl", "x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    for f in ("server.key", "server.pem"):
        (d / f).chmod(0o644)
    return d / "ca.pem"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        t = lab.topo
        lab.run("upstream", ["ip", "route", "add", "local", "10.232.0.0/16", "dev", "lo"], check=True)
        lab.run("upstream", ["ip", "-6", "route", "add", "local", "fd00:232::/48", "dev", "lo"], check=True)
        lab.run("gateway", ["ip", "route", "add", "10.232.0.0/16", "via", t.upstream_ip4], check=True)
        lab.run("gateway", ["ip", "-6", "route", "add", "fd00:232::/48", "via", t.upstream_ip6], check=True)
        # danted cannot reach a local fd00:232:: route: IPv6 names get addresses on the link
        lab.run("upstream", ["ip", "-6", "addr", "add", V6_DIRECT + "/64", "dev", t.upstream_if, "nodad"], check=True)
        lab.start_danted(1080)
        lab.start_http_peer(HTTP_PORT)
        hosts = {proxied(i): [f"10.232.1.{i + 1}"] for i in range(TRIALS)}
        hosts |= {direct(i): [f"10.232.2.{i + 1}"] for i in range(TRIALS)}
        hosts |= {"edge.cdn.test": ["10.232.3.1"], "v6.proxied.test": [t.upstream_ip6],
                  "v6.direct.test": [V6_DIRECT]}
        lab.start_dnsmasq(ZONE_PORT, hosts, cnames={"www.proxied.test": "edge.cdn.test"}, ttl=2)
        ca = make_certs(lab.dir, t.upstream_ip4)
        lab.start_unbound(f"""\
  interface: {t.upstream_ip4}@{DOT_PORT}
  interface: {t.upstream_ip4}@{DOH_PORT}
  tls-port: {DOT_PORT}
  https-port: {DOH_PORT}
  tls-service-key: "{lab.dir}/server.key"
  tls-service-pem: "{lab.dir}/server.pem"
  http-endpoint: "/dns-query"
  http-notls-downstream: no
  access-control: 0.0.0.0/0 allow
  do-ip6: no
  module-config: "iterator"
  local-zone: "dot.test." static
  local-data: "p.dot.test. 5 IN A 10.232.4.1"
  local-data: "p2.dot.test. 5 IN A 10.232.4.2"
  local-zone: "doh.test." static
  local-data: "p.doh.test. 5 IN A 10.232.5.1"
""", DOT_PORT)
        lab.ca = ca  # type: ignore[attr-defined]  # the test's CA travels with its lab
        yield lab


def dns_config(lab: Lab) -> str:
    t = lab.topo
    base = lab_config(t, rules=["domain(suffix: proxied.test, suffix: dot.test, suffix: doh.test) -> proxy"],
                      fallback="direct")
    return base + f"""\
dns:
  bind: ['{t.gateway_lan_ip4}:53', '[{t.gateway_lan_ip6}]:53']
  upstream:
    zone: 'udp://{t.upstream_ip4}:{ZONE_PORT}'
    dot: 'tls://{t.upstream_ip4}:{DOT_PORT}'
    doh: 'https://{t.upstream_ip4}:{DOH_PORT}/dns-query'
    dead: 'udp://{DEAD}:53'
  routing:
    request:
      rules:
        - "qname(suffix: dot.test) -> dot"
        - "qname(suffix: doh.test) -> doh"
        - "qname(suffix: dead.test) -> dead"
        - "qname(suffix: ads.test) -> reject"
      fallback: zone
"""


@pytest.fixture(scope="module")
def gw(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    ca = lab.ca  # type: ignore[attr-defined]  # the fixture's test CA, which the gateway trusts
    with trusting(ca), gateway(lab, dns_config(lab), tmp_path_factory.mktemp("dnsgw")) as g:
        g.wait_log(r"dns listening on 10\.231\.1\.1:53")
        yield g


def resolve(lab: Lab, name: str, rdtype: str = "A", server: str | None = None, timeout: float = 6.0,
            tcp: bool = False) -> dns.message.Message:
    """Ask the gateway's dns.bind from the client namespace, as a stub resolver would."""
    server = server or lab.topo.gateway_lan_ip4
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    q = dns.message.make_query(name, rdtype)
    with lab.socket("client", fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as s:
        if tcp:
            s.settimeout(timeout)
            s.connect((server, 53))
            return dns.query.tcp(q, server, timeout=timeout, sock=s)
        return dns.query.udp(q, server, timeout=timeout, sock=s)


def addresses(r: dns.message.Message) -> list[str]:
    return [rd.address for rrset in r.answer if rrset.rdtype in (1, 28) for rd in rrset]


def seen_from(lab: Lab, ip: str) -> str:
    return client_get(lab, ip, HTTP_PORT)["peer"]


def test_first_connection_after_each_answer_is_routed_by_its_domain(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    # control: an address of the proxied range that no answer bound goes direct
    assert seen_from(lab, "10.232.1.250") == t.client_ip4
    wrong = []
    for i in range(TRIALS):
        for name, want in ((proxied(i), t.upstream_ip4), (direct(i), t.client_ip4)):
            (ip,) = addresses(resolve(lab, name))
            peer = seen_from(lab, ip)  # the first connection to this address, right after the answer
            if peer != want:
                wrong.append((name, ip, peer))
    assert wrong == [], f"{len(wrong)} of {2 * TRIALS} first connections misrouted: {wrong[:10]}"


def test_cname_chain_aaaa_and_tcp_queries_route_by_domain(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    r = resolve(lab, "www.proxied.test")
    assert addresses(r) == ["10.232.3.1"]
    assert seen_from(lab, "10.232.3.1") == t.upstream_ip4  # bound through the CNAME's owner name
    (ip6,) = addresses(resolve(lab, "v6.proxied.test", "AAAA", server=t.gateway_lan_ip6))
    assert seen_from(lab, ip6) == t.upstream_ip6
    (ip6d,) = addresses(resolve(lab, "v6.direct.test", "AAAA", tcp=True))
    assert seen_from(lab, ip6d) == t.client_ip6


def test_dot_and_doh_upstreams_answer_and_bind(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    assert addresses(resolve(lab, "p.dot.test")) == ["10.232.4.1"]
    assert seen_from(lab, "10.232.4.1") == t.upstream_ip4
    assert addresses(resolve(lab, "p.doh.test")) == ["10.232.5.1"]
    assert seen_from(lab, "10.232.5.1") == t.upstream_ip4


def test_dead_upstream_gets_servfail_before_the_client_gives_up_and_reject_is_empty(lab: Lab, gw: Gw) -> None:
    r = resolve(lab, "x.dead.test", timeout=6.0)  # the module's deadline is 4 s
    assert r.rcode() == dns.rcode.SERVFAIL
    r = resolve(lab, "x.ads.test")
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    assert addresses(resolve(lab, direct(0))) == ["10.232.2.1"]  # and everything else still works


def test_garbage_to_the_listener_leaves_it_answering(lab: Lab, gw: Gw) -> None:
    import os

    t = lab.topo
    with lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM) as s:
        for data in (b"", b"\x00", os.urandom(11), os.urandom(12), os.urandom(512), b"\xff" * 60000,
                     dns.message.make_response(dns.message.make_query("a.test", "A")).to_wire()):
            s.sendto(data, (t.gateway_lan_ip4, 53))
    with lab.socket("client", socket.AF_INET) as s:
        s.connect((t.gateway_lan_ip4, 53))
        s.sendall(b"\x00\x05hello")
    assert addresses(resolve(lab, proxied(1))) == ["10.232.1.2"]
    assert gw.alive
