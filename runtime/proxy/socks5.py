"""SOCKS5 (RFC 1928) with username/password (RFC 1929): CONNECT and UDP ASSOCIATE."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import struct

from dae_py.runtime.net.sockets import _literal, connect_in, connect_tcp, resolve, set_mark
from dae_py.runtime.net.stream import SocketStream, Stream, bounded, read_exact

from .base import Destination, DialOptions, Node, ProxyAuthError, ProxyProtocolError, ProxyRefusedError, ReplyCallback
from .udp import SocketAssociation

log = logging.getLogger(__name__)

CMD_CONNECT = 0x01
CMD_UDP_ASSOCIATE = 0x03
ATYP_V4, ATYP_DOMAIN, ATYP_V6 = 0x01, 0x03, 0x04
REPLIES = {
    0x01: "general SOCKS server failure",
    0x02: "connection not allowed by ruleset",
    0x03: "network unreachable",
    0x04: "host unreachable",
    0x05: "connection refused",
    0x06: "TTL expired",
    0x07: "command not supported",
    0x08: "address type not supported",
}


def encode_addr(host: str, port: int) -> bytes:
    """ATYP + address + port, as in requests and UDP headers."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if len(name) > 255:
            raise ValueError(f"domain name too long for SOCKS5: {host!r}") from None
        return bytes((ATYP_DOMAIN, len(name))) + name + struct.pack("!H", port)
    atyp = ATYP_V4 if ip.version == 4 else ATYP_V6
    return bytes((atyp,)) + ip.packed + struct.pack("!H", port)


def decode_addr(data: bytes | bytearray | memoryview, offset: int) -> tuple[str, int, int]:
    """(host, port, end offset) of an ATYP-prefixed address in `data`; ValueError if malformed."""
    if len(data) <= offset:
        raise ValueError("truncated before the address type")
    atyp = data[offset]
    if atyp == ATYP_V4:
        end = offset + 1 + 4
        host = str(ipaddress.IPv4Address(bytes(data[offset + 1:end])))
    elif atyp == ATYP_V6:
        end = offset + 1 + 16
        host = str(ipaddress.IPv6Address(bytes(data[offset + 1:end])))
    elif atyp == ATYP_DOMAIN:
        if len(data) <= offset + 1:
            raise ValueError("truncated domain length")
        end = offset + 2 + data[offset + 1]
        if len(data) < end:
            raise ValueError("truncated domain")
        try:
            host = bytes(data[offset + 2:end]).decode("idna")
        except UnicodeError:
            raise ValueError(f"undecodable domain {bytes(data[offset + 2:end])!r}") from None
    else:
        raise ValueError(f"unknown address type {atyp:#04x}")
    if len(data) < end + 2:
        raise ValueError("truncated address")
    (port,) = struct.unpack_from("!H", data, end)
    return host, port, end + 2


async def negotiate(stream: Stream, node: Node, then: bytes = b"") -> None:
    """Method selection and, when the node has credentials, RFC 1929 authentication.

    `then` (only without credentials): a request sent in the same segment as the greeting
    (pipelined; its reply follows the method selection reply)."""
    methods = b"\x00\x02" if node.username is not None else b"\x00"
    await stream.sendall(b"\x05" + bytes((len(methods),)) + methods + then)
    if await _method_reply(stream, node) == 0x00:
        return
    assert node.username is not None  # method 0x02 is offered only with credentials
    user = node.username.encode()
    password = (node.password or "").encode()
    if len(user) > 255 or len(password) > 255:
        raise ProxyAuthError("username or password longer than 255 bytes", node)
    await stream.sendall(b"\x01" + bytes((len(user),)) + user + bytes((len(password),)) + password)
    ver, status = await read_exact(stream, 2, node, "the SOCKS5 authentication reply")
    if ver not in (1, 5):
        raise ProxyProtocolError(f"SOCKS5 authentication reply version {ver:#04x} "
                                 f"(expected 0x01)", node)
    if status != 0:
        raise ProxyAuthError(f"SOCKS5 username/password rejected for user "
                             f"{node.username!r} (status {status:#04x})", node)


