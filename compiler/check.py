"""Semantic check: give the parsed rules their meaning and build the routing IR.

Runs after the schema check, so the config's shape is known to be right. Every problem found is
added to `Diagnostics` with the position of the offending token, and checking goes on so the user
sees every problem in one run.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dae_py.contract import fields
from dae_py.contract.ir import (
    L4_UDP,
    OUTBOUND_BLOCK,
    OUTBOUND_DIRECT,
    Action,
    DomainSet,
    Field,
    Match,
    Outbound,
    RoutingIR,
    Rule,
    SourceRef,
    ValueSet,
)

from . import fields as compiler_fields
from .diagnostics import Diagnostics, SourcePos, did_you_mean
from .fields.common import Locate
from .load import LoadedConfig
from .rules import (
    Call,
    RuleAst,
    RuleSyntaxError,
    StructuredRuleError,
    abbreviate,
    parse_outbound,
    parse_rule,
    parse_structured_rule,
    structured_param_path,
)
from .values import parse_mark

if TYPE_CHECKING:  # geodata itself is imported on first use: most configs name no geo tag
    from .geodata import IPNetwork, SiteDomain

BUILTIN_OUTBOUNDS = ("direct", "block")


@dataclass
class GeoResolver:
    """Reads geoip/geosite tags on demand (one read per file and tag)."""

    geoip_path: Path | None
    geosite_path: Path | None
    asset_dir: Path
    _ip_cache: dict[tuple[str, str], tuple[IPNetwork, ...]] = field(default_factory=dict)
    _site_cache: dict[tuple[str, str], list[SiteDomain]] = field(default_factory=dict)
    # where geoip.dat, geosite.dat and relative ext: files are looked for (geodata.asset_search_dirs);
    # empty: only asset_dir
    search: tuple[Path, ...] = ()

    def _find(self, name: str | Path, what: str) -> Path:
        from . import geodata

        return geodata.find_asset(name, self.search or (self.asset_dir,), what)

    def _file(self, explicit: Path | None, default_name: str) -> Path:
        return explicit if explicit is not None else self._find(default_name, default_name.partition(".")[0])

    def geoip(self, tag: str, path: Path | None = None) -> tuple[IPNetwork, ...]:
        from . import geodata

        p = path or self._file(self.geoip_path, "geoip.dat")
        key = (str(p), tag.lower())
        if key not in self._ip_cache:
            entries = geodata.read_geoip(p, [tag])
            entry = entries[tag.lower()]
            if entry.reverse_match:
                raise ValueError(f"geoip tag '{tag}' in {p} uses reverse_match, which is not supported")
            self._ip_cache[key] = tuple(entry.networks)
        return self._ip_cache[key]

    def geosite(self, tag: str, path: Path | None = None) -> list[SiteDomain]:
        from . import geodata

        name, _, attr = tag.partition("@")
        p = path or self._file(self.geosite_path, "geosite.dat")
        key = (str(p), tag.lower())
        if key not in self._site_cache:
            domains = geodata.read_geosite(p, [name])[name.lower()]
            if attr:
                domains = geodata.filter_attr(domains, attr)
            self._site_cache[key] = list(domains)
        return self._site_cache[key]

    def ext(self, spec: str) -> tuple[Path, str]:
        fname, sep, tag = spec.rpartition(":")
        if not sep or not fname or not tag:
            raise ValueError(f"ext value {spec!r} must be \"file.dat:tag\"")
        return self._find(fname, "ext"), tag


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
        self.udp_used: dict[str, SourcePos] = {}  # the same for flows that may be UDP
        # (full, suffix, keyword, regex), each sorted: equal domain() matches share one DomainSet
        self.domain_sets: dict[tuple[tuple[str, ...], ...], DomainSet] = {}
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
        self.udp_groups()
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
            undialable = g.pop("undialable", None)  # (position, message) from nodes.resolve_groups
            awaits = g.pop("awaits_subscriptions", None)  # https:// subscriptions the runtime fetches
            if g["nodes"] or g.get("filter_failed"):
                continue
            name = g["name"]
            if awaits and name in self.used:
                self.diags.warning(self.cfg.pos.key(("groups", name)),
                                   f"group '{name}' has no node until the runtime fetches subscription(s) "
                                   f"{', '.join(awaits)}; until then flows to it are refused")
                continue
            if undialable is not None:
                at, what = undialable
                used = self.used.get(name)
                if used is not None:
                    self.diags.error(at, f"{what}; routing sends flows to the group (line {used.line})")
                else:
                    self.diags.warning(at, f"{what} (no rule uses the group)")
                continue
            at = self.cfg.pos.key(("groups", name))
            hint = ("check its filter against the names in 'nodes'" if self.cfg.data.get("nodes")
                    or self.cfg.data.get("subscriptions") else "define some nodes")
            used = self.used.get(name)
            if used is not None:
                self.diags.error(at, f"group '{name}' selects no node, but routing sends flows to it "
                                     f"(line {used.line})", hint)
            else:
                self.diags.warning(at, f"group '{name}' selects no node (no rule uses it)", hint)

    def udp_groups(self) -> None:
        """A group none of whose nodes carries UDP, where routing may send UDP (a rule that does
        not require l4proto(tcp), or the fallback): a warning at the group, since the runtime
        refuses those flows (the same reasons show in its log and `dae-runtime status`)."""
        for g in self.groups:
            no_udp = g.pop("no_udp", None)  # (position, message) from nodes.resolve_groups
            used = self.udp_used.get(g["name"])
            if no_udp is not None and used is not None:
                at, what = no_udp
                self.diags.warning(at, f"{what}; routing may send UDP flows to it (line {used.line}), "
                                       "which the runtime refuses",
                                   "route UDP elsewhere first (l4proto(udp) -> ...) or add a node "
                                   "that carries UDP")

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

            def locate_structured(
                call: Call, off: int, cp: list[tuple[Any, ...]] = call_paths, a: RuleAst = ast
            ) -> SourcePos:
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
        if _may_be_udp(matches):
            self.udp_used.setdefault(action.outbound, ctx.locate_outbound(ast.outbound.offset))
        return Rule(index=index, matches=tuple(matches), action=action, source=ctx.source)

    def _fallback(self, text: str) -> Action | None:
        path = ("routing", "fallback")
        try:
            call = parse_outbound(text)
        except RuleSyntaxError as exc:
            self.diags.error(self.cfg.pos.in_string(path, exc.offset), f"syntax error in fallback: {exc.message}")
            return None
        action = self._action(call, lambda off: self.cfg.pos.in_string(path, off))
        if action is not None:
            self.udp_used.setdefault(action.outbound, self.cfg.pos.in_string(path, call.offset))
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
        """A call through the field registry: its spec by name, its kind's check for the values."""
        spec = fields.by_name(call.name)

        def locate(off: int) -> SourcePos:
            return ctx.locate_call(call, off)

        if spec is None:
            self.diags.error(locate(call.offset), f"unknown function '{call.name}'",
                             did_you_mean(call.name, fields.names()))
            return None
        if not call.params:
            self.diags.error(locate(call.offset), f"'{call.name}()' needs at least one parameter")
            return None
        values = compiler_fields.impl(spec).check(self, spec, call, locate)
        if values is None:
            return None
        self.function_uses.append((call.name, locate(call.offset)))
        return Match(field=spec.field, values=values, negated=call.negated)


def _may_be_udp(matches: list[Match]) -> bool:
    """Whether a rule with these matches (all of them must hold) can match a UDP flow: not when
    one of them is l4proto() without udp, or !l4proto(udp)."""
    for m in matches:
        if m.field is Field.L4PROTO and isinstance(m.values, ValueSet):
            if (L4_UDP in m.values.values) == m.negated:
                return False
    return True
