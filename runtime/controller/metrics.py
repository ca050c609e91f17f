"""/metrics: the gateway in Prometheus' text format, read at scrape time (the collector and
prometheus-client are in collector.py, imported at the first scrape).

One collector walks the current GatewayView on every scrape, so nothing is counted twice and
nothing runs between scrapes: the kernel's per-CPU counters (outbound_stats, rule_hits) summed
over CPUs, the relay's per-outbound counters and live connections, the groups' health checks and
dial failures, the DNS module's counters when it runs, and the process' RSS and descriptors.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from aiohttp import web

from .common import view
from .view import GatewayView

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

routes = web.RouteTableDef()
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def registry_for(current: Callable[[], GatewayView]) -> CollectorRegistry:
    """A registry whose one collector reads `current()` at each scrape."""
    from .collector import registry_for as make  # prometheus-client: on first use only

    return make(current)


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    from prometheus_client import generate_latest

    from .common import CTRL_KEY

    view(request)  # the same view lookup as every route (and its errors)
    body = generate_latest(request.app[CTRL_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})
