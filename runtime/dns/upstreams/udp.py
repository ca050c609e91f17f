"""udp:// (and the UDP half of tcp+udp://): a small pool of UDP associations, not a socket per
query.

Each association is the routed outbound's `open_udp` (direct: one marked unconnected socket; a
proxied upstream: its group's UDP path, e.g. a SOCKS5 UDP ASSOCIATE). Queries go out round-robin
with a fresh random id that no pending query holds; an answer is taken only from the upstream's
address and port, with that id and the query's question (everything else is dropped, as a
spoofed or late datagram). An association is replaced after ROTATE_AFTER queries, so source
ports keep changing (the old one lingers one timeout for late answers). A truncated answer is
asked again over TCP.

Two ways to ask: `exchange` (a coroutine, for the module's general path) and `send_soon` (the
module's cache-miss fast path: the answer, or the timeout, comes back through a callback run
by the association's reader, so a miss costs no task, no Future and no extra loop wake-up;
what `_exchange` does after its UDP leg, TCP for a truncated answer or a tcp+udp timeout, is
`over_tcp`). Both share the pending table, so ids never collide between them.
"""
from __future__ import annotations

import asyncio
import logging
import secrets
import struct
import time
from collections.abc import Callable

import dns.flags
import dns.message

from dae_py.runtime.proxy.base import Destination, UdpAssociation

from .base import Upstream, UpstreamError, checked_answer
from .tcp import TcpUpstream

log = logging.getLogger("dae.dns.upstream")

POOL_SIZE = 4
ROTATE_AFTER = 2048
Deliver = Callable[[dns.message.Message], None]  # a checked answer to a pending query
Pending = tuple[dns.message.Message, Deliver, "asyncio.TimerHandle | None"]


class UdpPool:
    """POOL_SIZE associations of one upstream, with the pending queries keyed by id."""

    def __init__(self, up: UdpUpstream) -> None:
        self.up = up
        self.slots: list[tuple[UdpAssociation, list[int]] | None] = [None] * POOL_SIZE
        self.next = 0
        self.pending: dict[int, Pending] = {}  # id -> (the query, who gets its answer, its timer)
        self._opening: dict[int, asyncio.Future[UdpAssociation]] = {}
        self.opened = 0
        self._dest: Destination | None = None
        self._ids: list[int] = []

    def _on_reply(self, data: bytes, addr: tuple[str, int]) -> None:
        up = self.up
        if len(data) < 12 or addr[1] != up.port or addr[0].removeprefix("::ffff:") != up.address:
            return
        (qid,) = struct.unpack_from("!H", data)
        waiter = self.pending.get(qid)
        if waiter is None:
            return
        try:
            r = checked_answer(waiter[0], data, up.name)
        except UpstreamError as exc:
            log.debug("dns upstream %s: dropped a datagram: %s", up.name, exc)
            return
        waiter[1](r)

    def slot_now(self) -> UdpAssociation | None:
        """The next association if it is open and not due for rotation (no await needed);
        None sends the caller to `exchange`, which opens or rotates it."""
        i = self.next
        slot = self.slots[i]
        if slot is None or slot[0].closed or slot[1][0] >= ROTATE_AFTER:
            return None
        self.next = (i + 1) % POOL_SIZE
        slot[1][0] += 1
        return slot[0]

    def _new_id(self) -> int:
        """A random id no pending query holds, from the CSPRNG 256 at a time (one getrandom
        syscall per query was ~2 % of a miss's time)."""
        while True:
            if not self._ids:
                self._ids = list(memoryview(secrets.token_bytes(512)).cast("H"))
            qid = self._ids.pop()
            if qid not in self.pending:
                return qid

    def send_soon(self, assoc: UdpAssociation, q: dns.message.Message, pre: bytes,
                  on_answer: Deliver, on_timeout: Callable[[], None]) -> None:
        """Send `pre` (q's wire with id 0) under a fresh id; `on_answer(r)` runs in the reader
        when a checked answer comes, else `on_timeout()` after the upstream's UDP timeout (all
        of its timeout; tcp+udp: half, the rest is for TCP). Exactly one of them runs, once;
        the upstream's counters are kept as `Upstream.query` does (the UDP leg is the query)."""
        up = self.up
        qid = self._new_id()
        q.id = qid
        started = time.perf_counter()

        def answered(r: dns.message.Message) -> None:
            entry = self.pending.pop(qid, None)
            if entry is not None and entry[2] is not None:
                entry[2].cancel()
            up.answered += 1
            up.answer_seconds += time.perf_counter() - started
            on_answer(r)

        def expired() -> None:
            if self.pending.pop(qid, None) is not None:
                up.errors += 1
                on_timeout()

        timer = asyncio.get_running_loop().call_later(up.udp_timeout, expired)
        self.pending[qid] = (q, answered, timer)
        up.queries += 1
        dest = self._dest
        if dest is None:  # once: building it (and the outbound parsing its address) is per send otherwise
            dest = self._dest = up.dest
        assoc.send(struct.pack("!H", qid) + pre[2:], dest)

    async def _slot(self) -> UdpAssociation:
        i = self.next
        self.next = (i + 1) % POOL_SIZE
        slot = self.slots[i]
        if slot is not None and not slot[0].closed and slot[1][0] < ROTATE_AFTER:
            slot[1][0] += 1
            return slot[0]
        opening = self._opening.get(i)
        if opening is not None:
            return await asyncio.shield(opening)
        fut: asyncio.Future[UdpAssociation] = asyncio.get_running_loop().create_future()
        self._opening[i] = fut
        try:
            assoc = await self.up.outbounds["udp"].open_udp(self.up.family, self._on_reply)
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: nobody else may be waiting
            raise
        finally:
            self._opening.pop(i, None)
        self.opened += 1
        if slot is not None and not slot[0].closed:  # late answers may still arrive on the old one
            asyncio.get_running_loop().call_later(self.up.timeout, slot[0].close)
        self.slots[i] = (assoc, [1])
        fut.set_result(assoc)
        return assoc

    async def exchange(self, q: dns.message.Message) -> dns.message.Message:
        assoc = await self._slot()
        qid = self._new_id()
        q.id = qid
        fut: asyncio.Future[dns.message.Message] = asyncio.get_running_loop().create_future()

        def deliver(r: dns.message.Message) -> None:
            if not fut.done():
                fut.set_result(r)
        self.pending[qid] = (q, deliver, None)
        try:
            pre: bytes | None = getattr(q, "wire", None)  # the module's pre-built query, id 0
            assoc.send(struct.pack("!H", qid) + pre[2:] if pre is not None else q.to_wire(), self.up.dest)
            return await fut
        finally:
            self.pending.pop(qid, None)

    def close(self) -> None:
        for _q, _deliver, timer in self.pending.values():
            if timer is not None:  # send_soon's: their callers are closing too
                timer.cancel()
        for slot in self.slots:
            if slot is not None:
                slot[0].close()
        self.slots = [None] * POOL_SIZE


