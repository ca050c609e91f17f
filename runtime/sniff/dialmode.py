"""dial_mode in the relay: when to sniff a TCP flow, which name it is dialled by, and re-routing.

dae's four modes (REFERENCE.md; dae's example.dae), for a flow the datapath routed to a group
(direct and block are never sniffed: dae dials them by address and does not re-route them):
- `ip`: no sniffing; the group dials the original address.
- `domain`: the group dials the sniffed name when DNS agrees: the gateway's DNS module answered
  that name (A for an IPv4 flow, AAAA for IPv6) with the flow's destination among the
  addresses, within the answer's TTL. Otherwise the address (a forged SNI cannot send the
  proxy elsewhere). Without a DNS module nothing ever agrees, so nothing is sniffed.
- `domain+`: the group dials the sniffed name, unchecked.
- `domain++`: as domain+, and the flow is routed again by the sniffed name through the routing
  IR's evaluator (`Router.route` of a Flow carrying `domain`: kernel_router evaluates the rules
  with the name's domain bits), which may send it direct (dialled by address), to block, or to
  another group (dialled by the name).

Sniffing reads what the client sends first, for at most `sniffing_timeout` (dae's default
100 ms) and MAX_PREFIX bytes; the bytes read are sent to the upstream first. A client that
sends nothing within the timeout (server-first protocols: SMTP, FTP, SSH banners) goes on
unsniffed after it. Nothing here raises on a client's bytes: sniffers answer a name or no.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import socket
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

from dae_py.runtime.proxy import BLOCK_ID, DIRECT_ID, Destination

from . import NEED_MORE, sniff_stream

log = logging.getLogger("dae.sniff")

MODES = ("ip", "domain", "domain+", "domain++")
DEFAULT_TIMEOUT = 0.1
MAX_PREFIX = 32 * 1024  # a ClientHello with post-quantum key shares is ~2 KiB; TLS allows 64 KiB
RESERVED = (DIRECT_ID, BLOCK_ID)


class DnsAnswers(Protocol):
    """What the DNS module answered: the addresses of `name` for an IP version, or None."""

    def addresses(self, name: str, version: int) -> Iterable[str] | None: ...


class DnsCacheAnswers:
    """DnsAnswers over a runtime.dns.DnsModule's answer cache (read only): the cache keeps each
    answer for its TTL, which is how long the check should trust it."""

    QTYPE = {4: 1, 6: 28}  # A, AAAA

    def __init__(self, module: Any) -> None:
        self.cache = module.cache

    def addresses(self, name: str, version: int) -> Iterable[str] | None:
        try:
            hit = self.cache.get((name + ".", self.QTYPE[version], 1))
        except Exception as exc:  # noqa: BLE001 - the DNS module's cache API is not ours: no name dial
            log.debug("dns cache lookup for %s failed: %r", name, exc)
            return None
        if hit is None:
            return None
        response = hit[0]
        return [rd.address for rrset in response.answer if rrset.rdtype == self.QTYPE[version] for rd in rrset]


@dataclass(frozen=True)
class Sniffed:
    """The outcome for one flow: the route to use, the bytes already read, where to dial."""

    route: Any  # relay.flow.Route
    prefix: bytes
    target: Destination
    name: str | None


@dataclass
class SniffStats:
    sniffed: int = 0  # flows whose first bytes named a server
    unnamed: int = 0  # first bytes came, no name in them
    timed_out: int = 0  # nothing (or not enough) within sniffing_timeout
    dialled_by_name: int = 0
    rerouted: int = 0  # domain++ changed the outbound
    disagreed: int = 0  # domain: the name was not what DNS answered for the address


class Sniffing:
    """The relay's sniffing step (one per TcpRelay); None from `for_settings` when it is off."""

    def __init__(self, mode: str, timeout: float, dns: DnsAnswers | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"dial_mode {mode!r} is not one of {', '.join(MODES)}")
        self.mode = mode
        self.timeout = timeout
        self.dns = dns
        self.stats = SniffStats()

    @classmethod
    def for_settings(cls, mode: str, timeout: float) -> Sniffing | None:
        if mode == "ip" or timeout <= 0:
            return None
        return cls(mode, timeout)

    def use_dns(self, module: Any) -> None:
        """The gateway's DNS module (or None): what `domain` checks names against."""
        self.dns = DnsCacheAnswers(module) if module is not None else None

    def wants(self, outbound_id: int) -> bool:
        """Is a flow routed to `outbound_id` worth sniffing? (Read nothing when it cannot matter.)"""
        if outbound_id in RESERVED:
            return False
        return self.mode != "domain" or self.dns is not None

    async def read_prefix(self, loop: asyncio.AbstractEventLoop, conn: socket.socket) -> tuple[bytes, str | None]:
        """Read the client's first bytes until a sniffer answers, the timeout, EOF or MAX_PREFIX."""
        buf = b""
        deadline = time.monotonic() + self.timeout
        while len(buf) < MAX_PREFIX:
            left = deadline - time.monotonic()
            if left <= 0:
                self.stats.timed_out += 1
                return buf, None
            try:
                data = await asyncio.wait_for(loop.sock_recv(conn, MAX_PREFIX - len(buf)), left)
            except TimeoutError:
                self.stats.timed_out += 1
                return buf, None
            if not data:
                break
            buf += data
            answer = sniff_stream(buf)
            if answer is not NEED_MORE:
                if isinstance(answer, str):
                    self.stats.sniffed += 1
                    return buf, answer
                break
        self.stats.unnamed += 1
        return buf, None

    def agrees(self, name: str, dst: str) -> bool:
        """domain: did DNS answer `name` with `dst`?"""
        if self.dns is None:
            return False
        try:
            ip = ipaddress.ip_address(dst.split("%")[0])
        except ValueError:
            return False
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        answered = self.dns.addresses(name, ip.version)
        return answered is not None and str(ip) in {str(ipaddress.ip_address(a)) for a in answered}

    def decide(self, route: Any, flow: Any, name: str | None, router: Any,
               by_name: bool = True) -> tuple[Any, Destination]:
        """(route, dial target) for a sniffed flow, by dial_mode (see the module's docstring);
        `by_name` False: re-route only, always dial the address (UDP)."""
        dst = flow.dst
        by_ip = Destination(dst[0], dst[1])
        if name is None:
            return route, by_ip
        if self.mode == "domain++":
            rerouted = router.route(flow._replace(domain=name))
            if rerouted.outbound != route.outbound:
                self.stats.rerouted += 1
            route = rerouted
            if route.outbound in RESERVED or not by_name:
                return route, by_ip
        elif self.mode == "domain" and not self.agrees(name, dst[0]):
            self.stats.disagreed += 1
            return route, by_ip
        self.stats.dialled_by_name += 1
        return route, Destination(name, dst[1])

    async def tcp(self, conn: socket.socket, flow: Any, route: Any, router: Any) -> Sniffed | None:
        """Sniff one accepted TCP flow the datapath routed by `route`; None when the client went
        away while we read (the caller aborts the connection)."""
        loop = asyncio.get_running_loop()
        try:
            prefix, name = await self.read_prefix(loop, conn)
        except OSError as exc:
            log.debug("%s: gone while sniffing: %s", flow, exc)
            return None
        first = route
        try:
            route, target = self.decide(route, flow, name, router)
        except Exception as exc:  # noqa: BLE001 - a router bug: the datapath's route, by address
            log.error("%s: re-routing by sniffed name %s failed: %r", flow, name, exc)
            target = Destination(flow.dst[0], flow.dst[1])
        if name is not None and log.isEnabledFor(logging.INFO):
            moved = f", re-routed from outbound {first.outbound}{first.why}" if route != first else ""
            log.info("%s: sniffed %s (%d bytes read), dialled as %s%s", flow, name, len(prefix), target, moved)
        return Sniffed(route, prefix, target, name)


