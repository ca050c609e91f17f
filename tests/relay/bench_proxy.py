"""Throughput through Shadowsocks and Trojan nodes in the namespace lab (run by hand, as root).

    .venv/bin/python -m tests.relay.bench_proxy [--mib 256] [--repeat 3]

iperf3 in the client namespace sends N MiB to iperf3 -s in the upstream namespace, in one run:
  relay -> danted (copy: the baseline a user-space path is held to) | relay -> ss-server
  aes-128-gcm | relay -> trojan | ss-redir (shadowsocks-libev's C client, nftables redirect)
  -> the same ss-server.
Prints the median Gbit/s and CPU seconds per GiB of the relay's thread (user + system), or of
the ss-redir process.
"""
from __future__ import annotations

import argparse
import os
import statistics
from pathlib import Path
from typing import Any

import trustme

from dae_py.runtime.net.tls import client_context
from dae_py.runtime.relay import Gateway, RelayConfig, StaticRouter

from .bench_relay import iperf, thread_cpu
from .conftest import DANTE4, NODES, node
from .lab import RELAY_MARK, SERVER4, TPROXY_PORT, Lab, sh

SS4, PASSWORD = "10.77.2.30", "bench-pw"
TROJAN4, TROJAN_PORT, SNI = "10.77.2.40", 4443, "trojan.bench.test"
REDIR_PORT = 1081


def proc_cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")



def fixed_groups(nodes: list[str], first_id: int = 10) -> list[dict[str, Any]]:
    """One `fixed` group per node, ids from `first_id`, so each bench row pins one node."""
    return [{"name": f"g_{n}", "id": first_id + i, "policy": "fixed", "fixed_index": 0,
             "nodes": [n], "check": {}} for i, n in enumerate(nodes)]


def measure_relay(lab: Lab, manifest: dict[str, Any], rows: tuple[str, ...], mib: int, repeat: int,
                  results: dict[str, list[float]], cpu: dict[str, float], first_id: int = 10) -> None:
    """iperf3 through the relay (copy path) once per row, row i routed to outbound first_id + i
    (the groups of `fixed_groups`); fills `results` (Gbit/s per run) and `cpu` (relay thread s/GiB)."""
    gib = mib * repeat / 1024
    for i, name in enumerate(rows):
        config = RelayConfig(so_mark=RELAY_MARK, splice=False)

        # Bound as defaults: scenario runs within this pass of the loop, but B023 cannot know that.
        async def scenario(outbound_id: int = first_id + i,
                           config: RelayConfig = config) -> tuple[list[float], float]:
            gateway = Gateway.from_manifest(StaticRouter(outbound_id), manifest, config)
            await gateway.start(TPROXY_PORT, health_checks=False)
            try:
                before = thread_cpu()
                rates = [await iperf(lab, mib) for _ in range(repeat)]
                return rates, (thread_cpu() - before) / gib
            finally:
                await gateway.close()

        results[name], cpu[name] = lab.run(scenario, timeout=900)

def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lab = Lab().up_()
    results: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}
    gib = args.mib * args.repeat / 1024
    try:
        lab.danted(DANTE4)
        lab.ss_server([SS4], 8388, "aes-128-gcm", PASSWORD, bind=SS4)
        ca = trustme.CA()
        cert = ca.issue_cert(SNI, TROJAN4)
        key_file, cert_file, ca_file = lab.dir / "k.pem", lab.dir / "c.pem", lab.dir / "ca.pem"
        cert.private_key_pem.write_to_path(str(key_file))
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        ca.cert_pem.write_to_path(str(ca_file))
        os.environ["SSL_CERT_FILE"] = str(ca_file)
        client_context.cache_clear()
        lab.trojan_server(TROJAN_PORT, PASSWORD, cert_file, key_file)
        iperf_server = lab.start_peer("iperf3", lab.up, ["iperf3", "-s", "-B", SERVER4])
        lab.wait_listening(lab.up, SERVER4, 5201, iperf_server)
        nodes = NODES + [
            {**node("ss", "ss", SS4, 8388, None, PASSWORD), "cipher": "aes-128-gcm"},
            {**node("trojan", "trojan", TROJAN4, TROJAN_PORT, None, PASSWORD), "sni": SNI}]
        manifest = {"nodes": nodes, "groups": fixed_groups(["dante", "ss", "trojan"])}
        measure_relay(lab, manifest, ("relay -> danted (copy)", "relay -> ss aes-128-gcm", "relay -> trojan"),
                      args.mib, args.repeat, results, cpu)
        # ss-redir in the gateway namespace instead of the relay: nftables redirect, no tproxy.
        gw = f"--net=/run/netns/{lab.gw}"
        sh("nsenter", gw, "nft", "delete", "table", "inet", "relaylab")
        rules = lab.dir / "redir.nft"
        rules.write_text("table ip ssredir {\n  chain pre {\n"
                         "    type nat hook prerouting priority dstnat; policy accept;\n"
                         f'    iifname "g0" tcp dport 5201 redirect to :{REDIR_PORT}\n  }}\n}}\n')
        sh("nsenter", gw, "nft", "-f", str(rules))
        redir = lab.start_peer("ss-redir", lab.gw, ["ss-redir", "-s", SS4, "-p", "8388", "-l",
                                                    str(REDIR_PORT), "-b", "0.0.0.0", "-k",
                                                    PASSWORD, "-m", "aes-128-gcm"])
        lab.wait_listening(lab.gw, "10.77.1.1", REDIR_PORT, redir)

        async def via_redir() -> list[float]:
            return [await iperf(lab, args.mib) for _ in range(args.repeat)]

        before = proc_cpu(redir.proc.pid)
        results["ss-redir -> ss aes-128-gcm"] = lab.run(via_redir, timeout=900)
        cpu["ss-redir -> ss aes-128-gcm"] = (proc_cpu(redir.proc.pid) - before) / gib
    finally:
        lab.down()
    print(f"{args.mib} MiB per run, median of {args.repeat}:")
    for name, values in results.items():
        print(f"  {name:28s} {statistics.median(values):6.2f} Gbit/s   "
              f"({', '.join(f'{v:.2f}' for v in values)})   CPU {cpu[name]:.2f} s/GiB")


if __name__ == "__main__":
    main()
