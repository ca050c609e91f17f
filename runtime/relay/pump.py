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
from typing import Callable

from runtime.outbound.sockets import abort, wait_writable
from runtime.outbound.stream import RECV_SIZE, Stream

F_SETPIPE_SZ = 1031
F_GETPIPE_SZ = 1032
HAVE_SPLICE = hasattr(os, "splice")
DEFAULT_PIPE_SIZE = 64 * 1024
FIRST_READ = 64 * 1024  # the first chunk of a direction, read into user space (no pipe yet)
SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if HAVE_SPLICE else 0
Count = Callable[[int], None]


class Reader:
    """Waits for an fd to become readable with the fd registered once, not per wait.

    The registration stays while the owner keeps reading; if readiness is reported while
    nobody waits (the owner blocked elsewhere, e.g. writing), it is dropped so a level-triggered
    loop does not spin, and re-added by the next wait."""

    __slots__ = ("loop", "fd", "waiter", "armed")

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop = loop
        self.fd = fd
        self.waiter: asyncio.Future[None] | None = None
        self.armed = False

    def _ready(self) -> None:
        waiter = self.waiter
        if waiter is None:
            self.loop.remove_reader(self.fd)
            self.armed = False
        else:
            self.waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def wait(self) -> None:
        if not self.armed:
            self.loop.add_reader(self.fd, self._ready)
            self.armed = True
        self.waiter = waiter = self.loop.create_future()
        try:
            await waiter
        finally:
            self.waiter = None

    def close(self) -> None:
        if self.armed:
            self.armed = False
            self.loop.remove_reader(self.fd)


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


