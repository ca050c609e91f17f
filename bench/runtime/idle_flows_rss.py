"""Memory of dae-runtime (and danted) with many concurrent idle proxied TCP flows (issue 3:
RSS <= 80 MB with 10k).

    .venv/bin/python -m bench.runtime.idle_flows_rss [--flows 10000] [--step 1000]

dae-runtime runs in the gateway namespace with a rule that proxies TCP to echo:7002 through
danted. A socket-only client in the client namespace (holder.py) opens flows in steps; each
flow sends one byte and counts once the echo comes back (so relay, danted and the echo server
all hold it), then stays idle. After each step and a settle pause the script reads
/proc/PID/status (VmRSS, RssAnon) and the fd count of dae-runtime, the RSS and PSS summed over
danted's processes, and /proc/meminfo's kernel-side figures (machine-wide, so indicative). At
the end everything is closed and dae-runtime's RSS is read once more.

Limits: every process here inherits RLIMIT_NOFILE; its hard limit can only be raised with
CAP_SYS_RESOURCE. Steps stop before dae-runtime would run out of descriptors (it needs a fixed
number per flow, measured at the first step); when that is below --flows the report says so and
extrapolates linearly from the measured steps.
"""
from __future__ import annotations

import argparse
import json
import resource
import select
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.runtime.common import (
    HERE,
    PY,
    fd_count,
    gateway_config,
    machine_note,
    meminfo_kb,
    proc_pss_kb,
    proc_status,
    raise_nofile,
    slab_growth,
    slabinfo,
    start_echo,
    tree_pids,
    tune_lab,
    versions,
)

PROXY_PORT = 7002
MB = 1e6  # the target says MB; figures are printed in MB (10^6 bytes) and MiB where noted


