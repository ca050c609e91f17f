"""The controller: an aiohttp application in the runtime's own event loop.

`Controller(view, secret)`, `await start(host, port)`, `await close()`. `controller.view` is the
one GatewayView every request reads; assigning a new one (a reload) swaps what all routes,
streams and /metrics see at once. The connection tracker moves with it only if the new view is
built with the old one's (`GatewayView(..., tracker=old.tracker)`)."""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.typedefs import Handler

from . import connections, general, metrics, providers, proxies, streams
from .auth import middleware
from .common import CTRL_KEY
from .logbus import LogBus
from .view import GatewayView

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

log = logging.getLogger("dae.controller")

STATIC = Path(__file__).parent / "static"


def parse_address(text: str) -> tuple[str, int]:
    """`ADDR:PORT` ('[::1]:9090' for IPv6; ':9090' for every address, as mihomo's)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"external_controller {text!r}: want ADDR:PORT")
    host = host.strip("[]") or "0.0.0.0"
    return host, int(port)


class MalformedRequests(logging.Filter):
    """aiohttp logs a request it cannot parse at ERROR (a line too long) or DEBUG (garbage), with
    a traceback and the offending bytes. Whoever reaches the port can send those, and the bytes
    may hold a token or an Authorization header: such a record becomes one DEBUG line naming
    only the error's class, so bad input neither floods the log nor copies what it carried."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg, record.args = "controller: malformed request refused (%s)", (type(exc).__name__,)
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info, record.exc_text = None, None
        return True


MALFORMED = MalformedRequests()


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Browser dashboards served from elsewhere (yacd, metacubexd) call the API across origins,
    as mihomo allows: preflights answered before the secret check, headers on every answer."""
    headers = {"Access-Control-Allow-Origin": "*",
               "Access-Control-Allow-Methods": "GET, POST, PUT, PATCH, DELETE",
               "Access-Control-Allow-Headers": "Content-Type, Authorization",
               "Access-Control-Allow-Private-Network": "true"}
    if request.method == "OPTIONS":
        return web.Response(status=204, headers=headers)
    resp = await handler(request)
    if not resp.prepared:
        resp.headers.update(headers)
    return resp


class Controller:
    def __init__(self, view: GatewayView, secret: str | None) -> None:
        self.view = view
        self._secret = secret or ""
        self._registry: CollectorRegistry | None = None  # built at the first scrape
        self.logbus: LogBus | None = None
        self.runner: web.AppRunner | None = None
        self.address: tuple[str, int] | None = None
        self.unix: Path | None = None

    @property
    def registry(self) -> CollectorRegistry:
        """/metrics' registry, made at the first scrape (prometheus-client loads then)."""
        if self._registry is None:
            self._registry = metrics.registry_for(lambda: self.view)
        return self._registry

    def __repr__(self) -> str:  # the secret stays out
        return f"Controller(address={self.address}, secret={'set' if self._secret else 'none'})"

    def app(self) -> web.Application:
        app = web.Application(middlewares=[cors, middleware(self._secret)], client_max_size=64 * 1024)
        app[CTRL_KEY] = self
        for mod in (general, proxies, providers, connections, streams, metrics):
            app.add_routes(mod.routes)
        app.router.add_get("/ui", _ui_index)
        app.router.add_get("/ui/", _ui_index)
        app.router.add_static("/ui/", STATIC)
        return app

    async def start(self, tcp: tuple[str, int] | None, unix: Path | None = None) -> tuple[str, int] | None:
        """Listen on `tcp` (host, port; port 0 picks one) and/or the unix socket `unix` (mode
        0600). Returns the TCP address bound, if any."""
        import asyncio

        self.logbus = LogBus(asyncio.get_running_loop())
        logging.getLogger().addHandler(self.logbus)
        # access_log=None: a websocket URL carries ?token=SECRET, and the log must never hold it
        self.runner = web.AppRunner(self.app(), access_log=None, handle_signals=False)
        logging.getLogger("aiohttp.server").addFilter(MALFORMED)  # idempotent: one shared filter
        await self.runner.setup()
        if unix is not None:
            unix.parent.mkdir(parents=True, exist_ok=True)  # the state directory (the datapath's too)
            unix.unlink(missing_ok=True)  # a crashed runtime's
            old = os.umask(0o177)
            try:
                await web.UnixSite(self.runner, str(unix)).start()
            finally:
                os.umask(old)
            unix.chmod(0o600)
            self.unix = unix
            log.info("controller socket %s", unix)
        if tcp is not None:
            site = web.TCPSite(self.runner, tcp[0], tcp[1], reuse_address=True)
            await site.start()
            server = site._server
            sockets = getattr(server, "sockets", None) or []
            bound = sockets[0].getsockname()[:2] if sockets else tcp
            self.address = (str(bound[0]), int(bound[1]))
            log.info("controller listening on %s:%d (secret %s)", self.address[0], self.address[1],
                     "required" if self._secret else "NOT set: anyone who reaches the port controls the gateway")
        return self.address

    async def close(self) -> None:
        if self.logbus is not None:
            logging.getLogger().removeHandler(self.logbus)
            self.logbus.subscribers.clear()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
        if self.unix is not None:
            self.unix.unlink(missing_ok=True)
            self.unix = None


async def _ui_index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC / "index.html")
