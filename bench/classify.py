"""Classification cost: compiled programs (every strategy this checkout has) against the dae-style
interpreter, same rules, same frames, same run.

    sudo .venv/bin/python -m bench.classify [--repeat 100000] [--runs 7] [--json out.json]

For each config (1/10/100/1000 dae-like rules, and 10 rules whose last one holds a 10k or 100k
CIDR set) every strategy is compiled and loaded, the interpreter gets the same IR, and each
benchmark packet is first checked (every program must return the rule the Python reference
picks) and then timed with BPF_PROG_TEST_RUN: `runs` rounds, each program once per round in a
shuffled order, `repeat` repetitions per run; the table shows the median ns/packet. The
programs timed are the compiled `classify_only` (parse + classify, returns the rule index) and
the interpreter's `interp_classify` (parse + bpf_loop walk, returns the rule index).

With `--against OTHER_CHECKOUT` every config is also compiled by that checkout (its own
`.venv/bin/python`, e.g. a worktree of the commit before a change), and its programs are timed in
the same rounds as this checkout's, labelled `old:<strategy>`: the `<strategy> / old` columns are
the A/B of the change, unaffected by the machine's drift between runs.
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dae_py.compiler.pipeline import choose_strategy
from dae_py.contract.evaluate import Flow, classify
from dae_py.runtime.bpf import BpfError
from dae_py.runtime.build import BuildError
from dae_py.runtime.packets import domain_key, frame

from . import configs
from .common import (
    Compiled,
    Timed,
    available_strategies,
    check_only,
    compile_one,
    machine_note,
    print_machine,
    retval,
    time_interleaved,
)
from .interpreter import Interpreter, encode

# "last+dns": the 'last' frame, with a domain-map entry (no bits set) for its destination, as if
# the gateway's DNS had resolved it to a name in none of the rule sets. Domain rules then have
# to look at the bitmap instead of stopping at a missing entry.
PACKET_ORDER = ["last", "last+dns", "fallback", "fallback6"]


@dataclass
class Row:
    name: str
    rules: int
    text: str
    compiled: dict[str, Compiled] = field(default_factory=dict)
    auto: str = ""
    results: dict[str, dict[str, Timed]] = field(default_factory=dict)  # packet -> label -> timing
    notes: list[str] = field(default_factory=list)
    entries: int = 0
    checked: Any = None


def rows_wanted(args: argparse.Namespace, tmp: Path) -> list[Row]:
    rows = []
    for n in args.rules:
        label = "0 rules (parse + fallback)" if n == 0 else f"{n} rule{'s' if n > 1 else ''}"
        rows.append(Row(label, n, configs.mixed_config(n, seed=args.seed)))
    for n in args.cidr_sets:
        label = f"{n // 1000}k" if n % 1000 == 0 else str(n)
        rows.append(Row(f"10 rules + {label} CIDR set", 10,
                        configs.big_cidr_config(tmp / f"cidr{n}", n, n_rules=10, seed=args.seed + n)))
    return rows


def set_domain(row: Row, interp: Interpreter, dst: Any, present: bool) -> None:
    """Add (no bits) or remove the destination's domain-map entry in every loaded program."""
    for c in row.compiled.values():
        if c.obj is not None:
            c.bind_domain(dst, 0 if present else None)
    if present:
        interp.set_domain_bits(dst, 0)
    else:
        interp.obj.map("interp_domain").delete(domain_key(dst))


# Run by the other checkout's interpreter: the config text on stdin, the build directory and
# strategy as arguments (only the pipeline entry point both sides share).
OLD_COMPILE = ("import sys; from dae_py.compiler.pipeline import compile_config; "
               "compile_config(None, sys.argv[1], text=sys.stdin.read(), name=sys.argv[2], strategy=sys.argv[3])")


def compile_against(checkout: Path, text: str, name: str, out_dir: Path, strategy: str) -> Compiled:
    """Compile `text` with another checkout (its .venv), for the side-by-side A/B."""
    c = Compiled(strategy=f"old:{strategy}")
    t0 = time.perf_counter()
    proc = subprocess.run([str(checkout / ".venv" / "bin" / "python"), "-c", OLD_COMPILE, str(out_dir), name, strategy],
                          input=text, capture_output=True, text=True, cwd=checkout, check=False)
    c.seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        c.error = (proc.stderr.strip().splitlines() or ["failed"])[-1][:120]
    else:
        c.build_dir = out_dir
    return c


