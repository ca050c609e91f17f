"""Outbounds: how a flow leaves the gateway. One module per protocol.

Public API:
- `Node.from_manifest(dict)`, `Destination(host, port)`, `DialOptions(so_mark, timeouts)`.
- `dial_tcp(node, dst, opts) -> Stream` and `open_udp(node, opts, on_reply) -> UdpAssociation`:
  one connection through one node (socks5, http, https, ss, trojan).
- `DirectOutbound` (id 0), `BlockOutbound` (id 1); groups live in `runtime.groups`.
- Errors: `OutboundError` and its kinds `DialError`, `ProxyProtocolError`, `ProxyAuthError`,
  `ProxyRefusedError`, `Blocked`, `AllNodesDown`; every message names the node and the cause.
"""
from __future__ import annotations

from . import http, https, shadowsocks, socks5, trojan
from .base import (AllNodesDown, Blocked, Destination, Dialed, DialError, DialOptions, Node,
                   Outbound, OutboundError, ProxyAuthError, ProxyProtocolError,
                   ProxyRefusedError, ReplyCallback, UdpAssociation)
from .block import BlockOutbound
from .direct import DirectOutbound
from .stream import SocketStream, Stream, TlsStream

DIRECT_ID = 0
BLOCK_ID = 1

_DIALERS = {"socks5": socks5.dial, "http": http.dial, "https": https.dial,
            "ss": shadowsocks.dial, "trojan": trojan.dial}
_ASSOCIATORS = {"socks5": socks5.associate, "ss": shadowsocks.associate,
                "trojan": trojan.associate}


async def dial_tcp(node: Node, dst: Destination, opts: DialOptions) -> Stream:
    """A stream to `dst` through `node`, handshake done; OutboundError (naming the node) else."""
    return await _DIALERS[node.protocol](node, dst, opts)


async def open_udp(node: Node, opts: DialOptions, on_reply: ReplyCallback) -> UdpAssociation:
    if not node.supports_udp:
        raise DialError(f"{node.protocol} nodes carry no UDP", node)
    return await _ASSOCIATORS[node.protocol](node, opts, on_reply)


__all__ = [
    "AllNodesDown", "BLOCK_ID", "Blocked", "BlockOutbound", "DIRECT_ID", "Destination", "Dialed",
    "DialError", "DialOptions", "DirectOutbound", "Node", "Outbound", "OutboundError",
    "ProxyAuthError", "ProxyProtocolError", "ProxyRefusedError", "ReplyCallback",
    "SocketStream", "Stream", "TlsStream", "UdpAssociation", "dial_tcp", "open_udp",
]
