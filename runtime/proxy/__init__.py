"""Proxy protocols: how a flow leaves the gateway through a node. One module per protocol,
listed once in `registry`.

Public API:
- `Node.from_manifest(dict)`, `Destination(host, port)`, `DialOptions(so_mark, timeouts)`.
- `dial_tcp(node, dst, opts) -> Stream` and `open_udp(node, opts, on_reply) -> UdpAssociation`:
  one connection through one node (the protocols of `registry.PROTOCOLS`).
- `fast_path(node) -> FastPath | None`: the protocol's callback dial for the relay, if any.
- `prepared(node) -> Prepared | None`: how a warm pool pre-opens connections to the node, and
  `dial_prepared(sock, prepared, node, dst, opts)`: one flow's request on such a connection.
- `DirectOutbound` (id 0), `BlockOutbound` (id 1); groups live in `runtime.groups`.
- Errors (from `runtime.net.errors`): `OutboundError` and its kinds `DialError`,
  `ProxyProtocolError`, `ProxyAuthError`, `ProxyRefusedError`, `Blocked`, `AllNodesDown`;
  every message names the node and the cause.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any

from dae_py.runtime.net.stream import SocketStream, Stream, TlsStream, bounded

from . import registry
from .base import (
    AllNodesDown,
    Blocked,
    ConnectionPool,
    Destination,
    Dialed,
    DialError,
    DialOptions,
    FastPath,
    Node,
    Outbound,
    OutboundError,
    Prepared,
    ProxyAuthError,
    ProxyProtocolError,
    ProxyRefusedError,
    ReplyCallback,
    UdpAssociation,
)
from .block import BlockOutbound
from .direct import DirectOutbound

DIRECT_ID = 0
BLOCK_ID = 1

# A protocol's module is imported when a node of it is first used (registry.load caches it), not
# here: vmess/shadowsocks/trojan pull in cryptography, h2 and websockets (about 10 MB of RSS) that
# a gateway without such nodes never needs (tests/runtime/test_startup.py).


def _lifecycle(scheme: str) -> tuple[Any, Any] | None:
    module = registry.load(scheme)
    start, stop = getattr(module, "start", None), getattr(module, "stop", None)
    return (start, stop) if start is not None and stop is not None else None


async def dial_tcp(node: Node, dst: Destination, opts: DialOptions) -> Stream:
    """A stream to `dst` through `node`, handshake done; OutboundError (naming the node) else."""
    if node.chain:
        from .chain import dial as dial_chain  # chain loads the registry's modules: imported on first use
        return await dial_chain(node, dst, opts)
    return await registry.load(node.protocol).dial(node, dst, opts)


def start_node(node: Node) -> None:
    """A group holding `node` starts: what its protocol runs beside it (a SIP003 plugin) starts,
    for each hop of a chain too."""
    for hop in (*node.chain, node):
        hooks = _lifecycle(hop.protocol)
        if hooks is not None:
            hooks[0](hop)


def stop_node(node: Node) -> None:
    for hop in (*node.chain, node):
        hooks = _lifecycle(hop.protocol)
        if hooks is not None:
            hooks[1](hop)


async def open_udp(node: Node, opts: DialOptions, on_reply: ReplyCallback) -> UdpAssociation:
    """A UDP association through `node` (a chain's too, when its last hop carries UDP inside
    its stream); DialError naming the node and why it carries no UDP otherwise."""
    why = node.udp_missing
    if why is not None:
        raise DialError(why, node)
    if node.chain:
        from .chain import associate as associate_chain  # imported on first use, as for TCP
        return await associate_chain(node, opts, on_reply)
    return await registry.load(node.protocol).associate(node, opts, on_reply)


def fast_path(node: Node) -> FastPath | None:
    """The callback dial of the node's protocol, or None if it has none (or is a chain)."""
    return None if node.chain else getattr(registry.load(node.protocol), "FAST_PATH", None)


def prepared(node: Node) -> Prepared | None:
    """How a warm pool pre-opens connections to `node`, or None (its protocol negotiates
    nothing ahead of a flow's request worth keeping, or it is a chain)."""
    return None if node.chain else getattr(registry.load(node.protocol), "PREPARED", None)


async def dial_prepared(sock: socket.socket, prep: Prepared, node: Node, dst: Destination,
                        opts: DialOptions) -> Stream | None:
    """One flow's request on a connection a pool opened (`sock`, registered for reading in the
    loop's poller): the stream once the reply says yes, an OutboundError when it says no, or
    None when the node had closed the connection (EOF or a reset before any reply byte), in
    which case the caller dials fresh: a pooled connection that died while it waited loses no
    flow."""
    loop = asyncio.get_running_loop()
    stream = SocketStream(sock, loop, in_poller=True)
    stream.adopt_reader()
    request = prep.request(node, dst.host, dst.port)
    if request is None:
        stream.close()
        return None
    try:
        await stream.sendall(request)
        first = await bounded(stream.recv(4096), opts.handshake_timeout, node, prep.handshake, loop)
    except (ConnectionResetError, BrokenPipeError):
        stream.abort()
        return None
    except BaseException:
        stream.abort()
        raise
    if not first:
        stream.abort()
        return None
    stream.unread(first)
    return await prep.finish(stream, node, dst, opts, first, False, loop)


__all__ = [
    "BLOCK_ID",
    "DIRECT_ID",
    "AllNodesDown",
    "BlockOutbound",
    "Blocked",
    "ConnectionPool",
    "Destination",
    "DialError",
    "DialOptions",
    "Dialed",
    "DirectOutbound",
    "FastPath",
    "Node",
    "Outbound",
    "OutboundError",
    "Prepared",
    "ProxyAuthError",
    "ProxyProtocolError",
    "ProxyRefusedError",
    "ReplyCallback",
    "SocketStream",
    "Stream",
    "TlsStream",
    "UdpAssociation",
    "dial_prepared",
    "dial_tcp",
    "fast_path",
    "open_udp",
    "prepared",
    "registry",
    "start_node",
    "stop_node",
]