def run_row(row: Row, args: argparse.Namespace, tmp: Path) -> None:
    name = row.name.replace(" ", "_").replace("+", "")
    t0 = time.perf_counter()
    checked = None
    for s in args.strategies:
        c = compile_one(row.text, f"{name}.yaml", tmp / name / s, s)
        row.compiled[s] = c
        if c.error:
            row.notes.append(f"{s}: compile failed ({c.error})")
            continue
        checked = c.checked
        try:
            c.load()
        except (BpfError, BuildError, OSError, ValueError) as exc:  # verifier rejection etc.
            row.notes.append(f"{s}: load failed ({str(exc).splitlines()[0][:120]})")
            c.error = "load failed"
        if args.against is not None:
            o = compile_against(args.against, row.text, f"{name}.yaml", tmp / name / f"old-{s}", s)
            row.compiled[o.strategy] = o
            if o.error:
                row.notes.append(f"old:{s}: compile failed ({o.error})")
                continue
            try:
                o.load()
            except (BpfError, BuildError, OSError, ValueError) as exc:
                row.notes.append(f"old:{s}: load failed ({str(exc).splitlines()[0][:120]})")
                o.error = "load failed"
    if checked is None:
        checked = check_only(row.text, f"{name}.yaml")
    row.checked = checked
    row.auto = choose_strategy(checked.ir, "auto")  # raises nothing: it only counts rules and CIDRs
    enc = encode(checked.ir)
    row.entries = len(enc.entries)
    print(f"## {row.name}: {len(checked.ir.live_rules())} live rules, {len(enc.entries)} interpreter entries, "
          f"{len(enc.lpm_sets)} LPM sets; auto -> {row.auto}; compiled in "
          + ", ".join(f"{s} {c.seconds:.1f}s" + (" FAILED" if c.error else "") for s, c in row.compiled.items()),
          file=sys.stderr, flush=True)
    with Interpreter.open() as interp:
        interp.fill(enc)
        progs: list[tuple[str, int]] = [(s, c.obj.program_fd("classify_only"))
                                        for s, c in row.compiled.items() if c.obj is not None]
        progs.append(("interp", interp.program_fd("interp_classify")))
        floors = [("parse_only", interp.program_fd("parse_only")), ("trivial", interp.program_fd("trivial"))]
        # The 1-rule programs, timed again in this row's rounds, so that N / 1-rule is a ratio
        # of the same rounds like interp / compiled (the machine's speed drifts between rows).
        ref: Row | None = getattr(args, "ref_row", None)
        refs = [] if ref is None or ref is row else [
            (f"ref:{s}", c.obj.program_fd("classify_only")) for s, c in ref.compiled.items()
            if c.obj is not None and not s.startswith("old:")]
        for pname in args.packets:
            base = pname.split("+")[0]
            pk = configs.PACKETS[base]
            dns = pname.endswith("+dns")
            set_domain(row, interp, pk.flow.dst, dns)
            data = frame(pk.flow)
            f = pk.flow
            want = classify(checked.ir_checked, Flow(l4proto=f.l4proto, src=f.src, sport=f.sport, dst=f.dst,
                                                      dport=f.dport, mac=f.mac, dscp=f.dscp)).rule
            want_idx = len(checked.ir.rules) if want is None else want
            if refs:
                assert ref is not None
                rw = classify(ref.checked.ir_checked, Flow(l4proto=f.l4proto, src=f.src, sport=f.sport, dst=f.dst,
                                                           dport=f.dport, mac=f.mac, dscp=f.dscp)).rule
                ref_idx = len(ref.checked.ir.rules) if rw is None else rw
            timed = []
            for label, fd in progs + refs + floors:
                got = retval(fd, data)
                expect = ref_idx if label.startswith("ref:") else want_idx
                if label not in ("parse_only", "trivial") and got != expect:
                    row.notes.append(f"{pname}: {label} returned rule {got}, the reference says {expect}: NOT TIMED")
                    continue
                timed.append(Timed(label, fd))
            time_interleaved(timed, data, args.repeat, args.runs, seed=hash((row.name, pname)) & 0xFFFF)
            row.results[pname] = {t.label: t for t in timed}
            set_domain(row, interp, pk.flow.dst, False)
            print("   " + pname + ": " + ", ".join(f"{t.label} {t.median:.0f}ns (±{t.spread * 50:.0f}%)"
                                                    for t in timed), file=sys.stderr, flush=True)
    if row.rules == 1 and getattr(args, "ref_row", None) is None and "CIDR" not in row.name:
        args.ref_row = row  # kept loaded: later rows time it alongside their own programs
    else:
        for c in row.compiled.values():
            c.close()
    print(f"   ({time.perf_counter() - t0:.0f}s)", file=sys.stderr, flush=True)


def fmt(x: float | None, nd: int = 0) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.{nd}f}"


def med(row: Row, pk: str, label: str) -> float:
    t = row.results.get(pk, {}).get(label)
    return t.median if t else float("nan")


def one_rule(r: Row, base: Row, pk: str, s: str) -> float:
    """The 1-rule program's time for this packet: as timed in row r's own rounds when it was
    (every row after the 1-rule row), else from the 1-rule row."""
    t = r.results.get(pk, {}).get(f"ref:{s}")
    return t.median if t else med(base, pk, s)


