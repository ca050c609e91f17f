"""The whole path of `lan_ingress` (parse, flow table, classify, insert, hijack), not only
`classify_only`: new flows and established flows, beside dae's whole-path figures.

    sudo .venv/bin/python -m bench.lan_ingress_path [--repeat 100000] [--runs 7] [--calls 300]

For each config (0 rules = fallback only, 1 rule, 1,000 dae-like rules, 1,023 `dport` rules as
in dae's own figure) dae-compile builds the real program; the real `lan_ingress` is loaded with
its maps and timed with BPF_PROG_TEST_RUN in network namespaces that hold the runtime's tproxy
sockets (bench/path_harness.py says how, and why the new-flow path needs a variant):

- `new flow` (new-key variant): every run a flow the table has never seen: lookup misses,
  classify, insert, hijack (socket lookups). Its flow table is cleared before each timed run and
  is larger than `repeat`, so no insert evicts.
- `new flow, dae's method` (same-key variant): the lookup runs and is ignored; the insert then
  replaces the one entry, as dae's program does on every repeated TCP SYN. And the same without
  hijack() (proxied flows pass before the socket lookups): what those lookups cost. dae's
  current design redirects proxied packets into a veth pair and assigns the socket in a second
  program there (docs/local-routing.md), so its LAN-ingress figure likely has no socket lookup
  in it: this column is the nearer match for dae's 440 ns, the one before it the upper bound.
- `established`: the real program, its flow entry in place (the flow-table hit every later
  packet pays); for TCP the flow's own accepted socket exists, as after the handshake.
- floors in the same rounds: `classify_only` of the same build, the dae-style interpreter's
  classification (bench/interpreter, classification only: this repository has no copy of dae's
  whole program), and an empty tc program.
- single calls (repeat 1, `--calls` rounds, shuffled; each case its own loaded copy, so that no
  program's caches are warmer for being called more often): the real program on a new 5-tuple
  every call (the one way test-run gives the unpatched program a new flow each time), the real
  program with its entry deleted before each call, both variants, the real program on a hit;
  minus the empty program timed the same way. The real program on new 5-tuples and the new-key
  variant should agree: the check that the variant times the real path.

Every program's verdict for each packet is checked before it is timed (TC_ACT_OK, the flow entry
it wrote has the reference's rule and outbound; over 1,000 repetitions classify() ran every time,
or never for the established path) and a probe shows what hijack()'s socket lookups
find in each namespace and what bpf_sk_assign returns under test-run (EOPNOTSUPP: test-run's skb
is not at tc ingress, so hijack() fails open after its lookups; the assignment itself, an
skb_orphan and two stores, is the one part of the path not timed).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from dae_py.contract.evaluate import Flow, classify
from dae_py.runtime.bpf import BpfObject, prog_test_run
from dae_py.runtime.build import load_tables
from dae_py.runtime.packets import IPPROTO_TCP, flow_key, frame

from . import configs
from .common import Compiled, compile_one, machine_note, print_machine
from .interpreter import Interpreter, encode
from .path_harness import (
    VARIANTS,
    Case,
    Expect,
    HarnessError,
    PathNetns,
    build_probe,
    build_variant,
    check_path,
    check_repeated,
    clear_map,
    path_netns,
    probe,
    time_rounds,
    time_single_calls,
)

PACKET_ORDER = ["last", "fallback"]  # IPv4: the probe reads IPv4 frames only
DAE_QUOTED = {0: 440.0, 1023: 12800.0}  # /work/shared/REFERENCE.md: dae's LAN ingress on a new TCP SYN


@dataclass
class Row:
    name: str
    rules: int
    text: str
    dae_rules: int | None = None  # the rule count of a quoted dae figure this row mirrors
    real: Compiled | None = None
    variants: dict[str, BpfObject] = field(default_factory=dict)
    # Copies of the real program for the single calls, one per case: a program called more
    # often per round than another would have warmer caches in a measurement of one call.
    copies: dict[str, BpfObject] = field(default_factory=dict)
    results: dict[str, dict[str, Case]] = field(default_factory=dict)  # packet -> label -> timing
    single: dict[str, dict[str, Case]] = field(default_factory=dict)
    verdicts: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    strategy: str = ""


def rows_wanted(args: argparse.Namespace) -> list[Row]:
    rows = []
    for n in args.rules:
        name = "0 rules (fallback only)" if n == 0 else f"{n} dae-like rule{'s' if n != 1 else ''}"
        rows.append(Row(name, n, configs.mixed_config(n, seed=args.seed), dae_rules=0 if n == 0 else None))
    for n in args.port_rules:
        rows.append(Row(f"{n} dport rules", n, configs.mixed_config(n, seed=args.seed, kinds=["dport"]),
                        dae_rules=n))
    return rows


def flow_table_size(repeat: int) -> int:
    """The new-key variant's table: a power of two above `repeat`, never below the real size."""
    size = 65536
    while size < repeat:
        size *= 2
    return size


