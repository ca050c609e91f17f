"""Byte streams over non-blocking sockets: plain TCP (splice-able) and TLS (ssl.SSLObject).

Handshakes read through `read_exact` / `read_until`; bytes read past a handshake are pushed back
with `unread` and come out first, so nothing the peer sent early is lost.
"""
from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Awaitable
from typing import Any, Protocol, TypeVar, cast

from .errors import ProxyProtocolError
from .poller import IN, FdPoller, poller_for
from .sockets import abort, wait_writable

RECV_SIZE = 256 * 1024
# What a stream sends: AEAD framings seal in place into bytearrays (no copy into bytes).
Buffer = bytes | bytearray | memoryview
T = TypeVar("T")


class Stream(Protocol):
    async def recv(self, n: int = RECV_SIZE) -> bytes: ...

    async def sendall(self, data: Buffer) -> None: ...

    def unread(self, data: bytes) -> None: ...

    def take_pending(self) -> bytes: ...

    def shutdown_write(self) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...

    def splice_fd(self) -> int | None:
        """The socket's fd when bytes on it are plain (so splice(2) may move them), else None."""


def handed_on(data: bytes | bytearray) -> bytes:
    """A layered stream's decoded bytes returned from `recv` as they are: the AEAD framings
    decrypt in place into a fresh bytearray per read (a copy into bytes would cost as much as
    the decryption saved). Readers of `recv` only read what they get (len, slices, `+`, send,
    decode), which a bytearray does as bytes do, and the stream never writes to it again."""
    return cast(bytes, data)


class PendingBytes:
    """`unread`/`take_pending` over `_pending`: bytes a handshake read too far come out first."""

    __slots__ = ("_pending",)
    _pending: bytes

    def unread(self, data: bytes) -> None:
        self._pending = data + self._pending

    def take_pending(self) -> bytes:
        data, self._pending = self._pending, b""
        return data


class SocketStream(PendingBytes):
    """A connected non-blocking TCP socket.

    Reads wait through the loop's FdPoller with the fd registered once and kept registered
    across reads; a readiness report nobody waits for drops the registration (level-triggered:
    it would spin). `hand_over_reader()` gives the registration to a new owner (the relay's
    SplicedFlow); `release_reader()` drops it."""

    __slots__ = ("sock", "_fd", "_loop", "_poller", "_waiter", "_armed", "_in_set")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop | None = None,
                 in_poller: bool = False) -> None:
        if sock.gettimeout() != 0.0:  # one ioctl per socket, not one per wrapper
            sock.setblocking(False)
        self.sock = sock
        self._fd = sock.fileno()
        self._pending = b""
        self._loop = loop
        self._poller: FdPoller | None = poller_for(loop) if in_poller and loop is not None else None
        self._waiter: asyncio.Future[None] | None = None
        self._armed = False  # registered for EPOLLIN
        self._in_set = self._poller is not None  # in the poller's set (maybe disarmed)

    def _ready(self, _events: int) -> None:
        waiter = self._waiter
        if waiter is None:
            self.release_reader()
        else:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_readable(self) -> None:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        if not self._armed:
            poller = self._poller
            if poller is None:
                poller = self._poller = poller_for(loop)
            poller.watch(self._fd, IN, self._ready)
            self._armed = self._in_set = True
        self._waiter = waiter = loop.create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def hand_over_reader(self) -> bool:
        """Forget the registration without removing it: the caller takes the fd over in the
        same poller (`FdPoller.set_handler`, no syscall) if this returns True (armed for
        reading), else registers it itself (the fd may still be in the set, disarmed: `watch`
        turns that into one MOD)."""
        armed = self._armed
        self._armed = self._in_set = False
        return armed

    def adopt_reader(self) -> None:
        """The fd is in this loop's poller already, armed for reading (a warm pool's connection,
        handed over with `hand_over_reader`): take the registration over, no syscall."""
        loop = self._loop
        assert loop is not None, "adopt_reader needs the stream's loop"
        poller = self._poller = self._poller or poller_for(loop)
        poller.set_handler(self._fd, self._ready)
        self._armed = self._in_set = True

    def release_reader(self) -> None:
        if self._in_set:
            self._armed = self._in_set = False
            try:
                self._poller.remove(self._fd)  # type: ignore[union-attr]  # _in_set: it has one
            except (ValueError, OSError):  # poller closed, fd gone
                pass

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        while True:
            try:
                return self.sock.recv(n)
            except (BlockingIOError, InterruptedError):
                await self._wait_readable()

    async def sendall(self, data: Buffer) -> None:
        try:  # the usual case: all of it at once, no memoryview
            sent = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            sent = 0
        if sent == len(data):
            return
        view = memoryview(data)[sent:]
        while view:
            try:
                sent = self.sock.send(view)
            except (BlockingIOError, InterruptedError):
                await wait_writable(self._fd)
                continue
            view = view[sent:]

    def shutdown_write(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self) -> None:
        self.release_reader()
        self.sock.close()

    def abort(self) -> None:
        self.release_reader()
        abort(self.sock)

    def splice_fd(self) -> int | None:
        return self._fd if self.sock.fileno() >= 0 else None


