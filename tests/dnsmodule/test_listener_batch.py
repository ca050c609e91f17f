"""The UDP listener's reader and the module's callback-only miss path, through real sockets on
loopback: a burst read in one wake-up, garbage among good queries, upstream answers with the
wrong id, an upstream that never answers, a truncated answer asked again over TCP, a
general-path query joining a fast flight, and bind-before-answer on the fast path. The plain
query builder is checked against dnspython's own parse. The set-up is harness.py's."""
from __future__ import annotations

import asyncio
import ipaddress
import socket
import struct
import time
from typing import Any, cast

import dns.flags
import dns.message
import dns.name
import dns.rcode
from hypothesis import given, settings
from hypothesis import strategies as st

from dae_py.runtime.dns import DnsModule
from dae_py.runtime.dns.listener import DnsListener
from dae_py.runtime.dns.module import plain_query
from dae_py.runtime.dns.upstreams.udp import POOL_SIZE

from .fakes import FakeUpstream, RecordingBindings
from .harness import ZONE, RawUpstream, addresses, over_udp, plain, recv, warm


def test_a_burst_of_queries_is_read_and_answered_in_one_wake_up() -> None:
    calls = 0
    real = DnsListener._readable

    def counting(self: DnsListener, sock: socket.socket) -> None:
        nonlocal calls
        calls += 1
        real(self, sock)

    async def body(mod: DnsModule, b: RecordingBindings, s: socket.socket, up: FakeUpstream) -> None:
        nonlocal calls
        s.send(plain("a.proxied.test").to_wire())  # the miss that fills the cache
        assert addresses(await recv(s)) == ["10.232.1.1"]
        await asyncio.sleep(0.05)
        calls = 0
        sent = [plain("a.proxied.test") for _ in range(60)]
        for q in sent:  # all queued before the loop runs again
            s.send(q.to_wire())
        got = {}
        for _ in sent:
            r = await recv(s)
            got[r.id] = addresses(r)
        assert got == {q.id: ["10.232.1.1"] for q in sent}
        assert calls == 1  # one readiness callback read the whole burst
        assert up.udp_queries == 1
    DnsListener._readable = counting  # type: ignore[method-assign]  # counts wake-ups; registered at start
    try:
        over_udp(body, lambda: FakeUpstream(ZONE))
    finally:
        DnsListener._readable = real  # type: ignore[method-assign]  # the real reader back


def test_garbage_among_good_queries_loses_none_of_the_good_ones() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, s: socket.socket, up: FakeUpstream) -> None:
        good = [plain("a.proxied.test"), plain("x.proxied.test"), plain("b.direct.test"), plain("a.proxied.test")]
        response = dns.message.make_response(plain("a.proxied.test")).to_wire()
        header_only = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0) + b"\x05abc"
        junk = [b"", b"\xff", b"\x00" * 11, response, header_only, bytes(range(200))]
        for i, q in enumerate(good):  # good, junk, junk, good, ...: all in one burst
            s.send(q.to_wire())
            for bad in junk[2 * i:2 * i + 2]:
                s.send(bad)
        want = {q.id for q in good}
        seen: dict[int, dns.message.Message] = {}
        deadline = time.monotonic() + 3
        while want - set(seen) and time.monotonic() < deadline:
            r = await recv(s)
            seen[r.id] = r
        for q in good:
            assert seen[q.id].rcode() == dns.rcode.NOERROR and addresses(seen[q.id])
        formerr = seen.get(0x4242)  # a readable header of a broken query: FORMERR
        assert formerr is not None and formerr.rcode() == dns.rcode.FORMERR
        stray = struct.unpack_from("!H", response)[0]
        assert stray not in seen or stray in want  # the stray response got no answer
    over_udp(body, lambda: FakeUpstream(ZONE))


def test_an_upstream_answer_with_the_wrong_id_is_ignored_and_a_joiner_gets_the_right_one() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, s: socket.socket, up: RawUpstream) -> None:
        await warm(s, up)
        taken = mod.fast.taken
        first = plain("a.proxied.test")
        s.send(first.to_wire())
        uq, addr = await up.query()
        assert mod.fast.taken == taken + 1  # on the callback path
        joiner = dns.message.make_query("a.proxied.test", "A", use_edns=0)  # EDNS: general path
        s.send(joiner.to_wire())
        await asyncio.sleep(0.05)
        up.answer(uq, addr, "10.66.6.6", qid=(uq.id + 1) % 65536)  # a spoof: wrong id
        await asyncio.sleep(0.05)
        up.answer(uq, addr, "10.232.1.1")
        got = {}
        for _ in range(2):
            r = await recv(s)
            got[r.id] = addresses(r)
        assert got == {first.id: ["10.232.1.1"], joiner.id: ["10.232.1.1"]}
        assert mod.cache.deduplicated >= 1
    over_udp(body, RawUpstream)