REPEAT_CHECK = 1000  # repetitions of the check that every run of a timed program takes its path
SINGLE_REAL = ("real, new 5-tuple", "real miss", "real hit")


def load_row(row: Row, args: argparse.Namespace, tmp: Path) -> None:
    name = row.name.split(" (")[0].replace(" ", "_")
    c = compile_one(row.text, f"{name}.yaml", tmp / name / "real", args.strategy)
    if c.error:
        raise HarnessError(f"{row.name}: compile failed ({c.error})")
    c.load()
    row.real = c
    assert c.build is not None and c.build_dir is not None
    row.strategy = c.build.manifest.strategy
    for kind in VARIANTS:
        obj = BpfObject(build_variant(c.build_dir, tmp / name / kind, kind))
        try:
            if kind == "new-key":
                obj.set_map_max_entries("flows", flow_table_size(args.repeat))
            obj.load()
            load_tables(obj, c.build)
        except BaseException:
            obj.close()
            raise
        row.variants[kind] = obj
    for label in SINGLE_REAL:
        obj = BpfObject(c.build.object_path)
        try:
            obj.load()
            load_tables(obj, c.build)
        except BaseException:
            obj.close()
            raise
        row.copies[label] = obj


def expected(row: Row, pk: str) -> Expect:
    assert row.real is not None and row.real.build is not None
    f = configs.PACKETS[pk].flow
    d = classify(row.real.checked.ir_checked, Flow(l4proto=f.l4proto, src=f.src, sport=f.sport, dst=f.dst,
                                                  dport=f.dport, mac=f.mac, dscp=f.dscp))
    rule = len(row.real.checked.ir.rules) if d.rule is None else d.rule
    return Expect(rule=rule, outbound=d.outbound_id, fwmark=row.real.build.manifest.settings.fwmark)