def encode_request(cmd: int, host: str, port: int) -> bytes:
    return b"\x05" + bytes((cmd, 0)) + encode_addr(host, port)


async def request(stream: Stream, node: Node, cmd: int, host: str, port: int) -> tuple[str, int]:
    """Send a request, read the reply; the bound (host, port) on success."""
    await stream.sendall(encode_request(cmd, host, port))
    return await read_reply(stream, node, cmd, host, port)


async def read_reply(stream: Stream, node: Node, cmd: int, host: str,
                     port: int) -> tuple[str, int]:
    """The reply to a request already sent; the bound (host, port) on success."""
    head = await read_exact(stream, 4, node, "the SOCKS5 reply")
    ver, rep, _rsv, atyp = head
    if ver != 5:
        raise ProxyProtocolError(f"SOCKS5 reply version {ver:#04x} (expected 0x05): "
                                 f"{head!r}", node)
    if rep != 0:
        what = REPLIES.get(rep, f"unknown reply code {rep:#04x}")
        verb = "CONNECT" if cmd == CMD_CONNECT else "UDP ASSOCIATE"
        raise ProxyRefusedError(f"SOCKS5 {verb} {Destination(host, port)}: {what}", node)
    if atyp == ATYP_V4:
        rest = await read_exact(stream, 4 + 2, node, "the SOCKS5 reply address")
    elif atyp == ATYP_V6:
        rest = await read_exact(stream, 16 + 2, node, "the SOCKS5 reply address")
    elif atyp == ATYP_DOMAIN:
        size = await read_exact(stream, 1, node, "the SOCKS5 reply address")
        rest = size + await read_exact(stream, size[0] + 2, node, "the SOCKS5 reply address")
    else:
        raise ProxyProtocolError(f"SOCKS5 reply with unknown address type {atyp:#04x}", node)
    bound_host, bound_port, _ = decode_addr(bytes((atyp,)) + rest, 0)
    return bound_host, bound_port


async def handshake(stream: Stream, node: Node, dst: Destination) -> None:
    """Method selection (and authentication), then CONNECT: one round trip each."""
    await negotiate(stream, node)
    await request(stream, node, CMD_CONNECT, dst.host, dst.port)


async def dial_on(raw: Stream, node: Node, dst: Destination, opts: DialOptions) -> Stream:
    """SOCKS5 CONNECT over a stream already connected to the node (a chain's later hop)."""
    await bounded(handshake(raw, node, dst), opts.handshake_timeout, node, "SOCKS5 handshake")
    return raw


# Nodes (host, port) seen mishandling a pipelined handshake: they get the plain one from then on.
_NO_PIPELINING: set[tuple[str, int]] = set()
_OK_METHOD = b"\x05\x00"
_OK_REPLY = b"\x05\x00\x00"
PIPELINED_GREETING = b"\x05\x01\x00"  # version 5, one method: no authentication
_REPLY_SIZE = {ATYP_V4: 10, ATYP_V6: 22}
_inet_pton = socket.inet_pton
_PORT = struct.Struct("!H").pack


def connect_request(host: str, port: int) -> bytes:
    """A CONNECT request; IP literals without the ipaddress module."""
    try:
        return b"\x05\x01\x00\x01" + _inet_pton(socket.AF_INET, host) + _PORT(port)
    except OSError:
        pass
    return encode_request(CMD_CONNECT, host, port)


class _Progress:
    __slots__ = ("got",)

    def __init__(self) -> None:
        self.got = b""  # reply bytes received so far


async def pipelined_handshake(stream: Stream, node: Node, dst: Destination,
                              progress: _Progress) -> None:
    """No-auth greeting and CONNECT in one segment, both replies read together (RFC 1928 lets
    the client send its request once it knows the method; a server that reads the greeting
    byte-exactly, as dante does, handles it). Any reply that is not a plain success is
    re-parsed by the one-step readers, which name what was wrong."""
    await stream.sendall(PIPELINED_GREETING + connect_request(dst.host, dst.port))
    buf = b""
    while True:
        chunk = await stream.recv(512)
        if not chunk:
            break
        buf += chunk
        progress.got = buf
        need = pipelined_reply_size(buf)
        if need < 0:
            break
        if need and len(buf) >= need:
            if len(buf) > need:  # the target spoke first: its bytes stay queued
                stream.unread(buf[need:])
            return
    stream.unread(buf)  # not a plain success: let the step-by-step readers say what it is
    await _method_reply(stream, node)
    await read_reply(stream, node, CMD_CONNECT, dst.host, dst.port)


