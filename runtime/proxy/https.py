"""HTTP CONNECT over TLS to the proxy (`https://` nodes): sni and allow_insecure honoured."""
from __future__ import annotations

from dae_py.runtime.net.stream import TlsStream
from dae_py.runtime.net.tls import client_context, open_tls

from .base import Destination, DialOptions, Node
from .http import bounded_handshake


async def dial(node: Node, dst: Destination, opts: DialOptions) -> TlsStream:
    stream = await open_tls(node.host, node.port, opts, node.sni or node.host,
                            client_context(node.allow_insecure), node)
    try:
        await bounded_handshake(stream, node, dst, opts)
    except BaseException:
        stream.abort()
        raise
    return stream
