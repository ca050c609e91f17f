"""Time finished build directories side by side: the A/B of two compiler versions.

`bench.classify` compiles with this checkout only. To compare a change against the code before
it, compile the same config with each checkout (`cd OLD && python -m dae_py.compiler.cli ...`), then
time the builds' `classify_only` programs here in the same interleaved rounds, so the shared
machine's drifts hit every build alike and the ratios stand:

    .venv/bin/python -m bench.ab_builds one=B1 old=B2 new=B3 --baseline one

Each build's answer (its rule index) is printed next to its time: builds of the same config must
agree, builds of different configs (1 rule against 1,000) need not. `+dns` packets add a domain-map
entry without bits for the destination, as in bench.classify.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dae_py.runtime.packets import frame

from . import configs
from .common import Compiled, Timed, machine_note, print_machine, retval, time_interleaved

PACKET_ORDER = ["last", "last+dns", "fallback", "fallback6"]


def set_domain(builds: dict[str, Compiled], dst: object, present: bool) -> None:
    for c in builds.values():
        c.bind_domain(dst, 0 if present else None)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("builds", nargs="+", help="LABEL=BUILD_DIR, in the order of the table's columns")
    ap.add_argument("--baseline", help="label the ratios divide by (default: the first)")
    ap.add_argument("--repeat", type=int, default=100_000)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--packets", nargs="*", default=PACKET_ORDER, choices=PACKET_ORDER)
    args = ap.parse_args(argv)
    builds: dict[str, Compiled] = {}
    for spec in args.builds:
        label, _, path = spec.partition("=")
        if not path:
            ap.error(f"{spec!r}: expected LABEL=BUILD_DIR")
        c = Compiled(strategy=label, build_dir=Path(path))
        c.load()
        builds[label] = c
    base = args.baseline or next(iter(builds))
    note = machine_note()
    rows = []
    try:
        for pname in args.packets:
            pk = configs.PACKETS[pname.split("+")[0]]
            set_domain(builds, pk.flow.dst, pname.endswith("+dns"))
            data = frame(pk.flow)
            timed = []
            answers = {}
            for label, c in builds.items():
                assert c.obj is not None
                fd = c.obj.program_fd("classify_only")
                answers[label] = retval(fd, data)
                timed.append(Timed(label, fd))
            time_interleaved(timed, data, args.repeat, args.runs, seed=hash(pname) & 0xFFFF)
            set_domain(builds, pk.flow.dst, False)
            by = {t.label: t for t in timed}
            rows.append((pname, by, answers))
            print(f"{pname}: " + ", ".join(f"{t.label} {t.median:.0f}ns (rule {answers[t.label]}, "
                                           f"±{t.spread * 50:.0f}%)" for t in timed), file=sys.stderr, flush=True)
    finally:
        for c in builds.values():
            c.close()
    print_machine(note)
    print("# command (as root, from the checkout): .venv/bin/python -m bench.ab_builds "
          + " ".join(argv if argv is not None else sys.argv[1:]))
    print(f"# repeat={args.repeat} runs={args.runs}; ns/packet = median over the interleaved rounds")
    print()
    labels = list(builds)
    print("| packet | " + " | ".join(f"{lab} ns" for lab in labels) + " | "
          + " | ".join(f"{lab} / {base}" for lab in labels if lab != base) + " |")
    print("|---" * (1 + 2 * len(labels) - 1) + "|")
    for pname, by, answers in rows:
        b = by[base].median
        print(f"| {pname} | " + " | ".join(f"{by[lab].median:.0f} (rule {answers[lab]})" for lab in labels) + " | "
              + " | ".join(f"{by[lab].median / b:.2f}" for lab in labels if lab != base) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
