"""The stream a proxy protocol (VMess, VLESS, Trojan over WebSocket, HTTP CONNECT over TLS)
rides on: TCP, TLS over TCP, WebSocket or HTTP/2 (v2ray's `h2`, ALPN h2 over TLS, or h2c) over
either, composed from the node's `TransportSpec` (its link's `net`/`type`, `tls`/`security`,
`path`, `host`, `?ed=`). The protocol modules write their own bytes on what this returns and
never know which transport carries them.
"""
from __future__ import annotations

from dae_py.contract.manifest import TransportSpec
from dae_py.runtime.net.h2 import open_h2
from dae_py.runtime.net.sockets import connect_tcp
from dae_py.runtime.net.stream import SocketStream, Stream, TlsStream, bounded
from dae_py.runtime.net.tls import client_context
from dae_py.runtime.net.ws import open_ws

from .base import DialError, DialOptions, Node, format_hostport

PLAIN = TransportSpec()


def spec_of(node: Node) -> TransportSpec:
    return node.transport or PLAIN


def describe(node: Node) -> str:
    """'tcp', 'tls', 'ws', 'ws+tls': for log lines."""
    spec = spec_of(node)
    if spec.network == "tcp":
        return "tls" if spec.tls else "tcp"
    return spec.network + ("+tls" if spec.tls else "")


async def open_stream(node: Node, opts: DialOptions, spec: TransportSpec | None = None) -> Stream:
    """A connected stream to the node, its TLS and WebSocket handshakes done (WebSocket with
    early data: on the first write). The socket is reset if a handshake fails. `spec`: the
    transport a protocol always rides on (https:// nodes: TLS), instead of the node's own."""
    _check(node, spec or spec_of(node))
    return await open_stream_on(await connect_to(node, opts), node, opts, spec)


async def connect_to(node: Node, opts: DialOptions) -> Stream:
    """A plain TCP connection to the node (the start of every transport, when not a chain)."""
    return SocketStream(await connect_tcp(node.host, node.port, opts, node))


async def open_stream_on(raw: Stream, node: Node, opts: DialOptions,
                         spec: TransportSpec | None = None) -> Stream:
    """The node's transport (TLS, WebSocket, HTTP/2) over `raw`, a stream already connected to
    the node: straight from `open_stream`, or through the earlier hops of a chain
    (runtime/proxy/chain.py), so a protocol rides the same layers either way. `raw` is reset if
    a handshake fails."""
    spec = spec or spec_of(node)
    try:
        _check(node, spec)
        h2 = spec.network in ("h2", "http")
        alpn: tuple[str, ...] = ("h2",) if h2 else node.alpn or (("http/1.1",) if spec.network == "ws" else ())
        stream = raw
        if spec.tls:
            stream = await bounded(TlsStream.wrap(raw, client_context(node.allow_insecure, alpn),
                                                  node.sni or spec.host or node.host, node),
                                   opts.handshake_timeout, node, "TLS handshake")
        if spec.network == "tcp":
            return stream
        default_port = 443 if spec.tls else 80
        host = (spec.host or "").split(",")[0].strip() or (
            node.host if node.port == default_port else format_hostport(node.host, node.port))
        if h2:
            return await open_h2(stream, host, spec.path, node)
        return await open_ws(stream, host, spec.path, node, opts.handshake_timeout,
                             spec.max_early_data, spec.early_data_header)
    except BaseException:
        raw.abort()
        raise


def _check(node: Node, spec: TransportSpec) -> None:
    if spec.network not in ("tcp", "ws", "h2", "http"):
        raise DialError(f"the runtime has no {spec.network!r} transport", node)
