"""Issue 13's two figures, in one run (docs/local-routing.md):

A. What the pname() cgroup hooks add to connect(): a tight loop of socket(UDP) + connect(127.0.0.1)
   + close in a child cgroup, alternating rounds with the hooks attached and detached; the
   difference of the medians per iteration. Twice: Python's loop (what a Python client pays) and
   a C loop compiled here with the system `cc` (the hooks' own cost, without the interpreter's
   per-call noise).
B. Proxied throughput of the gateway's own traffic (iperf3 on the gateway -> wan_egress bounce ->
   our relay -> danted -> iperf3 in upstream) against the LAN-side proxied path (iperf3 in the
   client namespace -> lan_ingress -> the same relay) with the same runtime, alternating.

    .venv/bin/python -m bench.local_routing [--seconds 3] [--rounds 2] [--loops 20000] [--connect-only]
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

PORT = 5202


def connect_loop(n: int) -> float:
    """CPU seconds (user + system) per socket+connect+close: CPU time, not wall time, since on
    a machine shared with other work the wall clock mostly measures waiting for a core."""
    t0 = time.process_time()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.0.1", 9))
        s.close()
    return (time.process_time() - t0) / n


C_LOOP = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* socket(UDP) + connect(127.0.0.1:9) + close, N times; prints CPU nanoseconds per iteration. */
int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000;
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(9) };
	struct timespec t0, t1;

	to.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t0);
	for (long i = 0; i < n; i++) {
		int fd = socket(AF_INET, SOCK_DGRAM, 0);

		if (fd < 0 || connect(fd, (struct sockaddr *)&to, sizeof(to)) < 0)
			return 1;
		close(fd);
	}
	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t1);
	printf("%.1f\n", ((t1.tv_sec - t0.tv_sec) * 1e9 + (t1.tv_nsec - t0.tv_nsec)) / n);
	return 0;
}
"""


def build_c_loop(workdir: Path) -> Path:
    """Compile C_LOOP with the system compiler (cc), once per run."""
    src, exe = workdir / "connect_loop.c", workdir / "connect_loop"
    src.write_text(C_LOOP)
    subprocess.run(["cc", "-O2", "-o", str(exe), str(src)], check=True)
    return exe


def c_connect_loop(exe: Path, n: int) -> float:
    """CPU seconds per socket+connect+close, from the C loop (a child: it runs in our cgroup)."""
    out = subprocess.run([str(exe), str(n)], check=True, capture_output=True, text=True).stdout
    return float(out) / 1e9


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
    exe = build_c_loop(workdir)
    loops_by_kind = {"python": lambda: connect_loop(loops), "c": lambda: c_connect_loop(exe, loops * 5)}
    with_hooks: dict[str, list[float]] = {k: [] for k in loops_by_kind}
    without: dict[str, list[float]] = {k: [] for k in loops_by_kind}
    try:
        (cg / "cgroup.procs").write_text(str(os.getpid()))
        with BpfObject(workdir / "build" / "program.o") as obj:
            obj.load()
            connect_loop(loops // 10)  # warm up
            c_connect_loop(exe, loops // 10)
            for _ in range(rounds):
                for kind, loop in loops_by_kind.items():
                    without[kind].append(loop())
                    hooks = attach_pname_hooks(obj, manifest, cg)
                    assert hooks is not None
                    try:
                        with_hooks[kind].append(loop())
                    finally:
                        hooks.close()
    finally:
        (root / "cgroup.procs").write_text(str(os.getpid()))
        cg.rmdir()
    out: dict[str, Any] = {"loops": loops, "rounds": rounds, "hooks": [s.name for s in manifest.cgroup_programs()]}
    for kind in loops_by_kind:
        a, b = statistics.median(without[kind]), statistics.median(with_hooks[kind])
        # the per-round difference (each with-round beside its own without-round) is less
        # sensitive to the machine's load drifting during the run than the medians' difference
        paired = statistics.median(w - o for w, o in zip(with_hooks[kind], without[kind], strict=True))
        out[kind] = {"without_us": a * 1e6, "with_us": b * 1e6, "added_us": (b - a) * 1e6,
                     "added_paired_us": paired * 1e6, "ratio": b / a,
                     "all_without_us": [x * 1e6 for x in without[kind]],
                     "all_with_us": [x * 1e6 for x in with_hooks[kind]]}
    return out


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
    ap.add_argument("--connect-rounds", type=int, default=7)
    ap.add_argument("--connect-only", action="store_true", help="skip the iperf3 lab (figure B)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        load = os.getloadavg()[0]
        result: dict[str, Any] = {"load_before": load,
                                  "connect": bench_connect(args.loops, args.connect_rounds, Path(d))}
        if not args.connect_only:
            result["throughput"] = bench_throughput(args.seconds, args.rounds, Path(d))
        result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