def test_an_upstream_that_never_answers_gets_servfail_after_its_timeout() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, s: socket.socket, up: RawUpstream) -> None:
        await warm(s, up)
        taken = mod.fast.taken
        lost = plain("a.proxied.test")
        t0 = time.monotonic()
        s.send(lost.to_wire())
        r = await recv(s, mod.deadline + 1.0)
        waited = time.monotonic() - t0
        assert mod.fast.taken == taken + 1
        assert r.id == lost.id and r.rcode() == dns.rcode.SERVFAIL
        assert waited >= 0.45  # the upstream's 0.5 s timer ran out: not answered early
        assert mod.failed == 1 and b.events == []
        assert not mod.fast.flights and not mod.cache.is_in_flight(("a.proxied.test.", 1, 1))
    over_udp(body, RawUpstream)


def test_a_truncated_answer_on_the_fast_path_is_asked_again_over_tcp() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, s: socket.socket, up: FakeUpstream) -> None:
        names = [f"n{i}.test" for i in range(POOL_SIZE)] + ["a.proxied.test"]
        for name in names:  # the first ones open the pool's associations
            q = plain(name)
            s.send(q.to_wire())
            r = await recv(s)
            assert r.id == q.id
        assert addresses(r) == ["10.232.1.1"]
        assert mod.fast.handed_over == 1 and up.tcp_queries == len(names)
        assert up.udp_queries == len(names)  # the fast path's TCP leg did not ask over UDP again
        assert mod.upstreams["main"].retried_tcp == len(names)  # type: ignore[attr-defined]  # a UdpUpstream
    over_udp(body, lambda: FakeUpstream(ZONE, truncate_udp=True))


def test_the_fast_path_binds_before_the_answer_leaves() -> None:
    async def body(mod: DnsModule, b: RecordingBindings, s: socket.socket, up: FakeUpstream) -> None:
        for i in range(POOL_SIZE):  # open every association of the pool
            s.send(plain(f"n{i}.test").to_wire())
            await recv(s)
        taken = mod.fast.taken
        s.send(plain("www.proxied.test").to_wire())  # a CNAME chain to edge.cdn.test
        r = await recv(s)
        assert mod.fast.taken == taken + 1
        assert addresses(r) == ["10.232.1.2"]
        assert b.entries.get(ipaddress.ip_address("10.232.1.2")) == 0b01
    over_udp(body, lambda: FakeUpstream(ZONE))


@settings(max_examples=400, deadline=None)
@given(labels=st.lists(st.binary(min_size=1, max_size=12), max_size=5), qid=st.integers(0, 65535),
       flags=st.integers(0, 0x07FF), rdtype=st.integers(0, 65535), rdclass=st.integers(0, 65535),
       tail=st.binary(max_size=3))
def test_plain_query_is_what_dnspythons_question_only_parse_returns(labels: list[bytes], qid: int, flags: int,
                                                                     rdtype: int, rdclass: int, tail: bytes) -> None:
    try:
        name = dns.name.Name([*labels, b""])
    except dns.name.NameTooLong:
        return
    header = struct.pack("!HHHHHH", qid, flags, 1, 0, 0, 0)
    wire = header + cast(bytes, name.to_wire()) + struct.pack("!HH", rdtype, rdclass) + tail
    try:
        want: Any = dns.message.from_wire(wire, question_only=True)
    except Exception as exc:  # noqa: BLE001 - the oracle's verdict, compared below
        want = type(exc)
    try:
        got: Any = plain_query(wire)
    except Exception as exc:  # noqa: BLE001 - compared with the oracle's verdict
        got = type(exc)
    if got is None:  # bytes after the question: left to dnspython's reader
        assert tail
        return
    if isinstance(want, type) or isinstance(got, type):
        assert isinstance(want, type) and isinstance(got, type)
        return
    assert got == want and got.id == want.id and got.flags == want.flags
    assert (got.opcode(), got.edns, got.question[0].rdtype, got.question[0].rdclass) == \
        (want.opcode(), want.edns, want.question[0].rdtype, want.question[0].rdclass)
    assert not tail
