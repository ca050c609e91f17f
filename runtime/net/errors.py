"""Why a flow could not be carried: the error kinds every layer (sockets, proxy protocols,
groups, the relay) raises and catches.

They live below the protocols so that the socket helpers can raise them without importing the
node type: an error carries the node it concerns as any object that prints itself (a
`proxy.Node` in practice), never its secrets.
"""
from __future__ import annotations

from typing import Any


class OutboundError(Exception):
    """A flow could not be carried; the message names the node (if any) and the cause."""

    def __init__(self, what: str, node: Any = None) -> None:
        self.node = node
        self.what = what
        super().__init__(f"node {node}: {what}" if node else what)


class DialError(OutboundError):
    """The node (or, for direct, the target) could not be reached: refused, timed out, reset."""


class ProxyProtocolError(OutboundError):
    """The node answered something that is not the protocol: the node is broken."""


class ProxyAuthError(OutboundError):
    """The node rejected our credentials (or wants some we do not have)."""


class ProxyRefusedError(OutboundError):
    """The node works but refused this target (SOCKS5 REP != 0, HTTP CONNECT non-2xx).

    Not the node's fault: the node stays up and the flow is not retried elsewhere."""


class Blocked(OutboundError):
    """The flow was routed to `block`."""


class AllNodesDown(OutboundError):
    """No node of a group is alive."""
