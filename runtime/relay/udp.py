"""The UDP tproxy listener: full-cone NAT per client source.

Datagrams arrive on IP_TRANSPARENT sockets; IP_RECVORIGDSTADDR / IPV6_RECVORIGDSTADDR give
each one's original destination. Each (client, destination) pair is routed once; a client gets
one upstream association per outbound it uses (so a source routed both direct and through a
group keeps a stable mapping on each path), kept until the client is idle. Replies, from any
remote, go back from a transparent socket bound to the remote's address (so_mark set), cached
per remote address with the same expiry.

Bounds (docs/hardening.md): a datagram addressed to the relay's own port is refused (relayed,
it would come back to us on a new socket, without end); reply sockets are bounded per client
(`udp_reply_sockets_per_client` distinct remotes at a time) and in total
(`udp_reply_sockets`, at most a quarter of RLIMIT_NOFILE): a reply that needs one more is
dropped, counted (stats.guards.udp_reply_limited and the outbound's `dropped`) and logged once
per client. Client entries (each with its upstream associations) are bounded per source IP
(`udp_clients_per_ip`) and in total (`udp_clients`, at most an eighth of RLIMIT_NOFILE): a new
client past a bound takes the place of that source IP's least recently used entry if it has
been idle for `udp_client_evict_idle`, else its datagram is dropped, counted
(stats.guards.udp_client_limited) and logged at most once per source IP every LOG_EVERY
seconds."""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import socket
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from dae_py.runtime.net.sockets import IP_ORIGDSTADDR, IPV6_ORIGDSTADDR, SOL_IPV6
from dae_py.runtime.proxy import AllNodesDown, Blocked, Destination, OutboundError, UdpAssociation
from dae_py.runtime.proxy.base import format_hostport
from dae_py.runtime.sniff.dialmode import QuicHold, Sniffing

from .flow import Addr, Flow, RelayConfig, Route, Router
from .listen import addressed_to_self, bind_pair, transparent_socket
from .outbounds import OutboundTable
from .stats import RelayStats
from .track import ConnTracker, Tracked

log = logging.getLogger(__name__)

ANC_SIZE = socket.CMSG_SPACE(28)
QUEUE_LIMIT = 64
RETRY_AFTER = 1.0  # a failed association (all nodes down) is retried no sooner than this
LOG_EVERY = 10.0  # seconds between two log lines about the same kind of refused datagrams


def orig_dst(ancdata: list[tuple[int, int, bytes]]) -> Addr | None:
    for level, kind, data in ancdata:
        if level == socket.SOL_IP and kind == IP_ORIGDSTADDR and len(data) >= 8:
            return socket.inet_ntop(socket.AF_INET, data[4:8]), int.from_bytes(data[2:4], "big")
        if level == SOL_IPV6 and kind == IPV6_ORIGDSTADDR and len(data) >= 24:
            return socket.inet_ntop(socket.AF_INET6, data[8:24]), int.from_bytes(data[2:4], "big")
    return None


@dataclass
class _Assoc:
    outbound: str
    assoc: UdpAssociation | None = None
    queue: list[tuple[bytes, Addr]] = field(default_factory=list)
    failed_until: float = 0.0
    task: asyncio.Task[None] | None = None
    unlogged: list[Addr] = field(default_factory=list)
    rec: Tracked | None = None  # with a tracker: the association as /connections lists it


@dataclass
class _Client:
    src: Addr
    family: int
    last: float
    routes: dict[Addr, Route] = field(default_factory=dict)  # by destination
    assocs: dict[int, _Assoc] = field(default_factory=dict)
    remotes: set[Addr] = field(default_factory=set)  # reply sockets it uses
    limited: bool = False  # a reply past the bound was dropped (and logged)


@dataclass
class _ReplySocket:
    sock: socket.socket
    last: float


@dataclass
class _Throttle:
    """One log line per LOG_EVERY seconds about one kind of refusal: whoever sends what we
    refuse may send a lot of it, and a log line per datagram would be a flood of its own."""

    logged: float = -LOG_EVERY
    unlogged: int = 0

    def due(self, now: float) -> str | None:
        """Count one refusal; when a line is due, the suffix it carries (what was left
        unlogged since the last line), else None."""
        self.unlogged += 1
        if now - self.logged < LOG_EVERY:
            return None
        more = (f" (+{self.unlogged - 1} more since the last report)"
                if self.unlogged > 1 else "")
        self.logged, self.unlogged = now, 0
        return more


