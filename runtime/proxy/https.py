"""HTTP CONNECT over TLS to the proxy (`https://` nodes): the TLS transport every protocol
uses (runtime/proxy/transport.py: sni, allow_insecure, alpn), then http.py's handshake."""
from __future__ import annotations

from dae_py.contract.manifest import TransportSpec
from dae_py.runtime.net.stream import Stream

from .base import Destination, DialOptions, Node
from .http import bounded_handshake
from .transport import open_stream

TLS = TransportSpec(tls=True)


async def dial(node: Node, dst: Destination, opts: DialOptions) -> Stream:
    stream = await open_stream(node, opts, TLS)
    try:
        await bounded_handshake(stream, node, dst, opts)
    except BaseException:
        stream.abort()
        raise
    return stream
