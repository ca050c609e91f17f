"""https:// (DoH, RFC 8484): POST application/dns-message over HTTP/2, with the h2 library.

One TLS connection (ALPN h2) through the routed outbound carries every query as its own stream
(the id is 0, as RFC 8484 4.1 recommends for caching); a reader task feeds h2 and wakes the
waiting queries. A connection that ends fails the queries on it; the next query dials again.
"""
from __future__ import annotations

import asyncio
import logging
import ssl

import dns.message
import h2.config
import h2.connection
import h2.events
import h2.exceptions

from dae_py.runtime.net.stream import Stream, TlsStream

from .base import SharedConnection, Upstream, UpstreamError, checked_answer

log = logging.getLogger("dae.dns.upstream")


class _H2:
    """One HTTP/2 connection and its streams."""

    def __init__(self, up: DohUpstream, stream: Stream) -> None:
        self.up = up
        self.stream = stream
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
        self.waiting: dict[int, asyncio.Future[tuple[int, bytes]]] = {}
        self.bodies: dict[int, bytearray] = {}
        self.status: dict[int, int] = {}
        self.closed = False
        self.conn.initiate_connection()
        self.reader = asyncio.get_running_loop().create_task(self._read())

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.stream.sendall(data)

    async def _read(self) -> None:
        why = "connection closed by the server"
        try:
            while True:
                data = await self.stream.recv(65536)
                if not data:
                    break
                for ev in self.conn.receive_data(data):
                    self._event(ev)
                await self.flush()
        except (OSError, EOFError, h2.exceptions.ProtocolError) as exc:
            why = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # noqa: BLE001 - the TLS layer raises its own kinds: fail the waiters
            why = f"{type(exc).__name__}: {exc}"
        finally:
            self.fail(why)

    def _event(self, ev: h2.events.Event) -> None:
        if isinstance(ev, h2.events.ResponseReceived):
            for k, v in ev.headers or ():
                if k == b":status":
                    self.status[ev.stream_id] = int(v)
        elif isinstance(ev, h2.events.DataReceived):
            self.bodies.setdefault(ev.stream_id, bytearray()).extend(ev.data or b"")
            self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
        elif isinstance(ev, h2.events.StreamEnded):
            fut = self.waiting.get(ev.stream_id)
            if fut is not None and not fut.done():
                fut.set_result((self.status.pop(ev.stream_id, 0), bytes(self.bodies.pop(ev.stream_id, b""))))
        elif isinstance(ev, h2.events.StreamReset):
            fut = self.waiting.get(ev.stream_id)
            if fut is not None and not fut.done():
                fut.set_exception(UpstreamError(f"{self.up.name}: stream reset ({ev.error_code})"))
        elif isinstance(ev, h2.events.ConnectionTerminated):
            self.fail(f"GOAWAY ({ev.error_code})")

    def fail(self, why: str) -> None:
        if not self.closed:
            self.closed = True
            self.stream.close()
        for fut in self.waiting.values():
            if not fut.done():
                fut.set_exception(UpstreamError(f"{self.up.name}: {why}"))

    async def post(self, body: bytes) -> tuple[int, bytes]:
        up = self.up
        sid = self.conn.get_next_available_stream_id()
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.waiting[sid] = fut
        try:
            authority = up.host if up.port == 443 else f"{up.host}:{up.port}"
            if ":" in up.host and up.port == 443:
                authority = f"[{up.host}]"
            elif ":" in up.host:
                authority = f"[{up.host}]:{up.port}"
            self.conn.send_headers(sid, [
                (":method", "POST"), (":scheme", "https"), (":authority", authority),
                (":path", up.path or "/dns-query"), ("accept", "application/dns-message"),
                ("content-type", "application/dns-message"), ("content-length", str(len(body)))])
            self.conn.send_data(sid, body, end_stream=True)
            await self.flush()
            return await fut
        finally:
            self.waiting.pop(sid, None)


class DohUpstream(Upstream):
    scheme = "https"
    default_port = 443
    transports = ("tcp",)

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]  # Upstream's own signature
        self._shared: SharedConnection[_H2] = SharedConnection()
        self._ctx: ssl.SSLContext | None = None
        self.dialed = 0

    async def _h2(self) -> _H2:
        return await self._shared.get(lambda c: not c.closed, self._dial_h2)

    async def _dial_h2(self) -> _H2:
        raw = (await self.outbounds["tcp"].dial_tcp(self.dest)).stream
        if self._ctx is None:
            self._ctx = self.ssl_context(["h2"])
        try:
            tls = await TlsStream.wrap(raw, self._ctx, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
        if tls._obj.selected_alpn_protocol() != "h2":
            tls.close()
            raise UpstreamError(f"{self.name}: the server does not speak HTTP/2 (ALPN)")
        self.dialed += 1
        return _H2(self, tls)

    async def _exchange(self, q: dns.message.Message) -> dns.message.Message:
        qid = q.id
        q.id = 0
        try:
            body = q.to_wire()
        finally:
            q.id = qid
        status, data = await (await self._h2()).post(body)
        if not 200 <= status < 300:
            raise UpstreamError(f"{self.name}: HTTP status {status}")
        return checked_answer(q, data, self.name, any_id=True)

    async def close(self) -> None:
        c = self._shared.conn
        if c is not None:
            c.fail("closed")
            c.reader.cancel()
            self._shared.conn = None
