"""One QUIC connection driven over a UDP association, for DoQ and DoH3.

aioquic is sans-I/O: this class feeds it the datagrams the routed outbound's `open_udp`
delivers (direct: a marked socket; proxied: the group's UDP path) and sends what it wants sent,
with its timer on the event loop. Stream events go to the scheme's `on_event`; a connection
that ends fails every waiter, and the next query dials again.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.events import ConnectionTerminated, HandshakeCompleted, QuicEvent

from dae_py.runtime.proxy.base import UdpAssociation

from .base import Upstream, UpstreamError, ca_file

log = logging.getLogger("dae.dns.upstream")


class QuicConn:
    def __init__(self, up: Upstream, alpn: str, on_event: Callable[[QuicEvent], None]) -> None:
        self.up = up
        cfg = QuicConfiguration(alpn_protocols=[alpn], is_client=True, server_name=up.host,
                                idle_timeout=30.0, cafile=ca_file())
        self.quic = QuicConnection(configuration=cfg)
        self.on_event = on_event
        self.loop = asyncio.get_running_loop()
        self.assoc: UdpAssociation | None = None
        self.ready: asyncio.Future[None] = self.loop.create_future()
        self.closed = False
        self.why = ""
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self.failers: list[Callable[[str], None]] = []

    async def connect(self) -> None:
        up = self.up
        self.assoc = await up.outbounds["udp"].open_udp(up.family, self._datagram)
        self.assoc.on_close.append(lambda _a: self.fail("its UDP path closed"))
        self.quic.connect((up.address, up.port), now=self.loop.time())
        self.transmit()
        await asyncio.shield(self.ready)

    def _datagram(self, data: bytes, addr: tuple[str, int]) -> None:
        up = self.up
        if addr[1] != up.port or addr[0].removeprefix("::ffff:") != up.address or self.closed:
            return
        self.quic.receive_datagram(data, (up.address, up.port), now=self.loop.time())
        self._process()

    def _process(self) -> None:
        while (ev := self.quic.next_event()) is not None:
            if isinstance(ev, HandshakeCompleted):
                if not self.ready.done():
                    self.ready.set_result(None)
            elif isinstance(ev, ConnectionTerminated):
                self.fail(f"connection closed ({ev.error_code}: {ev.reason_phrase or 'no reason'})")
                return
            self.on_event(ev)
        self.transmit()

    def transmit(self) -> None:
        if self.assoc is None or self.closed:
            return
        dest = self.up.dest
        for data, _addr in self.quic.datagrams_to_send(now=self.loop.time()):
            self.assoc.send(data, dest)
        at = self.quic.get_timer()
        if at != self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self.loop.call_at(at, self._on_timer) if at is not None else None
            self._timer_at = at

    def _on_timer(self) -> None:
        self._timer = self._timer_at = None
        self.quic.handle_timer(now=self.loop.time())
        self._process()

    def fail(self, why: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.why = why
        if not self.ready.done():
            self.ready.set_exception(UpstreamError(f"{self.up.name}: {why}"))
            self.ready.exception()
        for f in self.failers:
            f(why)
        if self._timer is not None:
            self._timer.cancel()
        if self.assoc is not None:
            self.assoc.close()

    def close(self) -> None:
        if not self.closed:
            self.quic.close()
            self.transmit()
        self.fail("closed")
