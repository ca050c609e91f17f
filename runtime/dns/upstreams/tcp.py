"""tcp:// and, with TLS on the same framing, tls:// (DoT, RFC 7858): length-prefixed messages
(RFC 7766) over connections kept for reuse.

A connection is the routed outbound's `dial_tcp` (direct: a marked socket; proxied: through
its group), TLS-wrapped for DoT. One query at a time per connection; an idle one goes back to
a small pool (IDLE_MAX, closed after IDLE_SECONDS). A reused connection the server has closed
meanwhile fails at once: the query is asked once more on a fresh one.
"""
from __future__ import annotations

import logging
import ssl
import struct
import time

import dns.message

from dae_py.runtime.net.stream import Stream, TlsStream

from .base import Upstream, UpstreamError, checked_answer

log = logging.getLogger("dae.dns.upstream")

IDLE_MAX = 8
IDLE_SECONDS = 10.0


async def read_exactly(stream: Stream, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = await stream.recv(n - len(buf))
        if not chunk:
            raise EOFError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


class TcpUpstream(Upstream):
    scheme = "tcp"
    transports = ("tcp",)

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]  # Upstream's own signature
        self._idle: list[tuple[Stream, float]] = []
        self.dialed = 0

    async def connect(self) -> Stream:
        dialed = await self.outbounds["tcp"].dial_tcp(self.dest)
        self.dialed += 1
        return dialed.stream

    async def _take(self) -> tuple[Stream, bool]:
        now = time.monotonic()
        while self._idle:
            stream, since = self._idle.pop()
            if now - since < IDLE_SECONDS:
                return stream, True
            stream.close()
        return await self.connect(), False

    async def _exchange(self, q: dns.message.Message) -> dns.message.Message:
        wire = q.to_wire()
        msg = struct.pack("!H", len(wire)) + wire
        for _attempt in range(2):
            stream, reused = await self._take()
            try:
                await stream.sendall(msg)
                (n,) = struct.unpack("!H", await read_exactly(stream, 2))
                r = checked_answer(q, await read_exactly(stream, n), self.name)
            except (EOFError, ConnectionError) as exc:
                stream.close()
                if reused:
                    log.debug("dns upstream %s: a kept connection was closed (%s); dialling again", self.name, exc)
                    continue
                raise UpstreamError(f"{self.name}: {exc}") from exc
            except BaseException:
                stream.close()
                raise
            if len(self._idle) < IDLE_MAX:
                self._idle.append((stream, time.monotonic()))
            else:
                stream.close()
            return r
        raise UpstreamError(f"{self.name}: connection closed twice")

    async def close(self) -> None:
        for stream, _ in self._idle:
            stream.close()
        self._idle.clear()


class TlsUpstream(TcpUpstream):
    """tls:// (DoT): the certificate is checked against the configured host (name or IP)."""

    scheme = "tls"
    default_port = 853

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)
        self._ctx: ssl.SSLContext | None = None

    async def connect(self) -> Stream:
        raw = await super().connect()
        if self._ctx is None:
            self._ctx = self.ssl_context()
        try:
            return await TlsStream.wrap(raw, self._ctx, server_hostname=self.host)
        except BaseException:
            raw.close()
            raise
