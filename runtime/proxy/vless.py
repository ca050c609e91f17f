"""VLESS (v2ray >= 4.30, encryption "none"): TCP and UDP over any transport (`transport`).

The request (v2fly's "VLESS" notes; checked against v2ray-core 4.34's proxy/vless/encoding):
    version 0 || UUID (16) || addons length 0 || command (1 TCP, 2 UDP) || port || address type
    (1 IPv4, 2 domain, 3 IPv6) || address  [payload...]
and the response, ahead of the target's first bytes: version 0 || addons length || addons.
VLESS encrypts nothing itself: its links pair it with TLS. A UDP session carries datagrams to
the one destination of its request, each as a 2-byte big-endian length and the payload, both
ways. The server answers nothing before the target does; a wrong UUID shows as a close with no
response (v2ray 4.34 without fallbacks), which is also how a target that closes without a byte
ends: the stream ends and one log line names the node and both causes (a reset before the
response, our bytes unread, is a refusal: ProxyAuthError).
"""
from __future__ import annotations

import logging
import struct

from dae_py.runtime.net.stream import RECV_SIZE, Buffer, LayeredStream, Stream

from .base import Destination, DialOptions, Node, ProxyProtocolError, ReplyCallback
from .streamudp import Connect, StreamUdpAssociation
from .transport import connect_to, describe, open_stream_on
from .vmess import _WARNED, closed_unanswered, encode_address, refused, user_id

log = logging.getLogger(__name__)

VERSION = 0
CMD_TCP, CMD_UDP = 1, 2
MAX_DATAGRAM = 0xFFFF


def request(uid: bytes, cmd: int, host: str, port: int) -> bytes:
    return bytes((VERSION,)) + uid + b"\x00" + bytes((cmd,)) + encode_address(host, port)


class VlessStream(LayeredStream):
    """A VLESS session over its transport stream `raw`: the response head is stripped on the
    first read; the rest is the target's bytes (TCP) or length-prefixed datagrams (UDP)."""

    def __init__(self, raw: Stream, node: Node) -> None:
        self.raw = raw
        self.node = node
        self._pending = b""
        self._head = b""
        self._answered = False
        self._packets = bytearray()

    async def sendall(self, data: Buffer) -> None:
        await self.raw.sendall(data)

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        while True:
            try:
                data = await self.raw.recv(n)
            except ConnectionResetError:
                if self._answered:
                    raise
                raise refused(self.node, "VLESS", "a wrong UUID looks like this") from None
            if self._answered:
                return data
            if not data:
                closed_unanswered(self.node, "VLESS", "a wrong UUID looks like this")
                self._answered = True  # the end of the stream, reported once
                return b""
            self._head += data
            if len(self._head) < 2:
                continue
            if self._head[0] != VERSION:
                raise ProxyProtocolError(f"VLESS response version {self._head[0]} (expected 0)",
                                         self.node)
            end = 2 + self._head[1]
            if len(self._head) < end:
                continue
            self._answered = True
            _WARNED.discard(self.node.name)
            data, self._head = self._head[end:], b""
            if data:
                return data

    async def send_packet(self, data: bytes) -> None:
        if len(data) > MAX_DATAGRAM:
            return
        await self.raw.sendall(struct.pack("!H", len(data)) + data)

    async def recv_packet(self) -> bytes | None:
        buf = self._packets
        while True:
            if len(buf) >= 2:
                (size,) = struct.unpack_from("!H", buf)
                if len(buf) >= 2 + size:
                    packet = bytes(buf[2:2 + size])
                    del buf[:2 + size]
                    return packet
            data = await self.recv()
            if not data:
                if buf:
                    raise ProxyProtocolError("the server closed the connection in the middle "
                                             "of a datagram", self.node)
                return None
            buf += data


async def open_session(node: Node, opts: DialOptions, cmd: int, dst: Destination) -> VlessStream:
    user_id(node)
    return await open_session_on(await connect_to(node, opts), node, opts, cmd, dst)


async def open_session_on(raw: Stream, node: Node, opts: DialOptions, cmd: int,
                          dst: Destination) -> VlessStream:
    """The node's transport and the request over `raw`, a stream already connected to the node
    (directly, or through a chain's earlier hops)."""
    try:
        uid = user_id(node)
    except BaseException:
        raw.abort()
        raise
    stream = await open_stream_on(raw, node, opts)
    try:
        await stream.sendall(request(uid, cmd, dst.host, dst.port))
    except BaseException:
        stream.abort()
        raise
    log.debug("node %s: VLESS session over %s to %s", node, describe(node), dst)
    return VlessStream(stream, node)


async def dial(node: Node, dst: Destination, opts: DialOptions) -> VlessStream:
    return await open_session(node, opts, CMD_TCP, dst)


async def dial_on(raw: Stream, node: Node, dst: Destination, opts: DialOptions) -> VlessStream:
    """A VLESS TCP session over a stream already connected to the node (a chain's later hop)."""
    return await open_session_on(raw, node, opts, CMD_TCP, dst)


async def associate(node: Node, opts: DialOptions, on_reply: ReplyCallback) -> StreamUdpAssociation:
    return await associate_on(lambda: connect_to(node, opts), node, opts, on_reply)


async def associate_on(connect: Connect, node: Node, opts: DialOptions,
                       on_reply: ReplyCallback) -> StreamUdpAssociation:
    """UDP sessions, one per destination, each over a fresh stream `connect` gives, already
    connected to the node (straight, or through a chain's earlier hops)."""
    user_id(node)  # a node without a valid UUID fails here, not per datagram

    async def session(dst: Destination) -> VlessStream:
        return await open_session_on(await connect(), node, opts, CMD_UDP, dst)

    return StreamUdpAssociation(node, on_reply, session)
