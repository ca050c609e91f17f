"""/providers/proxies: the build's subscriptions in mihomo's proxy-provider shapes, so Clash
dashboards (yacd, metacubexd) list them, update one now (PUT) and health-check its nodes.

A provider's `proxies` are the nodes the subscription gives the pool now (the last good
fetched body, else the nodes the compiler read from a `file://` source), shown as /proxies
shows them. An update that fails keeps the last good copy, as a scheduled refresh does, and
answers 503 with the reason (never the URL: it holds the provider's token)."""
from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from dae_py.runtime.groups.stats import Check

from .common import NOT_FOUND, error, iso, view
from .proxies import node_json, run_delay
from .view import GatewayView

routes = web.RouteTableDef()

HEALTHCHECK_TIMEOUT_S = 5.0


def _vehicle(url: str) -> str:
    return "File" if url.startswith("file:") else "HTTP"


def provider_json(v: GatewayView, name: str) -> dict[str, Any] | None:
    subs = v.subscriptions
    spec = next((s for s in v.manifest.subscriptions if s.name == name), None)
    if subs is None or spec is None:
        return None
    status = subs.status().get(name, {})
    proxies = [node_json(v, node) for n in subs.node_names(name) if (node := subs.node(n)) is not None]
    when = status.get("last_good")
    return {"name": name, "type": "Proxy", "vehicleType": _vehicle(spec.url), "proxies": proxies,
            "testUrl": "", "expectedStatus": "", "updatedAt": iso(when) if when else "0001-01-01T00:00:00Z",
            "dae-refresh-s": spec.refresh_s, "dae-error": status.get("error")}


def all_providers(v: GatewayView) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for spec in v.manifest.subscriptions:
        p = provider_json(v, spec.name)
        if p is not None:
            out[spec.name] = p
    return out


@routes.get("/providers/proxies")
async def get_providers(request: web.Request) -> web.Response:
    return web.json_response({"providers": all_providers(view(request))})


@routes.get("/providers/proxies/{name}")
async def get_provider(request: web.Request) -> web.Response:
    p = provider_json(view(request), request.match_info["name"])
    return web.json_response(p) if p is not None else error(404, NOT_FOUND)


@routes.put("/providers/proxies/{name}")
async def update_provider(request: web.Request) -> web.Response:
    v = view(request)
    name = request.match_info["name"]
    if provider_json(v, name) is None:
        return error(404, NOT_FOUND)
    if not await v.subscriptions.update(name):
        return error(503, f"update failed: {v.subscriptions.failures.get(name, 'unknown error')}")
    return web.Response(status=204)


@routes.get("/providers/proxies/{name}/healthcheck")
async def healthcheck_provider(request: web.Request) -> web.Response:
    """Check every node of the provider through the first group it is in, with that group's
    check URL, at once; the results land where the groups' own checks put theirs."""
    v = view(request)
    name = request.match_info["name"]
    if provider_json(v, name) is None:
        return error(404, NOT_FOUND)

    async def check(node_name: str) -> None:
        node = v.subscriptions.node(node_name)
        owners = [g for g in v.groups() if node is not None and node in g.nodes]
        if node is None or not owners:
            return
        url = owners[0].spec.check.tcp_check_url
        try:
            latency: float | None = await run_delay(v, node, url, HEALTHCHECK_TIMEOUT_S, owners[0].opts)
            why = None
        except TimeoutError:
            latency, why = None, f"health check of {url} timed out"
        except Exception as exc:  # noqa: BLE001 - the check's failure is its result
            latency, why = None, f"health check failed: {exc}"
        for g in owners:
            g.record(node, Check.TCP, latency, why)
        if latency is not None:
            v.node_history(node.name).add(time.time(), max(1, round(latency * 1000)))

    await asyncio.gather(*(check(n) for n in v.subscriptions.node_names(name)))
    return web.Response(status=204)
