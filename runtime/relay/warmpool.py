"""Warm pools: per node, a few upstream connections opened and negotiated before a flow needs
them, so a new flow pays only its request (SOCKS5: the CONNECT; HTTP: the CONNECT) and not the
TCP handshake to the node or the method selection.

Bounded and lazy: a pool exists for a (node, dial options) pair once a flow has wanted it, holds
at most `size` connections (and all pools together at most `max_total`), refills in the
background after each flow takes one (or finds none), and is not refilled once no flow has come
for `idle_timeout`: its connections are closed at that age, so a node nobody uses costs nothing,
and no connection waits longer than servers usually let an unfinished handshake wait (dante's
negotiate timeout is 30 s; pick `idle_timeout` below the shortest among your nodes).

Sockets are opened the way a fresh dial opens them (`DialOptions`: SO_MARK, MPTCP, timeouts),
by the protocol's `proxy.Prepared`; nodes whose protocol has none (TLS, AEAD and chained nodes:
their handshakes bind to the flow) get no pool. A pooled connection stays registered for reading
in the loop's FdPoller while it waits: anything it reports (the node's EOF, a reset) drops it at
once. One that dies between `take` and its first use is the taker's to notice: it reports it
(`report_dead`) and dials fresh, so no flow is lost to a stale connection.

Reload: the relay builds new pools for the new table and closes the old ones (`close`).
"""
from __future__ import annotations

import asyncio
import collections
import errno
import logging
import os
import socket
from dataclasses import dataclass

from dae_py.runtime import proxy
from dae_py.runtime.net.poller import IN, OUT, poller_for
from dae_py.runtime.net.sockets import _literal, abort, set_mark, tcp_socket
from dae_py.runtime.proxy import DialOptions, Node, OutboundError, Prepared

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PoolSettings:
    """`global.warm_pool` and `global.warm_pool_idle_timeout` (docs/warm-pool.md)."""

    size: int = 4  # connections kept ready per node; 0 turns pooling off
    idle_timeout: float = 10.0  # seconds a ready connection may wait (and a pool without flows)
    max_total: int = 256  # ready and opening connections of all pools together (fds)
    retry_after: float = 2.0  # after a failed open, the pool's refills pause this long


@dataclass
class PoolStats:
    """What the pools did, for tests and the log."""

    hits: int = 0  # flows that took a ready connection
    misses: int = 0  # flows that found none (and dialed fresh)
    opened: int = 0  # connections opened and negotiated
    failed: int = 0  # opens that failed
    expired: int = 0  # ready connections closed at idle_timeout
    dropped: int = 0  # ready connections the node closed while they waited
    dead_on_use: int = 0  # taken connections that turned out closed at their first use


class _Ready:
    """One ready connection: its socket and when it became ready (loop time)."""

    __slots__ = ("pool", "sock", "fd", "since")

    def __init__(self, pool: _Pool, sock: socket.socket, since: float) -> None:
        self.pool = pool
        self.sock = sock
        self.fd = sock.fileno()
        self.since = since

    def on_event(self, _events: int) -> None:
        """Whatever a waiting connection reports (EOF, RST, stray bytes) makes it unusable."""
        self.pool.owner.drop(self)