def relay_settings(settings: Any) -> dict[str, Any]:
    """RelayConfig's dial_mode and sniffing_timeout from the manifest's GlobalSettings (the
    timeout, in seconds, is among the settings the compiler resolved: `sniffing_timeout_s`)."""
    timeout = settings.extra.get("sniffing_timeout_s", DEFAULT_TIMEOUT)
    extra = settings.extra
    out: dict[str, Any] = {"dial_mode": settings.dial_mode, "sniffing_timeout": float(timeout),
                           "mptcp": bool(extra.get("mptcp", False))}  # global.mptcp (RelayConfig.mptcp)
    # global.warm_pool and its idle timeout (runtime/relay/warmpool.py); an older manifest
    # without them keeps RelayConfig's defaults
    if isinstance(extra.get("warm_pool"), int) and not isinstance(extra.get("warm_pool"), bool):
        out["warm_pool"] = max(0, extra["warm_pool"])
    if isinstance(extra.get("warm_pool_idle_timeout_s"), (int, float)):
        out["warm_pool_idle_timeout"] = float(extra["warm_pool_idle_timeout_s"])
    return out


@dataclass
class _Held:
    flow: Any
    route: Any
    family: int
    datagrams: list[bytes]
    timer: asyncio.TimerHandle | None = None


