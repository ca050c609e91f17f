"""New TCP connections at a fixed rate through the gateway: time to first byte and CPU per
connection of our relay against redsocks and v2ray 4.34 over the same danted (issues 3, 15).

    .venv/bin/python -m bench.runtime.connect_latency [--rate 1000] [--count 1000] [--rounds 6]
    .venv/bin/python -m bench.runtime.connect_latency --sweep 250,500,1000,1500,2000 --sweep-seconds 2 --rounds 2

A TCP echo server in upstream on 7001 (routed direct: the rules miss it, fallback direct) and
7002 (proxied: a rule sends it to the group whose node is danted; redsocks and v2ray steer it
with their nft tables). A generator in the client namespace (loadgen.py, open loop, one epoll
loop) opens `rate` connections per second; each sends 16 bytes and times the first byte of the
echo from the connect() call. Five modes:

  direct    client -> gateway (dae-runtime, program: direct, kernel forwarding) -> echo:7001
  relay     client -> program: proxy -> tproxy -> our relay -> danted -> echo:7002
  socks     client speaks SOCKS5 itself to danted (nothing in the gateway) -> echo:7001: the
            SOCKS5-direct baseline every proxy's share is measured over
  redsocks  client -> nft redirect -> redsocks (Debian) -> danted -> echo:7002
  v2ray     client -> nft tproxy + fwmark route -> v2ray 4.34 dokodemo-door -> socks -> danted

Only one of dae-runtime / redsocks / v2ray steers packets at a time (paths.PathSwitch: its tc
program, redsocks' nat table and v2ray's tproxy table would otherwise tax each other's
packets). A round runs one block of `count` connections per mode, grouped by gateway state
(direct+relay with dae-runtime, socks with nothing, redsocks, v2ray), the group order rotating
every round; after each state switch a warm-up block of each mode in it is run and not recorded.
Every block is its own loadgen run, so the CPU (user and system, from /proc, children included)
of the proxying process and of danted is read around exactly that block's connections.

A proxy's share = its percentile - socks' percentile, per percentile; added = relay - direct.
The issue 15 targets are printed with the pooled figure and, where the rounds allow it, the
sign-test interval of the per-round figure (intervals.py). --sweep runs the rounds at each
rate of a list and reports the highest rate each path sustains (p99 < --p99-limit-ms, no
errors, at least 97 % of the offered rate completed); a mode that misses a rate is not run at
the higher ones.
"""
from __future__ import annotations

import argparse
import json
import re
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from bench.runtime.common import (
    HERE,
    PY,
    gateway_config,
    machine_note,
    median,
    pct,
    proc_status,
    raise_nofile,
    start_echo,
    start_pyspy,
    start_redsocks,
    start_strace,
    start_v2ray,
    strace_counts,
    top_frames,
    tree_cpu_split,
    tune_lab,
    versions,
)
from bench.runtime.intervals import median_interval, verdict_at_most
from bench.runtime.paths import PathSwitch

DIRECT_PORT = 7001
PROXY_PORT = 7002
MODES = ("direct", "relay", "socks", "redsocks", "v2ray")
STATE_OF = {"direct": "dae", "relay": "dae", "socks": "none", "redsocks": "redsocks", "v2ray": "v2ray"}
PROXIES = ("relay", "redsocks", "v2ray")  # the modes with a proxy process in the gateway
QS = ("p50", "p90", "p99")


def block_spec(topo: Any, mode: str) -> dict[str, Any]:
    up = topo.upstream_ip4
    if mode == "socks":
        return {"host": up, "port": DIRECT_PORT, "socks": [up, 1080]}
    return {"host": up, "port": DIRECT_PORT if mode == "direct" else PROXY_PORT}


def schedule(modes: Sequence[str], rounds: int) -> Iterator[tuple[int, str, list[str]]]:
    """(round, gateway state, modes of that state in order): the state groups rotate every
    round, and so do the modes within a group, so drift of the machine's load falls on all."""
    states = list(dict.fromkeys(STATE_OF[m] for m in modes))
    for r in range(rounds):
        k = r % len(states)
        for state in states[k:] + states[:k]:
            group = [m for m in modes if STATE_OF[m] == state]
            if r % 2:
                group.reverse()
            yield r, state, group


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"n": len(values), "p50": pct(values, 50), "p90": pct(values, 90), "p99": pct(values, 99),
            "max": max(values) if values else float("nan")}


