"""Moving bytes between two streams: splice(2) through a pipe when both ends are plain TCP,
a user-space copy otherwise; half-close forwarded, idle flows ended.

Per-flow cost matters (many idle flows, many short ones): the first chunk of each direction is
copied through user space and a splice pipe (RelayConfig.pipe_size, 64 KiB by default) is only
created when more data follows, and closed as soon as that direction ends; a socket stays
registered for reading across waits (one epoll_ctl per direction, not two per wait)."""
from __future__ import annotations

import asyncio
import fcntl
import os
import socket
from collections.abc import Callable
from typing import Any, Protocol

from dae_py.runtime.net.poller import HUP_ERR, IN, OUT, poller_for
from dae_py.runtime.net.sockets import abort
from dae_py.runtime.net.stream import RECV_SIZE, Stream

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
HAVE_SPLICE = hasattr(os, "splice")
DEFAULT_PIPE_SIZE = 64 * 1024
SPLICE_BURST = 8  # splices per wake-up at most, while the socket keeps filling the pipe
FIRST_READ = 64 * 1024  # the first chunk of a direction, read into user space (no pipe yet)
SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if HAVE_SPLICE else 0
Count = Callable[[int], None]


def _open_pipe(pipe_size: int) -> tuple[int, int, int]:
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        if pipe_size != 65536:  # the kernel's default already
            try:
                fcntl.fcntl(write_end, F_SETPIPE_SZ, pipe_size)
            except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
                pass
            chunk = fcntl.fcntl(write_end, F_GETPIPE_SZ)
        else:
            chunk = pipe_size
    except BaseException:
        os.close(read_end)
        os.close(write_end)
        raise
    return read_end, write_end, chunk


async def copy_one_way(src: Stream, dst: Stream, count: Count) -> None:
    while True:
        data = await src.recv(RECV_SIZE)
        if not data:
            return
        await dst.sendall(data)
        count(len(data))


