"""Sends on a small shared pool of threads while the event loop goes on (write-behind).

Why: the copy loop of an encrypted flow spends nearly all its time in calls that release the
GIL: recv(2), the AEAD (cryptography's encrypt_into/decrypt_into, ssl's SSL_write) and send(2),
which on a veth pair also runs the receiving side of the stack. In one thread they take turns
while the second core idles; with the send of chunk N on a pool thread the loop reads and seals
chunk N+1 meanwhile.

Bounds, per socket: one send on the pool at a time. The writer waits for it to finish before it
queues the next, so at most one buffer is in flight besides the one being sealed, and
back-pressure reaches the reader as before. A pool thread never waits for a peer: it sends until
the data is gone or the socket is full (EAGAIN), and hands the rest back to the loop, which waits
for the socket to become writable and queues the rest again. A peer that stops reading therefore
holds no thread, and a few threads serve every flow (none is started per flow).

A socket with a send on the pool is never closed under it (the thread's send would meet a closed
fd, or worse, one reused by another flow): close, abort and shutdown(SHUT_WR) asked meanwhile
run when the send comes back, in the order asked."""
from __future__ import annotations

import asyncio
import logging
import queue
import socket
import threading
from collections.abc import Callable

from .sockets import abort as abort_socket

log = logging.getLogger(__name__)

#: Sends shorter than this run inline on the loop (an interactive flow's small writes would
#: only pay the thread hop); a bulk flow's reads and seals are 64-256 KiB.
OFFLOAD_MIN = 32 * 1024
Buffer = bytes | bytearray | memoryview
Release = Callable[[], None]
_CLOSE, _ABORT = 1, 2


class SendPool:
    """A few daemon threads taking send jobs from one queue, started on the first job (a relay
    that never carries a bulk encrypted flow starts none). Closed with its relay; a job
    submitted after that runs inline (a socket waiting for room when the relay closed)."""

    def __init__(self, threads: int) -> None:
        self.threads = max(1, threads)
        self._jobs: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._lock = threading.Lock()
        self.closed = False
        self.jobs = 0  # submitted so far (a figure for tests and benchmarks)

    def submit(self, job: Callable[[], None]) -> None:
        self.jobs += 1
        if self.closed:
            job()
            return
        if not self._workers:
            self._start()
        self._jobs.put(job)

    def _start(self) -> None:
        with self._lock:
            if self._workers:
                return
            for i in range(self.threads):
                worker = threading.Thread(target=self._run, name=f"relay-send-{i}", daemon=True)
                worker.start()
                self._workers.append(worker)

    def _run(self) -> None:
        get = self._jobs.get
        while True:
            job = get()
            if job is None:
                return
            try:
                job()
            except Exception:  # noqa: BLE001 - a job's bug must not end the thread
                log.exception("relay send job failed")

    @property
    def running(self) -> int:
        """Threads alive (for tests: a pool never grows past `threads`, and close ends them)."""
        return sum(worker.is_alive() for worker in self._workers)

    def close(self, timeout: float = 5.0) -> None:
        """End the threads once the jobs queued before have run."""
        if self.closed:
            return
        self.closed = True
        for _ in self._workers:
            self._jobs.put(None)
        for worker in self._workers:
            worker.join(timeout)
        self._workers.clear()