class Runner:
    """Runs one loadgen block at a time in the client namespace and reads CPU around it."""

    def __init__(self, lab: Any, switch: PathSwitch, danted_pid: int, timeout: float) -> None:
        self.lab = lab
        self.switch = switch
        self.danted_pid = danted_pid
        self.timeout = timeout
        self.attempted: dict[str, int] = {m: 0 for m in MODES}  # every connection opened, warm-ups included

    def block(self, mode: str, count: int, rate: float) -> dict[str, Any]:
        plan = {"rate": rate, "timeout": self.timeout, "payload": 16,
                "blocks": [{"mode": mode, "count": count, **block_spec(self.lab.topo, mode)}]}
        ppid = self.switch.pid(STATE_OF[mode]) if mode != "socks" else None
        cpu0 = tree_cpu_split(ppid) if ppid else (0.0, 0.0)
        dcpu0 = tree_cpu_split(self.danted_pid)
        r = self.lab.run("client", [PY, str(HERE / "loadgen.py")], input=json.dumps(plan),
                         timeout=count / rate + 2 * self.timeout + 60)
        cpu1 = tree_cpu_split(ppid) if ppid else (0.0, 0.0)
        dcpu1 = tree_cpu_split(self.danted_pid)
        if r.returncode:
            raise RuntimeError(f"loadgen failed ({mode}): {r.stderr[-2000:]}")
        self.attempted[mode] += count
        res = json.loads(r.stdout)
        return {"mode": mode, "rate": rate, "count": count,
                "ttfb_us": res["ttfb_us"].get(mode, []), "errors": res["errors"].get(mode, {}),
                "block_s": res["block_s"].get(mode, [float("nan")])[0],
                "late_p99_us": res["late_p99_us"].get(mode, 0.0),
                "proxy_cpu": [cpu1[0] - cpu0[0], cpu1[1] - cpu0[1]] if ppid else None,
                "danted_cpu": [dcpu1[0] - dcpu0[0], dcpu1[1] - dcpu0[1]]}


def pooled(blocks: Sequence[dict[str, Any]]) -> dict[str, float]:
    return summary([v for b in blocks for v in b["ttfb_us"]])


def cpu_per_conn_us(blocks: Sequence[dict[str, Any]], key: str) -> dict[str, float] | None:
    """CPU per connection of the blocks' `key` process ("proxy_cpu" / "danted_cpu"), us."""
    got = [b for b in blocks if b[key] is not None]
    n = sum(b["count"] for b in got)
    if not n:
        return None
    user = sum(b[key][0] for b in got) / n * 1e6
    system = sum(b[key][1] for b in got) / n * 1e6
    return {"user": user, "system": system, "total": user + system}


def completed_rate(blocks: Sequence[dict[str, Any]]) -> float:
    secs = sum(b["block_s"] for b in blocks)
    return sum(len(b["ttfb_us"]) for b in blocks) / secs if secs else float("nan")


def error_count(blocks: Sequence[dict[str, Any]]) -> int:
    return sum(sum(b["errors"].values()) for b in blocks)


def keeps_up(blocks: Sequence[dict[str, Any]], rate: float) -> bool:
    """Every connection completed, at >= 97 % of the offered rate (no queue building up)."""
    return bool(blocks) and error_count(blocks) == 0 and completed_rate(blocks) >= 0.97 * rate


def sustained(blocks: Sequence[dict[str, Any]], rate: float, p99_limit_us: float) -> bool:
    return keeps_up(blocks, rate) and pooled(blocks)["p99"] < p99_limit_us


def highest(rates: Sequence[float], ok: Any) -> float | None:
    """The highest swept rate up to which every rate passed `ok(rate)`."""
    top = None
    for r in rates:
        if not ok(r):
            break
        top = r
    return top


def per_round(blocks: Sequence[dict[str, Any]], mode: str) -> dict[int, dict[str, Any]]:
    return {b["round"]: b for b in blocks if b["mode"] == mode}


