"""iperf3 through the gateway, five cases in one run (issue 3, "Benchmarks"):

  (a) no program: plain kernel forwarding (dae-runtime not running)
  (b) dae-runtime running, program attached, the flow classified direct (stays in the kernel)
  (c) dae-runtime running, the flow proxied: tproxy -> our relay -> danted (SOCKS5) -> iperf3
  (d) redsocks (Debian, splice on) in the gateway ns, nft `redirect` -> redsocks -> danted
  (e) v2ray 4.34 (Debian) dokodemo-door tproxy inbound, socks outbound -> danted

    .venv/bin/python -m bench.runtime.throughput [--rounds 10] [--seconds 4] [--ab-pairs 24] [--json out.json]

All cases use one lab, one danted, iperf3 servers on 5201 (direct cases) and 5202 (proxied
cases). Rounds are interleaved (a b c d e, then e d c b a, and so on) so the machine's background
load hits all cases alike; the report gives medians, the ratios b/a, c/d, c/e, and CPU seconds per GiB moved of the
proxy process and of danted (less noisy than Gbit/s on a shared 2-core VM).

The ratios are given two ways: ratio of the medians, and the median over rounds of the
ratio within a round (both cases run a few seconds apart, so slow changes of the background
load cancel); the latter is the one to trust on a busy machine.

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
import time
from pathlib import Path
from typing import Any

from bench.runtime.common import (
    machine_note,
    median,
    nft,
    nft_redsocks,
    nft_v2ray,
    proc_cpu,
    start_redsocks,
    start_v2ray,
    tree_cpu,
    versions,
)

DIRECT_PORT = 5201
PROXY_PORT = 5202
CASES = {
    "a": "no program (kernel forwarding)",
    "b": "program attached, direct",
    "c": "dae relay -> danted",
    "d": "redsocks -> danted",
    "e": "v2ray 4.34 -> danted",
}


class Bench:
    def __init__(self, lab: Any, workdir: Path, seconds: float) -> None:
        from bench.runtime.common import gateway_config
        from dae_py.runtime.lab.gateway_proc import GatewayProcess

        self.lab = lab
        self.t = lab.topo
        self.seconds = seconds
        self.danted = lab.start_danted(1080)
        lab.start_http_peer(8080)  # the group's health check target
        self.iperf = {DIRECT_PORT: lab.start_iperf3(DIRECT_PORT), PROXY_PORT: lab.start_iperf3(PROXY_PORT)}
        self.redsocks = start_redsocks(lab)
        self.v2ray = start_v2ray(lab)
        self.gw = GatewayProcess(lab, gateway_config(self.t, [PROXY_PORT]), workdir)
        self.state = "none"
        self.kernel_lines: list[str] = []
        self.gw_starts: list[float] = []

    # which of dae / redsocks rule / v2ray rule is active
    def ensure(self, state: str) -> None:
        if state == self.state:
            return
        if self.state == "dae":
            self.gw.stop()
            time.sleep(0.2)
            lines = [line for line in self.gw.log_text().splitlines() if " kernel: " in line]
            if lines:
                self.kernel_lines.append(lines[-1].split("kernel: ", 1)[1])
        elif self.state == "redsocks":
            nft(self.lab, delete="bench_redsocks")
        elif self.state == "v2ray":
            nft(self.lab, delete="bench_v2ray")
        self.state = "none"
        if state == "dae":
            t0 = time.monotonic()
            self.gw.start()
            self.gw_starts.append(time.monotonic() - t0)
        elif state == "redsocks":
            nft(self.lab, nft_redsocks(self.t, PROXY_PORT))
        elif state == "v2ray":
            nft(self.lab, nft_v2ray(self.t, PROXY_PORT))
        self.state = state

    def proxy_pid(self, case: str) -> int | None:
        if case == "c":
            return self.gw.proc.pid if self.gw.proc else None
        if case == "d":
            return self.redsocks.pid
        if case == "e":
            return self.v2ray.pid
        return None

    def last_accepted_from(self, port: int) -> str:
        text = self.iperf[port].log_path.read_text(errors="replace")
        found = re.findall(r"Accepted connection from ([0-9a-f.:]+)", text)
        return found[-1] if found else "?"

    def run_case(self, case: str) -> dict[str, Any]:
        self.ensure({"a": "none", "b": "dae", "c": "dae", "d": "redsocks", "e": "v2ray"}[case])
        port = DIRECT_PORT if case in "ab" else PROXY_PORT
        ppid = self.proxy_pid(case)
        cpu0 = proc_cpu(ppid) if ppid else 0.0
        dcpu0 = tree_cpu(self.danted.pid)
        r = self.lab.run("client", ["iperf3", "-c", self.t.upstream_ip4, "-p", str(port),
                                    "-t", str(self.seconds), "-J"], timeout=self.seconds + 60)
        cpu1 = proc_cpu(ppid) if ppid else 0.0
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
                "proxy_cpu_s_per_gib": (cpu1 - cpu0) / gbytes if ppid else None,
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=10, help="an even number balances the order")
    ap.add_argument("--seconds", type=float, default=4.0, help="iperf3 -t per run")
    ap.add_argument("--ab-pairs", type=int, default=24,
                    help="after the rounds, this many extra (a, b) pairs of --ab-seconds runs, alternating "
                         "ab/ba: a tighter b/a on a noisy machine")
    ap.add_argument("--ab-seconds", type=float, default=2.0)
    ap.add_argument("--json", type=Path, help="write all runs here")
    args = ap.parse_args(argv)

    from dae_py.runtime.lab import Lab, cleanup_stale

    note = machine_note()
    cleanup_stale("benchrt")
    runs: list[dict[str, Any]] = []
    with Lab("benchrt") as lab, tempfile.TemporaryDirectory(prefix="bench-tput-") as tmp:
        bench = Bench(lab, Path(tmp), args.seconds)
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
            ab_pairs: list[float] = []
            bench.seconds = args.ab_seconds
            for i in range(args.ab_pairs):
                got = {c: bench.run_case(c)["gbps"] for c in ("ab" if i % 2 == 0 else "ba")}
                ab_pairs.append(got["b"] / got["a"])
                print(f"pair {i}: a {got['a']:.2f} b {got['b']:.2f} b/a {ab_pairs[-1]:.3f}", flush=True)
            bench.ensure("none")
        finally:
            bench.gw.stop()
    med = {c: median([r["gbps"] for r in runs if r["case"] == c]) for c in CASES}
    cpu = {c: median([r["proxy_cpu_s_per_gib"] for r in runs if r["case"] == c
                      and r["proxy_cpu_s_per_gib"] is not None]) for c in "cde"}
    dcpu = {c: median([r["danted_cpu_s_per_gib"] for r in runs if r["case"] == c]) for c in "cde"}
    ratios = {"b/a": med["b"] / med["a"], "c/d": med["c"] / med["d"], "c/e": med["c"] / med["e"]}
    by_round: dict[int, dict[str, float]] = {}
    for r in runs:
        by_round.setdefault(r["round"], {})[r["case"]] = r["gbps"]
    paired = {k: median([v[k[0]] / v[k[2]] for v in by_round.values()]) for k in ratios}
    print(f"\n{note}")
    print(f"iperf3 -t {args.seconds:g}, one stream, client -> upstream; {args.rounds} interleaved rounds; "
          f"median Gbit/s (all runs)")
    for c, label in CASES.items():
        vals = ", ".join(f"{r['gbps']:.2f}" for r in runs if r["case"] == c)
        scpu = median([r["sender_cpu_pct"] or 0 for r in runs if r["case"] == c])
        extra = (f"   proxy {cpu[c]:.2f} / danted {dcpu[c]:.2f} CPU-s per GiB" if c in cpu else "")
        print(f"  ({c}) {label:32s} {med[c]:6.2f}   ({vals}) sender CPU {scpu:.0f}%{extra}")
    for k, target, ok in (("b/a", ">= 0.97", paired["b/a"] >= 0.97), ("c/d", ">= 1", paired["c/d"] >= 1),
                          ("c/e", "> 1", paired["c/e"] > 1)):
        per = ", ".join(f"{v[k[0]] / v[k[2]]:.3f}" for v in by_round.values())
        print(f"  {k} = {paired[k]:.3f} median of per-round ratios ({per}); ratio of medians {ratios[k]:.3f}"
              f"  (target {target}: {'met' if ok else 'MISSED'})")
    if ab_pairs:
        q = sorted(ab_pairs)
        print(f"  extra a/b pairs ({len(q)} x {args.ab_seconds:g} s, alternating ab/ba): "
              f"b/a median {median(q):.3f}, quartiles {q[len(q) // 4]:.3f} .. {q[(3 * len(q)) // 4]:.3f}, "
              f"{sum(x < 1 for x in q)} of {len(q)} below 1")
    pkts = [int(m.group(1)) for line in bench.kernel_lines for m in [re.search(r"direct=(\d+)p", line)] if m]
    pps = median(pkts[:args.rounds]) / args.seconds if pkts else 0.0  # the main rounds: one dae start each
    print(f"  the program on (b)'s packets: {prog['hit_ns']:.0f} ns per packet "
          f"(BPF_PROG_TEST_RUN, flow-table hit) x {pps / 1e3:.0f}k packets/s (its own counter; GSO-sized skbs) "
          f"= {prog['hit_ns'] * pps / 1e7:.3f}% of one core")
    print(f"  dae-runtime start (compile excluded): median {median(bench.gw_starts):.2f} s")
    print("  program's per-outbound counters at each dae-runtime stop:")
    for line in bench.kernel_lines[:args.rounds]:
        print(f"    {line}")
    if args.json:
        args.json.write_text(json.dumps({"note": note, "versions": versions(), "seconds": args.seconds,
                                         "runs": runs, "median_gbps": med, "ratios": ratios, "paired_ratios": paired,
                                         "proxy_cpu_s_per_gib": cpu, "danted_cpu_s_per_gib": dcpu,
                                         "kernel_counters": bench.kernel_lines,
                                         "program_ns_per_packet": prog,
                                         "ab_pairs": ab_pairs}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
