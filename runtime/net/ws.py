"""A WebSocket client (RFC 6455) over any Stream, as v2ray's `ws` transport speaks it.

Why our own framing and not the `websockets` library's sans-I/O protocol: the relay moves bytes
through `Stream` objects on its own poller (no asyncio transports), the client side of RFC 6455
is small (one upgrade request, then frames), and its protocol object would add an event queue
and a copy per frame; what Python is slow at, XOR-masking every byte we send, comes from the
library's C speedups (`apply_mask`). Everything we send is one masked binary frame per `sendall`;
what the server sends may be binary, text or continuation frames (their payloads are the
stream's bytes), pings (answered with a pong) and a close (answered, then EOF).

Early data (`?ed=N` in a link, v2ray >= 4.35 and Xray): the first write's first N bytes ride
base64url (no padding) in a request header, `Sec-WebSocket-Protocol` unless the link names
another, so the proxy protocol's request reaches the server with the upgrade and costs no round
trip; the handshake then waits for that first write (or the first read, with nothing early).
"""
from __future__ import annotations

import asyncio
import base64
import os
import re
import struct
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import hashes

from .errors import ProxyProtocolError
from .stream import RECV_SIZE, Buffer, LayeredStream, Stream, bounded, read_until

_c_mask: Callable[[bytes | memoryview, bytes], bytes] | None
try:  # the one piece of the websockets library we use: its C masking
    from websockets.speedups import apply_mask as _c_mask
except ImportError:  # no compiled speedups on this platform
    _c_mask = None

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_RESPONSE_HEAD = 16 * 1024
MAX_FRAME = 1 << 24  # a server frame larger than this is refused (v2ray sends <= 8 KiB)
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r\n")


