"""The bit-vector classifier: cost independent of the number of rules.

For each field the rules use, the packet's value selects a bit-vector of the rules that field
allows (bit i = i-th live rule; rules that don't look at the field always allow it). The AND of
those vectors has the first matching rule as its lowest set bit (bpf-iptables' linear bit-vector
search); the program ANDs them one 64-bit word at a time and stops at the first non-zero word.
Address and MAC fields are cut into intervals of equal vector and yield an equivalence class:
through an inlined decision tree over constants when there are few intervals, else a binary
search of a sorted interval table (very large CIDR sets keep an LPM trie per family, very many
MACs a hash); ports, DSCP and
protocol/IP version index class tables; every class's vector is a table in the program's .data.
Process names are a hash map, domain bits a walk over the destination's set bits. The compiler
knows every rule, so all vectors are computed here; the program holds no rules, only tables.
"""
from __future__ import annotations

import ipaddress
import itertools
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dae_py.contract import fields as contract_fields
from dae_py.contract.ir import (
    L4_TCP,
    L4_UDP,
    CidrSet,
    DomainRef,
    Field,
    IPNetwork,
    Match,
    PortSet,
    RoutingIR,
    Rule,
    ValueSet,
)

from .fields.domain import domain_term
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


def holds_value(value: Any) -> Callable[[Match], bool]:
    """For FieldPlan.vector: does a match's value set (ports, CIDRs or discrete values) hold `value`."""

    def holds(m: Match) -> bool:
        vs = m.values
        assert isinstance(vs, PortSet | CidrSet | ValueSet)
        return vs.contains(value)

    return holds


def is_domain(m: Match) -> bool:
    """Domain matches are not a per-field table: the program walks the destination's set bits."""
    return contract_fields.spec(m.field).kind == "domain"


def plans(live: tuple[Rule, ...]) -> dict[Field, FieldPlan]:
    all_ones = (1 << len(live)) - 1
    out: dict[Field, FieldPlan] = {}
    for pos, r in enumerate(live):
        for m in r.matches:
            if is_domain(m):
                continue
            plan = out.setdefault(m.field, FieldPlan(m.field, {}, all_ones))
            plan.rules.setdefault(pos, []).append(m)
    return out


def c_words(v: Vec, words: int) -> str:
    return "{ " + ", ".join(f"0x{(v >> (64 * i)) & (2**64 - 1):016x}ULL" for i in range(words)) + " }"


def vec_bytes(v: Vec, words: int) -> bytes:
    return words_bytes(v, words)


# ---- per-field vector tables -------------------------------------------------------------------

PROTO_NAMES = ("IPv4 TCP", "IPv4 UDP", "IPv6 TCP", "IPv6 UDP")  # by the index below


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
                    v &= ps[f].vector(holds_value(val))
            out.append(v & next(iter(ps.values())).all_ones)
    return out


def dscp_vectors(plan: FieldPlan) -> list[Vec]:
    return [plan.vector(holds_value(d)) for d in range(64)]


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
            only = ms[0].values
            assert isinstance(only, PortSet)
            for lo, hi in only.ranges:
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
    for lo, nxt in itertools.pairwise(bounds):
        active ^= events.get(lo, 0)
        v = base | active
        for pos, ms in complex_rules.items():
            if all(holds_value(lo)(m) != m.negated for m in ms):
                v |= 1 << pos
        if v not in class_of_vec:
            class_of_vec[v] = len(vecs)
            vecs.append(v)
        table[lo:nxt] = [class_of_vec[v]] * (nxt - lo)
    return table, vecs


def cidr_vectors(plan: FieldPlan, family: int) -> tuple[dict[Any, Vec], Vec]:
    """Vector per prefix in the trie, and the vector for an address that hits no prefix."""
    sets: list[tuple[IPNetwork, ...]] = []
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
    return {v: plan.vector(holds_value(v)) for v in sorted(values, key=str)}, default


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
            if is_domain(m):
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


# ---- decision trees and interval tables ---------------------------------------------------------

# An address family of dip()/sip() (or the MAC field) cut into few intervals becomes an unrolled
# binary search over constants, inlined into the classifier. clang's time grows much faster than
# linearly with such trees in one function (CodeGenPrepare: 1,201 + 601 leaves took 41 s,
# 2,001 + 1,001 took 250 s), so only small trees are inlined, within a program-wide budget.
MAX_INLINE_TREE = 256
MAX_INLINE_TOTAL = 512
# Up to MAX_TREE_INTERVALS per family (MAX_TREE_TOTAL in all), the intervals are a sorted table
# in .data searched by a fixed-depth loop, inlined too: its code grows with log2 of the table,
# so clang and the verifier stay fast, and it needs no call (a BPF-to-BPF call and its return
# cost ~10 ns where returns are mitigated, as on this project's AMD machines). Past that, the
# family keeps an LPM trie map. bench/results/ has the measurements behind the numbers.
MAX_TREE_INTERVALS = 16384
MAX_TREE_TOTAL = 32768
# MAC values become a tree or table up to this many distinct addresses (else a hash map).
MAX_TREE_MACS = 4096


