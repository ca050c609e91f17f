"""The relay's callback dial: a proxied TCP flow from accept() to its SplicedFlow without a task.

For the common case only: the flow's outbound chooses among nodes (a group), the node of choice
speaks a protocol with a fast path (`proxy.FastPath`: today SOCKS5 without credentials at an IP
literal), and splice is on. Connect, the pipelined request and its reply are driven by the
loop's FdPoller and two timers (connect, handshake); no coroutine, no future, no loop iteration
spent resuming a task. Dial failures fail over like `Group.dial_tcp` does (the node is reported
down, the next alive one is dialed). Anything out of the ordinary goes to the coroutine path,
with what was done so far:

- a reply that is not a plain success, EOF or a timeout during the handshake: the bytes read
  so far go into a SocketStream and the protocol's `FastPath.finish` parses them (naming the
  error, or redialing a node that dropped the pipelined request);
- a next node that does not qualify: `Group.dial_tcp` with the nodes tried and their errors;
- bytes from the target in the reply's segment: the established-flow coroutine sends them.

With warm pools on (runtime/relay/warmpool.py), a node with a ready pooled connection is not
dialed: the flow's request alone goes out on that connection (SOCKS5's CONNECT after the method
selection the pool did; HTTP's CONNECT, which has no other fast path) and the reply is read the
same way. A pooled connection the node had closed (EOF or reset before any reply byte) is
reported to the pool and the node dialed fresh, not failed over: no flow is lost to it.

The dial knows its relay only as a `DialOwner`: this module does not import the relay's.
"""
from __future__ import annotations

import asyncio
import errno
import os
import socket
from collections.abc import Awaitable, Iterable
from typing import Protocol

from dae_py.runtime.groups.group import dial_failure
from dae_py.runtime.groups.stats import Check
from dae_py.runtime.net.poller import IN, OUT, FdPoller
from dae_py.runtime.net.sockets import abort, set_mark, tcp_socket
from dae_py.runtime.net.stream import SocketStream
from dae_py.runtime.proxy import (
    AllNodesDown,
    ConnectionPool,
    Destination,
    Dialed,
    DialError,
    DialOptions,
    FastPath,
    Node,
    OutboundError,
    Prepared,
    ProxyRefusedError,
    fast_path,
)


class NodeChooser(Protocol):
    """An outbound that picks one of its nodes per flow and fails over (a `Group`)."""

    name: str
    opts: DialOptions
    dial_attempts: int

    def select(self, kind: Check = Check.TCP, exclude: Iterable[Node] = ()) -> Node | None: ...

    def report_failure(self, node: Node, kind: Check, error: str) -> None: ...

    def all_down(self, kind: Check, errors: list[str]) -> AllNodesDown: ...

    async def dial_tcp(self, dst: Destination, tried: list[Node] | None = None,
                       errors: list[str] | None = None) -> Dialed: ...


class DialOwner(Protocol):
    """What a CallbackDial reports to (the TCP relay)."""

    loop: asyncio.AbstractEventLoop
    poller: FdPoller
    dialing: set[CallbackDial]  # the dials in progress (closed with the relay)

    @property
    def pools(self) -> ConnectionPool | None:
        """The warm pools (runtime/relay/warmpool.py), if on."""
        ...

    def dial_refused(self, dial: CallbackDial, exc: OutboundError) -> None:
        """No node could carry the flow: refuse the client."""
        ...

    def dial_continues(self, dial: CallbackDial, rest: Awaitable[Dialed]) -> None:
        """The coroutine path takes over: await `rest` and carry (or refuse) the flow."""
        ...

    def dial_established(self, dial: CallbackDial, upstream: socket.socket, early: bytes) -> None:
        """The handshake is done: `upstream` is in the poller, armed for reading; `early` the
        target's bytes that came with the reply."""
        ...


SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_CONNECTING, _HANDSHAKE = 1, 2


