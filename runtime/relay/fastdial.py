"""The relay's callback dial: a proxied TCP flow from accept() to its SplicedFlow without a task.

For the common case only: the flow's outbound is a group whose node of choice speaks SOCKS5
without credentials at an IP literal, and splice is on. Connect, the pipelined greeting and
CONNECT, and the reply are driven by the loop's FdPoller and two timers (connect, handshake);
no coroutine, no future, no loop iteration spent resuming a task. Dial failures fail over like
`Group.dial_tcp` does (the node is reported down, the next alive one is dialed). Anything out
of the ordinary goes to the coroutine path, with what was done so far:

- a reply that is not a plain success, EOF or a timeout during the handshake: the bytes read
  so far go into a SocketStream and `socks5.finish_pipelined` parses them (naming the error, or
  redialing a node that dropped the request step by step);
- a next node that does not qualify: `Group.dial_tcp` with the nodes tried and their errors;
- bytes from the target in the reply's segment: the established-flow coroutine sends them.
"""
from __future__ import annotations

import errno
import os
import socket
from typing import TYPE_CHECKING

from dae_py.runtime.groups.stats import Check
from dae_py.runtime.proxy import DialError, Node, OutboundError
from dae_py.runtime.net.poller import IN, OUT
from dae_py.runtime.net.sockets import abort, set_mark
from dae_py.runtime.proxy.socks5 import (PIPELINED_GREETING, connect_request, fast_dialable,
                                     pipelined_reply_size)
from dae_py.runtime.net.stream import SocketStream

if TYPE_CHECKING:
    import asyncio

    from dae_py.runtime.groups import Group

    from .tcp import TcpRelay

SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
_CONNECTING, _HANDSHAKE = 1, 2


class FastSocksDial:
    __slots__ = ("relay", "loop", "poller", "conn", "src", "dst", "group", "why", "node",
                 "addr", "tried", "errors", "sock", "fd", "buf", "timer", "state", "request")

    def __init__(self, relay: TcpRelay, conn: socket.socket, src: tuple[str, int],
                 dst: tuple[str, int], group: Group, why: str) -> None:
        self.relay = relay
        self.loop: asyncio.AbstractEventLoop = relay._loop  # type: ignore[assignment]
        self.poller = relay._poller
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

    def start(self) -> bool:
        """Dial the group's node of choice; False (nothing done) if it does not qualify."""
        node = self.group.select(Check.TCP)
        if node is None:
            return False  # all down: the coroutine path refuses it with the usual message
        addrs = fast_dialable(node)
        if addrs is None or len(addrs) != 1:
            return False
        try:
            self.request = PIPELINED_GREETING + connect_request(self.dst[0], self.dst[1])
        except ValueError:
            return False
        self.relay._dialing.add(self)
        self._dial(node, addrs[0][0], addrs[0][1])
        return True

    # --- connect ------------------------------------------------------------------------
    def _dial(self, node: Node, family: int, addr: tuple) -> None:
        self.tried.append(node)
        self.group.dial_attempts += 1
        self.node = node
        self.addr = addr
        self.buf = b""
        opts = self.group.opts
        try:
            sock = socket.socket(family, socket.SOCK_STREAM | SOCK_NONBLOCK)
        except OSError as exc:  # EMFILE and the like: not the node's fault
            self._finish()
            self.relay._refuse(self.conn, self.src, self.dst, self.group.name,
                               DialError(f"cannot open a socket: {exc.strerror or exc}"))
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
        self._connected()

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
            self.relay._refuse(self.conn, self.src, self.dst, self.group.name,
                               self.group._all_down(Check.TCP, self.errors))
            return
        addrs = fast_dialable(nxt)
        if addrs is None or len(addrs) != 1:  # the coroutine path dials that one
            self._finish()
            self.relay._spawn(self.relay._dial_rest(self.conn, self.src, self.dst, self.group,
                                                    self.why, self.tried, self.errors))
            return
        self._dial(nxt, addrs[0][0], addrs[0][1])

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
            self._connected()
            return
        try:
            data = sock.recv(512)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._rescue(False)  # the stream's own read raises it again, named
            return
        if not data:
            self._rescue(False)
            return
        buf = self.buf = self.buf + data
        need = pipelined_reply_size(buf)
        if need < 0:
            self._rescue(False)
        elif need and len(buf) >= need:
            self._established(buf[need:])

    def _connected(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
        self.state = _HANDSHAKE
        self.timer = self.loop.call_later(self.group.opts.handshake_timeout, self._on_timeout)
        try:
            sent = self.sock.send(self.request)  # type: ignore[union-attr]
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
        self.relay._dialing.discard(self)

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
        self.relay._fast_established(self.conn, self.src, self.dst, self.why, self.group,
                                     self.node, sock, early)  # type: ignore[arg-type]

    def _rescue(self, timed_out: bool, resend: bool = False) -> None:
        """Out of the ordinary during the handshake: the coroutine path takes the socket and
        the bytes read so far (and, for a send that did not go out whole, starts over)."""
        sock = self._hand_off()
        assert sock is not None and self.node is not None
        if resend:  # never seen on a fresh socket: redial this flow the ordinary way
            self.poller.remove(self.fd)
            abort(sock)
            self.relay._spawn(self.relay._dial_rest(self.conn, self.src, self.dst, self.group,
                                                    self.why, self.tried[:-1], self.errors))
            return
        stream = SocketStream(sock, self.loop, in_poller=True)
        if self.buf:
            stream.unread(self.buf)
        self.relay._spawn(self.relay._rescue(self.conn, self.src, self.dst, self.group,
                                             self.why, self.node, stream, self.buf, timed_out,
                                             self.tried, self.errors))

    def close(self) -> None:
        """The relay is closing: drop the dial, reset the client."""
        self._drop_sock(reset=True)
        self._finish()
        abort(self.conn)