async def _method_reply(stream: Stream, node: Node) -> int:
    """The method the server chose: no-auth, or username/password when the node has
    credentials (the methods `negotiate` offers); anything else raises."""
    ver, method = await read_exact(stream, 2, node, "the SOCKS5 method selection reply")
    if ver != 5:
        raise ProxyProtocolError(f"not a SOCKS5 server: method reply starts with {ver:#04x} "
                                 f"(expected 0x05)", node)
    if method == 0xFF:
        raise ProxyAuthError("SOCKS5 server accepts none of our authentication methods "
                             + ("(no-auth, username/password)" if node.username is not None
                                else "(no-auth; does it need a username?)"), node)
    if method != 0x00 and (method != 0x02 or node.username is None):
        raise ProxyProtocolError(f"SOCKS5 server chose method {method:#04x}, which we did not "
                                 f"offer", node)
    return method


async def dial(node: Node, dst: Destination, opts: DialOptions) -> SocketStream:
    """A connected stream through `node`. Without credentials the handshake is pipelined; a
    node that answers the method selection and then nothing (it read the greeting with a
    fixed-size read and dropped the request) or closes is dialed again step by step, and
    remembered."""
    key = (node.host, node.port)
    pipelined = node.username is None and key not in _NO_PIPELINING
    loop = asyncio.get_running_loop()
    stream = SocketStream(await connect_in(loop, node.host, node.port, opts, node, keep=True),
                          loop, in_poller=True)
    if pipelined:
        progress = _Progress()
        try:
            await bounded(pipelined_handshake(stream, node, dst, progress),
                          opts.handshake_timeout, node, "SOCKS5 CONNECT handshake", loop)
            return stream
        except ProxyProtocolError:
            stream.abort()
            if progress.got != _OK_METHOD:
                raise
        except BaseException:
            stream.abort()
            raise
        return await _step_by_step_from_now_on(node, dst, opts)
    return await _handshake(stream, node, dst, opts)


async def _handshake(stream: SocketStream, node: Node, dst: Destination,
                     opts: DialOptions) -> SocketStream:
    """The step-by-step handshake on a connected stream, bounded; the stream is aborted if it
    fails."""
    try:
        await bounded(handshake(stream, node, dst), opts.handshake_timeout, node,
                      "SOCKS5 CONNECT handshake")
    except BaseException:
        stream.abort()
        raise
    return stream


async def _step_by_step_from_now_on(node: Node, dst: Destination,
                                    opts: DialOptions) -> SocketStream:
    """A method reply, then silence or EOF: the pipelined request was lost, not refused."""
    _NO_PIPELINING.add((node.host, node.port))
    log.warning("node %s: no answer to a pipelined SOCKS5 CONNECT; dialing it step by step "
                "from now on", node)
    stream = SocketStream(await connect_tcp(node.host, node.port, opts, node))
    return await _handshake(stream, node, dst, opts)


async def finish_pipelined(stream: SocketStream, node: Node, dst: Destination,
                           opts: DialOptions, got: bytes, timed_out: bool,
                           loop: asyncio.AbstractEventLoop) -> SocketStream:
    """The rest of a pipelined handshake a callback dial started (the relay's fast path):
    `got` the reply bytes it read (already unread into `stream`), `timed_out` whether its
    handshake timer fired. Same outcomes as `dial`: a named error, or the step-by-step retry
    for a node that dropped the request."""
    try:
        if timed_out:
            raise ProxyProtocolError(f"SOCKS5 CONNECT handshake timed out after "
                                     f"{opts.handshake_timeout:g}s", node)
        await bounded(_finish_reply(stream, node, dst), opts.handshake_timeout, node,
                      "SOCKS5 CONNECT handshake", loop)
        return stream
    except ProxyProtocolError:
        stream.abort()
        if got != _OK_METHOD:
            raise
    except BaseException:
        stream.abort()
        raise
    return await _step_by_step_from_now_on(node, dst, opts)


