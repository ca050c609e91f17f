"""The cache's serve-stale (RFC 8767) and size limit, through the module: an expired answer is
served at once with a 30 s TTL while one background query refreshes it (optimistic_cache), or
in place of SERVFAIL when the upstream is gone; at most max_cache_size entries."""
from __future__ import annotations

import asyncio
import time

from dae_py.runtime.dns import DnsModule
from dae_py.runtime.dns.cache import STALE_ANSWER_TTL

from .fakes import FakeUpstream, RecordingBindings
from .harness import addresses, ask, one_upstream


def test_expired_answer_is_served_at_once_and_refreshed_once_in_the_background() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        await ask(mod, "a.proxied.test")
        clock = [time.monotonic()]
        mod.cache.clock = lambda: clock[0]
        assert up.udp_queries == 1
        clock[0] += 61  # past the 60 s TTL
        t0 = time.perf_counter()
        stale = await asyncio.gather(*(ask(mod, "a.proxied.test") for _ in range(10)))
        took = time.perf_counter() - t0
        assert took < 0.15, f"stale answers waited {took:.3f}s for the upstream (0.3 s late)"
        assert all(addresses(r) == ["10.232.1.1"] and r.answer[0].ttl == STALE_ANSWER_TTL for r in stale)
        await asyncio.sleep(0.5)  # the one background refresh lands
        assert up.udp_queries == 2
        fresh = await ask(mod, "a.proxied.test")
        assert fresh.answer[0].ttl == 60 and up.udp_queries == 2  # from the refreshed entry
        assert mod.cache.stale_served == 10
    one_upstream(body, upstream_kw=dict(delay=0.3))


def test_without_optimistic_cache_an_expired_answer_is_asked_again_but_beats_servfail() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        await ask(mod, "a.proxied.test")
        clock = [time.monotonic()]
        mod.cache.clock = lambda: clock[0]
        clock[0] += 61
        await ask(mod, "a.proxied.test")
        assert up.udp_queries == 2  # asked before answering
        clock[0] += 61
        await up.close()  # the upstream is gone: no SERVFAIL while the expired answer is there
        t0 = time.perf_counter()
        r = await ask(mod, "a.proxied.test")
        assert addresses(r) == ["10.232.1.1"] and r.answer[0].ttl == STALE_ANSWER_TTL
        assert time.perf_counter() - t0 < 1.6  # within the module's deadline
    one_upstream(body, extra="  optimistic_cache: false\n")


def test_cache_holds_at_most_max_cache_size_entries_dropping_the_least_recently_used() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        names = ["a.proxied.test", "edge.cdn.test", "x.proxied.test", "b.direct.test", "fixed.test"]
        for n in names:
            await ask(mod, n)
        assert len(mod.cache) == 3
        asked = up.udp_queries
        await ask(mod, names[-1])  # kept
        assert up.udp_queries == asked
        await ask(mod, names[0])  # evicted first: asked again
        assert up.udp_queries == asked + 1
    one_upstream(body, extra="  max_cache_size: 3\n")


def test_plain_hits_answer_from_the_stored_wire_and_restore_lost_bindings_within_a_second() -> None:
    import ipaddress

    import dns.message

    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        clock = [5000.5]
        mod.cache.clock = lambda: clock[0]
        q = dns.message.make_query("a.proxied.test", "A", use_edns=False)
        await mod.answer(q.to_wire(), 0)  # a miss: asked, cached, bound
        assert mod.answer_now(q.to_wire()) is not None  # parsed once, rendered, key remembered
        q2 = dns.message.make_query("a.proxied.test", "A", use_edns=False)
        out = mod.answer_now(q2.to_wire())
        assert out is not None
        r = dns.message.from_wire(out)
        assert r.id == q2.id and addresses(r) == ["10.232.1.1"]
        b.entries.clear()
        mod.binder._expiry.clear()  # as after an eviction
        clock[0] += 0.6  # the next clock second: an entry's bindings are checked once per second
        for _ in range(2):
            assert mod.answer_now(q2.to_wire()) is not None
        assert b.entries == {ipaddress.ip_address("10.232.1.1"): 0b01}
        writes = len(b.events)
        assert mod.answer_now(q2.to_wire()) is not None
        assert len(b.events) == writes and up.udp_queries == 1
    one_upstream(body)


def test_a_miss_passes_the_upstream_answer_on_with_the_clients_id_case_and_edns() -> None:
    import dns.message

    async def body(mod: DnsModule, b: RecordingBindings, up: FakeUpstream) -> None:
        for name, edns in (("A.Proxied.Test", False), ("X.proxied.TEST", True)):
            q = dns.message.make_query(name, "A", use_edns=0 if edns else False)
            wire = await mod.answer(q.to_wire(), 0)
            assert wire is not None
            r = dns.message.from_wire(wire)
            assert r.id == q.id and r.question[0].name.to_text() == name + "."
            assert (r.edns >= 0) == edns and addresses(r)
        q = dns.message.make_query("fixed.test", "A")  # fixed_domain_ttl rewrites TTLs: rendered
        wire = await mod.answer(q.to_wire(), 0)
        assert wire is not None and dns.message.from_wire(wire).answer[0].ttl == 7
    one_upstream(body, extra="  fixed_domain_ttl:\n    fixed.test: 7\n")