class Holder:
    def __init__(self, lab: Any, host: str, port: int) -> None:
        self.proc = lab.popen("client", [PY, str(HERE / "holder.py"), host, str(port)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, bufsize=1)

    def ask(self, line: str, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            raise TimeoutError(f"holder: no answer to {line!r} within {timeout:g}s")
        out = self.proc.stdout.readline()
        if not out:
            raise RuntimeError(f"holder died: {self.proc.stderr.read() if self.proc.stderr else ''}")
        return json.loads(out)

    def quit(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def snapshot(gw_pid: int, danted_pid: int) -> dict[str, Any]:
    """Memory of dae-runtime and of danted. dae-runtime's figures are summed over its process
    tree (a relay with worker processes counts whole; with one process they are its own): RSS
    summed (the target's measure; shared pages count once per process) and PSS (shared pages
    split), fds summed."""
    gpids = tree_pids(gw_pid)
    st = proc_status(gw_pid)
    g_rss = g_anon = g_pss = g_fds = 0
    for p in gpids:
        try:
            pst = proc_status(p)
            g_rss += pst.get("VmRSS", 0)
            g_anon += pst.get("RssAnon", 0)
            g_pss += proc_pss_kb(p)
            g_fds += fd_count(p)
        except OSError:
            pass
    dpids = tree_pids(danted_pid)
    d_rss = d_pss = 0
    for p in dpids:
        try:
            d_rss += proc_status(p).get("VmRSS", 0)
            d_pss += proc_pss_kb(p)
        except OSError:
            pass
    return {"rss_kb": g_rss, "anon_kb": g_anon, "pss_kb": g_pss, "fds": g_fds, "procs": len(gpids),
            "threads": st.get("Threads", 0), "danted_procs": len(dpids), "danted_rss_kb": d_rss,
            "danted_pss_kb": d_pss, "slab_unreclaim_kb": meminfo_kb("SUnreclaim"),
            "kernel_stack_kb": meminfo_kb("KernelStack")}


def probe(pid: int) -> None:
    """Ask the runtime's memprobe for a dump (SIGRTMIN+3, sent only to the process running the
    runtime: elsewhere it would kill), and give it time to write it."""
    import os
    import signal

    for p in tree_pids(pid):
        try:
            cmd = Path(f"/proc/{p}/cmdline").read_bytes()
        except OSError:
            continue
        argv0 = cmd.split(b"\0")[0].rsplit(b"/", 1)[-1]
        if b"dae_py.runtime.cli" in cmd and argv0.startswith(b"python"):
            os.kill(p, signal.SIGRTMIN + 3)
    time.sleep(5)


def tree_fds(pid: int) -> int:
    total = 0
    for p in tree_pids(pid):
        try:
            total += fd_count(p)
        except OSError:
            pass
    return total


def fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares line y = a + b x."""
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sxx if sxx else 0.0
    return my - b * mx, b


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flows", type=int, default=10_000)
    ap.add_argument("--step", type=int, default=1000)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds to wait before reading memory")
    ap.add_argument("--log-level", default="info")
    ap.add_argument("--lab-prefix", default="benchrt", help="the Lab's name prefix (unique per session)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--probe", type=Path, metavar="PREFIX",
                    help="load bench/runtime/memprobe into the runtime and dump what it holds (modules, "
                         "mallinfo, objects by type) at the baseline and at the peak to PREFIX.N.json")
    ap.add_argument("--trace", type=int, default=0, metavar="FRAMES",
                    help="with --probe: tracemalloc too (PREFIX.N.tracemalloc; it inflates RSS)")
    ap.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                    help="set in the runtime's environment (e.g. MALLOC_ARENA_MAX=2)")
    args = ap.parse_args(argv)
    wrap = ["env", *args.env] if args.env or args.probe else []
    if args.probe:
        wrap += [f"PYTHONPATH={HERE / 'memprobe'}", f"DAE_MEMPROBE={args.probe}",
                 f"DAE_MEMPROBE_TRACE={args.trace}"]

    from dae_py.runtime.lab import Lab, cleanup_stale
    from dae_py.runtime.lab.gateway_proc import GatewayProcess

    nofile = raise_nofile()
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    note = machine_note()
    cleanup_stale(args.lab_prefix)
    rows: list[dict[str, Any]] = []
    stop_reason = ""
    with Lab(args.lab_prefix) as lab, tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        tune_lab(lab)
        t = lab.topo
        danted = lab.start_danted(1080)
        lab.start_http_peer(8080)
        start_echo(lab, [PROXY_PORT])
        gw = GatewayProcess(lab, gateway_config(t, [PROXY_PORT]), Path(tmp), log_level=args.log_level,
                            wrap=wrap)
        holder = None
        with gw:
            assert gw.proc is not None and danted.pid is not None  # both started by now
            pid, danted_pid = gw.proc.pid, danted.pid
            holder = Holder(lab, t.upstream_ip4, PROXY_PORT)
            try:
                # warm-up: some flows opened and closed, so lazy imports and first-use allocations
                # are in the baseline, not in the per-flow figure
                holder.ask("open 50", 60)
                holder.ask("close", 30)
                time.sleep(args.settle)
                base = snapshot(pid, danted_pid)
                if args.probe:
                    probe(pid)
                slab0 = slabinfo()
                rows.append({"flows": 0, **base})
                print(f"baseline (after 50 flows opened and closed): dae-runtime RSS {base['rss_kb'] / 1024:.1f} MiB, "
                      f"{base['fds']} fds; danted {base['danted_procs']} procs, "
                      f"PSS {base['danted_pss_kb'] / 1024:.1f} MiB",
                      flush=True)
                fds_per_flow = None
                up = 0
                while up < args.flows:
                    n = min(args.step, args.flows - up)
                    if fds_per_flow:
                        room = int((nofile - rows[-1]["fds"] - 32) // fds_per_flow)
                        if room <= 0:
                            stop_reason = (f"stopped at {up} flows: dae-runtime holds {fds_per_flow:.1f} fds per "
                                           f"flow and RLIMIT_NOFILE is {nofile} (hard {hard}; raising it needs "
                                           f"CAP_SYS_RESOURCE, which this machine does not grant)")
                            break
                        n = min(n, room)
                    ans = holder.ask(f"open {n}", 300)
                    up = ans["up"]
                    time.sleep(args.settle)
                    snap = snapshot(pid, danted_pid)
                    row = {"flows": up, "failed": dict(ans["failed"]), "open_s": ans["seconds"], **snap}
                    rows.append(row)
                    if fds_per_flow is None and up:
                        fds_per_flow = (snap["fds"] - base["fds"]) / up
                    print(f"{up:6d} flows ({ans['seconds']:.1f} s to open, failed {ans['failed'] or 0}): "
                          f"dae-runtime RSS {snap['rss_kb'] / 1024:.1f} MiB (anon {snap['anon_kb'] / 1024:.1f}, "
                          f"PSS {snap['pss_kb'] / 1024:.1f}, {snap['procs']} process(es)), "
                          f"{snap['fds']} fds; danted {snap['danted_procs']} procs, RSS sum "
                          f"{snap['danted_rss_kb'] / 1024:.0f} MiB, PSS {snap['danted_pss_kb'] / 1024:.0f} MiB; "
                          f"SUnreclaim {(snap['slab_unreclaim_kb'] - base['slab_unreclaim_kb']) / 1024:+.0f} MiB",
                          flush=True)
                    if ans["failed"]:
                        stop_reason = f"stopped at {up} flows: the client saw failures {ans['failed']}"
                        break
                slab1 = slabinfo()
                if args.probe:
                    probe(pid)
                closed = holder.ask("close", 60)
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline and tree_fds(pid) > base["fds"] + 8:
                    time.sleep(0.5)
                time.sleep(args.settle)
                after = snapshot(pid, danted_pid)
                print(f"closed {closed['closed']}: dae-runtime RSS {after['rss_kb'] / 1024:.1f} MiB, "
                      f"{after['fds']} fds",
                      flush=True)
            finally:
                holder.quit()
    peak = rows[-1]
    a, b = fit([(r["flows"], r["rss_kb"]) for r in rows])
    da, db = fit([(r["flows"], r["danted_pss_kb"]) for r in rows])
    at_target = a + b * args.flows
    measured = peak["flows"] >= args.flows
    print(f"\n{note}; RLIMIT_NOFILE {nofile} (hard {hard})")
    print(f"dae-runtime VmRSS: {base['rss_kb'] / 1024:.1f} MiB idle -> {peak['rss_kb'] / 1024:.1f} MiB with "
          f"{peak['flows']} idle proxied flows -> {after['rss_kb'] / 1024:.1f} MiB after closing them")
    fds_slope = (peak['fds'] - base['fds']) / max(1, peak['flows'])
    print(f"  slope {b * 1024 / 1024:.2f} kB per flow ({fds_slope:.1f} fds per flow)")
    if stop_reason:
        print(f"  {stop_reason}")
    verdict = "met" if at_target * 1024 <= 80 * MB else "MISSED"
    print(f"  at {args.flows} flows: {'measured' if measured else 'extrapolated (linear fit)'} "
          f"{(peak['rss_kb'] if measured else at_target) * 1024 / MB:.1f} MB (target <= 80 MB: {verdict})")
    print(f"danted: {peak['danted_procs']} processes, PSS {base['danted_pss_kb'] / 1024:.1f} -> "
          f"{peak['danted_pss_kb'] / 1024:.1f} MiB ({db:.1f} kB per flow; RSS summed over processes "
          f"{peak['danted_rss_kb'] / 1024:.0f} MiB)")
    growth = slab_growth(slab0, slab1, 10)
    if growth and peak["flows"]:
        print("kernel slab growth with them, machine-wide (all four processes' sockets, the relay's pipes), "
              "bytes per flow (proc_inode_cache and dentry: our own /proc/PID/fd listings): "
              + ", ".join(f"{k} {v / peak['flows']:.0f}" for k, v in growth))
    if args.json:
        args.json.write_text(json.dumps({"note": note, "versions": versions(), "nofile": [nofile, hard],
                                         "slab_growth_bytes": growth,
                                         "rows": rows, "after": after, "stop_reason": stop_reason,
                                         "fit_kb": [a, b], "at_target_mb": at_target * 1024 / MB,
                                         "danted_fit_kb": [da, db]}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