class QuicHold:
    """domain++ for QUIC (UDP 443): a new client flow's Initial datagrams are held (at most
    quic.MAX_DATAGRAMS, at most MAX_HELD flows at a time) until its ClientHello names a server
    or sniffing_timeout passes; then the flow is routed again by that name and the held
    datagrams are replayed through `replay(src, dst, family, route, datagrams)`, in order.

    UDP flows are re-routed but always dialled by address: a proxy that resolved the name itself
    could answer from an address the client never sent to, and the relay sends replies from
    the address they came from. So only domain++ sniffs UDP; domain and domain+ do not."""

    MAX_HELD = 1024

    def __init__(self, sniffing: Sniffing, router: Any, replay: Any) -> None:
        self.sniffing = sniffing
        self.router = router
        self.replay = replay
        self.held: dict[tuple[Any, Any], _Held] = {}

    @classmethod
    def for_sniffing(cls, sniffing: Sniffing | None, router: Any, replay: Any) -> QuicHold | None:
        if sniffing is None or sniffing.mode != "domain++":
            return None
        return cls(sniffing, router, replay)

    def holding(self, flow: Any, data: bytes) -> bool:
        """A later datagram of a flow being held: held too (True)."""
        held = self.held.get((flow.src, flow.dst))
        if held is None:
            return False
        self._add(held, data)
        return True

    def hold(self, flow: Any, route: Any, data: bytes, family: int) -> bool:
        """Hold the first datagram of a flow routed to a group when it is a QUIC Initial to 443."""
        from . import quic

        if (flow.dst[1] != 443 or route.outbound in RESERVED or len(self.held) >= self.MAX_HELD
                or not quic.looks_like_initial(data)):
            return False
        held = self.held[(flow.src, flow.dst)] = _Held(flow, route, family, [])
        held.timer = asyncio.get_running_loop().call_later(self.sniffing.timeout, self._release, held, None)
        self._add(held, data)
        return True

    def _add(self, held: _Held, data: bytes) -> None:
        from . import quic

        held.datagrams.append(data)
        answer = quic.sniff(held.datagrams)
        if answer is NEED_MORE and len(held.datagrams) < quic.MAX_DATAGRAMS:
            return
        self._release(held, answer if isinstance(answer, str) else None)

    def _release(self, held: _Held, name: str | None) -> None:
        if self.held.pop((held.flow.src, held.flow.dst), None) is None:
            return
        if held.timer is not None:
            held.timer.cancel()
        stats = self.sniffing.stats
        route = held.route
        if name is None:
            stats.timed_out += 1
        else:
            stats.sniffed += 1
            try:
                route, _target = self.sniffing.decide(route, held.flow, name, self.router, by_name=False)
            except Exception as exc:  # noqa: BLE001 - a router bug: the datapath's route
                log.error("%s: re-routing by sniffed name %s failed: %r", held.flow, name, exc)
            log.info("%s: sniffed %s (QUIC, %d datagrams), routed to outbound %d%s", held.flow, name,
                     len(held.datagrams), route.outbound, route.why)
        self.replay(held.flow.src, held.flow.dst, held.family, route, held.datagrams)

    def close(self) -> None:
        for held in list(self.held.values()):
            if held.timer is not None:
                held.timer.cancel()
        self.held.clear()
