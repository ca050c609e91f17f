"""The hijack lab, shared by tests/dnsmodule/test_hijack_lab.py and bench/dns_hijack_race.py.

Clients keep their own resolver setting: they ask RESOLVER4 / RESOLVER6, addresses the gateway
merely routes towards the upstream namespace (where they are local, and where nothing listens
on port 53: a query the gateway did not hijack is refused). The gateway's DNS module asks
dnsmasq (upstream namespace, port 5300) for a test zone:

- `p{i}.proxied.test` and `d{i}.direct.test`, each on an address no other name has
  (10.233.0.0/16 is local in the upstream namespace), for the first-connection trials;
- `www.proxied.test`, a CNAME chain (www -> mid.cdn.test -> edge.cdn.test), and AAAA names;
- 2 s TTLs.

Routing: `domain(suffix: proxied.test) -> proxy` (danted), fallback direct; `dip(MUST_RESOLVER)
-> must_direct` for a dnsmasq that clients may ask themselves. Our HTTP(S) peer answers with the
source address it saw: danted's (upstream) for proxied flows, the client's for direct ones.
"""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import dns.message
import dns.query

from dae_py.runtime.lab import Lab
from tests.runtime.helpers import client_get, lab_config

RESOLVER4 = "10.233.0.53"  # any address: the client's configured resolver
RESOLVER6 = "fd00:233::53"
MUST_RESOLVER = "10.233.0.54"  # a dnsmasq the client asks itself (must_direct: not hijacked)
GW_RESOLVER4 = "10.231.1.53"  # gateway-local dnsmasq addresses on its LAN side (added to lan0)
GW_RESOLVER6 = "fd00:231:1::53"
GW_MUST4 = "10.231.1.54"  # one more, behind a must_direct rule
BLOCKED_RESOLVER = "10.233.0.99"  # blocked by routing: its DNS is still hijacked (as dae users rely on)
V6_DIRECT = "fd00:231:2::3"  # a second IPv6 address of the upstream (danted cannot reach fd00:233::)
ZONE_PORT = 5300
HTTP_PORT = 8081
HTTPS_PORT = 8443
TTL = 2


def proxied(i: int) -> str:
    return f"p{i}.proxied.test"


def direct(i: int) -> str:
    return f"d{i}.direct.test"


def trial_address(i: int, is_proxied: bool) -> str:
    """The one address of trial i's name (10,000 of each kind fit)."""
    base = 16 if is_proxied else 64
    return f"10.233.{base + i // 250}.{1 + i % 250}"


def make_certs(d: Path) -> tuple[Path, Path, Path]:
    """A test CA and a certificate for *.proxied.test and *.direct.test: (ca, cert, key)."""
    def run(*argv: str) -> None:
        subprocess.run(argv, check=True, capture_output=True, cwd=d)

    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "hca.key", "-out", "hca.pem",
        "-days", "2", "-subj", "/CN=dae-py hijack lab CA")
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", "hsrv.key", "-out", "hsrv.csr",
        "-subj", "/CN=proxied.test")
    (d / "hsan.ext").write_text("subjectAltName=DNS:*.proxied.test,DNS:*.direct.test\n")
    run("openssl", "x509", "-req", "-in", "hsrv.csr", "-CA", "hca.pem", "-CAkey", "hca.key", "-CAcreateserial",
        "-out", "hsrv.pem", "-days", "2", "-extfile", "hsan.ext")
    for f in ("hsrv.key", "hsrv.pem", "hca.pem"):
        (d / f).chmod(0o644)
    return d / "hca.pem", d / "hsrv.pem", d / "hsrv.key"


def setup(lab: Lab, trials: int) -> Path:
    """Routes, peers and the zone (with `trials` names of each kind); returns the CA file."""
    t = lab.topo
    lab.run("upstream", ["ip", "route", "add", "local", "10.233.0.0/16", "dev", "lo"], check=True)
    lab.run("upstream", ["ip", "-6", "route", "add", "local", "fd00:233::/48", "dev", "lo"], check=True)
    lab.run("gateway", ["ip", "route", "add", "10.233.0.0/16", "via", t.upstream_ip4], check=True)
    lab.run("gateway", ["ip", "-6", "route", "add", "fd00:233::/48", "via", t.upstream_ip6], check=True)
    lab.run("upstream", ["ip", "addr", "add", MUST_RESOLVER + "/32", "dev", "lo"], check=True)
    lab.run("upstream", ["ip", "-6", "addr", "add", V6_DIRECT + "/64", "dev", t.upstream_if, "nodad"], check=True)
    lab.start_danted(1080)
    lab.start_http_peer(HTTP_PORT)
    ca, cert, key = make_certs(lab.dir)
    lab.start_http_peer(HTTPS_PORT, tls=(cert, key))
    hosts = {proxied(i): [trial_address(i, True)] for i in range(trials)}
    hosts |= {direct(i): [trial_address(i, False)] for i in range(trials)}
    hosts |= {"edge.cdn.test": ["10.233.3.1"], "v6.proxied.test": [t.upstream_ip6],
              "v6.direct.test": [V6_DIRECT], "curl.proxied.test": ["10.233.4.1"],
              "curl.direct.test": ["10.233.4.2"], "must.proxied.test": ["10.233.4.3"],
              "big.proxied.test": [f"10.233.6.{i}" for i in range(1, 41)]}  # > 512 bytes: TC over UDP
    lab.start_dnsmasq(ZONE_PORT, hosts, cnames={"www.proxied.test": "mid.cdn.test", "mid.cdn.test": "edge.cdn.test"},
                      ttl=TTL)
    # the resolver a must_direct rule lets clients ask themselves: the same zone on port 53
    lab.start_dnsmasq(53, hosts, ttl=TTL, listen=[MUST_RESOLVER])
    return ca