def fd_share(configured: int, divisor: int) -> int:
    """A total bound: as configured, but never more than 1/`divisor` of the process's file
    descriptors, so one kind of UDP state cannot starve the listeners and the TCP flows."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return configured
    return max(1, min(configured, soft // divisor))


def reply_socket_limit(configured: int) -> int:
    """Reply sockets (one descriptor each): at most a quarter of the descriptors."""
    return fd_share(configured, 4)


def client_limit(configured: int) -> int:
    """Client entries: at most an eighth of the descriptors, since a proxied association
    holds two (SOCKS5: the TCP control connection and the UDP socket), so associations, too,
    take at most a quarter (per outbound a client uses)."""
    return fd_share(configured, 8)


class UdpRelay:
    def __init__(self, router: Router, outbounds: OutboundTable,
                 config: RelayConfig = RelayConfig(), stats: RelayStats | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.router = router
        self.outbounds = outbounds
        self.config = config
        self.stats = stats or RelayStats()
        self._clock = clock
        self.port = 0
        self._listeners: list[socket.socket] = []
        self.clients: dict[Addr, _Client] = {}
        # the same clients per source IP, least recently used first (touching moves to the end)
        self._by_ip: dict[str, OrderedDict[Addr, _Client]] = {}
        self.client_limit = client_limit(config.udp_clients)
        self.tracker: ConnTracker | None = None  # set by the controller: live associations, closable
        self._client_throttles: dict[str, _Throttle] = {}  # per source IP, "" for the total
        self.reply_sockets: dict[Addr, _ReplySocket] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._guard_fd: int | None = None
        self.reply_socket_limit = reply_socket_limit(config.udp_reply_sockets)
        self._self_throttle = _Throttle()
        # dial_mode domain++: QUIC Initials held until their SNI re-routes the flow
        self.quic = QuicHold.for_sniffing(Sniffing.for_settings(config.dial_mode, config.sniffing_timeout),
                                          router, self._sniffed)

    def swap(self, router: Router, outbounds: OutboundTable) -> None:
        """Reload: new associations are routed and opened with these; open ones keep theirs."""
        self.router = router
        self.outbounds = outbounds
        if self.quic is not None:
            self.quic.router = router

    def now(self) -> float:
        return self._clock() if self._clock else asyncio.get_running_loop().time()

    async def start(self, port: int = 0, hosts: tuple[str, ...] = ("0.0.0.0", "::"),
                    guard_fd: int | None = None) -> int:
        """`guard_fd`: the program's tproxy_guard socket filter, for the listeners and the
        reply sockets (they read client datagrams too)."""
        self._guard_fd = guard_fd
        self._listeners = bind_pair(socket.SOCK_DGRAM, hosts, port, so_mark=self.config.so_mark,
                                    recv_orig_dst=True, guard_fd=guard_fd)
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.add_reader(sock.fileno(), self._readable, sock)
        self.port = self._listeners[0].getsockname()[1]
        self._sweeper = loop.create_task(self._sweep_loop())
        log.info("udp relay listening on port %d (%s)", self.port, ", ".join(hosts))
        return self.port

    # --- client -> upstream ----------------------------------------------------------------
    def _readable(self, sock: socket.socket) -> None:
        for _ in range(256):
            try:
                data, anc, _flags, src = sock.recvmsg(65535, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("udp receive failed: %s", exc)
                return
            dst = orig_dst(anc)
            if dst is None:  # a reply socket (bound to one address) also reads here
                dst = sock.getsockname()[:2]
            self.handle_packet(data, (src[0], src[1]), dst, sock.family)

    def handle_packet(self, data: bytes, src: Addr, dst: Addr, family: int) -> None:
        """One datagram from `src` to its original destination `dst`."""
        now = self.now()
        client = self.clients.get(src)
        route = client.routes.get(dst) if client is not None else None
        if route is None and dst[1] == self.port and addressed_to_self(dst, self.port):
            self._refuse_self(src, dst, now)
            return
        if client is None:
            client = self._admit(src, dst, family, now)
            if client is None:
                return
        self._touch(client, now)
        if route is None:
            flow = Flow("udp", src, dst)
            quic = self.quic
            if quic is not None and quic.holding(flow, data):
                return
            try:
                route = self.router.route(flow)
            except Exception as exc:  # noqa: BLE001 - a router bug must not kill the listener
                log.error("%s dropped: router failed: %r", flow, exc)
                return
            if quic is not None and quic.hold(flow, route, data, family):
                return
            client.routes[dst] = route
            fresh = True
        else:
            fresh = False
        outbound_id = route.outbound
        outbound = self.outbounds.get(outbound_id)
        if outbound is None:
            if fresh:
                log.error("%s dropped: router chose unknown outbound id %d",
                          Flow("udp", src, dst), outbound_id)
            return
        counters = self.stats[outbound.name]
        if fresh:
            counters.flows += 1
        state = client.assocs.get(outbound_id)
        if state is None or (state.assoc is None and state.task is None
                             and now >= state.failed_until):
            state = client.assocs[outbound_id] = _Assoc(outbound.name)
            state.task = asyncio.get_running_loop().create_task(
                self._open(client, outbound_id, state))
            fresh = True  # a new association (first or retry): log its route once it opens
        if fresh:
            if state.assoc is not None:
                self._log_route(client, dst, outbound.name, state.assoc)
            elif state.task is not None:
                state.unlogged.append(dst)  # logged once the association is up (or refused)
        if state.assoc is not None:
            state.assoc.send(data, Destination(*dst))
            counters.bytes_up += len(data)
            if state.rec is not None:
                state.rec.upload += len(data)
        elif state.task is not None and len(state.queue) < QUEUE_LIMIT:
            state.queue.append((data, dst))
        else:
            counters.dropped += 1

    def _sniffed(self, src: Addr, dst: Addr, family: int, route: Route, datagrams: list[bytes]) -> None:
        """QuicHold's answer: the flow's route (maybe re-routed by its SNI); its datagrams go on."""
        client = self.clients.get(src)
        if client is None:  # evicted while held
            return
        client.routes[dst] = route
        outbound = self.outbounds.get(route.outbound)
        if outbound is not None:
            self.stats[outbound.name].flows += 1  # (handle_packet counts only flows it routes)
        for data in datagrams:
            self.handle_packet(data, src, dst, family)

    def _refuse_self(self, src: Addr, dst: Addr, now: float) -> None:
        """A datagram whose original destination is our own port on a local address (a rule
        proxied it there, or no guard keeps such datagrams off the listener): relayed, it would
        come back to us from a new socket, hop after hop. Dropped before it costs a client
        entry or a socket; one log line per LOG_EVERY seconds at most, since whoever sends
        these may send many."""
        self.stats.guards.self_addressed += 1
        more = self._self_throttle.due(now)
        if more is not None:
            log.warning("%s refused: addressed to the relay itself%s", Flow("udp", src, dst), more)

    def _admit(self, src: Addr, dst: Addr, family: int, now: float) -> _Client | None:
        """A client entry for a new source address and port, within the bounds: per source IP
        and in total. Past one, the source IP's least recently used entry makes room if it has
        been idle for udp_client_evict_idle (a finished exchange, e.g. a DNS query, whose
        entry would otherwise wait for udp_idle_timeout); if none is, the datagram is dropped:
        evicting a busy flow would break it for a newcomer, and entries of other source IPs
        are never touched."""
        ip = src[0]
        peers = self._by_ip.get(ip)
        per_ip = self.config.udp_clients_per_ip
        mine = len(peers) if peers is not None else 0
        if mine >= per_ip or len(self.clients) >= self.client_limit:
            oldest = next(iter(peers.values())) if peers else None
            if oldest is None or now - oldest.last < self.config.udp_client_evict_idle:
                self._refuse_client(src, dst, now, mine >= per_ip)
                return None
            self._forget(oldest)
            self._close_client(oldest)
            self.stats.guards.udp_client_evicted += 1  # counted, not logged: a spray evicts many
            peers = self._by_ip.get(ip)
        client = self.clients[src] = _Client(src, family, now)
        if peers is None:
            peers = self._by_ip[ip] = OrderedDict()
        peers[src] = client
        return client

    def _refuse_client(self, src: Addr, dst: Addr, now: float, per_ip: bool) -> None:
        """Counted always; logged once per LOG_EVERY per source IP past its own bound (the
        total bound's refusals share one line: its sources may be countless)."""
        self.stats.guards.udp_client_limited += 1
        key = src[0] if per_ip else ""
        throttle = self._client_throttles.get(key)
        if throttle is None:
            throttle = self._client_throttles[key] = _Throttle()
        more = throttle.due(now)
        if more is None:
            return
        which = (f"{self.config.udp_clients_per_ip} clients (source ports) for {src[0]}"
                 if per_ip else f"{self.client_limit} clients in all")
        log.warning("%s dropped: at the bound of %s, none idle%s; further datagrams past it "
                    "are counted, logged again in %.0fs at the earliest", Flow("udp", src, dst),
                    which, more, LOG_EVERY)

    def _touch(self, client: _Client, now: float) -> None:
        """`client` is in use: its idle time restarts, and it becomes the last of its source
        IP's entries to be evicted (if it is still an entry: a reply may come for one that
        expired)."""
        client.last = now
        peers = self._by_ip.get(client.src[0])
        if peers is not None and peers.get(client.src) is client:
            peers.move_to_end(client.src)

    def _forget(self, client: _Client) -> None:
        """Remove `client` from the tables (the caller closes what it holds)."""
        if self.clients.get(client.src) is client:
            del self.clients[client.src]
        peers = self._by_ip.get(client.src[0])
        if peers is not None and peers.get(client.src) is client:
            del peers[client.src]
            if not peers:
                del self._by_ip[client.src[0]]

    def _log_route(self, client: _Client, dst: Addr, outbound: str,
                   assoc: UdpAssociation) -> None:
        node = assoc.node.name if assoc.node else "-"
        route = client.routes.get(dst)
        log.info("%s%s via %s node %s", Flow("udp", client.src, dst), route.why if route else "",
                 outbound, node)

    async def _open(self, client: _Client, outbound_id: int, state: _Assoc) -> None:
        outbound = self.outbounds.get(outbound_id)
        assert outbound is not None
        counters = self.stats[outbound.name]
        src = client.src

        def on_reply(data: bytes, remote: tuple[str, int]) -> None:
            if self._reply(client, remote, data, outbound.name) and state.rec is not None:
                state.rec.download += len(data)

        try:
            assoc = await outbound.open_udp(client.family, on_reply)
        except OutboundError as exc:
            level = logging.INFO if isinstance(exc, Blocked) else logging.WARNING
            first = state.unlogged[0] if state.unlogged else ("?", 0)
            more = (f" (+{len(state.unlogged) - 1} more destinations)"
                    if len(state.unlogged) > 1 else "")
            log.log(level, "%s via %s refused%s: %s", Flow("udp", src, first), outbound.name,
                    more, exc)
            counters.refused += 1
            counters.dropped += len(state.queue)
            state.queue.clear()
            state.unlogged.clear()
            state.task = None
            state.failed_until = self.now() + (RETRY_AFTER if isinstance(exc, AllNodesDown)
                                               else self.config.udp_idle_timeout)
            return
        except Exception as exc:  # e.g. EMFILE for a direct socket
            if isinstance(exc, OSError):
                log.warning("udp %s: opening an association via %s failed: %s",
                            format_hostport(*src), outbound.name, exc.strerror or exc)
            else:
                log.exception("udp %s: opening an association via %s failed",
                              format_hostport(*src), outbound.name)
            counters.dropped += len(state.queue)
            state.queue.clear()
            state.unlogged.clear()
            state.task = None
            state.failed_until = self.now() + RETRY_AFTER
            return
        if self.clients.get(src) is not client or client.assocs.get(outbound_id) is not state:
            assoc.close()  # the client expired meanwhile
            return
        state.assoc = assoc
        state.task = None
        counters.active += 1
        tracker = self.tracker
        if tracker is not None:
            first = state.unlogged[0] if state.unlogged else next(iter(client.routes), ("-", 0))
            route = client.routes.get(first)
            state.rec = tracker.open("udp", src, first, outbound.name, assoc.node.name if assoc.node else "-",
                                     route.why if route else "")
            tracker.bind(state.rec, state, assoc.close)

        def closed(_assoc: object) -> None:
            counters.active -= 1
            if tracker is not None:
                tracker.ended_key(state)
            if client.assocs.get(outbound_id) is state:
                del client.assocs[outbound_id]

        assoc.on_close.append(closed)
        for dst in state.unlogged:
            self._log_route(client, dst, outbound.name, assoc)
        state.unlogged.clear()
        for data, dst in state.queue:
            assoc.send(data, Destination(*dst))
            counters.bytes_up += len(data)
            if state.rec is not None:
                state.rec.upload += len(data)
        state.queue.clear()

    # --- upstream -> client ----------------------------------------------------------------
    def _reply(self, client: _Client, remote: tuple[str, int], data: bytes, outbound: str) -> bool:
        """Send one reply to the client; False when it was dropped."""
        counters = self.stats[outbound]
        try:
            ip = ipaddress.ip_address(remote[0])
        except ValueError:
            counters.dropped += 1
            log.debug("udp reply from a name (%s) to %s dropped", remote[0],
                      format_hostport(*client.src))
            return False
        if client.family == socket.AF_INET and ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if (ip.version == 6) != (client.family == socket.AF_INET6):
            counters.dropped += 1
            return False
        now = self.now()
        self._touch(client, now)
        key = (str(ip), remote[1])
        entry = self.reply_sockets.get(key)
        if key not in client.remotes and self._over_bound(client, key, entry is None, outbound):
            counters.dropped += 1
            return False
        if entry is None:
            try:
                sock = transparent_socket(socket.SOCK_DGRAM, key[0], key[1],
                                          so_mark=self.config.so_mark, recv_orig_dst=True,
                                          guard_fd=self._guard_fd)
            except OSError as exc:
                counters.dropped += 1
                log.warning("udp reply from %s to %s dropped: cannot bind a transparent "
                            "socket there: %s", format_hostport(*key),
                            format_hostport(*client.src), exc)
                return False
            asyncio.get_running_loop().add_reader(sock.fileno(), self._readable, sock)
            entry = self.reply_sockets[key] = _ReplySocket(sock, now)
        client.remotes.add(key)
        entry.last = now
        try:
            entry.sock.sendto(data, client.src)
        except OSError as exc:
            counters.dropped += 1
            log.debug("udp reply to %s failed: %s", format_hostport(*client.src), exc)
            return False
        counters.bytes_down += len(data)
        return True

    def _over_bound(self, client: _Client, key: Addr, new_socket: bool, outbound: str) -> bool:
        """Would a reply from `key` take `client` past its bound, or the relay past its own
        (only when it needs a new socket)? Counted, and logged once per client."""
        per_client = self.config.udp_reply_sockets_per_client
        if len(client.remotes) < per_client and not (
                new_socket and len(self.reply_sockets) >= self.reply_socket_limit):
            return False
        self.stats.guards.udp_reply_limited += 1
        if not client.limited:
            client.limited = True
            which = (f"{per_client} remotes for this client" if len(client.remotes) >= per_client
                     else f"{self.reply_socket_limit} reply sockets in all")
            log.warning("udp reply from %s to %s via %s dropped: at the bound of %s; further "
                        "replies past it are dropped silently (counted)", format_hostport(*key),
                        format_hostport(*client.src), outbound, which)
        return True

    # --- expiry ----------------------------------------------------------------------------
    def sweep(self, now: float | None = None) -> None:
        """End clients and reply sockets idle for longer than udp_idle_timeout."""
        now = self.now() if now is None else now
        limit = self.config.udp_idle_timeout
        for client in list(self.clients.values()):
            if now - client.last >= limit:
                self._forget(client)
                self._close_client(client)
        for key, throttle in list(self._client_throttles.items()):
            if now - throttle.logged >= LOG_EVERY:
                del self._client_throttles[key]  # what it left unlogged is in the stats
        closed = set()
        for addr, entry in list(self.reply_sockets.items()):
            if now - entry.last >= limit:
                del self.reply_sockets[addr]
                self._close_socket(entry.sock)
                closed.add(addr)
        if closed:
            for client in self.clients.values():
                client.remotes -= closed

    def _close_client(self, client: _Client) -> None:
        for state in list(client.assocs.values()):
            if state.task is not None:
                state.task.cancel()
            if state.assoc is not None:
                state.assoc.close()
        client.assocs.clear()

    @staticmethod
    def _close_socket(sock: socket.socket) -> None:
        try:
            asyncio.get_running_loop().remove_reader(sock.fileno())
        except (RuntimeError, ValueError):
            pass
        sock.close()

    async def _sweep_loop(self) -> None:
        period = max(0.05, min(5.0, self.config.udp_idle_timeout / 4))
        while True:
            await asyncio.sleep(period)
            self.sweep()

    async def close(self) -> None:
        if self.quic is not None:
            self.quic.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
            await asyncio.gather(self._sweeper, return_exceptions=True)
        for sock in self._listeners:
            self._close_socket(sock)
        self._listeners.clear()
        for client in self.clients.values():
            self._close_client(client)
        self.clients.clear()
        self._by_ip.clear()
        for entry in self.reply_sockets.values():
            self._close_socket(entry.sock)
        self.reply_sockets.clear()
