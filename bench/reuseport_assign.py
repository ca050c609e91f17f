"""How bpf_sk_assign picks a socket when the tproxy port is a SO_REUSEPORT group (issue 15).

    .venv/bin/python -m bench.reuseport_assign [--sockets 2] [--tcp 2000] [--clients 200] [--dsts 8]

The compiled program in a lab's gateway namespace, attached as the runtime attaches it, but
with no runtime: this script's inner half (run there) opens `--sockets` transparent TCP
listeners and as many transparent UDP sockets on the tproxy port, all SO_REUSEPORT and guarded
by tproxy_guard, and records which socket gets each connection and datagram. From the client
namespace: `--tcp` connections (distinct source ports) to one proxied destination, and from
each of `--clients` UDP sockets one datagram to each of `--dsts` proxied destinations, twice.

It answers: are TCP connections spread over the group (and how evenly)? Does a UDP client's
traffic stay on one socket (what a full-cone session needs), or does the destination take
part in the choice? Is a given (client, destination) always on the same socket?
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import select
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

UDP_PORTS_FROM = 9001
TCP_PORT = 8081


def inner(build_dir: str, state: str, n: int) -> int:
    """In the gateway namespace: load, open the sockets, attach, count until stdin closes."""
    from dae_py.contract.manifest import Attach
    from dae_py.runtime.bpf import BpfObject
    from dae_py.runtime.build import Build, load_tables
    from dae_py.runtime.datapath import Datapath
    from dae_py.runtime.relay.listen import transparent_socket
    from dae_py.runtime.relay.udp import ANC_SIZE, orig_dst

    build = Build.open(build_dir)
    g = build.manifest.settings
    obj = BpfObject(build.object_path)
    obj.load()
    load_tables(obj, build)
    guard = obj.program_fd(build.manifest.program(Attach.TPROXY_SOCKET).name)
    mark = g.so_mark or 0x800000
    tcp = [transparent_socket(socket.SOCK_STREAM, "0.0.0.0", g.tproxy_port, so_mark=mark, guard_fd=guard,
                              reuseport=True) for _ in range(n)]
    for s in tcp:
        s.listen(4096)
    udp = [transparent_socket(socket.SOCK_DGRAM, "0.0.0.0", g.tproxy_port, so_mark=mark, guard_fd=guard,
                              recv_orig_dst=True, reuseport=True) for _ in range(n)]
    dp = Datapath(lan=list(g.lan_interface), wan=None, fwmark=g.fwmark, table=g.route_table, state_path=state)
    m = build.manifest
    dp.setup(obj.program_fd(m.program(Attach.LAN_INGRESS).name),
             ingress_l3_fd=obj.program_fd(m.program(Attach.LAN_INGRESS_L3).name))
    tcp_hits: list[list[Any]] = []  # [socket, client port]
    udp_hits: list[list[Any]] = []  # [socket, client "ip:port", destination "ip:port"]
    try:
        print("ready", flush=True)
        index = {s.fileno(): ("tcp", i) for i, s in enumerate(tcp)}
        index |= {s.fileno(): ("udp", i) for i, s in enumerate(udp)}
        socks = {s.fileno(): s for s in tcp + udp}
        while True:
            ready, _, _ = select.select([sys.stdin.fileno(), *socks], [], [], 1.0)
            if sys.stdin.fileno() in ready and not sys.stdin.readline():
                break
            for fd in ready:
                if fd == sys.stdin.fileno():
                    continue
                s = socks[fd]
                kind, i = index[fd]
                if kind == "tcp":
                    conn, peer = s.accept()
                    tcp_hits.append([i, peer[1]])
                    conn.close()
                else:
                    _data, anc, _flags, src = s.recvmsg(2048, ANC_SIZE)
                    dst = orig_dst(anc)
                    udp_hits.append([i, f"{src[0]}:{src[1]}", f"{dst[0]}:{dst[1]}" if dst else "?"])
    finally:
        dp.teardown()
        obj.close()
    print(json.dumps({"tcp": tcp_hits, "udp": udp_hits}), flush=True)
    return 0


def client(host: str, n_tcp: int, n_clients: int, n_dsts: int) -> int:
    """In the client namespace: the connections and datagrams."""
    for _ in range(n_tcp):
        with socket.create_connection((host, TCP_PORT), timeout=5):
            pass
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(n_clients)]
    for _round in range(2):
        for s in socks:
            for d in range(n_dsts):
                s.sendto(b"x", (host, UDP_PORTS_FROM + d))
            time.sleep(0.001)
    time.sleep(0.5)
    print("sent", flush=True)
    return 0


def analyse(hits: dict[str, Any], n: int) -> dict[str, Any]:
    tcp = collections.Counter(i for i, _ in hits["tcp"])
    per_client: dict[str, set[int]] = collections.defaultdict(set)
    per_pair: dict[tuple[str, str], set[int]] = collections.defaultdict(set)
    udp: collections.Counter[int] = collections.Counter()
    for i, src, dst in hits["udp"]:
        per_client[src].add(i)
        per_pair[(src, dst)].add(i)
        udp[i] += 1
    return {"tcp_per_socket": [tcp.get(i, 0) for i in range(n)],
            "udp_datagrams_per_socket": [udp.get(i, 0) for i in range(n)],
            "udp_clients": len(per_client),
            "udp_clients_on_one_socket": sum(1 for v in per_client.values() if len(v) == 1),
            "udp_pairs": len(per_pair),
            "udp_pairs_always_same_socket": sum(1 for v in per_pair.values() if len(v) == 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sockets", type=int, default=2)
    ap.add_argument("--tcp", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=200)
    ap.add_argument("--dsts", type=int, default=8)
    ap.add_argument("--inner", nargs=2, metavar=("BUILD", "STATE"), help=argparse.SUPPRESS)
    ap.add_argument("--client", metavar="HOST", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.inner:
        return inner(args.inner[0], args.inner[1], args.sockets)
    if args.client:
        return client(args.client, args.tcp, args.clients, args.dsts)

    from dae_py.runtime.lab import Lab
    from dae_py.runtime.lab.gateway_proc import compile_build, lab_config

    root = Path(__file__).resolve().parents[1]
    with Lab("benchrpa") as lab, tempfile.TemporaryDirectory(prefix="bench-rpa-") as tmp:
        t = lab.topo
        rules = [f"dip({t.upstream_ip4}) && l4proto(tcp) && dport({TCP_PORT}) -> proxy",
                 f"dip({t.upstream_ip4}) && l4proto(udp) -> proxy"]
        (Path(tmp) / "config.yaml").write_text(lab_config(t, rules=rules))
        compile_build(Path(tmp) / "config.yaml", Path(tmp) / "build")
        env = {**os.environ, "PYTHONPATH": str(root)}
        gw = lab.popen("gateway", [sys.executable, "-m", "bench.reuseport_assign", "--sockets", str(args.sockets),
                                   "--inner", str(Path(tmp) / "build"), str(Path(tmp) / "state.json")],
                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root, env=env)
        assert gw.stdin is not None and gw.stdout is not None
        line = gw.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError(f"inner half did not start: {line!r}")
        r = lab.run("client", [sys.executable, "-m", "bench.reuseport_assign", "--client", t.upstream_ip4,
                               "--tcp", str(args.tcp), "--clients", str(args.clients), "--dsts", str(args.dsts)],
                    timeout=600, cwd=root, env=env)
        if r.returncode:
            raise RuntimeError(f"client failed: {r.stderr[-2000:]}")
        gw.stdin.close()
        hits = json.loads(gw.stdout.readline())
        gw.wait(timeout=30)
    res = analyse(hits, args.sockets)
    print(f"kernel {os.uname().release}; {args.sockets} SO_REUSEPORT sockets per protocol on the tproxy port")
    print(f"  tcp: {sum(res['tcp_per_socket'])} connections, per listener {res['tcp_per_socket']}")
    print(f"  udp: {sum(res['udp_datagrams_per_socket'])} datagrams, per socket {res['udp_datagrams_per_socket']}; "
          f"{res['udp_clients_on_one_socket']}/{res['udp_clients']} clients (each to {args.dsts} destinations) "
          f"had all their datagrams on one socket; {res['udp_pairs_always_same_socket']}/{res['udp_pairs']} "
          f"(client, destination) pairs always on the same socket")
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
