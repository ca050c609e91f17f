"""The answer cache: TTLs honoured, a size limit, and in-flight deduplication.

Keyed by (name, type, class) of the question. An entry lives for the smallest TTL of its
records (the SOA minimum for negative answers, RFC 2308) or the name's `fixed_domain_ttl`;
a hit is the stored answer with the client's id and every TTL reduced by the time it spent
here. The least recently used entry goes when `max_size` is reached. Identical questions that
arrive while one is being asked upstream wait for that one answer (`inflight`).

Serve-stale (RFC 8767): an expired entry is kept for `stale_window` seconds more (still inside
the size limit); `stale_answer_for` shapes it with STALE_ANSWER_TTL (the RFC's 30 s), for the
module to answer at once while it refreshes in the background (optimistic_cache) or when the
upstream fails.
"""
from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import cast

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype

Key = tuple[str, int, int]
NEGATIVE_TTL_CAP = 300  # seconds a negative answer may be cached at most
MAX_TTL = 86400
STALE_ANSWER_TTL = 30  # RFC 8767 section 4: the TTL of a stale answer
STALE_WINDOW = 86400.0  # RFC 8767 suggests 1 to 3 days of keeping expired answers


def key_of(q: dns.message.Message) -> Key:
    """(name in lower case with its dot, type, class); remembered on the message, since one
    query asks for it several times and rendering a name as text costs microseconds."""
    key: Key | None = getattr(q, "dae_key", None)
    if key is None:
        question = q.question[0]
        key = (question.name.to_text().lower(), int(question.rdtype), int(question.rdclass))
        q.dae_key = key  # type: ignore[attr-defined]  # a memo on the message object
    return key


def answer_ttl(r: dns.message.Message) -> int:
    """The cache lifetime of an answer: the smallest record TTL; negative answers the SOA's."""
    ttls = [rrset.ttl for rrset in r.answer]
    if not ttls:  # NXDOMAIN or NODATA: RFC 2308, min(SOA TTL, SOA minimum)
        for rrset in r.authority:
            if rrset.rdtype == dns.rdatatype.SOA and len(rrset):
                ttls.append(min(rrset.ttl, rrset[0].minimum, NEGATIVE_TTL_CAP))
    return min(min(ttls, default=0), MAX_TTL)


def set_ttl(r: dns.message.Message, ttl: int) -> None:
    for section in (r.answer, r.authority, r.additional):
        for rrset in section:
            rrset.ttl = ttl


@dataclass
class Entry:
    response: dns.message.Message
    stored: float
    expires: float
    addrs: tuple = ()  # the answer's A/AAAA addresses and their domain bits (the binder's input)
    bits: int = 0
    # The hit as last rendered: (age in whole seconds, the client's EDNS payload or -1) -> wire.
    # Hits within the same second reuse it with the client's id and question bytes put in:
    # rendering costs ~10x the rest of a hit.
    wire_key: tuple[int, int] | None = None
    wire: bytes = b""
    checked: int = -1  # the clock second its bindings were last checked by a plain hit


