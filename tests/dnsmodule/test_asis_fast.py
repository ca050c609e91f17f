"""Hijacked queries routed `asis` (the hijack default: ask the resolver the client asked) on the
callback miss path, through the hijack listener's own dispatch (harness.HijackTap) against
loopback resolvers: the answer leaves from a callback, not a task, with its addresses bound
before; identical questions join one flight; a truncated answer is asked over TCP; a resolver
that never answers is SERVFAIL within the upstream's timeout; each origin asks its own
resolver; a dns.bind client (no origin) is SERVFAIL, even beside a hijacked flight. And
AsisUpstreams closes an evicted resolver's upstream only after its queries had their time."""
from __future__ import annotations

import asyncio
import ipaddress
import time

import dns.flags
import dns.message
import dns.rcode

from dae_py.runtime.dns import DnsModule
from dae_py.runtime.dns.asis import ORIGIN, AsisUpstreams

from .fakes import FakeUpstream, RecordingBindings, Zone
from .harness import ZONE, HijackTap, RawUpstream, addresses, client, config, hijacked, plain, recv, run, with_module


def origin_of(up: FakeUpstream | RawUpstream) -> tuple[str, int]:
    return ("127.0.0.1", up.port)


def test_an_asis_miss_is_answered_from_a_callback_with_its_addresses_bound_first() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, tap: HijackTap, up: FakeUpstream) -> None:
        await tap.warm(origin_of(up))
        taken, asked = mod.fast.taken, up.udp_queries
        q = plain("www.proxied.test")  # a CNAME chain to edge.cdn.test, bound by the query name's bits
        tap.ask(q, origin_of(up))
        assert not tap._tasks and mod.fast.taken == taken + 1  # no task: the callback path took it
        got = await tap.answer_to(q)
        assert not got.in_task  # sent from the upstream socket's reader callback
        assert got.origin == origin_of(up) and addresses(got.answer) == ["10.232.1.2"]
        assert got.bound.get(ipaddress.ip_address("10.232.1.2")) == 0b01  # bound before it left
        assert up.udp_queries == asked + 1 and up.tcp_queries == 0
        again = plain("www.proxied.test")
        tap.ask(again, origin_of(up))  # now a hit, answered at once
        assert addresses((await tap.answer_to(again)).answer) == ["10.232.1.2"] and up.udp_queries == asked + 1
    hijacked(body, lambda: FakeUpstream(ZONE))


def test_identical_asis_questions_in_flight_are_asked_once_and_a_general_path_one_joins() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, tap: HijackTap, up: FakeUpstream) -> None:
        await tap.warm(origin_of(up))
        asked, joined = up.udp_queries, mod.cache.deduplicated
        qs = [plain("a.proxied.test") for _ in range(10)]
        for q in qs:
            tap.ask(q, origin_of(up))
        edns = dns.message.make_query("a.proxied.test", "A", use_edns=0)  # EDNS: the general path's
        tap.ask(edns, origin_of(up))
        got = {}
        for _ in range(len(qs) + 1):
            sent = await asyncio.wait_for(tap.sent.get(), 3)
            got[sent.answer.id] = addresses(sent.answer)
        assert got == {q.id: ["10.232.1.1"] for q in [*qs, edns]}  # each client its own id
        assert up.udp_queries == asked + 1
        assert mod.cache.deduplicated == joined + len(qs)  # 9 joined the callback flight, the EDNS one its Future
        assert mod.fast.taken >= 1 and not mod.fast.flights
    hijacked(body, lambda: FakeUpstream(ZONE, delay=0.2))


def test_a_truncated_asis_answer_is_asked_over_tcp_and_bound_before_it_leaves() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, tap: HijackTap, up: FakeUpstream) -> None:
        await tap.warm(origin_of(up))
        udp, tcp = up.udp_queries, up.tcp_queries
        handed = mod.fast.handed_over
        q = plain("a.proxied.test")
        tap.ask(q, origin_of(up))
        assert not tap._tasks  # the callback path took it (its TCP leg is the fast path's own task)
        got = await tap.answer_to(q)
        assert addresses(got.answer) == ["10.232.1.1"] and not got.answer.flags & dns.flags.TC
        assert got.bound.get(ipaddress.ip_address("10.232.1.1")) == 0b01
        assert mod.fast.handed_over == handed + 1
        assert (up.udp_queries, up.tcp_queries) == (udp + 1, tcp + 1)  # one UDP, then TCP: not UDP again
    hijacked(body, lambda: FakeUpstream(ZONE, truncate_udp=True))