class _Opener:
    """One pooled connection being opened from callbacks, the way the relay's callback dial
    opens a flow's (no task, no future): connect, send the protocol's greeting, read its
    fixed reply. For nodes at an IP literal whose greeting is one fixed exchange (SOCKS5
    without credentials: method selection; HTTP: none)."""

    __slots__ = ("owner", "pool", "family", "addr", "send", "expect", "sock", "fd", "buf", "timer",
                 "connecting")

    def __init__(self, owner: WarmPools, pool: _Pool, address: tuple[int, tuple],
                 greeting: tuple[bytes, bytes]) -> None:
        self.owner = owner
        self.pool = pool
        self.family, self.addr = address
        self.send, self.expect = greeting
        self.sock: socket.socket | None = None
        self.fd = -1
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None
        self.connecting = True

    def start(self) -> None:
        owner, opts = self.owner, self.pool.opts
        try:
            sock = self.sock = tcp_socket(self.family, opts.mptcp)
        except OSError as exc:
            owner._failed(self.pool, f"cannot open a socket: {exc.strerror or exc}")
            return
        self.fd = sock.fileno()
        owner.opening.add(self)
        try:
            set_mark(sock, opts.so_mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(self.addr)
            if err == errno.EINPROGRESS:
                owner.poller.watch(self.fd, OUT, self.on_event)
                self.timer = owner.loop.call_later(opts.connect_timeout, self.on_timeout)
                return
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err:
            self._fail(f"connect failed: {os.strerror(err)}")
            return
        owner.poller.watch(self.fd, IN, self.on_event)
        self._connected()

    def _connected(self) -> None:
        self.connecting = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.expect:  # nothing to negotiate (HTTP): ready once connected
            self._ready()
            return
        sock = self.sock
        assert sock is not None
        try:
            if sock.send(self.send) != len(self.send):
                self._fail("greeting not sent whole")
                return
            self.owner.poller.modify(self.fd, IN)
        except OSError as exc:
            self._fail(f"greeting failed: {exc.strerror or exc}")
            return
        self.timer = self.owner.loop.call_later(self.pool.opts.handshake_timeout, self.on_timeout)

    def on_event(self, _events: int) -> None:
        sock = self.sock
        if sock is None:
            return
        if self.connecting:
            try:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError as exc:
                err = exc.errno or errno.EIO
            if err:
                self._fail(f"connect failed: {os.strerror(err)}")
                return
            self._connected()
            return
        try:
            data = sock.recv(64)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._fail(f"greeting failed: {exc.strerror or exc}")
            return
        buf = self.buf = self.buf + data
        if data and len(buf) < len(self.expect) and self.expect.startswith(buf):
            return
        if buf != self.expect:
            self._fail("unexpected greeting reply" if data else "closed during the greeting")
            return
        self._ready()

    def on_timeout(self) -> None:
        self.timer = None
        self._fail("connect timed out" if self.connecting else "greeting timed out")

    def _ready(self) -> None:
        sock, self.sock = self.sock, None
        assert sock is not None
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.owner.opening.discard(self)
        if not self.expect:  # watched for the connect (OUT): now for the node closing it
            try:
                self.owner.poller.modify(self.fd, IN)
            except OSError:
                self.owner.poller.remove(self.fd)
                sock.close()
                self.owner._failed(self.pool, "connection lost")
                return
        self.owner._opened(self.pool, sock, True)

    def _fail(self, what: str) -> None:
        self.abort()
        self.owner._failed(self.pool, what)

    def abort(self) -> None:
        """Drop the connection (a failure, or the pools closing)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.owner.opening.discard(self)
        sock, self.sock = self.sock, None
        if sock is not None:
            self.owner.poller.remove(self.fd)
            sock.close()


class _Pool:
    __slots__ = ("owner", "node", "opts", "prepared", "ready", "opening", "last_wanted", "paused_until")

    def __init__(self, owner: WarmPools, node: Node, opts: DialOptions, prepared: Prepared,
                 now: float) -> None:
        self.owner = owner
        self.node = node
        self.opts = opts
        self.prepared = prepared
        self.ready: collections.deque[_Ready] = collections.deque()  # oldest first
        self.opening = 0
        self.last_wanted = now
        self.paused_until = 0.0


class WarmPools:
    """The relay's pools, one per (node, dial options) a flow has asked for. Implements
    `proxy.ConnectionPool` for the groups and the relay's callback dial."""

    def __init__(self, loop: asyncio.AbstractEventLoop, settings: PoolSettings = PoolSettings()) -> None:
        self.loop = loop
        self.settings = settings
        self.poller = poller_for(loop)
        # by (id(node), id(opts)): a Node's value hash costs microseconds per flow; the pool
        # holds both objects, so neither id can be reused while its entry exists
        self.pools: dict[tuple[int, int], _Pool] = {}
        self.total = 0  # ready + opening, all pools
        self.stats = PoolStats()
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()  # opens through the protocol's coroutine
        self.opening: set[_Opener] = set()  # opens driven from callbacks
        self._sweep: asyncio.TimerHandle | None = None

    # --- proxy.ConnectionPool -------------------------------------------------------------
    def take(self, node: Node, opts: DialOptions) -> tuple[socket.socket, Prepared] | None:
        if self.closed or self.settings.size <= 0:
            return None
        pool = self.pools.get((id(node), id(opts)))
        now = self.loop.time()
        if pool is None:
            prepared = proxy.prepared(node)
            if prepared is None or len(self.pools) >= self.settings.max_total:
                return None
            pool = self.pools[(id(node), id(opts))] = _Pool(self, node, opts, prepared, now)
        pool.last_wanted = now
        ready = pool.ready
        oldest = now - self.settings.idle_timeout
        while ready:
            conn = ready.popleft()
            self.total -= 1
            if conn.since < oldest:  # the sweep has not come by yet
                self._close(conn, expired=True)
                continue
            self.stats.hits += 1
            self.loop.call_soon(self._refill, pool, now)
            return conn.sock, pool.prepared
        self.stats.misses += 1
        # after the taker's own dial: the node accepts the flow's connection before the refill's
        self.loop.call_soon(self._refill, pool, now)
        return None

    def has_ready(self, node: Node, opts: DialOptions) -> bool:
        pool = self.pools.get((id(node), id(opts)))
        return pool is not None and bool(pool.ready)

    def report_dead(self) -> None:
        self.stats.dead_on_use += 1

    # --- filling ----------------------------------------------------------------------------
    def _refill(self, pool: _Pool, now: float) -> None:
        if self.closed or now < pool.paused_until:
            return
        want = self.settings.size - len(pool.ready) - pool.opening
        room = self.settings.max_total - self.total
        if want <= 0 or room <= 0:
            return
        greeting = pool.prepared.greeting(pool.node)
        addrs = _literal(pool.node.host, pool.node.port) if greeting is not None else None
        for _ in range(min(want, room)):
            pool.opening += 1
            self.total += 1
            if greeting is not None and addrs is not None and len(addrs) == 1:
                _Opener(self, pool, addrs[0], greeting).start()  # no task: callbacks
                continue
            task = self.loop.create_task(self._open(pool))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _open(self, pool: _Pool) -> None:
        """The protocol's own open (a name to resolve, credentials to send)."""
        try:
            stream = await pool.prepared.open(pool.node, pool.opts)
        except (OutboundError, OSError) as exc:
            self._failed(pool, exc.what if isinstance(exc, OutboundError) else f"{exc.strerror or exc}")
            return
        except BaseException:
            pool.opening -= 1
            self.total -= 1
            raise
        armed = stream.hand_over_reader()
        if stream.take_pending():  # the node spoke unasked: not a connection to hand a flow
            if armed:
                self.poller.remove(stream.sock.fileno())
            pool.opening -= 1
            self.total -= 1
            abort(stream.sock)
            return
        self._opened(pool, stream.sock, armed)

    def _opened(self, pool: _Pool, sock: socket.socket, armed: bool) -> None:
        """A connection is ready: into the pool, watched for the node closing it."""
        pool.opening -= 1
        if self.closed or self.pools.get((id(pool.node), id(pool.opts))) is not pool:
            self.total -= 1
            if armed:
                self.poller.remove(sock.fileno())
            abort(sock)
            return
        self.stats.opened += 1
        conn = _Ready(pool, sock, self.loop.time())
        try:
            if armed:  # in the set, armed for reading: the handler alone changes, no syscall
                self.poller.set_handler(conn.fd, conn.on_event)
            else:
                self.poller.watch(conn.fd, IN, conn.on_event)
        except OSError:
            self.total -= 1
            abort(sock)
            return
        pool.ready.append(conn)
        self._arm_sweep()

    def _failed(self, pool: _Pool, what: str) -> None:
        pool.opening -= 1
        self.total -= 1
        self.stats.failed += 1
        pool.paused_until = self.loop.time() + self.settings.retry_after
        log.debug("warm pool for node %s: open failed: %s", pool.node, what)

    # --- emptying ---------------------------------------------------------------------------
    def drop(self, conn: _Ready) -> None:
        """A ready connection reported something while it waited: the node closed it."""
        try:
            conn.pool.ready.remove(conn)
        except ValueError:
            return  # taken already: the taker owns it
        self.total -= 1
        self.stats.dropped += 1
        self._close(conn)

    def _close(self, conn: _Ready, expired: bool = False) -> None:
        if expired:
            self.stats.expired += 1
        self.poller.remove(conn.fd)
        conn.sock.close()

    def _arm_sweep(self) -> None:
        if self._sweep is None and not self.closed:
            self._sweep = self.loop.call_later(max(self.settings.idle_timeout / 4, 0.25), self._sweep_now)

    def _sweep_now(self) -> None:
        """Close ready connections older than idle_timeout, and forget pools that have none
        and saw no flow for as long (a node's pool comes back with its next flow)."""
        self._sweep = None
        now = self.loop.time()
        oldest = now - self.settings.idle_timeout
        left = 0
        for key, pool in list(self.pools.items()):
            ready = pool.ready
            while ready and ready[0].since < oldest:
                conn = ready.popleft()
                self.total -= 1
                self._close(conn, expired=True)
            left += len(ready)
            if not ready and not pool.opening and pool.last_wanted < oldest:
                del self.pools[key]
        if left or self.pools:
            self._arm_sweep()

    def close(self) -> None:
        """Reload or shutdown: every ready connection closed, opens under way cancelled."""
        if self.closed:
            return
        self.closed = True
        st = self.stats
        if st.hits or st.misses:
            log.info("warm pools: %d flows took a ready connection, %d dialed fresh; %d opened, %d failed, "
                     "%d expired, %d closed by the node while waiting, %d dead at first use",
                     st.hits, st.misses, st.opened, st.failed, st.expired, st.dropped, st.dead_on_use)
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for pool in self.pools.values():
            while pool.ready:
                self._close(pool.ready.popleft())
                self.total -= 1
        self.pools.clear()
        for opener in list(self.opening):
            opener.abort()
        for task in list(self._tasks):
            task.cancel()

    async def wait_closed(self) -> None:
        """After `close`: the cancelled opens have ended (their sockets closed)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def ready_count(self) -> int:
        """Connections ready in all pools (what the pools hold open beyond the flows)."""
        return sum(len(p.ready) for p in self.pools.values())