class Cache:
    def __init__(self, max_size: int = 65536, fixed_ttl: dict[str, int] | None = None,
                 clock: Callable[[], float] = time.monotonic, stale_window: float = STALE_WINDOW) -> None:
        self.max_size = max_size
        self.stale_window = stale_window
        self.stale_served = 0
        self.fixed_ttl = {k.lower().rstrip("."): int(v) for k, v in (fixed_ttl or {}).items()}
        self.clock = clock
        self._entries: OrderedDict[Key, Entry] = OrderedDict()
        self._inflight: dict[Key, asyncio.Future[dns.message.Message]] = {}
        self.hits = self.misses = self.deduplicated = 0

    def __len__(self) -> int:
        return len(self._entries)

    def lifetime(self, key: Key, r: dns.message.Message) -> int:
        fixed = self.fixed_ttl.get(key[0].rstrip("."))
        return fixed if fixed is not None else answer_ttl(r)

    def entry(self, key: Key) -> Entry | None:
        """The live entry of key (no hit counted), or None."""
        e = self._entries.get(key)
        return e if e is not None and self.clock() < e.expires else None

    def wire_hit(self, q: dns.message.Message, query_wire: bytes, max_size: int) -> bytes | None:
        """A cache hit as bytes, from the entry's last rendering when it is of this second and
        the client's EDNS payload: the client's id, and its question bytes as it wrote them
        (case included: the question is the first name, uncompressed, right after the header)."""
        key = key_of(q)
        e = self._entries.get(key)
        if e is None:
            return None
        now = self.clock()
        if now >= e.expires:
            return None
        wkey = (int(now - e.stored), q.payload if q.edns >= 0 else -1)
        if e.wire_key != wkey:
            r = self.answer_for(q)
            if r is None:
                return None
            try:
                e.wire = r.to_wire(max_size=max_size)
            except dns.exception.TooBig:
                return None
            e.wire_key = wkey
            return e.wire
        if len(e.wire) > max_size:
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        name_wire = q.question[0].name.to_wire()
        assert name_wire is not None  # to_wire returns the bytes when not given a file to write to
        qlen = 12 + len(name_wire) + 4
        if query_wire[12:qlen].lower() != e.wire[12:qlen].lower():  # not written plainly: render it
            self.hits -= 1
            e.wire_key = None
            return self.wire_hit(q, query_wire, max_size)
        return query_wire[:2] + e.wire[2:12] + query_wire[12:qlen] + e.wire[qlen:]

    def plain_hit(self, key: Key, query_wire: bytes) -> tuple[bytes, Entry, float] | None:
        """wire_hit for a query that is a header and its question only (no EDNS) and whose
        rendering of this second exists: no parsing at all, the bytes put in as wire_hit does.
        Returns (the answer, its entry, the clock's reading)."""
        e = self._entries.get(key)
        if e is None:
            return None
        now = self.clock()
        if now >= e.expires or e.wire_key != (int(now - e.stored), -1) or len(e.wire) > 512:
            return None
        self.hits += 1
        self._entries.move_to_end(key)
        w = e.wire
        return query_wire[:2] + w[2:12] + query_wire[12:] + w[len(query_wire):], e, now

    def put(self, key: Key, r: dns.message.Message) -> int:
        """Store a NOERROR/NXDOMAIN answer; returns its lifetime (0: not stored)."""
        if self.max_size <= 0 or r.rcode() not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN) \
                or r.flags & dns.flags.TC:
            return 0
        ttl = self.lifetime(key, r)
        if key[0].rstrip(".") in self.fixed_ttl:
            set_ttl(r, ttl)
        if ttl <= 0:
            return 0
        now = self.clock()
        self._entries[key] = Entry(r, now, now + ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.max_size:
            self._entries.popitem(last=False)
        return ttl

    def get(self, key: Key) -> tuple[dns.message.Message, int] | None:
        """(the stored answer, its remaining TTL) or None; expired entries are dropped."""
        e = self._entries.get(key)
        if e is None:
            return None
        now = self.clock()
        if now >= e.expires:
            if now >= e.expires + self.stale_window:
                del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return e.response, int(e.expires - now)

    def stale(self, key: Key) -> Entry | None:
        """The entry of key if it has expired but is inside the stale window, else None."""
        e = self._entries.get(key)
        if e is None:
            return None
        now = self.clock()
        if now < e.expires or now >= e.expires + self.stale_window:
            return None
        return e

    def stale_answer_for(self, q: dns.message.Message) -> dns.message.Message | None:
        """An expired answer for q, shaped for the client with every TTL STALE_ANSWER_TTL."""
        e = self.stale(key_of(q))
        if e is None:
            return None
        self.stale_served += 1
        r = dns.message.make_response(q, recursion_available=True)
        r.set_rcode(e.response.rcode())
        for src, dst in ((e.response.answer, r.answer), (e.response.authority, r.authority)):
            for rrset in src:
                copy = rrset.copy()
                copy.ttl = STALE_ANSWER_TTL
                dst.append(copy)
        return r

    def answer_for(self, q: dns.message.Message) -> dns.message.Message | None:
        """A cache hit shaped for the client: its id and question, TTLs aged."""
        hit = self.get(key_of(q))
        if hit is None:
            self.misses += 1
            return None
        self.hits += 1
        stored, remaining = hit
        e = self._entries[key_of(q)]
        aged = int(self.clock() - e.stored)
        r = dns.message.make_response(q, recursion_available=True)
        r.set_rcode(stored.rcode())
        for src, dst in ((stored.answer, r.answer), (stored.authority, r.authority)):
            for rrset in src:
                copy = rrset.copy()
                copy.ttl = max(0, min(rrset.ttl - aged, remaining))
                dst.append(copy)
        return r

    def is_in_flight(self, key: Key) -> bool:
        return key in self._inflight

    def open_flight(self, key: Key) -> asyncio.Future[dns.message.Message]:
        """Mark key as asked upstream by a caller that answers on callbacks (the module's fast
        miss path): `inflight` callers join the returned Future; `close_flight` ends it."""
        fut: asyncio.Future[dns.message.Message] = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        return fut

    def close_flight(self, key: Key, fut: asyncio.Future[dns.message.Message],
                     r: dns.message.Message | None = None, exc: BaseException | None = None) -> None:
        """End an `open_flight` flight with its answer r or its error."""
        if self._inflight.get(key) is fut:
            del self._inflight[key]
        if fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody joined
        else:
            fut.set_result(cast(dns.message.Message, r))

    async def inflight(self, key: Key, ask: Callable[[], Awaitable[dns.message.Message]]) -> dns.message.Message:
        """`ask()` once for all identical questions in flight; they all get its answer (or error)."""
        fut = self._inflight.get(key)
        if fut is not None:
            self.deduplicated += 1
            return await asyncio.shield(fut)
        fut = asyncio.get_running_loop().create_future()
        self._inflight[key] = fut
        try:
            r = await ask()
        except asyncio.CancelledError:
            fut.cancel()
            raise
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._inflight.pop(key, None)
        fut.set_result(r)
        return r
