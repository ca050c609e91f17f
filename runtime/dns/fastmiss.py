"""The cache-miss fast path: a plain UDP query whose answer is not cached, asked upstream and
answered on callbacks alone.

Why: on the general path (`DnsModule.answer`) a miss is a task, an asyncio.timeout, a Future per
upstream query and one per flight, and two event-loop wake-ups before the answer leaves (see
bench/RESULTS.md, issue 10). Here the listener's reader callback sends the upstream query, and
the upstream socket's reader callback gets the answer and, in that same callback, routes,
caches, binds and sends it: bind-before-answer holds as on the general path.

Taken only when nothing but the plain case can happen: a query `answer_now` parsed (one
question, no EDNS, no hit), request routing choosing `reject`, a named `udp://` or `tcp+udp://`
upstream, or `asis` for a hijacked query (the client's own resolver, a marked `tcp+udp`
upstream made by the general path's first query to it, asis.py), whose association is open and
whose timeout is within the answer deadline; no optimistic stale answer, no ipversion_prefer
emptying, no general-path flight for the same question. What is unusual after the send goes
to a task, with the waiters: a truncated answer, or a tcp+udp UDP leg unanswered after half the
timeout, is asked over TCP in what is left of the timeout (as `TcpUdpUpstream._exchange`
does); a re-query by response routing goes to the general path's `_fetch`. A timeout is
answered as the general path answers one (stale, else SERVFAIL). Identical questions that
arrive meanwhile join the flight; general-path ones wait on its Future in the cache, as on a
general-path flight.

The module is reached only through `ModuleView`, the few callables and objects DnsModule
builds for this path once.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial

import dns.flags
import dns.message

from .asis import ORIGIN, Origin
from .cache import Cache, Key, key_of
from .upstreams import Upstream, UpstreamError
from .upstreams.udp import TcpUdpUpstream, UdpUpstream

log = logging.getLogger("dae.dns")

Send = Callable[[bytes], None]  # puts one answer on the wire to the client that asked
Message = dns.message.Message
MAX_FLIGHTS = 4096
FAST_SCHEMES = (UdpUpstream, TcpUdpUpstream)  # exactly these classes: their UDP leg is `send_soon`


@dataclass(frozen=True, slots=True)
class ModuleView:
    """What the fast path uses of the DNS module (module.py builds it once): every step that
    is the module's own (routing, rendering, caching, binding, counting) stays there."""

    parsed: dict[bytes, Message]  # answer_now's parses of plain misses, by wire (taken: removed)
    cache: Cache  # its flights (dedup with the general path), entries and counters
    deadline: float  # the whole answer's bound, seconds
    general_only: Callable[[Key], bool]  # ipversion_prefer or optimistic_cache answers it
    decide: Callable[[Key], tuple[str, int]]  # request routing: (target, the qname's domain bits)
    upstream: Callable[[str, Origin | None], Upstream | None]  # a target's upstream, if ready now
    upstream_query: Callable[[Message, bytes], tuple[Message, int]]  # (query, client's header+question length)
    routed: Callable[[Message, str, int, Message, int, list[str]], str | None]  # response routing
    store: Callable[[Message, Message], None]  # cache and bind (before anyone is answered)
    fetch: Callable[[Message, str, int, bytes | None, list[str] | None], Awaitable[Message]]  # general path
    rejected: Callable[[Message], bytes]  # request routing's reject as the client's wire (counted)
    answered: Callable[[Message, bytes, Message], bytes]  # r as the client's wire (counted)
    failed: Callable[[Message, Exception], bytes]  # stale, else SERVFAIL, as the client's wire


@dataclass(slots=True)
class Flight:
    q: Message  # the first asker's parsed query
    key: Key
    target: str
    bits: int
    fut: asyncio.Future[Message]  # general-path joiners wait on it
    started: float  # the loop's clock when it was sent: the answer deadline counts from here
    up: UdpUpstream  # asked first
    uq: Message  # what it was asked (kept for a TCP leg)
    qlen: int  # the client's header+question length in its wire
    origin: Origin | None  # the hijacked query's resolver (asis), for a task that goes on
    waiters: list[tuple[Message, bytes, Send]] = field(default_factory=list)


