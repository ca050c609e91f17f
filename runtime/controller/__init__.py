"""The Clash/mihomo-compatible controller API, /metrics and the /ui status page.

Public API: `Controller` (app, start, close; `.view` is the swappable GatewayView),
`GatewayView`, `parse_address`, `start_for(...)` (the gateway's one call). Routes per area:
`general` (/, /version, /rules, /configs, /dae/summary), `proxies`, `connections`, `streams`
(/traffic, /memory, /logs), `metrics`. docs/operations.md describes it for operators.

aiohttp and prometheus-client are imported only when a controller starts: a gateway without
`global.external_controller` does not pay for them at start-up.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .app import Controller


async def start_for(build: Any, relay: Any, obj: Any, dns: Any) -> Controller | None:
    """The controller for a starting gateway, when `global.external_controller` is set (None
    otherwise): tracks the relay's connections and serves on that address."""
    g = build.manifest.settings
    if not g.external_controller:
        return None
    from .app import Controller, parse_address
    from .view import GatewayView

    host, port = parse_address(g.external_controller)
    view = GatewayView(build, relay, obj, dns)
    relay.tcp.tracker = view.tracker
    controller = Controller(view, g.secret)
    await controller.start(host, port)
    return controller


__all__ = ["start_for"]
