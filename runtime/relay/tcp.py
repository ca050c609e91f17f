"""The TCP tproxy listener: accept, ask the Router, dial the outbound, relay.

Flows arrive on IP_TRANSPARENT listeners (bpf_sk_assign or an nftables tproxy rule); the
original destination is the accepted socket's own address."""
from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Coroutine
from typing import Any

from dae_py.runtime.net.poller import FdPoller, poller_for
from dae_py.runtime.net.sockets import abort
from dae_py.runtime.net.stream import SocketStream, Stream
from dae_py.runtime.proxy import Blocked, Destination, Dialed, DialError, Outbound, OutboundError
from dae_py.runtime.proxy.base import format_hostport
from dae_py.runtime.sniff.dialmode import Sniffing

from .fastdial import CallbackDial, NodeChooser
from .flow import Flow, RelayConfig, Route, Router, tcp_flow
from .listen import addressed_to_self, bind_pair
from .outbounds import OutboundTable
from .pump import HAVE_SPLICE, Count, IdleSweeper, SplicedFlow, relay
from .sockmap import SockmapFlow, SockmapPump
from .stats import Counters, RelayStats
from .track import ConnTracker
from .warmpool import PoolSettings, WarmPools

log = logging.getLogger(__name__)
#: Connections accepted per readiness report of a listener at most (the rest wait for the
#: next loop iteration, so a flood cannot starve the flows already established).
ACCEPT_BATCH = 16


