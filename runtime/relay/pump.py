"""Moving bytes between two streams: splice(2) through a pipe when both ends are plain TCP,
a user-space copy otherwise; half-close forwarded, idle flows ended."""
from __future__ import annotations

import asyncio
import fcntl
import os
from typing import Callable

from runtime.outbound.sockets import wait_readable, wait_writable
from runtime.outbound.stream import RECV_SIZE, Stream

F_SETPIPE_SZ = 1031
HAVE_SPLICE = hasattr(os, "splice")
Count = Callable[[int], None]


async def splice_one_way(src_fd: int, dst_fd: int, count: Count, pipe_size: int) -> None:
    """src socket -> pipe -> dst socket in the kernel until src's EOF."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        try:
            fcntl.fcntl(write_end, F_SETPIPE_SZ, pipe_size)
        except OSError:  # above /proc/sys/fs/pipe-max-size: keep the default
            pass
        chunk = fcntl.fcntl(write_end, 1032)  # F_GETPIPE_SZ
        flags = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK
        splice = os.splice
        while True:
            try:
                n = splice(src_fd, write_end, chunk, flags=flags)
            except (BlockingIOError, InterruptedError):
                await wait_readable(src_fd)
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
    """Cancels `tasks` once nothing moved for `timeout` seconds (one timer, re-armed lazily)."""

    def __init__(self, timeout: float, tasks: list[asyncio.Task[None]]) -> None:
        self.loop = asyncio.get_running_loop()
        self.timeout = timeout
        self.tasks = tasks
        self.last = self.loop.time()
        self.expired = False
        self._handle = self.loop.call_later(timeout, self._check)

    def touch(self) -> None:
        self.last = self.loop.time()

    def _check(self) -> None:
        idle = self.loop.time() - self.last
        if idle >= self.timeout:
            self.expired = True
            for task in self.tasks:
                task.cancel()
        else:
            self._handle = self.loop.call_later(self.timeout - idle, self._check)

    def cancel(self) -> None:
        self._handle.cancel()


async def relay(client: Stream, upstream: Stream, *, use_splice: bool, idle_timeout: float,
                count_up: Count, count_down: Count, pipe_size: int = 1 << 20) -> str:
    """Both directions until both reach EOF (each EOF becomes a shutdown(SHUT_WR) on the other
    side), an error (both sides aborted) or the idle timeout. Returns how the flow ended."""
    spliced = (use_splice and HAVE_SPLICE and client.splice_fd() is not None
               and upstream.splice_fd() is not None)
    tasks: list[asyncio.Task[None]] = []
    watch = IdleWatch(idle_timeout, tasks)

    def counting(count: Count) -> Count:
        def counted(n: int) -> None:
            watch.touch()
            count(n)
        return counted

    async def one_way(src: Stream, dst: Stream, count: Count) -> None:
        pending = src.take_pending()
        if pending:
            await dst.sendall(pending)
            count(len(pending))
        if spliced:
            await splice_one_way(src.splice_fd(), dst.splice_fd(), count,  # type: ignore[arg-type]
                                 pipe_size)
        else:
            await copy_one_way(src, dst, count)
        dst.shutdown_write()

    loop = asyncio.get_running_loop()
    tasks.append(loop.create_task(one_way(client, upstream, counting(count_up))))
    tasks.append(loop.create_task(one_way(upstream, client, counting(count_down))))
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
