"""Issue 13's two figures, in one run (docs/local-routing.md):

A. What the pname() cgroup hooks add to connect(): a tight loop of socket(UDP) + connect() + close
   in a child cgroup, alternating rounds with the hooks attached and detached (and, with --base,
   another worktree's hooks too); the median of the per-round differences, in CPU time per
   iteration. Python's loop (what a Python client pays) and a C loop compiled here with the
   system `cc` (the hooks' own cost, less the interpreter's noise); each to 127.0.0.1 and to a
   routed address (a veth peer in a namespace of the bench's own: the hooks skip loopback).
B. Proxied throughput of the gateway's own traffic (iperf3 on the gateway -> wan_egress bounce ->
   our relay -> danted -> iperf3 in upstream) against the LAN-side proxied path (iperf3 in the
   client namespace -> lan_ingress -> the same relay) with the same runtime, alternating.

    .venv/bin/python -m bench.local_routing [--seconds 3] [--rounds 2] [--loops 20000] [--connect-only]
        [--connect-rounds 7] [--base ../wt-base]
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
CONFIG = ("global: {lan_interface: [eth0], wan_interface: [eth1]}\n"
          "routing:\n  rules:\n    - \"pname(curl) -> block\"\n  fallback: direct\n")
#: The routed destination: the on-link peer of a veth in a namespace of the bench's own (a UDP
#: connect() sends nothing; it only picks the route).
ROUTED_NET, ROUTED_SELF, ROUTED_PEER = "10.213.7.0", "10.213.7.1", "10.213.7.2"
LOOPBACK = "127.0.0.1"


def connect_loop(n: int, dst: str = LOOPBACK) -> float:
    """CPU seconds (user + system) per socket+connect+close: CPU time, not wall time, since on
    a machine shared with other work the wall clock mostly measures waiting for a core."""
    t0 = time.process_time()
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((dst, 9))
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

/* socket(UDP) + connect(DST:9) + close, N times; prints CPU nanoseconds per iteration. */
int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 100000;
	struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(9) };
	struct timespec t0, t1;

	if (inet_pton(AF_INET, argc > 2 ? argv[2] : "127.0.0.1", &to.sin_addr) != 1)
		return 2;
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


def c_connect_loop(exe: Path, n: int, dst: str = LOOPBACK, netns: str | None = None) -> float:
    """CPU seconds per socket+connect+close, from the C loop (a child: it runs in our cgroup;
    with `netns`, entered through nsenter, which leaves /sys alone)."""
    argv = [str(exe), str(n), dst]
    if netns:
        argv = ["nsenter", f"--net=/run/netns/{netns}", *argv]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return float(out) / 1e9


def compile_build(tree: Path | None, out: Path) -> Path:
    """The bench config compiled by this tree (None) or by another worktree's own venv (the
    A/B baseline, e.g. `git worktree add ../base main`); returns the build directory."""
    if tree is None:
        from dae_py.compiler.pipeline import compile_config

        compile_config(None, out, text=CONFIG, name="bench.yaml")
    else:
        code = ("import sys; from dae_py.compiler.pipeline import compile_config; "
                "compile_config(None, sys.argv[1], text=sys.argv[2], name='bench.yaml')")
        subprocess.run([str(tree / ".venv" / "bin" / "python"), "-c", code, str(out), CONFIG], check=True, cwd=tree)
    return out


def _routed_netns(name: str) -> None:
    from pyroute2 import netns

    from dae_py.runtime.datapath._netns import open_iproute

    netns.create(name)
    with open_iproute(name) as ipr:
        ipr.link("add", ifname="bench0", kind="veth", peer="bench1")
        for ifname in ("lo", "bench0", "bench1"):
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
        ipr.addr("add", index=ipr.link_lookup(ifname="bench0")[0], address=ROUTED_SELF, prefixlen=24)


def bench_connect(loops: int, rounds: int, workdir: Path, base: Path | None = None) -> dict[str, Any]:
    """Rounds of: each loop without hooks, then with each build's hooks; per build and loop, the
    median of the per-round differences (each with-round beside its own without-round, which
    the load's drift during the run affects less than the medians' difference)."""
    from pyroute2 import netns

    from dae_py.contract.manifest import Manifest
    from dae_py.runtime.bpf import BpfObject
    from dae_py.runtime.datapath._netns import run_in_netns
    from dae_py.runtime.datapath.cgroup import cgroup2_mount
    from dae_py.runtime.datapath.localhost import attach_pname_hooks

    trees: dict[str, Path | None] = {"this tree": None}
    if base is not None:
        head = subprocess.run(["git", "-C", str(base), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        trees[f"base {head}"] = base
    exe = build_c_loop(workdir)
    ns = f"h13bench{os.getpid() % 10000}"
    loops_by_kind = {
        "python, 127.0.0.1": lambda: connect_loop(loops),
        "python, routed": lambda: run_in_netns(ns, connect_loop, loops, ROUTED_PEER),
        "C, 127.0.0.1": lambda: c_connect_loop(exe, loops * 5),
        "C, routed": lambda: c_connect_loop(exe, loops * 5, ROUTED_PEER, ns),
    }
    root = cgroup2_mount()
    cg = root / f"dae-py-bench-{os.getpid()}"
    objs: dict[str, tuple[Any, Manifest]] = {}
    times: dict[tuple[str, str], list[float]] = {}
    cg.mkdir()
    try:
        _routed_netns(ns)
        for label, tree in trees.items():
            build = compile_build(tree, workdir / f"build-{len(objs)}")
            obj = BpfObject(build / "program.o")
            obj.load()
            objs[label] = (obj, Manifest.from_json(json.loads((build / "manifest.json").read_text())))
        (cg / "cgroup.procs").write_text(str(os.getpid()))
        for loop in loops_by_kind.values():  # warm up
            loop()
        for _ in range(rounds):
            for kind, loop in loops_by_kind.items():
                times.setdefault((kind, "without"), []).append(loop())
                for label, (obj, manifest) in objs.items():
                    hooks = attach_pname_hooks(obj, manifest, cg)
                    assert hooks is not None
                    try:
                        times.setdefault((kind, label), []).append(loop())
                    finally:
                        hooks.close()
    finally:
        (root / "cgroup.procs").write_text(str(os.getpid()))
        cg.rmdir()
        for obj, _ in objs.values():
            obj.close()
        if ns in netns.listnetns():
            netns.remove(ns)
    out: dict[str, Any] = {"loops": loops, "rounds": rounds,
                           "hooks": {label: [s.name for s in m.cgroup_programs()] for label, (_, m) in objs.items()}}
    for kind in loops_by_kind:
        without = times[(kind, "without")]
        row: dict[str, Any] = {"without_us": statistics.median(without) * 1e6}
        for label in objs:
            with_ = times[(kind, label)]
            paired = statistics.median(w - o for w, o in zip(with_, without, strict=True))
            row[label] = {"with_us": statistics.median(with_) * 1e6, "added_us": paired * 1e6,
                          "ratio": statistics.median(with_) / statistics.median(without),
                          "all_with_us": [x * 1e6 for x in with_]}
        row["all_without_us"] = [x * 1e6 for x in without]
        out[kind] = row
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
    ap.add_argument("--base", type=Path, help="another worktree (with its own .venv) whose hooks to time beside")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        load = os.getloadavg()[0]
        result: dict[str, Any] = {"load_before": load,
                                  "connect": bench_connect(args.loops, args.connect_rounds, Path(d), args.base)}
        if not args.connect_only:
            result["throughput"] = bench_throughput(args.seconds, args.rounds, Path(d))
        result["load_after"] = os.getloadavg()[0]
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
