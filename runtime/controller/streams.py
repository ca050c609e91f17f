"""/traffic (bytes per second up and down, one JSON line a second) and /logs (the runtime's
log lines at or above `level`), chunked or over a websocket, as mihomo streams them."""
from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from .common import BAD_REQUEST, CTRL_KEY, error, stream, view
from .logbus import LEVELS, level_name

routes = web.RouteTableDef()

#: Seconds between two /traffic lines (mihomo: one a second).
TICK = 1.0


@routes.get("/traffic")
async def traffic(request: web.Request) -> web.StreamResponse:
    async def rates() -> AsyncIterator[dict[str, Any]]:
        up0, down0 = view(request).relay_totals()
        while True:
            await asyncio.sleep(TICK)
            up, down = view(request).relay_totals()
            # a reload starts new counters: a drop is a restart, not negative traffic
            yield {"up": max(0, up - up0), "down": max(0, down - down0)}
            up0, down0 = up, down
    return await stream(request, rates())


@routes.get("/logs")
async def logs(request: web.Request) -> web.StreamResponse:
    level = LEVELS.get(request.query.get("level", "info"))
    if level is None:
        return error(400, BAD_REQUEST)
    structured = request.query.get("format") == "structured"
    bus = request.app[CTRL_KEY].logbus

    async def lines() -> AsyncIterator[dict[str, Any]]:
        queue = bus.subscribe(level)
        try:
            while True:
                levelno, text = await queue.get()
                kind = level_name(levelno)
                if structured:
                    yield {"time": time.strftime("%H:%M:%S"), "level": "warn" if kind == "warning" else kind,
                           "message": text, "fields": []}
                else:
                    yield {"type": kind, "payload": text}
        finally:
            bus.unsubscribe(queue)
    return await stream(request, lines())


@routes.get("/memory")
async def memory(request: web.Request) -> web.StreamResponse:
    """The process' resident memory once a second, as mihomo's {inuse, oslimit} (the first
    value 0, as mihomo sends it so that charts start at zero)."""
    from .view import process_rss_bytes

    async def samples() -> AsyncIterator[dict[str, Any]]:
        yield {"inuse": 0, "oslimit": 0}
        while True:
            await asyncio.sleep(TICK)
            yield {"inuse": process_rss_bytes(), "oslimit": 0}
    return await stream(request, samples())