async def splice_one_way(src: Stream, dst: Stream, count: Count,
                         pipe_size: int = DEFAULT_PIPE_SIZE) -> None:
    """src socket -> dst socket until src's EOF: the first chunk through user space, the rest
    src -> pipe -> dst in the kernel (the pipe created then, closed on return)."""
    src_fd: int = src.splice_fd()  # type: ignore[assignment]
    dst_fd: int = dst.splice_fd()  # type: ignore[assignment]
    loop = asyncio.get_running_loop()
    reader = Reader(loop, src_fd)
    read_end = write_end = -1
    try:
        while True:  # first chunk: plain read, no pipe
            try:
                data = os.read(src_fd, FIRST_READ)
            except (BlockingIOError, InterruptedError):
                await reader.wait()
                continue
            break
        if not data:
            return
        await dst.sendall(data)
        count(len(data))
        del data
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        splice = os.splice
        chunk = 0
        while True:
            if read_end < 0:
                await reader.wait()  # the pipe only once more data (or EOF) is there
                read_end, write_end, chunk = _open_pipe(pipe_size)
            try:
                n = splice(src_fd, write_end, chunk, flags=flags)
            except (BlockingIOError, InterruptedError):
                await reader.wait()
                continue
            if n == 0:
                return
            left = n
            while left:
                try:
                    left -= splice(read_end, dst_fd, left, flags=flags)
                except (BlockingIOError, InterruptedError):
                    await wait_writable(dst_fd)
            count(n)
    finally:
        reader.close()
        if read_end >= 0:
            os.close(read_end)
            os.close(write_end)


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
    """One direction of a spliced flow, driven by fd callbacks (no task, no coroutine): small
    reads through user space, a splice pipe once a read fills FIRST_READ bytes."""

    __slots__ = ("flow", "dst_sock", "src_fd", "dst_fd", "count", "read_end", "write_end",
                 "chunk", "left", "buf", "pending", "reading", "writing", "done")

    def __init__(self, flow: SplicedFlow, src_fd: int, dst_sock: socket.socket,
                 count: Count) -> None:
        self.flow = flow
        self.dst_sock = dst_sock
        self.src_fd = src_fd
        self.dst_fd = dst_sock.fileno()
        self.count = count
        self.read_end = self.write_end = -1
        self.chunk = 0
        self.left = 0  # bytes in the pipe not yet written to dst
        self.buf = b""  # user-space bytes not yet written to dst
        self.pending = 0  # bytes read, counted once all are written
        self.reading = self.writing = self.done = False

    def _want_read(self) -> None:
        if self.writing:
            self.flow.loop.remove_writer(self.dst_fd)
            self.writing = False
        if not self.reading:
            self.flow.loop.add_reader(self.src_fd, self._readable)
            self.reading = True

    def _want_write(self) -> None:
        if self.reading:
            self.flow.loop.remove_reader(self.src_fd)
            self.reading = False
        if not self.writing:
            self.flow.loop.add_writer(self.dst_fd, self._writable)
            self.writing = True

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
            try:
                n = os.splice(self.src_fd, self.write_end, self.chunk, flags=SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                return
            if n == 0:
                self._eof()
                return
            self.left = self.pending = n
            self._flush_pipe()
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

    def _flush_pipe(self) -> None:
        while self.left:
            try:
                self.left -= os.splice(self.read_end, self.dst_fd, self.left, flags=SPLICE_FLAGS)
            except (BlockingIOError, InterruptedError):
                self._want_write()
                return
        self._moved()

    def _moved(self) -> None:
        n, self.pending = self.pending, 0
        self.flow.active = True
        self.count(n)
        if not self.done:
            self._want_read()

    def _eof(self) -> None:
        self.stop()
        try:
            self.dst_sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass
        self.flow.way_done()

    def stop(self) -> None:
        if self.done:
            return
        self.done = True
        loop = self.flow.loop
        if self.reading:
            self.reading = False
            loop.remove_reader(self.src_fd)
        if self.writing:
            self.writing = False
            loop.remove_writer(self.dst_fd)
        if self.read_end >= 0:
            os.close(self.read_end)
            os.close(self.write_end)
            self.read_end = self.write_end = -1
        self.buf = b""


class SplicedFlow:
    """A relayed TCP flow once both sockets are connected: two `_Way`s driven by fd callbacks,
    no task, no coroutine, no timer of its own (an `IdleSweeper` ends it when idle). Owns both
    sockets: `on_end(flow, outcome)` runs once, after both are closed; outcome is "closed"
    (both EOFs), "idle" or the exception that broke the flow."""

    __slots__ = ("loop", "pipe_size", "client", "upstream", "up", "down", "alive", "active",
                 "last", "on_end", "sweeper", "tag")

    def __init__(self, loop: asyncio.AbstractEventLoop, client: socket.socket,
                 upstream: socket.socket, count_up: Count, count_down: Count,
                 on_end: Callable[[SplicedFlow, object], None], pipe_size: int = DEFAULT_PIPE_SIZE,
                 sweeper: IdleSweeper | None = None, tag: object = None) -> None:
        self.loop = loop
        self.pipe_size = pipe_size
        self.client = client
        self.upstream = upstream
        self.up = _Way(self, client.fileno(), upstream, count_up)
        self.down = _Way(self, upstream.fileno(), client, count_down)
        self.alive = 2
        self.active = False
        self.on_end = on_end
        self.sweeper = sweeper
        self.tag = tag  # the caller's, e.g. a description for its log
        self.last = 0.0

    def start(self) -> None:
        """Register both readers (replacing any registration the caller handed over: the
        reader of an fd is replaced in place, no epoll_ctl)."""
        if self.sweeper is not None:
            self.sweeper.add(self)
        self.up._want_read()
        self.down._want_read()

    def way_done(self) -> None:
        self.alive -= 1
        if self.alive <= 0:
            self._end("closed")

    def fail(self, exc: BaseException) -> None:
        self._end(exc)

    def expire(self) -> None:
        self._end("idle")

    def close(self) -> None:
        """End it from outside (the relay closing, a cancelled `relay()`): both sides closed."""
        self._end("closed by the relay")

    def _end(self, outcome: object) -> None:
        on_end = self.on_end
        if on_end is None:  # ended already
            return
        self.on_end = None
        self.up.stop()
        self.down.stop()
        if self.sweeper is not None:
            self.sweeper.discard(self)
        if isinstance(outcome, BaseException):
            abort(self.client)
            abort(self.upstream)
        else:
            self.client.close()
            self.upstream.close()
        on_end(self, outcome)


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
        self.flows: set[SplicedFlow] = set()
        self._handle: asyncio.TimerHandle | None = None

    def add(self, flow: SplicedFlow) -> None:
        flow.last = self.loop.time()
        self.flows.add(flow)
        if self._handle is None:
            self._handle = self.loop.call_later(self.tick, self._sweep)

    def discard(self, flow: SplicedFlow) -> None:
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


def _hand_over(stream: Stream) -> None:
    hand_over = getattr(stream, "hand_over_reader", None)
    if hand_over is not None:
        hand_over()


async def _relay_spliced(loop: asyncio.AbstractEventLoop, client: Stream, upstream: Stream,
                         idle_timeout: float, count_up: Count, count_down: Count,
                         pipe_size: int) -> str:
    """`relay()` of a spliced flow: a SplicedFlow with its own sweeper, awaited."""
    done: asyncio.Future[object] = loop.create_future()

    def ended(_flow: SplicedFlow, outcome: object) -> None:
        if not done.done():
            done.set_result(outcome)

    for stream in (client, upstream):  # the flow registers its own readers just below
        _hand_over(stream)
    sweeper = IdleSweeper(loop, idle_timeout)
    flow = SplicedFlow(loop, client.sock, upstream.sock, count_up, count_down,  # type: ignore[attr-defined]
                       ended, pipe_size, sweeper)
    try:
        flow.start()
        outcome = await done
    finally:
        flow.close()  # no-op once ended
        sweeper.close()
        client.close()
        upstream.close()
    if isinstance(outcome, BaseException):
        return f"error: {outcome} (splice)"
    if outcome == "idle":
        return f"idle for {idle_timeout:g}s (splice)"
    return "closed (splice)"


async def relay(client: Stream, upstream: Stream, *, use_splice: bool, idle_timeout: float,
                count_up: Count, count_down: Count, pipe_size: int = DEFAULT_PIPE_SIZE) -> str:
    """Both directions until both reach EOF (each EOF becomes a shutdown(SHUT_WR) on the other
    side), an error (both sides aborted) or the idle timeout. Returns how the flow ended."""
    spliced = (use_splice and HAVE_SPLICE and client.splice_fd() is not None
               and upstream.splice_fd() is not None)
    loop = asyncio.get_running_loop()
    pending_up = client.take_pending()
    pending_down = upstream.take_pending()
    if spliced and not pending_up and not pending_down:
        return await _relay_spliced(loop, client, upstream, idle_timeout, count_up, count_down,
                                    pipe_size)
    if spliced:  # splice_one_way registers the fds itself from now on
        for stream in (client, upstream):
            release = getattr(stream, "release_reader", None)
            if release is not None:
                release()
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
        if spliced:
            await splice_one_way(src, dst, count, pipe_size)
        else:
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
    return outcome + (" (splice)" if spliced else " (copy)")
