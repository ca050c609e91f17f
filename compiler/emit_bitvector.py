"""The bit-vector classifier: cost independent of the number of rules.

For each field the rules use, a lookup on the packet's value yields a bit-vector of the rules
that field allows (bit i = i-th live rule; rules that don't look at the field always allow it).
The AND of those vectors has the first matching rule as its lowest set bit (bpf-iptables'
linear bit-vector search). Lookups are one LPM trie per address family for IPs, a class table
for ports, a hash for MACs and process names, constants for protocol/IP version and DSCP, and
per-set constant masks for domain bits. The compiler knows every rule, so all vectors are
computed here and shipped as map data; the program holds no rules, only tables.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any, Callable

from .ir import L4_TCP, L4_UDP, CidrSet, DomainRef, Field, Match, PortSet, Rule, RoutingIR, ValueSet
from .tables import MapTable, cidr_membership, lpm_key, words_bytes

MAX_WORDS = 32  # 2,048 live rules: the vectors live on the BPF stack

Vec = int  # a Python int used as a bit-set over live rule positions


class TooManyRules(ValueError):
    pass


@dataclass
class FieldPlan:
    """For one field: which live rules look at it and their matches on it."""

    field: Field
    rules: dict[int, list[Match]]  # position -> matches on this field
    all_ones: Vec

    @property
    def dont_care(self) -> Vec:
        v = self.all_ones
        for pos in self.rules:
            v &= ~(1 << pos)
        return v

    def vector(self, holds: Callable[[Match], bool]) -> Vec:
        v = self.dont_care
        for pos, ms in self.rules.items():
            if all(holds(m) != m.negated for m in ms):
                v |= 1 << pos
        return v


def plans(live: tuple[Rule, ...], words: int) -> dict[Field, FieldPlan]:
    all_ones = (1 << len(live)) - 1
    out: dict[Field, FieldPlan] = {}
    for pos, r in enumerate(live):
        for m in r.matches:
            if m.field is Field.DOMAIN:
                continue
            plan = out.setdefault(m.field, FieldPlan(m.field, {}, all_ones))
            plan.rules.setdefault(pos, []).append(m)
    return out


def c_words(v: Vec, words: int) -> str:
    return "{ " + ", ".join(f"0x{(v >> (64 * i)) & (2**64 - 1):016x}ULL" for i in range(words)) + " }"


def vec_bytes(v: Vec, words: int) -> bytes:
    return words_bytes(v, words)


# ---- per-field vector tables -------------------------------------------------------------------

def proto_vectors(ps: dict[Field, FieldPlan]) -> list[Vec] | None:
    """Index = (ipversion == 6) << 1 | (l4proto == UDP)."""
    if Field.L4PROTO not in ps and Field.IPVERSION not in ps:
        return None
    out = []
    for ver in (4, 6):
        for proto in (L4_TCP, L4_UDP):
            v: Vec = -1
            for f, val in ((Field.L4PROTO, proto), (Field.IPVERSION, ver)):
                if f in ps:
                    v &= ps[f].vector(lambda m, val=val: m.values.contains(val))  # type: ignore[union-attr]
            out.append(v & next(iter(ps.values())).all_ones)
    return out


def dscp_vectors(plan: FieldPlan) -> list[Vec]:
    return [plan.vector(lambda m, d=d: m.values.contains(d)) for d in range(64)]  # type: ignore[union-attr]


def port_classes(plan: FieldPlan) -> tuple[list[int], list[Vec]]:
    """Per-port class ids (65536 of them) and each class's vector; classes are merged by vector.

    A sweep over range boundaries: rules with one positive port match toggle their bit at the
    ends of their (disjoint, coalesced) ranges; other rules are evaluated per interval.
    """
    events: dict[int, Vec] = {}
    complex_rules: dict[int, list[Match]] = {}
    cuts = {0, 65536}
    for pos, ms in plan.rules.items():
        for m in ms:
            assert isinstance(m.values, PortSet)
            for lo, hi in m.values.ranges:
                cuts.update((lo, hi + 1))
        if len(ms) == 1 and not ms[0].negated:
            for lo, hi in ms[0].values.ranges:  # type: ignore[union-attr]
                events[lo] = events.get(lo, 0) ^ (1 << pos)
                events[hi + 1] = events.get(hi + 1, 0) ^ (1 << pos)
        else:
            complex_rules[pos] = ms
    bounds = sorted(cuts)
    class_of_vec: dict[Vec, int] = {}
    vecs: list[Vec] = []
    table = [0] * 65536
    active: Vec = 0
    base = plan.dont_care
    for lo, nxt in zip(bounds, bounds[1:]):
        active ^= events.get(lo, 0)
        v = base | active
        for pos, ms in complex_rules.items():
            if all(m.values.contains(lo) != m.negated for m in ms):  # type: ignore[union-attr]
                v |= 1 << pos
        if v not in class_of_vec:
            class_of_vec[v] = len(vecs)
            vecs.append(v)
        table[lo:nxt] = [class_of_vec[v]] * (nxt - lo)
    return table, vecs


def cidr_vectors(plan: FieldPlan, family: int) -> tuple[dict[Any, Vec], Vec]:
    """Vector per prefix in the trie, and the vector for an address that hits no prefix."""
    sets: list[tuple] = []
    set_index: dict[CidrSet, int] = {}
    simple: dict[int, Vec] = {}   # set -> rules whose only match on the field is this set, positive
    complex_rules: dict[int, list[tuple[int, bool]]] = {}
    for pos, ms in plan.rules.items():
        idx = []
        for m in ms:
            assert isinstance(m.values, CidrSet)
            if m.values not in set_index:
                set_index[m.values] = len(sets)
                sets.append(m.values.v4 if family == 4 else m.values.v6)
            idx.append((set_index[m.values], m.negated))
        if len(idx) == 1 and not idx[0][1]:
            simple[idx[0][0]] = simple.get(idx[0][0], 0) | (1 << pos)
        else:
            complex_rules[pos] = idx

    def vec_for(mem: int) -> Vec:
        v = plan.dont_care
        bits = mem
        while bits:
            low = bits & -bits
            v |= simple.get(low.bit_length() - 1, 0)
            bits ^= low
        for pos, idx in complex_rules.items():
            if all(bool(mem >> s & 1) != neg for s, neg in idx):
                v |= 1 << pos
        return v

    membership = cidr_membership(sets, family)
    return {net: vec_for(mem) for net, mem in membership.items()}, vec_for(0)


def value_vectors(plan: FieldPlan) -> tuple[dict[Any, Vec], Vec]:
    values: set[Any] = set()
    for ms in plan.rules.values():
        for m in ms:
            assert isinstance(m.values, ValueSet)
            values.update(m.values.values)
    default = plan.vector(lambda m: False)
    return {v: plan.vector(lambda m, v=v: m.values.contains(v)) for v in sorted(values, key=str)}, default  # type: ignore[union-attr]


def domain_plan(live: tuple[Rule, ...], all_ones: Vec) -> dict[str, Any] | None:
    """How domain literals become a rule vector.

    Rules whose only domain literal is one positive set are switched on by that set's bit,
    rules whose only literal is one negated set are switched off by it: the program walks just
    the bits the destination's name has (usually one or two) and looks each up in
    `domain_vecs`. Rules with several domain literals are checked one by one.
    """
    lits: dict[int, list[tuple[int, bool]]] = {}
    for pos, r in enumerate(live):
        for m in r.matches:
            if m.field is Field.DOMAIN:
                assert isinstance(m.values, DomainRef)
                lits.setdefault(pos, []).append((m.values.bit, m.negated))
    if not lits:
        return None
    base = all_ones
    pos_of: dict[int, Vec] = {}
    neg_of: dict[int, Vec] = {}
    complex_rules = []
    for pos, ls in lits.items():
        base &= ~(1 << pos)
        if len(ls) == 1:
            bit, neg = ls[0]
            if neg:
                neg_of[bit] = neg_of.get(bit, 0) | (1 << pos)
                base |= 1 << pos
            else:
                pos_of[bit] = pos_of.get(bit, 0) | (1 << pos)
        else:
            complex_rules.append((pos, ls))
    return {"base": base, "pos": pos_of, "neg": neg_of, "complex": complex_rules,
            "nsets": 1 + max(b for ls in lits.values() for b, _ in ls)}


def _domain_term(bit: int) -> str:
    return f"(dom && (dom->w[{bit // 64}] & (1ULL << {bit % 64})))"


# ---- template context --------------------------------------------------------------------------

def _mask_lines(acc_mask: Vec, words: int, indent: str) -> list[str]:
    """`acc[i] &= C;` for the words where the mask clears something."""
    lines = []
    for i in range(words):
        w = (acc_mask >> (64 * i)) & (2**64 - 1)
        if w != 2**64 - 1:
            lines.append(f"{indent}acc[{i}] &= 0x{w:016x}ULL;")
    return lines


def bitvector_context(ir: RoutingIR) -> tuple[dict[str, Any], list[MapTable]]:
    live = ir.live_rules()
    n = len(live)
    words = max(1, (n + 63) // 64)
    if words > MAX_WORDS:
        raise TooManyRules(f"{n} live rules: the bit-vector classifier supports at most {MAX_WORDS * 64}")
    all_ones = (1 << n) - 1
    ps = plans(live, words)
    tables: list[MapTable] = []
    vsize = 8 * words
    ctx: dict[str, Any] = {"words": words, "n_live": n, "lpm_groups": [], "port_sets": 0}

    proto = proto_vectors(ps)
    ctx["proto_vecs"] = [c_words(v, words) for v in proto] if proto else None

    if Field.DSCP in ps:
        ctx["dscp_vecs"] = True
        t = MapTable("dscp_vecs", "array", 4, vsize)
        for d, v in enumerate(dscp_vectors(ps[Field.DSCP])):
            t.records.append((struct.pack("<I", d), vec_bytes(v, words)))
        tables.append(t)
    else:
        ctx["dscp_vecs"] = False

    ports = []
    for f in (Field.DPORT, Field.SPORT):
        if f not in ps:
            continue
        table, vecs = port_classes(ps[f])
        name = f.value
        tc = MapTable(f"{name}_class", "array", 4, 4)
        tc.records = [(struct.pack("<I", p), struct.pack("<I", c)) for p, c in enumerate(table)]
        tv = MapTable(f"{name}_vecs", "array", 4, vsize)
        tv.records = [(struct.pack("<I", i), vec_bytes(v, words)) for i, v in enumerate(vecs)]
        tables += [tc, tv]
        ports.append({"field": name, "nclasses": len(vecs)})
    ctx["ports"] = ports

    cidrs = []
    for f in (Field.DIP, Field.SIP):
        if f not in ps:
            continue
        entry: dict[str, Any] = {"field": f.value, "addr": "daddr" if f is Field.DIP else "saddr", "maps": []}
        default: Vec = 0
        for family in (4, 6):
            per_net, default = cidr_vectors(ps[f], family)
            name = f"{f.value}{family}_vecs"
            t = MapTable(name, "lpm_trie", 4 + (4 if family == 4 else 16), vsize)
            for net in sorted(per_net, key=lambda x: (x.prefixlen, int(x.network_address))):
                t.records.append((lpm_key(net), vec_bytes(per_net[net], words)))
            tables.append(t)
            entry["maps"].append({"name": name, "family": family, "entries": len(t.records),
                                  "max_entries": max(1, len(t.records))})
        entry["default"] = c_words(default, words)
        cidrs.append(entry)
    ctx["cidrs"] = cidrs

    if Field.MAC in ps:
        vals, default = value_vectors(ps[Field.MAC])
        t = MapTable("mac_vecs", "hash", 8, vsize)
        t.records = [(struct.pack("<Q", mac), vec_bytes(v, words)) for mac, v in vals.items()]
        tables.append(t)
        ctx["mac"] = {"entries": max(1, len(vals)), "default": c_words(default, words)}
    else:
        ctx["mac"] = None

    if Field.PNAME in ps:
        vals, default = value_vectors(ps[Field.PNAME])
        t = MapTable("pname_vecs", "hash", 16, vsize)
        t.records = [(name.encode()[:15].ljust(16, b"\0"), vec_bytes(v, words)) for name, v in vals.items()]
        tables.append(t)
        ctx["pname"] = {"entries": max(1, len(vals)), "default": c_words(default, words)}
    else:
        ctx["pname"] = None

    dplan = domain_plan(live, all_ones)
    if dplan:
        t = MapTable("domain_vecs", "array", 4, 2 * vsize)
        for bit in range(dplan["nsets"]):
            t.records.append((struct.pack("<I", bit), vec_bytes(dplan["pos"].get(bit, 0), words)
                              + vec_bytes(dplan["neg"].get(bit, 0), words)))
        tables.append(t)
        complex_lines = []
        for pos, ls in dplan["complex"]:
            terms = [("!" if neg else "") + _domain_term(b) for b, neg in ls]
            complex_lines.append({"pos": pos, "word": pos // 64, "shift": pos % 64, "cond": " && ".join(terms)})
        ctx["domain"] = {"base": c_words(dplan["base"], words), "nsets": dplan["nsets"], "complex": complex_lines}
    else:
        ctx["domain"] = None

    must_rules = 0
    for pos, r in enumerate(live):
        if r.action.must_rules:
            must_rules |= 1 << pos
    ctx["must_rules_vec"] = c_words(must_rules, words) if must_rules else None
    ctx["positions"] = [r.index for r in live]
    return ctx, tables
