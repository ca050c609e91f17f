"""The straight-line classifier: one `if` per rule, constants baked in, first match wins.

Right for configs with a handful to a few dozen rules: the cost is a few compares per rule and
nothing is looked up that the rules do not need. Large sets inside a rule still go to maps (LPM
tries for CIDR sets, bitmaps for port sets) so a rule with 10,000 CIDRs costs one lookup.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import cexpr
from dae_py.contract.ir import CidrSet, DomainRef, Field, Match, PortSet, Rule, RoutingIR, ValueSet, max_domain_words
from .tables import MapTable, cidr_membership, lpm_table, port_bitmap, words_bytes

SMALL_CIDRS = 8  # per family; more than this and the set goes into an LPM trie
SMALL_PORT_RANGES = 8


@dataclass
class LargeSets:
    """Large CIDR and port sets, numbered in order of first use."""

    cidr: dict[str, list[CidrSet]] = field(default_factory=lambda: {"dip": [], "sip": []})
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


def is_large_cidr(s: CidrSet) -> bool:
    return len(s.v4) > SMALL_CIDRS or len(s.v6) > SMALL_CIDRS


def match_expr(m: Match, large: LargeSets) -> str:
    v = m.values
    if m.field in (Field.DIP, Field.SIP):
        assert isinstance(v, CidrSet)
        fld = m.field.value
        addr = "p->daddr" if m.field is Field.DIP else "p->saddr"
        if is_large_cidr(v):
            i = large.cidr_index(fld, v)
            e = f"({fld}_sets && ({fld}_sets->w[{i // 64}] & (1ULL << {i % 64})))"
        else:
            e = cexpr.cidrs(addr, v.v4, v.v6)
    elif m.field in (Field.DPORT, Field.SPORT):
        assert isinstance(v, PortSet)
        pf = "p->dport" if m.field is Field.DPORT else "p->sport"
        if len(v.ranges) > SMALL_PORT_RANGES:
            e = f"port_in_set({large.port_index(v)}, {pf})"
        else:
            e = cexpr.ports(pf, v.ranges)
    elif m.field is Field.L4PROTO:
        assert isinstance(v, ValueSet)
        e = cexpr.any_of([f"p->l4proto == {cexpr.L4_NAMES[x]}" for x in v.values])
    elif m.field is Field.IPVERSION:
        assert isinstance(v, ValueSet)
        e = cexpr.any_of([f"p->ipversion == {x}" for x in v.values])
    elif m.field is Field.MAC:
        assert isinstance(v, ValueSet)
        from .values import format_mac

        e = "(p->has_mac && " + cexpr.any_of(
            [f"p->smac == 0x{x:012x}ULL /* {format_mac(x)} */" for x in v.values]) + ")"
    elif m.field is Field.DSCP:
        assert isinstance(v, ValueSet)
        mask = 0
        for x in v.values:
            mask |= 1 << x
        e = f"((0x{mask:016x}ULL >> p->dscp) & 1) /* dscp {', '.join(map(str, v.values))} */"
    elif m.field is Field.PNAME:
        assert isinstance(v, ValueSet)
        terms = []
        for name in v.values:
            lo, hi = cexpr.comm_words(name)
            terms.append(f"(proc->comm_lo == 0x{lo:016x}ULL && proc->comm_hi == 0x{hi:016x}ULL) /* {name} */")
        e = "(proc && " + cexpr.any_of(terms) + ")"
    elif m.field is Field.DOMAIN:
        assert isinstance(v, DomainRef)
        e = f"(dom && (dom->w[{v.bit // 64}] & (1ULL << {v.bit % 64})))"
    else:  # pragma: no cover
        raise AssertionError(m.field)
    return cexpr.negate(e) if m.negated else e


def rule_condition(rule: Rule, large: LargeSets) -> str:
    """One term per line, so a diff of two builds shows which condition changed."""
    return " &&\n\t    ".join(match_expr(m, large) for m in rule.matches) or "1"


def large_tables(ir: RoutingIR, large: LargeSets) -> tuple[list[dict[str, Any]], list[MapTable], int]:
    """Template context for the LPM groups and port bitmaps, and their map contents."""
    groups, tables = [], []
    for fld, sets in large.cidr.items():
        if not sets:
            continue
        words = max(1, (len(sets) + 63) // 64)
        g: dict[str, Any] = {"field": fld, "addr": "daddr" if fld == "dip" else "saddr", "words": words,
                             "nsets": len(sets), "value_type": f"{fld}_set_bits", "maps": []}
        for family in (4, 6):
            nets_per_set = [s.v4 if family == 4 else s.v6 for s in sets]
            membership = cidr_membership(nets_per_set, family)  # type: ignore[arg-type]
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
    groups, tables, nports = large_tables(ir, large)
    _ = max_domain_words, words_bytes
    return {"rule_conds": rules, "lpm_groups": groups, "port_sets": nports}, tables
