"""The kernel pump: a plain-TCP relay pair handed to a BPF sockhash with a stream verdict program
(templates/bpf/sockmap.c), so the payload never enters user space.

`SockmapPump` owns the loaded sockmap.o (program, maps, the link that attaches the verdict
program to the sockhash). `SockmapFlow` is one relayed flow on it, with SplicedFlow's interface
(start, close, expire, active, tag, on_end) so the relay, the sweeper and the tracker treat both
alike.

What the kernel does and user space still does, as measured on 6.18 (tests/relay/test_sockmap.py):
- Bytes queued on a socket before it enters the map are not redirected until its next skb: the
  hand-over pokes each socket (SO_RCVLOWAT calls tcp_data_ready, which runs the verdict).
- Both sockets stay in the poller. EOF shows as readable and recv() == 0; an RST as
  ECONNRESET; the kernel drops a closed socket from the map by itself.
- A FIN must not overtake the bytes still in the peer's psock queue (the redirect is
  asynchronous, a workqueue writes them): a way's EOF becomes shutdown(SHUT_WR) on the peer
  only once the peer's write queue holds every redirected byte (tcp_info bytes_acked + SIOCOUTQ
  against the way's redirected count).
- The psock queue is unbounded: the program stops redirecting past RELAY_BACKLOG_MAX queued
  bytes and passes skbs to the socket's own receive queue instead (the TCP window closes);
  those bytes come out of recv() here and are written to the peer with ordinary back-pressure,
  after which the program redirects again (sockmap.c says why no byte overtakes another).
- Flow accounting: the program counts each way's redirected and passed bytes (relay_ways);
  the sweeper's tick turns their growth into the flow's up/down counts.
"""
from __future__ import annotations

import asyncio
import dataclasses
import errno
import fcntl
import logging
import os
import socket
import struct
import termios
from collections.abc import Callable
from pathlib import Path
from typing import cast

from dae_py.runtime.bpf.maps import BpfMap
from dae_py.runtime.net.poller import HUP_ERR, IN, OUT, poller_for
from dae_py.runtime.net.sockets import abort

from .flow import RelayConfig
from .pump import Count, IdleSweeper, PairRegistration

log = logging.getLogger(__name__)

SO_COOKIE = 57  # linux/socket.h
BPF_SK_SKB_STREAM_VERDICT = 5  # enum bpf_attach_type
TCPI_BYTES_ACKED = 120  # offset of tcpi_bytes_acked in struct tcp_info (linux/tcp.h)
TCP_INFO_LEN = 128
U64 = struct.Struct("=Q")
WAY = struct.Struct("=QQII")  # struct relay_way: redirected, passed, peer_base, based
READ_SIZE = 256 * 1024
DRAIN_POLL = (0.0005, 0.05)  # first and longest wait between checks of a draining way
OBJECT_NAME = "sockmap.o"
MODES = ("sockmap", "splice", "copy")  # global.relay_mode
# Without relay_mode: splice. Measured on 6.18 with nothing else running (bench/RESULTS.md,
# "Relay mode default"): a spliced flow costs less CPU per new connection (no map inserts,
# deletes and hand-over kick) and, on one bulk flow behind a slower peer, less of the relay's
# CPU per GiB than a sockmap flow, whose 4 MiB redirect bound trips and sends most bytes
# through user space by recv/send.
DEFAULT_MODE = "splice"
_warned: set[str] = set()


def with_mode(config: RelayConfig, mode: str, build_dir: str | os.PathLike[str] | None) -> RelayConfig:
    """`config` with global.relay_mode applied (sockmap, splice, copy): its splice and sockmap
    fields, and the sockmap object, the build's sockmap.o beside program.o."""
    if mode not in MODES:
        warn_once("mode", f"relay mode {mode!r} is not sockmap, splice or copy: {DEFAULT_MODE} is used")
        mode = DEFAULT_MODE
    path = os.path.join(build_dir, OBJECT_NAME) if build_dir is not None else None
    return dataclasses.replace(config, splice=mode != "copy", sockmap=mode == "sockmap", sockmap_object=path)


def cookie_of(sock: socket.socket) -> int:
    return int(U64.unpack(sock.getsockopt(socket.SOL_SOCKET, SO_COOKIE, 8))[0])