def verify(row: Row, pk: str, new: PathNetns, est: PathNetns) -> bool:
    """Check every timed program's verdict for the packet; notes say what failed."""
    assert row.real is not None and row.real.obj is not None
    f = configs.PACKETS[pk].flow
    data = frame(f)
    want = expected(row, pk)
    real, nk, sk = row.real.obj, row.variants["new-key"], row.variants["same-key"]
    plan: list[tuple[str, PathNetns, BpfObject, bool | str]] = [
        # (what, where, which program, what the run must do to the flow table); the map of
        # the first run of each program is cleared first
        ("real program, new flow", new, real, True),
        ("real program, established", est, real, False),
        ("new-key variant", new, nk, True),
        ("new-key variant, again", new, nk, True),
        ("same-key variant", new, sk, True),
        ("same-key variant, again", new, sk, "replace"),
        ("same-key variant without hijack()", new, row.variants["same-key-no-hijack"], True),
    ]
    checks = []
    cleared: set[int] = set()
    for label, ns, obj, mode in plan:
        if id(obj) not in cleared:
            clear_map(obj.map("flows"))
            cleared.add(id(obj))
        checks.append((label, check_path(ns, obj.program_fd("lan_ingress"), obj.map("flows"), f, data, want, mode)))
    ok = True
    lines = []
    for label, (problem, assigned) in checks:
        if problem:
            ok = False
            row.notes.append(f"{pk}: {label}: {problem}: NOT TIMED")
        lines.append(f"{label}: {'OK' if not problem else problem}"
                     f"{', assigned' if assigned else ', not assigned (test-run)'}")
    # Every repetition of a timed run takes the path of its figure (classify() counted per run).
    clear_map(nk.map("flows"))
    for label, ns, obj, classifies, added in (
            ("new-key variant", new, nk, True, REPEAT_CHECK),
            ("same-key variant", new, sk, True, 0),
            ("same-key variant without hijack()", new, row.variants["same-key-no-hijack"], True, 0),
            ("real program, established", est, real, False, 0)):
        problem = check_repeated(ns, obj, data, want, REPEAT_CHECK, classifies, added)
        if problem:
            ok = False
            row.notes.append(f"{pk}: {label}, {REPEAT_CHECK} repetitions: {problem}: NOT TIMED")
        ran = "classify() ran every time" if classifies else "classify() never ran"
        lines.append(f"{label}, {REPEAT_CHECK} repetitions: {problem or ran}")
    clear_map(nk.map("flows"))
    row.verdicts[pk] = lines
    return ok


FRESH_SPORT_BASE = 20000  # single calls with a new 5-tuple: source ports from here (no rule looks at sport)