@dataclass
class Interval:
    start: int
    vec: Vec
    label: str  # what the interval stands for, for the generated comment


def prefix_intervals(per_net: dict[Any, Vec], default: Vec, family: int) -> list[Interval]:
    """The address space cut into maximal intervals of equal vector: the longest matching
    prefix's vector, or `default` where no prefix matches. Prefixes nest or are disjoint, so a
    sweep over them sorted by (start, length) with a stack of the enclosing ones does it."""
    width = 32 if family == 4 else 128
    out: list[Interval] = []

    def emit(start: int, vec: Vec, label: str) -> None:
        if out and out[-1].vec == vec:
            return
        out.append(Interval(start, vec, label))

    stack: list[tuple[int, Vec, str]] = []  # (last address, vector, label) of enclosing prefixes
    cur = 0
    for net in sorted(per_net, key=lambda n: (int(n.network_address), n.prefixlen)):
        s = int(net.network_address)
        e = int(net.broadcast_address)
        while stack and stack[-1][0] < s:
            end, vec, label = stack.pop()
            if cur <= end:
                emit(cur, vec, label)
                cur = end + 1
        if cur < s:
            if stack:
                emit(cur, stack[-1][1], stack[-1][2])
            else:
                emit(cur, default, "no prefix")
            cur = s
        stack.append((e, per_net[net], str(net)))
    while stack:
        end, vec, label = stack.pop()
        if cur <= end:
            emit(cur, vec, label)
            cur = end + 1
    if cur < (1 << width):
        emit(cur, default, "no prefix")
    return out


def value_intervals(vals: dict[int, Vec], default: Vec, width: int, fmt: Callable[[int], str]) -> list[Interval]:
    out: list[Interval] = []
    cur = 0
    for v in sorted(vals):
        if cur < v:
            out.append(Interval(cur, default, "no value"))
        out.append(Interval(v, vals[v], fmt(v)))
        cur = v + 1
    if cur < (1 << width):
        out.append(Interval(cur, default, "no value"))
    # merge neighbours with the same vector
    merged: list[Interval] = []
    for iv in out:
        if merged and merged[-1].vec == iv.vec:
            continue
        merged.append(iv)
    return merged


class ClassTable:
    """Distinct rule vectors of one field; index = the class a lookup yields."""

    def __init__(self) -> None:
        self.index: dict[Vec, int] = {}
        self.vecs: list[Vec] = []

    def cls(self, v: Vec) -> int:
        if v not in self.index:
            self.index[v] = len(self.vecs)
            self.vecs.append(v)
        return self.index[v]

    @property
    def size(self) -> int:
        """Rows in the table: a power of two, so `class & (size - 1)` bounds an index."""
        n = 1
        while n < len(self.vecs):
            n *= 2
        return n


def _fmt_addr(x: int, family: int) -> str:
    return str(ipaddress.IPv4Address(x)) if family == 4 else str(ipaddress.IPv6Address(x))


def tree_lines(ivs: list[Interval], table: ClassTable, less: Callable[[int], str], show: Callable[[int], str],
               indent: str, last: int) -> list[str]:
    """An unrolled binary search over the interval starts: `return <class>;` at each leaf, with the
    interval and what it stands for as a comment."""
    lines: list[str] = []

    def rec(lo: int, hi: int, ind: str) -> None:
        if lo == hi:
            iv = ivs[lo]
            end = ivs[lo + 1].start - 1 if lo + 1 < len(ivs) else last
            lines.append(f"{ind}return {table.cls(iv.vec)};  /* {show(iv.start)} - {show(end)}: {iv.label} */")
            return
        mid = (lo + hi + 1) // 2
        lines.append(f"{ind}if ({less(ivs[mid].start)}) {{")
        rec(lo, mid - 1, ind + "\t")
        lines.append(f"{ind}}} else {{")
        rec(mid, hi, ind + "\t")
        lines.append(f"{ind}}}")

    rec(0, len(ivs) - 1, indent)
    return lines


