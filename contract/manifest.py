"""The typed manifest: what dae-compile writes into manifest.json and the runtime reads back.

The compiler builds a `Manifest` and writes `to_json()`; the runtime reads `Manifest.from_json()`
and never sees a raw dict, so a key renamed on one side is a type error on the other, not a
KeyError on a gateway at start. The JSON on disk is the format `MANIFEST_FORMAT` names: each
class here writes exactly the keys the compiler wrote before it existed, and keys this version
does not know are kept verbatim in `extra` (a newer compiler's manifest round-trips unchanged).

Readers are lenient about missing keys (defaults: dae's), because tests and tools build partial
manifests; what a value must be to be usable is checked by the runtime part that uses it.

Secrets (node passwords, UUIDs, the link that carries them) never appear in a repr: the fields
holding them are `repr=False`, so a manifest object in a log line or a traceback leaks nothing.
"""
from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .version import COMPILER_VERSION, MANIFEST_FORMAT

#: The mark the relay's own sockets carry when the config leaves `so_mark_from_dae` at 0 (the
#: datapath lets marked packets pass untouched: without a mark the relay would hijack itself).
DEFAULT_SO_MARK = 0x800000

JSON = dict[str, Any]


class ManifestError(ValueError):
    """The manifest lacks a key the runtime cannot do without, or a value has the wrong type."""


def _req(raw: Mapping[str, Any], key: str, what: str) -> Any:
    try:
        return raw[key]
    except KeyError:
        raise ManifestError(f"manifest {what}: missing key {key!r}") from None


def _float(raw: Mapping[str, Any], key: str, what: str) -> float | None:
    """An optional number; the value is echoed in the error (use only where it is no secret)."""
    value = raw.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ManifestError(f"manifest {what}: {key} {value!r} is not a number")
    return float(value)


def _extra(raw: Mapping[str, Any], known: frozenset[str]) -> dict[str, Any]:
    return {k: v for k, v in raw.items() if k not in known}


# --- programs ------------------------------------------------------------------------------


class Attach(str, enum.Enum):
    """Where the runtime attaches a program (the runtime looks programs up by this, not by name)."""

    LAN_INGRESS = "tc-ingress:lan"  # LAN interfaces with an Ethernet header
    LAN_INGRESS_L3 = "tc-ingress:lan-l3"  # LAN interfaces without one (tun, WireGuard, PPP)
    WAN_EGRESS = "tc-egress:wan"  # the gateway's own traffic (pname(), wan_interface)
    WAN_INGRESS = "tc-ingress:wan"  # the gateway's own proxied packets, bounced back in (wan.h)
    TPROXY_SOCKET = "socket:tproxy"  # SO_ATTACH_BPF on the tproxy listeners (port protection)
    # cgroup v2 hooks at the root of the cgroup2 mount (pname(): templates/bpf/cgroup.h)
    CGROUP_SOCK_CREATE = "cgroup:sock_create"
    CGROUP_SOCK_RELEASE = "cgroup:sock_release"
    CGROUP_CONNECT4 = "cgroup:connect4"
    CGROUP_CONNECT6 = "cgroup:connect6"
    CGROUP_SENDMSG4 = "cgroup:sendmsg4"
    CGROUP_SENDMSG6 = "cgroup:sendmsg6"
    TEST_RUN = "test-run"  # never attached: BPF_PROG_TEST_RUN only (benchmarks, explain)


@dataclass(frozen=True)
class ProgramSpec:
    """One program of program.o: its function name, its ELF section and where it goes."""

    name: str
    section: str
    attach: Attach

    def to_json(self) -> JSON:
        return {"name": self.name, "section": self.section, "attach": self.attach.value}

    @classmethod
    def from_json(cls, role: str, raw: Any) -> ProgramSpec:
        if isinstance(raw, str):  # format 1 builds before program specs: {"role": "name"}
            known = {p.name: p for p in PROGRAMS}
            if raw in known:
                return known[raw]
            raise ManifestError(f"manifest program {role!r}: unknown program {raw!r}")
        return cls(name=str(_req(raw, "name", f"program {role!r}")), section=str(raw.get("section", "tc")),
                   attach=Attach(_req(raw, "attach", f"program {role!r}")))


