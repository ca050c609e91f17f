"""HTTP CONNECT over TLS to the proxy (`https://` nodes): sni and allow_insecure honoured."""
from __future__ import annotations

import functools
import ssl

from .base import Destination, DialOptions, Node
from .http import bounded_handshake
from .sockets import connect_tcp
from .stream import SocketStream, TlsStream, bounded


@functools.lru_cache(maxsize=None)
def tls_context(allow_insecure: bool) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    if allow_insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def open_tls(node: Node, opts: DialOptions) -> TlsStream:
    raw = SocketStream(await connect_tcp(node.host, node.port, opts, node))
    try:
        return await bounded(
            TlsStream.wrap(raw, tls_context(node.allow_insecure), node.sni or node.host, node),
            opts.handshake_timeout, node, "TLS handshake")
    except BaseException:
        raw.abort()
        raise


async def dial(node: Node, dst: Destination, opts: DialOptions) -> TlsStream:
    stream = await open_tls(node, opts)
    try:
        await bounded_handshake(stream, node, dst, opts)
    except BaseException:
        stream.abort()
        raise
    return stream
