"""h3:// (DoH3: RFC 8484 over HTTP/3, ALPN "h3", port 443): the DoH POST on an HTTP/3 request
stream of one QUIC connection (QuicConn), through aioquic's H3Connection.
"""
from __future__ import annotations

import asyncio

import dns.message
from aioquic.h3.connection import H3Connection
from aioquic.h3.events import DataReceived, HeadersReceived
from aioquic.quic.events import ProtocolNegotiated, QuicEvent, StreamReset

from .base import UpstreamError, checked_answer
from .quic import QuicUpstream
from .quicconn import QuicConn


class H3Upstream(QuicUpstream):
    scheme = "h3"
    default_port = 443
    alpn = "h3"

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)
        self.h3: H3Connection | None = None
        self.status: dict[int, int] = {}
        self.replies: dict[int, asyncio.Future[tuple[int, bytes]]] = {}

    def connected(self, c: QuicConn) -> None:
        if self.h3 is None or self.h3._quic is not c.quic:  # a new QUIC connection needs its own H3 state
            self.h3 = H3Connection(c.quic)

    def _fail_all(self, why: str) -> None:
        for fut in self.replies.values():
            if not fut.done():
                fut.set_exception(UpstreamError(f"{self.name}: {why}"))

    def on_event(self, ev: QuicEvent) -> None:
        if isinstance(ev, StreamReset):
            fut = self.replies.get(ev.stream_id)
            if fut is not None and not fut.done():
                fut.set_exception(UpstreamError(f"{self.name}: stream reset ({ev.error_code})"))
            return
        if isinstance(ev, ProtocolNegotiated) and self._dialing is not None:
            # before any stream data: the server's control and QPACK streams start in the handshake
            self.connected(self._dialing)
        if self.h3 is None:
            return
        for h in self.h3.handle_event(ev):
            sid = getattr(h, "stream_id", None)
            if sid is None:
                continue
            if isinstance(h, HeadersReceived):
                for k, v in h.headers:
                    if k == b":status":
                        self.status[sid] = int(v)
            elif isinstance(h, DataReceived):
                self.buffers.setdefault(sid, bytearray()).extend(h.data)
            if getattr(h, "stream_ended", False):
                fut = self.replies.get(sid)
                if fut is not None and not fut.done():
                    fut.set_result((self.status.pop(sid, 0), bytes(self.buffers.pop(sid, b""))))

    async def _exchange(self, q: dns.message.Message) -> dns.message.Message:
        c = await self.conn()
        assert self.h3 is not None
        qid, q.id = q.id, 0
        try:
            body = q.to_wire()
        finally:
            q.id = qid
        sid = c.quic.get_next_available_stream_id()
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.replies[sid] = fut
        host = f"[{self.host}]" if ":" in self.host else self.host
        authority = host if self.port == 443 else f"{host}:{self.port}"
        try:
            self.h3.send_headers(sid, [
                (b":method", b"POST"), (b":scheme", b"https"), (b":authority", authority.encode()),
                (b":path", (self.path or "/dns-query").encode()), (b"accept", b"application/dns-message"),
                (b"content-type", b"application/dns-message"), (b"content-length", str(len(body)).encode())])
            self.h3.send_data(sid, body, end_stream=True)
            c.transmit()
            status, data = await fut
        finally:
            self.replies.pop(sid, None)
            self.buffers.pop(sid, None)
        if not 200 <= status < 300:
            raise UpstreamError(f"{self.name}: HTTP status {status}")
        return checked_answer(q, data, self.name, any_id=True)
