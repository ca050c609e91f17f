"""What every outbound shares: the node a manifest describes, destinations, the Outbound and
UdpAssociation protocols (dial options and errors come from `runtime.net`, re-exported here).

The manifest dict of a node is accepted exactly as the compiler writes it::

    {"name": "n1", "protocol": "socks5", "host": "192.0.2.10", "port": 1080,
     "username": None, "password": None, "sni": None, "allow_insecure": False,
     "link": "socks5://192.0.2.10:1080"}

plus, for some protocols, "cipher" (ss: the AEAD method; vmess: the security), "alpn" (trojan:
a list) and "transport" (vmess, vless: `TransportSpec`).
"""
from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from dae_py.contract import capabilities
from dae_py.contract.manifest import NodeSpec, TransportSpec
from dae_py.runtime.net.errors import (
    AllNodesDown,
    Blocked,
    DialError,
    OutboundError,
    ProxyAuthError,
    ProxyProtocolError,
    ProxyRefusedError,
)
from dae_py.runtime.net.sockets import DialOptions

from .registry import CHAIN_HOPS, PROTOCOLS

if TYPE_CHECKING:
    from dae_py.runtime.net.stream import SocketStream, Stream


@dataclass(frozen=True)
class Node:
    """One upstream proxy node."""

    name: str
    protocol: str
    host: str
    port: int
    username: str | None = field(default=None, repr=False)  # vmess/vless: the UUID
    password: str | None = field(default=None, repr=False)  # secrets stay out of reprs
    sni: str | None = None
    allow_insecure: bool = False
    link: str = field(default="", repr=False)
    cipher: str | None = None
    alpn: tuple[str, ...] = ()
    transport: TransportSpec | None = None  # vmess/vless: TCP, TLS, WebSocket below them
    plugin: str | None = None  # ss: the SIP003 plugin's name (runtime/proxy/plugins.py)
    plugin_opts: str | None = field(default=None, repr=False)  # ss: SS_PLUGIN_OPTIONS
    chain: tuple[Node, ...] = ()  # the hops before this node (`a -> b`: b dialled through a)

    @classmethod
    def from_manifest(cls, raw: NodeSpec | Mapping[str, Any]) -> Node:
        """From the manifest's typed node (a JSON dict is read through NodeSpec first; a missing
        key is a ValueError naming it, never echoing the dict: it holds the password)."""
        spec = raw if isinstance(raw, NodeSpec) else NodeSpec.from_json(raw)
        plugin = spec.extra.get("plugin")
        node = cls(name=spec.name, protocol=spec.protocol, host=spec.host, port=spec.port,
                   username=spec.username, password=spec.password, sni=spec.sni,
                   allow_insecure=spec.allow_insecure, link=spec.link, cipher=spec.cipher,
                   alpn=spec.alpn or (), transport=spec.transport,
                   plugin=str(plugin) if plugin else None,
                   plugin_opts=str(spec.extra.get("plugin_opts") or "") or None,
                   chain=tuple(cls.from_manifest(hop) for hop in spec.chain or ()))
        if node.protocol not in PROTOCOLS:
            raise ValueError(f"node '{node.name}': unsupported protocol {node.protocol!r} "
                             f"(supported: {', '.join(PROTOCOLS)})")
        if not 0 < node.port < 65536:
            raise ValueError(f"node '{node.name}': port {node.port} out of range")
        return node

    @property
    def chain_fault(self) -> str | None:
        """Why this chain cannot be dialled (a later hop that cannot ride on the previous one's
        stream), or None; None for a node that is not a chain."""
        for i, hop in enumerate(self.chain[1:] + (self,) if self.chain else (), start=2):
            if hop.protocol not in CHAIN_HOPS:
                return (f"a {hop.protocol} hop cannot follow another in a chain (hop {i}; chains "
                        f"take {', '.join(CHAIN_HOPS)} after the first hop)")
            if hop.plugin:
                return f"a SIP003 plugin hop can only be the first of a chain (hop {i})"
        return None

    @property
    def udp_missing(self) -> str | None:
        """Why this node carries no UDP (shown by the groups, the controller and status), or
        None when it does. A chain carries UDP when its last hop carries it inside its own
        stream (trojan, vmess, vless: contract.capabilities.CHAIN_UDP)."""
        why = capabilities.udp_missing(self.protocol, bool(self.chain))
        if why is not None or not self.chain:
            return why
        return self.chain_fault

    @property
    def supports_udp(self) -> bool:
        return self.udp_missing is None

    def __str__(self) -> str:
        return f"'{self.name}' ({self.protocol} {format_hostport(self.host, self.port)})"


@dataclass(frozen=True)
class Destination:
    """Where a flow goes: an IP literal (dial_mode ip) or a domain (sniffed, later)."""

    host: str
    port: int

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        try:
            return ipaddress.ip_address(self.host)
        except ValueError:
            return None

    def __str__(self) -> str:
        return format_hostport(self.host, self.port)


