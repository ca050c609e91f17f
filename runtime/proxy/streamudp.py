"""UDP for protocols whose request names one destination (VMess, VLESS): one proxied session
per destination the client writes to, each a `PacketStream` carrying whole datagrams.

The relay's association is per client socket and may send anywhere (a DNS client asks several
servers); so the first datagram to a new destination opens its session, later ones queue
behind it (bounded), and every reply comes back from the destination that session names.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from dae_py.runtime.net.stream import Stream

from .base import Destination, Node, OutboundError, ReplyCallback

log = logging.getLogger(__name__)

MAX_SESSIONS = 64  # destinations per association; datagrams to more are dropped
MAX_QUEUED = 256  # datagrams waiting for one session's stream

#: A fresh stream connected to a node: straight (`transport.connect_to`) or through a chain's
#: earlier hops (`chain.associate`); a protocol's `associate_on` runs its UDP framing on it.
Connect = Callable[[], Awaitable[Stream]]


class PacketStream(Protocol):
    async def send_packet(self, data: bytes) -> None: ...

    async def recv_packet(self) -> bytes | None: ...

    def close(self) -> None: ...


class StreamUdpAssociation:
    """The sessions of one client's UDP association, by destination."""

    def __init__(self, node: Node, on_reply: ReplyCallback,
                 opener: Callable[[Destination], Awaitable[PacketStream]]) -> None:
        self.node = node
        self.closed = False
        self.dropped = 0
        self.on_close: list[Callable[[Any], None]] = []
        self._on_reply = on_reply
        self._opener = opener
        self._queues: dict[tuple[str, int], asyncio.Queue[bytes]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def send(self, data: bytes, dst: Destination) -> None:
        if self.closed:
            return
        key = (dst.host, dst.port)
        queue = self._queues.get(key)
        if queue is None:
            if len(self._queues) >= MAX_SESSIONS:
                self.dropped += 1
                return
            queue = self._queues[key] = asyncio.Queue(MAX_QUEUED)
            task = asyncio.get_running_loop().create_task(self._run(dst, queue), name=f"udp {key}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        try:
            queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1

    async def _run(self, dst: Destination, queue: asyncio.Queue[bytes]) -> None:
        """Open the session, then write what queues while a reader hands replies back."""
        key = (dst.host, dst.port)
        stream: PacketStream | None = None
        reader: asyncio.Task[None] | None = None
        try:
            stream = await self._opener(dst)
            reader = asyncio.get_running_loop().create_task(self._read(stream, key))
            while True:
                await stream.send_packet(await queue.get())
        except (OutboundError, OSError) as exc:
            log.info("node %s: UDP session to %s ended: %s", self.node, dst,
                     exc.what if isinstance(exc, OutboundError) else exc)
        finally:
            if reader is not None:
                reader.cancel()
            if stream is not None:
                stream.close()
            if self._queues.get(key) is queue:
                del self._queues[key]

    async def _read(self, stream: PacketStream, key: tuple[str, int]) -> None:
        try:
            while (data := await stream.recv_packet()) is not None:
                self._on_reply(data, key)
        except (OutboundError, OSError) as exc:
            log.info("node %s: UDP replies from %s:%d ended: %s", self.node, key[0], key[1],
                     exc.what if isinstance(exc, OutboundError) else exc)
        for task in list(self._tasks):  # the writer of this session
            if task.get_name() == f"udp {key}":
                task.cancel()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        for callback in self.on_close:
            callback(self)
