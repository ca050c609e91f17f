"""The common body of the UDP associations: one non-blocking socket read by the loop."""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

from .base import Node, ReplyCallback

log = logging.getLogger(__name__)


class SocketAssociation:
    """Reads its socket on the loop and hands each datagram to `received`; `close` ends it and
    runs the `on_close` callbacks once."""

    node: Node | None = None

    def __init__(self, sock: socket.socket, on_reply: ReplyCallback) -> None:
        self._sock = sock
        self._on_reply = on_reply
        self.closed = False
        self.dropped = 0
        self.on_close: list[Callable[[SocketAssociation], None]] = []
        asyncio.get_running_loop().add_reader(sock.fileno(), self._readable)

    def received(self, data: bytes, addr: tuple) -> None:
        raise NotImplementedError

    def _readable(self) -> None:
        for _ in range(64):
            try:
                data, addr = self._sock.recvfrom(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP error: go on
                log.debug("node %s: UDP receive: %s", self.node, exc)
                continue
            self.received(data, addr)

    def _send(self, data: bytes, addr: tuple | None = None) -> None:
        try:
            if addr is None:
                self._sock.send(data)
            else:
                self._sock.sendto(data, addr)
        except OSError as exc:  # a full buffer or an ICMP error: the datagram is lost
            self.dropped += 1
            log.debug("node %s: UDP send failed: %s", self.node, exc)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            asyncio.get_running_loop().remove_reader(self._sock.fileno())
        except (RuntimeError, ValueError):
            pass
        self._sock.close()
        for callback in self.on_close:
            callback(self)
