"""The straight-line classifier: one `if` per rule, constants baked in, first match wins.

Right for configs with a handful to a few dozen rules: the cost is a few compares per rule and
nothing is looked up that the rules do not need. Large sets inside a rule still go to maps (LPM
tries for CIDR sets, bitmaps for port sets) so a rule with 10,000 CIDRs costs one lookup.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dae_py.contract import fields
from dae_py.contract.ir import CidrSet, Field, IPNetwork, Match, PortSet, RoutingIR, Rule

from . import cexpr
from . import fields as compiler_fields
from .fields.cidr import SMALL_CIDRS, is_large_cidr
from .fields.ports import SMALL_PORT_RANGES
from .tables import MapTable, cidr_membership, lpm_table, port_bitmap

__all__ = ["SMALL_CIDRS", "SMALL_PORT_RANGES", "LargeSets", "is_large_cidr", "linear_context", "match_expr"]


def _cidr_fields() -> dict[str, list[CidrSet]]:
    return {s.name: [] for s in fields.of_kind("cidr")}


@dataclass
class LargeSets:
    """Large CIDR and port sets, numbered in order of first use."""

    cidr: dict[str, list[CidrSet]] = field(default_factory=_cidr_fields)
    ports: list[PortSet] = field(default_factory=list)

    def cidr_index(self, fld: str, s: CidrSet) -> int:
        sets = self.cidr[fld]
        if s not in sets:
            sets.append(s)
        return sets.index(s)

    def port_index(self, s: PortSet) -> int:
        if s not in self.ports:
            self.ports.append(s)
        return self.ports.index(s)


def match_expr(m: Match, large: LargeSets) -> str:
    """A match as a C boolean, written by its field's implementation (compiler/fields/)."""
    spec = fields.spec(m.field)
    e = compiler_fields.impl(spec).linear_expr(spec, m, large)
    return cexpr.negate(e) if m.negated else e


def rule_condition(rule: Rule, large: LargeSets) -> str:
    """One term per line, so a diff of two builds shows which condition changed."""
    return " &&\n\t    ".join(match_expr(m, large) for m in rule.matches) or "1"


def large_tables(large: LargeSets) -> tuple[list[dict[str, Any]], list[MapTable], int]:
    """Template context for the LPM groups and port bitmaps, and their map contents."""
    groups, tables = [], []
    for fld, sets in large.cidr.items():
        if not sets:
            continue
        words = max(1, (len(sets) + 63) // 64)
        g: dict[str, Any] = {"field": fld, "addr": fields.spec(Field(fld)).operand, "words": words,
                             "nsets": len(sets), "value_type": f"{fld}_set_bits", "maps": []}
        for family in (4, 6):
            nets_per_set: list[tuple[IPNetwork, ...]] = [s.v4 if family == 4 else s.v6 for s in sets]
            membership = cidr_membership(nets_per_set, family)
            if not membership:
                continue
            name = f"{fld}{family}_sets"
            t = lpm_table(name, family, membership, words)
            tables.append(t)
            g["maps"].append({"name": name, "family": family, "entries": len(t.records),
                              "max_entries": max(len(t.records), 1)})
        groups.append(g)
    if large.ports:
        t = MapTable(name="port_sets", kind="array", key_size=4, value_size=8192)
        for i, s in enumerate(large.ports):
            t.records.append((i.to_bytes(4, "little"), port_bitmap(s.ranges)))
        tables.append(t)
    return groups, tables, len(large.ports)


def linear_context(ir: RoutingIR) -> tuple[dict[str, Any], list[MapTable]]:
    large = LargeSets()
    rules = []
    for r in ir.live_rules():
        rules.append({"rule": r, "cond": rule_condition(r, large)})
    groups, tables, nports = large_tables(large)
    families = sorted({m["family"] for g in groups for m in g["maps"]})
    return {"rule_conds": rules, "lpm_groups": groups, "lpm_families": families, "port_sets": nports}, tables