class WriteBehind:
    """One non-blocking socket's sends, at most one of them on `pool` at a time.

    `send` returns once the data is queued (after the previous send finished); the data must not
    change until `release` is called (bytes, or a buffer the caller lends). `wait_idle` waits for
    the send in flight; a send that failed raises its error there and from every later `send`
    (the loop carries on with the other direction until it, too, sees the broken connection)."""

    __slots__ = ("sock", "_fd", "_loop", "_pool", "_data", "_sent", "_release", "_waiters",
                 "error", "_shut", "_end", "_writing")

    def __init__(self, sock: socket.socket, loop: asyncio.AbstractEventLoop, pool: SendPool) -> None:
        self.sock = sock
        self._fd = sock.fileno()
        self._loop = loop
        self._pool = pool
        self._data: Buffer | None = None  # the send in flight (None: idle)
        self._sent = 0
        self._release: Release | None = None
        self._waiters: list[asyncio.Future[None]] = []
        self.error: OSError | None = None
        self._shut = False  # shutdown(SHUT_WR) asked while busy
        self._end = 0  # _CLOSE or _ABORT asked while busy
        self._writing = False  # waiting for room through loop.add_writer

    @property
    def busy(self) -> bool:
        return self._data is not None

    async def wait_idle(self) -> None:
        while self._data is not None:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            await waiter  # a cancel cancels this waiter only, never the send
        if self.error is not None:
            raise self.error

    async def send(self, data: Buffer, release: Release | None = None) -> None:
        try:
            await self.wait_idle()
            if self._end:
                raise BrokenPipeError("the socket is closed")
        except BaseException:
            if release is not None:
                release()
            raise
        self._data, self._sent, self._release = data, 0, release
        self._pool.submit(self._job)

    # --- on a pool thread -----------------------------------------------------------------
    def _job(self) -> None:
        data, sent = self._data, self._sent
        assert data is not None
        size = len(data)
        error: OSError | None = None
        send = self.sock.send
        try:
            if sent == 0:
                sent = send(data)
            if sent < size:
                with memoryview(data) as view:
                    while sent < size:
                        sent += send(view[sent:])
        except BlockingIOError:
            pass
        except OSError as exc:
            error = exc
        self._sent = sent
        try:
            self._loop.call_soon_threadsafe(self._job_done, error)
        except RuntimeError:  # the loop is closed: nobody waits for this send any more
            self._data = None
            if self._end:
                self.sock.close()

    # --- back on the loop -----------------------------------------------------------------
    def _job_done(self, error: OSError | None) -> None:
        data = self._data
        assert data is not None
        if error is None and self._sent < len(data) and not self._end:
            self._writing = True
            try:
                self._loop.add_writer(self._fd, self._writable)
            except (OSError, ValueError, RuntimeError) as exc:
                self._writing = False
                self._finish(exc if isinstance(exc, OSError) else BrokenPipeError(str(exc)))
            return
        self._finish(error)

    def _writable(self) -> None:
        self._stop_writing()
        self._pool.submit(self._job)

    def _stop_writing(self) -> None:
        if self._writing:
            self._writing = False
            try:
                self._loop.remove_writer(self._fd)
            except (OSError, ValueError, RuntimeError):
                pass

    def _finish(self, error: OSError | None) -> None:
        release = self._release
        self._data = self._release = None
        if error is not None and self.error is None:
            self.error = error
        if release is not None:
            release()
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
        self._run_end()

    def _run_end(self) -> None:
        if self._shut:
            self._shut = False
            try:
                self.sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
        if self._end == _ABORT:
            abort_socket(self.sock)
        elif self._end == _CLOSE:
            self.sock.close()

    # --- ends asked for by the stream -----------------------------------------------------
    def shutdown_write(self) -> bool:
        """Defer shutdown(SHUT_WR) until the send in flight is done; False: nothing in flight
        (the caller shuts down now)."""
        if self._data is None:
            return False
        self._shut = True
        return True

    def close(self, abort: bool = False) -> bool:
        """Close (or abort) once the send in flight is done; False: nothing in flight (the
        caller closes now). The unsent rest of a send waiting for room is dropped, as a
        cancelled inline send drops it (a graceful end drains first: `wait_idle`)."""
        if self._data is None:
            return False
        self._end = _ABORT if abort or self._end == _ABORT else _CLOSE
        if self._writing:  # waiting for room, not on a thread: end now
            self._stop_writing()
            self._finish(BrokenPipeError("closed with data unsent"))
        return True
