"""The TCP tproxy listener: accept, ask the Router, dial the outbound, relay.

Flows arrive on IP_TRANSPARENT listeners (bpf_sk_assign or an nftables tproxy rule); the
original destination is the accepted socket's own address."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket

from runtime.outbound import Destination, OutboundError
from runtime.outbound.base import Blocked, format_hostport
from runtime.outbound.sockets import abort
from runtime.outbound.stream import SocketStream

from .flow import Flow, RelayConfig, Router, reason
from .listen import bind_pair
from .outbounds import OutboundTable
from .pump import Reader, relay
from .stats import RelayStats

log = logging.getLogger(__name__)


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
        self._accepting: list[asyncio.Task[None]] = []
        self._flows: set[asyncio.Task[None]] = set()

    async def start(self, port: int = 0, hosts: tuple[str, ...] = ("0.0.0.0", "::")) -> int:
        """Listen on `port` on every host; returns the port."""
        self._listeners = bind_pair(socket.SOCK_STREAM, hosts, port, so_mark=self.config.so_mark)
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            sock.listen(self.config.listen_backlog)
            self._accepting.append(loop.create_task(self._accept_loop(sock)))
        self.port = self._listeners[0].getsockname()[1]
        log.info("tcp relay listening on port %d (%s)", self.port, ", ".join(hosts))
        return self.port

    async def _accept_loop(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        ready = Reader(loop, listener.fileno())  # registered once, not per wait
        try:
            await self._accept_with(listener, ready)
        finally:
            ready.close()

    async def _accept_with(self, listener: socket.socket, ready: Reader) -> None:
        loop = ready.loop
        while True:
            try:
                conn, peer = listener.accept()
            except (BlockingIOError, InterruptedError):
                await ready.wait()
                continue
            except OSError as exc:  # EMFILE and friends: log, breathe, go on
                log.error("tcp accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self.handle(conn, _addr(peer)))
            self._flows.add(task)
            task.add_done_callback(self._flows.discard)

    def _loops_back(self, dst: tuple[str, int]) -> bool:
        """A flow addressed to our own listener (a local address, our port) would dial itself
        forever. Only flows to our port pay for the check."""
        if dst[1] != self.port:
            return False
        ip = ipaddress.ip_address(dst[0])
        if ip.is_loopback:
            return True
        probe = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                              socket.SOCK_DGRAM)
        try:
            probe.bind((dst[0], 0))  # succeeds only for a local address (no IP_TRANSPARENT)
        except OSError:
            return False
        finally:
            probe.close()
        return True

    async def handle(self, conn: socket.socket, src: tuple[str, int], prefix: bytes = b"",
                     dst: tuple[str, int] | None = None) -> None:
        """Carry one accepted connection. `prefix`: bytes already read from the client."""
        conn.setblocking(False)
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            flow = Flow("tcp", src, dst or _addr(conn.getsockname()))
        except OSError as exc:
            log.debug("tcp %s: gone before handling: %s", format_hostport(*src), exc)
            conn.close()
            return
        if self._loops_back(flow.dst):
            log.warning("%s refused: addressed to the relay itself", flow)
            abort(conn)
            return
        try:
            outbound_id = self.router.decide(flow)
        except Exception as exc:  # noqa: BLE001 - a router bug must not kill the listener
            log.error("%s refused: router failed: %r", flow, exc)
            abort(conn)
            return
        outbound = self.outbounds.get(outbound_id)
        if outbound is None:
            log.error("%s refused: router chose unknown outbound id %d", flow, outbound_id)
            abort(conn)
            return
        counters = self.stats[outbound.name]
        try:
            dialed = await outbound.dial_tcp(Destination(*flow.dst))
        except OutboundError as exc:
            counters.refused += 1
            level = logging.INFO if isinstance(exc, Blocked) else logging.WARNING
            log.log(level, "%s via %s refused: %s", flow, outbound.name, exc)
            abort(conn)
            return
        except BaseException:
            abort(conn)
            raise
        node = dialed.node.name if dialed.node else "-"
        log.info("%s%s via %s node %s", flow, reason(self.router, flow), outbound.name, node)
        counters.flows += 1
        counters.active += 1
        client = SocketStream(conn)
        try:
            if prefix:
                await dialed.stream.sendall(prefix)
                counters.bytes_up += len(prefix)

            def up(n: int) -> None:
                counters.bytes_up += n

            def down(n: int) -> None:
                counters.bytes_down += n

            outcome = await relay(client, dialed.stream, use_splice=self.config.splice,
                                  idle_timeout=self.config.tcp_idle_timeout, count_up=up,
                                  count_down=down, pipe_size=self.config.pipe_size)
            log.debug("%s via %s node %s ended: %s", flow, outbound.name, node, outcome)
        except OSError as exc:
            log.debug("%s via %s node %s ended: %s", flow, outbound.name, node, exc)
            client.abort()
            dialed.stream.abort()
        finally:
            counters.active -= 1
            client.close()
            dialed.stream.close()

    async def close(self) -> None:
        for task in self._accepting:
            task.cancel()
        await asyncio.gather(*self._accepting, return_exceptions=True)
        self._accepting.clear()
        for sock in self._listeners:
            sock.close()
        self._listeners.clear()
        flows = list(self._flows)
        for task in flows:
            task.cancel()
        await asyncio.gather(*flows, return_exceptions=True)