def fresh_frames(row: Row, pk: str, n: int) -> list[bytes]:
    """n frames of the packet's flow, each from another source port; the reference must give
    each the packet's own decision (checked on the first, middle and last)."""
    f = configs.PACKETS[pk].flow
    flows = [dataclasses.replace(f, sport=FRESH_SPORT_BASE + i) for i in range(n)]
    assert row.real is not None
    want = expected(row, pk)
    for g in (flows[0], flows[n // 2], flows[-1]):
        d = classify(row.real.checked.ir_checked, Flow(l4proto=g.l4proto, src=g.src, sport=g.sport, dst=g.dst,
                                                      dport=g.dport, mac=g.mac, dscp=g.dscp))
        rule = len(row.real.checked.ir.rules) if d.rule is None else d.rule
        if (rule, d.outbound_id) != (want.rule, want.outbound):
            raise HarnessError(f"{row.name}: source port {g.sport} changes the decision; pick another base")
    return [frame(g) for g in flows]


def run_row(row: Row, args: argparse.Namespace, new: PathNetns, est: PathNetns, trivial_fd: int) -> None:
    assert row.real is not None and row.real.obj is not None
    t0 = time.perf_counter()
    enc = encode(row.real.checked.ir)
    with Interpreter.open() as interp:
        interp.fill(enc)
        real_fd = row.real.obj.program_fd("lan_ingress")
        nk, sk = row.variants["new-key"], row.variants["same-key"]
        for pk in args.packets:
            if not verify(row, pk, new, est):
                continue
            f = configs.PACKETS[pk].flow
            data = frame(f)
            key_flows = nk.map("flows")
            cases = [
                Case("new flow", nk.program_fd("lan_ingress"), new, partial(clear_map, key_flows)),
                Case("new flow, dae's method", sk.program_fd("lan_ingress"), new),
                Case("dae's method, no hijack()", row.variants["same-key-no-hijack"].program_fd("lan_ingress"), new),
                Case("established", real_fd, est),
                Case("classify_only", row.real.obj.program_fd("classify_only"), new),
                Case("interp classify", interp.program_fd("interp_classify"), new),
                Case("trivial", trivial_fd, new),
            ]
            time_rounds(cases, data, args.repeat, args.runs, seed=hash((row.name, pk)) & 0xFFFF)
            row.results[pk] = {c.label: c for c in cases}
            # Single calls: the real program on a new 5-tuple each call, and on its own with the
            # entry deleted first, against the variants and the hit.
            real_key = flow_key(f)
            clear_map(key_flows)
            fresh = fresh_frames(row, pk, args.calls)
            cp = row.copies
            deleted_flows = cp["real miss"].map("flows")
            singles = [
                Case("real, new 5-tuple", cp["real, new 5-tuple"].program_fd("lan_ingress"), new,
                     frame_of_call=fresh.__getitem__),
                Case("real miss", cp["real miss"].program_fd("lan_ingress"), new,
                     partial(deleted_flows.delete, real_key)),
                Case("new-key", nk.program_fd("lan_ingress"), new),
                Case("same-key", sk.program_fd("lan_ingress"), new),
                Case("real hit", cp["real hit"].program_fd("lan_ingress"), est),
                Case("trivial", trivial_fd, new),
            ]
            for obj in cp.values():
                clear_map(obj.map("flows"))
            clear_map(key_flows)
            hit_fd = cp["real hit"].program_fd("lan_ingress")
            est.call(partial(prog_test_run, hit_fd, data, data_out_size=0))  # the entry "real hit" needs
            time_single_calls(singles, data, args.calls, seed=hash((row.name, pk, 1)) & 0xFFFF)
            for obj in cp.values():
                clear_map(obj.map("flows"))
            clear_map(key_flows)
            row.single[pk] = {c.label: c for c in singles}
            print(f"   {row.name} / {pk}: " + ", ".join(f"{c.label} {c.median:.0f}ns (±{c.spread * 50:.0f}%)"
                                                      for c in cases), file=sys.stderr, flush=True)
            print("      single calls: " + ", ".join(f"{c.label} {c.median:.0f}ns" for c in singles),
                  file=sys.stderr, flush=True)
    print(f"   ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)


def fmt(x: float | None, nd: int = 0) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.{nd}f}"


def med(d: dict[str, Case], label: str) -> float:
    c = d.get(label)
    return c.median if c else float("nan")


def report(rows: list[Row], args: argparse.Namespace, probes: dict[str, list[str]]) -> str:
    out = [f"\n### Repeated runs (repeat {args.repeat}, median of {args.runs} rounds), ns/packet\n"]
    head = ["config", "strategy", "packet", "new flow", "new flow, dae's method", "dae's method without hijack()",
            "established", "classify_only",
            "dae-style classify (interp)", "empty program", "new flow / classify_only", "dae quoted (whole path)"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for r in rows:
        for pk in args.packets:
            d = r.results.get(pk, {})
            dae = (f"{DAE_QUOTED[r.dae_rules]:.0f} (TCP SYN)" if r.dae_rules in DAE_QUOTED and
                   configs.PACKETS[pk].flow.l4proto == IPPROTO_TCP else "-")
            out.append("| " + " | ".join([
                r.name, r.strategy, pk, fmt(med(d, "new flow")), fmt(med(d, "new flow, dae's method")),
                fmt(med(d, "dae's method, no hijack()")),
                fmt(med(d, "established")), fmt(med(d, "classify_only")), fmt(med(d, "interp classify")),
                fmt(med(d, "trivial")), fmt(med(d, "new flow") / med(d, "classify_only"), 1), dae]) + " |")
    out.append(f"\n### Single calls (repeat 1, median of {args.calls} shuffled rounds), ns minus the empty "
               "program's single call\n")
    head = ["config", "packet", "real program, new 5-tuple", "new-key variant", "real program, entry deleted",
            "same-key variant", "real program, hit", "empty program (raw)"]
    out.append("| " + " | ".join(head) + " |")
    out.append("|" + "---|" * len(head))
    for r in rows:
        for pk in args.packets:
            d = r.single.get(pk, {})
            base = med(d, "trivial")
            out.append("| " + " | ".join([r.name, pk] + [fmt(med(d, lab) - base) for lab in
                                                       ("real, new 5-tuple", "new-key", "real miss", "same-key",
                                                        "real hit")]
                                         + [fmt(base)]) + " |")
    out.append("\n### Verdicts (checked before timing) and what hijack() finds\n")
    for pk, lines in probes.items():
        out.append(f"- `{pk}` probe: " + "; ".join(lines))
    for r in rows:
        for pk, lines in r.verdicts.items():
            out.append(f"- {r.name} / `{pk}`: " + "; ".join(lines))
    notes = [f"- {r.name}: {n}" for r in rows for n in r.notes]
    if notes:
        out.append("\nNotes:\n" + "\n".join(notes))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=100_000, help="BPF_PROG_TEST_RUN repeat (>= 100000 for the record)")
    ap.add_argument("--runs", type=int, default=7, help="interleaved rounds; the median is reported")
    ap.add_argument("--calls", type=int, default=300, help="rounds of single calls (repeat 1) for the cross-check")
    ap.add_argument("--rules", type=int, nargs="*", default=[0, 1, 1000], help="dae-like rule counts")
    ap.add_argument("--port-rules", type=int, nargs="*", default=[1023], help="configs of N dport rules")
    ap.add_argument("--packets", nargs="*", default=PACKET_ORDER, choices=PACKET_ORDER)
    ap.add_argument("--strategy", default="auto")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write raw samples here")
    ap.add_argument("--keep", type=Path, help="build into this directory and keep it (default: a temp dir)")
    args = ap.parse_args(argv)
    if not 3 <= args.calls <= 20000:
        ap.error("--calls must be 3..20000 (the new 5-tuples use source ports 20000 + call)")
    note = machine_note()
    cmd = ".venv/bin/python -m bench.lan_ingress_path " + " ".join(argv if argv is not None else sys.argv[1:])
    rows = rows_wanted(args)
    tcp_flows = tuple(configs.PACKETS[pk].flow for pk in args.packets
                      if configs.PACKETS[pk].flow.l4proto == IPPROTO_TCP)
    probes: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="dae-bench-path-") as td:
        tmp = args.keep or Path(td)
        tmp.mkdir(parents=True, exist_ok=True)
        try:
            for r in rows:
                t0 = time.perf_counter()
                load_row(r, args, tmp)
                print(f"## {r.name}: {r.strategy}, built and loaded in {time.perf_counter() - t0:.1f}s",
                      file=sys.stderr, flush=True)
            first = rows[0].real
            assert first is not None and first.build is not None
            port = first.build.manifest.settings.tproxy_port
            probe_obj = BpfObject(build_probe(tmp / "probe", port))
            probe_obj.load()
            with path_netns(f"benchpath{os.getpid()}", port, tcp_flows) as (new, est), \
                    Interpreter.open() as floor:
                for pk in args.packets:
                    data = frame(configs.PACKETS[pk].flow)
                    probes[pk] = [f"{ns_label}: {probe(ns, probe_obj.program_fd('probe'), data).describe()}"
                                  for ns_label, ns in (("new-flow netns", new), ("established netns", est))]
                for r in rows:
                    run_row(r, args, new, est, floor.program_fd("trivial"))
            probe_obj.close()
        finally:
            for r in rows:
                for obj in [*r.variants.values(), *r.copies.values()]:
                    obj.close()
                if r.real is not None:
                    r.real.close()
    print_machine(note)
    print(f"# command (as root, from the checkout): {cmd.strip()}")
    print(f"# repeat={args.repeat} runs={args.runs} calls={args.calls}; every column of a row is timed in the "
          "same shuffled rounds")
    print(report(rows, args, probes))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": note, "command": cmd, "repeat": args.repeat, "runs": args.runs, "calls": args.calls,
            "probes": probes,
            "rows": [{"name": r.name, "strategy": r.strategy, "notes": r.notes, "verdicts": r.verdicts,
                      "results": {pk: {lab: c.samples for lab, c in d.items()} for pk, d in r.results.items()},
                      "single": {pk: {lab: c.samples for lab, c in d.items()} for pk, d in r.single.items()}}
                     for r in rows],
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
