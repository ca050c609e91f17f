"""Reload against restart (issue 14): how long `dae-runtime reload` takes to put new rules live,
and what each program saw meanwhile, next to a stop + start of the same gateway.

    .venv/bin/python -m bench.reload [--reloads 20] [--restarts 5] [--pps 5000]

A lab (runtime.lab), the real runtime in its gateway namespace, two builds that differ by one
rule, and a UDP flood from the client (direct: only the tc program handles it) while the builds
are swapped. For each reload: the runtime's own figure (request read -> new program attached on
every interface) and the command's wall time (a Python process starting, connecting, waiting);
the packets the old program ran on between the request and the swap, and the new one from its
attach until the command returned (the kernel's per-program run_cnt, `kernel.bpf_stats_enabled`
switched on for the run and restored after). For each restart: SIGTERM to "gateway ready" of a
new process, during which the flood has no program at all (and proxied flows are cut).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.common import machine_note
from dae_py.runtime.lab import Lab
from dae_py.runtime.lab.gateway_proc import GatewayProcess, compile_build, lab_config

STATS = Path("/proc/sys/kernel/bpf_stats_enabled")
SINK_PORT = 9300


def run_cnt(prog_id: int) -> int:
    out = subprocess.run(["bpftool", "prog", "show", "id", str(prog_id), "-j"], capture_output=True, text=True)
    if out.returncode != 0:
        return -1  # freed: the old program once nothing holds it
    return int(json.loads(out.stdout).get("run_cnt", 0))


def attached_ids(state_path: Path) -> list[int]:
    entries = json.loads(state_path.read_text()).get("entries", [])
    return sorted({int(e["prog_id"]) for e in entries if e.get("kind") == "filter" and e.get("prog_id")})


class Flood(threading.Thread):
    """UDP datagrams from the client namespace at about `pps`, each from the same socket."""

    def __init__(self, lab: Lab, host: str, pps: int) -> None:
        super().__init__(daemon=True)
        self.sock = lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM)
        self.host, self.pps = host, pps
        self.stop = threading.Event()
        self.sent = 0

    def run(self) -> None:
        t0 = time.monotonic()
        while not self.stop.is_set():
            self.sock.sendto(b"x" * 64, (self.host, SINK_PORT))
            self.sent += 1
            ahead = self.sent / self.pps - (time.monotonic() - t0)
            if ahead > 0:
                time.sleep(ahead)
        self.sock.close()


def reload_once(gw: GatewayProcess, build_dir: Path, flood: Flood) -> dict[str, Any]:
    old = attached_ids(gw.state_path)
    before = {p: run_cnt(p) for p in old}
    sent0 = flood.sent
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "dae_py.runtime.cli", "reload", str(build_dir), "--state",
                          str(gw.state_path), "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"reload failed: {out.stderr}")
    sent = flood.sent - sent0
    new = attached_ids(gw.state_path)
    after_old = {p: run_cnt(p) for p in old}
    return {"server_s": json.loads(out.stdout)["seconds"], "wall_s": wall, "sent": sent,
            "old_packets": sum(max(after_old[p] - before[p], 0) for p in old if after_old[p] >= 0),
            "new_packets": sum(max(run_cnt(p), 0) for p in new)}


def restart_once(gw: GatewayProcess) -> float:
    t0 = time.perf_counter()
    gw.stop()
    gw.start()
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reloads", type=int, default=20)
    ap.add_argument("--restarts", type=int, default=5)
    ap.add_argument("--pps", type=int, default=5000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    note = machine_note()
    print(" ".join(f"{k}={v}" for k, v in note.items()))
    print("command:", " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]))
    saved = STATS.read_text().strip()
    STATS.write_text("1")
    reloads: list[dict[str, Any]] = []
    restarts: list[float] = []
    try:
        with Lab() as lab, tempfile.TemporaryDirectory(prefix="bench-reload-") as tmp:
            t = lab.topo
            lab.start_udp_echo(SINK_PORT)
            texts = [lab_config(t, fallback="direct", rules=[f"dip({t.upstream_ip4}) && dport(8081) -> proxy"]),
                     lab_config(t, fallback="direct", rules=[f"dip({t.upstream_ip4}) && dport(8081, 8082) -> proxy"])]
            builds = []
            for i, text in enumerate(texts):
                (Path(tmp) / f"c{i}.yaml").write_text(text)
                compile_build(Path(tmp) / f"c{i}.yaml", Path(tmp) / f"b{i}")
                builds.append(Path(tmp) / f"b{i}")
            (Path(tmp) / "gw").mkdir()
            gw = GatewayProcess(lab, texts[0], Path(tmp) / "gw")  # the flood is direct: no per-flow lines
            gw.start()
            flood = Flood(lab, t.upstream_ip4, args.pps)
            flood.start()
            try:
                time.sleep(0.5)
                for i in range(args.reloads):
                    reloads.append(reload_once(gw, builds[(i + 1) % 2], flood))
                    time.sleep(0.2)
                    print(f"reload {i + 1}: {reloads[-1]}", file=sys.stderr)
                for i in range(args.restarts):
                    restarts.append(restart_once(gw))
                    time.sleep(0.2)
                    print(f"restart {i + 1}: {restarts[-1]:.3f} s", file=sys.stderr)
            finally:
                flood.stop.set()
                flood.join(5)
                gw.process.send_signal(signal.SIGTERM)
                gw.stop()
    finally:
        STATS.write_text(saved)
    server = [r["server_s"] * 1e3 for r in reloads]
    wall = [r["wall_s"] * 1e3 for r in reloads]
    print(f"\nUDP flood {args.pps} pps (direct), {args.reloads} reloads alternating two builds, "
          f"{args.restarts} restarts; load average at the end {os.getloadavg()[0]:.1f}\n")
    print("| what | p50 | min | max |")
    print("|---|---|---|---|")
    print(f"| reload, runtime's figure (request -> new program attached) | {statistics.median(server):.1f} ms "
          f"| {min(server):.1f} ms | {max(server):.1f} ms |")
    print(f"| reload, `dae-runtime reload` wall time | {statistics.median(wall):.1f} ms | {min(wall):.1f} ms "
          f"| {max(wall):.1f} ms |")
    if restarts:
        rs = [r * 1e3 for r in restarts]
        print(f"| restart (SIGTERM -> gateway ready) | {statistics.median(rs):.0f} ms | {min(rs):.0f} ms "
              f"| {max(rs):.0f} ms |")
        print(f"\nrestart / reload (runtime's figure, p50): {statistics.median(rs) / statistics.median(server):.0f}x")
    old = [r["old_packets"] for r in reloads]
    new = [r["new_packets"] for r in reloads]
    sent = [r["sent"] for r in reloads]
    unseen = [r["sent"] - r["old_packets"] - r["new_packets"] for r in reloads]
    print("\npackets per reload (the flood's, while the command ran): | sent | old program | new program | "
          "sent - old - new |")
    print("|---|---|---|---|")
    print(f"| p50 | {statistics.median(sent):.0f} | {statistics.median(old):.0f} | {statistics.median(new):.0f} "
          f"| {statistics.median(unseen):.0f} |")
    print(f"| total over {len(reloads)} | {sum(sent)} | {sum(old)} | {sum(new)} | {sum(unseen)} |")
    if args.json:
        args.json.write_text(json.dumps({"note": note, "reloads": reloads, "restarts": restarts}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
