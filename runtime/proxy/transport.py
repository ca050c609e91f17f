"""The stream a v2ray-family protocol (VMess, VLESS) rides on: TCP, TLS over TCP, WebSocket
over either, composed from the node's `TransportSpec` (its link's `net`/`type`, `tls`/`security`,
`path`, `host`, `?ed=`). The protocol modules write their own bytes on what this returns and
never know which transport carries them.
"""
from __future__ import annotations

from dae_py.contract.manifest import TransportSpec
from dae_py.runtime.net.sockets import connect_tcp
from dae_py.runtime.net.stream import SocketStream, Stream
from dae_py.runtime.net.tls import client_context, open_tls
from dae_py.runtime.net.ws import open_ws

from .base import DialError, DialOptions, Node, format_hostport

PLAIN = TransportSpec()


def spec_of(node: Node) -> TransportSpec:
    return node.transport or PLAIN


def describe(node: Node) -> str:
    """'tcp', 'tls', 'ws', 'ws+tls': for log lines."""
    spec = spec_of(node)
    return spec.network + ("+tls" if spec.tls else "") if spec.network != "tcp" else ("tls" if spec.tls else "tcp")


async def open_stream(node: Node, opts: DialOptions) -> Stream:
    """A connected stream to the node, its TLS and WebSocket handshakes done (WebSocket with
    early data: on the first write). The socket is reset if a handshake fails."""
    spec = spec_of(node)
    if spec.network not in ("tcp", "ws"):
        raise DialError(f"the runtime has no {spec.network!r} transport", node)
    alpn: tuple[str, ...] = node.alpn or (("http/1.1",) if spec.network == "ws" else ())
    raw: Stream
    if spec.tls:
        raw = await open_tls(node.host, node.port, opts, node.sni or spec.host or node.host,
                             client_context(node.allow_insecure, alpn), node)
    else:
        raw = SocketStream(await connect_tcp(node.host, node.port, opts, node))
    if spec.network == "tcp":
        return raw
    default_port = 443 if spec.tls else 80
    host = spec.host or (node.host if node.port == default_port
                         else format_hostport(node.host, node.port))
    try:
        return await open_ws(raw, host, spec.path, node, opts.handshake_timeout,
                             spec.max_early_data, spec.early_data_header)
    except BaseException:
        raw.abort()
        raise