def accept_key(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer to `key` (RFC 6455 section 4.2.2)."""
    digest = hashes.Hash(hashes.SHA1())
    digest.update(key + GUID)
    return base64.b64encode(digest.finalize())


def upgrade_request(host: str, path: str, key: bytes, early: bytes = b"",
                    early_header: str = "Sec-WebSocket-Protocol") -> bytes:
    """The HTTP/1.1 upgrade request; `early` (if any) base64url in `early_header`."""
    lines = [f"GET {path or '/'} HTTP/1.1", f"Host: {host}", "Upgrade: websocket",
             "Connection: Upgrade", f"Sec-WebSocket-Key: {key.decode()}",
             "Sec-WebSocket-Version: 13", "User-Agent: Go-http-client/1.1"]
    if early:
        lines.append(f"{early_header}: {base64.urlsafe_b64encode(early).rstrip(b'=').decode()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def mask(payload: Buffer, key: bytes) -> bytes:
    """XOR with the 4-byte masking key: websockets' C routine (77 Gbit/s here), else one
    big-integer operation (about 1 Gbit/s: it would cap every WebSocket node)."""
    if _c_mask is not None:
        return _c_mask(memoryview(payload), key)
    n = len(payload)
    if n == 0:
        return b""
    keystream = key * (n // 4 + 1)
    return (int.from_bytes(payload, "little") ^ int.from_bytes(keystream[:n], "little")).to_bytes(n, "little")


def client_frame(payload: Buffer, opcode: int = OP_BINARY,
                 key: bytes | None = None) -> bytes:
    """One final, masked frame (clients must mask: RFC 6455 section 5.3)."""
    key = key if key is not None else os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + key + mask(payload, key)


def parse_frame(buf: bytearray | bytes, pos: int = 0) -> tuple[int, bytes, int] | None:
    """(opcode, payload, end) of the frame at `pos`, or None until it is all there; ValueError
    for a frame no server may send. A masked frame is unmasked (servers should not mask)."""
    if len(buf) - pos < 2:
        return None
    b0, b1 = buf[pos], buf[pos + 1]
    if b0 & 0x70:
        raise ValueError(f"frame with reserved bits 0x{b0 & 0x70:02x} (no extension was agreed)")
    opcode, masked, size = b0 & 0x0F, b1 & 0x80, b1 & 0x7F
    at = pos + 2
    if size == 126:
        if len(buf) - at < 2:
            return None
        (size,) = struct.unpack_from("!H", buf, at)
        at += 2
    elif size == 127:
        if len(buf) - at < 8:
            return None
        (size,) = struct.unpack_from("!Q", buf, at)
        at += 8
    if size > MAX_FRAME:
        raise ValueError(f"{size}-byte frame is larger than {MAX_FRAME}")
    if opcode >= 0x8 and (size > 125 or not b0 & 0x80):
        raise ValueError(f"control frame 0x{opcode:x} fragmented or longer than 125 bytes")
    if opcode not in (OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG):
        raise ValueError(f"unknown opcode 0x{opcode:x}")
    key = b""
    if masked:
        if len(buf) - at < 4:
            return None
        key = bytes(buf[at:at + 4])
        at += 4
    if len(buf) - at < size:
        return None
    payload = bytes(buf[at:at + size])
    return opcode, (mask(payload, key) if masked else payload), at + size


class WsStream(LayeredStream):
    """The payload bytes of a WebSocket session to the node over `raw` (TCP or TLS)."""

    def __init__(self, raw: Stream, host: str, path: str, node: Any, handshake_timeout: float,
                 max_early_data: int = 0, early_header: str = "Sec-WebSocket-Protocol") -> None:
        self.raw = raw
        self.node = node
        self._host = host
        self._path = path
        self._timeout = handshake_timeout
        self._max_early = max_early_data
        self._early_header = early_header
        self._pending = b""
        self._buf = bytearray()
        self._open = False
        self._eof = False
        self._handshake_lock = asyncio.Lock()

    async def handshake(self, early: bytes = b"") -> None:
        """The upgrade request (with `early` in its header) and the server's 101, bounded."""
        async with self._handshake_lock:
            if self._open:
                return
            await bounded(self._handshake(early), self._timeout, self.node, "WebSocket handshake")
            self._open = True

    async def _handshake(self, early: bytes) -> None:
        key = base64.b64encode(os.urandom(16))
        await self.raw.sendall(upgrade_request(self._host, self._path, key, early, self._early_header))
        head = await read_until(self.raw, b"\r\n\r\n", MAX_RESPONSE_HEAD, self.node,
                                "the WebSocket upgrade response")
        match = _STATUS.match(head)
        if not match:
            first = head.split(b"\r\n", 1)[0][:80]
            raise ProxyProtocolError(f"WebSocket upgrade: malformed status line {first!r}", self.node)
        code = int(match.group(1))
        if code != 101:
            reason = (match.group(2) or b"").decode("latin-1")
            raise ProxyProtocolError(f"WebSocket upgrade of {self._path!r} answered {code} {reason} "
                                     "(wrong path or Host?)", self.node)
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
        if headers.get(b"sec-websocket-accept") != accept_key(key):
            raise ProxyProtocolError("WebSocket upgrade: wrong Sec-WebSocket-Accept", self.node)
        leftover = self.raw.take_pending()
        if leftover:
            self._buf += leftover

    async def sendall(self, data: Buffer) -> None:
        if not data:
            return
        if not self._open:
            early = bytes(data[:self._max_early]) if self._max_early else b""
            await self.handshake(early)
            data = data[len(early):]
            if not data:
                return
        await self.raw.sendall(client_frame(data))

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        if not self._open:
            await self.handshake()
        while not self._eof:
            out = await self._frames()
            if out:
                data, self._pending = out[:n], out[n:]
                return data
        return b""

    async def _frames(self) -> bytes:
        """The data of the complete frames buffered (reading more when there are none)."""
        buf = self._buf
        out: list[bytes] = []
        pos = 0
        while True:
            try:
                frame = parse_frame(buf, pos)
            except ValueError as exc:
                raise ProxyProtocolError(f"WebSocket: {exc}", self.node) from None
            if frame is None:
                break
            opcode, payload, pos = frame
            if opcode in (OP_BINARY, OP_TEXT, OP_CONT):
                out.append(payload)
            elif opcode == OP_PING:
                await self.raw.sendall(client_frame(payload, OP_PONG))
            elif opcode == OP_CLOSE:
                self._eof = True
                try:
                    await self.raw.sendall(client_frame(payload[:2], OP_CLOSE))
                except OSError:
                    pass
                break
        del buf[:pos]
        if out or self._eof:
            return b"".join(out)
        data = await self.raw.recv(RECV_SIZE)
        if not data:
            self._eof = True
            if buf:
                raise ProxyProtocolError("the server closed the connection in the middle of a "
                                         "WebSocket frame", self.node)
        buf += data
        return b""


async def open_ws(raw: Stream, host: str, path: str, node: Any, handshake_timeout: float,
                  max_early_data: int = 0,
                  early_header: str = "Sec-WebSocket-Protocol") -> WsStream:
    """A WebSocket session over `raw`: upgraded now, or (early data) on the first write."""
    ws = WsStream(raw, host, path, node, handshake_timeout, max_early_data, early_header)
    if not max_early_data:
        await ws.handshake()
    return ws
