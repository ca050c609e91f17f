"""iperf3 through the gateway, five cases in one run (issue 3, "Benchmarks"):

  (a) no program: plain kernel forwarding (dae-runtime not running)
  (b) dae-runtime running, program attached, the flow classified direct (stays in the kernel)
  (c) dae-runtime running, the flow proxied: tproxy -> our relay -> danted (SOCKS5) -> iperf3
  (d) redsocks (Debian, splice on) in the gateway ns, nft `redirect` -> redsocks -> danted
  (e) v2ray 4.34 (Debian) dokodemo-door tproxy inbound, socks outbound -> danted

    .venv/bin/python -m bench.runtime.throughput [--rounds 10] [--seconds 4] [--ab-pairs 40] [--ab-width 0.03]

All cases use one lab, one danted, iperf3 servers on 5201 (direct cases) and 5202 (proxied
cases). Rounds are interleaved (a b c d e, then e d c b a, and so on) so the machine's background
load hits all cases alike; the report gives medians, the ratios b/a, c/d, c/e, and CPU seconds per GiB moved of the
proxy process and of danted (less noisy than Gbit/s on a shared 2-core VM).

The ratios are given two ways: ratio of the medians, and the median over rounds of the
ratio within a round (both cases run a few seconds apart, so slow changes of the background
load cancel); the latter is the one to trust on a busy machine, and it comes with the
sign-test interval of that median (intervals.py; >= 6 rounds for 95 %) whose position against
the target gives the verdict: met, MISSED, or unsettled while the interval straddles it. The
relay's CPU per GiB against redsocks' is a per-round ratio too (target <= 0.5).

After the rounds, extra alternating (a, b) pairs settle b/a >= 0.97: pairs are added until the
interval of their median is narrower than --ab-width (0.03, the claim's margin) or --ab-pairs
is reached. Only one of dae-runtime / redsocks / v2ray steers packets at a time (paths.py).

Each run is checked: the iperf3 server's log must show the connection coming from the client
(a, b) or from danted's address (c, d, e), and after each dae-runtime stop its kernel counters
must show the direct bytes of (b) in the program's `direct` counter, none relayed.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.runtime.common import (
    machine_note,
    median,
    start_redsocks,
    start_v2ray,
    tree_cpu,
    tree_cpu_split,
    versions,
)
from bench.runtime.intervals import median_interval, settled, verdict_at_least, verdict_at_most
from bench.runtime.paths import PathSwitch

DIRECT_PORT = 5201
PROXY_PORT = 5202
STATE = {"a": "none", "b": "dae", "c": "dae", "d": "redsocks", "e": "v2ray"}  # paths.PathSwitch states
CASES = {
    "a": "no program (kernel forwarding)",
    "b": "program attached, direct",
    "c": "dae relay -> danted",
    "d": "redsocks -> danted",
    "e": "v2ray 4.34 -> danted",
}


class Bench:
    def __init__(self, lab: Any, workdir: Path, seconds: float, relay_mode: str | None = None) -> None:
        from bench.runtime.common import gateway_config
        from dae_py.runtime.lab.gateway_proc import GatewayProcess

        self.lab = lab
        self.t = lab.topo
        self.seconds = seconds
        self.danted = lab.start_danted(1080)
        lab.start_http_peer(8080)  # the group's health check target
        self.iperf = {DIRECT_PORT: lab.start_iperf3(DIRECT_PORT), PROXY_PORT: lab.start_iperf3(PROXY_PORT)}
        self.gw = GatewayProcess(lab, gateway_config(self.t, [PROXY_PORT], relay_mode), workdir)
        self.switch = PathSwitch(lab, self.gw, PROXY_PORT,
                                 {"redsocks": start_redsocks(lab), "v2ray": start_v2ray(lab)})

    def ensure(self, state: str) -> None:
        self.switch.ensure(state)

    def proxy_pid(self, case: str) -> int | None:
        return self.switch.pid(STATE[case]) if case in "cde" else None

    def last_accepted_from(self, port: int) -> str:
        text = self.iperf[port].log_path.read_text(errors="replace")
        found = re.findall(r"Accepted connection from ([0-9a-f.:]+)", text)
        return found[-1] if found else "?"

    def run_case(self, case: str) -> dict[str, Any]:
        self.ensure(STATE[case])
        port = DIRECT_PORT if case in "ab" else PROXY_PORT
        ppid = self.proxy_pid(case)
        cpu0 = tree_cpu_split(ppid) if ppid else (0.0, 0.0)
        dcpu0 = tree_cpu(self.danted.pid)
        r = self.lab.run("client", ["iperf3", "-c", self.t.upstream_ip4, "-p", str(port),
                                    "-t", str(self.seconds), "-J"], timeout=self.seconds + 60)
        cpu1 = tree_cpu_split(ppid) if ppid else (0.0, 0.0)
        dcpu1 = tree_cpu(self.danted.pid)
        try:
            data = json.loads(r.stdout)
        except json.JSONDecodeError:
            raise RuntimeError(f"iperf3 ({case}) failed: {r.stdout[-800:]} {r.stderr[-800:]}") from None
        if "error" in data:
            raise RuntimeError(f"iperf3 ({case}) failed: {data['error']}")
        end = data["end"]
        gbytes = end["sum_received"]["bytes"] / 2**30
        seen = self.last_accepted_from(port)
        want = self.t.client_ip4 if case in "ab" else self.t.upstream_ip4
        if seen.removeprefix("::ffff:") != want:
            raise RuntimeError(f"case {case}: iperf3 saw the connection from {seen}, expected {want}")
        return {"case": case, "gbps": end["sum_received"]["bits_per_second"] / 1e9,
                "gib": gbytes, "seen_from": seen,
                "proxy_cpu_s_per_gib": (sum(cpu1) - sum(cpu0)) / gbytes if ppid else None,
                "proxy_user_s_per_gib": (cpu1[0] - cpu0[0]) / gbytes if ppid else None,
                "danted_cpu_s_per_gib": (dcpu1 - dcpu0) / gbytes if case in "cde" else None,
                "sender_cpu_pct": end.get("cpu_utilization_percent", {}).get("host_total")}


def program_cost_ns(build_dir: Path, topo: Any, runs: int = 7, repeat: int = 200_000) -> dict[str, float]:
    """ns per packet of `lan_ingress` (BPF_PROG_TEST_RUN, our own copy of the object, never
    attached) for an ACK of an established direct flow (the `flows` hit path that every packet
    of (b) after the first takes), and for a SYN of a new flow each run (classification)."""
    import ipaddress
    import statistics

    from dae_py.runtime.bpf import BpfObject, prog_test_run
    from dae_py.runtime.build import Build, load_tables
    from dae_py.runtime.packets import IPPROTO_TCP, FlowSpec, frame

    build = Build.open(build_dir)
    obj = BpfObject(build.object_path)
    try:
        obj.load()
        load_tables(obj, build)
        fd = obj.program_fd("lan_ingress")
        src, dst = ipaddress.ip_address(topo.client_ip4), ipaddress.ip_address(topo.upstream_ip4)
        ack = frame(FlowSpec(IPPROTO_TCP, src, 40000, dst, DIRECT_PORT, tcp_flags=0x10), b"x" * 1400)
        prog_test_run(fd, ack, repeat=1, data_out_size=0)  # creates the flow entry
        hit = [prog_test_run(fd, ack, repeat=repeat, data_out_size=0).duration_ns for _ in range(runs)]
        return {"hit_ns": float(statistics.median(hit))}
    finally:
        obj.close()


def order(round_no: int) -> list[str]:
    """a b c d e, then e d c b a, ...: each ratio's two cases sit next to each other (c/e one
    apart) and a linear drift of the machine's load cancels over a pair of rounds; b and c
    share one dae-runtime start."""
    return list("abcde") if round_no % 2 == 0 else list("edcba")


def ratio_line(name: str, values: list[float], bound: float, at_least: bool, target: str,
               unit: str = "round") -> dict[str, Any]:
    """Print one ratio: its per-round values, their median and sign-test interval, the verdict
    the interval gives against `bound` (>= for at_least, else <=)."""
    iv = median_interval(values)
    verdict = verdict_at_least(iv, bound) if at_least else verdict_at_most(iv, bound)
    per = ", ".join(f"{v:.3f}" for v in values)
    print(f"  {name} = {median(values):.3f} median of {len(values)} per-{unit} ratios ({per}); "
          f"interval {iv if iv else f'- (fewer than 6 {unit}s)'}  (target {target}: {verdict})")
    return {"values": values, "median": median(values), "interval": list(asdict(iv).values()) if iv else None,
            "verdict": verdict, "target": target}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="an even number balances the order; >= 6 for an interval")
    ap.add_argument("--seconds", type=float, default=4.0, help="iperf3 -t per run")
    ap.add_argument("--ab-pairs", type=int, default=40,
                    help="after the rounds, up to this many extra (a, b) pairs of --ab-seconds runs, alternating "
                         "ab/ba: a tighter b/a on a noisy machine (the cap of the adaptive mode)")
    ap.add_argument("--ab-width", type=float, default=0.03,
                    help="adaptive: stop adding pairs once the b/a interval is narrower than this (0: run all "
                         "--ab-pairs); 0.03 is the margin of the b/a >= 0.97 claim")
    ap.add_argument("--ab-seconds", type=float, default=2.0)
    ap.add_argument("--lab-prefix", default="benchrt", help="the Lab's name prefix (unique per session)")
    ap.add_argument("--relay-mode", choices=("sockmap", "splice", "copy"),
                    help="global.relay_mode of the gateway for (c) (default: the runtime's, splice)")
    ap.add_argument("--json", type=Path, help="write all runs here")
    args = ap.parse_args(argv)

    from dae_py.runtime.lab import Lab, cleanup_stale

    note = machine_note()
    cleanup_stale(args.lab_prefix)
    runs: list[dict[str, Any]] = []
    ab_pairs: list[float] = []
    with Lab(args.lab_prefix) as lab, tempfile.TemporaryDirectory(prefix="bench-tput-") as tmp:
        bench = Bench(lab, Path(tmp), args.seconds, args.relay_mode)
        prog = program_cost_ns(bench.gw.build_dir, lab.topo)
        try:
            for rnd in range(args.rounds):
                for case in order(rnd):
                    res = bench.run_case(case)
                    res["round"] = rnd
                    runs.append(res)
                    print(f"round {rnd} ({case}) {CASES[case]:32s} {res['gbps']:6.2f} Gbit/s"
                          + (f"  proxy {res['proxy_cpu_s_per_gib']:.2f} CPU-s/GiB"
                             if res["proxy_cpu_s_per_gib"] is not None else ""), flush=True)
            bench.seconds = args.ab_seconds
            i = 0
            while args.ab_pairs and not settled(ab_pairs, args.ab_width, args.ab_pairs):
                got = {c: bench.run_case(c)["gbps"] for c in ("ab" if i % 2 == 0 else "ba")}
                ab_pairs.append(got["b"] / got["a"])
                iv = median_interval(ab_pairs)
                print(f"pair {i}: a {got['a']:.2f} b {got['b']:.2f} b/a {ab_pairs[-1]:.3f}; "
                      f"interval so far {iv if iv else '-'}", flush=True)
                i += 1
            bench.ensure("none")
        finally:
            bench.switch.close()
        taken = dict(bench.switch.taken)
        kernel_lines, gw_starts = bench.switch.kernel_lines, bench.switch.gw_starts
    med = {c: median([r["gbps"] for r in runs if r["case"] == c]) for c in CASES}
    cpu = {c: median([r["proxy_cpu_s_per_gib"] for r in runs if r["case"] == c
                      and r["proxy_cpu_s_per_gib"] is not None]) for c in "cde"}
    ucpu = {c: median([r["proxy_user_s_per_gib"] for r in runs if r["case"] == c
                       and r["proxy_user_s_per_gib"] is not None]) for c in "cde"}
    dcpu = {c: median([r["danted_cpu_s_per_gib"] for r in runs if r["case"] == c]) for c in "cde"}
    ratios = {"b/a": med["b"] / med["a"], "c/d": med["c"] / med["d"], "c/e": med["c"] / med["e"]}
    by_round: dict[int, dict[str, dict[str, Any]]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["case"]] = r
    paired = {k: [v[k[0]]["gbps"] / v[k[2]]["gbps"] for v in by_round.values()] for k in ratios}
    cpu_cd = [v["c"]["proxy_cpu_s_per_gib"] / v["d"]["proxy_cpu_s_per_gib"] for v in by_round.values()
              if v["d"]["proxy_cpu_s_per_gib"]]  # (a run too short for one CPU tick of redsocks drops out)
    print(f"\n{note}")
    print(f"iperf3 -t {args.seconds:g}, one stream, client -> upstream; {args.rounds} interleaved rounds; "
          f"median Gbit/s (all runs)")
    for c, label in CASES.items():
        vals = ", ".join(f"{r['gbps']:.2f}" for r in runs if r["case"] == c)
        scpu = median([r["sender_cpu_pct"] or 0 for r in runs if r["case"] == c])
        extra = (f"   proxy {cpu[c]:.2f} ({ucpu[c]:.2f} user) / danted {dcpu[c]:.2f} CPU-s per GiB"
                 if c in cpu else "")
        print(f"  ({c}) {label:32s} {med[c]:6.2f}   ({vals}) sender CPU {scpu:.0f}%{extra}")
    print("  ratios (median of per-round ratios, sign-test interval of that median):")
    lines = {"b/a": ratio_line("b/a", paired["b/a"], 0.97, True, ">= 0.97"),
             "c/d": ratio_line("c/d", paired["c/d"], 1.0, True, ">= 1, the interval excluding < 1"),
             "c/e": ratio_line("c/e", paired["c/e"], 1.0, True, ">= 1"),
             "cpu c/d": ratio_line("CPU-s per GiB c/d", cpu_cd, 0.5, False, "<= 0.5")}
    print("  ratios of medians: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items())
          + (f", CPU c/d {cpu['c'] / cpu['d']:.3f}" if cpu["d"] else ""))
    ab = None
    if ab_pairs:
        ab = ratio_line(f"extra a/b pairs ({args.ab_seconds:g} s each, alternating ab/ba, adaptive to width "
                        f"< {args.ab_width:g} or {args.ab_pairs} pairs): b/a", ab_pairs, 0.97, True, ">= 0.97",
                        unit="pair")
        iv = median_interval(ab_pairs)
        print(f"    {len(ab_pairs)} pairs used; interval width {iv.width:.3f}" if iv else
              f"    {len(ab_pairs)} pairs used")
    want = 2 * args.rounds  # iperf3 opens 2 connections per run (control + data)
    print("  checks: " + "; ".join(f"the {p} rule took {taken[p]} connections (iperf3 opened {want})"
                                   + ("" if taken[p] >= want else "  CHECK FAILED") for p in ("redsocks", "v2ray")))
    pkts = [int(m.group(1)) for line in kernel_lines for m in [re.search(r"direct=(\d+)p", line)] if m]
    pps = median(pkts[:args.rounds]) / args.seconds if pkts else 0.0  # the main rounds: one dae start each
    print(f"  the program on (b)'s packets: {prog['hit_ns']:.0f} ns per packet "
          f"(BPF_PROG_TEST_RUN, flow-table hit) x {pps / 1e3:.0f}k packets/s (its own counter; GSO-sized skbs) "
          f"= {prog['hit_ns'] * pps / 1e7:.3f}% of one core")
    print(f"  dae-runtime start (compile excluded): median {median(gw_starts):.2f} s")
    print("  program's per-outbound counters at each dae-runtime stop:")
    for line in kernel_lines[:args.rounds]:
        print(f"    {line}")
    if args.json:
        args.json.write_text(json.dumps({"note": note, "versions": versions(), "seconds": args.seconds,
                                         "runs": runs, "median_gbps": med, "ratios": ratios,
                                         "paired_ratios": {k: median(v) for k, v in paired.items()},
                                         "intervals": lines, "ab": ab,
                                         "proxy_cpu_s_per_gib": cpu, "proxy_user_s_per_gib": ucpu,
                                         "danted_cpu_s_per_gib": dcpu,
                                         "kernel_counters": kernel_lines, "taken": taken,
                                         "program_ns_per_packet": prog,
                                         "ab_pairs": ab_pairs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