def ratio(a: float, b: float) -> float:
    """a / b, nan when b is 0 (a block too short for one CPU tick of the peer)."""
    return a / b if b else float("nan")


def fmt_iv(values: Sequence[float], bound: float, unit: str = "") -> str:
    values = [v for v in values if v == v]  # rounds without a figure (nan) drop out
    iv = median_interval(values)
    shown = ", ".join(f"{v:.3g}" for v in values)
    if iv is None:
        return f"per-round ({shown}){unit}: too few rounds for an interval -> unsettled"
    return (f"per-round median {median(values):.3g}{unit}, interval {iv} -> "
            f"{verdict_at_most(iv, bound)}")


def report_targets(blocks: Sequence[dict[str, Any]], modes: Sequence[str]) -> list[dict[str, Any]]:
    """The issue 15 targets at one rate: pooled figure, ratio, verdict, and the per-round
    interval. Returns the rows (also printed)."""
    rows: list[dict[str, Any]] = []
    by = {m: [b for b in blocks if b["mode"] == m] for m in modes}
    st = {m: pooled(by[m]) for m in modes}
    rounds = {m: per_round(blocks, m) for m in modes}

    def share(m: str, q: str, blk: dict[str, Any] | None = None, base: dict[str, Any] | None = None) -> float:
        if blk is not None and base is not None:
            return pct(blk["ttfb_us"], int(q[1:])) - pct(base["ttfb_us"], int(q[1:]))
        return st[m][q] - st["socks"][q]

    def both(*ms: str) -> list[int]:
        return sorted(set.intersection(*(set(rounds[m]) for m in ms)))

    def row(target: str, figure: str, ratio: float, ok: bool, per: str) -> None:
        rows.append({"target": target, "figure": figure, "ratio": ratio, "pooled": "met" if ok else "MISSED",
                     "rounds": per})
        print(f"  {target}\n      {figure}; ratio {ratio:.2f}; pooled: {'met' if ok else 'MISSED'}; {per}")

    print("  issue 15 targets (pooled over the rounds; the interval is the sign-test one of the per-round figure):")
    if {"relay", "socks", "v2ray"} <= set(modes):
        a, b = share("relay", "p50"), share("v2ray", "p50")
        per = [share("", "p50", rounds["relay"][r], rounds["socks"][r])
               - share("", "p50", rounds["v2ray"][r], rounds["socks"][r]) for r in both("relay", "v2ray", "socks")]
        row("relay share p50 <= v2ray share p50", f"relay {a:.0f} us, v2ray {b:.0f} us", ratio(a, b), a <= b,
            "relay - v2ray " + fmt_iv(per, 0, " us"))
    if {"relay", "socks", "redsocks"} <= set(modes):
        a, b = share("relay", "p50"), share("redsocks", "p50")
        per = [share("", "p50", rounds["relay"][r], rounds["socks"][r])
               - 2 * share("", "p50", rounds["redsocks"][r], rounds["socks"][r])
               for r in both("relay", "redsocks", "socks")]
        row("relay share p50 <= 2x redsocks share p50", f"relay {a:.0f} us, redsocks {b:.0f} us", ratio(a, b),
            a <= 2 * b,
            "relay - 2 x redsocks " + fmt_iv(per, 0, " us"))
    if {"relay", "socks"} <= set(modes):
        a = share("relay", "p99")
        per = [share("", "p99", rounds["relay"][r], rounds["socks"][r]) for r in both("relay", "socks")]
        row("relay p99 <= socks p99 + 1 ms", f"relay p99 {st['relay']['p99']:.0f} us, socks p99 "
            f"{st['socks']['p99']:.0f} us: +{a:.0f} us", a / 1000, a <= 1000,
            "relay - socks p99 " + fmt_iv(per, 1000, " us"))

    def cpu_round(m: str, r: int, key: str) -> float:
        b = rounds[m][r]
        cpu = b["proxy_cpu"]
        return (cpu[0] if key == "user" else cpu[0] + cpu[1]) / b["count"] * 1e6

    cpu = {m: cpu_per_conn_us(by[m], "proxy_cpu") for m in PROXIES if m in modes}
    relay_cpu, v2ray_cpu, redsocks_cpu = cpu.get("relay"), cpu.get("v2ray"), cpu.get("redsocks")
    if relay_cpu and v2ray_cpu:
        a, b = relay_cpu["total"], v2ray_cpu["total"]
        per = [ratio(cpu_round("relay", r, "total"), cpu_round("v2ray", r, "total")) for r in both("relay", "v2ray")]
        row("relay CPU (user+system) per proxied connection <= v2ray's", f"relay {a:.0f} us, v2ray {b:.0f} us",
            ratio(a, b), a <= b, "relay/v2ray " + fmt_iv(per, 1))
    if relay_cpu and redsocks_cpu:
        a, b = relay_cpu["user"], redsocks_cpu["user"]
        per = [ratio(cpu_round("relay", r, "user"), cpu_round("redsocks", r, "user"))
               for r in both("relay", "redsocks")]
        row("relay user CPU per proxied connection <= 2x redsocks'", f"relay {a:.0f} us, redsocks {b:.0f} us",
            ratio(a, b), a <= 2 * b, "relay/redsocks " + fmt_iv(per, 2))
    return rows


