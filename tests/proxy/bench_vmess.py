"""Throughput through VMess and VLESS nodes in the namespace lab (run by hand, as root):

    .venv/bin/python -m tests.proxy.bench_vmess [--mib 256] [--repeat 1]

iperf3 in the client namespace sends N MiB to iperf3 -s in the upstream namespace through the
same v2ray 4.34 server (test_vmess_lab's config), in one run: our relay -> VMess aes-128-gcm
over TCP, our relay -> VLESS over TLS, then v2ray 4.34's own client in the gateway namespace
(dokodemo-door tproxy inbound on the relay's port, the lab's nftables rule) with the same three
outbounds. Prints Gbit/s and CPU seconds per GiB: the relay's loop thread, or the v2ray client
process (user + system).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from typing import Any

import trustme

from dae_py.runtime.net.tls import client_context
from tests.relay.bench_proxy import fixed_groups, measure_relay, proc_cpu
from tests.relay.bench_relay import iperf
from tests.relay.lab import SERVER4, TPROXY_PORT, Lab

from .test_vmess_lab import PORTS, SNI, UUID, V2RAY4, WS_PATH, v2_node, v2ray_server


def v2ray_client(outbound: dict[str, Any]) -> dict[str, Any]:
    return {"log": {"loglevel": "warning"},
            "inbounds": [{"listen": "0.0.0.0", "port": TPROXY_PORT, "protocol": "dokodemo-door",
                          "settings": {"network": "tcp", "followRedirect": True},
                          "streamSettings": {"sockopt": {"tproxy": "tproxy"}}}],
            "outbounds": [outbound]}


VMESS_OUT = {"protocol": "vmess", "settings": {"vnext": [{
    "address": V2RAY4, "port": PORTS[("vmess", "tcp")],
    "users": [{"id": UUID, "alterId": 0, "security": "aes-128-gcm"}]}]}}
VLESS_TLS_OUT = {"protocol": "vless", "settings": {"vnext": [{
    "address": V2RAY4, "port": PORTS[("vless", "tls")], "users": [{"id": UUID, "encryption": "none"}]}]},
    "streamSettings": {"network": "tcp", "security": "tls",
                       "tlsSettings": {"serverName": SNI, "allowInsecure": True}}}

VMESS_WS_TLS_OUT = {"protocol": "vmess", "settings": {"vnext": [{
    "address": V2RAY4, "port": PORTS[("vmess", "ws+tls")],
    "users": [{"id": UUID, "alterId": 0, "security": "aes-128-gcm"}]}]},
    "streamSettings": {"network": "ws", "wsSettings": {"path": WS_PATH, "headers": {"Host": SNI}},
                       "security": "tls", "tlsSettings": {"serverName": SNI, "allowInsecure": True}}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=1)
    args = parser.parse_args()
    lab = Lab().up_()
    results: dict[str, list[float]] = {}
    cpu: dict[str, float] = {}
    gib = args.mib * args.repeat / 1024
    try:
        ca = trustme.CA()
        cert = ca.issue_cert(SNI, V2RAY4)
        key_file, cert_file, ca_file = lab.dir / "k.pem", lab.dir / "c.pem", lab.dir / "ca.pem"
        cert.private_key_pem.write_to_path(str(key_file))
        cert.cert_chain_pems[0].write_to_path(str(cert_file))
        ca.cert_pem.write_to_path(str(ca_file))
        os.environ["SSL_CERT_FILE"] = str(ca_file)
        client_context.cache_clear()
        v2ray_server(lab, str(cert_file), str(key_file))
        iperf_server = lab.start_peer("iperf3", lab.up, ["iperf3", "-s", "-B", SERVER4])
        lab.wait_listening(lab.up, SERVER4, 5201, iperf_server)
        nodes = [v2_node("vmess", "vmess", "tcp", security="aes-128-gcm"), v2_node("vless_tls", "vless", "tls"),
                 v2_node("vmess_ws_tls", "vmess", "ws+tls", security="aes-128-gcm")]
        manifest = {"nodes": nodes, "groups": fixed_groups([n["name"] for n in nodes])}
        measure_relay(lab, manifest, ("relay -> vmess aes-128-gcm", "relay -> vless tls",
                                      "relay -> vmess aes-128-gcm ws+tls"), args.mib, args.repeat, results, cpu)
        for tag, name, outbound in (("vmess", "v2ray client -> vmess aes-128-gcm", VMESS_OUT),
                                    ("vless", "v2ray client -> vless tls", VLESS_TLS_OUT),
                                    ("vmess-ws", "v2ray client -> vmess aes-128-gcm ws+tls", VMESS_WS_TLS_OUT)):
            conf = lab.dir / f"client-{tag}.json"
            conf.write_text(json.dumps(v2ray_client(outbound)))
            client = lab.start_peer(f"v2ray-client-{tag}", lab.gw,
                                    ["v2ray", "-config", str(conf)])
            lab.wait_listening(lab.gw, "127.0.0.1", TPROXY_PORT, client)

            async def via_v2ray() -> list[float]:
                return [await iperf(lab, args.mib) for _ in range(args.repeat)]

            before = proc_cpu(client.proc.pid)
            results[name] = lab.run(via_v2ray, timeout=900)
            cpu[name] = (proc_cpu(client.proc.pid) - before) / gib
            client.stop()
            lab.peers.remove(client)
    finally:
        lab.down()
    print(f"{args.mib} MiB per run, median of {args.repeat}; load {os.getloadavg()}:")
    for name, values in results.items():
        print(f"  {name:34s} {statistics.median(values):6.2f} Gbit/s   "
              f"({', '.join(f'{v:.2f}' for v in values)})   CPU {cpu[name]:.2f} s/GiB")


if __name__ == "__main__":
    main()
