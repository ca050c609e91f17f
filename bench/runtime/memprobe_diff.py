"""Bytes per flow by allocation site: two tracemalloc snapshots of the runtime (written by
bench/runtime/memprobe at idle_flows_rss's baseline and peak) compared, divided by the flows.

    .venv/bin/python -m bench.runtime.memprobe_diff PREFIX.1.tracemalloc PREFIX.2.tracemalloc FLOWS [--top 25]
"""
from __future__ import annotations

import argparse
import sys
import tracemalloc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("flows", type=int)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args(argv)
    a = tracemalloc.Snapshot.load(args.before)
    b = tracemalloc.Snapshot.load(args.after)
    stats = b.compare_to(a, "lineno")
    total = sum(s.size_diff for s in stats)
    print(f"traced Python heap: {total / args.flows:.0f} B per flow")
    for s in stats[:args.top]:
        frame = s.traceback[0]
        where = frame.filename.split("/runtime/")[-1] if "/runtime/" in frame.filename else frame.filename
        print(f"{s.size_diff / args.flows:8.1f} B/flow {s.count_diff / args.flows:6.2f} objects/flow  "
              f"{where}:{frame.lineno}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
