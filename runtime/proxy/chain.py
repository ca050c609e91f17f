"""Proxy chains, `a -> b` as dae writes them (`node: 'socks5://A -> ss://B'`): B is dialled
through A. The first hop dials as it always does, to the next hop's address instead of the
flow's; each later hop runs its protocol (`dial_on`, registry.stream_dialers) on the stream the
previous hop returned, to the next hop or, for the last, to the flow's destination. The target
sees the last hop's address.

UDP: Trojan, VMess and VLESS carry datagrams inside their own stream, so a chain whose last hop
is one of them carries UDP (`Node.supports_udp`): the stream to the last hop is dialled through
the earlier hops exactly as for TCP, and the last hop's `associate_on` (registry.
stream_associators) runs its UDP framing on it (one stream per association for Trojan, one per
destination for VMess/VLESS). SOCKS5 and Shadowsocks relay UDP beside their stream (a datagram
socket to the server, which no earlier hop can carry), so a chain ending in one of them, or in
HTTP, carries TCP only: groups leave it out of UDP selection, and `Node.udp_missing` says why.
"""
from __future__ import annotations

from dae_py.runtime.net.stream import Stream

from .base import Destination, DialError, DialOptions, Node, OutboundError, ReplyCallback, UdpAssociation
from .registry import load


def hops_of(node: Node) -> tuple[Node, ...]:
    return (*node.chain, node)


def check(node: Node) -> None:
    """DialError when a later hop cannot ride on the previous one's stream."""
    fault = node.chain_fault
    if fault is not None:
        raise DialError(fault, node)


async def dial(node: Node, dst: Destination, opts: DialOptions) -> Stream:
    """A stream to `dst` through every hop of `node`'s chain, each handshake done."""
    check(node)
    return await _through(node, hops_of(node), dst, opts)


async def associate(node: Node, opts: DialOptions, on_reply: ReplyCallback) -> UdpAssociation:
    """A UDP association through the chain: the last hop's UDP framing on streams to it, each
    dialled through the earlier hops (DialError, naming the node and why, for a chain that
    carries no UDP)."""
    why = node.udp_missing
    if why is not None:
        raise DialError(why, node)
    hops = hops_of(node)
    to_last = Destination(node.host, node.port)

    async def connect() -> Stream:
        return await _through(node, hops[:-1], to_last, opts)

    assoc: UdpAssociation = await load(node.protocol).associate_on(connect, node, opts, on_reply)
    return assoc


async def _through(node: Node, hops: tuple[Node, ...], dst: Destination, opts: DialOptions) -> Stream:
    """A stream to `dst` through `hops` (the first dialled, each later one on the previous
    one's stream); errors name the chain's node and the hop that failed."""
    targets = [Destination(h.host, h.port) for h in hops[1:]] + [dst]
    first = hops[0]
    stream: Stream
    try:
        stream = await load(first.protocol).dial(first, targets[0], opts)
    except OutboundError as exc:
        raise DialError(f"chain hop 1 ({first.protocol} {first.host}:{first.port}): {exc.what}", node) from None
    for i, hop in enumerate(hops[1:], start=1):
        try:
            stream = await load(hop.protocol).dial_on(stream, hop, targets[i], opts)
        except OutboundError as exc:
            stream.abort()
            raise type(exc)(f"chain hop {i + 1} ({hop.protocol} {hop.host}:{hop.port}): {exc.what}", node) from None
        except BaseException:
            stream.abort()
            raise
    return stream