#: The programs every build's program.o holds (templates/bpf/datapath.h), keyed in the manifest
#: by their function name.
PROGRAMS: tuple[ProgramSpec, ...] = (
    ProgramSpec("lan_ingress", "tc", Attach.LAN_INGRESS),
    ProgramSpec("lan_ingress_l3", "tc", Attach.LAN_INGRESS_L3),
    ProgramSpec("wan_egress", "tc", Attach.WAN_EGRESS),
    ProgramSpec("wan_ingress", "tc", Attach.WAN_INGRESS),
    ProgramSpec("tproxy_guard", "socket", Attach.TPROXY_SOCKET),
    ProgramSpec("classify_only", "tc", Attach.TEST_RUN),
)

#: The cgroup hooks a build with pname() rules holds besides PROGRAMS (templates/bpf/cgroup.h).
PNAME_PROGRAMS: tuple[ProgramSpec, ...] = (
    ProgramSpec("pname_connect4", "cgroup/connect4", Attach.CGROUP_CONNECT4),
    ProgramSpec("pname_connect6", "cgroup/connect6", Attach.CGROUP_CONNECT6),
    ProgramSpec("pname_sendmsg4", "cgroup/sendmsg4", Attach.CGROUP_SENDMSG4),
    ProgramSpec("pname_sendmsg6", "cgroup/sendmsg6", Attach.CGROUP_SENDMSG6),
)
#: Every cgroup attach point, including the two a build from before sk_storage used (sock_create
#: and sock_release): such a build's manifest still gets all of its hooks attached.
CGROUP_ATTACHES: frozenset[Attach] = frozenset(a for a in Attach if a.value.startswith("cgroup:"))


# --- outbounds, nodes and groups -----------------------------------------------------------


@dataclass(frozen=True)
class OutboundEntry:
    """An outbound id as the datapath's decisions carry it: 0 direct, 1 block, then the groups."""

    id: int
    name: str
    kind: str

    def to_json(self) -> JSON:
        return {"id": self.id, "name": self.name, "kind": self.kind}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> OutboundEntry:
        return cls(id=int(_req(raw, "id", "outbound")), name=str(_req(raw, "name", "outbound")),
                   kind=str(raw.get("kind", "")))


_NODE_KEYS = frozenset({"name", "protocol", "host", "port", "username", "password", "sni", "allow_insecure",
                        "link", "params", "cipher", "alpn", "chain", "dialable", "tag", "transport"})


@dataclass(frozen=True)
class TransportSpec:
    """The stream a VMess/VLESS node's protocol rides on, as its link said (v2ray's
    streamSettings): `network` "tcp", "ws" or "h2" (the runtime dials these), `tls` on top of
    TCP, and for "ws" and "h2" the request path and host (None: the node's; h2 may list several,
    comma-separated, of which the first is used), for "ws" early data
    (`max_early_data` bytes of the first write carried base64url in the `early_data_header` of
    the upgrade request, as `?ed=N` in a link asks; 0: none)."""

    network: str = "tcp"
    tls: bool = False
    path: str = "/"
    host: str | None = None
    max_early_data: int = 0
    early_data_header: str = "Sec-WebSocket-Protocol"

    def to_json(self) -> JSON:
        return {"network": self.network, "tls": self.tls, "path": self.path, "host": self.host,
                "max_early_data": self.max_early_data, "early_data_header": self.early_data_header}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> TransportSpec:
        return cls(network=str(raw.get("network") or "tcp"), tls=bool(raw.get("tls", False)),
                   path=str(raw.get("path") or "/"), host=raw.get("host") or None,
                   max_early_data=int(raw.get("max_early_data") or 0),
                   early_data_header=str(raw.get("early_data_header") or "Sec-WebSocket-Protocol"))


