"""What every route shares: mihomo's error bodies, the view lookup, streaming helpers."""
from __future__ import annotations

import asyncio
import datetime
import json
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import WSMsgType, web

from .view import GatewayView

#: The app's Controller (its `.view` is read per request: a reload swaps it between requests).
CTRL_KEY: web.AppKey[Any] = web.AppKey("dae_controller")


def error(status: int, message: str) -> web.Response:
    """mihomo's error shape: {"message": "..."}."""
    return web.json_response({"message": message}, status=status)


UNAUTHORIZED = "Unauthorized"
BAD_REQUEST = "Body invalid"
NOT_FOUND = "Resource not found"
TIMEOUT = "Timeout"


def view(request: web.Request) -> GatewayView:
    """The view current at this request (a reload swaps it between requests)."""
    current: GatewayView = request.app[CTRL_KEY].view
    return current


def iso(ts: float) -> str:
    """A time as Go's time.Time marshals it (RFC 3339 with a zone)."""
    return datetime.datetime.fromtimestamp(ts, datetime.UTC).isoformat().replace("+00:00", "Z")


def wants_websocket(request: web.Request) -> bool:
    return request.headers.get("Upgrade", "").lower() == "websocket"


async def stream(request: web.Request, items: AsyncIterator[Any]) -> web.StreamResponse:
    """Send each item as one JSON value: a websocket text message when the client asked for
    an upgrade, else one line of a chunked HTTP response (mihomo serves both)."""
    if wants_websocket(request):
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        reader = asyncio.create_task(_drain(ws))
        try:
            async for item in items:
                if ws.closed:
                    break
                await ws.send_str(json.dumps(item))
        except (ConnectionResetError, RuntimeError):
            pass
        finally:
            reader.cancel()
            await ws.close()
        return ws
    resp = web.StreamResponse(headers={"Content-Type": "application/json"})
    resp.enable_chunked_encoding()
    await resp.prepare(request)
    try:
        async for item in items:
            await resp.write(json.dumps(item).encode() + b"\n")
    except (ConnectionResetError, ConnectionError):
        pass
    return resp


async def _drain(ws: web.WebSocketResponse) -> None:
    """Read (and drop) what the client sends, so its close frame is seen."""
    async for msg in ws:
        if msg.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
            break
