"""Trojan (trojan-gfw protocol) over TLS: CONNECT and UDP ASSOCIATE.

Request, sent right after the TLS handshake, in one write (trojan-gfw parses the first read
and sends anything else to its fallback web server):
    hex(SHA224(password)) CRLF  CMD  ATYP DST.ADDR DST.PORT  CRLF  [payload]
CMD 1 is CONNECT (the rest of the stream is the target's bytes), CMD 3 UDP ASSOCIATE (the rest
of the stream is UDP frames both ways: ATYP DST.ADDR DST.PORT  LENGTH(2)  CRLF  PAYLOAD).
The server never answers the request: a wrong password shows as the fallback's reply or, with
no fallback reachable, a close. The certificate is checked (sni, else the host) unless
allow_insecure; ALPN offered when the node lists any. A `type=ws` link rides the shared
WebSocket(+TLS) transport (runtime/proxy/transport.py), as v2ray's trojan inbound serves it.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import struct
from collections.abc import Callable
from typing import Any

from dae_py.contract.manifest import TransportSpec
from dae_py.runtime.net.stream import Stream

from .base import Destination, DialError, DialOptions, Node, ReplyCallback
from .socks5 import decode_addr, encode_addr
from .streamudp import Connect
from .transport import connect_to, open_stream_on

log = logging.getLogger(__name__)

CMD_CONNECT = 0x01
CMD_UDP_ASSOCIATE = 0x03
CRLF = b"\r\n"
MAX_UDP_PAYLOAD = 0xFFFF
MAX_QUEUED = 1 << 20  # bytes of UDP frames waiting for the TLS stream before new ones drop
TLS = TransportSpec(tls=True)  # what trojan rides on without a `type=ws` transport


def password_hash(password: str) -> bytes:
    """The 56 lowercase hex digits of SHA224(password) that open every request."""
    return hashlib.sha224(password.encode()).hexdigest().encode()


def request(password: str, cmd: int, host: str, port: int) -> bytes:
    return password_hash(password) + CRLF + bytes((cmd,)) + encode_addr(host, port) + CRLF


def udp_frame(host: str, port: int, payload: bytes) -> bytes:
    if len(payload) > MAX_UDP_PAYLOAD:
        raise ValueError(f"{len(payload)}-byte datagram is too large for a trojan frame")
    return encode_addr(host, port) + struct.pack("!H", len(payload)) + CRLF + payload


def parse_udp_frames(buf: bytearray) -> list[tuple[str, int, bytes]]:
    """The complete frames at the head of `buf`, removed from it; ValueError if malformed."""
    frames = []
    pos = 0
    while True:
        try:
            host, port, end = decode_addr(buf, pos)
        except ValueError:
            if _could_grow(buf, pos):
                break
            raise
        if len(buf) < end + 4:
            break
        (size,) = struct.unpack_from("!H", buf, end)
        if buf[end + 2:end + 4] != CRLF:
            raise ValueError("UDP frame without CRLF after its length")
        if len(buf) < end + 4 + size:
            break
        frames.append((host, port, bytes(buf[end + 4:end + 4 + size])))
        pos = end + 4 + size
    del buf[:pos]
    return frames


def _could_grow(buf: bytearray, pos: int) -> bool:
    """An address that failed to decode only because it is cut short (more bytes will come)."""
    if len(buf) <= pos:
        return True
    atyp = buf[pos]
    size = {1: 1 + 4 + 2, 4: 1 + 16 + 2}.get(atyp)
    if size is None and atyp == 3:
        size = 2 + buf[pos + 1] + 2 if len(buf) > pos + 1 else 2
    return size is not None and len(buf) - pos < size


def _password(node: Node) -> str:
    if not node.password:
        raise DialError("trojan node has no password", node)
    return node.password


async def open_session(node: Node, opts: DialOptions, cmd: int, host: str,
                       port: int) -> Stream:
    """TLS to the node (certificate checked unless allow_insecure) and the request sent."""
    _password(node)
    return await open_session_on(await connect_to(node, opts), node, opts, cmd, host, port)


async def open_session_on(raw: Stream, node: Node, opts: DialOptions, cmd: int, host: str,
                          port: int) -> Stream:
    """TLS (or WebSocket over TLS) and the request over `raw`, a stream already connected to
    the node: directly or through a chain's earlier hops."""
    password = _password(node)
    spec = node.transport if node.transport is not None and node.transport.network != "tcp" else TLS
    stream = await open_stream_on(raw, node, opts, spec)  # WebSocket (+TLS), as v2ray serves it
    try:
        await stream.sendall(request(password, cmd, host, port))
    except BaseException:
        stream.abort()
        raise
    return stream


