"""HTTP CONNECT proxies (RFC 9110 section 9.3.6) with Basic proxy authentication."""
from __future__ import annotations

import asyncio
import base64
import re

from dae_py.runtime.net.sockets import connect_in, connect_tcp
from dae_py.runtime.net.stream import SocketStream, Stream, bounded, read_until

from .base import Destination, DialOptions, Node, ProxyAuthError, ProxyProtocolError, ProxyRefusedError

MAX_RESPONSE_HEAD = 16 * 1024
_STATUS = re.compile(rb"HTTP/1\.[01] (\d{3})(?: ([^\r\n]*))?\r\n")


def connect_request(node: Node, dst: Destination) -> bytes:
    target = str(dst)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}"]
    if node.username is not None:
        token = base64.b64encode(f"{node.username}:{node.password or ''}".encode()).decode()
        lines.append(f"Proxy-Authorization: Basic {token}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def handshake(stream: Stream, node: Node, dst: Destination) -> None:
    """CONNECT; returns once the tunnel is open. Bytes after the response head stay queued."""
    await stream.sendall(connect_request(node, dst))
    await read_response(stream, node, dst)


async def read_response(stream: Stream, node: Node, dst: Destination) -> None:
    """The response to a CONNECT already sent: returns if it opened the tunnel, else raises
    naming the status."""
    head = await read_until(stream, b"\r\n\r\n", MAX_RESPONSE_HEAD, node,
                            "the HTTP CONNECT response head")
    match = _STATUS.match(head)
    if not match:
        first = head.split(b"\r\n", 1)[0][:80]
        raise ProxyProtocolError(f"malformed HTTP CONNECT status line {first!r}", node)
    code = int(match.group(1))
    reason = (match.group(2) or b"").decode("latin-1")
    if code in (401, 407):  # 407 per the RFC; tinyproxy answers 401
        raise ProxyAuthError("HTTP proxy authentication "
                             + ("failed for user " + repr(node.username)
                                if node.username is not None else "required (no credentials)")
                             + f" ({code} {reason})", node)
    if not 200 <= code < 300:
        raise ProxyRefusedError(f"HTTP CONNECT {dst} answered {code} {reason}", node)


async def bounded_handshake(stream: Stream, node: Node, dst: Destination,
                            opts: DialOptions) -> None:
    await bounded(handshake(stream, node, dst), opts.handshake_timeout, node,
                  "HTTP CONNECT handshake")


async def dial(node: Node, dst: Destination, opts: DialOptions) -> SocketStream:
    stream = SocketStream(await connect_tcp(node.host, node.port, opts, node))
    try:
        await bounded_handshake(stream, node, dst, opts)
    except BaseException:
        stream.abort()
        raise
    return stream


async def dial_on(raw: Stream, node: Node, dst: Destination, opts: DialOptions) -> Stream:
    """HTTP CONNECT over a stream already connected to the node (a chain's later hop)."""
    await bounded_handshake(raw, node, dst, opts)
    return raw


class PlainConnect:
    """A warm pool's HTTP proxy connections (`base.Prepared`): connected before a flow comes;
    the flow sends its CONNECT and waits for the response head."""

    handshake = "HTTP CONNECT handshake"

    async def open(self, node: Node, opts: DialOptions) -> SocketStream:
        loop = asyncio.get_running_loop()
        return SocketStream(await connect_in(loop, node.host, node.port, opts, node, keep=True),
                            loop, in_poller=True)

    def greeting(self, node: Node) -> tuple[bytes, bytes] | None:
        return (b"", b"")

    def request(self, node: Node, host: str, port: int) -> bytes | None:
        return connect_request(node, Destination(host, port))

    def reply_size(self, buf: bytes) -> int:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return -1 if len(buf) > MAX_RESPONSE_HEAD else 0
        match = _STATUS.match(buf)
        if match is None or not 200 <= int(match.group(1)) < 300:
            return -1
        return end + 4

    async def finish(self, stream: SocketStream, node: Node, dst: Destination, opts: DialOptions,
                     got: bytes, timed_out: bool, loop: asyncio.AbstractEventLoop) -> SocketStream:
        try:
            if timed_out:
                raise ProxyProtocolError(f"HTTP CONNECT handshake timed out after "
                                         f"{opts.handshake_timeout:g}s", node)
            await bounded(read_response(stream, node, dst), opts.handshake_timeout, node,
                          "HTTP CONNECT handshake", loop)
        except BaseException:
            stream.abort()
            raise
        return stream


PREPARED = PlainConnect()
