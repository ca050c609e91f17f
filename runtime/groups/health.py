"""Health checks through each node: an HTTP request to tcp_check_url, a DNS query to
udp_check_dns (over the node's UDP when it carries UDP: SOCKS5 UDP ASSOCIATE, Shadowsocks,
Trojan, VMess, VLESS, and chains whose last hop is one of the last three; over TCP through
CONNECT for the others: http(s) nodes, chains ending in socks5/ss/http).
"""
from __future__ import annotations

import asyncio
import logging
import re
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

import dns.message
import dns.rdatatype

from dae_py.runtime.net.stream import Stream, TlsStream, read_exact, read_until
from dae_py.runtime.net.tls import client_context
from dae_py.runtime.proxy import Destination, DialOptions, Node, OutboundError, dial_tcp, open_udp

from .spec import CheckSpec, GroupSpec
from .stats import Check, NodeStats

log = logging.getLogger(__name__)

Probe = Callable[[Node, CheckSpec, DialOptions], Awaitable[None]]
_STATUS = re.compile(rb"HTTP/\d(?:\.\d)? (\d{3})")


class CheckFailed(Exception):
    """A check reached something that did not answer as expected."""


async def http_probe(node: Node, spec: CheckSpec, opts: DialOptions) -> None:
    """`tcp_check_http_method` on `tcp_check_url` through `node`; a status < 500 passes."""
    url = urlsplit(spec.tcp_check_url)
    assert url.hostname
    port = url.port or (443 if url.scheme == "https" else 80)
    path = (url.path or "/") + (f"?{url.query}" if url.query else "")
    host_header = url.netloc.rpartition("@")[2]
    request = (f"{spec.tcp_check_http_method} {path} HTTP/1.1\r\nHost: {host_header}\r\n"
               f"User-Agent: dae-py-check\r\nAccept: */*\r\nConnection: close\r\n\r\n").encode()
    last: Exception | None = None
    for target in spec.tcp_check_ips or (url.hostname,):
        try:
            stream: Stream = await dial_tcp(node, Destination(target, port), opts)
        except OutboundError as exc:
            last = exc
            continue
        try:
            if url.scheme == "https":
                stream = await TlsStream.wrap(stream, client_context(False), url.hostname, node)
            await stream.sendall(request)
            line = await read_until(stream, b"\r\n", 8192, node, "the check URL's status line")
        except (OutboundError, OSError) as exc:
            last = exc
            continue
        finally:
            stream.close()
        match = _STATUS.match(line)
        if not match:
            raise CheckFailed(f"{spec.tcp_check_url}: malformed status line {line[:80]!r}")
        if int(match.group(1)) >= 500:
            raise CheckFailed(f"{spec.tcp_check_url} answered {line.strip().decode('latin-1')}")
        return
    assert last is not None
    raise last


async def dns_probe(node: Node, spec: CheckSpec, opts: DialOptions) -> None:
    """One DNS query to `udp_check_dns` through `node`; any well-formed answer passes."""
    query = dns.message.make_query(spec.dns_qname, dns.rdatatype.NS)
    wire = query.to_wire()
    targets = spec.dns_ips or (spec.dns_host,)
    if node.supports_udp:
        await _dns_over_udp(node, opts, query, wire, targets, spec.dns_port)
        return
    last: Exception | None = None
    for target in targets:
        try:
            stream = await dial_tcp(node, Destination(target, spec.dns_port), opts)
        except OutboundError as exc:
            last = exc
            continue
        try:
            await stream.sendall(struct.pack("!H", len(wire)) + wire)
            (size,) = struct.unpack("!H", await read_exact(stream, 2, node, "the DNS length"))
            answer = dns.message.from_wire(await read_exact(stream, size, node, "the DNS answer"))
        except (OutboundError, OSError, dns.exception.DNSException) as exc:
            last = exc
            continue
        finally:
            stream.close()
        if not query.is_response(answer):
            raise CheckFailed(f"DNS answer from {target} does not match the query")
        return
    assert last is not None
    raise last