async def _finish_reply(stream: Stream, node: Node, dst: Destination) -> None:
    await _method_reply(stream, node)
    await read_reply(stream, node, CMD_CONNECT, dst.host, dst.port)


def pipelined_reply_size(buf: bytes) -> int:
    """For the bytes of a pipelined handshake's replies read so far: how many make up both
    replies (0: not known yet), or -1 when they are not a plain success (a step-by-step parse
    will say what they are)."""
    n = len(buf)
    if n >= 2 and buf[:2] != _OK_METHOD or n >= 5 and buf[2:5] != _OK_REPLY:
        return -1
    if n < 6:
        return 0
    atyp = buf[5]
    if atyp in _REPLY_SIZE:
        return 2 + _REPLY_SIZE[atyp]
    if atyp != ATYP_DOMAIN:
        return -1
    return 2 + 7 + buf[6] if n >= 7 else 0


def fast_dialable(node: Node) -> list[tuple[int, tuple]] | None:
    """The address of a node the relay may dial with its callback fast path (socks5 without
    credentials, an IP literal, not known to drop pipelined requests), else None."""
    if node.protocol != "socks5" or node.username is not None:
        return None
    if (node.host, node.port) in _NO_PIPELINING:
        return None
    return _literal(node.host, node.port)


class PipelinedConnect:
    """The relay's callback dial for SOCKS5 (`base.FastPath`): the no-auth greeting and CONNECT
    in one segment, both replies measured by `pipelined_reply_size`, anything else finished by
    `finish_pipelined`. The same handshake `dial` does, without a coroutine."""

    handshake = "SOCKS5 CONNECT handshake"

    def address(self, node: Node) -> tuple[int, tuple] | None:
        addrs = fast_dialable(node)
        if addrs is None or len(addrs) != 1:
            return None
        return addrs[0]

    def request(self, node: Node, host: str, port: int) -> bytes | None:
        try:
            return PIPELINED_GREETING + connect_request(host, port)
        except ValueError:  # a name too long for SOCKS5: `dial` names the error
            return None

    def reply_size(self, buf: bytes) -> int:
        return pipelined_reply_size(buf)

    async def finish(self, stream: SocketStream, node: Node, dst: Destination, opts: DialOptions,
                     got: bytes, timed_out: bool, loop: asyncio.AbstractEventLoop) -> SocketStream:
        return await finish_pipelined(stream, node, dst, opts, got, timed_out, loop)


FAST_PATH = PipelinedConnect()


def connect_reply_size(buf: bytes) -> int:
    """`pipelined_reply_size` for a CONNECT reply alone (the method selection done before)."""
    need = pipelined_reply_size(_OK_METHOD + buf)
    return need - 2 if need > 0 else need


class NegotiatedConnect:
    """A warm pool's SOCKS5 connections (`base.Prepared`): connected, methods negotiated (and
    username/password accepted) before a flow comes, so the flow sends its CONNECT alone and
    waits for one reply. Any node qualifies: credentials cost nothing per flow this way."""

    handshake = "SOCKS5 CONNECT handshake"

    async def open(self, node: Node, opts: DialOptions) -> SocketStream:
        loop = asyncio.get_running_loop()
        stream = SocketStream(await connect_in(loop, node.host, node.port, opts, node, keep=True),
                              loop, in_poller=True)
        try:
            await bounded(negotiate(stream, node), opts.handshake_timeout, node,
                          "SOCKS5 method negotiation", loop)
        except BaseException:
            stream.abort()
            raise
        return stream

    def greeting(self, node: Node) -> tuple[bytes, bytes] | None:
        return (PIPELINED_GREETING, _OK_METHOD) if node.username is None else None

    def request(self, node: Node, host: str, port: int) -> bytes | None:
        try:
            return connect_request(host, port)
        except ValueError:  # a name too long for SOCKS5: `dial` names the error
            return None

    def reply_size(self, buf: bytes) -> int:
        return connect_reply_size(buf)

    async def finish(self, stream: SocketStream, node: Node, dst: Destination, opts: DialOptions,
                     got: bytes, timed_out: bool, loop: asyncio.AbstractEventLoop) -> SocketStream:
        try:
            if timed_out:
                raise ProxyProtocolError(f"SOCKS5 CONNECT handshake timed out after "
                                         f"{opts.handshake_timeout:g}s", node)
            await bounded(read_reply(stream, node, CMD_CONNECT, dst.host, dst.port),
                          opts.handshake_timeout, node, "SOCKS5 CONNECT handshake", loop)
        except BaseException:
            stream.abort()
            raise
        return stream