@dataclass(frozen=True)
class NodeSpec:
    """One proxy node with its protocol options, as its link said.

    `username` is repr-hidden too: vmess and vless keep their UUID there. `dialable` and `tag`
    are written for the nodes of the pool (None for a chain's hops, which carry neither)."""

    name: str
    protocol: str
    host: str
    port: int
    username: str | None = field(default=None, repr=False)
    password: str | None = field(default=None, repr=False)
    sni: str | None = None
    allow_insecure: bool = False
    link: str = field(default="", repr=False)
    params: Mapping[str, Any] = field(default_factory=dict, repr=False)  # query options (may hold keys)
    cipher: str | None = None  # ss: the AEAD method; vmess: the security (aes-128-gcm, ...)
    alpn: tuple[str, ...] | None = None  # trojan
    chain: tuple[NodeSpec, ...] | None = None  # the hops before this node (`a -> b`)
    dialable: bool | None = None
    tag: str | None = None  # the subscription it came from
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    transport: TransportSpec | None = None  # vmess, vless: the stream below the protocol

    def to_json(self) -> JSON:
        out: JSON = {"name": self.name, "protocol": self.protocol, "host": self.host, "port": self.port,
                     "username": self.username, "password": self.password, "sni": self.sni,
                     "allow_insecure": self.allow_insecure, "link": self.link, "params": dict(self.params)}
        if self.cipher is not None:
            out["cipher"] = self.cipher
        if self.alpn is not None:
            out["alpn"] = list(self.alpn)
        if self.chain is not None:
            out["chain"] = [hop.to_json() for hop in self.chain]
        if self.dialable is not None:
            out["dialable"] = self.dialable
            out["tag"] = self.tag
        if self.transport is not None:
            out["transport"] = self.transport.to_json()
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> NodeSpec:
        """Raises ManifestError naming the missing key, never echoing the dict (it holds secrets)."""
        what = f"node {raw.get('name')!r}"
        alpn = raw.get("alpn")
        chain = raw.get("chain")
        dialable = raw.get("dialable")
        transport = raw.get("transport")
        return cls(
            name=str(_req(raw, "name", what)), protocol=str(_req(raw, "protocol", what)),
            host=str(_req(raw, "host", what)), port=int(_req(raw, "port", what)),
            username=raw.get("username"), password=raw.get("password"), sni=raw.get("sni"),
            allow_insecure=bool(raw.get("allow_insecure", False)), link=str(raw.get("link") or ""),
            params=dict(raw.get("params") or {}), cipher=raw.get("cipher"),
            alpn=None if alpn is None else tuple(str(p) for p in alpn),
            chain=None if chain is None else tuple(cls.from_json(h) for h in chain),
            dialable=None if dialable is None else bool(dialable), tag=raw.get("tag"),
            extra=_extra(raw, _NODE_KEYS),
            transport=None if transport is None else TransportSpec.from_json(transport))


@dataclass(frozen=True)
class CheckSettings:
    """A group's health-check settings, resolved by the compiler (group value, else global).

    `tcp_check_url` is `[URL, IP...]` and `udp_check_dns` `[HOST[:PORT], IP...]`, as in dae.
    Empty/None: the runtime's defaults (dae's)."""

    tcp_check_url: tuple[str, ...] = ()
    tcp_check_http_method: str | None = None
    udp_check_dns: tuple[str, ...] = ()
    check_interval_s: float | None = None
    check_tolerance_ms: float | None = None

    def to_json(self) -> JSON:
        return {"tcp_check_url": list(self.tcp_check_url), "tcp_check_http_method": self.tcp_check_http_method,
                "udp_check_dns": list(self.udp_check_dns), "check_interval_s": self.check_interval_s,
                "check_tolerance_ms": self.check_tolerance_ms}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None, what: str = "group check") -> CheckSettings:
        if not raw:
            return cls()
        return cls(tcp_check_url=tuple(str(x) for x in raw.get("tcp_check_url") or ()),
                   tcp_check_http_method=raw.get("tcp_check_http_method") or None,
                   udp_check_dns=tuple(str(x) for x in raw.get("udp_check_dns") or ()),
                   check_interval_s=_float(raw, "check_interval_s", what),
                   check_tolerance_ms=_float(raw, "check_tolerance_ms", what))


