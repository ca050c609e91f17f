"""The cache-miss fast path: a plain UDP query whose answer is not cached, asked upstream and
answered on callbacks alone.

Why: on the general path (`DnsModule.answer`) a miss is a task, an asyncio.timeout, a Future per
upstream query and one per flight, and two event-loop wake-ups before the answer leaves (see
bench/RESULTS.md, issue 10). Here the listener's reader callback sends the upstream query, and
the upstream socket's reader callback gets the answer and, in that same callback, routes,
caches, binds and sends it: bind-before-answer holds as on the general path.

Taken only when nothing but the plain case can happen: a query `answer_now` parsed (one
question, no EDNS, no hit), request routing choosing `reject` or a named `udp://` upstream
whose association is open (and whose timeout is within the answer deadline), no optimistic
stale answer, no ipversion_prefer emptying, no general-path flight for the same question.
What is unusual after the send (a truncated answer, a re-query by response routing) goes to
the general path's `_fetch` in a task, with the waiters; a timeout is answered as the general
path answers one (stale, else SERVFAIL). Identical questions that arrive meanwhile join the
flight; general-path ones wait on its Future in the cache, as on a general-path flight.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import dns.flags
import dns.message

from .cache import Key, key_of
from .rules import Query
from .upstreams import UpstreamError
from .upstreams.udp import UdpUpstream

if TYPE_CHECKING:
    from .module import DnsModule

log = logging.getLogger("dae.dns")

Send = Callable[[bytes], None]  # puts one answer on the wire to the client that asked
MAX_FLIGHTS = 4096


@dataclass(slots=True)
class Flight:
    q: dns.message.Message  # the first asker's parsed query
    key: Key
    target: str
    bits: int
    fut: asyncio.Future[dns.message.Message]  # general-path joiners wait on it
    started: float  # the loop's clock when it was sent: the answer deadline counts from here
    waiters: list[tuple[dns.message.Message, bytes, Send]] = field(default_factory=list)


class FastMiss:
    def __init__(self, mod: DnsModule, limit: int = MAX_FLIGHTS) -> None:
        self.mod = mod
        self.limit = limit
        self.flights: dict[Key, Flight] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.taken = self.handed_over = 0

    def take(self, wire: bytes, send: Send) -> bool:
        """Answer `wire` through `send` later, on callbacks; False: not a case for this path
        (the caller runs the general one)."""
        mod = self.mod
        q = mod._parsed.get(wire)
        if q is None:
            return False
        key = key_of(q)
        flight = self.flights.get(key)
        if flight is not None:
            del mod._parsed[wire]
            flight.waiters.append((q, wire, send))
            mod.cache.deduplicated += 1
            return True
        cache = mod.cache
        if len(self.flights) >= self.limit or cache.is_in_flight(key) or cache.entry(key) is not None \
                or (mod.prefer and mod._preferred_away(key)) or (mod.optimistic and cache.stale(key) is not None):
            return False
        bits = mod.qname_bits(key[0])
        target, _rule = mod.request.decide(Query(key[0], key[1], bits))
        if target == "reject":
            del mod._parsed[wire]
            mod.rejected += 1
            send(mod._render(q, mod._empty(q), 0))
            return True
        up = mod.upstreams.get(target)
        if type(up) is not UdpUpstream or up.address is None or up.timeout > mod.deadline:
            return False
        uq, qlen = mod._upstream_query(q, wire)
        pre: bytes | None = getattr(uq, "wire", None)
        if not qlen or pre is None:
            return False
        assoc = up.pool.slot_now()
        if assoc is None:  # not open yet, or due for rotation: the general path does that
            return False
        del mod._parsed[wire]
        flight = Flight(q, key, target, bits, cache.open_flight(key), asyncio.get_running_loop().time(),
                        [(q, wire, send)])
        self.flights[key] = flight
        cache.misses += 1
        self.taken += 1
        up.pool.send_soon(assoc, uq, pre, partial(self._answered, flight, qlen),
                          partial(self._timed_out, flight, up))
        return True

    def _answered(self, flight: Flight, qlen: int, r: dns.message.Message) -> None:
        """The upstream's checked answer, in its socket's reader callback."""
        try:
            if r.flags & dns.flags.TC:  # asked again by the general path: UDP, then TCP
                self._hand_over(flight, flight.target, [])
                return
            seen = [flight.target]
            nxt = self.mod._routed(flight.q, flight.target, flight.bits, r, qlen, seen)
            if nxt is not None:
                self._hand_over(flight, nxt, seen)
                return
            self.mod._store(flight.q, r)
        except Exception as exc:  # a bug or a map write failing: SERVFAIL, not an answer left unbound
            log.exception("dns: %s: failed to take the upstream's answer", flight.key[0])
            self._fail(flight, UpstreamError(f"{type(exc).__name__}: {exc}"))
            return
        self._finish(flight, r)

    def _timed_out(self, flight: Flight, up: UdpUpstream) -> None:
        self._fail(flight, UpstreamError(f"{up.name}: no answer within {up.timeout:g}s"))

    def _finish(self, flight: Flight, r: dns.message.Message) -> None:
        mod = self.mod
        self.flights.pop(flight.key, None)
        mod.cache.close_flight(flight.key, flight.fut, r)
        for q, wire, send in flight.waiters:
            mod.answered += 1
            send(mod._passed_on(q, wire, r, 0) or mod._render(q, mod._shaped(q, r), 0))

    def _fail(self, flight: Flight, exc: Exception) -> None:
        mod = self.mod
        self.flights.pop(flight.key, None)
        mod.cache.close_flight(flight.key, flight.fut, exc=exc)
        for q, _wire, send in flight.waiters:
            send(mod._render(q, mod._failed(q, exc), 0))

    def _hand_over(self, flight: Flight, target: str, seen: list[str]) -> None:
        """The rest of this flight on the general path, within what is left of its deadline."""
        self.handed_over += 1
        t = asyncio.get_running_loop().create_task(self._general(flight, target, seen))
        self._tasks.add(t)
        t.add_done_callback(self._tasks.discard)

    async def _general(self, flight: Flight, target: str, seen: list[str]) -> None:
        try:
            async with asyncio.timeout_at(flight.started + self.mod.deadline):
                r = await self.mod._fetch(flight.q, target, flight.bits, flight.waiters[0][1], seen)
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