def idle_cpu(switch: PathSwitch, modes: Sequence[str], seconds: float) -> dict[str, float]:
    """CPU seconds per second each proxy spends with no connections (health checks, timers),
    read over the same `seconds` with dae-runtime running: what a per-connection figure at a
    low rate carries besides the connections (idle / rate per connection)."""
    if "relay" in modes:
        switch.ensure("dae")
        time.sleep(1.0)  # past the start-up work
    pids = {m: switch.pid(STATE_OF[m]) for m in modes}
    before = {m: sum(tree_cpu_split(pid)) for m, pid in pids.items() if pid}
    time.sleep(seconds)
    return {m: (sum(tree_cpu_split(pid)) - before[m]) / seconds for m, pid in pids.items() if pid and m in before}


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


def print_rate(blocks: Sequence[dict[str, Any]], modes: Sequence[str], rate: float) -> dict[str, Any]:
    """The per-mode table at one rate; returns its figures for the JSON."""
    out: dict[str, Any] = {"stats": {}, "cpu_per_conn_us": {}, "danted_cpu_per_conn_us": {}}
    print(f"  at {rate:g} new connections/s; time to first echoed byte, us; CPU per connection, us (user+system)")
    print(f"  {'mode':9s} {'n':>6s} {'p50':>8s} {'p90':>8s} {'p99':>8s} {'max':>8s} {'conn/s':>7s} "
          f"{'proxy cpu':>16s} {'danted cpu':>16s}  errors")
    for m in modes:
        bl = [b for b in blocks if b["mode"] == m]
        if not bl:
            continue
        s = pooled(bl)
        pc, dc = cpu_per_conn_us(bl, "proxy_cpu"), cpu_per_conn_us(bl, "danted_cpu")
        out["stats"][m] = s
        out["cpu_per_conn_us"][m] = pc
        out["danted_cpu_per_conn_us"][m] = dc
        errs: dict[str, int] = {}
        for b in bl:
            for k, v in b["errors"].items():
                errs[k] = errs.get(k, 0) + v
        pcs = f"{pc['user']:.0f}+{pc['system']:.0f}={pc['total']:.0f}" if pc else "-"
        dcs = f"{dc['user']:.0f}+{dc['system']:.0f}={dc['total']:.0f}" if dc and m != "direct" else "-"
        print(f"  {m:9s} {s['n']:6d} {s['p50']:8.0f} {s['p90']:8.0f} {s['p99']:8.0f} {s['max']:8.0f} "
              f"{completed_rate(bl):7.0f} {pcs:>16s} {dcs:>16s}  {errs or '-'}  "
              f"(start lateness p99 {max(b['late_p99_us'] for b in bl):.0f} us)")
    st = out["stats"]
    if "socks" in st:
        shares = {m: {q: st[m][q] - st["socks"][q] for q in QS} for m in PROXIES if m in st}
        out["shares"] = shares
        print("  share over SOCKS5-direct (mode - socks), p50 / p90 / p99 us: " + "; ".join(
            f"{m} {v['p50']:.0f} / {v['p90']:.0f} / {v['p99']:.0f}" for m, v in shares.items()))
    if "relay" in st and "direct" in st:
        out["added"] = {q: st["relay"][q] - st["direct"][q] for q in QS}
        print(f"  added by the proxied path (relay - direct): p50 {out['added']['p50']:.0f} us, "
              f"p99 {out['added']['p99']:.0f} us")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rate", type=float, default=1000.0, help="new connections per second")
    ap.add_argument("--count", type=int, default=1000, help="connections per block")
    ap.add_argument("--rounds", type=int, default=6, help=">= 6 for a 95%% interval of the per-round figures")
    ap.add_argument("--warmup", type=int, default=200, help="unrecorded connections per mode after each state switch")
    ap.add_argument("--sweep", help="comma-separated rates: find the highest rate each mode sustains")
    ap.add_argument("--sweep-seconds", type=float, default=2.0, help="block length at each sweep rate")
    ap.add_argument("--p99-limit-ms", type=float, default=5.0, help="a rate is sustained with p99 below this")
    ap.add_argument("--idle-seconds", type=float, default=3.0,
                    help="at the end, read each proxy's CPU with no connections over this long (0: skip)")
    ap.add_argument("--timeout", type=float, default=3.0, help="per connection, s (loadgen)")
    ap.add_argument("--log-level", default="info", choices=["info", "debug"],
                    help="dae-runtime --log-level (info logs a line per flow; readiness is read from the info log)")
    ap.add_argument("--relay-mode", choices=("sockmap", "splice", "copy"),
                    help="the gateway's global.relay_mode (default: the runtime's, splice)")
    ap.add_argument("--py-spy", help="path of a py-spy binary: profile dae-runtime (modes direct,relay only)")
    ap.add_argument("--strace", action="store_true",
                    help="count dae-runtime's syscalls per proxied connection (modes direct,relay only; "
                         "slows it: timings are then void)")
    ap.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    ap.add_argument("--lab-prefix", default="benchrt", help="the Lab's name prefix (unique per session)")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from dae_py.runtime.lab import Lab, cleanup_stale
    from dae_py.runtime.lab.gateway_proc import GatewayProcess

    modes = tuple(m for m in MODES if m in args.modes.split(","))
    unknown = set(args.modes.split(",")) - set(MODES) - {""}
    if unknown or not modes:
        ap.error(f"--modes: unknown {sorted(unknown)}; choose from {', '.join(MODES)}")
    if (args.strace or args.py_spy) and any(STATE_OF[m] != "dae" for m in modes):
        ap.error("--strace/--py-spy follow one dae-runtime process: use --modes direct,relay (no restarts)")
    rates = [float(x) for x in args.sweep.split(",")] if args.sweep else [args.rate]
    raise_nofile()
    note = machine_note()
    cleanup_stale(args.lab_prefix)
    blocks: list[dict[str, Any]] = []
    idle: dict[str, float] = {}
    profile: Sequence[list[tuple[float, str]]] = []
    syscalls: dict[str, int] = {}
    with Lab(args.lab_prefix) as lab, tempfile.TemporaryDirectory(prefix="bench-conn-") as tmp:
        tune_lab(lab)
        t = lab.topo
        danted = lab.start_danted(1080)
        lab.start_http_peer(8080)
        start_echo(lab, [DIRECT_PORT, PROXY_PORT])
        peers = {}
        if "redsocks" in modes:
            peers["redsocks"] = start_redsocks(lab)
        if "v2ray" in modes:
            peers["v2ray"] = start_v2ray(lab)
        gw = GatewayProcess(lab, gateway_config(t, [PROXY_PORT], args.relay_mode), Path(tmp),
                             log_level=args.log_level)
        switch = PathSwitch(lab, gw, PROXY_PORT, peers)
        assert danted.pid is not None
        runner = Runner(lab, switch, danted.pid, args.timeout)
        live = list(modes)
        rss: list[int] = []
        spy = tracer = None
        wall0 = time.monotonic()
        try:
            for rate in rates:
                count = args.count if not args.sweep else max(50, int(rate * args.sweep_seconds))
                for rnd, state, group in schedule([m for m in modes if m in live], args.rounds):
                    if switch.ensure(state):
                        if state == "dae" and gw.proc is not None:
                            rss.append(proc_status(gw.proc.pid)["VmRSS"])
                            if args.py_spy and spy is None:
                                total_s = len(rates) * args.rounds * len(modes) * count / min(rates) + 60
                                spy = start_pyspy(args.py_spy, gw.proc.pid, Path(tmp) / "spy.txt", total_s)
                            if args.strace and tracer is None:
                                tracer = start_strace(gw.proc.pid, Path(tmp) / "strace.txt")
                                time.sleep(1.0)
                        for m in group:
                            if args.warmup:
                                runner.block(m, args.warmup, min(rate, 1000.0))
                    for m in group:
                        b = runner.block(m, count, rate)
                        b["round"] = rnd
                        blocks.append(b)
                        print(f"rate {rate:g} round {rnd} {m:9s} p50 {pct(b['ttfb_us'], 50):8.0f} "
                              f"p99 {pct(b['ttfb_us'], 99):8.0f} us, errors {sum(b['errors'].values())}", flush=True)
                if args.sweep:  # a mode that no longer keeps up only queues (and times out) at higher rates
                    here = [b for b in blocks if b["rate"] == rate]
                    live = [m for m in live if keeps_up([b for b in here if b["mode"] == m], rate)]
                    if not live:
                        break
            if gw.proc is not None and gw.proc.poll() is None:
                rss.append(proc_status(gw.proc.pid)["VmRSS"])
            if args.idle_seconds and tracer is None and spy is None:
                idle = idle_cpu(switch, [m for m in PROXIES if m in modes], args.idle_seconds)
            if tracer is not None:
                tracer.send_signal(2)
                tracer.wait(timeout=30)
                syscalls = strace_counts(Path(tmp) / "strace.txt")
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its profile on SIGINT, not on SIGTERM
                spy.wait(timeout=60)
                if (Path(tmp) / "spy.txt").exists():
                    profile = top_frames(Path(tmp) / "spy.txt", 15)
        finally:
            switch.close()
        wall = time.monotonic() - wall0
        log_text = gw.log_text()
        taken, attempted = dict(switch.taken), dict(runner.attempted)
        gw_starts = list(switch.gw_starts)
    relayed = len(re.findall(rf"-> {re.escape(t.upstream_ip4)}:{PROXY_PORT}\b.* via proxy", log_text))
    direct_in_relay = len(re.findall(rf"-> {re.escape(t.upstream_ip4)}:{DIRECT_PORT}\b.* via ", log_text))

    print(f"\n{note}")
    print(f"modes {','.join(modes)}; {args.rounds} rounds per rate, blocks grouped by gateway state, rotating; "
          f"+{args.warmup} warm-up connections per mode after each switch; {wall:.0f} s wall; "
          f"dae-runtime --log-level {args.log_level}, started {len(gw_starts)} times "
          f"(median {median(gw_starts):.2f} s)")
    per_rate: dict[str, Any] = {}
    for rate in rates:
        here = [b for b in blocks if b["rate"] == rate]
        if here:
            per_rate[f"{rate:g}"] = print_rate(here, modes, rate)
    checks = [f"relay: {relayed} per-flow log lines for {PROXY_PORT} (opened {attempted['relay']}), "
              f"{direct_in_relay} for the direct port (expected 0)"]
    checks += [f"{p}: its nft rule took {taken[p]} connections (opened {attempted[p]})"
               + ("" if taken[p] >= attempted[p] else "  CHECK FAILED: some went around it")
               for p in ("redsocks", "v2ray") if p in modes]
    print("  checks: " + "; ".join(checks))
    if idle:
        print("  idle CPU (no connections), ms per s: " + ", ".join(f"{m} {v * 1e3:.1f}" for m, v in idle.items())
              + "; per connection at each rate that is idle / rate: " + "; ".join(
                  f"{r:g}/s: " + ", ".join(f"{m} {v / r * 1e6:.0f} us" for m, v in idle.items()) for r in rates))
    if rss:
        print(f"  dae-runtime RSS at each start and at the end: {', '.join(f'{k / 1024:.1f}' for k in rss)} MiB")
    targets: list[dict[str, Any]] = []
    main_blocks = [b for b in blocks if b["rate"] == args.rate]
    main_modes = [m for m in modes if any(b["mode"] == m for b in main_blocks)]
    if "relay" in main_modes:  # (a sweep may have dropped it before --rate)
        targets = report_targets(main_blocks, main_modes)
    top: dict[str, dict[str, float | None]] = {}
    if args.sweep:
        limit = args.p99_limit_ms * 1000
        print(f"  sweep, p50 / p99 us per rate (* = sustained: p99 < {args.p99_limit_ms:g} ms, no errors, "
              f">= 97% of the rate completed; q = keeps up but p99 over; x = does not keep up):")
        print("  " + f"{'rate':>6s} " + " ".join(f"{m:>22s}" for m in modes))
        for r in rates:
            cells = []
            for m in modes:
                bl = [b for b in blocks if b["rate"] == r and b["mode"] == m]
                if not bl:
                    cells.append(f"{'-':>22s}")
                    continue
                s_ = pooled(bl)
                mark = "*" if sustained(bl, r, limit) else "q" if keeps_up(bl, r) else "x"
                cells.append(f"{s_['p50']:>10.0f} / {s_['p99']:>8.0f} {mark}")
            print(f"  {r:6g} " + " ".join(cells))

        def at(r: float, m: str) -> list[dict[str, Any]]:
            return [b for b in blocks if b["rate"] == r and b["mode"] == m]

        for m in modes:
            top[m] = {"p99_under_limit": highest(rates, lambda r, m=m: sustained(at(r, m), r, limit)),
                      "keeps_up": highest(rates, lambda r, m=m: keeps_up(at(r, m), r))}

        def show(v: float | None) -> str:
            return f"{v:g}/s" if v else "none"

        print(f"  highest rate sustained with p99 < {args.p99_limit_ms:g} ms: " + ", ".join(
            f"{m} {show(v['p99_under_limit'])}" for m, v in top.items()))
        print("  highest rate kept up with (whatever the p99): " + ", ".join(
            f"{m} {show(v['keeps_up'])}" for m, v in top.items())
            + f" (swept {', '.join(f'{r:g}' for r in rates)}; the loadgen is one Python epoll loop)")
    print_profile(profile)
    n_relay = sum(b["count"] for b in blocks if b["mode"] == "relay")
    if syscalls and n_relay:
        n_all = attempted["relay"]
        total_calls = sum(syscalls.values())
        print(f"  strace -c: {total_calls / n_all:.1f} syscalls per proxied connection: " + ", ".join(
            f"{k} {v / n_all:.1f}" for k, v in sorted(syscalls.items(), key=lambda kv: -kv[1])[:14]))
    if args.json:
        main_fig = per_rate.get(f"{args.rate:g}", {})
        relay_cpu = main_fig.get("cpu_per_conn_us", {}).get("relay")
        args.json.write_text(json.dumps({
            "note": note, "versions": versions(), "args": vars(args) | {"json": str(args.json)},
            "stats": main_fig.get("stats", {}), "shares": main_fig.get("shares"), "added": main_fig.get("added"),
            "cpu_per_conn_us": main_fig.get("cpu_per_conn_us"),
            "danted_cpu_per_conn_us": main_fig.get("danted_cpu_per_conn_us"),
            # compare_trees' older keys: dae-runtime CPU over the recorded relay blocks
            "cpu_s": relay_cpu["total"] * n_relay / 1e6 if relay_cpu else None,
            "cpu_user_s": relay_cpu["user"] * n_relay / 1e6 if relay_cpu else None,
            "relay_conns": n_relay, "per_rate": per_rate, "targets": targets, "highest_sustained": top,
            "checks": {"relayed_log_lines": relayed, "taken": taken, "attempted": attempted},
            "gw_starts_s": gw_starts, "idle_cpu_s_per_s": idle, "rss_kb": rss, "wall_s": wall,
            "profile": profile, "syscalls": syscalls,
            "blocks": blocks}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