_GROUP_KEYS = frozenset({"name", "id", "policy", "fixed_index", "nodes", "add_latency_ms", "check"})


@dataclass(frozen=True)
class GroupEntry:
    """A group with its concrete node list (filters were evaluated at compile time)."""

    name: str
    id: int
    policy: str = "random"  # as written; `fixed(N)` is also accepted from hand-made manifests
    fixed_index: int = 0
    nodes: tuple[str, ...] = ()
    add_latency_ms: Mapping[str, float] = field(default_factory=dict)
    check: CheckSettings = field(default_factory=CheckSettings)
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)

    def to_json(self) -> JSON:
        return {"name": self.name, "id": self.id, "policy": self.policy, "fixed_index": self.fixed_index,
                "nodes": list(self.nodes), "add_latency_ms": dict(self.add_latency_ms),
                "check": self.check.to_json(), **self.extra}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> GroupEntry:
        what = f"group {raw.get('name')!r}"
        return cls(name=str(_req(raw, "name", what)), id=int(_req(raw, "id", what)),
                   policy=str(raw.get("policy", "random")), fixed_index=int(raw.get("fixed_index") or 0),
                   nodes=tuple(str(n) for n in raw.get("nodes", ())),
                   add_latency_ms={str(k): float(v) for k, v in (raw.get("add_latency_ms") or {}).items()},
                   check=CheckSettings.from_json(raw.get("check"), f"{what} check"),
                   extra=_extra(raw, _GROUP_KEYS))


@dataclass(frozen=True)
class SubscriptionSpec:
    """A `subscriptions:` entry the runtime fetches (runtime/subscriptions): at start, then
    every `refresh_s`; its nodes are tagged `name` and join the groups whose `filter` (the
    group entry's, contract/nodefilter.py) selects them. `url` may carry a token: never shown
    unmasked; a `file://` URL is absolute (the compiler resolved it against the config)."""

    name: str
    url: str = field(repr=False)
    refresh_s: float = 3600.0

    def to_json(self) -> JSON:
        return {"name": self.name, "url": self.url, "refresh_s": self.refresh_s}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> SubscriptionSpec:
        what = f"subscription {raw.get('name')!r}"
        return cls(name=str(_req(raw, "name", what)), url=str(_req(raw, "url", what)),
                   refresh_s=float(raw.get("refresh_s") or 3600.0))


# --- DNS -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class DnsUpstream:
    name: str
    scheme: str
    host: str
    port: int
    path: str = ""
    url: str = field(default="", repr=False)  # as configured (a DoH URL may carry a token)

    def to_json(self) -> JSON:
        return {"name": self.name, "scheme": self.scheme, "host": self.host, "port": self.port, "path": self.path,
                "url": self.url}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DnsUpstream:
        what = f"dns upstream {raw.get('name')!r}"
        return cls(name=str(_req(raw, "name", what)), scheme=str(_req(raw, "scheme", what)),
                   host=str(_req(raw, "host", what)), port=int(_req(raw, "port", what)),
                   path=str(raw.get("path") or ""), url=str(raw.get("url") or ""))


@dataclass(frozen=True)
class DnsCall:
    """One function call of a DNS rule, compiled: its function, whether it is negated, and the
    arguments its `contract.fields.dnsrules` module wrote (qname: `domain_bit`, qtype: `qtypes`,
    ...). The manifest does not name them: a new DNS function is its module and a registry line."""

    func: str
    negated: bool = False
    args: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> JSON:
        return {"func": self.func, "negated": self.negated, **self.args}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DnsCall:
        args = {k: v for k, v in raw.items() if k not in ("func", "negated")}
        return cls(func=str(_req(raw, "func", "dns rule call")), negated=bool(raw.get("negated")), args=args)


@dataclass(frozen=True)
class DnsRule:
    text: str
    line: int
    target: str = ""
    calls: tuple[DnsCall, ...] = ()

    def to_json(self) -> JSON:
        return {"text": self.text, "line": self.line, "target": self.target,
                "calls": [c.to_json() for c in self.calls]}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DnsRule:
        return cls(text=str(_req(raw, "text", "dns rule")), line=int(raw.get("line", 0)),
                   target=str(raw.get("target", "")),
                   calls=tuple(DnsCall.from_json(c) for c in raw.get("calls", ())))