def written(sock: socket.socket) -> int:
    """Bytes written to the socket since it connected (acked, in flight or unsent): its
    write_seq less its initial sequence number."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, TCP_INFO_LEN)
    acked = U64.unpack_from(info, TCPI_BYTES_ACKED)[0]
    outq = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0\0\0\0"))[0]
    return int(acked + outq)


def warn_once(key: str, text: str) -> None:
    if key not in _warned:
        _warned.add(key)
        log.warning("%s", text)


class SockmapPump:
    """sockmap.o loaded and its verdict program attached to relay_socks (a BPF link: the
    attachment ends with the link fd). `open()` returns None, with one warning, when the kernel
    or the object refuses: the relay then splices."""

    def __init__(self, object_path: str) -> None:
        from dae_py.runtime.bpf import libbpf as lb
        from dae_py.runtime.bpf.bpfobject import BpfObject

        self.object_path = object_path
        self._obj = BpfObject(object_path)
        self._link = -1
        self.flows: set[SockmapFlow] = set()  # joined and not ended: report_all() reads them
        try:
            self._obj.load()
            self.socks = self._obj.map("relay_socks")
            self.ways = self._obj.map("relay_ways")
            self.consumed = self._obj.map("relay_consumed")
            self._link = lb.bpf_link_create(self._obj.program_fd("relay_verdict"), self.socks.fd,
                                            BPF_SK_SKB_STREAM_VERDICT)
        except BaseException:
            self._obj.close()
            raise

    @classmethod
    def open(cls, object_path: str | None) -> SockmapPump | None:
        from dae_py.runtime.bpf.errors import BpfError

        if not object_path or not Path(object_path).is_file():
            warn_once("missing", f"relay mode sockmap: no {OBJECT_NAME} ({object_path or 'none given'}); "
                                 "plain TCP flows are spliced instead")
            return None
        try:
            return cls(object_path)
        except (BpfError, OSError) as exc:
            warn_once("load", f"relay mode sockmap: {object_path} does not load ({exc}); "
                              "plain TCP flows are spliced instead")
            return None

    def close(self) -> None:
        if self._link >= 0:
            os.close(self._link)
            self._link = -1
        self._obj.close()

    def report_all(self) -> None:
        """Count every live flow's kernel-moved bytes now (the controller is about to list the
        connections, a worker to send its counters), not only at the sweeper's next tick. A
        flow that moved bytes is marked active, so the tick does not take it for idle."""
        for flow in list(self.flows):
            try:
                if flow.up.report() | flow.down.report():
                    flow._active = True
            except OSError:
                pass

    def entries(self) -> tuple[int, int, int]:
        """(sockets, ways, consumed entries) in the maps: all 0 once every flow ended."""
        return len(self.socks), len(self.ways), len(self.consumed)

    def way(self, ck: int) -> tuple[int, int]:
        """(redirected, passed) bytes of the way reading the socket with cookie `ck`."""
        raw = self.ways.lookup(U64.pack(ck))
        if raw is None:
            return 0, 0
        redirected, passed, _base, _based = WAY.unpack(raw)
        return redirected, passed


class _Way:
    """One direction: src's bytes out of dst. In the kernel while the program redirects; the
    passed bytes (back-pressure, or the peer not yet in the map) through here."""

    __slots__ = ("flow", "src", "dst", "src_fd", "dst_fd", "key", "count", "base", "counted",
                 "consumed", "published", "checked", "buf", "eof", "done", "reading", "writing", "wait")

    def __init__(self, flow: SockmapFlow, src: socket.socket, dst: socket.socket, count: Count) -> None:
        self.flow = flow
        self.src = src
        self.dst = dst
        self.src_fd = src.fileno()
        self.dst_fd = dst.fileno()
        self.key = U64.pack(cookie_of(src))
        self.count = count
        self.base = 0  # written(dst) at the hand-over
        self.counted = 0  # bytes reported through count()
        self.consumed = 0  # passed bytes written to dst
        self.published = 0  # what relay_consumed says (updated once src is read empty)
        self.checked = False  # dst's psock queue found empty since the program last could redirect
        self.buf = b""  # passed bytes read, not yet written
        self.eof = False  # src said EOF
        self.done = False  # EOF forwarded (or the flow ended)
        self.reading = True
        self.writing = False
        self.wait = 0.0  # the current drain poll interval (0: none pending)

    def moved(self) -> int:
        """Bytes of this way that reached dst: redirected by the kernel or written from here."""
        return self.flow.pump.way(U64.unpack(self.key)[0])[0] + self.consumed

    def report(self) -> bool:
        """Count what moved since the last report; whether anything did."""
        moved = self.moved()
        n = moved - self.counted
        if n > 0:
            self.counted = moved
            self.count(n)
            return True
        return False

    def drained(self) -> bool:
        """Every byte this way sent to dst has reached dst's write queue (none left in the
        psock queue, where a shutdown or a user-space write would overtake it)."""
        redirected, _passed = self.flow.pump.way(U64.unpack(self.key)[0])
        return written(self.dst) - self.base >= redirected + self.consumed

    def readable(self) -> None:
        """src has passed bytes (or its EOF): move them, then read on until src is empty, when
        relay_consumed tells the program it may redirect again."""
        while not self.buf and not self.eof and not self.done:
            try:
                data = self.src.recv(READ_SIZE)
            except (BlockingIOError, InterruptedError):
                self._caught_up()
                return
            if not data:
                self.eof = True
            else:
                self.buf = data
            if not self.advance():
                return

    def _caught_up(self) -> None:
        if self.published != self.consumed:
            self.flow.pump.consumed.update(self.key, U64.pack(self.consumed))
            self.published = self.consumed
            self.checked = False  # the program may redirect again: drain before the next write
        if not self.reading:
            self.reading = True
            self.flow.sync()

    def advance(self) -> bool:
        """Write the passed bytes, or forward the EOF, once the psock queue ahead of them is
        empty; True when the bytes are all written (read on)."""
        if self.done:
            return False
        if not self.checked:  # while passing (published < passed) nothing new is redirected
            if not self.drained():
                self._stop_reading()
                self._poll_later()
                return False
            self.checked = True
        self.wait = 0.0
        if self.buf:
            try:
                sent = self.dst.send(self.buf)
            except (BlockingIOError, InterruptedError):
                sent = 0
            self.buf = self.buf[sent:]
            self.consumed += sent
            if self.buf:
                self._stop_reading()
                if not self.writing:
                    self.writing = True
                    self.flow.sync()
                return False
            self.flow.active = True
            if self.writing:
                self.writing = False
                self.flow.sync()
            return True
        if self.eof:
            self.done = True
            self._stop_reading()
            self.flow.way_ended(self)
        return False

    def writable(self) -> None:
        if self.advance():
            self.readable()

    def _stop_reading(self) -> None:
        if self.reading:
            self.reading = False
            self.flow.sync()

    def _poll_later(self) -> None:
        if self.wait:
            return
        first, longest = DRAIN_POLL
        self.wait = first
        self.flow.loop.call_later(self.wait, self._poll)

    def _poll(self) -> None:
        if self.flow.on_end is None or self.done:
            return
        try:
            if self.drained():
                self.wait = 0.0
                self.checked = True
                self.writable()
                return
        except OSError as exc:
            self.flow.fail(exc)
            return
        self.wait = min(self.wait * 2, DRAIN_POLL[1])
        self.flow.loop.call_later(self.wait, self._poll)


class _Ended:
    """What an ended flow's ways point to: a late drain poll finds it ended and stops."""

    on_end = None


