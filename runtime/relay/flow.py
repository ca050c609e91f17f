"""Flows, the Router callback that picks their outbound, and the relay's settings."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from dae_py.runtime.proxy import DialOptions
from dae_py.runtime.proxy.base import format_hostport

Addr = tuple[str, int]


@dataclass(frozen=True)
class Flow:
    """What the datapath hands over: protocol, client source, original destination."""

    l4proto: str  # "tcp" | "udp"
    src: Addr
    dst: Addr
    domain: str | None = None  # sniffed name, when sniffing exists

    def __str__(self) -> str:
        return (f"{self.l4proto} {format_hostport(*self.src)} -> {format_hostport(*self.dst)}"
                + (f" ({self.domain})" if self.domain else ""))


class Router(Protocol):
    """Which outbound id carries a flow: 0 direct, 1 block, groups from 2. The kernel's
    decision arrives through a map later; anything with `decide` fits."""

    def decide(self, flow: Flow) -> int: ...


def reason(router: object, flow: Flow) -> str:
    """' (rule 3, config.yaml:33)' when the router can say which rule decided, else ''.

    Routers may offer `describe(flow) -> str`; the per-flow log line carries it."""
    describe = getattr(router, "describe", None)
    if describe is None:
        return ""
    try:
        return f" ({describe(flow)})"
    except Exception:  # noqa: BLE001 - a log detail must never break a flow
        return ""


class StaticRouter:
    """Every flow to one outbound."""

    def __init__(self, outbound_id: int) -> None:
        self.outbound_id = outbound_id

    def decide(self, flow: Flow) -> int:
        return self.outbound_id


class FunctionRouter:
    """Wrap a plain `flow -> id` callable."""

    def __init__(self, fn: Callable[[Flow], int]) -> None:
        self.fn = fn

    def decide(self, flow: Flow) -> int:
        return self.fn(flow)


@dataclass(frozen=True)
class RelayConfig:
    so_mark: int = 0
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    tcp_idle_timeout: float = 300.0
    udp_idle_timeout: float = 60.0
    splice: bool = True
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

    def dial_options(self) -> DialOptions:
        return DialOptions(so_mark=self.so_mark, connect_timeout=self.connect_timeout,
                           handshake_timeout=self.handshake_timeout)
