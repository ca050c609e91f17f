"""The `direct` outbound (id 0): dial the destination itself, from a marked socket."""
from __future__ import annotations

import asyncio
import logging
import socket

from dae_py.runtime.net.sockets import connect_tcp, resolve, set_mark
from dae_py.runtime.net.stream import SocketStream

from .base import Destination, Dialed, DialOptions, OutboundError, ReplyCallback
from .udp import SocketAssociation

log = logging.getLogger(__name__)


async def dial(dst: Destination, opts: DialOptions) -> SocketStream:
    return SocketStream(await connect_tcp(dst.host, dst.port, opts))


class DirectUdpAssociation(SocketAssociation):
    """One unconnected marked UDP socket per client: full cone, replies from any remote."""

    def __init__(self, family: int, opts: DialOptions, on_reply: ReplyCallback) -> None:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setblocking(False)
        set_mark(sock, opts.so_mark)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
        self._opts = opts
        super().__init__(sock, on_reply)

    def send(self, data: bytes, dst: Destination) -> None:
        if self.closed:
            return
        if dst.ip is None:
            asyncio.get_running_loop().create_task(self._send_named(data, dst))
        else:
            self._send(data, (dst.host, dst.port))

    async def _send_named(self, data: bytes, dst: Destination) -> None:
        try:
            _, addr = (await resolve(dst.host, dst.port, self._opts.connect_timeout,
                                     family=self._sock.family))[0]
        except OutboundError as exc:
            self.dropped += 1
            log.debug("direct UDP to %s dropped: %s", dst, exc)
            return
        self._send(data, addr)

    def received(self, data: bytes, addr: tuple) -> None:
        self._on_reply(data, (addr[0], addr[1]))


class DirectOutbound:
    name = "direct"

    def __init__(self, opts: DialOptions = DialOptions()) -> None:
        self.opts = opts

    async def dial_tcp(self, dst: Destination) -> Dialed:
        return Dialed(await dial(dst, self.opts), None)

    async def open_udp(self, family: int, on_reply: ReplyCallback) -> DirectUdpAssociation:
        return DirectUdpAssociation(family, self.opts, on_reply)

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        pass
