"""The DNS module in-process against loopback upstreams: routing, cache, in-flight joins,
truncation, SERVFAIL, and binding before the answer. The config goes through the real compiler,
so these rules mean what the manifest says. The set-up is harness.py's."""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

from dae_py.runtime.dns import DnsModule

from .fakes import FakeUpstream, RecordingBindings, Zone
from .harness import (
    ZONE,
    addresses,
    ask,
    config,
    one_upstream,
    over_udp,
    plain,
    recv,
    replied,
    run,
    with_module,
    with_upstreams,
)


def test_answer_addresses_are_bound_to_their_domain_bits_before_the_answer_is_returned() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        r = await ask(mod, "a.proxied.test")
        assert addresses(r) == ["10.232.1.1"]
        assert b.entries == {ipaddress.ip_address("10.232.1.1"): 0b01}  # bit 0: proxied.test
        r = await ask(mod, "a.proxied.test", "AAAA")
        assert b.entries[ipaddress.ip_address("fd00:232::1")] == 0b01
        r = await ask(mod, "b.direct.test")
        assert b.entries[ipaddress.ip_address("10.232.2.1")] == 0b10
    one_upstream(body)


def test_cname_chain_names_contribute_their_bits() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        await ask(mod, "www.proxied.test")  # the query name matches, the target does not
        assert b.entries[ipaddress.ip_address("10.232.1.2")] == 0b01
        await ask(mod, "cdn.direct.test")  # the query name does not, its CNAME target does
        assert b.entries[ipaddress.ip_address("10.232.1.3")] == 0b01
    one_upstream(body)


def test_cache_hit_ages_ttls_and_does_not_ask_upstream_again() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        first = await ask(mod, "a.proxied.test")
        clock = [1000.0]
        mod.cache.clock = lambda: clock[0]
        mod.cache._entries.clear()
        await ask(mod, "a.proxied.test")
        asked = up.udp_queries
        clock[0] += 20
        second = await ask(mod, "a.proxied.test")
        assert up.udp_queries == asked
        assert second.answer[0].ttl == first.answer[0].ttl - 20
        clock[0] += 41  # past the 60 s TTL: asked again
        await ask(mod, "a.proxied.test")
        assert up.udp_queries == asked + 1
    one_upstream(body, extra="  optimistic_cache: false\n")  # serve-stale: test_cache.py


def test_fixed_domain_ttl_overrides_the_record_ttl() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        r = await ask(mod, "fixed.test")
        assert r.answer[0].ttl == 7
    one_upstream(body, extra="  fixed_domain_ttl:\n    fixed.test: 7\n")


def test_identical_queries_in_flight_are_asked_upstream_once() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        answers = await asyncio.gather(*(ask(mod, "a.proxied.test") for _ in range(20)))
        assert all(addresses(r) == ["10.232.1.1"] for r in answers)
        assert len({r.id for r in answers}) > 1  # each client got its own id back
        assert up.udp_queries == 1
        assert mod.cache.deduplicated == 19
    one_upstream(body, upstream_kw=dict(delay=0.2))


def test_truncated_udp_answer_is_retried_over_tcp() -> None:
    async def main() -> None:
        up = await FakeUpstream(ZONE, truncate_udp=True).start()
        try:
            for scheme in ("udp", "tcp+udp"):
                async def body(mod: DnsModule, b: RecordingBindings) -> None:
                    r = await ask(mod, "a.proxied.test")
                    assert addresses(r) == ["10.232.1.1"]
                    assert not r.flags & dns.flags.TC
                before = up.tcp_queries
                await with_module(config({"main": (scheme, up.port)}), body)
                assert up.tcp_queries == before + 1
        finally:
            await up.close()
    run(main)


def test_dead_upstream_is_answered_servfail_within_the_deadline() -> None:
    async def main() -> None:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))  # bound, never read: queries vanish
        port = s.getsockname()[1]
        try:
            async def body(mod: DnsModule, b: RecordingBindings) -> None:
                r = await asyncio.wait_for(ask(mod, "a.proxied.test"), mod.deadline + 1.0)
                assert r.rcode() == dns.rcode.SERVFAIL
                assert b.events == []
                assert mod.failed == 1
            await with_module(config({"main": ("udp", port)}), body)
        finally:
            s.close()
    run(main)


def test_request_routing_rejects_and_chooses_upstreams_by_qname_and_qtype() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, ups: dict[str, FakeUpstream]) -> None:
        r = await ask(mod, "ads.example")
        assert r.rcode() == dns.rcode.NOERROR and r.answer == []  # dae's reject
        assert ups["main"].udp_queries == ups["other"].tcp_queries == 0
        r = await ask(mod, "a.proxied.test", "AAAA")
        assert addresses(r) == ["fd00::9"]
        r = await ask(mod, "a.proxied.test")
        assert addresses(r) == ["10.232.1.1"]
    other = Zone({"a.proxied.test.": [("A", 60, "10.232.9.9"), ("AAAA", 60, "fd00::9")]})
    with_upstreams(body, {"main": ("udp", ZONE, {}), "other": ("tcp", other, {})},
                   request=["qname(suffix: ads.example) -> reject", "qtype(aaaa) -> other"])