def test_an_asis_resolver_that_never_answers_is_servfail_within_the_upstream_timeout() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, tap: HijackTap, up: RawUpstream) -> None:
        await tap.warm(origin_of(up), up)
        up.tcp_connections()  # the warm-up's, if any
        taken = mod.fast.taken
        lost = plain("a.proxied.test")
        t0 = time.monotonic()
        tap.ask(lost, origin_of(up))
        got = await tap.answer_to(lost, mod.deadline + 1.0)
        waited = time.monotonic() - t0
        assert mod.fast.taken == taken + 1
        assert got.answer.rcode() == dns.rcode.SERVFAIL
        # UDP for half the 0.5 s timeout, then TCP (connected, never answered) for the rest
        assert 0.45 <= waited < mod.deadline
        assert up.tcp_connections() == 1
        assert mod.failed == 1 and b.events == []
        assert not mod.fast.flights and not mod.cache.is_in_flight(("a.proxied.test.", 1, 1))
    hijacked(body, lambda: RawUpstream(tcp=True))


def test_each_origin_is_asked_for_its_own_queries() -> None:
    async def main() -> None:
        ups = [await FakeUpstream(ZONE).start(),
               await FakeUpstream(Zone({"x.proxied.test.": [("A", 60, "10.232.7.7")]})).start()]
        try:
            async def body(mod: DnsModule, b: RecordingBindings) -> None:
                tap = HijackTap(mod, b)
                try:
                    for up in ups:
                        await tap.warm(origin_of(up))
                    taken = mod.fast.taken
                    for up, name, want in ((ups[0], "a.proxied.test", "10.232.1.1"),
                                           (ups[1], "x.proxied.test", "10.232.7.7")):
                        asked = up.udp_queries
                        q = plain(name)
                        tap.ask(q, origin_of(up))
                        got = await tap.answer_to(q)
                        assert got.origin == origin_of(up) and addresses(got.answer) == [want] and not got.in_task
                        assert up.udp_queries == asked + 1
                    assert mod.fast.taken == taken + 2
                finally:
                    await tap.close()
            await with_module(config({"main": ("udp", ups[0].port)}, req_fallback="asis"), body)
        finally:
            for up in ups:
                await up.close()
    run(main)


def test_a_dns_bind_client_routed_asis_gets_servfail_even_beside_a_hijacked_flight() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, tap: HijackTap, up: FakeUpstream) -> None:
        s = client(mod.listener.addresses[0])
        try:
            q = plain("x.proxied.test")
            s.send(q.to_wire())
            r = await recv(s)
            assert r.id == q.id and r.rcode() == dns.rcode.SERVFAIL  # it asked us: no other server
            assert mod.fast.taken == 0 and up.udp_queries == 0
            await tap.warm(origin_of(up))
            hijacked_q, bound_q = plain("a.proxied.test"), plain("a.proxied.test")
            tap.ask(hijacked_q, origin_of(up))  # a callback flight to the client's resolver ...
            s.send(bound_q.to_wire())  # ... which the dns.bind client's same question does not join
            r = await recv(s)
            assert r.id == bound_q.id and r.rcode() == dns.rcode.SERVFAIL
            got = await tap.answer_to(hijacked_q)
            assert addresses(got.answer) == ["10.232.1.1"] and not got.in_task
        finally:
            s.close()
    hijacked(body, lambda: FakeUpstream(ZONE, delay=0.2))


def test_an_evicted_resolvers_upstream_is_closed_only_after_its_timeout() -> None:
    async def main() -> None:
        asis = AsisUpstreams(so_mark=0, timeout=0.2, limit=1)
        closed: list[tuple[str, int]] = []
        try:
            async def make(origin: tuple[str, int]) -> None:
                ORIGIN.set(origin)
                up = await asis.current()
                assert up is not None
                real = up.close

                async def spy() -> None:
                    closed.append(origin)
                    await real()
                up.close = spy  # type: ignore[method-assign]  # records when it is closed

            await asyncio.create_task(make(("127.0.0.1", 5301)))
            await asyncio.create_task(make(("127.0.0.1", 5302)))  # evicts 5301
            assert asis.ready(("127.0.0.1", 5301)) is None and closed == []  # its queries may still be out
            await asyncio.sleep(0.25)
            await asyncio.create_task(make(("127.0.0.1", 5303)))  # evicts 5302; 5301's time has passed
            assert closed == [("127.0.0.1", 5301)]
        finally:
            await asis.close()
        assert sorted(closed) == [("127.0.0.1", 5301), ("127.0.0.1", 5302), ("127.0.0.1", 5303)]  # all, once
    run(main)
