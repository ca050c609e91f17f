"""Optimisation passes: IR -> IR, each one semantics-preserving.

- normalise: sort and coalesce port ranges, collapse CIDRs, sort and dedupe value sets;
- merge: intersect several positive matches on the same field inside one rule;
- dead rules: mark rules that can never match (contradictions, empty sets, shadowed by an
  earlier rule that matches everything or the same thing) and warn about them.

The differential tests run the user-space matcher on the checked IR and the kernel program built
from the optimised IR, so any pass that changed a decision would show up there.
"""
from __future__ import annotations

import ipaddress
from dataclasses import replace
from typing import TypeVar

from dae_py.contract import fields
from dae_py.contract.ir import CidrSet, Field, Match, PortSet, RoutingIR, Rule, ValueSet

from .diagnostics import Diagnostics, SourcePos

# One address family at a time: a CidrSet keeps its v4 and v6 networks apart.
_Net = TypeVar("_Net", ipaddress.IPv4Network, ipaddress.IPv6Network)


def coalesce_ports(ranges: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    out: list[list[int]] = []
    for lo, hi in sorted(ranges):
        if out and lo <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], hi)
        else:
            out.append([lo, hi])
    return tuple((lo, hi) for lo, hi in out)


def collapse(nets: tuple[_Net, ...]) -> tuple[_Net, ...]:
    return tuple(ipaddress.collapse_addresses(nets)) if nets else ()


def normalise_match(m: Match) -> Match:
    v = m.values
    if isinstance(v, PortSet):
        return replace(m, values=PortSet(coalesce_ports(v.ranges)))
    if isinstance(v, CidrSet):
        return replace(m, values=CidrSet(collapse(v.v4), collapse(v.v6)))
    if isinstance(v, ValueSet):
        return replace(m, values=ValueSet(tuple(sorted(set(v.values), key=lambda x: (str(type(x)), x)))))
    return m


def intersect_ports(a: PortSet, b: PortSet) -> PortSet:
    out = []
    for lo1, hi1 in a.ranges:
        for lo2, hi2 in b.ranges:
            lo, hi = max(lo1, lo2), min(hi1, hi2)
            if lo <= hi:
                out.append((lo, hi))
    return PortSet(coalesce_ports(tuple(out)))


def intersect_nets(a: tuple[_Net, ...], b: tuple[_Net, ...]) -> tuple[_Net, ...]:
    out: list[_Net] = []
    for x in a:
        for y in b:
            if x.subnet_of(y):
                out.append(x)
            elif y.subnet_of(x):
                out.append(y)
    return collapse(tuple(out))


def intersect(a: Match, b: Match) -> Match:
    va, vb = a.values, b.values
    if isinstance(va, PortSet) and isinstance(vb, PortSet):
        return replace(a, values=intersect_ports(va, vb))
    if isinstance(va, CidrSet) and isinstance(vb, CidrSet):
        return replace(a, values=CidrSet(intersect_nets(va.v4, vb.v4), intersect_nets(va.v6, vb.v6)))
    if isinstance(va, ValueSet) and isinstance(vb, ValueSet):
        return replace(a, values=ValueSet(tuple(x for x in va.values if x in vb.values)))
    raise TypeError((va, vb))


def merge_rule(rule: Rule) -> Rule:
    """One positive match per field (except fields that do not merge: domain, whose sets are
    separate bits)."""
    merged: dict[Field, Match] = {}
    rest: list[Match] = []
    for m in (normalise_match(m) for m in rule.matches):
        if m.negated or not fields.spec(m.field).merges:
            if m not in rest:
                rest.append(m)
        elif m.field in merged:
            merged[m.field] = intersect(merged[m.field], m)
        else:
            merged[m.field] = m
    order = {f: i for i, f in enumerate(Field)}
    matches = sorted(merged.values(), key=lambda m: order[m.field]) + rest
    return replace(rule, matches=tuple(matches))


def is_empty(m: Match) -> bool:
    v = m.values
    if isinstance(v, PortSet):
        return not v.ranges
    if isinstance(v, CidrSet):
        return not v.v4 and not v.v6
    if isinstance(v, ValueSet):
        return not v.values
    return False


def is_universal(m: Match) -> bool:
    """True when the set covers every value the field can take for a classified packet."""
    v = m.values
    if isinstance(v, PortSet):
        return v.ranges == ((0, 65535),)
    if isinstance(v, CidrSet):
        return (ipaddress.IPv4Network("0.0.0.0/0") in v.v4) and (ipaddress.IPv6Network("::/0") in v.v6)
    universe = fields.spec(m.field).universe
    if isinstance(v, ValueSet) and universe is not None:
        return set(universe) <= set(v.values)
    return False


def never_reason(rule: Rule) -> str | None:
    """Why `rule` can never match, or None."""
    by_field = {m.field: m for m in rule.matches if not m.negated}
    for m in rule.matches:
        if not m.negated and is_empty(m):
            return f"its {m.field.value}() conditions have nothing in common"
        if m.negated and is_universal(m):
            return f"!{m.field.value}() excludes every packet"
        if m.negated and fields.spec(m.field).merges and Match(m.field, m.values, False) in rule.matches:
            return f"it requires both {m.field.value}() and !{m.field.value}() of the same values"
    versions: set[int] = {4, 6}
    if Field.IPVERSION in by_field:
        ipv = by_field[Field.IPVERSION].values
        assert isinstance(ipv, ValueSet)
        versions = set(ipv.values)
    for f in (s.field for s in fields.of_kind("cidr")):
        if f in by_field:
            cs = by_field[f].values
            assert isinstance(cs, CidrSet)
            fam = ({4} if cs.v4 else set()) | ({6} if cs.v6 else set())
            versions &= fam
    if not versions:
        return "its address families contradict (an IPv4 CIDR never matches an IPv6 flow)"
    return None


def matches_everything(rule: Rule) -> bool:
    return all(not m.negated and is_universal(m) for m in rule.matches)


def optimise(ir: RoutingIR, diags: Diagnostics) -> RoutingIR:
    rules: list[Rule] = []
    catch_all: Rule | None = None
    seen: dict[tuple[Match, ...], Rule] = {}
    for r in ir.rules:
        r = merge_rule(r)
        at = SourcePos(r.source.file, r.source.line, r.source.col)
        reason = never_reason(r)
        if catch_all is not None:
            reason = reason or f"rule {catch_all.index} (line {catch_all.source.line}) matches every flow before it"
        key = tuple(sorted(r.matches, key=repr))
        if reason is None and key in seen and not seen[key].action.must_rules:
            prev = seen[key]
            reason = f"rule {prev.index} (line {prev.source.line}) has the same conditions and comes first"
        if reason is not None:
            diags.warning(at, f"this rule can never match: {reason}")
            rules.append(replace(r, never_matches=True))
            continue
        seen.setdefault(key, r)
        if matches_everything(r) and not r.action.must_rules:
            catch_all = r
        rules.append(r)
    return replace(ir, rules=tuple(rules))
