"""Where the compiled program's time goes at large rule counts: the same N rules, one rule kind
at a time (every rule is a dip() rule, or a domain() rule, ...), so each field's lookup shows
up on its own against the 1-rule program.

    sudo .venv/bin/python -m bench.ablate [--n 1000] [--strategies bitvector] [--repeat 100000] [--runs 5]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from . import configs
from .classify import Row, med, one_rule, run_row
from .common import available_strategies, machine_note, print_machine

KIND_SETS = [["dip"], ["sip"], ["domain"], ["domain+tcp"], ["dport"], ["dip+tcp+dport"], ["udp+dport"], ["mac"],
             ["dscp"], None]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--repeat", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--strategies", nargs="*", default=None)
    ap.add_argument("--packets", nargs="*", default=["last", "last+dns", "fallback"])
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args(argv)
    args.strategies = args.strategies or [s for s in available_strategies() if s != "linear"] or available_strategies()
    note = machine_note()
    rows = [Row("1 rule", 1, configs.mixed_config(1, args.seed))]
    for kinds in KIND_SETS:
        label = "+".join(kinds) if kinds else "dae-like mix"
        rows.append(Row(f"{args.n} x {label}", args.n, configs.mixed_config(args.n, args.seed, kinds)))
    with tempfile.TemporaryDirectory(prefix="dae-bench-ablate-") as td:
        for r in rows:
            run_row(r, args, Path(td))
    print_machine(note)
    print("# command (as root, from the checkout): .venv/bin/python -m bench.ablate "
          + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"# repeat={args.repeat} runs={args.runs}; "
          "median ns/packet (in brackets: / the same strategy's 1-rule program,")
    print("# timed in the same rounds)\n")
    head = ["rules"] + [f"{s} {pk}" for s in args.strategies for pk in args.packets] + \
           [f"interp {pk}" for pk in args.packets]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    base = rows[0]
    for r in rows:
        cells = [r.name]
        cells += [f"{med(r, pk, s):.0f} ({med(r, pk, s) / one_rule(r, base, pk, s):.2f}x)"
                  for s in args.strategies for pk in args.packets]
        cells += [f"{med(r, pk, 'interp'):.0f}" for pk in args.packets]
        print("| " + " | ".join(cells) + " |")
    for r in rows:
        for n in r.notes:
            print(f"- {r.name}: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
