"""Upstreams in a running gateway: each one dialled through the routing decision for its own
address, and response routing re-asking another upstream.

In the upstream namespace, tests/dnsmodule/quicserver.py serves plain UDP/TCP, DoQ and DoH3
and answers `whoami.*` with the address the query came from: through danted (the `proxy`
group, which runs in the upstream namespace) that is the upstream's own address; direct, the
gateway's WAN address. A third server plays a poisoning resolver.
"""
from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import pytest

from tests.runtime.helpers import Gw, Lab, gateway, lab_config, runtime_lab
from tests.trust import trusting

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]
PROXIED, DIRECT, POISONER = 5301, 5302, 5303
PROXIED_DOQ, DIRECT_DOQ, DIRECT_H3 = 8853, 8854, 8443


def start_server(lab: Lab, *args: str) -> None:
    proc = lab.popen("upstream", [sys.executable, "-m", "tests.dnsmodule.quicserver", "--host", lab.topo.upstream_ip4,
                                  *args], cwd=str(ROOT), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"test DNS server did not start ({line!r})"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    import trustme

    for lab in runtime_lab():
        t = lab.topo
        lab.start_danted(1080)
        ca = trustme.CA()
        cert = ca.issue_cert(t.upstream_ip4)
        cert.private_key_and_cert_chain_pem.write_to_path(str(lab.dir / "q-cert.pem"))
        cert.private_key_pem.write_to_path(str(lab.dir / "q-key.pem"))
        ca.cert_pem.write_to_path(str(lab.dir / "q-ca.pem"))
        tls = ["--cert", str(lab.dir / "q-cert.pem"), "--key", str(lab.dir / "q-key.pem")]
        start_server(lab, "--plain", str(PROXIED), "--doq", str(PROXIED_DOQ), "--h3", "8444", *tls)
        start_server(lab, "--plain", str(DIRECT), "--doq", str(DIRECT_DOQ), "--h3", str(DIRECT_H3), *tls,
                     "--zone", "poison.test=10.232.9.9", "ok.test=10.232.9.1")
        start_server(lab, "--plain", str(POISONER), "--zone", "poison.test=10.66.6.6", "ok.test=10.232.9.1",
                     "evil.test=10.77.0.1")
        lab.ca = lab.dir / "q-ca.pem"  # type: ignore[attr-defined]  # the test's CA travels with its lab
        yield lab


@pytest.fixture(scope="module")
def gw(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:

    t = lab.topo
    up = t.upstream_ip4
    cfg = lab_config(t, rules=[f"dip({up}) && dport({PROXIED}, {PROXIED_DOQ}) -> proxy"]) + f"""\
dns:
  bind: '{t.gateway_lan_ip4}:53'
  upstream:
    pu: 'udp://{up}:{PROXIED}'
    pt: 'tcp://{up}:{PROXIED}'
    pq: 'quic://{up}:{PROXIED_DOQ}'
    du: 'udp://{up}:{DIRECT}'
    dq: 'quic://{up}:{DIRECT_DOQ}'
    dh3: 'h3://{up}:{DIRECT_H3}/dns-query'
    poisoner: 'udp://{up}:{POISONER}'
  routing:
    request:
      rules:
        - "qname(suffix: pu.test) -> pu"
        - "qname(suffix: pt.test) -> pt"
        - "qname(suffix: pq.test) -> pq"
        - "qname(suffix: du.test) -> du"
        - "qname(suffix: dq.test) -> dq"
        - "qname(suffix: dh3.test) -> dh3"
      fallback: poisoner
    response:
      rules:
        - "upstream(poisoner) && ip(10.66.0.0/16) -> du"
        - "ip(10.77.0.0/16) -> reject"
      fallback: accept
"""
    ca = lab.ca  # type: ignore[attr-defined]  # the fixture's test CA, which the gateway trusts
    with trusting(ca), gateway(lab, cfg, tmp_path_factory.mktemp("dnsup")) as g:
        g.wait_log(r"dns listening on 10\.231\.1\.1:53")
        yield g


def resolve(lab: Lab, name: str) -> dns.message.Message:
    q = dns.message.make_query(name, "A")
    with lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM) as s:
        return dns.query.udp(q, lab.topo.gateway_lan_ip4, timeout=6, sock=s)


def addresses(r: dns.message.Message) -> list[str]:
    return [rd.address for rrset in r.answer if rrset.rdtype == 1 for rd in rrset]


def test_each_upstream_is_dialled_through_the_routing_decision_for_its_address(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    seen = {name: addresses(resolve(lab, f"whoami.{name}.test")) for name in ("pu", "pt", "pq", "du", "dq", "dh3")}
    # proxied (udp through the group's UDP ASSOCIATE, tcp through its CONNECT, DoQ over that UDP
    # path): the upstream sees danted's address; direct ones see the gateway's WAN address
    assert seen == {"pu": [t.upstream_ip4], "pt": [t.upstream_ip4], "pq": [t.upstream_ip4],
                    "du": [t.gateway_wan_ip4], "dq": [t.gateway_wan_ip4], "dh3": [t.gateway_wan_ip4]}, seen
    log = gw.log_text()
    assert "dns upstream pu: udp://" in log and "(udp via proxy, tcp via proxy)" in log


def test_poisoned_answer_is_rejected_by_a_response_rule_and_asked_again_elsewhere(lab: Lab, gw: Gw) -> None:
    assert addresses(resolve(lab, "poison.test")) == ["10.232.9.9"]  # the poisoner said 10.66.6.6
    assert addresses(resolve(lab, "ok.test")) == ["10.232.9.1"]  # accepted from the poisoner
    r = resolve(lab, "evil.test")  # `reject`: NOERROR with nothing in it, as dae answers
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    assert gw.alive
