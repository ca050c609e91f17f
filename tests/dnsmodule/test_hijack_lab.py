"""LAN DNS hijacked into the DNS module in a running gateway (templates/bpf/dns_hijack.h,
runtime/dns/hijack.py): clients ask an arbitrary resolver on plain port 53, unchanged, and get
the module's answers from that address; domain() rules then split their real HTTP and TLS flows
from the first connection after each answer. The lab is tests/dnsmodule/hijack_lab.py.

DAE_HIJACK_TRIALS sets the first-connection trials (default 2,000: ~5 s here at 2.5 ms a trial,
~15 s on a loaded machine); bench/dns_hijack_race.py runs 10,000.
"""
from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator

import dns.flags
import dns.message
import dns.query
import dns.rcode
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.dnsmodule import hijack_lab as hl
from tests.runtime.helpers import Gw, Lab, gateway, runtime_lab

pytestmark = pytest.mark.root

TRIALS = int(os.environ.get("DAE_HIJACK_TRIALS", "2000"))


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        lab.hijack_ca = hl.setup(lab, max(TRIALS // 2 + 1, 8))  # type: ignore[attr-defined]  # the lab's test CA
        yield lab


@pytest.fixture(scope="module")
def gw(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    with gateway(lab, hl.config(lab), tmp_path_factory.mktemp("hijackgw")) as g:
        g.wait_log(r"dns hijack listening on port 12346")
        yield g


def test_queries_to_any_resolver_are_answered_from_that_address_udp_tcp_v4_v6(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    for server in (hl.RESOLVER4, hl.RESOLVER6):
        for tcp in (False, True):
            r = hl.resolve(lab, "edge.cdn.test", server=server, tcp=tcp)  # UDP: source checked by dnspython
            assert hl.addresses(r) == ["10.233.3.1"], (server, tcp)
    assert hl.addresses(hl.resolve(lab, "v6.proxied.test", "AAAA", server=hl.RESOLVER6)) == [t.upstream_ip6]
    assert hl.resolve(lab, "x.ads.test").answer == []  # request routing applies to hijacked queries
    # a resolver address routing blocks: its DNS is hijacked all the same (only must_* is not)
    assert hl.addresses(hl.resolve(lab, "edge.cdn.test", server=hl.BLOCKED_RESOLVER, tcp=True)) == ["10.233.3.1"]
    assert hl.addresses(hl.resolve(lab, "edge.cdn.test", server=hl.BLOCKED_RESOLVER)) == ["10.233.3.1"]
    # and nothing answers at the resolver address itself: without the hijack these would fail
    with lab.socket("upstream", socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(1.0)
        s.sendto(dns.message.make_query("edge.cdn.test", "A").to_wire(), (hl.RESOLVER4, 53))
        with pytest.raises(OSError):  # refused (ICMP) or silence
            s.recv(512)


def test_first_connection_after_each_hijacked_answer_is_routed_by_its_domain(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    assert hl.seen_from(lab, hl.trial_address(TRIALS, True)) == t.client_ip4  # never answered: direct
    n, wrong, secs = hl.first_connection_trials(lab, TRIALS)
    assert wrong == [], f"{len(wrong)} of {n} first connections misrouted ({secs:.1f} s): {wrong[:10]}"


def test_cname_chain_and_aaaa_bind_through_the_hijack(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    r = hl.resolve(lab, "www.proxied.test", tcp=True)
    assert hl.addresses(r) == ["10.233.3.1"]
    assert hl.seen_from(lab, "10.233.3.1") == t.upstream_ip4  # bound by the chain's first name
    (ip6,) = hl.addresses(hl.resolve(lab, "v6.proxied.test", "AAAA", server=hl.RESOLVER6))
    assert hl.seen_from(lab, ip6) == t.upstream_ip6
    (ip6d,) = hl.addresses(hl.resolve(lab, "v6.direct.test", "AAAA", server=hl.RESOLVER6, tcp=True))
    assert hl.seen_from(lab, ip6d) == t.client_ip6


def test_a_truncated_hijacked_answer_is_retried_over_tcp_and_binds_every_address(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    r = hl.resolve(lab, "big.proxied.test")  # plain UDP, no EDNS: 512 bytes at most
    assert r.flags & dns.flags.TC and r.answer == []
    r = hl.resolve(lab, "big.proxied.test", tcp=True)  # what a stub resolver does next
    got = hl.addresses(r)
    assert sorted(got) == sorted(f"10.233.6.{i}" for i in range(1, 41))
    for ip in (got[0], got[-1]):
        assert hl.seen_from(lab, ip) == t.upstream_ip4


def curl(lab: Lab, url: str, resolver: str = hl.RESOLVER4) -> dict[str, object]:
    """curl by name from the client namespace, its resolv.conf naming `resolver` (bind-mounted in
    a private mount namespace: nothing outside changes)."""
    conf = lab.dir / "client-resolv.conf"
    conf.write_text(f"nameserver {resolver}\noptions timeout:2 attempts:1\n")
    ca = lab.hijack_ca  # type: ignore[attr-defined]  # set by the lab fixture
    script = f"mount --bind {conf} /etc/resolv.conf && exec curl -sS --max-time 8 --cacert {ca} {url}"
    out = lab.run("client", ["unshare", "--mount", "--propagation", "private", "sh", "-c", script], timeout=20)
    assert out.returncode == 0, f"curl {url}: {out.stderr}"
    return dict(json.loads(out.stdout))


def test_curl_by_name_splits_http_and_tls_between_direct_and_proxy(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    assert curl(lab, f"http://curl.proxied.test:{hl.HTTP_PORT}/")["peer"] == t.upstream_ip4  # danted
    assert curl(lab, f"http://curl.direct.test:{hl.HTTP_PORT}/")["peer"] == t.client_ip4
    assert curl(lab, f"https://curl.proxied.test:{hl.HTTPS_PORT}/")["peer"] == t.upstream_ip4
    assert curl(lab, f"https://curl.direct.test:{hl.HTTPS_PORT}/")["peer"] == t.client_ip4
    assert curl(lab, f"https://curl.proxied.test:{hl.HTTPS_PORT}/", resolver=hl.RESOLVER6)["peer"] == t.upstream_ip4


def test_must_direct_resolver_is_not_hijacked_and_nothing_loops(lab: Lab, gw: Gw) -> None:
    t = lab.topo
    before = gw.log_len()
    r = hl.resolve(lab, "must.proxied.test", server=hl.MUST_RESOLVER)
    assert hl.addresses(r) == ["10.233.4.3"]  # dnsmasq answered itself
    # the module never saw it: the answer bound nothing, so a proxied name's address goes direct
    assert hl.seen_from(lab, "10.233.4.3") == t.client_ip4
    # TCP too, and the same name through the hijack binds it
    assert hl.addresses(hl.resolve(lab, "must.proxied.test", server=hl.MUST_RESOLVER, tcp=True)) == ["10.233.4.3"]
    assert hl.seen_from(lab, "10.233.4.3") == t.client_ip4
    assert hl.addresses(hl.resolve(lab, "must.proxied.test")) == ["10.233.4.3"]
    assert hl.seen_from(lab, "10.233.4.3") == t.upstream_ip4
    r = hl.resolve(lab, "x.asis.test", server=hl.MUST_RESOLVER)
    assert r.rcode() == dns.rcode.REFUSED  # dnsmasq's own answer (not its zone), not the module's
    # asis asks the resolver the client asked (the lab's responder on the upstream, empty
    # NOERROR) with the module's mark, so its query is not hijacked again: no loop
    r = hl.resolve(lab, "x.asis.test", server=t.upstream_ip4)
    assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    # where the client's resolver does not answer, asis is SERVFAIL within the module's bound
    r = hl.resolve(lab, "y.asis.test", timeout=5.0)
    assert r.rcode() == dns.rcode.SERVFAIL
    gw.wait_log(r"y\.asis\.test\. A: SERVFAIL", since=before)
    assert gw.alive


def test_a_resolver_on_the_gateway_answers_for_itself_with_or_without_must_direct(lab: Lab, gw: Gw) -> None:
    hl.start_gateway_resolver(lab)
    for server in (hl.GW_RESOLVER4, hl.GW_MUST4, hl.GW_RESOLVER6):
        for tcp in (False, True):
            r = hl.resolve(lab, "gw.local.test", server=server, tcp=tcp)
            assert hl.addresses(r) == ["10.233.5.1"], (server, tcp)  # dnsmasq's, not the module's
    # the module, hijacking a query to any other address, does not know that name
    assert hl.resolve(lab, "gw.local.test").rcode() == dns.rcode.REFUSED  # the zone's dnsmasq
    assert hl.addresses(hl.resolve(lab, "edge.cdn.test")) == ["10.233.3.1"]
    assert gw.alive


def test_reply_sockets_only_send_and_share_no_local_port(lab: Lab, gw: Gw) -> None:
    """hijack.reply_socket in the gateway namespace: on a foreign address it binds beside another
    transparent socket (SO_REUSEADDR, as the relay's reply sockets); on one of the host's own it
    refuses to share the port; and it never queues what is sent to it."""
    from dae_py.runtime.dns.hijack import reply_socket
    from dae_py.runtime.relay.listen import transparent_socket

    t = lab.topo

    def probe() -> tuple[bool, bool, bytes | None]:
        other = transparent_socket(socket.SOCK_DGRAM, "10.233.7.7", 53)
        shared = reply_socket(("10.233.7.7", 53), 0x800000)
        holder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        holder.bind((t.gateway_lan_ip4, 5399))
        try:
            reply_socket((t.gateway_lan_ip4, 5399), 0x800000)
            took_local = True
        except OSError:
            took_local = False
        mine = reply_socket((t.gateway_lan_ip4, 5398), 0x800000)
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.sendto(b"x" * 20, (t.gateway_lan_ip4, 5398))
        mine.setblocking(False)
        try:
            got: bytes | None = mine.recv(64)
        except BlockingIOError:
            got = None
        for s in (other, shared, holder, mine, sender):
            s.close()
        return True, took_local, got

    shared_ok, took_local, got = lab.call_in("gateway", probe)
    assert shared_ok and not took_local and got is None


def test_malformed_dns_over_the_hijack_path_breaks_nothing(lab: Lab, gw: Gw) -> None:
    udp = lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM)
    try:
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(st.one_of(st.binary(max_size=600),
                         st.binary(min_size=12, max_size=12).map(lambda h: h + b"\x00" * 5),
                         st.builds(lambda n, b: dns.message.make_query(n, "A").to_wire()[:b],
                                   st.sampled_from(["a.test", "edge.cdn.test"]), st.integers(0, 40))))
        def send(data: bytes) -> None:
            udp.sendto(data, (hl.RESOLVER4, 53))

        send()
    finally:
        udp.close()
    for junk in (b"\x00\x05hello", b"\xff\xff" + os.urandom(64), struct.pack("!H", 3) + b"abc"):
        with lab.socket("client", socket.AF_INET) as s:
            s.settimeout(3)
            s.connect((hl.RESOLVER4, 53))
            s.sendall(junk)
    assert hl.addresses(hl.resolve(lab, "edge.cdn.test")) == ["10.233.3.1"]
    assert hl.addresses(hl.resolve(lab, "edge.cdn.test", server=hl.RESOLVER6, tcp=True)) == ["10.233.3.1"]
    assert gw.alive
