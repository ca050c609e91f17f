"""One epoll set per event loop for the relay's sockets, registered with the loop as one reader.

Why not `loop.add_reader` per socket: with uvloop every new registration creates a libuv poll
handle, and libuv checks the fd with an epoll_ctl ADD+DEL pair, sets O_NONBLOCK again with an
ioctl, and each start or stop of the handle is a further DEL (+ ADD): about eight syscalls for
one socket read once and closed. Here a socket costs one epoll_ctl ADD, one MOD per change of
interest and one DEL, and no per-fd Python handle objects while the flow idles.

Level-triggered, with two rules every user keeps: an fd whose owner wants no event is removed
(EPOLLHUP and EPOLLERR are reported even for an empty interest set) and an fd is removed before
it is closed. `watch()` and `remove()` tolerate a stale view (ENOENT, EEXIST) all the same.
"""
from __future__ import annotations

import asyncio
import errno
import logging
import select
import weakref
from collections.abc import Callable

IN = select.EPOLLIN
OUT = select.EPOLLOUT
ONESHOT = select.EPOLLONESHOT
HUP_ERR = select.EPOLLHUP | select.EPOLLERR
Handler = Callable[[int], None]

log = logging.getLogger(__name__)
_POLLERS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, FdPoller] = \
    weakref.WeakKeyDictionary()


class FdPoller:
    __slots__ = ("loop", "ep", "handlers", "_poll", "__weakref__")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.ep = select.epoll()
        self.handlers: dict[int, Handler] = {}  # fd -> handler(events), for fds in the set
        self._poll = self.ep.poll
        loop.add_reader(self.ep.fileno(), self._dispatch)

    def watch(self, fd: int, events: int, handler: Handler) -> None:
        """Add `fd` with `events` (or change its events and handler if it is in already)."""
        handlers = self.handlers
        try:
            if fd in handlers:
                try:
                    self.ep.modify(fd, events)
                except FileNotFoundError:  # closed and reused behind our back
                    self.ep.register(fd, events)
            else:
                try:
                    self.ep.register(fd, events)
                except FileExistsError:
                    self.ep.modify(fd, events)
        except BaseException:
            handlers.pop(fd, None)
            raise
        handlers[fd] = handler

    def modify(self, fd: int, events: int) -> None:
        self.ep.modify(fd, events)

    def set_handler(self, fd: int, handler: Handler) -> None:
        self.handlers[fd] = handler

    def remove(self, fd: int) -> None:
        if self.handlers.pop(fd, None) is not None:
            try:
                self.ep.unregister(fd)
            except OSError as exc:  # already closed (EBADF) or not in the set (ENOENT)
                if exc.errno not in (errno.EBADF, errno.ENOENT):
                    raise

    def _dispatch(self) -> None:
        handlers = self.handlers
        for fd, events in self._poll(0):
            handler = handlers.get(fd)
            if handler is None:
                continue
            try:
                handler(events)
            except Exception:  # one broken handler must not starve the others
                log.exception("fd %d: event handler failed", fd)

    def close(self) -> None:
        try:
            self.loop.remove_reader(self.ep.fileno())
        except (RuntimeError, ValueError, OSError):
            pass
        self.ep.close()
        self.handlers.clear()


def poller_for(loop: asyncio.AbstractEventLoop) -> FdPoller:
    poller = _POLLERS.get(loop)
    if poller is None:
        poller = _POLLERS[loop] = FdPoller(loop)
    return poller


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _expire(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


async def connected(loop: asyncio.AbstractEventLoop, fd: int, deadline: float) -> None:
    """Wait for a non-blocking connect() on `fd` to finish (writable); TimeoutError at
    `deadline` (loop time). The fd stays in the set, disarmed (EPOLLONESHOT), so the read
    that follows re-arms it with one MOD; whoever closes it calls `remove()` first."""
    poller = poller_for(loop)
    fut = loop.create_future()
    poller.watch(fd, OUT | ONESHOT, lambda _events: _wake(fut))
    timer = loop.call_at(deadline, _expire, fut)
    try:
        await fut
    except BaseException:
        poller.remove(fd)
        raise
    finally:
        timer.cancel()
