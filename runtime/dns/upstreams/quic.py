"""quic:// (DoQ, RFC 9250, port 853, ALPN "doq"): each query on its own bidirectional stream,
the message with a 2-byte length prefix and id 0, the stream closed after it; the answer
arrives the same way on that stream. One QUIC connection (QuicConn) carries them all.
"""
from __future__ import annotations

import asyncio
import struct

import dns.message
from aioquic.quic.events import QuicEvent, StreamDataReceived, StreamReset

from .base import SharedConnection, Upstream, UpstreamError, checked_answer
from .quicconn import QuicConn


class QuicUpstream(Upstream):
    scheme = "quic"
    default_port = 853
    transports = ("udp",)
    alpn = "doq"

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]  # Upstream's own signature
        self._shared: SharedConnection[QuicConn] = SharedConnection()
        self._dialing: QuicConn | None = None  # the connection being set up (its events arrive first)
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.buffers: dict[int, bytearray] = {}
        self.dialed = 0

    async def conn(self) -> QuicConn:
        return await self._shared.get(lambda c: not c.closed, self._dial)

    async def _dial(self) -> QuicConn:
        c = QuicConn(self, self.alpn, self.on_event)
        self._dialing = c
        c.failers.append(self._fail_all)
        try:
            await c.connect()
            self.connected(c)
        except BaseException:
            c.close()
            raise
        self.dialed += 1
        return c

    def connected(self, c: QuicConn) -> None:
        """A hook for protocols layered on the connection (HTTP/3)."""

    def _fail_all(self, why: str) -> None:
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(UpstreamError(f"{self.name}: {why}"))

    def on_event(self, ev: QuicEvent) -> None:
        if isinstance(ev, StreamDataReceived):
            buf = self.buffers.setdefault(ev.stream_id, bytearray())
            buf.extend(ev.data)
            fut = self.waiting.get(ev.stream_id)
            if fut is not None and not fut.done() and len(buf) >= 2:
                (n,) = struct.unpack_from("!H", buf)
                if len(buf) >= 2 + n:
                    fut.set_result(bytes(buf[2:2 + n]))
                elif ev.end_stream:
                    fut.set_exception(UpstreamError(f"{self.name}: the answer's stream ended early"))
        elif isinstance(ev, StreamReset):
            fut = self.waiting.get(ev.stream_id)
            if fut is not None and not fut.done():
                fut.set_exception(UpstreamError(f"{self.name}: stream reset ({ev.error_code})"))

    async def _exchange(self, q: dns.message.Message) -> dns.message.Message:
        c = await self.conn()
        qid, q.id = q.id, 0
        try:
            wire = q.to_wire()
        finally:
            q.id = qid
        sid = c.quic.get_next_available_stream_id()
        fut: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self.waiting[sid] = fut
        try:
            c.quic.send_stream_data(sid, struct.pack("!H", len(wire)) + wire, end_stream=True)
            c.transmit()
            data = await fut
        finally:
            self.waiting.pop(sid, None)
            self.buffers.pop(sid, None)
        return checked_answer(q, data, self.name, any_id=True)

    async def close(self) -> None:
        if self._shared.conn is not None:
            self._shared.conn.close()
            self._shared.conn = None
