"""What the runtime acts on: proxy protocols, routing functions and config options.

The compiler accepts more than the runtime does (dae's whole config language); for each thing
it accepts but the runtime does not act on, this table says what is missing, and the compiler
warns at the thing's file:line:col with that text. A later issue that adds a capability flips
its entry here, and its warning goes away: nothing else lists what the runtime can do.

tests/test_capabilities.py checks the protocol rows against the runtime's own list.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProtocolCapability:
    """A node link scheme. `dialable`: the runtime has an outbound for it; `udp`: it also relays
    UDP through it; `missing`: why not, when it is not dialable."""

    scheme: str
    dialable: bool
    udp: bool = False
    missing: str = ""


@dataclass(frozen=True)
class FunctionCapability:
    """A routing function. `acts`: a packet on a real network is routed by it. `needs`: what it
    depends on to act (checked against the config), or, when it does not act, what is missing."""

    name: str
    acts: bool
    needs: str = ""


@dataclass(frozen=True)
class OptionCapability:
    """A `global` option the compiler parses. `acts`: False when the runtime ignores it, with
    `missing` saying what would make it count; `unless` lists the values that need nothing
    (the runtime's own behaviour already is that value)."""

    key: str
    acts: bool
    missing: str = ""
    unless: tuple[object, ...] = ()


PROTOCOLS: tuple[ProtocolCapability, ...] = (
    ProtocolCapability("socks5", dialable=True, udp=True),
    ProtocolCapability("http", dialable=True),
    ProtocolCapability("https", dialable=True),
    ProtocolCapability("ss", dialable=True, udp=True),
    ProtocolCapability("trojan", dialable=True, udp=True),
    ProtocolCapability("socks5h", dialable=False,
                       missing="no socks5h outbound; socks5:// works: the relay sends addresses, not names"),
    ProtocolCapability("vmess", dialable=True, udp=True),
    ProtocolCapability("vless", dialable=True, udp=True),
)


@dataclass(frozen=True)
class TransportCapability:
    """A v2ray stream transport a vmess/vless link may name (`net` / `type`). `dialable`: the
    runtime opens it (TLS composes with each of them); `missing`: why not."""

    network: str
    dialable: bool
    missing: str = ""


TRANSPORTS: tuple[TransportCapability, ...] = (
    TransportCapability("tcp", dialable=True),
    TransportCapability("ws", dialable=True),
    TransportCapability("h2", dialable=True),
    TransportCapability("http", dialable=True),  # v2rayN's name for h2
    TransportCapability("grpc", dialable=False, missing="no gRPC transport in the runtime"),
    TransportCapability("quic", dialable=False, missing="no QUIC transport in the runtime"),
    TransportCapability("kcp", dialable=False, missing="no mKCP transport in the runtime"),
    TransportCapability("httpupgrade", dialable=False, missing="no HTTPUpgrade transport in the runtime"),
)


def transport(network: str) -> TransportCapability | None:
    for t in TRANSPORTS:
        if t.network == network:
            return t
    return None

#: The schemes the runtime dials, in the order of its registry (runtime/proxy/registry.py).
RUNTIME_PROTOCOLS: tuple[str, ...] = tuple(p.scheme for p in PROTOCOLS if p.dialable)
UDP_PROTOCOLS: tuple[str, ...] = tuple(p.scheme for p in PROTOCOLS if p.udp)
KNOWN_PROTOCOLS: frozenset[str] = frozenset(p.scheme for p in PROTOCOLS)

#: Routing functions whose effect depends on more than the datapath. The others (sip, dip, sport,
#: dport, l4proto, ipversion, mac, dscp) act wherever the tc program is attached.
FUNCTIONS: tuple[FunctionCapability, ...] = (
    FunctionCapability("pname", acts=True,
                       needs="local-host routing: the gateway's own traffic is classified where it leaves "
                             "wan_interface, named by cgroup v2 hooks (docs/local-routing.md)"),
    FunctionCapability("domain", acts=True,
                       needs="the DNS module (it binds the names it resolves for dns.bind clients to their "
                             "addresses)"),
)

OPTIONS: tuple[OptionCapability, ...] = (
    # TCP flows to groups are sniffed (TLS SNI, HTTP Host: runtime/sniff); UDP flows are dialled by address
    OptionCapability("dial_mode", acts=True),
    OptionCapability("sniffing_timeout", acts=True),
    OptionCapability("tproxy_port_protect", acts=False, unless=(True,),
                     missing="the runtime always protects the tproxy port (its guard program cannot be "
                             "turned off)"),
    OptionCapability("disable_waiting_network", acts=False, missing="the runtime does not wait for the network"),
    OptionCapability("tls_implementation", acts=False, missing="the runtime's TLS is Python's ssl module"),
    OptionCapability("utls_imitate", acts=False, missing="the runtime has no uTLS fingerprints"),
)


def protocol(scheme: str) -> ProtocolCapability | None:
    for p in PROTOCOLS:
        if p.scheme == scheme:
            return p
    return None


def function(name: str) -> FunctionCapability | None:
    for f in FUNCTIONS:
        if f.name == name:
            return f
    return None


def ignored_option(key: str, value: object) -> OptionCapability | None:
    """The option's row when the runtime would ignore `value` for it, else None."""
    for o in OPTIONS:
        if o.key == key and not o.acts and value not in o.unless:
            return o
    return None
