"""TLS client sessions to upstream servers: one cached context per verification setting, and
the bounded connect-then-handshake every TLS-carried protocol (https, trojan) and the health
probes start with."""
from __future__ import annotations

import functools
import ssl
from typing import Any

from .sockets import DialOptions, connect_tcp
from .stream import SocketStream, TlsStream, bounded


@functools.cache
def client_context(allow_insecure: bool, alpn: tuple[str, ...] = ()) -> ssl.SSLContext:
    """Certificates and host names checked unless `allow_insecure`; ALPN offered if given.
    Cached: contexts are costly to build and the settings are few."""
    ctx = ssl.create_default_context()
    if allow_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    return ctx


async def open_tls(host: str, port: int, opts: DialOptions, server_hostname: str,
                   ctx: ssl.SSLContext, node: Any = None) -> TlsStream:
    """A TCP connection to (host, port) with the TLS handshake done within the handshake
    timeout; the socket is reset if the handshake fails."""
    raw = SocketStream(await connect_tcp(host, port, opts, node))
    try:
        return await bounded(TlsStream.wrap(raw, ctx, server_hostname, node),
                             opts.handshake_timeout, node, "TLS handshake")
    except BaseException:
        raw.abort()
        raise