class LayeredStream(PendingBytes):
    """The shared half of a stream that transforms bytes over a stream `raw` (TLS, an AEAD
    framing; `raw` is a SocketStream, or a proxy's stream for a check through it): decoded
    bytes read ahead wait in `_pending`, nothing is spliceable, and half-close is not forwarded
    (it would end the session for most such peers)."""

    raw: Stream

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def splice_fd(self) -> int | None:
        return None


class TlsStream(LayeredStream):
    """TLS over a SocketStream with ssl.SSLObject + memory BIOs, on the same loop mechanics.

    Half-close is not forwarded over TLS (a close_notify ends the session for most peers):
    shutdown_write is a no-op and the flow ends on the other side's EOF or the idle timeout."""

    def __init__(self, raw: Stream, obj: ssl.SSLObject, incoming: ssl.MemoryBIO,
                 outgoing: ssl.MemoryBIO) -> None:
        self.raw = raw
        self._obj = obj
        self._in = incoming
        self._out = outgoing
        self._send_lock = asyncio.Lock()
        self._pending = b""

    @classmethod
    async def wrap(cls, raw: Stream, ctx: ssl.SSLContext, server_hostname: str | None,
                   node: Any = None) -> TlsStream:
        incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(incoming, outgoing, server_side=False, server_hostname=server_hostname)
        self = cls(raw, obj, incoming, outgoing)
        while True:
            try:
                obj.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._flush()
                data = await raw.recv(RECV_SIZE)
                if not data:
                    raise ProxyProtocolError("TLS handshake: connection closed by the peer", node) from None
                incoming.write(data)
            except ssl.SSLError as exc:
                raise ProxyProtocolError(f"TLS handshake failed: {exc.reason or exc}",
                                         node) from None
        await self._flush()
        return self

    async def _flush(self) -> None:
        async with self._send_lock:
            data = self._out.read()
            if data:
                await self.raw.sendall(data)

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        if self._pending:
            data, self._pending = self._pending[:n], self._pending[n:]
            return data
        while True:
            try:
                return self._obj.read(n)
            except ssl.SSLWantReadError:
                if self._out.pending:
                    await self._flush()
                got = await self.raw.recv(RECV_SIZE)
                if got:
                    self._in.write(got)
                else:
                    self._in.write_eof()
            except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
                return b""

    async def sendall(self, data: Buffer) -> None:
        if data:
            self._obj.write(data)
            await self._flush()



async def bounded(coro: Awaitable[T], seconds: float, node: Any, what: str,
                  loop: asyncio.AbstractEventLoop | None = None) -> T:
    """`coro` within `seconds`; past that a ProxyProtocolError saying what timed out.

    With `loop` given: one timer handle and no asyncio.timeout (its Timeout object and its
    current_task/get_running_loop calls, each a getpid(2) on Python 3.11), same semantics: an
    outside cancel still wins."""
    if loop is None:
        try:
            async with asyncio.timeout(seconds):  # no extra task, unlike wait_for
                return await coro
        except TimeoutError:
            raise ProxyProtocolError(f"{what} timed out after {seconds:g}s", node) from None
    task = asyncio.current_task(loop)
    assert task is not None
    fired = False

    def fire() -> None:
        nonlocal fired
        fired = True
        task.cancel()

    handle = loop.call_later(seconds, fire)
    try:
        return await coro
    except asyncio.CancelledError:
        if fired and task.uncancel() == 0:
            raise ProxyProtocolError(f"{what} timed out after {seconds:g}s", node) from None
        raise
    finally:
        handle.cancel()


async def read_exact(stream: Stream, n: int, node: Any, what: str) -> bytes:
    """Exactly n bytes of a handshake; EOF before that is a protocol error naming `what`."""
    buf = b""
    while len(buf) < n:
        chunk = await stream.recv(n - len(buf))
        if not chunk:
            got = f"after {len(buf)} of {n} bytes" if buf else "before any byte"
            raise ProxyProtocolError(f"connection closed while reading {what} ({got})", node)
        buf += chunk
    return buf


async def read_until(stream: Stream, sep: bytes, limit: int, node: Any,
                     what: str) -> bytes:
    """Bytes up to and including `sep`; the surplus goes back to the stream."""
    buf = b""
    while True:
        idx = buf.find(sep)
        if idx >= 0:
            end = idx + len(sep)
            if end < len(buf):
                stream.unread(buf[end:])
            return buf[:end]
        if len(buf) > limit:
            raise ProxyProtocolError(f"{what} is longer than {limit} bytes without {sep!r}: "
                                     f"{buf[:64]!r}...", node)
        chunk = await stream.recv(4096)
        if not chunk:
            shown = f": {buf[:64]!r}" if buf else " (nothing received)"
            raise ProxyProtocolError(f"connection closed while reading {what}{shown}", node)
        buf += chunk