class CallbackDial:
    __slots__ = ("owner", "loop", "poller", "conn", "src", "dst", "group", "why", "node",
                 "addr", "tried", "errors", "sock", "fd", "buf", "timer", "state", "request", "fast",
                 "proto", "pooled")

    def __init__(self, owner: DialOwner, conn: socket.socket, src: tuple[str, int],
                 dst: tuple[str, int], group: NodeChooser, why: str) -> None:
        self.owner = owner
        self.loop = owner.loop
        self.poller = owner.poller
        self.conn = conn
        self.src = src
        self.dst = dst
        self.group = group
        self.why = why
        self.node: Node | None = None
        self.addr: tuple = ()
        self.tried: list[Node] = []
        self.errors: list[str] = []
        self.sock: socket.socket | None = None
        self.fd = -1
        self.buf = b""
        self.timer: asyncio.TimerHandle | None = None
        self.state = 0
        self.request = b""
        self.fast: FastPath | None = None  # the node's fresh callback dial, if it has one
        # what reads the reply of the attempt under way (a FastPath, or a pooled connection's
        # Prepared); set before the first event: every use has one
        self.proto: FastPath | Prepared = None  # type: ignore[assignment]  # until an attempt
        self.pooled = False  # the attempt under way uses a warm pool's connection

    def start(self) -> bool:
        """Dial the group's node of choice; False (nothing done) if it does not qualify."""
        node = self.group.select(Check.TCP)
        if node is None:
            return False  # all down: the coroutine path refuses it with the usual message
        self.owner.dialing.add(self)
        if self._attempt(node):
            return True
        self.owner.dialing.discard(self)
        return False

    def _attempt(self, node: Node) -> bool:
        """Dial `node` from callbacks: on a warm pool's connection when one is ready, else
        fresh through the protocol's fast path; False (nothing done) when neither applies."""
        fast = fast_path(node)
        addr = fast.address(node) if fast is not None else None
        if addr is None:
            fast = None
        pools = self.owner.pools
        # a node without a fast path takes the coroutine path unless a connection is ready
        # (that path asks the pool itself: one miss per flow, not two)
        if pools is not None and (fast is not None or pools.has_ready(node, self.group.opts)):
            got = pools.take(node, self.group.opts)
            if got is not None:
                sock, prep = got
                request = prep.request(node, self.dst[0], self.dst[1])
                if request is not None:
                    self.fast = fast
                    self._use_pooled(node, sock, prep, request)
                    return True
                self.poller.remove(sock.fileno())
                sock.close()
        if fast is None or addr is None:
            return False
        request = fast.request(node, self.dst[0], self.dst[1])
        if request is None:
            return False
        self.fast = self.proto = fast
        self.pooled = False
        self.request = request
        self._dial(node, addr[0], addr[1])
        return True

    def _use_pooled(self, node: Node, sock: socket.socket, prep: Prepared, request: bytes) -> None:
        """The pooled connection is in the poller, armed for reading: the request goes out at
        once and the reply is read like a fresh dial's."""
        self.tried.append(node)
        self.group.dial_attempts += 1
        self.node = node
        self.buf = b""
        self.sock = sock
        self.fd = sock.fileno()
        self.proto = prep
        self.pooled = True
        self.request = request
        self.poller.set_handler(self.fd, self._on_event)
        self.state = _HANDSHAKE
        self.timer = self.loop.call_later(self.group.opts.handshake_timeout, self._on_timeout)
        try:
            sent = sock.send(request)
        except OSError:
            sent = -1
        if sent != len(request):
            self._pooled_dead()

    def _pooled_dead(self) -> None:
        """The node had closed the pooled connection (EOF or reset before any reply byte, or
        the request did not go out): not the node's failure; the same node is dialed fresh."""
        node = self.node
        assert node is not None
        pools = self.owner.pools
        if pools is not None:
            pools.report_dead()
        self._drop_sock(reset=True)
        self.pooled = False
        self.tried.pop()
        fast = self.fast
        addr = fast.address(node) if fast is not None else None
        request = fast.request(node, self.dst[0], self.dst[1]) if fast is not None and addr else None
        if fast is None or addr is None or request is None:
            self._finish()
            self.owner.dial_continues(self, self._dial_rest(self.tried))
            return
        self.proto = fast
        self.request = request
        self._dial(node, addr[0], addr[1])

    # --- connect ------------------------------------------------------------------------
    def _dial(self, node: Node, family: int, addr: tuple) -> None:
        self.tried.append(node)
        self.group.dial_attempts += 1
        self.node = node
        self.addr = addr
        self.buf = b""
        opts = self.group.opts
        try:
            sock = tcp_socket(family, opts.mptcp)
        except OSError as exc:  # EMFILE and the like: not the node's fault
            self._finish()
            self.owner.dial_refused(self, DialError(f"cannot open a socket: {exc.strerror or exc}"))
            return
        self.sock = sock
        self.fd = sock.fileno()
        try:
            set_mark(sock, opts.so_mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err == errno.EINPROGRESS:
                self.poller.watch(self.fd, OUT, self._on_event)
                self.state = _CONNECTING
                self.timer = self.loop.call_later(opts.connect_timeout, self._on_timeout)
                return
        except OSError as exc:
            err = exc.errno or errno.EIO
        if err:
            self._drop_sock()
            self._dial_failed(DialError(f"connect to {addr[0]}:{addr[1]} failed: "
                                        f"{os.strerror(err)}", node))
            return
        self._connected(sock)

    def _drop_sock(self, reset: bool = False) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        sock = self.sock
        if sock is not None:
            self.poller.remove(self.fd)
            if reset:
                abort(sock)
            else:
                sock.close()
            self.sock = None
            self.fd = -1
        self.state = 0

    def _dial_failed(self, exc: OutboundError) -> None:
        """The node failed (connect or handshake): it is reported down, the next is dialed."""
        node = self.node
        assert node is not None
        self.errors.append(f"{node}: {exc.what}")
        self.group.report_failure(node, Check.TCP, exc.what)
        nxt = self.group.select(Check.TCP, self.tried)
        if nxt is None:
            self._finish()
            self.owner.dial_refused(self, self.group.all_down(Check.TCP, self.errors))
            return
        if not self._attempt(nxt):  # the coroutine path dials that one
            self._finish()
            self.owner.dial_continues(self, self._dial_rest(self.tried))

    # --- events -------------------------------------------------------------------------
    def _on_event(self, events: int) -> None:
        sock = self.sock
        if sock is None:
            return
        if self.state == _CONNECTING:
            try:
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            except OSError as exc:
                err = exc.errno or errno.EIO
            if err:
                addr, node = self.addr, self.node
                self._drop_sock()
                self._dial_failed(DialError(f"connect to {addr[0]}:{addr[1]} failed: "
                                            f"{os.strerror(err)}", node))
                return
            self._connected(sock)
            return
        try:
            data = sock.recv(512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            if self.pooled and not self.buf:
                self._pooled_dead()
            else:
                self._rescue(False)  # the stream's own read raises it again, named
            return
        if not data:
            if self.pooled and not self.buf:
                self._pooled_dead()
            else:
                self._rescue(False)
            return
        buf = self.buf = self.buf + data
        need = self.proto.reply_size(buf)
        if need < 0:
            self._rescue(False)
        elif need and len(buf) >= need:
            self._established(buf[need:])

    def _connected(self, sock: socket.socket) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.state = _HANDSHAKE
        self.timer = self.loop.call_later(self.group.opts.handshake_timeout, self._on_timeout)
        try:
            sent = sock.send(self.request)
        except OSError:
            sent = -1
        if sent != len(self.request):  # not on a fresh socket; let the coroutine path see
            self._rescue(False, resend=True)
            return
        try:
            self.poller.watch(self.fd, IN, self._on_event)
        except OSError:
            self._rescue(False)

    def _on_timeout(self) -> None:
        self.timer = None
        if self.state == _CONNECTING:
            addr, node = self.addr, self.node
            self._drop_sock()
            self._dial_failed(DialError(f"connect to {addr[0]}:{addr[1]} timed out after "
                                        f"{self.group.opts.connect_timeout:g}s", node))
        elif self.state == _HANDSHAKE:
            self._rescue(True)

    # --- endings ------------------------------------------------------------------------
    def _finish(self) -> None:
        self.owner.dialing.discard(self)

    def _hand_off(self) -> socket.socket | None:
        """End the callback dial and give its upstream socket to whoever goes on with it."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.state = 0
        self._finish()
        sock, self.sock = self.sock, None
        return sock

    def _established(self, early: bytes) -> None:
        sock = self._hand_off()
        assert sock is not None
        self.owner.dial_established(self, sock, early)

    def _rescue(self, timed_out: bool, resend: bool = False) -> None:
        """Out of the ordinary during the handshake: the coroutine path takes the socket and
        the bytes read so far (and, for a send that did not go out whole, starts over)."""
        if resend and self.pooled:
            self._pooled_dead()
            return
        sock = self._hand_off()
        assert sock is not None and self.node is not None
        if resend:  # never seen on a fresh socket: redial this flow the ordinary way
            self.poller.remove(self.fd)
            abort(sock)
            self.owner.dial_continues(self, self._dial_rest(self.tried[:-1]))
            return
        stream = SocketStream(sock, self.loop, in_poller=True)
        if self.buf:
            stream.unread(self.buf)
        self.owner.dial_continues(self, self._finish_handshake(self.node, stream, self.buf,
                                                               timed_out))

    async def _dial_rest(self, tried: list[Node]) -> Dialed:
        """The failover continued by the group (a node the callback dial cannot dial)."""
        return await self.group.dial_tcp(Destination(self.dst[0], self.dst[1]), tried, self.errors)

    async def _finish_handshake(self, node: Node, stream: SocketStream, got: bytes,
                                timed_out: bool) -> Dialed:
        """The handshake went out of the ordinary: the protocol finishes it the step-by-step
        way (naming the error, or redialing a node that dropped the pipelined request), then
        the group fails over like Group.dial_tcp."""
        proto = self.proto
        dst = Destination(self.dst[0], self.dst[1])
        try:
            upstream = await proto.finish(stream, node, dst, self.group.opts, got, timed_out,
                                          self.loop)
            return Dialed(upstream, node)
        except ProxyRefusedError:
            raise
        except (OutboundError, OSError) as exc:
            what = exc.what if isinstance(exc, OutboundError) else dial_failure(exc, proto.handshake)
            self.errors.append(f"{node}: {what}")
            self.group.report_failure(node, Check.TCP, what)
            return await self.group.dial_tcp(dst, self.tried, self.errors)

    def close(self) -> None:
        """The relay is closing: drop the dial, reset the client."""
        self._drop_sock(reset=True)
        self._finish()
        abort(self.conn)