@dataclass(frozen=True)
class DnsRuleList:
    """dns.routing.request or .response: the rules in order, then the fallback."""

    rules: tuple[DnsRule, ...]
    fallback: str

    def to_json(self) -> JSON:
        return {"rules": [r.to_json() for r in self.rules], "fallback": self.fallback}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None, default: str) -> DnsRuleList:
        if not raw:
            return cls((), default)
        return cls(tuple(DnsRule.from_json(r) for r in raw.get("rules", ())), str(raw.get("fallback", default)))


@dataclass(frozen=True)
class DomainSetSpec:
    """A qname() set of DNS rules (the routing's domain sets live in ir.json)."""

    bit: int
    full: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()
    keyword: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()

    def to_json(self) -> JSON:
        return {"bit": self.bit, "full": list(self.full), "suffix": list(self.suffix),
                "keyword": list(self.keyword), "regex": list(self.regex)}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> DomainSetSpec:
        return cls(bit=int(_req(raw, "bit", "dns domain set")), full=tuple(raw.get("full", ())),
                   suffix=tuple(raw.get("suffix", ())), keyword=tuple(raw.get("keyword", ())),
                   regex=tuple(raw.get("regex", ())))


@dataclass(frozen=True)
class DnsBind:
    host: str
    port: int

    def to_json(self) -> JSON:
        return {"host": self.host, "port": self.port}


_DNS_KEYS = frozenset({"upstream", "routing", "ipversion_prefer", "fixed_domain_ttl", "optimistic_cache",
                       "max_cache_size", "bind", "domain_sets", "hijack_port"})