class SockmapFlow(PairRegistration):
    """A relayed TCP flow whose bytes the kernel moves; see the module docstring."""

    __slots__ = ("loop", "poller", "pump", "client", "upstream", "up", "down", "on_end", "sweeper", "tag",
                 "last", "_active", "joined")

    def __init__(self, loop: asyncio.AbstractEventLoop, pump: SockmapPump, client: socket.socket,
                 upstream: socket.socket, count_up: Count, count_down: Count,
                 on_end: Callable[[SockmapFlow, object], None], sweeper: IdleSweeper | None = None,
                 tag: object = None) -> None:
        self.loop = loop
        self.poller = poller_for(loop)
        self.pump = pump
        self.client = client
        self.upstream = upstream
        self.c_fd = client.fileno()
        self.u_fd = upstream.fileno()
        self.c_mask = self.u_mask = 0
        self.up = _Way(self, client, upstream, count_up)
        self.down = _Way(self, upstream, client, count_down)
        self.on_end: Callable[[SockmapFlow, object], None] | None = on_end
        self.sweeper = sweeper
        self.tag = tag
        self.last = 0.0
        self._active = False
        self.joined = False

    # --- the sweeper reads `active` once per tick: the moment to count kernel-moved bytes ---
    @property
    def active(self) -> bool:
        if self.on_end is None:
            return False
        try:
            moved = self.up.report() | self.down.report()
        except OSError:
            moved = False
        return self._active or moved

    @active.setter
    def active(self, value: bool) -> None:
        self._active = value

    def join(self) -> bool:
        """Hand both sockets to the kernel; False (nothing changed) when it refuses them (not
        ESTABLISHED any more, MPTCP, the map full): the caller splices instead."""
        pump = self.pump
        up, down = self.up, self.down
        added: list[tuple[BpfMap, bytes]] = []
        try:
            up.base = written(self.upstream)
            down.base = written(self.client)
            for way in (up, down):
                pump.ways.update(way.key, WAY.pack(0, 0, 0, 0))
                added.append((pump.ways, way.key))
                pump.consumed.update(way.key, U64.pack(0))
                added.append((pump.consumed, way.key))
            # each socket under its peer's cookie: an skb's own cookie finds where it goes
            pump.socks.update(down.key, U64.pack(self.c_fd))
            added.append((pump.socks, down.key))
            pump.socks.update(up.key, U64.pack(self.u_fd))
        except Exception as exc:  # noqa: BLE001 - BpfError or OSError: this flow is spliced
            for m, key in reversed(added):
                m.delete(key)
            log.debug("sockmap refused a flow, spliced instead: %s", exc)
            return False
        self.joined = True
        pump.flows.add(self)
        for sock in (self.client, self.upstream):  # bytes queued before the hand-over
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, 1)
        return True

    def start(self, upstream_armed: bool = False) -> None:
        if self.sweeper is not None:
            self.sweeper.add(self)
        try:
            self.poller.watch(self.c_fd, IN, self._on_client)
            self.c_mask = IN
            if upstream_armed:
                self.poller.set_handler(self.u_fd, self._on_upstream)
            else:
                self.poller.watch(self.u_fd, IN, self._on_upstream)
            self.u_mask = IN
        except OSError as exc:
            self.fail(exc)

    def _on_client(self, events: int) -> None:
        try:
            if events & (IN | HUP_ERR) and self.up.reading:
                self.up.readable()
            if events & (OUT | HUP_ERR) and self.down.writing:
                self.down.writable()
        except OSError as exc:
            self.fail(exc)

    def _on_upstream(self, events: int) -> None:
        try:
            if events & (IN | HUP_ERR) and self.down.reading:
                self.down.readable()
            if events & (OUT | HUP_ERR) and self.up.writing:
                self.up.writable()
        except OSError as exc:
            self.fail(exc)

    def way_ended(self, way: _Way) -> None:
        """`way`'s EOF reached the peer's write queue behind all its bytes: forward it."""
        other = self.down if way is self.up else self.up
        if other.done:
            self._end("closed")
            return
        try:
            way.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:
                self.fail(exc)
                return
        self.sync()

    def _end(self, outcome: object) -> None:
        on_end = self.on_end
        if on_end is None:
            return
        pump = self.pump
        for way in (self.up, self.down):
            try:
                way.report()
            except OSError:
                pass
        self.on_end = None
        pump.flows.discard(self)
        self.up.done = self.down.done = True
        self.poller.remove(self.c_fd)
        self.poller.remove(self.u_fd)
        if self.sweeper is not None:
            self.sweeper.discard(self)
        if isinstance(outcome, BaseException):
            abort(self.client)
            abort(self.upstream)
        else:
            self.client.close()  # the kernel drops a closed socket from relay_socks
            self.upstream.close()
        if self.joined:
            for way in (self.up, self.down):
                pump.ways.delete(way.key)
                pump.consumed.delete(way.key)
        on_end(self, outcome)
        # no flow <-> way cycle left behind: a late drain poll finds the stand-in ended
        self.up.flow = self.down.flow = cast(SockmapFlow, _ENDED)


_ENDED = _Ended()