async def dial(node: Node, dst: Destination, opts: DialOptions) -> Stream:
    return await open_session(node, opts, CMD_CONNECT, dst.host, dst.port)


async def dial_on(raw: Stream, node: Node, dst: Destination, opts: DialOptions) -> Stream:
    """TLS and the CONNECT request over a stream already connected to the node (a chain's hop)."""
    return await open_session_on(raw, node, opts, CMD_CONNECT, dst.host, dst.port)


class TrojanUdpAssociation:
    """UDP frames over one TLS session; a reader task hands replies to `on_reply`."""

    def __init__(self, node: Node, stream: Stream, on_reply: ReplyCallback) -> None:
        self.node = node
        self.closed = False
        self.dropped = 0
        self.on_close: list[Callable[[Any], None]] = []
        self._stream = stream
        self._on_reply = on_reply
        self._queued = 0
        loop = asyncio.get_running_loop()
        self._reader = loop.create_task(self._read())
        self._writes: set[asyncio.Task[None]] = set()

    def send(self, data: bytes, dst: Destination) -> None:
        if self.closed:
            return
        try:
            frame = udp_frame(dst.host, dst.port, data)
        except ValueError as exc:
            self.dropped += 1
            log.debug("node %s: %s; dropped", self.node, exc)
            return
        if self._queued + len(frame) > MAX_QUEUED:
            self.dropped += 1
            return
        self._queued += len(frame)
        # TlsStream.sendall encrypts before its first await: frames go out in call order.
        task = asyncio.get_running_loop().create_task(self._write(frame))
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _write(self, frame: bytes) -> None:
        try:
            await self._stream.sendall(frame)
        except OSError as exc:
            log.debug("node %s: UDP frame not sent: %s", self.node, exc)
            self.close()
        finally:
            self._queued -= len(frame)

    async def _read(self) -> None:
        buf = bytearray()
        reason = "closed by the server"
        answered = False
        try:
            while data := await self._stream.recv():
                buf += data
                for host, port, payload in parse_udp_frames(buf):
                    answered = True
                    self._on_reply(payload, (host, port))
        except ValueError as exc:
            reason = f"malformed UDP frame from the server: {exc}"
        except OSError as exc:
            reason = f"read failed: {exc}"
        except Exception as exc:  # noqa: BLE001 - the reader ends quietly whatever it was (a TLS error: ProxyProtocolError)
            reason = str(exc)
        if not self.closed:
            if answered:
                log.debug("node %s: trojan UDP session ended: %s", self.node, reason)
            else:  # the server never took the request: say what that looks like, once per session
                log.info("node %s: the trojan UDP session ended before any reply (%s): a wrong "
                         "password looks like this (trojan-gfw hands such a request to its "
                         "fallback)", self.node, reason)
            self.close()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self._writes):
            task.cancel()
        if self._reader.done():
            self._stream.close()
        else:  # close the fd only once the reader let go of it
            self._reader.cancel()
            self._reader.add_done_callback(lambda _task: self._stream.close())
        for callback in self.on_close:
            callback(self)


async def associate(node: Node, opts: DialOptions,
                    on_reply: ReplyCallback) -> TrojanUdpAssociation:
    return await associate_on(lambda: connect_to(node, opts), node, opts, on_reply)


async def associate_on(connect: Connect, node: Node, opts: DialOptions,
                       on_reply: ReplyCallback) -> TrojanUdpAssociation:
    """UDP ASSOCIATE over a stream `connect` gives, already connected to the node (straight, or
    through a chain's earlier hops: runtime/proxy/chain.py): one stream carries every datagram."""
    _password(node)  # a node without one fails here, before anything is dialled
    stream = await open_session_on(await connect(), node, opts, CMD_UDP_ASSOCIATE, "0.0.0.0", 0)
    return TrojanUdpAssociation(node, stream, on_reply)
