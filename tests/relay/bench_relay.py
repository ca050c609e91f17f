"""Throughput through the relay in the namespace lab (not a test: run it by hand, as root).

    .venv/bin/python -m tests.relay.bench_relay [--mib 256] [--repeat 3]

iperf3 in the client namespace sends N MiB to iperf3 -s in the upstream namespace:
  kernel forwarding (no tproxy) | relay direct (splice / copy) | relay -> danted (splice / copy).
Prints the median Gbit/s of each and the relay's CPU time per GiB (user + system time of the
relay's thread: the figure that splice changes, less noisy than Gbit/s on a shared 2-core VM).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import subprocess

from dae_py.runtime.relay import Gateway, RelayConfig, StaticRouter

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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lab = Lab().up_()
    results: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}
    try:
        lab.danted(DANTE4)
        iperf_server = lab.start_peer("iperf3", lab.up, ["iperf3", "-s", "-B", SERVER4])
        lab.wait_listening(lab.up, SERVER4, 5201, iperf_server)
        manifest = {"nodes": NODES, "groups": single_node_groups()}
        for name, outbound_id, splice in (("relay direct, splice", 0, True),
                                          ("relay direct, copy", 0, False),
                                          ("relay -> danted, splice", group_id("dante"), True),
                                          ("relay -> danted, copy", group_id("dante"), False)):
            config = RelayConfig(so_mark=RELAY_MARK, splice=splice)

            # Bound as defaults: scenario runs within this pass of the loop, but B023 cannot know that.
            async def scenario(outbound_id: int = outbound_id,
                               config: RelayConfig = config) -> tuple[list[float], float]:
                gateway = Gateway.from_manifest(StaticRouter(outbound_id), manifest, config)
                await gateway.start(TPROXY_PORT, health_checks=False)
                try:
                    before = thread_cpu()
                    rates = [await iperf(lab, args.mib) for _ in range(args.repeat)]
                    return rates, (thread_cpu() - before) / (args.mib * args.repeat / 1024)
                finally:
                    await gateway.close()

            results[name], cpu[name] = lab.run(scenario, timeout=600)
        # the kernel alone: no tproxy, plain forwarding
        sh("nsenter", f"--net=/run/netns/{lab.gw}", "nft", "delete", "table", "inet", "relaylab")
        sh("nsenter", f"--net=/run/netns/{lab.gw}", "sysctl", "-qw", "net.ipv4.ip_forward=1")

        async def forwarded() -> list[float]:
            return [await iperf(lab, args.mib) for _ in range(args.repeat)]

        results["kernel forwarding"] = lab.run(forwarded, timeout=600)
    finally:
        lab.down()
    print(f"{args.mib} MiB per run, median of {args.repeat}:")
    for name, values in results.items():
        per_gib = f"   relay CPU {cpu[name]:.2f} s/GiB" if name in cpu else ""
        print(f"  {name:26s} {statistics.median(values):6.2f} Gbit/s   "
              f"({', '.join(f'{v:.2f}' for v in values)}){per_gib}")


if __name__ == "__main__":
    main()
