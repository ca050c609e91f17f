"""Run `bench.runtime.connect_latency` of two checkouts alternately and compare them.

Each checkout runs its own code with its own venv (`TREE/.venv/bin/python -m
bench.runtime.connect_latency` with TREE as the working directory), in the order A B B A A B ...
so that drift of a shared machine falls on both alike. Reported per mode and percentile: the
median over the runs of each tree, and B/A as the median of the per-pair ratios (the one to
trust) next to the ratio of the medians; likewise dae-runtime's CPU per proxied connection.

    .venv/bin/python -m bench.runtime.compare_trees --a /work/wt-net-base --b . --pairs 3 -- --rounds 3

Needs root (the lab does); the arguments after `--` go to connect_latency unchanged.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

QUANTILES = ("p50", "p90", "p99")


def run_once(tree: Path, extra: list[str], out: Path) -> dict[str, Any]:
    """One connect_latency run of `tree`'s code; its JSON result."""
    argv = [str(tree / ".venv/bin/python"), "-m", "bench.runtime.connect_latency", "--json", str(out), *extra]
    subprocess.run(argv, cwd=tree, check=True, stdout=subprocess.DEVNULL)
    result: dict[str, Any] = json.loads(out.read_text())
    return result


def cpu_per_relay_conn_us(res: dict[str, Any], key: str = "cpu_s") -> float:
    """dae-runtime's CPU (`cpu_s`, or `cpu_user_s`: its own work, without the veth work done
    in its syscalls) per proxied connection of the run. A run with per-block CPU readings (issue
    15 on) carries the figure itself, over its recorded relay blocks only."""
    per = (res.get("cpu_per_conn_us") or {}).get("relay")
    if per:
        return float(per["total" if key == "cpu_s" else "user"])
    args = res["args"]
    n = args["warmup"] + args["rounds"] * args["count"]
    return float(res[key]) / n * 1e6


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="the 'before' checkout (with its own .venv)")
    ap.add_argument("--b", type=Path, required=True, help="the 'after' checkout")
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--json", type=Path, help="keep every run's result here")
    ap.add_argument("rest", nargs=argparse.REMAINDER, help="-- then arguments for connect_latency")
    args = ap.parse_args(argv)
    extra = args.rest[1:] if args.rest[:1] == ["--"] else args.rest
    trees = {"a": args.a.resolve(), "b": args.b.resolve()}
    runs: dict[str, list[dict[str, Any]]] = {"a": [], "b": []}
    with tempfile.TemporaryDirectory(prefix="bench-cmp-") as tmp:
        for i in range(args.pairs):
            order = ("a", "b") if i % 2 == 0 else ("b", "a")
            for which in order:
                res = run_once(trees[which], extra, Path(tmp) / f"{which}{i}.json")
                runs[which].append(res)
                relay = res["stats"].get("relay", {})
                print(f"pair {i + 1} {which}: relay p50 {relay.get('p50', float('nan')):.0f} us, "
                      f"p99 {relay.get('p99', float('nan')):.0f} us, "
                      f"{cpu_per_relay_conn_us(res):.0f} us CPU/conn", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()}, "extra": extra,
                                         "runs": runs}, indent=1))
    print(f"\nA = {trees['a']}\nB = {trees['b']}\n{args.pairs} pairs, connect_latency {' '.join(extra)}")
    print(f"  {'mode':8s} {'q':4s} {'A med us':>9s} {'B med us':>9s} {'B/A pairs':>10s} {'B/A med':>8s}")
    modes = [m for m in ("direct", "relay", "socks", "redsocks", "v2ray")
             if runs["a"] and runs["b"] and m in runs["a"][0]["stats"] and m in runs["b"][0]["stats"]]
    for mode in modes:
        for q in QUANTILES:
            a = [r["stats"][mode][q] for r in runs["a"]]
            b = [r["stats"][mode][q] for r in runs["b"]]
            pair = statistics.median(y / x for x, y in zip(a, b, strict=True))
            print(f"  {mode:8s} {q:4s} {statistics.median(a):9.0f} {statistics.median(b):9.0f} "
                  f"{pair:10.3f} {statistics.median(b) / statistics.median(a):8.3f}")
    for key, what in (("cpu_s", "user+system"), ("cpu_user_s", "user")):
        a_cpu = [cpu_per_relay_conn_us(r, key) for r in runs["a"]]
        b_cpu = [cpu_per_relay_conn_us(r, key) for r in runs["b"]]
        pairs = statistics.median(y / x for x, y in zip(a_cpu, b_cpu, strict=True))
        print(f"  dae-runtime CPU ({what}) per proxied connection: A {statistics.median(a_cpu):.0f} us, "
              f"B {statistics.median(b_cpu):.0f} us, B/A pairs {pairs:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