def test_response_routing_requeries_a_poisoned_answer_with_another_upstream() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, ups: dict[str, FakeUpstream]) -> None:
        r = await ask(mod, "x.test")
        assert addresses(r) == ["10.232.5.5"]
        assert ups["main"].udp_queries == 1 and ups["clean"].tcp_queries == 1
    with_upstreams(body, {"main": ("udp", Zone({"x.test.": [("A", 60, "10.99.0.1")]}), {}),
                          "clean": ("tcp", Zone({"x.test.": [("A", 60, "10.232.5.5")]}), {})},
                   response=["upstream(clean) -> accept", "ip(10.99.0.0/16) -> clean"])


def test_ipversion_prefer_4_empties_aaaa_of_a_name_with_cached_a_records() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        await ask(mod, "a.proxied.test", "A")
        r = await ask(mod, "a.proxied.test", "AAAA")
        assert r.rcode() == dns.rcode.NOERROR and r.answer == []
    one_upstream(body, extra="  ipversion_prefer: 4\n")


def test_bindings_expire_after_ttl_plus_grace_and_stay_bounded() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        clock = [0.0]
        mod.binder.clock = lambda: clock[0]
        mod.binder.grace = 10
        await ask(mod, "b.direct.test")  # TTL 5
        clock[0] = 14.0
        assert mod.binder.sweep() == 0
        clock[0] = 15.5
        assert mod.binder.sweep() == 1
        assert b.entries == {}
        mod.binder.max_entries = 1
        await ask(mod, "a.proxied.test")
        mod.cache._entries.clear()
        await ask(mod, "x.proxied.test")
        assert len(mod.binder) == 1 and mod.binder.evicted == 1
    one_upstream(body)


def test_malformed_messages_get_formerr_or_nothing() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        assert await mod.answer(b"\x00", 0) is None
        q = dns.message.make_query("a.proxied.test", "A")
        wire = q.to_wire()
        r = dns.message.from_wire(replied(await mod.answer(wire[:-3], 0)))  # truncated question
        assert r.rcode() == dns.rcode.FORMERR and r.id == q.id
        two = bytearray(wire)
        two[5] = 2  # QDCOUNT 2, one question present
        r = dns.message.from_wire(replied(await mod.answer(bytes(two), 0)))
        assert r.rcode() == dns.rcode.FORMERR
        none = dns.message.Message()
        r = dns.message.from_wire(replied(await mod.answer(none.to_wire(), 0)))
        assert r.rcode() == dns.rcode.FORMERR
        resp = dns.message.make_response(q)
        assert await mod.answer(resp.to_wire(), 0) is None  # never answer a response
        r = await ask(mod, "a.proxied.test")
        assert addresses(r) == ["10.232.1.1"]
    one_upstream(body)


def test_cache_hits_keep_the_clients_id_and_question_case_and_restore_swept_bindings() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        for _ in range(3):  # rendered once, then the same bytes with each client's id
            await ask(mod, "a.proxied.test")
        r = await ask(mod, "A.Proxied.TEST")
        assert r.question[0].name.labels[:2] == (b"A", b"Proxied")
        assert addresses(r) == ["10.232.1.1"] and up.udp_queries == 1
        b.entries.clear()
        mod.binder._expiry.clear()  # as after an eviction
        await ask(mod, "a.proxied.test")
        assert b.entries == {ipaddress.ip_address("10.232.1.1"): 0b01}
        writes = len(b.events)
        await ask(mod, "a.proxied.test")
        assert len(b.events) == writes  # all in place: no map write on a hit
    one_upstream(body)


def test_udp_cache_hits_are_answered_in_the_datagram_callback() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, s: socket.socket, up: FakeUpstream) -> None:
        spawned: list[tuple[Any, ...]] = []
        real_spawn = mod.listener.spawn_udp

        def spy(sock: socket.socket, data: bytes, addr: tuple[Any, ...]) -> None:
            spawned.append((sock, data, addr))
            real_spawn(sock, data, addr)
        mod.listener.spawn_udp = spy  # type: ignore[method-assign]  # a spy on the listener's dispatch
        for name in ("a.proxied.test", "a.proxied.test", "a.proxied.test", "A.PROXIED.test"):
            q = plain(name)
            s.send(q.to_wire())
            r = await recv(s)
            assert r.id == q.id and addresses(r) == ["10.232.1.1"]
            assert r.question[0].name.to_text() == name + "."  # the client's own case
        assert len(spawned) == 1  # only the miss took a task (the rest: parsed, then not)
        assert len(mod._plain) == 1
        q = dns.message.make_query("a.proxied.test", "A", use_edns=0)  # EDNS: the full path
        s.send(q.to_wire())
        r = await recv(s)
        assert r.id == q.id and r.edns == 0 and len(spawned) == 2
    over_udp(body, lambda: FakeUpstream(ZONE))