def _addr(sockaddr: tuple) -> tuple[str, int]:
    host = sockaddr[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[7:]
    return host, sockaddr[1]


class TcpRelay:
    def __init__(self, router: Router, outbounds: OutboundTable,
                 config: RelayConfig = RelayConfig(), stats: RelayStats | None = None) -> None:
        self.router = router
        self.outbounds = outbounds
        self.config = config
        self.stats = stats or RelayStats()
        self.port = 0
        self._listeners: list[socket.socket] = []
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # from start()
        self._flows: set[asyncio.Task[None]] = set()  # flows still dialing (or copying)
        self._sweeper: IdleSweeper | None = None  # and the spliced ones, task-less
        self._counting: dict[str, tuple[Counters, Count, Count]] = {}
        self.poller: FdPoller = None  # type: ignore[assignment]  # the loop's, from start()
        self.dialing: set[CallbackDial] = set()  # callback dials in progress (no task)
        # the outbounds that choose among nodes: the callback dial's candidates
        self._choosers: dict[int, NodeChooser] = dict(outbounds.choosers())
        # the callback path (accept -> SplicedFlow without a task) needs splice
        self._fast = config.splice and HAVE_SPLICE
        # dial_mode domain*: read the client's first bytes before dialing a group
        self.sniffing = Sniffing.for_settings(config.dial_mode, config.sniffing_timeout)
        self.tracker: ConnTracker | None = None  # set by the controller: live flows, closable
        self.sockmap: SockmapPump | None = None  # relay mode sockmap, from start()
        self.pools: WarmPools | None = None  # from start() when config.warm_pool > 0
        self._batch = 1  # accepts per listener wake-up at most (_accept adapts it)
        self._on_spliced_end = self._spliced_ended  # one bound method for all flows, not one each

    async def start(self, port: int = 0, hosts: tuple[str, ...] = ("0.0.0.0", "::"),
                    guard_fd: int | None = None) -> int:
        """Listen on `port` on every host; returns the port. `guard_fd`: the program's
        tproxy_guard socket filter (only packets the datapath delivered get through)."""
        self.serve(bind_pair(socket.SOCK_STREAM, hosts, port, so_mark=self.config.so_mark, guard_fd=guard_fd))
        log.info("tcp relay listening on port %d (%s)", self.port, ", ".join(hosts))
        return self.port

    def serve(self, listeners: list[socket.socket]) -> None:
        """Accept on these bound sockets (a relay worker's share of the port, made by the main
        process: runtime/relay/workers.py)."""
        self._listeners = listeners
        loop = self.loop = asyncio.get_running_loop()
        self.poller = poller_for(loop)
        self._use_pools(self.outbounds)
        for sock in self._listeners:
            # accepted sockets inherit it from the listener (Linux): no setsockopt per flow
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.listen(self.config.listen_backlog)
            loop.add_reader(sock.fileno(), self._accept, sock)
        self.port = self._listeners[0].getsockname()[1]
        if self._fast and self.config.sockmap:
            self.sockmap = SockmapPump.open(self.config.sockmap_object)

    def sync_counts(self) -> None:
        """Bring the byte counts of flows the kernel moves (sockmap) up to date now."""
        if self.sockmap is not None:
            self.sockmap.report_all()

    def swap(self, router: Router, outbounds: OutboundTable) -> None:
        """Reload: route and dial new connections with these (flows under way keep theirs)."""
        self.router = router
        self.outbounds = outbounds
        self._choosers = dict(outbounds.choosers())
        if self.poller is not None:  # None before start()
            self._use_pools(outbounds)

    def _use_pools(self, outbounds: OutboundTable) -> None:
        """New warm pools for `outbounds`' groups (a reload's nodes may have changed: the old
        pools' connections are closed, never handed to the new table)."""
        old, self.pools = self.pools, None
        config = self.config
        if config.warm_pool > 0:
            self.pools = WarmPools(self.loop, PoolSettings(size=config.warm_pool,
                                                           idle_timeout=config.warm_pool_idle_timeout))
        for group in outbounds.choosers().values():
            group.pools = self.pools
        if old is not None:
            old.close()

    def _accept(self, listener: socket.socket) -> None:
        """The connections waiting on the listener, up to `_batch` per readiness report
        (batched accept: one loop wake-up serves a burst). The batch adapts: it doubles (up to
        ACCEPT_BATCH) after a report that filled it and shrinks to what the last one found,
        so connections arriving one at a time do not each pay an accept(2) that ends in EAGAIN
        (every other one does), while a burst is drained in a few wake-ups."""
        fast = self._fast
        batch = self._batch
        for got in range(batch):
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                self._batch = got or 1
                return
            except OSError as exc:  # EMFILE and friends: log, breathe, go on
                log.error("tcp accept failed: %s", exc)
                loop = self.loop
                fd = listener.fileno()
                loop.remove_reader(fd)
                loop.call_later(0.1, self._resume, listener)
                return
            src = _addr(peer)
            if fast:
                self._accepted(conn, src)
            else:
                self._spawn(self.handle(conn, src))
        self._batch = min(batch * 2, ACCEPT_BATCH)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = self.loop.create_task(coro)
        self._flows.add(task)
        task.add_done_callback(self._flows.discard)

    def _accepted(self, conn: socket.socket, src: tuple[str, int]) -> None:
        """The callback path: decide, and for a group whose node of choice has a fast path dial
        it with a CallbackDial (no task); everything else goes to `handle`."""
        try:
            conn.setblocking(False)  # TCP_NODELAY came with it from the listener
            dst = _addr(conn.getsockname())
        except OSError as exc:
            log.debug("tcp %s: gone before handling: %s", format_hostport(*src), exc)
            conn.close()
            return
        if dst[1] == self.port:  # maybe addressed to ourselves: handle() checks
            self._spawn(self.handle(conn, src, dst=dst, prepared=True))
            return
        try:
            route = self.router.route(tcp_flow(src, dst))
        except Exception:  # noqa: BLE001 - handle() asks again and logs the failure
            self._spawn(self.handle(conn, src, dst=dst, prepared=True))
            return
        if self.sniffing is not None and self.sniffing.wants(route.outbound):
            self._spawn(self.handle(conn, src, dst=dst, prepared=True, decided=route))
            return
        group = self._choosers.get(route.outbound)
        if group is not None and CallbackDial(self, conn, src, dst, group, route.why).start():
            return
        self._spawn(self.handle(conn, src, dst=dst, prepared=True, decided=route))

    def _resume(self, listener: socket.socket) -> None:
        if listener.fileno() >= 0 and listener in self._listeners:
            self.loop.add_reader(listener.fileno(), self._accept, listener)

    def _counters(self, name: str) -> tuple[Counters, Count, Count]:
        entry = self._counting.get(name)
        if entry is None:
            counters = self.stats[name]
            entry = self._counting[name] = (counters, counters.add_up, counters.add_down)
        return entry

    async def handle(self, conn: socket.socket, src: tuple[str, int], prefix: bytes = b"",
                     dst: tuple[str, int] | None = None, prepared: bool = False,
                     decided: Route | None = None) -> None:
        """Carry one accepted connection. `prefix`: bytes already read from the client.

        A plain TCP flow (splice on, the upstream a plain socket) is handed to a SplicedFlow
        once dialed and this coroutine returns: the established flow keeps no task."""
        if not prepared or dst is None:
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                if dst is None:
                    dst = _addr(conn.getsockname())
            except OSError as exc:
                log.debug("tcp %s: gone before handling: %s", format_hostport(*src), exc)
                conn.close()
                return
        if dst[1] == self.port and addressed_to_self(dst, self.port):
            self.stats.guards.self_addressed += 1
            log.warning("%s refused: addressed to the relay itself", Flow("tcp", src, dst))
            abort(conn)
            return
        if decided is not None:
            outbound_id, _rule, why = decided
        else:
            try:
                outbound_id, _rule, why = self.router.route(Flow("tcp", src, dst))
            except Exception as exc:  # noqa: BLE001 - a router bug must not kill the listener
                log.error("%s refused: router failed: %r", Flow("tcp", src, dst), exc)
                abort(conn)
                return
        target = Destination(dst[0], dst[1])
        if self.sniffing is not None and not prefix and self.sniffing.wants(outbound_id):
            sniffed = await self.sniffing.tcp(conn, Flow("tcp", src, dst), Route(outbound_id, _rule, why),
                                              self.router)
            if sniffed is None:
                abort(conn)
                return
            (outbound_id, _rule, why), prefix, target = sniffed.route, sniffed.prefix, sniffed.target
        outbound = self.outbounds.get(outbound_id)
        if outbound is None:
            log.error("%s refused: router chose unknown outbound id %d", Flow("tcp", src, dst),
                      outbound_id)
            abort(conn)
            return
        await self._continue(conn, src, dst, outbound, why, outbound.dial_tcp(target), prefix)

    def _refuse(self, conn: socket.socket, src: tuple[str, int], dst: tuple[str, int],
                outbound: str, exc: OutboundError) -> None:
        self.stats[outbound].refused += 1
        level = logging.INFO if isinstance(exc, Blocked) else logging.WARNING
        log.log(level, "%s via %s refused: %s", Flow("tcp", src, dst), outbound, exc)
        abort(conn)

    async def _continue(self, conn: socket.socket, src: tuple[str, int], dst: tuple[str, int],
                        outbound: Outbound | NodeChooser, why: str, dial: Awaitable[Dialed],
                        prefix: bytes = b"") -> None:
        """Await a dial, then relay or refuse. Any failure of the dial refuses the flow with a
        log line: an exception that is not an OutboundError (an outbound's bug, a socket error
        it let out) must neither kill the flow's task unlogged nor reach the loop."""
        try:
            dialed = await dial
        except OutboundError as exc:
            self._refuse(conn, src, dst, outbound.name, exc)
            return
        except OSError as exc:
            self._refuse(conn, src, dst, outbound.name, DialError(f"dial failed: {exc.strerror or exc}"))
            return
        except Exception as exc:  # noqa: BLE001 - an outbound's bug: logged, the flow refused
            log.error("%s via %s: the dial raised %r", Flow("tcp", src, dst), outbound.name, exc)
            self._refuse(conn, src, dst, outbound.name, DialError(f"dial failed: {exc!r}"))
            return
        except BaseException:
            abort(conn)
            raise
        await self._established(conn, src, dst, why, outbound.name, dialed, prefix)

    # --- what a CallbackDial reports (fastdial.DialOwner) -----------------------------------
    def dial_refused(self, dial: CallbackDial, exc: OutboundError) -> None:
        self._refuse(dial.conn, dial.src, dial.dst, dial.group.name, exc)

    def dial_continues(self, dial: CallbackDial, rest: Awaitable[Dialed]) -> None:
        self._spawn(self._continue(dial.conn, dial.src, dial.dst, dial.group, dial.why, rest))

    def dial_established(self, dial: CallbackDial, upstream: socket.socket, early: bytes) -> None:
        """The upstream is in the poller, armed for reading."""
        conn, src, dst, why, group, node = dial.conn, dial.src, dial.dst, dial.why, dial.group, dial.node
        assert node is not None
        if early:  # the target spoke first: the coroutine path sends that on
            stream = SocketStream(upstream, self.loop, in_poller=True)
            stream.unread(early)
            self._spawn(self._established(conn, src, dst, why, group.name, Dialed(stream, node), b""))
            return
        name = node.name
        if log.isEnabledFor(logging.INFO):
            log.info("tcp %s -> %s%s via %s node %s", format_hostport(*src),
                     format_hostport(*dst), why, group.name, name)
        counters, add_up, add_down = self._counters(group.name)
        counters.flows += 1
        counters.active += 1
        self._splice(conn, src, dst, group.name, name, counters, add_up, add_down, upstream, True, why)

    def _splice(self, conn: socket.socket, src: tuple[str, int], dst: tuple[str, int],
                outbound: str, node: str, counters: Counters, add_up: Count, add_down: Count,
                upstream: socket.socket, armed: bool, why: str = "") -> None:
        loop = self.loop or asyncio.get_running_loop()  # type: ignore[truthy-bool]  # None before start()
        tracker = self.tracker
        rec = None
        if tracker is not None:
            rec = tracker.open("tcp", src, dst, outbound, node, why)
            add_up, add_down = rec.counting(add_up, add_down)
        sweeper = self._sweeper
        if sweeper is None:
            sweeper = self._sweeper = IdleSweeper(loop, self.config.tcp_idle_timeout)
        tag: object = counters
        if log.isEnabledFor(logging.DEBUG):
            tag = (counters, f"tcp {format_hostport(*src)} -> {format_hostport(*dst)} via "
                             f"{outbound} node {node}")
        flow: SplicedFlow | SockmapFlow | None = None
        if self.sockmap is not None:  # the kernel moves the bytes, if it takes the pair
            kernel = SockmapFlow(loop, self.sockmap, conn, upstream, add_up, add_down, self._on_spliced_end,
                                 sweeper, tag)
            if kernel.join():
                flow = kernel
        if flow is None:
            flow = SplicedFlow(loop, conn, upstream, add_up, add_down, self._on_spliced_end, self.config.pipe_size,
                               sweeper, tag)
        if tracker is not None and rec is not None:
            tracker.bind(rec, flow)  # closed by flow.close()
        flow.start(armed)

    async def _established(self, conn: socket.socket, src: tuple[str, int],
                           dst: tuple[str, int], why: str, outbound: str, dialed: Dialed,
                           prefix: bytes) -> None:
        node = dialed.node.name if dialed.node else "-"
        if log.isEnabledFor(logging.INFO):
            log.info("tcp %s -> %s%s via %s node %s", format_hostport(*src),
                     format_hostport(*dst), why, outbound, node)
        counters, add_up, add_down = self._counters(outbound)
        counters.flows += 1
        counters.active += 1
        upstream = dialed.stream
        if self.config.splice and HAVE_SPLICE and type(upstream) is SocketStream:
            try:
                if prefix:
                    await upstream.sendall(prefix)
                    counters.bytes_up += len(prefix)
                early = upstream.take_pending()  # the target spoke first
                if early:
                    await SocketStream(conn).sendall(early)
                    counters.bytes_down += len(early)
            except OSError as exc:
                log.debug("tcp %s -> %s via %s node %s ended: %s", format_hostport(*src),
                          format_hostport(*dst), outbound, node, exc)
                counters.active -= 1
                abort(conn)
                upstream.abort()
                return
            except BaseException:
                counters.active -= 1
                abort(conn)
                upstream.abort()
                raise
            armed = upstream.hand_over_reader()  # the flow takes the registration over
            self._splice(conn, src, dst, outbound, node, counters, add_up, add_down,
                         upstream.sock, armed, why)
            return
        await self._carry(conn, upstream, prefix, Flow("tcp", src, dst), outbound, node,
                          counters, why)

    def _spliced_ended(self, flow: SplicedFlow | SockmapFlow, outcome: object) -> None:
        if self.tracker is not None:
            self.tracker.ended_key(flow)
        tag = flow.tag
        if type(tag) is tuple:
            counters, what = tag
            if isinstance(outcome, BaseException):
                text = f"error: {outcome}"
            elif outcome == "idle":
                text = f"idle for {self.config.tcp_idle_timeout:g}s"
            else:
                text = str(outcome)
            log.debug("%s ended: %s (%s)", what, text, "sockmap" if type(flow) is SockmapFlow else "splice")
        else:
            counters = tag
        counters.active -= 1

    async def _carry(self, conn: socket.socket, upstream: Stream, prefix: bytes, flow: Flow,
                     outbound: str, node: str, counters: Counters, why: str = "") -> None:
        """The flows a SplicedFlow does not take (copy mode, TLS upstreams): two tasks."""
        client = SocketStream(conn)
        dialed_stream = upstream
        count_up: Count = counters.add_up
        count_down: Count = counters.add_down
        rec = None
        if self.tracker is not None:
            rec = self.tracker.open("tcp", flow.src, flow.dst, outbound, node, why)
            count_up, count_down = rec.counting(count_up, count_down)
            task = asyncio.current_task()
            if task is not None:
                self.tracker.bind(rec, rec, task.cancel)
        try:
            if prefix:
                await dialed_stream.sendall(prefix)
                counters.bytes_up += len(prefix)
            outcome = await relay(client, dialed_stream,
                                  idle_timeout=self.config.tcp_idle_timeout,
                                  count_up=count_up, count_down=count_down)
            log.debug("%s via %s node %s ended: %s", flow, outbound, node, outcome)
        except OSError as exc:
            log.debug("%s via %s node %s ended: %s", flow, outbound, node, exc)
            client.abort()
            dialed_stream.abort()
        finally:
            counters.active -= 1
            if rec is not None and self.tracker is not None:
                self.tracker.ended_key(rec)
            client.close()
            dialed_stream.close()

    async def close(self) -> None:
        for sock in self._listeners:
            try:
                self.loop.remove_reader(sock.fileno())
            except (AttributeError, RuntimeError, ValueError, OSError):
                pass
            sock.close()
        self._listeners.clear()
        for dial in list(self.dialing):
            dial.close()
        flows = list(self._flows)
        for task in flows:
            task.cancel()
        await asyncio.gather(*flows, return_exceptions=True)
        if self._sweeper is not None:
            self._sweeper.close()
        if self.sockmap is not None:
            self.sockmap.close()
            self.sockmap = None
        if self.pools is not None:
            self.pools.close()
            await self.pools.wait_closed()