def _v6_less(var_hi: str, var_lo: str) -> Callable[[int], str]:
    def less(x: int) -> str:
        hi, lo = x >> 64, x & (2**64 - 1)
        if lo == 0:
            return f"{var_hi} < 0x{hi:016x}ULL"
        return f"{var_hi} < 0x{hi:016x}ULL || ({var_hi} == 0x{hi:016x}ULL && {var_lo} < 0x{lo:016x}ULL)"
    return less


def interval_table(ivs: list[Interval], table: ClassTable, start: Callable[[int], str], show: Callable[[int], str],
                   last: int) -> dict[str, Any]:
    """The intervals as rows of a sorted table (initializer, comment), padded to a power of two
    by repeating the last row, and the steps of the search: the last row whose start is <= the
    key is found in log2(size) halving steps, with no bound check and no early exit."""
    rows = []
    for k, iv in enumerate(ivs):
        end = ivs[k + 1].start - 1 if k + 1 < len(ivs) else last
        rows.append((f"{start(iv.start)}, {table.cls(iv.vec)}", f"{show(iv.start)} - {show(end)}: {iv.label}"))
    size = 2  # at least one step, for a field the rules cut into one interval only
    while size < len(rows):
        size *= 2
    steps = []
    s = size // 2
    while s:
        steps.append(s)
        s //= 2
    return {"rows": rows, "size": size, "pad": size - len(rows), "steps": steps}


def class_lookup(ivs: list[Interval], table: ClassTable, inline_left: list[int], less: Callable[[int], str],
                 start: Callable[[int], str], show: Callable[[int], str], last: int) -> dict[str, Any]:
    """How a field finds its class: an inlined tree while the intervals fit the inline budget
    (`inline_left`, shared by the program's trees and reduced here), else a sorted table."""
    if len(ivs) <= min(MAX_INLINE_TREE, inline_left[0]):
        inline_left[0] -= len(ivs)
        return {"kind": "tree", "lines": tree_lines(ivs, table, less, show, "\t", last)}
    return {"kind": "search", "search": interval_table(ivs, table, start, show, last)}


def _v6_start(x: int) -> str:
    return f"0x{x >> 64:016x}ULL, 0x{x & (2**64 - 1):016x}ULL"


# ---- template context --------------------------------------------------------------------------

def _vec_rows(table: ClassTable, words: int) -> list[str]:
    return [c_words(v, words) for v in table.vecs]


