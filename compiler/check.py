"""Semantic check: give the parsed rules their meaning and build the routing IR.

Runs after the schema check, so the config's shape is known to be right. Every problem found is
added to `Diagnostics` with the position of the offending token, and checking goes on so the user
sees every problem in one run.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .diagnostics import Diagnostics, SourcePos, did_you_mean
from dae_py.contract.ir import (L4_TCP, L4_UDP, OUTBOUND_BLOCK, OUTBOUND_DIRECT, Action, CidrSet, DomainRef, DomainSet,
                 Field, Match, Outbound, PortSet, Rule, RoutingIR, SourceRef, ValueSet)
from .load import LoadedConfig
from .rules import (Call, Param, RuleAst, RuleSyntaxError, StructuredRuleError, abbreviate, parse_outbound, parse_rule,
                    parse_structured_rule, structured_param_path)
from dae_py.contract.userregex import compile_user_regex
from .values import parse_int, parse_mac, parse_mark, parse_network, parse_port_range

FUNCTIONS: dict[str, Field] = {
    "dip": Field.DIP, "ip": Field.DIP, "sip": Field.SIP, "dport": Field.DPORT, "port": Field.DPORT,
    "sport": Field.SPORT, "l4proto": Field.L4PROTO, "ipversion": Field.IPVERSION, "mac": Field.MAC,
    "dscp": Field.DSCP, "pname": Field.PNAME, "domain": Field.DOMAIN,
}
IP_KEYS = ("geoip", "ext")
DOMAIN_KEYS = ("suffix", "full", "keyword", "regex", "geosite", "ext")
BUILTIN_OUTBOUNDS = ("direct", "block")
TASK_COMM_LEN = 16

Locate = Callable[[int], SourcePos]


@dataclass
class GeoResolver:
    """Reads geoip/geosite tags on demand (one read per file and tag)."""

    geoip_path: Path | None
    geosite_path: Path | None
    asset_dir: Path
    _cache: dict[tuple[str, str, str], Any] = field(default_factory=dict)

    def _file(self, explicit: Path | None, default_name: str) -> Path:
        return explicit if explicit is not None else self.asset_dir / default_name

    def geoip(self, tag: str, path: Path | None = None) -> tuple[Any, ...]:
        from . import geodata

        p = path or self._file(self.geoip_path, "geoip.dat")
        key = ("ip", str(p), tag.lower())
        if key not in self._cache:
            entries = geodata.read_geoip(p, [tag])
            entry = entries[tag.lower()]
            if entry.reverse_match:
                raise ValueError(f"geoip tag '{tag}' in {p} uses reverse_match, which is not supported")
            self._cache[key] = tuple(entry.networks)
        return self._cache[key]

    def geosite(self, tag: str, path: Path | None = None) -> list[Any]:
        from . import geodata

        name, _, attr = tag.partition("@")
        p = path or self._file(self.geosite_path, "geosite.dat")
        key = ("site", str(p), tag.lower())
        if key not in self._cache:
            domains = geodata.read_geosite(p, [name])[name.lower()]
            if attr:
                domains = geodata.filter_attr(domains, attr)
            self._cache[key] = list(domains)
        return self._cache[key]

    def ext(self, spec: str) -> tuple[Path, str]:
        fname, sep, tag = spec.rpartition(":")
        if not sep or not fname or not tag:
            raise ValueError(f"ext value {spec!r} must be \"file.dat:tag\"")
        p = Path(fname)
        return (p if p.is_absolute() else self.asset_dir / p), tag


@dataclass
class RuleContext:
    """Where a rule came from, and how to turn an offset inside it into a file position."""

    source: SourceRef
    locate_call: Callable[[Call, int], SourcePos]
    locate_outbound: Callable[[int], SourcePos]


class RoutingChecker:
    def __init__(self, cfg: LoadedConfig, diags: Diagnostics, groups: list[dict[str, Any]], geo: GeoResolver):
        self.cfg = cfg
        self.diags = diags
        self.geo = geo
        self.function_uses: list[tuple[str, SourcePos]] = []  # (function, where): capability warnings
        self.outbounds: dict[str, int] = {"direct": OUTBOUND_DIRECT, "block": OUTBOUND_BLOCK}
        for g in groups:
            self.outbounds[g["name"]] = g["id"]
        self.groups = groups
        self.used: dict[str, SourcePos] = {}  # outbound name -> where routing first sends flows to it
        self.domain_sets: dict[tuple, DomainSet] = {}
        self.pnames: dict[str, None] = {}

    # ---- entry point -------------------------------------------------------------------------
    def build(self) -> RoutingIR | None:
        routing = self.cfg.data["routing"]
        rules: list[Rule] = []
        for index, raw in enumerate(routing.get("rules") or []):
            rule = self._rule(index, raw)
            if rule is not None:
                rules.append(rule)
        fallback = self._fallback(routing["fallback"])
        self.empty_groups()
        outbounds = tuple(
            Outbound(oid, name, "direct" if oid == 0 else "block" if oid == 1 else "group")
            for name, oid in sorted(self.outbounds.items(), key=lambda kv: kv[1])
        )
        if self.diags.errors or fallback is None:
            return None
        return RoutingIR(rules=tuple(rules), fallback=fallback, outbounds=outbounds,
                         domain_sets=tuple(sorted(self.domain_sets.values(), key=lambda d: d.bit)),
                         pnames=tuple(self.pnames))

    def empty_groups(self) -> None:
        """A group whose filter selects no node: an error if routing uses it, else a warning."""
        for g in self.groups:
            if g["nodes"] or g.get("filter_failed"):
                continue
            name = g["name"]
            at = self.cfg.pos.key(("groups", name))
            hint = ("check its filter against the names in 'nodes'" if self.cfg.data.get("nodes")
                    or self.cfg.data.get("subscriptions") else "define some nodes")
            used = self.used.get(name)
            if used is not None:
                self.diags.error(at, f"group '{name}' selects no node, but routing sends flows to it "
                                     f"(line {used.line})", hint)
            else:
                self.diags.warning(at, f"group '{name}' selects no node (no rule uses it)", hint)

    # ---- one rule ------------------------------------------------------------------------------
    def _rule(self, index: int, raw: Any) -> Rule | None:
        path = ("routing", "rules", index)
        at = self.cfg.pos.value(path)
        if isinstance(raw, str):
            try:
                ast = parse_rule(raw)
            except RuleSyntaxError as exc:
                self.diags.error(self.cfg.pos.in_string(path, exc.offset), f"syntax error: {exc.message}")
                return None
            ctx = RuleContext(
                source=SourceRef(self.cfg.file, at.line, at.col, raw, abbreviate(ast)),
                locate_call=lambda call, off: self.cfg.pos.in_string(path, off),
                locate_outbound=lambda off: self.cfg.pos.in_string(path, off),
            )
        else:
            try:
                ast, call_paths = parse_structured_rule(raw)
            except StructuredRuleError as exc:
                self.diags.error(self.cfg.pos.value(path + exc.path), exc.message, exc.hint)
                return None

            def locate_structured(call: Call, off: int, cp: list = call_paths, a: RuleAst = ast) -> SourcePos:
                k = next(i for i, c in enumerate(a.calls) if c is call)
                return self.cfg.pos.value(path + structured_param_path(raw, cp[k], off))

            ctx = RuleContext(
                source=SourceRef(self.cfg.file, at.line, at.col, ast.text, abbreviate(ast)),
                locate_call=locate_structured,
                locate_outbound=lambda off: self.cfg.pos.value(path + ("outbound",)),
            )
        errors_before = len(self.diags.errors)
        matches = []
        for call in ast.calls:
            m = self._match(call, ctx)
            if m is not None:
                matches.append(m)
        action = self._action(ast.outbound, ctx.locate_outbound)
        if action is None or len(self.diags.errors) > errors_before:
            return None
        return Rule(index=index, matches=tuple(matches), action=action, source=ctx.source)

    def _fallback(self, text: str) -> Action | None:
        path = ("routing", "fallback")
        try:
            call = parse_outbound(text)
        except RuleSyntaxError as exc:
            self.diags.error(self.cfg.pos.in_string(path, exc.offset), f"syntax error in fallback: {exc.message}")
            return None
        action = self._action(call, lambda off: self.cfg.pos.in_string(path, off))
        if action is not None and action.must_rules:
            self.diags.error(self.cfg.pos.value(path), "'must_rules' cannot be the fallback (it goes on matching)")
            return None
        return action

    # ---- outbounds -----------------------------------------------------------------------------
    def _action(self, call: Call, locate: Locate) -> Action | None:
        name = call.name
        if name == "must_rules":
            if call.params:
                self.diags.error(locate(call.params[0].offset), "'must_rules' takes no parameters")
                return None
            return Action(outbound="must_rules", outbound_id=-1, must=True, must_rules=True)
        must = False
        if name.startswith("must_") and name[5:] in self.outbounds:
            must, name = True, name[5:]
        if name not in self.outbounds:
            self.diags.error(locate(call.offset), f"unknown outbound or group '{call.name}'",
                             did_you_mean(call.name, list(self.outbounds) + [f"must_{o}" for o in self.outbounds]
                                          + ["must_rules"]))
            return None
        self.used.setdefault(name, locate(call.offset))
        mark = 0
        for p in call.params:
            if p.key is None and p.value == "must":
                must = True
            elif p.key == "mark":
                try:
                    mark = parse_mark(p.value)
                except ValueError as exc:
                    self.diags.error(locate(p.value_offset), str(exc))
                    return None
            else:
                self.diags.error(locate(p.offset), f"unknown outbound parameter '{p.key or p.value}'",
                                 "outbounds take 'mark: N' and 'must'")
                return None
        return Action(outbound=name, outbound_id=self.outbounds[name], mark=mark, must=must)

    # ---- matches -------------------------------------------------------------------------------
    def _match(self, call: Call, ctx: RuleContext) -> Match | None:
        fld = FUNCTIONS.get(call.name)
        locate: Locate = lambda off: ctx.locate_call(call, off)  # noqa: E731
        if fld is None:
            self.diags.error(locate(call.offset), f"unknown function '{call.name}'",
                             did_you_mean(call.name, FUNCTIONS))
            return None
        if not call.params:
            self.diags.error(locate(call.offset), f"'{call.name}()' needs at least one parameter")
            return None
        handler = {
            Field.DIP: self._cidrs, Field.SIP: self._cidrs, Field.DPORT: self._ports, Field.SPORT: self._ports,
            Field.L4PROTO: self._l4proto, Field.IPVERSION: self._ipversion, Field.MAC: self._macs,
            Field.DSCP: self._dscp, Field.PNAME: self._pnames, Field.DOMAIN: self._domain,
        }[fld]
        values = handler(call, locate)
        if values is None:
            return None
        self.function_uses.append((call.name, locate(call.offset)))
        return Match(field=fld, values=values, negated=call.negated)

    def _no_key(self, call: Call, p: Param, locate: Locate) -> bool:
        if p.key is not None:
            self.diags.error(locate(p.offset), f"'{call.name}()' does not take key '{p.key}'")
            return False
        return True

    def _cidrs(self, call: Call, locate: Locate) -> CidrSet | None:
        v4: list[ipaddress.IPv4Network] = []
        v6: list[ipaddress.IPv6Network] = []
        ok = True
        for p in call.params:
            key, value = p.key, p.value
            at = p.value_offset
            if key is not None and key not in IP_KEYS:
                # Bare IPv6 addresses contain ':' and lex as 'key: value'; put them back together
                # (and point at the start of the address, not at what followed its first ':').
                key, value, at = None, f"{p.raw_key}{p.value}", p.offset
            try:
                if key is None:
                    net, host_bits = parse_network(value)
                    if host_bits:
                        self.diags.warning(locate(at), f"{value!r} has host bits set; it means {net}")
                    nets: tuple[Any, ...] = (net,)
                elif key == "geoip":
                    nets = self.geo.geoip(value)
                else:
                    path, tag = self.geo.ext(value)
                    nets = self.geo.geoip(tag, path)
            except Exception as exc:  # GeoDataError, ValueError
                self.diags.error(locate(at if key is None else p.offset), str(exc))
                ok = False
                continue
            for n in nets:
                (v4 if n.version == 4 else v6).append(n)
        return CidrSet(tuple(v4), tuple(v6)) if ok else None

    def _ports(self, call: Call, locate: Locate) -> PortSet | None:
        ranges, ok = [], True
        for p in call.params:
            if not self._no_key(call, p, locate):
                ok = False
                continue
            try:
                ranges.append(parse_port_range(p.value))
            except ValueError as exc:
                self.diags.error(locate(p.value_offset), str(exc))
                ok = False
        return PortSet(tuple(ranges)) if ok else None

    def _enum(self, call: Call, locate: Locate, allowed: dict[str, int], what: str) -> ValueSet | None:
        vals, ok = [], True
        for p in call.params:
            if not self._no_key(call, p, locate):
                ok = False
                continue
            v = allowed.get(p.value.lower())
            if v is None:
                self.diags.error(locate(p.value_offset), f"invalid {what} {p.value!r} (expected "
                                 + " or ".join(allowed) + ")", did_you_mean(p.value.lower(), allowed))
                ok = False
            else:
                vals.append(v)
        return ValueSet(tuple(vals)) if ok else None

    def _l4proto(self, call: Call, locate: Locate) -> ValueSet | None:
        return self._enum(call, locate, {"tcp": L4_TCP, "udp": L4_UDP}, "l4proto")

    def _ipversion(self, call: Call, locate: Locate) -> ValueSet | None:
        return self._enum(call, locate, {"4": 4, "6": 6}, "ipversion")

    def _macs(self, call: Call, locate: Locate) -> ValueSet | None:
        vals, ok = [], True
        for p in call.params:
            text = p.value if p.key is None else f"{p.raw_key}{p.value}"
            try:
                vals.append(parse_mac(text))
            except ValueError as exc:
                # A bare MAC lexes as 'key: value' (its first octet is the key): point at its start.
                self.diags.error(locate(p.value_offset if p.key is None else p.offset), str(exc))
                ok = False
        return ValueSet(tuple(vals)) if ok else None

    def _dscp(self, call: Call, locate: Locate) -> ValueSet | None:
        vals, ok = [], True
        for p in call.params:
            if not self._no_key(call, p, locate):
                ok = False
                continue
            try:
                v = parse_int(p.value)
                if not 0 <= v <= 63:
                    raise ValueError(f"dscp {p.value!r} is out of range 0-63 (DSCP is 6 bits)")
                vals.append(v)
            except ValueError as exc:
                self.diags.error(locate(p.value_offset), str(exc))
                ok = False
        return ValueSet(tuple(vals)) if ok else None

    def _pnames(self, call: Call, locate: Locate) -> ValueSet | None:
        vals, ok = [], True
        for p in call.params:
            if not self._no_key(call, p, locate):
                ok = False
                continue
            name = p.value
            if len(name.encode()) >= TASK_COMM_LEN:
                self.diags.warning(locate(p.value_offset), f"process name {name!r} is longer than 15 bytes; "
                                   f"the kernel truncates names, so this matches {name.encode()[:15].decode(errors='ignore')!r}")
                name = name.encode()[:15].decode(errors="ignore")
            vals.append(name)
            self.pnames[name] = None
        return ValueSet(tuple(vals)) if ok else None

    @staticmethod
    def _bad_geosite_regex(entries: list[Any]) -> str | None:
        """The first regex entry of a geosite tag that does not compile (RE2), with the reason."""
        for e in entries:
            if e.kind == "regex":
                try:
                    compile_user_regex(e.value)
                except ValueError as exc:
                    return f"{e.value!r}: {exc}"
        return None

    def _domain(self, call: Call, locate: Locate) -> DomainRef | None:
        buckets: dict[str, list[str]] = {"full": [], "suffix": [], "keyword": [], "regex": []}
        ok = True
        for p in call.params:
            key = p.key or "suffix"
            if key not in DOMAIN_KEYS:
                self.diags.error(locate(p.offset), f"unknown domain key '{key}'", did_you_mean(key, DOMAIN_KEYS))
                ok = False
                continue
            if key in ("geosite", "ext"):
                try:
                    if key == "geosite":
                        entries = self.geo.geosite(p.value)
                    else:
                        path, tag = self.geo.ext(p.value)
                        entries = self.geo.geosite(tag, path)
                    if not entries and "@" in p.value:
                        name, _, attr = p.value.rpartition(":")[2].partition("@")
                        raise ValueError(f"'{key}:{p.value}' selects no domain: no domain of tag '{name}' "
                                         f"has the attribute '@{attr}'")
                except Exception as exc:
                    self.diags.error(locate(p.offset), str(exc))
                    ok = False
                    continue
                kinds = {"plain": "keyword", "regex": "regex", "domain": "suffix", "full": "full"}
                bad_regex = self._bad_geosite_regex(entries)
                if bad_regex is not None:
                    self.diags.error(locate(p.offset), f"'{key}:{p.value}' has a regex dae cannot use: {bad_regex}")
                    ok = False
                    continue
                for e in entries:
                    buckets[kinds[e.kind]].append(e.value if e.kind == "regex" else e.value.lower())
                continue
            value = p.value.strip()
            if key == "regex":
                try:
                    compile_user_regex(value)
                except ValueError as exc:
                    self.diags.error(locate(p.value_offset), f"invalid regex {value!r}: {exc}")
                    ok = False
                    continue
                buckets["regex"].append(value)
                continue
            value = value.lower().strip(".") if key != "keyword" else value.lower()
            if not value:
                self.diags.error(locate(p.value_offset), f"empty domain {key}")
                ok = False
                continue
            buckets[key].append(value)
        if not ok:
            return None
        canon = tuple(tuple(sorted(set(buckets[k]))) for k in ("full", "suffix", "keyword", "regex"))
        ds = self.domain_sets.get(canon)
        if ds is None:
            ds = DomainSet(bit=len(self.domain_sets), full=canon[0], suffix=canon[1], keyword=canon[2],
                           regex=canon[3])
            self.domain_sets[canon] = ds
        return DomainRef(ds.bit)
