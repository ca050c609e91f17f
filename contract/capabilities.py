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
                       needs="the DNS module (it binds the names it answers, for hijacked LAN DNS and "
                             "dns.bind clients, to their addresses)"),
)

OPTIONS: tuple[OptionCapability, ...] = (
    # TCP flows to groups are sniffed (TLS SNI, HTTP Host: runtime/sniff); UDP flows are dialled by address
    OptionCapability("dial_mode", acts=True),
    OptionCapability("sniffing_timeout", acts=True),
    OptionCapability("tproxy_port_protect", acts=False, unless=(True,),
                     missing="the runtime always protects the tproxy port (its guard program cannot be "
                             "turned off)"),
    OptionCapability("disable_waiting_network", acts=False, unless=(True,),
                     missing="the runtime does not wait for the network"),
    OptionCapability("tls_implementation", acts=False, unless=("tls",),
                     missing="the runtime's TLS is Python's ssl module"),
    OptionCapability("utls_imitate", acts=False, missing="the runtime has no uTLS fingerprints"),
    # dae's other global options (config/config.go `Global`), issue 12: each is one row
    OptionCapability("bpf_conn_state_map_size", acts=True),  # the `flows` map's max_entries
    OptionCapability("relay_workers", acts=True),  # TCP relay worker processes on the tproxy port (relay/workers.py)
    OptionCapability("mptcp", acts=True),  # the relay's TCP sockets to nodes are IPPROTO_MPTCP (TCP if refused)
    OptionCapability("relay_mode", acts=True),  # sockmap | splice | copy (runtime/relay/sockmap.py)
    OptionCapability("pprof_port", acts=False, unless=(0,),
                     missing="the runtime is Python and has no pprof endpoint (profile it with py-spy; "
                             "counters are at the controller's /metrics)"),
    OptionCapability("disable_thp", acts=False, unless=(False,),
                     missing="the runtime leaves transparent huge pages as the system sets them"),
    OptionCapability("enable_local_tcp_fast_redirect", acts=False, unless=(False,),
                     missing="deprecated in dae (unused since its PR 912); there is no such redirect here"),
    OptionCapability("auto_config_firewall_rule", acts=False, unless=(False,),
                     missing="deprecated in dae (unused since its PR 458); the runtime writes no firewall rules"),
    OptionCapability("tls_fragment", acts=False, unless=(False,),
                     missing="the runtime sends each TLS ClientHello in one piece (no fragmentation)"),
    OptionCapability("tls_fragment_length", acts=False,
                     missing="only tls_fragment uses it, and the runtime does not fragment ClientHellos"),
    OptionCapability("tls_fragment_interval", acts=False,
                     missing="only tls_fragment uses it, and the runtime does not fragment ClientHellos"),
    OptionCapability("bootstrap_resolver", acts=False,
                     missing="the runtime resolves node and DNS upstream host names once, with the system "
                             "resolver (getaddrinfo)"),
    OptionCapability("fallback_resolver", acts=False,
                     missing="the runtime resolves host names with the system resolver only (no fallback server)"),
    OptionCapability("bandwidth_max_tx", acts=False, unless=(0, "0"),
                     missing="no outbound here uses bandwidth hints (they are for Hysteria2, which the runtime "
                             "does not dial)"),
    OptionCapability("bandwidth_max_rx", acts=False, unless=(0, "0"),
                     missing="no outbound here uses bandwidth hints (they are for Hysteria2, which the runtime "
                             "does not dial)"),
    OptionCapability("udphop_interval", acts=False,
                     missing="no outbound here hops UDP ports (Hysteria2 port hopping is not supported)"),
)

#: `dns` options the compiler accepts but the runtime's DNS module does not act on (same form).
DNS_OPTIONS: tuple[OptionCapability, ...] = (
    OptionCapability("optimistic_cache_ttl", acts=False,
                     missing="the DNS module has no optimistic cache (an expired answer is queried again before "
                             "it is served), so there is no stale window"),
)


#: dae's internal DNS selectors in dns.routing.request (sub, node, subnode): the compiler evaluates
#: them into `dns.internal` (which upstream resolves each subscription's and node's host).
_SELECTOR_NEEDS = ("the runtime resolves subscription and node hosts with the system resolver "
                   "(getaddrinfo), not through dns.upstream")
DNS_SELECTORS: tuple[FunctionCapability, ...] = (
    FunctionCapability("sub", acts=False, needs=_SELECTOR_NEEDS),
    FunctionCapability("node", acts=False, needs=_SELECTOR_NEEDS),
    FunctionCapability("subnode", acts=False, needs=_SELECTOR_NEEDS),
)


def dns_selector(name: str) -> FunctionCapability | None:
    for f in DNS_SELECTORS:
        if f.name == name:
            return f
    return None


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


def ignored_option(key: str, value: object, table: tuple[OptionCapability, ...] = OPTIONS) -> OptionCapability | None:
    """The option's row (in `table`: OPTIONS for `global`, DNS_OPTIONS for `dns`) when the runtime
    would ignore `value` for it, else None."""
    for o in table:
        if o.key == key and not o.acts and value not in o.unless:
            return o
    return None


#: Protocols a chain (`a -> b`, runtime/proxy/chain.py) can run after its first hop, on the
#: previous hop's stream (their `dial_on`); any dialable protocol can be the first hop.
CHAIN_HOPS: tuple[str, ...] = ("socks5", "http", "ss", "trojan", "vmess", "vless")
#: Those that carry UDP inside their own stream (their `associate_on`): a chain whose last hop
#: is one of them carries UDP too. SOCKS5 and Shadowsocks relay UDP beside the stream (a UDP
#: socket to the server), which no earlier hop can carry, so such a chain is TCP only.
CHAIN_UDP: tuple[str, ...] = ("trojan", "vmess", "vless")


def udp_missing(protocol: str, chained: bool) -> str | None:
    """Why a node of `protocol` (the last hop, when `chained`) carries no UDP, or None when it
    does: the one wording the compiler's warning, the groups' refusals and the status share."""
    if protocol not in UDP_PROTOCOLS:
        return f"{protocol} nodes carry no UDP"
    if chained and protocol not in CHAIN_UDP:
        return (f"a chain carries UDP only when its last hop is {', '.join(CHAIN_UDP)}; "
                f"this one ends in {protocol}")
    return None