class IdleWatch:
    """Calls `on_expire` once nothing moved for `timeout` seconds (one timer, re-armed lazily)."""

    __slots__ = ("loop", "timeout", "on_expire", "last", "expired", "_handle")

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float,
                 on_expire: Callable[[], None]) -> None:
        self.loop = loop
        self.timeout = timeout
        self.on_expire = on_expire
        self.last = loop.time()
        self.expired = False
        self._handle = loop.call_later(timeout, self._check)

    def touch(self) -> None:
        self.last = self.loop.time()

    def _check(self) -> None:
        idle = self.loop.time() - self.last
        if idle >= self.timeout:
            self.expired = True
            self.on_expire()
        else:
            self._handle = self.loop.call_later(self.timeout - idle, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


class _Way:
    """One direction of a spliced flow, driven by its flow's fd events (no task, no coroutine):
    small reads through user space, a splice pipe once a read fills FIRST_READ bytes."""

    __slots__ = ("flow", "dst_sock", "src_fd", "dst_fd", "count", "read_end", "write_end",
                 "chunk", "left", "buf", "pending", "reading", "writing", "done")

    def __init__(self, flow: SplicedFlow, src_fd: int, dst_sock: socket.socket,
                 count: Count, dst_fd: int) -> None:
        self.flow = flow
        self.dst_sock = dst_sock
        self.src_fd = src_fd
        self.dst_fd = dst_fd  # the flow's own int (a fileno() call makes a new one per call)
        self.count = count
        self.read_end = self.write_end = -1
        self.chunk = 0
        self.left = 0  # bytes in the pipe not yet written to dst
        self.buf = b""  # user-space bytes not yet written to dst
        self.pending = 0  # bytes read, counted once all are written
        self.reading = True  # what the flow registers at start
        self.writing = self.done = False

    def _want_read(self) -> None:
        if self.writing or not self.reading:
            self.writing = False
            self.reading = True
            self.flow.sync()

    def _want_write(self) -> None:
        if self.reading or not self.writing:
            self.reading = False
            self.writing = True
            self.flow.sync()

    def _readable(self) -> None:
        try:
            if self.read_end < 0:  # small reads through user space; a pipe once one fills
                try:
                    data = os.read(self.src_fd, FIRST_READ)
                except (BlockingIOError, InterruptedError):
                    return
                if not data:
                    self._eof()
                    return
                if len(data) == FIRST_READ:  # bulk: from now on the kernel moves it
                    self.read_end, self.write_end, self.chunk = _open_pipe(self.flow.pipe_size)
                self.buf = data
                self.pending = len(data)
                self._flush_buf()
                return
            # Bulk: keep moving while each splice fills the pipe and the other side takes it
            # all, up to SPLICE_BURST chunks per wake-up (one event-loop round per 64 KiB
            # would cost more CPU than the copies it saves), then yield to other flows.
            for _ in range(SPLICE_BURST):
                try:
                    n = os.splice(self.src_fd, self.write_end, self.chunk, flags=SPLICE_FLAGS)
                except (BlockingIOError, InterruptedError):
                    return
                if n == 0:
                    self._eof()
                    return
                self.left = self.pending = n
                if not self._flush_pipe() or n < self.chunk:
                    return
        except Exception as exc:  # noqa: BLE001 - ends this flow, not the loop
            self.flow.fail(exc)

    def _writable(self) -> None:
        try:
            if self.buf:
                self._flush_buf()
            else:
                self._flush_pipe()
        except Exception as exc:  # noqa: BLE001 - ends this flow, not the loop
            self.flow.fail(exc)

    def _flush_buf(self) -> None:
        while self.buf:
            try:
                sent = os.write(self.dst_fd, self.buf)
            except (BlockingIOError, InterruptedError):
                self._want_write()
                return
            self.buf = self.buf[sent:]
        self._moved()

    def _flush_pipe(self) -> bool:
        """Write the pipe's bytes to dst; False when dst is full (the way waits for it)."""
        while self.left:
            try:
                self.left -= os.splice(self.read_end, self.dst_fd, self.left, flags=SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                self._want_write()
                return False
        self._moved()
        return True

    def _moved(self) -> None:
        n, self.pending = self.pending, 0
        self.flow.active = True
        self.count(n)
        if not self.done:
            self._want_read()

    def _eof(self) -> None:
        self.stop()
        flow = self.flow
        if flow.alive > 1:  # the other way goes on: forward the half-close
            try:
                self.dst_sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            flow.alive -= 1
            flow.sync()
        else:  # both ends said EOF: closing sends the last FIN, no shutdown(2) needed
            flow.alive = 0
            flow._end("closed")

    def stop(self) -> None:
        """No more events for this way (the flow syncs or removes the registrations)."""
        if self.done:
            return
        self.done = True
        self.reading = self.writing = False
        if self.read_end >= 0:
            os.close(self.read_end)
            os.close(self.write_end)
            self.read_end = self.write_end = -1
        self.buf = b""


class PairRegistration:
    """The poller registrations of a relayed pair (client and upstream fd), kept in line with
    what its two ways want; shared by SplicedFlow and the sockmap relay's SockmapFlow."""

    __slots__ = ("c_fd", "u_fd", "c_mask", "u_mask")
    c_fd: int
    u_fd: int
    c_mask: int
    u_mask: int
    poller: Any
    up: Any
    down: Any
    on_end: Any

    def _on_client(self, events: int) -> None:
        raise NotImplementedError

    def _on_upstream(self, events: int) -> None:
        raise NotImplementedError

    def _end(self, outcome: object) -> None:
        """Stop the pair once (later calls do nothing) and report `outcome` to its owner."""
        raise NotImplementedError

    def fail(self, exc: BaseException) -> None:
        self._end(exc)

    def expire(self) -> None:
        """The idle sweeper's verdict."""
        self._end("idle")

    def close(self) -> None:
        """End it from outside (the relay closing, a cancelled `relay()`): both sides closed."""
        self._end("closed by the relay")

    def sync(self) -> None:
        """Bring the registrations in line with what the ways want (no syscall if unchanged)."""
        if self.on_end is None:
            return
        up, down = self.up, self.down
        c = (IN if up.reading else 0) | (OUT if down.writing else 0)
        u = (IN if down.reading else 0) | (OUT if up.writing else 0)
        try:
            if c != self.c_mask:
                self._apply(self.c_fd, self.c_mask, c, self._on_client)
                self.c_mask = c
            if u != self.u_mask:
                self._apply(self.u_fd, self.u_mask, u, self._on_upstream)
                self.u_mask = u
        except OSError as exc:
            self.fail(exc)

    def _apply(self, fd: int, old: int, new: int, handler: Callable[[int], None]) -> None:
        if not new:  # nothing wanted: out of the set (HUP/ERR would be reported regardless)
            self.poller.remove(fd)
        elif old:
            self.poller.modify(fd, new)
        else:
            self.poller.watch(fd, new, handler)



class SplicedFlow(PairRegistration):
    """A relayed TCP flow once both sockets are connected: two `_Way`s driven by the loop's
    `FdPoller` (one epoll registration per socket), no task, no coroutine, no timer of its own
    (an `IdleSweeper` ends it when idle). Owns both sockets: `on_end(flow, outcome)` runs once,
    after both are closed; outcome is "closed" (both EOFs), "idle", another string (closed from
    outside) or the exception that broke the flow (both sides were then reset)."""

    __slots__ = ("loop", "poller", "pipe_size", "client", "upstream", "up", "down", "alive", "active", "last",
                 "on_end", "sweeper", "tag")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket,
                 upstream: socket.socket, count_up: Count, count_down: Count,
                 on_end: Callable[[SplicedFlow, object], None], pipe_size: int = DEFAULT_PIPE_SIZE,
                 sweeper: IdleSweeper | None = None, tag: object = None) -> None:
        self.loop = loop
        self.poller = poller_for(loop)
        self.pipe_size = pipe_size
        self.client = client
        self.upstream = upstream
        self.c_fd = client.fileno()
        self.u_fd = upstream.fileno()
        self.c_mask = self.u_mask = 0  # registered interest (0: not in the poller's set)
        self.up = _Way(self, self.c_fd, upstream, count_up, self.u_fd)
        self.down = _Way(self, self.u_fd, client, count_down, self.c_fd)
        self.alive = 2
        self.active = False
        self.on_end: Callable[[SplicedFlow, object], None] | None = on_end
        self.sweeper = sweeper
        self.tag = tag  # the caller's, e.g. its counters and a description for its log
        self.last = 0.0

    def start(self, upstream_armed: bool = False) -> None:
        """Register both sockets for reading. `upstream_armed`: the upstream is in the poller's
        set with EPOLLIN already (handed over by its SocketStream): only its handler changes."""
        if self.sweeper is not None:
            self.sweeper.add(self)
        poller = self.poller
        try:
            poller.watch(self.c_fd, IN, self._on_client)
            self.c_mask = IN
            if upstream_armed:
                poller.set_handler(self.u_fd, self._on_upstream)
            else:
                poller.watch(self.u_fd, IN, self._on_upstream)
            self.u_mask = IN
        except OSError as exc:
            self.fail(exc)

    def _on_client(self, events: int) -> None:
        up, down = self.up, self.down
        if events & (IN | HUP_ERR) and up.reading:
            up._readable()
        if events & (OUT | HUP_ERR) and down.writing:  # False once the flow ended
            down._writable()

    def _on_upstream(self, events: int) -> None:
        up, down = self.up, self.down
        if events & (IN | HUP_ERR) and down.reading:
            down._readable()
        if events & (OUT | HUP_ERR) and up.writing:
            up._writable()

    def _end(self, outcome: object) -> None:
        on_end = self.on_end
        if on_end is None:  # ended already
            return
        self.on_end = None
        self.up.stop()
        self.down.stop()
        poller = self.poller
        poller.remove(self.c_fd)
        poller.remove(self.u_fd)
        self.c_mask = self.u_mask = 0
        if self.sweeper is not None:
            self.sweeper.discard(self)
        if isinstance(outcome, BaseException):
            abort(self.client)
            abort(self.upstream)
        else:
            self.client.close()
            self.upstream.close()
        on_end(self, outcome)
        # no flow <-> way cycle left behind: freed by reference counting, not by the cyclic GC
        self.up.flow = self.down.flow = _ENDED  # stands in: late calls do nothing


class _Ended:
    """What an ended flow's ways point to: late calls (none are expected) do nothing."""

    alive = 0
    active = False
    pipe_size = DEFAULT_PIPE_SIZE

    def sync(self) -> None:
        pass

    def fail(self, exc: BaseException) -> None:
        pass

    def _end(self, outcome: object) -> None:
        pass


_ENDED = _Ended()


class Sweepable(Protocol):
    """What an IdleSweeper needs of a flow (SplicedFlow, sockmap.SockmapFlow)."""

    active: bool
    last: float
    client: socket.socket
    upstream: socket.socket

    def expire(self) -> None: ...

    def close(self) -> None: ...


class IdleSweeper:
    """Ends flows that moved nothing for `timeout` seconds with one timer for all of them.

    A flow only sets `active` when it moves bytes; every `tick` the sweeper turns that into a
    time stamp (the tick's) and ends the flows whose stamp is `timeout` old. A flow is ended
    after between `timeout` and `timeout + tick` seconds of idleness, never earlier."""

    def __init__(self, loop: asyncio.AbstractEventLoop, timeout: float,
                 tick: float | None = None) -> None:
        self.loop = loop
        self.timeout = timeout
        self.tick = tick if tick is not None else min(max(timeout / 16, 0.005), 5.0)
        self.flows: set[Sweepable] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, flow: Sweepable) -> None:
        flow.last = self.loop.time()
        self.flows.add(flow)
        if self._handle is None:
            self._handle = self.loop.call_later(self.tick, self._sweep)

    def discard(self, flow: Sweepable) -> None:
        self.flows.discard(flow)

    def _sweep(self) -> None:
        now = self.loop.time()
        deadline = now - self.timeout
        expired = []
        for flow in self.flows:
            if flow.active:
                flow.active = False
                flow.last = now
            elif flow.last <= deadline:
                expired.append(flow)
        for flow in expired:
            flow.expire()
        self._handle = self.loop.call_later(self.tick, self._sweep) if self.flows else None

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for flow in list(self.flows):
            flow.close()


