"""v2ray's HTTP/2 transport (`net: h2` / `type: http`) as a Stream, over TLS (ALPN h2) or
cleartext h2c, with the `h2` library's sans-I/O connection (already a dependency: the DoH
upstream's client uses it).

What v2ray 4.34 speaks (transport/internet/http): one request per proxied connection,
`PUT https://<host>/<path>` with `accept-encoding: identity` and a body that never ends while
the flow lives; the server answers 200 at once (404 for a wrong host or path) and streams its
bytes as the response body. The request body is what we send, the response body what we read.

A reader task feeds the connection: it answers pings and settings, returns flow-control credit
for what the relay consumed, and wakes a writer waiting for the server's window. The request is
sent at once and the 200 checked on the first read, so the proxy protocol's header rides in the
same flight as the HTTP/2 preface.
"""
from __future__ import annotations

import asyncio
import logging
from collections import deque
from typing import Any

import h2.config
import h2.connection
import h2.events
import h2.exceptions
import h2.settings

from .errors import ProxyProtocolError
from .stream import RECV_SIZE, Buffer, LayeredStream, Stream

log = logging.getLogger(__name__)

WINDOW = 8 << 20  # our receive window, per stream and for the connection
STREAM_ID = 1


class H2Stream(LayeredStream):
    """The body of one PUT request (what we send) and of its response (what we read)."""

    def __init__(self, raw: Stream, authority: str, path: str, node: Any) -> None:
        self.raw = raw
        self.node = node
        self._pending = b""
        self._conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True,
                                                                          header_encoding=None))
        self._data: deque[bytes] = deque()
        self._eof = False
        self._error: Exception | None = None
        self._status: int | None = None
        self._wake: asyncio.Future[None] | None = None  # a reader of the body waits on it
        self._window: asyncio.Future[None] | None = None  # a writer waits on it for credit
        conn = self._conn
        conn.initiate_connection()
        conn.update_settings({h2.settings.SettingCodes.INITIAL_WINDOW_SIZE: WINDOW,
                              h2.settings.SettingCodes.ENABLE_PUSH: 0})
        conn.increment_flow_control_window(WINDOW - 65535)
        conn.send_headers(STREAM_ID, [(b":method", b"PUT"), (b":scheme", b"https"),
                                      (b":authority", authority.encode()), (b":path", path.encode()),
                                      (b"accept-encoding", b"identity")])
        self._reader: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()

    async def start(self) -> None:
        await self._flush()
        self._reader = asyncio.get_running_loop().create_task(self._read_loop())

    async def _flush(self) -> None:
        """Send what the connection queued; under a lock, since the reader task flushes too and
        a plain socket's sendall may yield mid-buffer."""
        async with self._send_lock:
            data = self._conn.data_to_send()
            if data:
                await self.raw.sendall(data)

    def _wakeup(self) -> None:
        for fut in (self._wake, self._window):
            if fut is not None and not fut.done():
                fut.set_result(None)

    async def _read_loop(self) -> None:
        try:
            while True:
                data = await self.raw.recv(RECV_SIZE)
                if not data:
                    if not self._eof:
                        self._error = ProxyProtocolError("the HTTP/2 connection closed before the "
                                                         "stream ended", self.node)
                    break
                for event in self._conn.receive_data(data):
                    self._event(event)
                await self._flush()
                self._wakeup()
                if self._eof and self._error is None and not self._conn.open_outbound_streams:
                    break
        except h2.exceptions.ProtocolError as exc:
            self._error = ProxyProtocolError(f"HTTP/2: {exc}", self.node)
        except (OSError, ProxyProtocolError) as exc:
            self._error = exc
        finally:
            self._eof = True
            self._wakeup()

    def _event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.ResponseReceived):
            headers = dict(event.headers or ())
            status = headers.get(b":status", b"")
            self._status = int(status) if status.isdigit() else 0
            if self._status != 200:
                self._error = ProxyProtocolError(
                    f"HTTP/2 transport: the server answered {self._status} (wrong path or host?)", self.node)
        elif isinstance(event, h2.events.DataReceived):
            if event.data:
                self._data.append(event.data)
        elif isinstance(event, h2.events.StreamEnded):
            self._eof = True
        elif isinstance(event, h2.events.StreamReset):
            self._eof = True
            if not self._data and self._error is None:  # a 404 comes with a reset: keep the 404
                self._error = ProxyProtocolError(f"HTTP/2 stream reset by the server (code "
                                                 f"{event.error_code})", self.node)
        elif isinstance(event, h2.events.ConnectionTerminated):
            self._eof = True
            if event.error_code and self._error is None:
                self._error = ProxyProtocolError(f"HTTP/2 connection closed by the server (code "
                                                 f"{event.error_code})", self.node)

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        while not self._data:
            if self._error is not None:
                raise self._error
            if self._eof:
                return b""
            self._wake = asyncio.get_running_loop().create_future()
            await self._wake
        if self._error is not None and self._status != 200:
            raise self._error
        data = self._data.popleft()
        try:  # give the credit back: the relay took these bytes
            self._conn.acknowledge_received_data(len(data), STREAM_ID)
            await self._flush()
        except h2.exceptions.StreamClosedError:
            pass
        if len(data) > n:
            data, self._pending = data[:n], data[n:]
        return data

    async def sendall(self, data: Buffer) -> None:
        view = memoryview(data)
        conn = self._conn
        while view:
            if self._error is not None:
                raise self._error
            if self._eof:
                raise ProxyProtocolError("the HTTP/2 stream ended while we were sending", self.node)
            size = min(len(view), conn.local_flow_control_window(STREAM_ID), conn.max_outbound_frame_size)
            if size <= 0:
                self._window = asyncio.get_running_loop().create_future()
                await self._window
                continue
            conn.send_data(STREAM_ID, bytes(view[:size]))
            view = view[size:]
            await self._flush()

    def _stop(self) -> None:
        if self._reader is not None and not self._reader.done():
            self._reader.cancel()

    def close(self) -> None:
        self._stop()
        self.raw.close()

    def abort(self) -> None:
        self._stop()
        self.raw.abort()


async def open_h2(raw: Stream, authority: str, path: str, node: Any) -> H2Stream:
    """The PUT request sent over `raw` (TLS with ALPN h2, or cleartext h2c)."""
    stream = H2Stream(raw, authority, path, node)
    await stream.start()
    return stream
