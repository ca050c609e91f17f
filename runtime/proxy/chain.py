"""Proxy chains, `a -> b` as dae writes them (`node: 'socks5://A -> ss://B'`): B is dialled
through A. The first hop dials as it always does, to the next hop's address instead of the
flow's; each later hop runs its protocol (`dial_on`, registry.stream_dialers) on the stream the
previous hop returned, to the next hop or, for the last, to the flow's destination. The target
sees the last hop's address. A chain carries TCP only (no protocol here relays UDP through
another's stream), so groups leave chains out of UDP selection (`Node.supports_udp`).
"""
from __future__ import annotations

from dae_py.runtime.net.stream import Stream

from . import registry
from .base import Destination, DialError, DialOptions, Node, OutboundError
from .registry import load

_STREAM_DIALERS = registry.stream_dialers()


def hops_of(node: Node) -> tuple[Node, ...]:
    return (*node.chain, node)


def check(node: Node) -> None:
    """DialError when a later hop cannot ride on the previous one's stream."""
    for hop in hops_of(node)[1:]:
        if hop.protocol not in _STREAM_DIALERS:
            raise DialError(f"a {hop.protocol} hop cannot follow another in a chain "
                            f"(chains take {', '.join(_STREAM_DIALERS)} after the first hop)", node)
        if hop.plugin:
            raise DialError("a SIP003 plugin hop can only be the first of a chain", node)


async def dial(node: Node, dst: Destination, opts: DialOptions) -> Stream:
    """A stream to `dst` through every hop of `node`'s chain, each handshake done."""
    check(node)
    hops = hops_of(node)
    targets = [Destination(h.host, h.port) for h in hops[1:]] + [dst]
    first = hops[0]
    try:
        stream = await load(first.protocol).dial(first, targets[0], opts)
    except OutboundError as exc:
        raise DialError(f"chain hop 1 ({first.protocol} {first.host}:{first.port}): {exc.what}", node) from None
    for i, hop in enumerate(hops[1:], start=1):
        try:
            stream = await _STREAM_DIALERS[hop.protocol](stream, hop, targets[i], opts)
        except OutboundError as exc:
            stream.abort()
            raise type(exc)(f"chain hop {i + 1} ({hop.protocol} {hop.host}:{hop.port}): {exc.what}", node) from None
        except BaseException:
            stream.abort()
            raise
    return stream
