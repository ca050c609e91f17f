"""The user-space relay: TCP and UDP tproxy listeners carrying flows to outbounds.

Public API:
- `Flow`, `Router` (protocol: `route(flow) -> Route(outbound, rule, why)`), `StaticRouter`,
  `FunctionRouter`.
- `RelayConfig` (so_mark, timeouts, splice on/off), `RelayStats` (per-outbound counters).
- `OutboundTable.from_manifest(manifest, opts)`: 0 direct, 1 block, groups by id.
- `TcpRelay(router, table, config).start(port)`, `.handle(sock, src, prefix=b"")`, `.close()`.
- `UdpRelay(router, table, config).start(port)`, `.handle_packet(data, src, dst, family)`.
- `Gateway`: both relays and the table together (`start`, `close`).

Per-flow cost (issue 3): a proxied TCP flow to a SOCKS5 node without credentials goes from
the accept callback to a `pump.SplicedFlow` without a task (`fastdial.CallbackDial` over the protocol's
`proxy.FastPath`: connect, pipelined greeting+CONNECT for SOCKS5, failover); other flows take the `handle`
coroutine and are handed to a SplicedFlow once dialed. An established spliced flow is a few small objects driven by the
loop's `runtime.net.poller.FdPoller` (one epoll registration per socket), ended when idle
by the relay's one `pump.IdleSweeper`. Warm pools (`warmpool.WarmPools`, `global.warm_pool`) keep a few
connections per SOCKS5/HTTP node opened ahead of flows: a flow that finds one sends only its CONNECT.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dae_py.contract.manifest import Manifest

from .flow import Flow, FunctionRouter, RelayConfig, Route, Router, StaticRouter
from .outbounds import OutboundTable, mark_plugin_sockets
from .stats import Counters, RelayStats
from .tcp import TcpRelay
from .udp import UdpRelay


class Gateway:
    """TCP + UDP relays on one port sharing one outbound table and one set of counters."""

    def __init__(self, router: Router, table: OutboundTable,
                 config: RelayConfig = RelayConfig()) -> None:
        self.table = table
        self.stats = RelayStats()
        self.tcp = TcpRelay(router, table, config, self.stats)
        self.udp = UdpRelay(router, table, config, self.stats)

    @classmethod
    def from_manifest(cls, router: Router, manifest: Manifest | Mapping[str, Any],
                      config: RelayConfig = RelayConfig()) -> Gateway:
        return cls(router, OutboundTable.from_manifest(manifest, config.dial_options()), config)

    async def start(self, port: int = 0, hosts: tuple[str, ...] = ("0.0.0.0", "::"),
                    health_checks: bool = True, guard_fd: int | None = None) -> int:
        """`guard_fd`: the program's tproxy_guard socket filter (tproxy port protection);
        without it the listeners take any packet addressed to them."""
        port = await self.tcp.start(port, hosts, guard_fd=guard_fd)
        await self.udp.start(port, hosts, guard_fd=guard_fd)
        mark_plugin_sockets(self.tcp.config)
        self.table.start_nodes()
        if health_checks:
            await self.table.start()
        return port

    def swap(self, router: Router, table: OutboundTable) -> OutboundTable:
        """Reload: new flows are routed by `router` and dialed through `table` from now on;
        flows already carried keep the outbound objects they were dialed with. Returns the old
        table (the caller closes what of it the new one did not adopt)."""
        old, self.table = self.table, table
        self.tcp.swap(router, table)
        self.udp.swap(router, table)
        return old

    async def close(self) -> None:
        await self.tcp.close()
        await self.udp.close()
        await self.table.close()
        self.table.stop_nodes()


__all__ = ["Counters", "Flow", "FunctionRouter", "Gateway", "OutboundTable", "RelayConfig",
           "RelayStats", "Route", "Router", "StaticRouter", "TcpRelay", "UdpRelay"]