def report(rows: list[Row], args: argparse.Namespace) -> str:
    out = []
    strategies = args.strategies
    base = next((r for r in rows if r.rules == 1 and "CIDR" not in r.name), None)
    for pk in args.packets:
        desc = configs.PACKETS[pk.split("+")[0]].what + (" + domain-map entry for dst" if pk.endswith("+dns") else "")
        out.append(f"\n### packet `{pk}`: {desc}\n")
        ref_s = base.auto if base and base.auto in strategies else strategies[0]
        head = ["config", "auto"] + [f"{s} ns" for s in strategies] + ["interp ns", f"1-rule {ref_s} ns, same rounds"]
        head += [f"{s} / 1-rule" for s in strategies] + ["auto / 1-rule"]
        head += [f"interp / {s}" for s in strategies] + ["interp / auto"]
        if args.against is not None:
            head += [f"old {s} ns" for s in strategies] + [f"{s} / old" for s in strategies]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "---|" * len(head))
        for r in rows:
            auto = r.auto if r.auto in strategies else None
            cells = [r.name, r.auto]
            cells += [fmt(med(r, pk, s)) for s in strategies]
            cells.append(fmt(med(r, pk, "interp")))
            cells.append(fmt(one_rule(r, base, pk, ref_s)) if base else "-")
            for s in strategies:
                cells.append(fmt(med(r, pk, s) / one_rule(r, base, pk, s), 2) if base else "-")
            a_now = med(r, pk, auto) if auto else float("nan")
            a_base = one_rule(r, base, pk, base.auto) if base and base.auto in strategies else float("nan")
            cells.append(fmt(a_now / a_base, 2))
            for s in strategies:
                cells.append(fmt(med(r, pk, "interp") / med(r, pk, s), 1))
            cells.append(fmt(med(r, pk, "interp") / a_now, 1))
            if args.against is not None:
                cells += [fmt(med(r, pk, f"old:{s}")) for s in strategies]
                cells += [fmt(med(r, pk, s) / med(r, pk, f"old:{s}"), 3) for s in strategies]
            out.append("| " + " | ".join(cells) + " |")
        floors = [(r.name, med(r, pk, "parse_only"), med(r, pk, "trivial")) for r in rows]
        pmin = min((f[1] for f in floors if not math.isnan(f[1])), default=float("nan"))
        tmin = min((f[2] for f in floors if not math.isnan(f[2])), default=float("nan"))
        out.append(f"\nFloors in the same runs: the interpreter's parse alone {fmt(pmin)} ns, an empty tc program "
                   f"{fmt(tmin)} ns (lowest medians over the rows).")
    notes = [f"- {r.name}: {n}" for r in rows for n in r.notes]
    if notes:
        out.append("\nNotes:\n" + "\n".join(notes))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=100_000, help="BPF_PROG_TEST_RUN repeat (>= 100000 for the record)")
    ap.add_argument("--runs", type=int, default=7, help="interleaved runs per program; the median is reported")
    ap.add_argument("--rules", type=int, nargs="*", default=[0, 1, 10, 100, 1000])
    ap.add_argument("--cidr-sets", type=int, nargs="*", default=[10_000, 100_000])
    ap.add_argument("--packets", nargs="*", default=PACKET_ORDER, choices=PACKET_ORDER)
    ap.add_argument("--strategies", nargs="*", default=None,
                    help=f"default: every strategy this checkout has ({', '.join(available_strategies())})")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", type=Path, help="also write raw samples here")
    ap.add_argument("--keep", type=Path, help="build into this directory and keep it (default: a temp dir)")
    ap.add_argument("--against", type=Path, help="another checkout (with its .venv) whose builds are timed in "
                                                 "the same rounds, as old:<strategy>")
    args = ap.parse_args(argv)
    args.strategies = args.strategies or available_strategies()
    if 1 not in args.rules:
        print("note: without the 1-rule config there is no baseline for the N/1-rule ratios", file=sys.stderr)
    note = machine_note()
    cmd = ".venv/bin/python -m bench.classify " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="dae-bench-") as td:
        tmp = args.keep or Path(td)
        tmp.mkdir(parents=True, exist_ok=True)
        rows = rows_wanted(args, tmp)
        # The 1-rule row runs first: every later row re-times its programs (see run_row).
        for r in sorted(rows, key=lambda r: not (r.rules == 1 and "CIDR" not in r.name)):
            run_row(r, args, tmp)
        if getattr(args, "ref_row", None) is not None:
            for c in args.ref_row.compiled.values():
                c.close()
    print_machine(note)
    print(f"# command (as root, from the checkout): {cmd.strip()}")
    print(f"# repeat={args.repeat} runs={args.runs}; ns/packet = median over runs of the kernel's mean per repetition")
    print("# every ratio compares programs timed in the same interleaved rounds: the 1-rule programs are re-timed")
    print("# in each later row for the N / 1-rule columns")
    print(report(rows, args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "machine": note, "command": cmd, "repeat": args.repeat, "runs": args.runs,
            "rows": [{"name": r.name, "auto": r.auto, "entries": r.entries, "notes": r.notes,
                      "compile_s": {s: round(c.seconds, 3) for s, c in r.compiled.items()},
                      "results": {pk: {lab: t.samples for lab, t in d.items()} for pk, d in r.results.items()}}
                     for r in rows],
        }, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
