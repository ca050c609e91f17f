"""Throughput through the relay in the namespace lab (not a test: run it by hand, as root).

    .venv/bin/python -m tests.relay.bench_relay [--mib 256] [--repeat 3]

iperf3 in the client namespace sends N MiB to iperf3 -s in the upstream namespace:
  kernel forwarding (no tproxy) | relay direct (sockmap / splice / copy) | relay -> danted (same).
The relay's modes run in interleaved rounds. Prints the median Gbit/s of each, the relay
thread's CPU time per GiB (user + system) and the whole machine's busy CPU time per GiB
(/proc/stat: includes iperf3, danted and the kernel's psock workers and softirqs, which is
where sockmap's work goes; the same iperf3 share in every mode, so compare side by side).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess
import tempfile
from pathlib import Path

from dae_py.compiler.emit import compile_sockmap
from dae_py.runtime.relay import Gateway, RelayConfig, StaticRouter
from dae_py.runtime.relay.sockmap import with_mode

from .conftest import DANTE4, NODES, group_id, single_node_groups
from .lab import RELAY_MARK, SERVER4, TPROXY_PORT, Lab, sh


async def iperf(lab: Lab, mib: int) -> float:
    proc = await asyncio.create_subprocess_exec(
        "nsenter", f"--net=/run/netns/{lab.client}", "iperf3", "-c", SERVER4, "-n", f"{mib}M",
        "-J", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await proc.communicate()
    if proc.returncode:
        raise RuntimeError(f"iperf3 failed: {out[-500:]!r} {err[-500:]!r}")
    return json.loads(out)["end"]["sum_received"]["bits_per_second"] / 1e9


def thread_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_THREAD)
    return usage.ru_utime + usage.ru_stime


def machine_cpu() -> float:
    """Busy CPU seconds of the whole machine so far (every CPU; /proc/stat, USER_HZ 100)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return (sum(fields[:8]) - idle) / 100.0


MODES = ("sockmap", "splice", "copy")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lab = Lab().up_()
    results: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}
    machine: dict[str, float] = {}
    try:
        lab.danted(DANTE4)
        iperf_server = lab.start_peer("iperf3", lab.up, ["iperf3", "-s", "-B", SERVER4])
        lab.wait_listening(lab.up, SERVER4, 5201, iperf_server)
        manifest = {"nodes": NODES, "groups": single_node_groups()}
        build = Path(tempfile.mkdtemp(prefix="sockmap-bench-"))
        compile_sockmap(build)
        for _round in range(args.repeat):
            for via, outbound_id in (("direct", 0), ("-> danted", group_id("dante"))):
                for mode in MODES:
                    name = f"relay {via}, {mode}"
                    config = with_mode(RelayConfig(so_mark=RELAY_MARK), mode, build)

                    # Bound as defaults: scenario runs within this pass of the loop, but B023 cannot know that.
                    async def scenario(outbound_id: int = outbound_id, config: RelayConfig = config,
                                       mode: str = mode) -> tuple[float, float, float]:
                        gateway = Gateway.from_manifest(StaticRouter(outbound_id), manifest, config)
                        await gateway.start(TPROXY_PORT, health_checks=False)
                        try:
                            assert (gateway.tcp.sockmap is not None) == (mode == "sockmap")
                            before, whole = thread_cpu(), machine_cpu()
                            rate = await iperf(lab, args.mib)
                            return rate, thread_cpu() - before, machine_cpu() - whole
                        finally:
                            await gateway.close()

                    rate, used, busy = lab.run(scenario, timeout=600)
                    results.setdefault(name, []).append(rate)
                    cpu[name] = cpu.get(name, 0.0) + used / (args.mib * args.repeat / 1024)
                    machine[name] = machine.get(name, 0.0) + busy / (args.mib * args.repeat / 1024)
        # the kernel alone: no tproxy, plain forwarding
        sh("nsenter", f"--net=/run/netns/{lab.gw}", "nft", "delete", "table", "inet", "relaylab")
        sh("nsenter", f"--net=/run/netns/{lab.gw}", "sysctl", "-qw", "net.ipv4.ip_forward=1")

        async def forwarded() -> list[float]:
            return [await iperf(lab, args.mib) for _ in range(args.repeat)]

        results["kernel forwarding"] = lab.run(forwarded, timeout=600)
    finally:
        lab.down()
    print(f"{args.mib} MiB per run, median of {args.repeat} interleaved rounds:")
    for name, values in results.items():
        per_gib = (f"   relay thread {cpu[name]:.2f} s/GiB, machine {machine[name]:.2f} s/GiB"
                   if name in cpu else "")
        print(f"  {name:26s} {statistics.median(values):6.2f} Gbit/s   "
              f"({', '.join(f'{v:.2f}' for v in values)}){per_gib}")


if __name__ == "__main__":
    main()