def config(lab: Lab) -> str:
    t = lab.topo
    base = lab_config(t, rules=[f"dip({MUST_RESOLVER}, {GW_MUST4}) -> must_direct", f"dip({BLOCKED_RESOLVER}) -> block",
                                "domain(suffix: proxied.test) -> proxy"], fallback="direct",
                      extra_global="  dial_mode: ip")  # danted cannot resolve the test zone's names
    return base + f"""\
dns:
  upstream:
    zone: 'udp://{t.upstream_ip4}:{ZONE_PORT}'
  routing:
    request:
      rules:
        - "qname(suffix: ads.test) -> reject"
        - "qname(suffix: asis.test) -> asis"
      fallback: zone
"""


def start_gateway_resolver(lab: Lab) -> None:
    """A dnsmasq of the gateway's own on its LAN side (GW_RESOLVER4/6, GW_MUST4), answering
    `gw.local.test` from its own hosts: an answer only it can give."""
    t = lab.topo
    for addr in (GW_RESOLVER4 + "/24", GW_MUST4 + "/24"):
        lab.run("gateway", ["ip", "addr", "add", addr, "dev", t.gateway_lan_if], check=True)
    lab.run("gateway", ["ip", "-6", "addr", "add", GW_RESOLVER6 + "/64", "dev", t.gateway_lan_if, "nodad"], check=True)
    lab.start_dnsmasq(53, {"gw.local.test": ["10.233.5.1"]}, ttl=TTL, ns="gateway",
                      listen=[GW_RESOLVER4, GW_MUST4, GW_RESOLVER6])


def resolve(lab: Lab, name: str, rdtype: str = "A", server: str = RESOLVER4, tcp: bool = False,
            timeout: float = 5.0) -> dns.message.Message:
    """Ask `server` port 53 from the client namespace, as a stub resolver does. dnspython checks
    that a UDP answer comes from the address asked (else UnexpectedSource)."""
    fam = socket.AF_INET6 if ":" in server else socket.AF_INET
    q = dns.message.make_query(name, rdtype)
    with lab.socket("client", fam, socket.SOCK_STREAM if tcp else socket.SOCK_DGRAM) as s:
        if tcp:
            s.settimeout(timeout)
            s.connect((server, 53))
            assert s.getpeername()[0] == server
            return dns.query.tcp(q, server, timeout=timeout, sock=s)
        return dns.query.udp(q, server, timeout=timeout, sock=s)


def addresses(r: dns.message.Message) -> list[str]:
    return [rd.address for rrset in r.answer if rrset.rdtype in (1, 28) for rd in rrset]


def seen_from(lab: Lab, ip: str) -> str:
    return str(client_get(lab, ip, HTTP_PORT)["peer"])


def first_connection_trials(lab: Lab, trials: int, start: int = 0) -> tuple[int, list[tuple[str, str, str]], float]:
    """`trials` times: resolve a fresh name through the hijack (alternately proxied and direct;
    asking RESOLVER4 or RESOLVER6, over UDP or every third time TCP), then at once connect to
    its address; (trials, misrouted (name, ip, peer), seconds)."""
    t = lab.topo
    wrong: list[tuple[str, str, str]] = []
    t0 = time.monotonic()
    for k in range(start, start + trials):
        i, is_proxied = k // 2, k % 2 == 0
        name = proxied(i) if is_proxied else direct(i)
        server = RESOLVER6 if k % 4 >= 2 else RESOLVER4
        (ip,) = addresses(resolve(lab, name, server=server, tcp=k % 3 == 0))
        peer = seen_from(lab, ip)  # the first connection to this address, right after its answer
        if peer != (t.upstream_ip4 if is_proxied else t.client_ip4):
            wrong.append((name, ip, peer))
    return trials, wrong, time.monotonic() - t0
