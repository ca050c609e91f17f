"""The secret: `Authorization: Bearer SECRET`, or `?token=SECRET` on a websocket upgrade (a
browser cannot set headers on one), as mihomo checks it. Anything else gets 401 with mihomo's
body and nothing more: no route runs, no hint of what exists. Compared in constant time; the
secret is never logged (the access log is off: a websocket URL would carry the token)."""
from __future__ import annotations

import hmac

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from .common import UNAUTHORIZED, error, wants_websocket

#: Paths served without the secret: the status page's static files (no data in them; the page
#: asks for the secret and sends it with every API call).
PUBLIC_PREFIXES = ("/ui",)


def _over_unix_socket(request: web.Request) -> bool:
    """A request on the state directory's socket (mode 0600: its opener is the runtime's user
    or root, the file's permissions are the check)."""
    transport = request.transport
    return transport is not None and isinstance(transport.get_extra_info("sockname"), str)


def _equal(given: str, secret: str) -> bool:
    return hmac.compare_digest(given.encode(), secret.encode())


def authorized(request: web.Request, secret: str) -> bool:
    if not secret or _over_unix_socket(request):
        return True
    token = request.query.get("token", "")
    if wants_websocket(request) and token:
        return _equal(token, secret)
    bearer, _, given = request.headers.get("Authorization", "").partition(" ")
    return bearer == "Bearer" and bool(given) and _equal(given, secret)


def middleware(secret: str) -> Middleware:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        if any(path == p or path.startswith(p + "/") for p in PUBLIC_PREFIXES):
            return await handler(request)
        if not authorized(request, secret):
            return error(401, UNAUTHORIZED)
        return await handler(request)
    return check