async def relay(client: Stream, upstream: Stream, *, idle_timeout: float, count_up: Count,
                count_down: Count) -> str:
    """Both directions through user space until both reach EOF (each EOF becomes a
    shutdown(SHUT_WR) on the other side), an error (both sides aborted) or the idle timeout.
    Returns how the flow ended. For the flows a SplicedFlow cannot take: a layered upstream
    (TLS, an AEAD stream) or splice turned off."""
    loop = asyncio.get_running_loop()
    pending_up = client.take_pending()
    pending_down = upstream.take_pending()
    tasks: list[asyncio.Task[None]] = []

    def cancel_all() -> None:
        for task in tasks:
            task.cancel()

    watch = IdleWatch(loop, idle_timeout, cancel_all)

    def counting(count: Count) -> Count:
        def counted(n: int) -> None:
            watch.touch()
            count(n)
        return counted

    async def one_way(src: Stream, dst: Stream, pending: bytes, count: Count) -> None:
        if pending:
            await dst.sendall(pending)
            count(len(pending))
        await copy_one_way(src, dst, count)
        dst.shutdown_write()

    tasks.append(loop.create_task(one_way(client, upstream, pending_up, counting(count_up))))
    tasks.append(loop.create_task(one_way(upstream, client, pending_down, counting(count_down))))
    outcome = "closed"
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        failed = [t for t in done if not t.cancelled() and t.exception() is not None]
        if watch.expired:
            outcome = f"idle for {idle_timeout:g}s"
        elif failed:
            exc = failed[0].exception()
            outcome = f"error: {exc}"
            for task in tasks:
                task.cancel()
            client.abort()
            upstream.abort()
    finally:
        watch.cancel()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        client.close()
        upstream.close()
    return outcome + " (copy)"