@dataclass(frozen=True)
class DnsSettings:
    """The `dns` section: upstreams, request/response routing, where the module listens, cache."""

    upstream: Mapping[str, DnsUpstream] = field(default_factory=dict)
    request: DnsRuleList | None = None  # None: the section was not configured (fallback asis)
    response: DnsRuleList | None = None  # None: not configured (fallback accept)
    ipversion_prefer: int = 0
    fixed_domain_ttl: Mapping[str, int] = field(default_factory=dict)
    optimistic_cache: bool = True
    max_cache_size: int = 65536
    bind: tuple[DnsBind, ...] = ()
    domain_sets: tuple[DomainSetSpec, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    # The DNS module's hijack listener (UDP and TCP, v4 and v6): the program assigns LAN DNS
    # (port 53, rule not must_*) to it (templates/bpf/dns_hijack.h). 0: nothing is hijacked.
    hijack_port: int = 0

    def to_json(self) -> JSON:
        routing: JSON = {}
        if self.request is not None:
            routing["request"] = self.request.to_json()
        if self.response is not None:
            routing["response"] = self.response.to_json()
        return {"upstream": {k: u.to_json() for k, u in self.upstream.items()}, "routing": routing,
                "ipversion_prefer": self.ipversion_prefer, "fixed_domain_ttl": dict(self.fixed_domain_ttl),
                "optimistic_cache": self.optimistic_cache, "max_cache_size": self.max_cache_size,
                "bind": [b.to_json() for b in self.bind], "domain_sets": [d.to_json() for d in self.domain_sets],
                **({"hijack_port": self.hijack_port} if self.hijack_port else {}), **self.extra}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> DnsSettings:
        if not raw:
            return cls()
        routing = raw.get("routing") or {}
        return cls(
            upstream={str(k): DnsUpstream.from_json(u) for k, u in (raw.get("upstream") or {}).items()},
            request=DnsRuleList.from_json(routing["request"], "asis") if "request" in routing else None,
            response=DnsRuleList.from_json(routing["response"], "accept") if "response" in routing else None,
            ipversion_prefer=int(raw.get("ipversion_prefer") or 0),
            fixed_domain_ttl=dict(raw.get("fixed_domain_ttl") or {}),
            optimistic_cache=bool(raw.get("optimistic_cache", True)),
            max_cache_size=int(raw.get("max_cache_size", 65536)),
            bind=tuple(DnsBind(str(b["host"]), int(b["port"])) for b in raw.get("bind") or ()),
            domain_sets=tuple(DomainSetSpec.from_json(d) for d in raw.get("domain_sets") or ()),
            extra=_extra(raw, _DNS_KEYS), hijack_port=int(raw.get("hijack_port") or 0))


# --- global settings, rules ----------------------------------------------------------------


_GLOBAL_KEYS = frozenset({"tproxy_port", "tproxy_port_protect", "so_mark_from_dae", "fwmark", "route_table",
                          "lan_interface", "wan_interface", "auto_config_kernel_parameter", "log_level",
                          "dial_mode", "allow_insecure", "external_controller", "secret"})


@dataclass(frozen=True)
class GlobalSettings:
    """`global` with dae's defaults applied. The keys the runtime acts on are typed; the rest (the
    health-check defaults, already resolved into each group, durations as written, paths the
    compiler read) stay in `extra`, written back unchanged."""

    tproxy_port: int = 12345
    tproxy_port_protect: bool = True
    so_mark_from_dae: int = DEFAULT_SO_MARK
    fwmark: int = 0x8000000
    route_table: int = 2023
    lan_interface: tuple[str, ...] = ()
    wan_interface: tuple[str, ...] = ()
    auto_config_kernel_parameter: bool = True
    log_level: str = "info"
    dial_mode: str = "domain"
    allow_insecure: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)
    external_controller: str | None = None  # ADDR:PORT of the controller API (runtime/controller)
    secret: str | None = field(default=None, repr=False)  # the controller's Bearer token

    @property
    def so_mark(self) -> int:
        """The relay sockets' mark (older builds may carry 0: the default)."""
        return self.so_mark_from_dae or DEFAULT_SO_MARK

    def to_json(self) -> JSON:
        return {"tproxy_port": self.tproxy_port, "tproxy_port_protect": self.tproxy_port_protect,
                "so_mark_from_dae": self.so_mark_from_dae, "fwmark": self.fwmark, "route_table": self.route_table,
                "lan_interface": list(self.lan_interface), "wan_interface": list(self.wan_interface),
                "auto_config_kernel_parameter": self.auto_config_kernel_parameter, "log_level": self.log_level,
                "dial_mode": self.dial_mode, "allow_insecure": self.allow_insecure, **self.extra,
                **({"external_controller": self.external_controller} if self.external_controller else {}),
                **({"secret": self.secret} if self.secret is not None else {})}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any] | None) -> GlobalSettings:
        raw = raw or {}
        d = cls()
        return cls(tproxy_port=int(raw.get("tproxy_port", d.tproxy_port)),
                   tproxy_port_protect=bool(raw.get("tproxy_port_protect", d.tproxy_port_protect)),
                   so_mark_from_dae=int(raw.get("so_mark_from_dae") or 0), fwmark=int(raw.get("fwmark", d.fwmark)),
                   route_table=int(raw.get("route_table", d.route_table)),
                   lan_interface=tuple(raw.get("lan_interface") or ()),
                   wan_interface=tuple(raw.get("wan_interface") or ()),
                   auto_config_kernel_parameter=bool(raw.get("auto_config_kernel_parameter", True)),
                   log_level=str(raw.get("log_level", d.log_level)), dial_mode=str(raw.get("dial_mode", d.dial_mode)),
                   allow_insecure=bool(raw.get("allow_insecure", False)), extra=_extra(raw, _GLOBAL_KEYS),
                   external_controller=str(raw["external_controller"]) if raw.get("external_controller") else None,
                   secret=str(raw["secret"]) if raw.get("secret") is not None else None)


