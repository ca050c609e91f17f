"""Issue 13's two figures, in one run (docs/local-routing.md):

A. What the pname() cgroup hooks add to connect(): a tight loop of socket(UDP) + connect(127.0.0.1)
   + close (sock_create, connect4 and sock_release all fire) in a child cgroup, alternating rounds
   with the hooks attached and detached; the difference of the medians per iteration.
B. Proxied throughput of the gateway's own traffic (iperf3 on the gateway -> wan_egress bounce ->
   our relay -> danted -> iperf3 in upstream) against the LAN-side proxied path (iperf3 in the
   client namespace -> lan_ingress -> the same relay) with the same runtime, alternating.

    .venv/bin/python -m bench.local_routing [--seconds 3] [--rounds 2] [--loops 20000]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

PORT = 5202


def connect_loop(n: int) -> float:
    """Seconds per socket+connect+close."""
    t0 = time.perf_counter()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", 9))
        s.close()
    return (time.perf_counter() - t0) / n


def bench_connect(loops: int, rounds: int, workdir: Path) -> dict[str, Any]:
    from dae_py.compiler.pipeline import compile_config
    from dae_py.contract.manifest import Manifest
    from dae_py.runtime.bpf import BpfObject
    from dae_py.runtime.datapath.cgroup import cgroup2_mount
    from dae_py.runtime.datapath.localhost import attach_pname_hooks

    compile_config(None, workdir / "build", text="global: {lan_interface: [eth0], wan_interface: [eth1]}\n"
                   "routing:\n  rules:\n    - \"pname(curl) -> block\"\n  fallback: direct\n", name="bench.yaml")
    manifest = Manifest.from_json(json.loads((workdir / "build" / "manifest.json").read_text()))
    root = cgroup2_mount()
    cg = root / f"dae-py-bench-{os.getpid()}"
    cg.mkdir()
    with_hooks: list[float] = []
    without: list[float] = []
    try:
        (cg / "cgroup.procs").write_text(str(os.getpid()))
        with BpfObject(workdir / "build" / "program.o") as obj:
            obj.load()
            connect_loop(loops // 10)  # warm up
            for _ in range(rounds):
                without.append(connect_loop(loops))
                hooks = attach_pname_hooks(obj, manifest, cg)
                assert hooks is not None
                try:
                    with_hooks.append(connect_loop(loops))
                finally:
                    hooks.close()
    finally:
        (root / "cgroup.procs").write_text(str(os.getpid()))
        cg.rmdir()
    a, b = statistics.median(without), statistics.median(with_hooks)
    return {"loops": loops, "rounds": rounds, "without_us": a * 1e6, "with_us": b * 1e6,
            "added_us": (b - a) * 1e6, "ratio": b / a,
            "all_without_us": [x * 1e6 for x in without], "all_with_us": [x * 1e6 for x in with_hooks]}


def iperf(lab: Any, ns: str, host: str, seconds: float) -> float:
    r = lab.run(ns, ["iperf3", "-c", host, "-p", str(PORT), "-t", str(seconds), "-J"], timeout=seconds + 60)
    data = json.loads(r.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3 from {ns}: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def bench_throughput(seconds: float, rounds: int, workdir: Path) -> dict[str, Any]:
    from dae_py.runtime.lab import Lab
    from dae_py.runtime.lab.gateway_proc import GatewayProcess, lab_config

    out: dict[str, list[float]] = {"local": [], "lan": []}
    with Lab() as lab:
        t = lab.topo
        lab.start_danted(1080)
        lab.start_http_peer(8080)
        server = lab.start_iperf3(PORT)
        cfg = lab_config(t, rules=[f"dport({PORT}) -> proxy"], fallback="direct",
                         extra_global=f"  wan_interface: [{t.gateway_wan_if}]")
        (workdir / "gw").mkdir()
        gw = GatewayProcess(lab, cfg, workdir / "gw")
        gw.start()
        try:
            for _ in range(rounds):
                out["local"].append(iperf(lab, "gateway", t.upstream_ip4, seconds))
                out["lan"].append(iperf(lab, "client", t.upstream_ip4, seconds))
        finally:
            gw.stop()
        seen = server.log_path.read_text(errors="replace").count(f"Accepted connection from {t.upstream_ip4}")
        if seen < 2 * rounds:  # every run must have come through danted
            raise RuntimeError(f"only {seen} of {2 * rounds} iperf3 runs arrived from the proxy")
    loc, lan = statistics.median(out["local"]), statistics.median(out["lan"])
    return {"seconds": seconds, "rounds": rounds, "local_gbps": loc, "lan_gbps": lan, "ratio": loc / lan,
            "all": out}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--loops", type=int, default=20000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        load = os.getloadavg()[0]
        result = {"load_before": load, "connect": bench_connect(args.loops, 7, Path(d)),
                  "throughput": bench_throughput(args.seconds, args.rounds, Path(d))}
        result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
