"""/connections: the relay's live TCP flows in mihomo's shape; DELETE closes one or all (both
sockets of the flow, really: the client and the upstream see the connection end)."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from dae_py.runtime.relay.track import Tracked

from .common import iso, stream, view, wants_websocket
from .view import GatewayView, process_rss_bytes

routes = web.RouteTableDef()


def conn_json(v: GatewayView, rec: Tracked) -> dict[str, Any]:
    rule_type, payload = v.rule_of_label(rec.rule)
    return {
        "id": rec.id,
        "metadata": {
            "network": rec.network, "type": "Tproxy",
            "sourceIP": rec.src[0], "destinationIP": rec.dst[0],
            "sourcePort": str(rec.src[1]), "destinationPort": str(rec.dst[1]),
            "sourceGeoIP": None, "destinationGeoIP": None, "sourceIPASN": "", "destinationIPASN": "",
            "inboundIP": "", "inboundPort": "0", "inboundName": "tproxy", "inboundUser": "",
            "host": "", "dnsMode": "normal", "uid": 0, "process": "", "processPath": "",
            "specialProxy": "", "specialRules": "", "remoteDestination": rec.dst[0], "dscp": 0,
            "sniffHost": "",
        },
        "upload": rec.upload,
        "download": rec.download,
        "start": iso(rec.start),
        "chains": [rec.node, rec.outbound] if rec.node not in ("", "-") else [rec.outbound],
        "rule": rule_type,
        "rulePayload": payload,
        "dae-rule": rec.rule,
    }


def snapshot(v: GatewayView) -> dict[str, Any]:
    up, down = v.relay_totals()
    return {"downloadTotal": down, "uploadTotal": up,
            "connections": [conn_json(v, rec) for rec in v.tracker],
            "memory": process_rss_bytes()}


@routes.get("/connections")
async def get_connections(request: web.Request) -> web.StreamResponse:
    if not wants_websocket(request):
        return web.json_response(snapshot(view(request)))
    try:
        interval = max(100, int(request.query.get("interval", "1000"))) / 1000
    except ValueError:
        interval = 1.0

    async def snapshots() -> AsyncIterator[dict[str, Any]]:
        while True:
            yield snapshot(view(request))
            await asyncio.sleep(interval)
    return await stream(request, snapshots())


@routes.delete("/connections")
async def close_all(request: web.Request) -> web.Response:
    view(request).tracker.close_all()
    return web.Response(status=204)


@routes.delete("/connections/{id}")
async def close_one(request: web.Request) -> web.Response:
    view(request).tracker.close(request.match_info["id"])
    return web.Response(status=204)
