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
from dae_py.contract.fields import dnsrules
from dae_py.contract.ir import Field, RoutingIR

from .check import GeoResolver, RoutingChecker
from .diagnostics import Diagnostics
from .fields.cidr import check_cidrs
from .fields.domain import check_domain
from .load import LoadedConfig
from .rules import RuleSyntaxError, parse_rule

UNSUPPORTED_SCHEMES: tuple[str, ...] = ()  # every scheme of settings.DNS_PORTS has a runtime module
DEFAULT_BIND_PORT = 53


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


def compile_dns(cfg: LoadedConfig, diags: Diagnostics, dns_out: dict[str, Any], geo: GeoResolver,
                ir: RoutingIR | None) -> None:
    """Fill `dns_out` (dns_settings' result) with bind, domain_sets and structured rules."""
    has_domain_rules = bool(ir and ir.domain_sets)
    raw = cfg.data.get("dns") or {}
    dns_out["bind"] = []
    bind = raw.get("bind")
    if bind is not None:
        items = [(("dns", "bind"), bind)] if isinstance(bind, str) else \
            [(("dns", "bind", i), b) for i, b in enumerate(bind)]
        for at, item in items:
            try:
                host, port = parse_bind(str(item))
            except ValueError as exc:
                diags.error(cfg.pos.value(at), f"invalid dns.bind: {exc}",
                            "write 'ADDRESS:PORT', e.g. '192.168.1.1:53' or '[fd00::1]:53'")
                continue
            dns_out["bind"].append({"host": host, "port": port})
    at_dns = cfg.pos.key(("dns",)) if "dns" in cfg.data else None
    if at_dns is not None or has_domain_rules:
        where = at_dns if at_dns is not None else cfg.pos.key(("routing",))
        diags.warning(where, "DNS from the LAN (port 53) is not intercepted by this version: domain() rules "
                             "only see names resolved through dns.bind",
                      None if dns_out["bind"] else "set dns.bind (e.g. the gateway's LAN address) and point "
                                                   "the clients' resolver at it")
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
    for section, sec in dns_out.get("routing", {}).items():
        texts = (routing.get(section) or {}).get("rules") or []
        compiled = []
        for i, text in enumerate(texts):
            path = ("dns", "routing", section, "rules", i)
            try:
                ast = parse_rule(text)
            except RuleSyntaxError:
                continue  # reported by dns_settings

            def locate(off: int, p: tuple[Any, ...] = path) -> Any:
                return cfg.pos.in_string(p, off)

            calls = [_call(checker, call, locate, diags) for call in ast.calls]
            compiled.append({"text": text, "line": cfg.pos.value(path).line, "target": ast.outbound.name,
                             "calls": calls})
        sec["rules"] = compiled
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