class UdpUpstream(Upstream):
    scheme = "udp"
    transports = ("udp", "tcp")  # tcp: truncated answers are asked again over TCP

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]  # Upstream's own signature
        self.pool = UdpPool(self)
        self._tcp: TcpUpstream | None = None
        self.retried_tcp = 0

    @property
    def udp_timeout(self) -> float:
        """How long a UDP answer is waited for: the whole timeout (tcp+udp: half of it)."""
        return self.timeout

    def tcp(self) -> TcpUpstream:
        if self._tcp is None:
            t = TcpUpstream(self.name, "tcp", self.host, self.port, so_mark=self.so_mark, timeout=self.timeout)
            t.address, t.outbounds = self.address, {"tcp": self.outbounds["tcp"]}
            self._tcp = t
        return self._tcp

    async def _exchange(self, q: dns.message.Message) -> dns.message.Message:
        try:
            r = await self.pool.exchange(q)
        except (TimeoutError, OSError) as exc:
            if self.scheme != "tcp+udp":
                raise
            log.debug("dns upstream %s: UDP failed (%s), asking over TCP", self.name, str(exc) or "timeout")
            return await self.tcp()._exchange(q)
        if r.flags & dns.flags.TC:
            self.retried_tcp += 1
            log.debug("dns upstream %s: truncated answer, asking over TCP", self.name)
            return await self.tcp()._exchange(q)
        return r

    async def over_tcp(self, q: dns.message.Message, until: float, *, truncated: bool) -> dns.message.Message:
        """q asked over TCP after a UDP leg `send_soon` ran (its answer `truncated`, or, for
        tcp+udp, no answer within `udp_timeout`), by the loop time `until` (what is left of the
        timeout): what `_exchange` does after its own UDP leg. UpstreamError as `query` raises."""
        if truncated:
            self.retried_tcp += 1
        try:
            async with asyncio.timeout_at(until):
                return await self.tcp().query(q)
        except TimeoutError as exc:
            raise UpstreamError(f"{self.name}: no answer within {self.timeout:g}s") from exc

    async def close(self) -> None:
        self.pool.close()
        if self._tcp is not None:
            await self._tcp.close()


class TcpUdpUpstream(UdpUpstream):
    """tcp+udp://: UDP first; a UDP failure or a truncated answer is asked again over TCP.
    (The failure case needs the UDP exchange to end before the query's timeout: it gets half.)"""

    scheme = "tcp+udp"

    @property
    def udp_timeout(self) -> float:
        return self.timeout / 2

    async def _exchange(self, q: dns.message.Message) -> dns.message.Message:
        try:
            async with asyncio.timeout(self.timeout / 2):
                return await super()._exchange(q)
        except TimeoutError:
            log.debug("dns upstream %s: no UDP answer in %.1fs, asking over TCP", self.name, self.timeout / 2)
            return await self.tcp()._exchange(q)