@dataclass(frozen=True)
class RuleEntry:
    """One routing rule with its source position (config file:line:col) and its action."""

    index: int
    line: int
    col: int
    text: str
    outbound: str
    mark: int = 0
    must: bool = False
    must_rules: bool = False
    emitted: bool = True  # False: the passes proved it never matches; no code was generated

    def where(self, config_file: str) -> str:
        return f"{config_file}:{self.line}:{self.col}"

    def to_json(self) -> JSON:
        return {"index": self.index, "line": self.line, "col": self.col, "text": self.text,
                "outbound": self.outbound, "mark": self.mark, "must": self.must, "must_rules": self.must_rules,
                "emitted": self.emitted}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> RuleEntry:
        return cls(index=int(_req(raw, "index", "rule")), line=int(raw.get("line", 0)), col=int(raw.get("col", 0)),
                   text=str(raw.get("text", "")), outbound=str(raw.get("outbound", "")),
                   mark=int(raw.get("mark") or 0), must=bool(raw.get("must")), must_rules=bool(raw.get("must_rules")),
                   emitted=bool(raw.get("emitted", True)))


@dataclass(frozen=True)
class FallbackEntry:
    outbound: str
    mark: int = 0
    must: bool = False

    def to_json(self) -> JSON:
        return {"outbound": self.outbound, "mark": self.mark, "must": self.must}


@dataclass(frozen=True)
class MapTable:
    """A map whose contents the compiler wrote (maps/NAME.bin: `entries` key+value records)."""

    name: str
    kind: str
    key_size: int
    value_size: int
    entries: int
    data: str  # path inside the build
    sha256: str

    def to_json(self) -> JSON:
        return {"name": self.name, "kind": self.kind, "key_size": self.key_size, "value_size": self.value_size,
                "entries": self.entries, "data": self.data, "sha256": self.sha256}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> MapTable:
        what = f"map {raw.get('name')!r}"
        return cls(name=str(_req(raw, "name", what)), kind=str(raw.get("kind", "")),
                   key_size=int(_req(raw, "key_size", what)), value_size=int(_req(raw, "value_size", what)),
                   entries=int(_req(raw, "entries", what)), data=str(_req(raw, "data", what)),
                   sha256=str(raw.get("sha256", "")))


# --- the manifest --------------------------------------------------------------------------

_MANIFEST_KEYS = frozenset({"format", "compiler_version", "config", "strategy", "programs", "global", "outbounds",
                            "nodes", "groups", "dns", "rules", "fallback", "domain_sets", "pnames", "maps",
                            "object_sha256", "state_maps", "subscriptions"})