async def _dns_over_udp(node: Node, opts: DialOptions, query: dns.message.Message, wire: bytes,
                        targets: tuple[str, ...], port: int) -> None:
    loop = asyncio.get_running_loop()
    answered: asyncio.Future[None] = loop.create_future()

    def on_reply(data: bytes, src: tuple[str, int]) -> None:
        try:
            ok = query.is_response(dns.message.from_wire(data))
        except dns.exception.DNSException:
            ok = False
        if ok and not answered.done():
            answered.set_result(None)

    assoc = await open_udp(node, opts, on_reply)

    def on_close(_assoc: object) -> None:  # the node ended the association (trojan: a wrong password)
        if not answered.done():
            answered.set_exception(CheckFailed("the node ended the UDP association before an answer"))

    assoc.on_close.append(on_close)
    try:
        while True:  # resend each second until the caller's timeout
            for target in targets:
                assoc.send(wire, Destination(target, port))
            try:
                await asyncio.wait_for(asyncio.shield(answered), 1.0)
                return
            except TimeoutError:
                continue
    finally:
        assoc.on_close.remove(on_close)  # our own close is no failure to report
        assoc.close()


class Checked(Protocol):
    """What a HealthChecker needs of its group (a `Group`): its nodes, settings and stats, and
    where results go. A protocol, so that this module does not import the group's."""

    spec: GroupSpec
    nodes: tuple[Node, ...]
    opts: DialOptions
    stats: dict[Check, dict[str, NodeStats]]

    def record(self, node: Node, kind: Check, latency: float | None,
               error: str | None = None) -> None: ...


class HealthChecker:
    """Runs both checks on every node of a group each `interval`, feeding `group.record`.

    `clock` measures latencies and the probes are injectable, so tests can run a check with
    made-up latencies and no network."""

    DOWN_RETRY = 1.0

    def __init__(self, group: Checked, *, clock: Callable[[], float] = time.monotonic,
                 tcp_probe: Probe = http_probe, dns_probe: Probe = dns_probe) -> None:
        self.group = group
        self.clock = clock
        self.tcp_probe = tcp_probe
        self.dns_probe = dns_probe
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._last_poke = -1e9
        self._down_wait = self.DOWN_RETRY
        self.rounds = 0

    async def _measure(self, node: Node, kind: Check, probe: Probe) -> None:
        spec = self.group.spec.check
        started = self.clock()
        try:
            await asyncio.wait_for(probe(node, spec, self.group.opts), spec.timeout)
        except TimeoutError:
            self.group.record(node, kind, None, f"{kind.value} check timed out after "
                                                f"{spec.timeout:g}s")
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - any failure marks the node down, with why
            self.group.record(node, kind, None, f"{kind.value} check failed: {exc}")
        else:
            self.group.record(node, kind, self.clock() - started)

    async def check_node(self, node: Node) -> None:
        """Both checks of one node, one after the other."""
        await self._measure(node, Check.TCP, self.tcp_probe)
        await self._measure(node, Check.UDP if node.supports_udp else Check.DNS_TCP,
                            self.dns_probe)

    async def check_all(self) -> None:
        """Every node, concurrently."""
        await asyncio.gather(*(self.check_node(node) for node in self.group.nodes))
        self.rounds += 1

    def next_wait(self) -> float:
        """Seconds until the next round: `check_interval` while every node is alive; while one
        is down, DOWN_RETRY doubling up to the interval, so a check that failed once (a peer still
        starting, a loaded host) does not keep the node out for a whole interval."""
        interval = self.group.spec.check.interval
        down = any(not s.alive for per_kind in self.group.stats.values() for s in per_kind.values())
        if not down:
            self._down_wait = self.DOWN_RETRY
            return interval
        wait, self._down_wait = self._down_wait, min(self._down_wait * 2, interval)
        return min(wait, interval)

    async def run(self) -> None:
        while True:
            await self.check_all()
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), self.next_wait())
            except TimeoutError:
                pass

    def poke(self, min_gap: float = 5.0) -> None:
        """Check again soon (all nodes down); at most once per `min_gap` seconds."""
        now = time.monotonic()
        if now - self._last_poke >= min_gap:
            self._last_poke = now
            self._wake.set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self.run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
