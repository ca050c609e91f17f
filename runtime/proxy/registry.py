"""The proxy protocols the runtime dials, each listed once.

A protocol is one module of this package (`runtime/proxy/<module>.py`) exporting

- `dial(node, dst, opts) -> Stream`: a TCP stream to `dst` through `node`, handshake done;
- `associate(node, opts, on_reply) -> UdpAssociation`, when the protocol carries UDP;
- `FAST_PATH` (a `base.FastPath`), when the relay may dial it from callbacks without a task
  (a pipelined handshake whose reply length is known from its first bytes);
- `PREPARED` (a `base.Prepared`), when a connection to a node can be opened and negotiated
  before a flow needs it (the relay's warm pool), leaving one request and its reply per flow;
- `dial_on(raw, node, dst, opts) -> Stream`, when it can ride on a stream already connected to
  the node (a chain's later hop: `runtime/proxy/chain.py`);
- `associate_on(connect, node, opts, on_reply) -> UdpAssociation`, when it carries UDP inside
  its own stream: `connect()` gives a fresh stream already connected to the node (straight,
  or through a chain's earlier hops), so a chain ending in it carries UDP;
- `start(node)` / `stop(node)`, when a node needs something running while a group holds it
  (a SIP003 plugin process).

The table below is data only: it imports no protocol module at load time, so `base.Node` can
check a manifest's protocol name against it without an import cycle. It says where each protocol
lives; what the runtime can do with it (dial, UDP) is the contract's capability table
(`contract.capabilities`), which the compiler reads too. A new protocol is one module plus one
line here, and its capability row flipped (which removes the compiler's warning for its nodes);
tests/test_capabilities.py keeps the two in step.
"""
from __future__ import annotations

import functools
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from dae_py.contract import capabilities


@dataclass(frozen=True)
class ProtocolEntry:
    """One protocol: the scheme a manifest node names and the module that implements it."""

    scheme: str
    module: str

    @property
    def udp(self) -> bool:
        """Whether it carries UDP, as the capability table says."""
        return self.scheme in capabilities.UDP_PROTOCOLS


ENTRIES: tuple[ProtocolEntry, ...] = (
    ProtocolEntry("socks5", "socks5"),
    ProtocolEntry("http", "http"),
    ProtocolEntry("https", "https"),
    ProtocolEntry("ss", "shadowsocks"),
    ProtocolEntry("trojan", "trojan"),
    ProtocolEntry("vmess", "vmess"),
    ProtocolEntry("vless", "vless"),
)

#: The schemes of the node protocols the runtime dials.
PROTOCOLS: tuple[str, ...] = tuple(e.scheme for e in ENTRIES)
#: Those of them that also carry UDP.
UDP_PROTOCOLS: tuple[str, ...] = tuple(e.scheme for e in ENTRIES if e.udp)
#: Those that can follow another hop in a chain, and those of them a chain ends in to carry UDP
#: (contract.capabilities; tests/test_capabilities.py checks the modules provide the functions).
CHAIN_HOPS: tuple[str, ...] = tuple(e.scheme for e in ENTRIES if e.scheme in capabilities.CHAIN_HOPS)
CHAIN_UDP: tuple[str, ...] = tuple(e.scheme for e in ENTRIES if e.scheme in capabilities.CHAIN_UDP)

_BY_SCHEME = {e.scheme: e for e in ENTRIES}


@functools.cache
def load(scheme: str) -> ModuleType:
    """The module implementing `scheme`; KeyError for a scheme not in the table."""
    return importlib.import_module(f"{__package__}.{_BY_SCHEME[scheme].module}")


def dialers() -> dict[str, Callable[..., Awaitable[Any]]]:
    """scheme -> dial, for every protocol."""
    return {e.scheme: load(e.scheme).dial for e in ENTRIES}


def associators() -> dict[str, Callable[..., Awaitable[Any]]]:
    """scheme -> associate, for the protocols that carry UDP."""
    return {e.scheme: load(e.scheme).associate for e in ENTRIES if e.udp}


def fast_paths() -> dict[str, Any]:
    """scheme -> FAST_PATH (a `base.FastPath`, not named here: base imports this module), for
    the protocols that offer one."""
    found: dict[str, Any] = {}
    for e in ENTRIES:
        fast = getattr(load(e.scheme), "FAST_PATH", None)
        if fast is not None:
            found[e.scheme] = fast
    return found


def prepared_paths() -> dict[str, Any]:
    """scheme -> PREPARED (a `base.Prepared`: connections a warm pool opens and negotiates
    before a flow needs them), for the protocols that offer one."""
    found: dict[str, Any] = {}
    for e in ENTRIES:
        prepared = getattr(load(e.scheme), "PREPARED", None)
        if prepared is not None:
            found[e.scheme] = prepared
    return found


def stream_dialers() -> dict[str, Callable[..., Awaitable[Any]]]:
    """scheme -> dial_on, for the protocols that can ride on a given stream (chain hops)."""
    found: dict[str, Callable[..., Awaitable[Any]]] = {}
    for e in ENTRIES:
        dial_on = getattr(load(e.scheme), "dial_on", None)
        if dial_on is not None:
            found[e.scheme] = dial_on
    return found


def stream_associators() -> dict[str, Callable[..., Awaitable[Any]]]:
    """scheme -> associate_on, for the protocols that carry UDP inside a stream they are given
    (the last hop of a chain that carries UDP)."""
    found: dict[str, Callable[..., Awaitable[Any]]] = {}
    for e in ENTRIES:
        associate_on = getattr(load(e.scheme), "associate_on", None)
        if associate_on is not None:
            found[e.scheme] = associate_on
    return found


def lifecycles() -> dict[str, tuple[Callable[[Any], None], Callable[[Any], None]]]:
    """scheme -> (start, stop), for the protocols whose nodes run something while held."""
    found: dict[str, tuple[Callable[[Any], None], Callable[[Any], None]]] = {}
    for e in ENTRIES:
        module = load(e.scheme)
        start, stop = getattr(module, "start", None), getattr(module, "stop", None)
        if start is not None and stop is not None:
            found[e.scheme] = (start, stop)
    return found