@dataclass(frozen=True)
class Manifest:
    config_file: str
    config_sha256: str
    strategy: str
    settings: GlobalSettings = field(default_factory=GlobalSettings)
    outbounds: tuple[OutboundEntry, ...] = ()
    nodes: tuple[NodeSpec, ...] = ()
    groups: tuple[GroupEntry, ...] = ()
    dns: DnsSettings = field(default_factory=DnsSettings)
    rules: tuple[RuleEntry, ...] = ()
    fallback: FallbackEntry = FallbackEntry("direct")
    pnames: tuple[str, ...] = ()
    programs: tuple[ProgramSpec, ...] = PROGRAMS
    #: Maps holding runtime state (flow decisions, DNS bindings, counters) that a reload must
    #: carry over rather than recreate; see contract/maps.py.
    state_maps: tuple[str, ...] = ()
    maps: tuple[MapTable, ...] = ()  # filled in by the emitter once the tables are written
    object_sha256: str = ""
    domain_sets: str = "ir.json"  # where the routing's domain sets are (ir.json keeps them whole)
    format: int = MANIFEST_FORMAT
    compiler_version: str = COMPILER_VERSION
    extra: Mapping[str, Any] = field(default_factory=dict, repr=False)
    subscriptions: tuple[SubscriptionSpec, ...] = ()  # fetched by the runtime (written only when some)

    def program(self, attach: Attach) -> ProgramSpec:
        """The program to attach at `attach` (KeyError-free: a build without it is a ManifestError)."""
        for p in self.programs:
            if p.attach == attach:
                return p
        raise ManifestError(f"manifest: no program for {attach.value}")

    def cgroup_programs(self) -> tuple[ProgramSpec, ...]:
        """The programs to attach at the cgroup2 root (none in a build without pname() rules)."""
        return tuple(p for p in self.programs if p.attach in CGROUP_ATTACHES)

    def outbound_name(self, oid: int) -> str:
        for o in self.outbounds:
            if o.id == oid:
                return o.name
        return f"#{oid}"

    def rule(self, index: int) -> RuleEntry | None:
        for r in self.rules:
            if r.index == index:
                return r
        return None

    def to_json(self) -> JSON:
        out: JSON = {
            "format": self.format,
            "compiler_version": self.compiler_version,
            "config": {"file": self.config_file, "sha256": self.config_sha256},
            "strategy": self.strategy,
            "programs": {p.name: p.to_json() for p in self.programs},
            "global": self.settings.to_json(),
            "outbounds": [o.to_json() for o in self.outbounds],
            "nodes": [n.to_json() for n in self.nodes],
            "groups": [g.to_json() for g in self.groups],
            "dns": self.dns.to_json(),
            "rules": [r.to_json() for r in self.rules],
            "fallback": self.fallback.to_json(),
            "domain_sets": self.domain_sets,
            "pnames": list(self.pnames),
            "state_maps": list(self.state_maps),
        }
        if self.maps or self.object_sha256:
            out["maps"] = [m.to_json() for m in self.maps]
            out["object_sha256"] = self.object_sha256
        if self.subscriptions:
            out["subscriptions"] = [s.to_json() for s in self.subscriptions]
        return {**out, **self.extra}

    @classmethod
    def from_json(cls, raw: Mapping[str, Any]) -> Manifest:
        """Raises ManifestError for a manifest the runtime cannot use (a missing key, a bad type)."""
        try:
            return cls._from_json(raw)
        except ManifestError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:  # never echo values: nodes hold secrets
            raise ManifestError(f"manifest: a value has the wrong type ({type(exc).__name__})") from None

    @classmethod
    def _from_json(cls, raw: Mapping[str, Any]) -> Manifest:
        config = raw.get("config") or {}
        fb = raw.get("fallback") or {}
        programs = raw.get("programs")
        return cls(
            format=int(raw.get("format", 0)), compiler_version=str(raw.get("compiler_version", "")),
            config_file=str(config.get("file", "?")), config_sha256=str(config.get("sha256", "")),
            strategy=str(raw.get("strategy", "")),
            programs=PROGRAMS if programs is None else tuple(ProgramSpec.from_json(k, v) for k, v in programs.items()),
            settings=GlobalSettings.from_json(raw.get("global")),
            outbounds=tuple(OutboundEntry.from_json(o) for o in raw.get("outbounds", ())),
            nodes=tuple(NodeSpec.from_json(n) for n in raw.get("nodes", ())),
            groups=tuple(GroupEntry.from_json(g) for g in raw.get("groups", ())),
            dns=DnsSettings.from_json(raw.get("dns")),
            rules=tuple(RuleEntry.from_json(r) for r in raw.get("rules", ())),
            fallback=FallbackEntry(str(fb.get("outbound", "direct")), int(fb.get("mark") or 0), bool(fb.get("must"))),
            domain_sets=str(raw.get("domain_sets", "ir.json")), pnames=tuple(raw.get("pnames", ())),
            state_maps=tuple(str(m) for m in raw.get("state_maps", ())),
            maps=tuple(MapTable.from_json(m) for m in raw.get("maps", ())),
            object_sha256=str(raw.get("object_sha256", "")), extra=_extra(raw, _MANIFEST_KEYS),
            subscriptions=tuple(SubscriptionSpec.from_json(s) for s in raw.get("subscriptions", ())))


def nodes_and_groups(raw: Manifest | Mapping[str, Any]) -> tuple[Sequence[NodeSpec], Sequence[GroupEntry]]:
    """The nodes and groups of a typed manifest, or of a partial JSON one (tests, tools)."""
    if isinstance(raw, Manifest):
        return raw.nodes, raw.groups
    return ([NodeSpec.from_json(n) for n in raw.get("nodes", ())],
            [GroupEntry.from_json(g) for g in raw.get("groups", ())])