def bitvector_context(ir: RoutingIR) -> tuple[dict[str, Any], list[MapTable]]:
    live = ir.live_rules()
    n = len(live)
    words = max(1, (n + 63) // 64)
    if words > MAX_WORDS:
        raise TooManyRules(f"{n} live rules: the bit-vector classifier supports at most {MAX_WORDS * 64}")
    all_ones = (1 << n) - 1
    ps = plans(live)
    tables: list[MapTable] = []
    vsize = 8 * words
    ctx: dict[str, Any] = {"words": words, "n_live": n, "lpm_groups": [], "port_sets": 0}
    # Per field, in the order the program computes them, and which words of the vector it can
    # clear (the word loop skips a field in a word where every rule allows any value).
    fields: list[dict[str, Any]] = []

    def uses_words(rule_bits: Vec) -> list[bool]:
        return [bool((rule_bits >> (64 * i)) & (2**64 - 1)) for i in range(words)]

    def rule_bits(fs: tuple[Field, ...]) -> Vec:
        v = 0
        for f in fs:
            if f in ps:
                for pos in ps[f].rules:
                    v |= 1 << pos
        return v

    proto = proto_vectors(ps)
    if proto:
        pt = ClassTable()
        for v in proto:
            pt.cls(v)
        rows = [c_words(v, words) for v in proto]
        ctx["proto"] = {"rows": rows}
        fields.append({"var": "v_proto", "uses": uses_words(rule_bits((Field.L4PROTO, Field.IPVERSION))),
                       "table": "proto_vecs", "idx": "i_proto", "vecs": proto, "size": 4})
    else:
        ctx["proto"] = None

    if Field.DSCP in ps:
        dvecs = dscp_vectors(ps[Field.DSCP])
        ctx["dscp"] = {"rows": [c_words(v, words) for v in dvecs]}
        fields.append({"var": "v_dscp", "uses": uses_words(rule_bits((Field.DSCP,))),
                       "table": "dscp_vecs", "idx": "i_dscp", "vecs": dvecs, "size": 64})
    else:
        ctx["dscp"] = None

    ctx["proto_dscp"] = None
    if proto and ctx["dscp"]:  # ctx["proto"] is set exactly when proto is
        # Both small: one table indexed by (protocol index, DSCP) saves a vector per word below.
        dv = dscp_vectors(ps[Field.DSCP])
        ct = ClassTable()
        idx = [ct.cls(proto[pi] & dv[d]) for pi in range(4) for d in range(64)]
        # 16 classes a line, as a person would write the table: 4 lines per protocol index.
        class_rows = [(" ".join(f"{c}," for c in idx[i:i + 16]),
                       f"{PROTO_NAMES[i // 64]}, DSCP {i % 64}-{i % 64 + 15}") for i in range(0, 256, 16)]
        ctx["proto_dscp"] = {"class_rows": class_rows, "size": ct.size, "rows": _vec_rows(ct, words),
                             "ctype": "__u8" if ct.size <= 256 else "__u16"}
        ctx["proto"] = ctx["dscp"] = None
        fields[-2:] = [{"var": "v_pd", "uses": uses_words(rule_bits((Field.L4PROTO, Field.IPVERSION, Field.DSCP))),
                        "table": "proto_dscp_vecs", "idx": "i_pd", "vecs": ct.vecs, "size": ct.size}]

    # Fields of the kinds with several members go through the registry, in its order (dip before
    # sip, dport before sport); single-field kinds (mac, dscp, pname, l4proto/ipversion's
    # combined table) have tables named after them.
    ports = []
    for port_spec in contract_fields.of_kind("ports"):
        f = port_spec.field
        if f not in ps:
            continue
        table, vecs = port_classes(ps[f])
        ct = ClassTable()
        for v in vecs:
            ct.cls(v)
        runs = []  # (lo, hi, class): the 65536-entry class table as GNU range designators
        lo = 0
        for p in range(1, 65537):
            if p == 65536 or table[p] != table[lo]:
                runs.append((lo, p - 1, table[lo]))
                lo = p
        ports.append({"field": f.value, "operand": port_spec.operand, "nclasses": len(vecs), "size": ct.size,
                      "rows": _vec_rows(ct, words), "runs": runs, "ctype": "__u8" if len(vecs) <= 256 else "__u16"})
        fields.append({"var": f"v_{f.value}", "uses": uses_words(rule_bits((f,))),
                       "table": f"{f.value}_vecs", "idx": f"i_{f.value}", "vecs": ct.vecs, "size": ct.size})
    ctx["ports"] = ports

    budget = [MAX_TREE_TOTAL]  # intervals of trees and tables in all
    inline_left = [MAX_INLINE_TOTAL]  # intervals of inlined trees in all
    cidrs = []
    for spec in contract_fields.of_kind("cidr"):
        f = spec.field
        if f not in ps:
            continue
        ct = ClassTable()
        entry: dict[str, Any] = {"field": f.value, "addr": spec.operand, "families": []}
        default: Vec = 0
        for family in (4, 6):
            per_net, default = cidr_vectors(ps[f], family)
            fam: dict[str, Any] = {"family": family, "prefixes": len(per_net)}
            limit = min(MAX_TREE_INTERVALS, budget[0])
            ivs = prefix_intervals(per_net, default, family) if 2 * len(per_net) + 1 <= limit else None
            if ivs is not None and len(ivs) <= limit:
                budget[0] -= len(ivs)
                fam["intervals"] = len(ivs)
                if family == 4:
                    fam.update(class_lookup(ivs, ct, inline_left, lambda x: f"a < 0x{x:08x}",
                                            lambda x: f"0x{x:08x}", lambda x: _fmt_addr(x, 4), 2**32 - 1))
                else:
                    fam.update(class_lookup(ivs, ct, inline_left, _v6_less("hi", "lo"), _v6_start,
                                            lambda x: _fmt_addr(x, 6), 2**128 - 1))
            else:
                name = f"{f.value}{family}_vecs"
                t = MapTable(name, "lpm_trie", 4 + (4 if family == 4 else 16), vsize)
                for net in sorted(per_net, key=lambda x: (x.prefixlen, int(x.network_address))):
                    t.records.append((lpm_key(net), vec_bytes(per_net[net], words)))
                tables.append(t)
                fam.update(kind="lpm", name=name, entries=len(t.records), max_entries=max(1, len(t.records)))
            entry["families"].append(fam)
        entry["default_class"] = ct.cls(default)
        entry["size"] = ct.size
        entry["rows"] = _vec_rows(ct, words)
        entry["nclasses"] = len(ct.vecs)
        cidrs.append(entry)
        fields.append({"var": f"v_{f.value}", "uses": uses_words(rule_bits((f,)))})
    ctx["cidrs"] = cidrs

    if Field.MAC in ps:
        vals, default = value_vectors(ps[Field.MAC])
        ct = ClassTable()
        mac: dict[str, Any] = {"default_class": ct.cls(default), "entries": max(1, len(vals))}
        if len(vals) <= MAX_TREE_MACS and 2 * len(vals) + 1 <= budget[0]:
            ivs = value_intervals(vals, default, 48, lambda m: ":".join(f"{(m >> (8 * (5 - i))) & 255:02x}"
                                                                          for i in range(6)))
            mac.update(class_lookup(ivs, ct, inline_left, lambda x: f"m < 0x{x:012x}ULL",
                                    lambda x: f"0x{x:012x}ULL", lambda x: f"0x{x:012x}", 2**48 - 1))
        else:
            t = MapTable("mac_vecs", "hash", 8, vsize)
            t.records = [(struct.pack("<Q", m), vec_bytes(v, words)) for m, v in vals.items()]
            tables.append(t)
            mac["kind"] = "hash"
        mac["size"] = ct.size
        mac["rows"] = _vec_rows(ct, words)
        ctx["mac"] = mac
        fields.append({"var": "v_mac", "uses": uses_words(rule_bits((Field.MAC,)))})
    else:
        ctx["mac"] = None

    if Field.PNAME in ps:
        vals, default = value_vectors(ps[Field.PNAME])
        t = MapTable("pname_vecs", "hash", 16, vsize)
        t.records = [(name.encode()[:15].ljust(16, b"\0"), vec_bytes(v, words)) for name, v in vals.items()]
        tables.append(t)
        ctx["pname"] = {"entries": max(1, len(vals)), "default": c_words(default, words)}
        fields.append({"var": "v_pname", "uses": uses_words(rule_bits((Field.PNAME,)))})
    else:
        ctx["pname"] = None

    dplan = domain_plan(live, all_ones)
    if dplan:
        rows = [f"{{ {c_words(dplan['pos'].get(bit, 0), words)} }}, {{ {c_words(dplan['neg'].get(bit, 0), words)} }}"
                for bit in range(dplan["nsets"])]
        complex_lines = []
        nodom = dplan["base"]
        dom_bits = 0
        for pos, ls in dplan["complex"]:
            terms = [("!" if neg else "") + domain_term(b) for b, neg in ls]
            complex_lines.append({"pos": pos, "word": pos // 64, "shift": pos % 64, "cond": " && ".join(terms)})
            if all(neg for _, neg in ls):  # holds for a name without any set bit
                nodom |= 1 << pos
        for pos, r in enumerate(live):
            if any(is_domain(m) for m in r.matches):
                dom_bits |= 1 << pos
        ctx["domain"] = {"base": c_words(dplan["base"], words), "nodom": c_words(nodom, words),
                         "nsets": dplan["nsets"], "rows": rows, "complex": complex_lines, "host": None}
        # Fold the domain vector into a small table field that every packet indexes (the
        # "host"): a copy of its table ANDed with the no-domain vector serves packets without
        # domain bits; with bits, the walk's result is ANDed with the host's row instead. One
        # vector fewer in the word loop.
        host = next((f for f in fields if "table" in f), None)
        if host is not None:
            host["uses"] = [a or b for a, b in zip(host["uses"], uses_words(dom_bits), strict=True)]  # a flag a word
            ctx["domain"]["host"] = {"var": host["var"], "table": host["table"], "idx": host["idx"],
                                     "nd_table": host["table"].replace("_vecs", "_nd_vecs"), "size": host["size"],
                                     "rows": [c_words(v & nodom, words) for v in host["vecs"]]}
        else:
            fields.append({"var": "v_domain", "uses": uses_words(dom_bits)})
    else:
        ctx["domain"] = None

    must_rules = 0
    for pos, r in enumerate(live):
        if r.action.must_rules:
            must_rules |= 1 << pos
    ctx["must_rules_vec"] = c_words(must_rules, words) if must_rules else None
    word_plan = []
    for i in range(words):
        terms = [f["var"] + f"->w[{i}]" for f in fields if f["uses"][i]]
        must_w = (must_rules >> (64 * i)) & (2**64 - 1)
        word_plan.append({"i": i, "expr": " & ".join(terms) if terms else "~0ULL",
                          "must": f"0x{must_w:016x}ULL" if must_w else None})
    ctx["word_plan"] = word_plan
    ctx["lpm_families"] = sorted({f["family"] for c in cidrs for f in c["families"] if f["kind"] == "lpm"})
    ctx["uses_search"] = any(f["kind"] == "search" for c in cidrs for f in c["families"]) or bool(
        ctx["mac"] and ctx["mac"]["kind"] == "search")
    ctx["fields"] = fields
    ctx["positions"] = [r.index for r in live]
    return ctx, tables
