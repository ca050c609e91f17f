"""New TCP connections at a fixed rate through the gateway: time to first byte, direct vs
proxied, and the latency the proxied path adds (issue 3: p50 <= 150 us, p99 <= 1 ms at 1k/s).

    .venv/bin/python -m bench.runtime.connect_latency [--rate 1000] [--count 1000] [--rounds 5]

One dae-runtime in the gateway namespace (program attached), a TCP echo server in upstream on
7001 (routed direct: the rules miss it, fallback direct) and 7002 (a rule sends it to the
group whose node is danted). A generator in the client namespace (loadgen.py, open loop, one
epoll loop) opens `rate` connections per second; each sends 16 bytes and times the first byte
of the echo from the connect() call. Three modes, interleaved in blocks of `count` connections
(the block order rotates every round), after a warm-up block of each that is not recorded:

  direct  client -> gateway (program: direct, kernel forwarding) -> echo:7001
  relay   client -> gateway (program: proxy) -> tproxy -> relay -> danted -> echo:7002
  socks   client speaks SOCKS5 itself to danted (routed direct) -> echo:7001: danted's own
          share of the proxied latency, no relay involved

added latency (the target) = relay - direct, per percentile; the relay's own share is about
relay - socks (the socks client pays its two SOCKS round trips over one more hop than the
relay does, so this slightly flatters the relay).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.runtime.common import (
    HERE,
    PY,
    gateway_config,
    machine_note,
    pct,
    proc_cpu,
    proc_cpu_split,
    proc_status,
    raise_nofile,
    start_echo,
    start_pyspy,
    start_strace,
    strace_counts,
    top_frames,
    tree_cpu_reaped,
    tune_lab,
    versions,
)

DIRECT_PORT = 7001
PROXY_PORT = 7002
MODES = ("direct", "relay", "socks")


def plan(topo: Any, rate: float, count: int, rounds: int, warmup: int,
         modes: tuple[str, ...] = MODES) -> dict[str, Any]:
    up = topo.upstream_ip4
    spec = {"direct": {"host": up, "port": DIRECT_PORT},
            "relay": {"host": up, "port": PROXY_PORT},
            "socks": {"host": up, "port": DIRECT_PORT, "socks": [up, 1080]}}
    blocks = [{"mode": m, "count": warmup, "record": False, **spec[m]} for m in modes]
    for r in range(rounds):
        k = r % len(modes)
        order = modes[k:] + modes[:k]
        blocks += [{"mode": m, "count": count, **spec[m]} for m in order]
    return {"rate": rate, "timeout": 3.0, "payload": 16, "blocks": blocks}


def print_profile(profile: Any) -> None:
    if not profile:
        return
    print("  py-spy of dae-runtime (250 Hz; uvloop's C code and waiting in epoll show as Runner.run):")
    print("   self time by line:")
    for share, frame in profile[0]:
        print(f"    {share * 100:5.1f}%  {frame}")
    print("   inclusive time by function:")
    for share, frame in profile[1]:
        print(f"    {share * 100:5.1f}%  {frame}")


def summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99),
            "max": max(values) if values else float("nan")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="new connections per second")
    ap.add_argument("--count", type=int, default=1000, help="connections per block")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--log-level", default="info", choices=["info", "debug"],
                    help="dae-runtime --log-level (info logs a line per flow; readiness is read from the info log)")
    ap.add_argument("--py-spy", help="path of a py-spy binary: profile dae-runtime during the run")
    ap.add_argument("--strace", action="store_true",
                    help="count dae-runtime's syscalls per proxied connection (slows it: timings are then void)")
    ap.add_argument("--modes", default=",".join(MODES), help="subset of direct,relay,socks (diagnosis)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from dae_py.runtime.lab import Lab, cleanup_stale
    from dae_py.runtime.lab.gateway_proc import GatewayProcess

    modes = tuple(m for m in args.modes.split(",") if m)
    raise_nofile()
    note = machine_note()
    cleanup_stale("benchrt")
    total = len(modes) * (args.warmup + args.rounds * args.count)
    budget = total / args.rate + 3 * (args.rounds + 1) * 4 + 60  # bounded: schedule + slack
    with Lab("benchrt") as lab, tempfile.TemporaryDirectory(prefix="bench-conn-") as tmp:
        tune_lab(lab)
        t = lab.topo
        danted = lab.start_danted(1080)
        lab.start_http_peer(8080)
        start_echo(lab, [DIRECT_PORT, PROXY_PORT])
        gw = GatewayProcess(lab, gateway_config(t, [PROXY_PORT]), Path(tmp), log_level=args.log_level)
        with gw:
            assert gw.proc is not None and danted.pid is not None  # both started by now
            pid, danted_pid = gw.proc.pid, danted.pid
            rss0 = proc_status(pid)["VmRSS"]
            cpu0 = proc_cpu(pid)
            dcpu0 = tree_cpu_reaped(danted_pid)
            us0, sy0 = proc_cpu_split(pid)
            spy = (start_pyspy(args.py_spy, pid, Path(tmp) / "spy.txt", total / args.rate + 5)
                   if args.py_spy else None)
            tracer = start_strace(pid, Path(tmp) / "strace.txt") if args.strace else None
            if tracer is not None:
                time.sleep(1.0)
            t0 = time.monotonic()
            r = lab.run("client", [PY, str(HERE / "loadgen.py")],
                        input=json.dumps(plan(t, args.rate, args.count, args.rounds, args.warmup, modes)),
                        timeout=budget)
            wall = time.monotonic() - t0
            cpu = proc_cpu(pid) - cpu0
            dcpu = tree_cpu_reaped(danted_pid) - dcpu0
            us1, sy1 = proc_cpu_split(pid)
            user, system = us1 - us0, sy1 - sy0
            rss1 = proc_status(pid)["VmRSS"]
            syscalls: dict[str, int] = {}
            if tracer is not None:
                tracer.send_signal(2)
                tracer.wait(timeout=30)
                syscalls = strace_counts(Path(tmp) / "strace.txt")
            profile: Sequence[list[tuple[float, str]]] = []  # or top_frames()'s pair
            if spy is not None:
                spy.wait(timeout=60)
                if (Path(tmp) / "spy.txt").exists():
                    profile = top_frames(Path(tmp) / "spy.txt", 15)
        if r.returncode:
            raise RuntimeError(f"loadgen failed: {r.stderr[-2000:]}")
        res = json.loads(r.stdout)
        log_text = gw.log_text()
    relayed = len(re.findall(rf"-> {re.escape(t.upstream_ip4)}:{PROXY_PORT}\b.* via proxy", log_text))
    direct_in_relay = len(re.findall(rf"-> {re.escape(t.upstream_ip4)}:{DIRECT_PORT}\b.* via ", log_text))
    stats = {m: summary(res["ttfb_us"].get(m, [])) for m in MODES}
    n_relay_total = (args.warmup + args.rounds * args.count) if "relay" in modes else 0
    added = relay_share = None
    print(f"{note}")
    print(f"{args.rate:g} new connections/s, {args.rounds} rounds x {args.count} per mode (+{args.warmup} warm-up), "
          f"dae-runtime --log-level {args.log_level}; time to first echoed byte, us")
    print(f"  {'mode':8s} {'n':>6s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s}  {'conn/s':>7s}  errors")
    for m in modes:
        s = stats[m]
        blocks = res.get("block_s", {}).get(m, [])
        done_rate = len(res["ttfb_us"].get(m, [])) / sum(blocks) if blocks else float("nan")
        print(f"  {m:8s} {s['n']:6d} {s['p50']:8.0f} {s['p90']:8.0f} {s['p99']:8.0f} {s['max']:8.0f}  "
              f"{done_rate:7.0f}  {res['errors'].get(m) or '-'}   "
              f"(start lateness p99 {res['late_p99_us'].get(m, 0):.0f} us)")
    if "relay" in modes and "direct" in modes:
        added = {q: stats["relay"][q] - stats["direct"][q] for q in ("p50", "p90", "p99")}
        print(f"  added by the proxied path (relay - direct): p50 {added['p50']:.0f} us "
              f"(target <= 150: {'met' if added['p50'] <= 150 else 'MISSED'}), p99 {added['p99']:.0f} us "
              f"(target <= 1000: {'met' if added['p99'] <= 1000 else 'MISSED'})")
    if "socks" in modes and "direct" in modes:
        print(f"  danted alone (socks - direct): p50 {stats['socks']['p50'] - stats['direct']['p50']:.0f} us, "
              f"p99 {stats['socks']['p99'] - stats['direct']['p99']:.0f} us")
    if "socks" in modes and "relay" in modes:
        relay_share = {q: stats["relay"][q] - stats["socks"][q] for q in ("p50", "p90", "p99")}
        print(f"  the relay's own share (relay - socks): p50 {relay_share['p50']:.0f} us, "
              f"p99 {relay_share['p99']:.0f} us")
    per = (f" = {cpu / n_relay_total * 1e6:.0f} us CPU per proxied connection "
           f"({user / n_relay_total * 1e6:.0f} user + {system / n_relay_total * 1e6:.0f} system, "
           f"the latter including veth receive work run in its syscalls)"
           if n_relay_total else "")
    print(f"  dae-runtime: {cpu:.2f} CPU-s over {wall:.1f} s wall{per}; "
          f"RSS {rss0 / 1024:.1f} -> {rss1 / 1024:.1f} MiB; "
          f"per-flow log lines: {relayed} relayed to {PROXY_PORT} (expected {n_relay_total}), "
          f"{direct_in_relay} for the direct port (expected 0)")
    n_socks_total = sum(args.warmup + args.rounds * args.count for m in ("relay", "socks") if m in modes)
    if n_socks_total:
        which = " and ".join(m for m in ("relay", "socks") if m in modes)
        print(f"  danted (all its processes, reaped children included): {dcpu:.2f} CPU-s = "
              f"{dcpu / n_socks_total * 1e6:.0f} us CPU per SOCKS connection it carried ({which} blocks; "
              f"run --modes relay or --modes socks alone to split them)")
    print_profile(profile)
    if syscalls and n_relay_total:
        total_calls = sum(syscalls.values())
        print(f"  strace -c: {total_calls / n_relay_total:.1f} syscalls per proxied connection: " + ", ".join(
            f"{k} {v / n_relay_total:.1f}" for k, v in sorted(syscalls.items(), key=lambda kv: -kv[1])[:14]))
    if args.json:
        args.json.write_text(json.dumps({
            "note": note, "versions": versions(), "args": vars(args) | {"json": str(args.json)},
            "stats": stats, "added": added, "relay_share": relay_share, "danted_cpu_s": dcpu,
            "errors": res["errors"], "block_s": res.get("block_s"), "cpu_s": cpu, "cpu_user_s": user,
            "cpu_system_s": system, "wall_s": wall, "rss_kb": [rss0, rss1], "profile": profile, "syscalls": syscalls,
            "ttfb_us": res["ttfb_us"]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
