"""Flows, the Router callback that picks their outbound, and the relay's settings."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, NamedTuple, Protocol

from dae_py.runtime.proxy import DialOptions
from dae_py.runtime.proxy.base import format_hostport

if TYPE_CHECKING:
    from dae_py.contract.evaluate import Flow as EvaluatedFlow

Addr = tuple[str, int]


class Flow(NamedTuple):
    """What the datapath hands over: protocol, client source, original destination.

    The relay's record of a flow, from accept (or recvmsg) to the router: plain strings, cheap
    to build per connection. `evaluated()` derives the reference evaluator's record from it.
    A NamedTuple, not a frozen dataclass: one is built per flow."""

    l4proto: str  # "tcp" | "udp"
    src: Addr
    dst: Addr
    domain: str | None = None  # sniffed name, when sniffing exists

    def __str__(self) -> str:
        return (f"{self.l4proto} {format_hostport(*self.src)} -> {format_hostport(*self.dst)}"
                + (f" ({self.domain})" if self.domain else ""))

    def evaluated(self, domain_bits: int = 0) -> EvaluatedFlow:
        """This flow as `contract.evaluate` (and `packets.flow_key`) read it: IP addresses
        parsed (a scope id dropped, an IPv4-mapped address unwrapped), the protocol number."""
        import ipaddress

        from dae_py.contract.evaluate import Flow as EvaluatedFlow  # not at start-up: see test_startup

        src = ipaddress.ip_address(self.src[0].split("%")[0])
        dst = ipaddress.ip_address(self.dst[0].split("%")[0])
        if src.version == 6 and src.ipv4_mapped:
            src = src.ipv4_mapped
        if dst.version == 6 and dst.ipv4_mapped:
            dst = dst.ipv4_mapped
        return EvaluatedFlow(l4proto=6 if self.l4proto == "tcp" else 17, src=src, sport=int(self.src[1]),
                             dst=dst, dport=int(self.dst[1]), domain_bits=domain_bits)


_tuple_new = tuple.__new__


def tcp_flow(src: Addr, dst: Addr) -> Flow:
    """`Flow("tcp", src, dst)` for the relay's accept path, without the NamedTuple's Python-level
    `__new__` (half the cost; one is built per connection)."""
    return _tuple_new(Flow, ("tcp", src, dst, None))


def rule_label(rule: int | None, config_file: str, line: object) -> str:
    """How a log line or a report names the rule that decided a flow: 'rule 3 (config.yaml:33)',
    or 'fallback' (no rule matched). The one place this is formatted."""
    if rule is None:
        return "fallback"
    return f"rule {rule} ({config_file}:{line})"


class Route(NamedTuple):
    """A router's answer for one flow: the outbound id (0 direct, 1 block, groups from 2), the
    rule that chose it (None: the fallback, or a router that does not say), and `why`, the
    suffix of the flow's log line (' (rule 3 (config.yaml:33))', ' (fallback)' or '')."""

    outbound: int
    rule: int | None = None
    why: str = ""


class Router(Protocol):
    """Which outbound carries a flow, and why: one call per flow. The kernel's decision arrives
    through a map (`kernel_router.KernelRouter`); anything with `route` fits."""

    def route(self, flow: Flow) -> Route: ...


class StaticRouter:
    """Every flow to one outbound."""

    def __init__(self, outbound_id: int) -> None:
        self._route = Route(outbound_id)

    @property
    def outbound_id(self) -> int:
        return self._route.outbound

    def route(self, flow: Flow) -> Route:
        return self._route


class FunctionRouter:
    """Wrap a plain `flow -> id` callable."""

    def __init__(self, fn: Callable[[Flow], int]) -> None:
        self.fn = fn

    def route(self, flow: Flow) -> Route:
        return Route(self.fn(flow))


@dataclass(frozen=True)
class RelayConfig:
    so_mark: int = 0
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    tcp_idle_timeout: float = 300.0
    udp_idle_timeout: float = 60.0
    splice: bool = True
    # relay.mode sockmap: plain TCP pairs go to the kernel's sockmap (runtime/relay/sockmap.py),
    # loaded from sockmap_object (a build's sockmap.o); splice when it cannot be (one warning)
    sockmap: bool = False
    sockmap_object: str | None = None
    pipe_size: int = 64 * 1024  # per splice pipe, created lazily per direction
    listen_backlog: int = 4096
    # UDP replies go out from a transparent socket per remote address: at most this many
    # remotes per client at a time, and this many sockets in all (docs/hardening.md)
    udp_reply_sockets_per_client: int = 256
    udp_reply_sockets: int = 16384
    # UDP client entries (one per source address and port, each holding an upstream
    # association per outbound it uses): at most this many per source IP, and this many in
    # all (at most an eighth of RLIMIT_NOFILE); past a bound, an entry of that source IP idle
    # for udp_client_evict_idle seconds makes room, else the datagram is dropped
    udp_clients_per_ip: int = 512
    udp_clients: int = 8192
    udp_client_evict_idle: float = 5.0
    # dial_mode and sniffing_timeout (runtime/sniff/dialmode.py); "ip" reads nothing first
    dial_mode: str = "ip"
    sniffing_timeout: float = 0.1
    mptcp: bool = False  # global.mptcp: the TCP sockets to nodes are MPTCP (runtime/net/sockets.tcp_socket)
    # global.warm_pool / warm_pool_idle_timeout: connections per node opened ahead of flows
    # (runtime/relay/warmpool.py; 0 turns it off), and how long one may wait unused
    warm_pool: int = 4
    warm_pool_idle_timeout: float = 10.0

    def dial_options(self) -> DialOptions:
        return DialOptions(so_mark=self.so_mark, connect_timeout=self.connect_timeout,
                           handshake_timeout=self.handshake_timeout, mptcp=self.mptcp)