PREPARED = NegotiatedConnect()


class Socks5UdpAssociation(SocketAssociation):
    """UDP ASSOCIATE: datagrams carry the RFC 1928 section 7 header; the association lives as
    long as its TCP control connection."""

    def __init__(self, node: Node, control: SocketStream, sock: socket.socket,
                 on_reply: ReplyCallback) -> None:
        super().__init__(sock, on_reply)
        self.node = node
        self._control = control
        self._watch = asyncio.get_running_loop().create_task(self._watch_control())

    def send(self, data: bytes, dst: Destination) -> None:
        if not self.closed:
            self._send(b"\x00\x00\x00" + encode_addr(dst.host, dst.port) + data)

    def received(self, packet: bytes, addr: tuple) -> None:
        try:
            if len(packet) < 4 or packet[0] or packet[1]:
                raise ValueError("bad reserved bytes")
            if packet[2]:
                raise ValueError("fragmented datagram (FRAG != 0) not supported")
            host, port, end = decode_addr(packet, 3)
        except ValueError as exc:
            self.dropped += 1
            log.debug("node %s: malformed UDP reply dropped: %s", self.node, exc)
            return
        self._on_reply(packet[end:], (host, port))

    async def _watch_control(self) -> None:
        try:
            while await self._control.recv(4096):
                pass
        except OSError:
            pass
        if not self.closed:
            log.debug("node %s: UDP ASSOCIATE control connection closed", self.node)
            self.close()

    def close(self) -> None:
        if not self.closed:
            if self._watch.done():
                self._control.close()
            else:  # close the fd only once the watcher let go of it (no reuse under its feet)
                self._watch.cancel()
                self._watch.add_done_callback(lambda _task: self._control.close())
        super().close()


async def associate(node: Node, opts: DialOptions,
                    on_reply: ReplyCallback) -> Socks5UdpAssociation:
    control = SocketStream(await connect_tcp(node.host, node.port, opts, node))
    sock: socket.socket | None = None
    try:
        local_ip = control.sock.getsockname()[0]
        sock = socket.socket(control.sock.family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        set_mark(sock, opts.so_mark)
        sock.bind((local_ip, 0))

        async def setup() -> tuple[str, int]:
            await negotiate(control, node)
            return await request(control, node, CMD_UDP_ASSOCIATE, local_ip,
                                 sock.getsockname()[1])

        relay_host, relay_port = await bounded(setup(), opts.handshake_timeout, node,
                                               "SOCKS5 UDP ASSOCIATE handshake")
        if relay_port == 0:
            raise ProxyProtocolError("SOCKS5 UDP ASSOCIATE reply names port 0 as the relay", node)
        try:
            unspecified = ipaddress.ip_address(relay_host).is_unspecified
        except ValueError:
            unspecified = False
        if unspecified:
            relay_host = control.sock.getpeername()[0]
        fam, addr = (await resolve(relay_host, relay_port, opts.connect_timeout, node,
                                   family=sock.family))[0]
        if fam != sock.family:
            raise ProxyProtocolError(f"SOCKS5 UDP relay {relay_host} is not of the control "
                                     f"connection's address family", node)
        sock.connect(addr)
        return Socks5UdpAssociation(node, control, sock, on_reply)
    except BaseException:
        control.abort()
        if sock is not None:
            sock.close()
        raise
