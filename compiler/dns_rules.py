"""`dns`: what the runtime's DNS module needs, compiled (bind address, structured rules, warnings).

`settings.dns_settings` validates the names and targets of the DNS rules; this pass gives them
their meaning with the routing checker's own matchers, so `qname()` means exactly what
`domain()` means (same keys, geosite and ext), and `ip()` what `dip()` means (CIDRs, geoip):
- each rule becomes `{"text", "line", "target", "calls": [...]}`, a call being
  `{"func", "negated", ...}` with `domain_bit` (qname: a bit of `dns.domain_sets`), `qtypes`
  (numbers), `upstreams` (names) or `v4`/`v6` (CIDR strings);
- `dns.domain_sets`: the qname domain sets, in the IR's DomainSet fields;
- `dns.bind`: the listen addresses (`[{"host", "port"}]`), checked here with their position.
The runtime evaluates these; it never parses a rule string.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dae_py.contract import fields
from dae_py.contract.capabilities import dns_selector
from dae_py.contract.fields import dnsrules
from dae_py.contract.ir import Field, RoutingIR

from .check import GeoResolver, RoutingChecker
from .diagnostics import Diagnostics, did_you_mean
from .fields.cidr import check_cidrs
from .fields.domain import check_domain
from .load import LoadedConfig
from .rules import RuleSyntaxError, parse_rule
from .subscriptions import source_url

UNSUPPORTED_SCHEMES: tuple[str, ...] = ()  # every scheme of settings.DNS_PORTS has a runtime module
DEFAULT_BIND_PORT = 53
BIND_SCHEMES = ("udp", "tcp", "tcp+udp")


def parse_bind(text: str) -> tuple[str, int]:
    """'10.0.0.1:53', '[fd00::1]:53', '10.0.0.1' or 'fd00::1' -> (ip, port); ValueError if not."""
    text = text.strip()
    port: int | str = DEFAULT_BIND_PORT
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"dns.bind {text!r}: expected '[IPv6]:port'")
        if rest:
            port = rest[1:]
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host = text
    ip = ipaddress.ip_address(host)  # ValueError names the bad address
    if isinstance(port, str) and not port.isdigit():
        raise ValueError(f"dns.bind {text!r}: port {port!r} is not a number")
    port = int(port)
    if not 0 < port < 65536:
        raise ValueError(f"dns.bind {text!r}: port {port} out of range")
    return str(ip), port


def hijack_port(cfg: LoadedConfig, tproxy_port: int) -> int:
    """The port of the DNS module's hijack listener (the program assigns LAN port-53 flows to
    it, docs/dns.md): the one after tproxy_port (before it at the top of the range). 0, nothing
    hijacked, for a config without a dns section (it has no DNS module)."""
    if "dns" not in cfg.data:
        return 0
    return tproxy_port + 1 if tproxy_port < 65535 else tproxy_port - 1


def compile_dns(cfg: LoadedConfig, diags: Diagnostics, dns_out: dict[str, Any], geo: GeoResolver,
                ir: RoutingIR | None, nodes: dict[str, dict[str, Any]] | None = None) -> None:
    """Fill `dns_out` (dns_settings' result) with bind, domain_sets and structured rules."""
    raw = cfg.data.get("dns") or {}
    dns_out["bind"] = []
    bind = raw.get("bind")
    if bind is not None:
        items = [(("dns", "bind"), bind)] if isinstance(bind, str) else \
            [(("dns", "bind", i), b) for i, b in enumerate(bind)]
        for at, item in items:
            # dae (example.dae) also writes 'udp://ADDR:PORT', 'tcp://...', 'tcp+udp://...'
            scheme, sep, rest = str(item).partition("://")
            if sep and scheme in BIND_SCHEMES:
                item = rest
                if scheme != "tcp+udp":
                    diags.warning(cfg.pos.value(at), f"dns.bind {scheme}://: the DNS module listens on both UDP "
                                                     f"and TCP at this address, not on {scheme} only")
            try:
                host, port = parse_bind(str(item))
            except ValueError as exc:
                diags.error(cfg.pos.value(at), f"invalid dns.bind: {exc}",
                            "write 'ADDRESS:PORT', e.g. '192.168.1.1:53' or '[fd00::1]:53'")
                continue
            dns_out["bind"].append({"host": host, "port": port})
    for name, up in dns_out.get("upstream", {}).items():
        if up["scheme"] in UNSUPPORTED_SCHEMES:
            diags.warning(cfg.pos.value(("dns", "upstream", name)),
                          f"dns upstream '{name}': {up['scheme']}:// is not supported yet; queries routed "
                          "to it are answered SERVFAIL", "use tls:// or https://")
        try:
            ipaddress.ip_address(up["host"])
        except ValueError:
            diags.warning(cfg.pos.value(("dns", "upstream", name)),
                          f"dns upstream '{name}': host '{up['host']}' is resolved once at start by the "
                          "gateway's system resolver")
    if dns_out["bind"]:
        req = dns_out.get("routing", {}).get("request")
        fb = req["fallback"] if req else "asis"
        if fb == "asis":
            at_fb = cfg.pos.value(("dns", "routing", "request", "fallback")) if req else cfg.pos.value(("dns", "bind"))
            diags.warning(at_fb, "dns.bind clients asked the gateway itself: a query that request routing sends to "
                              "'asis' has no other server and is answered SERVFAIL",
                          "make an upstream dns.routing.request.fallback")
    if ir is not None:
        _upstreams_bypass_routing(cfg, diags, dns_out, ir)
    checker = RoutingChecker(cfg, diags, [], geo)
    routing = raw.get("routing") or {}
    selector_rules: list[tuple[Any, Any, str]] = []
    for section, sec in dns_out.get("routing", {}).items():
        texts = (routing.get(section) or {}).get("rules") or []
        compiled = []
        for i, text in enumerate(texts):
            path = ("dns", "routing", section, "rules", i)
            try:
                ast = parse_rule(text)
            except RuleSyntaxError:
                continue  # reported by dns_settings
            if section == "request" and any(c.name in INTERNAL_SELECTORS for c in ast.calls):
                kind = check_selector_rule(ast, dns_out.get("upstream", {}), lambda *_: None)
                if kind is not None:  # a bad one: dns_settings reported it
                    selector_rules.append((ast, cfg.pos.value(path), kind))
                continue

            def locate(off: int, p: tuple[Any, ...] = path) -> Any:
                return cfg.pos.in_string(p, off)

            calls = [_call(checker, call, locate, diags) for call in ast.calls]
            compiled.append({"text": text, "line": cfg.pos.value(path).line, "target": ast.outbound.name,
                             "calls": calls})
        sec["rules"] = compiled
    if selector_rules:
        dns_out["internal"] = compile_selectors(cfg, diags, selector_rules, nodes or {})
    dns_out["domain_sets"] = [
        {"bit": d.bit, "full": list(d.full), "suffix": list(d.suffix), "keyword": list(d.keyword),
         "regex": list(d.regex)} for d in sorted(checker.domain_sets.values(), key=lambda d: d.bit)]


def _upstreams_bypass_routing(cfg: LoadedConfig, diags: Diagnostics, dns_out: dict[str, Any],
                              ir: RoutingIR) -> None:
    """The module dials each upstream through the routing decision for its address (a group's
    nodes, or direct); say so where that decision is `block`, which leaves the upstream dead."""
    from dae_py.contract.evaluate import Flow, classify
    from dae_py.contract.ir import L4_TCP, L4_UDP

    for name, up in dns_out.get("upstream", {}).items():
        try:
            dst = ipaddress.ip_address(up["host"])
        except ValueError:
            continue
        proto = L4_UDP if up["scheme"] in ("udp", "tcp+udp", "quic", "h3", "http3") else L4_TCP
        src = ipaddress.ip_address("0.0.0.0" if dst.version == 4 else "::")
        d = classify(ir, Flow(l4proto=proto, src=src, sport=0, dst=dst, dport=int(up["port"])))
        if d.outbound == "block":
            diags.warning(cfg.pos.value(("dns", "upstream", name)),
                          f"dns upstream '{name}': routing would send {dst} to 'block': every query routed "
                          "to it is answered SERVFAIL")


@dataclass
class _DnsCheck:
    """The compiler's side of `dnsrules.CheckContext` for one rule: its diagnostics, positions and
    the routing checker whose domain() and dip() give qname() and ip() their meaning."""

    checker: RoutingChecker
    locate: Callable[[int], Any]
    diags: Diagnostics

    def error(self, offset: int, message: str, hint: str | None = None) -> None:
        self.diags.error(self.locate(offset), message, hint)

    def domain_bit(self, call: Any) -> int | None:
        ref = check_domain(self.checker, fields.spec(Field.DOMAIN), call, self.locate)
        return ref.bit if ref is not None else None

    def cidrs(self, call: Any) -> tuple[list[str], list[str]] | None:
        cidrs = check_cidrs(self.checker, fields.spec(Field.DIP), call, self.locate)
        return None if cidrs is None else ([str(n) for n in cidrs.v4], [str(n) for n in cidrs.v6])


def _call(checker: RoutingChecker, call: Any, locate: Any, diags: Diagnostics) -> dict[str, Any]:
    out: dict[str, Any] = {"func": call.name, "negated": call.negated}
    s = dnsrules.spec(call.name)
    if s is not None:  # an unknown name was reported by dns_settings
        out.update(s.check(_DnsCheck(checker, locate, diags), call))
    return out


# ---- dae's internal DNS selectors: sub(), node(), subnode() ----------------------------------------
# In dae's dns.routing.request these choose the upstream dae itself uses for its own lookups:
# sub() the host of a subscription it fetches, node() the server host of a node, subnode() that of
# a node from a subscription (tried before node()). They cannot be mixed with qname/qtype in a
# rule, their targets must be dns.upstream names, and they have no fallback (no rule matched: the
# usual resolver). Keys (dae component/daedns/router.go): sub(TAG, tag:, tag_regex:/regex:,
# link_keyword:, link_regex:), node(NAME, name:, name_keyword:, name_regex:, link_keyword:,
# link_regex:), subnode(SUBTAG, subtag:, subtag_regex:/regex: and node()'s keys). A call's
# parameters are ORed; `!` negates the call (subnode() still needs a subscription node); a rule's
# calls are ANDed; the first rule that matches decides. The compiler knows every subscription and
# node, so it evaluates them here: `dns.internal` maps each one to its upstream.

INTERNAL_SELECTORS = ("sub", "node", "subnode")
_NODE_KEYS = ("", "name", "name_keyword", "name_regex", "link_keyword", "link_regex")
SELECTOR_KEYS: dict[str, tuple[str, ...]] = {
    "sub": ("", "tag", "tag_regex", "regex", "link_keyword", "link_regex"),
    "node": _NODE_KEYS,
    "subnode": ("", "subtag", "subtag_regex", "regex") + _NODE_KEYS[1:],
}


@dataclass(frozen=True)
class _Target:
    """What a selector looks at: a subscription (tag, link) or a node (name, link, subscription tag)."""

    name: str
    link: str
    subtag: str | None = None


def _condition(key: str, values: list[str], t: _Target, func: str) -> bool:
    import re

    if func == "sub":
        field = t.link if key.startswith("link") else t.name
    elif key in ("", "subtag", "subtag_regex", "regex") and func == "subnode":
        field = t.subtag or ""
    else:
        field = t.link if key.startswith("link") else t.name
    if key.endswith("regex"):
        return any(re.search(v, field) for v in values)
    if key.endswith("keyword"):
        return any(v in field for v in values)
    return field in values


def selector_matches(call: Any, t: _Target) -> bool:
    """One sub()/node()/subnode() call against a subscription or node, as dae evaluates it."""
    if call.name == "subnode" and not t.subtag:
        return False
    if not call.params:
        hit = True
    else:
        groups: dict[str, list[str]] = {}
        for p in call.params:
            groups.setdefault(p.key or "", []).append(p.value)
        hit = any(_condition(k, vs, t, call.name) for k, vs in groups.items())
    return bool(hit != call.negated)


def check_selector_rule(ast: Any, upstreams: Any, error: Callable[[int, str, str | None], None]) -> str | None:
    """The selector of a request rule that uses one (None for an ordinary qname/qtype rule),
    reporting dae's errors: mixed selectors, an unknown key, a bad regex, a non-upstream target."""
    import re

    kinds = {c.name for c in ast.calls if c.name in INTERNAL_SELECTORS}
    if not kinds:
        return None
    others = [c for c in ast.calls if c.name not in INTERNAL_SELECTORS]
    if others:
        error(others[0].offset, f"cannot mix '{others[0].name}' with dae's internal DNS selectors "
                                f"({', '.join(sorted(kinds))}) in one rule", "write them as separate rules")
        return None
    if len(kinds) > 1:
        error(ast.calls[0].offset, f"cannot mix internal DNS selectors ({', '.join(sorted(kinds))}) in one rule",
              "one rule selects subscriptions, nodes or subscription nodes")
        return None
    (kind,) = kinds
    ok = True
    for c in ast.calls:
        for p in c.params:
            key = p.key or ""
            if key not in SELECTOR_KEYS[kind]:
                known = [k for k in SELECTOR_KEYS[kind] if k]
                error(p.offset, f"unknown {kind}() key '{key}'", did_you_mean(key, known))
                ok = False
            elif key.endswith("regex"):
                try:
                    re.compile(p.value)
                except re.error as exc:
                    error(p.value_offset, f"invalid regex {p.value!r}: {exc}", None)
                    ok = False
    out = ast.outbound
    if out.name not in upstreams or out.params:
        error(out.offset, f"{kind}() rules choose a dns upstream: '{out.name}' is not one"
              + (" (no parameters either)" if out.params else ""), did_you_mean(out.name, upstreams))
        ok = False
    return kind if ok else None


def compile_selectors(cfg: LoadedConfig, diags: Diagnostics, rules: list[tuple[Any, Any, str]],
                      nodes: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """`dns.internal`: the selector rules, and the upstream each subscription and node gets."""
    subs = [_Target(str(tag), source_url(entry)) for tag, entry in (cfg.data.get("subscriptions") or {}).items()]
    targets = [_Target(name, str(n.get("link") or ""), n.get("tag")) for name, n in nodes.items()]

    def pick(kind: str, t: _Target) -> str | None:
        for ast, _pos, k in rules:
            if k == kind and all(selector_matches(c, t) for c in ast.calls):
                return str(ast.outbound.name)
        return None

    node_upstreams: dict[str, str] = {}
    for t in targets:
        up = (pick("subnode", t) if t.subtag else None) or pick("node", t)
        if up is not None:
            node_upstreams[t.name] = up
    sub_upstreams = {t.name: up for t in subs if (up := pick("sub", t)) is not None}
    for _ast, pos, kind in rules:
        cap = dns_selector(kind)
        if cap is not None and not cap.acts:
            diags.warning(pos, f"{kind}() is compiled (dns.internal in the manifest) but not acted on: {cap.needs}")
    return {"rules": [{"text": ast.text, "selector": kind} for ast, _pos, kind in rules],
            "subscriptions": sub_upstreams, "nodes": node_upstreams}