class FastMiss:
    def __init__(self, mod: ModuleView, limit: int = MAX_FLIGHTS) -> None:
        self.mod = mod
        self.limit = limit
        self.flights: dict[Key, Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.taken = self.handed_over = 0

    def take(self, wire: bytes, send: Send, origin: Origin | None = None) -> bool:
        """Answer `wire` through `send` later, on callbacks; False: not a case for this path
        (the caller runs the general one). `origin`: where a hijacked query was sent (asis)."""
        mod = self.mod
        q = mod.parsed.get(wire)
        if q is None:
            return False
        key = key_of(q)
        flight = self.flights.get(key)
        if flight is not None:
            if origin is None and flight.target == "asis":  # a dns.bind client has no asis: SERVFAIL
                return False
            del mod.parsed[wire]
            flight.waiters.append((q, wire, send))
            mod.cache.deduplicated += 1
            return True
        cache = mod.cache
        if len(self.flights) >= self.limit or cache.is_in_flight(key) or cache.entry(key) is not None \
                or mod.general_only(key):
            return False
        target, bits = mod.decide(key)
        if target == "reject":
            del mod.parsed[wire]
            send(mod.rejected(q))
            return True
        up = mod.upstream(target, origin)
        if not isinstance(up, UdpUpstream) or type(up) not in FAST_SCHEMES or up.address is None \
                or up.timeout > mod.deadline:
            return False
        uq, qlen = mod.upstream_query(q, wire)
        pre: bytes | None = getattr(uq, "wire", None)
        if not qlen or pre is None:
            return False
        assoc = up.pool.slot_now()
        if assoc is None:  # not open yet, or due for rotation: the general path does that
            return False
        del mod.parsed[wire]
        flight = Flight(q, key, target, bits, cache.open_flight(key), asyncio.get_running_loop().time(),
                        up, uq, qlen, origin, [(q, wire, send)])
        self.flights[key] = flight
        cache.misses += 1
        self.taken += 1
        up.pool.send_soon(assoc, uq, pre, partial(self._answered, flight), partial(self._timed_out, flight))
        return True

    def _answered(self, flight: Flight, r: Message) -> None:
        """The upstream's checked answer, in its socket's reader callback."""
        try:
            if r.flags & dns.flags.TC:  # asked again over TCP, in a task
                self._hand_over(flight, truncated=True)
                return
            nxt = self._settle(flight, r)
            if nxt is not None:
                self._hand_over(flight, nxt)
                return
        except Exception as exc:  # a bug or a map write failing: SERVFAIL, not an answer left unbound
            log.exception("dns: %s: failed to take the upstream's answer", flight.key[0])
            self._fail(flight, UpstreamError(f"{type(exc).__name__}: {exc}"))
            return
        self._finish(flight, r)

    def _settle(self, flight: Flight, r: Message) -> str | None:
        """Response routing of the first upstream's answer: stored (cached and bound) when it
        is final, else the upstream to ask next."""
        nxt = self.mod.routed(flight.q, flight.target, flight.bits, r, flight.qlen, [flight.target])
        if nxt is None:
            self.mod.store(flight.q, r)
        return nxt

    def _timed_out(self, flight: Flight) -> None:
        up = flight.up
        if up.udp_timeout < up.timeout:  # tcp+udp: the other half of the timeout is for TCP
            self._hand_over(flight)
            return
        self._fail(flight, UpstreamError(f"{up.name}: no answer within {up.timeout:g}s"))

    def _finish(self, flight: Flight, r: Message) -> None:
        mod = self.mod
        self.flights.pop(flight.key, None)
        mod.cache.close_flight(flight.key, flight.fut, r)
        for q, wire, send in flight.waiters:
            send(mod.answered(q, wire, r))

    def _fail(self, flight: Flight, exc: Exception) -> None:
        mod = self.mod
        self.flights.pop(flight.key, None)
        mod.cache.close_flight(flight.key, flight.fut, exc=exc)
        for q, _wire, send in flight.waiters:
            send(mod.failed(q, exc))

    def _hand_over(self, flight: Flight, requery: str | None = None, *, truncated: bool = False) -> None:
        """The rest of this flight in a task, within what is left of its deadline: ask
        `requery` (response routing's next upstream), or (None) the first upstream over TCP."""
        self.handed_over += 1
        t = asyncio.get_running_loop().create_task(self._general(flight, requery, truncated))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _general(self, flight: Flight, requery: str | None, truncated: bool) -> None:
        if flight.origin is not None:
            ORIGIN.set(flight.origin)  # this task's own context: a re-query to asis asks the same resolver
        try:
            async with asyncio.timeout_at(flight.started + self.mod.deadline):
                if requery is None:
                    up = flight.up
                    r = await up.over_tcp(flight.uq, flight.started + up.timeout, truncated=truncated)
                    requery = self._settle(flight, r)
                if requery is not None:
                    r = await self.mod.fetch(flight.q, requery, flight.bits, flight.waiters[0][1], [flight.target])
        except (TimeoutError, UpstreamError) as exc:
            self._fail(flight, exc)
            return
        except asyncio.CancelledError:
            self.flights.pop(flight.key, None)
            flight.fut.cancel()
            raise
        except Exception as exc:  # a bug answering one question must not leave its askers waiting
            log.exception("dns: %s: failed on the general path", flight.key[0])
            self._fail(flight, UpstreamError(f"{type(exc).__name__}: {exc}"))
            return
        self._finish(flight, r)

    async def close(self) -> None:
        """Cancel what was handed over; flights still waiting on an upstream end with it."""
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for flight in list(self.flights.values()):
            flight.fut.cancel()
        self.flights.clear()