def format_hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_hostport(text: str, default_port: int | None = None) -> tuple[str, int]:
    """'h:p', '[v6]:p', 'v4' / 'v6' (with a default port) -> (host, port)."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not port:
        if default_port is None:
            raise ValueError(f"{text!r}: no port")
        return host, default_port
    return host, int(port)


ReplyCallback = Callable[[bytes, tuple[str, int]], None]


class UdpAssociation(Protocol):
    """An upstream UDP path for one client: send to any destination, replies via a callback."""

    node: Node | None
    closed: bool
    on_close: list[Callable[[Any], None]]  # run once when the association ends

    def send(self, data: bytes, dst: Destination) -> None: ...

    def close(self) -> None: ...


@dataclass
class Dialed:
    """A TCP connection an outbound opened for a flow, and the node it went through."""

    stream: Stream
    node: Node | None


class FastPath(Protocol):
    """A protocol's pipelined dial, driven by the relay from callbacks without a task.

    The relay connects to `address(node)`, sends `request(...)` at once, and feeds the bytes it
    reads to `reply_size` until the whole reply is in; what follows the reply is the target's.
    Anything out of the ordinary (a reply that is not a plain success, EOF, the handshake timer)
    goes to `finish`, which names the error or dials again the way `dial` would."""

    handshake: str  # what the handshake is called in errors ("SOCKS5 CONNECT handshake")

    def address(self, node: Node) -> tuple[int, tuple] | None:
        """(family, sockaddr) when the relay may dial `node` this way, else None."""
        ...

    def request(self, node: Node, host: str, port: int) -> bytes | None:
        """The bytes to send right after connect for a flow to (host, port), or None when
        this flow does not qualify."""
        ...

    def reply_size(self, buf: bytes) -> int:
        """How many of the bytes read so far make up the reply (0: not known yet), or -1 when
        they are not a plain success."""
        ...

    async def finish(self, stream: SocketStream, node: Node, dst: Destination, opts: DialOptions,
                     got: bytes, timed_out: bool, loop: asyncio.AbstractEventLoop) -> Stream:
        """The rest of a handshake the relay started: `got` the bytes it read (already unread
        into `stream`), `timed_out` whether its handshake timer fired."""
        ...


class Prepared(Protocol):
    """A protocol whose connection to a node can be opened and negotiated before a flow needs
    it (the relay's warm pool, runtime/relay/warmpool.py): what is left per flow is one
    request and its reply. SOCKS5: connected and past method selection (and authentication);
    HTTP: connected. Same shape as `FastPath` from the request on, so the relay's callback dial
    drives either."""

    handshake: str  # what the per-flow part is called in errors ("SOCKS5 CONNECT handshake")

    async def open(self, node: Node, opts: DialOptions) -> SocketStream:
        """A connection to `node`, negotiated up to the per-flow request (bounded by the
        options' timeouts); OutboundError or OSError otherwise."""
        ...

    def greeting(self, node: Node) -> tuple[bytes, bytes] | None:
        """(what to send once connected, the exact reply that makes the connection ready)
        when opening is one fixed exchange, so the pool drives it from callbacks (b"", b"":
        connected is ready); None: `open` does it (credentials, several steps)."""
        ...

    def request(self, node: Node, host: str, port: int) -> bytes | None:
        """The bytes a flow to (host, port) sends on an opened connection (None: not this way)."""
        ...

    def reply_size(self, buf: bytes) -> int:
        """How many of the bytes read so far make up the reply to `request` (0: not known
        yet), or -1 when they are not a plain success."""
        ...

    async def finish(self, stream: SocketStream, node: Node, dst: Destination, opts: DialOptions,
                     got: bytes, timed_out: bool, loop: asyncio.AbstractEventLoop) -> Stream:
        """Read the reply to a request already sent (`got`: bytes read so far, already unread
        into `stream`) and name what is wrong with it; the stream on success."""
        ...


class ConnectionPool(Protocol):
    """Where a group takes an opened connection to a node before dialing it fresh (the relay's
    warm pools; None for a group outside a relay)."""

    def take(self, node: Node, opts: DialOptions) -> tuple[socket.socket, Prepared] | None:
        """A connection opened with `opts` to `node`, registered for reading in the loop's
        FdPoller (the taker sets its own handler), and its protocol; None when none is ready
        (a refill starts)."""
        ...

    def has_ready(self, node: Node, opts: DialOptions) -> bool:
        """Whether `take` would return a connection now (nothing is counted or started)."""
        ...

    def report_dead(self) -> None:
        """A connection taken from the pool was closed by the node at its first use (the flow
        dialed fresh)."""
        ...


class Outbound(Protocol):
    """What the relay asks of an outbound id: direct, block, or a group of nodes."""

    name: str

    async def dial_tcp(self, dst: Destination) -> Dialed: ...

    async def open_udp(self, family: int, on_reply: ReplyCallback) -> UdpAssociation: ...

    async def start(self) -> None: ...

    async def close(self) -> None: ...


__all__ = ["AllNodesDown", "Blocked", "ConnectionPool", "DialError", "DialOptions", "Destination", "Dialed",
           "FastPath", "Node", "Outbound", "Prepared",
           "OutboundError", "ProxyAuthError", "ProxyProtocolError", "ProxyRefusedError",
           "ReplyCallback", "UdpAssociation", "format_hostport", "parse_hostport"]
