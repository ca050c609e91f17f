"""Syscalls per proxied connection on dae-runtime's event-loop thread, from a full strace.

    .venv/bin/python -m bench.runtime.strace_calls [--rate 50 --count 100 --warmup 20]

`connect_latency --strace` counts with `strace -c` over all threads, startup work of other
threads included (the controller's imports, the health checks' thread pool). This runs
connect_latency (relay mode only) with `strace -f` writing every call, then counts the calls of
the busiest thread (the loop) per proxied connection, and the EAGAIN results among them. strace
slows the runtime a lot: keep the rate low and trust only the counts. Forwards the other
arguments to connect_latency.
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import bench.runtime.connect_latency as connect_latency

_CALL = re.compile(r"^(\d+) +(?:<\.\.\. )?(\w+)")


def count_loop_thread(trace: Path) -> tuple[collections.Counter[str], int]:
    """(calls by name, EAGAIN results) of the thread with the most lines in `trace`."""
    lines = trace.read_text(errors="replace").splitlines()
    per_tid = collections.Counter(line.split(" ", 1)[0] for line in lines if line[:1].isdigit())
    tid = per_tid.most_common(1)[0][0]
    calls: collections.Counter[str] = collections.Counter()
    eagain = 0
    for line in lines:
        m = _CALL.match(line)
        if m is None or m.group(1) != tid or "resumed>" in line:
            continue
        calls[m.group(2)] += 1
        eagain += "EAGAIN" in line
    return calls, eagain


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", default="50")
    ap.add_argument("--count", default="100")
    ap.add_argument("--warmup", default="20")
    ap.add_argument("--keep", type=Path, help="copy the full trace here")
    args, rest = ap.parse_known_args(argv)
    n = int(args.warmup) + int(args.count)
    with tempfile.TemporaryDirectory(prefix="bench-strace-") as tmp:
        kept = Path(tmp) / "trace.txt"

        def start_strace(pid: int, out: Path) -> subprocess.Popen[bytes]:
            return subprocess.Popen(["strace", "-f", "-q", "-o", str(out), "-p", str(pid)],
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def counts(out: Path) -> dict[str, Any]:
            shutil.copy(out, kept)
            return {}

        setattr(connect_latency, "start_strace", start_strace)  # noqa: B010 - the full trace, not -c
        setattr(connect_latency, "strace_counts", counts)  # noqa: B010 - counted here, per thread
        code = connect_latency.main(["--rate", args.rate, "--count", args.count, "--warmup", args.warmup,
                                     "--rounds", "1", "--modes", "relay", "--strace", *rest])
        calls, eagain = count_loop_thread(kept)
        if args.keep:
            shutil.copy(kept, args.keep)
    futex = calls.pop("futex", 0)
    total = sum(calls.values())
    print(f"  loop thread, {n} proxied connections: {total / n:.1f} syscalls per connection (futex {futex / n:.1f} "
          f"left out; {eagain / n:.2f} of them EAGAIN):")
    print("   " + ", ".join(f"{k} {v / n:.2f}" for k, v in calls.most_common() if v / n >= 0.05))
    return code


if __name__ == "__main__":
    sys.exit(main())
