"""Encrypted-proxy throughput of two checkouts' relays beside the reference clients, in one lab
run with interleaved rounds (run by hand, as root):

    .venv/bin/python -m bench.proxy_ab --a /work/wt-base --b . --suite ss --mib 128 --rounds 3
    .venv/bin/python -m bench.proxy_ab --a /work/wt-base --b . --suite vmess --mib 128 --rounds 3
    .venv/bin/python -m bench.proxy_ab --a . --b . --env-b MALLOC_TRIM_THRESHOLD_=67108864 --suite ss  # a tunable

Each relay runs as its own process from its own checkout (`TREE/.venv/bin/python` with TREE as
the working directory, inside the gateway namespace), so A and B share one lab, one set of
servers and one iperf3 server; every round runs every row once, the order rotating per round so
that drift of a shared machine falls on all rows alike. Rows:

- `--suite ss`: relay A, relay B, ss-redir (-T, the same tproxy rule) and v2ray 4.34's
  shadowsocks client (dokodemo-door tproxy inbound), each to shadowsocks-libev's ss-server
  (aes-128-gcm; one single-threaded process) and, as a second server, to v2ray 4.34's
  shadowsocks inbound (Go: uses both cores), so a cap set by ss-server shows as such.
- `--suite vmess`: relay A, relay B and v2ray 4.34's own client (dokodemo-door tproxy) to the
  same v2ray 4.34 VMess aes-128-gcm (TCP) inbound; `--vless` adds VLESS over TLS; `--trojan`
  adds relay A, relay B and v2ray 4.34's trojan client to Debian's trojan server (TLS 1.3).

`--conns N`: instead of iperf3, N sequential connections per row and round from the client to
an echo server in the upstream namespace (connect, one byte each way, close), and each row's
CPU per connection (the client process's user + system over the N connections: handshake
included), with a SOCKS5 suite (relay A, relay B -> danted) beside the protocol suites.

Printed per row: the median Gbit/s, each round's figure, CPU seconds per GiB of the client
process (user + system) and of the server process, and the per-round ratios B/A, B/ss-redir,
B/v2ray (the median of each round's ratio: the one to trust on a noisy machine).
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import trustme

from dae_py.runtime.lab.nsutil import socket_in_netns
from tests.proxy.bench_vmess import v2ray_client
from tests.proxy.test_proxy_lab import TROJAN4, TROJAN_PASSWORD, TROJAN_PORT, TROJAN_SNI, trojan_node
from tests.proxy.test_vmess_lab import PORTS, SNI, UUID, V2RAY4, v2_node, v2ray_server
from tests.relay.bench_proxy import fixed_groups, proc_cpu
from tests.relay.bench_relay import iperf
from tests.relay.conftest import node
from tests.relay.lab import RELAY_MARK, SERVER4, TPROXY_PORT, Lab, Peer

SS_LIBEV4, SS_V2RAY4, SS_PORT, PASSWORD = "10.77.2.30", "10.77.2.31", 8388, "bench-pw"
DANTE4, ECHO_PORT = "10.77.2.35", 7007
# The --conns target: one byte back per byte, each connection its own accept
ECHO = """\
import socket, sys
srv = socket.create_server((sys.argv[1], int(sys.argv[2])), backlog=512)
while True:
    c, _ = srv.accept()
    c.settimeout(2)  # a connection that never sends (a stray probe) holds the loop 2 s at most
    try:
        d = c.recv(64)
        if d:
            c.sendall(d)
    except OSError:
        pass
    c.close()
"""
METHOD = "aes-128-gcm"

# The relay process each checkout runs: only APIs both trees have (Gateway, RelayConfig,
# StaticRouter), the manifest and the outbound id from the command line, "ready" once listening.
RUNNER = """\
import asyncio, json, sys
import uvloop
from dae_py.runtime.relay import Gateway, RelayConfig, StaticRouter

async def main() -> None:
    manifest = json.loads(open(sys.argv[1]).read())
    config = RelayConfig(so_mark=int(sys.argv[3]), splice=False)
    gateway = Gateway.from_manifest(StaticRouter(int(sys.argv[2])), manifest, config)
    await gateway.start(int(sys.argv[4]), health_checks=False)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    await gateway.close()

uvloop.run(main())
"""


class Client:
    """One row: its figures over the rounds (the client's and the server's CPU per GiB)."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.rates: list[float] = []
        self.cpu: list[float] = []
        self.server_cpu: list[float] = []


def relay_process(lab: Lab, tree: Path, manifest: Path, outbound: int,
                  env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    runner = lab.dir / "runner.py"
    if not runner.exists():
        runner.write_text(RUNNER)
    proc = subprocess.Popen(
        ["nsenter", f"--net=/run/netns/{lab.gw}", str(tree / ".venv/bin/python"), str(runner),
         str(manifest), str(outbound), str(RELAY_MARK), str(TPROXY_PORT)],
        cwd=tree, env={**os.environ, **(env or {})}, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        stderr=open(lab.dir / "runner.log", "ab"))
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if line.strip() != b"ready":
        proc.kill()
        raise RuntimeError(f"relay of {tree} did not start: {(lab.dir / 'runner.log').read_text()[-2000:]}")
    return proc


def stop_relay(proc: subprocess.Popen[bytes]) -> None:
    assert proc.stdin is not None
    proc.stdin.write(b"\n")
    proc.stdin.flush()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def run_peer(lab: Lab, name: str, argv: list[str], wait_ip: str = "127.0.0.1") -> Peer:
    peer = lab.start_peer(name, lab.gw, argv)
    lab.wait_listening(lab.gw, wait_ip, TPROXY_PORT, peer)
    return peer


def measure(lab: Lab, row: Client, server_pid: int, mib: int, start: Callable[[], Any],
            stop: Callable[[Any], None], pid_of: Callable[[Any], int], conns: int = 0) -> None:
    """One run of `row`: iperf3 for `mib` MiB (rates in Gbit/s, CPU in s per GiB) or, with
    `conns`, that many sequential echo connections (rates in connections/s, CPU in us each)."""
    handle = start()
    try:
        pid = pid_of(handle)
        if conns:
            connect_loop(lab, 20)  # warm: the first connections pay node and pool set-up
        before, server_before = proc_cpu(pid), proc_cpu(server_pid)
        if conns:
            elapsed = connect_loop(lab, conns)
            row.rates.append(conns / elapsed)
            row.cpu.append((proc_cpu(pid) - before) / conns * 1e6)
            row.server_cpu.append((proc_cpu(server_pid) - server_before) / conns * 1e6)
            return

        async def once() -> float:
            return await iperf(lab, mib)

        rate = lab.run(once, timeout=600)
        gib = mib / 1024
        row.rates.append(rate)
        row.cpu.append((proc_cpu(pid) - before) / gib)
        row.server_cpu.append((proc_cpu(server_pid) - server_before) / gib)
    finally:
        stop(handle)


def connect_loop(lab: Lab, n: int) -> float:
    """`n` connections one after another from the client namespace to the echo server, each
    one byte there and back; the seconds they took. A connection that fails raises."""
    t0 = time.perf_counter()
    for i in range(n):
        with socket_in_netns(lab.client, socket.AF_INET, socket.SOCK_STREAM) as s:
            s.settimeout(10)
            s.connect((SERVER4, ECHO_PORT))
            s.sendall(b"x")
            if s.recv(1) != b"x":
                raise RuntimeError(f"connection {i}: no echo through the proxy")
    return time.perf_counter() - t0


def stop_peer(lab: Lab) -> Callable[[Peer], None]:
    def stop(peer: Peer) -> None:
        peer.stop()
        lab.peers.remove(peer)
    return stop


def report(title: str, rows: list[Client], base: str, refs: list[str], conns: int = 0) -> None:
    print(f"\n{title}")
    by = {r.name: r for r in rows}
    rate_unit, cpu_unit = ("conn/s", "us/conn") if conns else ("Gbit/s", "s/GiB")
    per = "per connection" if conns else "per GiB"
    for r in rows:
        runs = ", ".join(f"{v:.2f}" for v in r.rates)
        print(f"  {r.name:34s} {statistics.median(r.rates):6.2f} {rate_unit} ({runs})"
              f"  client CPU {statistics.median(r.cpu):5.2f} {cpu_unit}"
              f"  server CPU {statistics.median(r.server_cpu):5.2f} {cpu_unit}")
    b = by[base]
    for ref in refs:
        other = by[ref]
        rate = statistics.median(x / y for x, y in zip(b.rates, other.rates, strict=True))
        cpu = statistics.median(x / y for x, y in zip(b.cpu, other.cpu, strict=True))
        print(f"  {base} / {ref}: {rate_unit} {rate:.2f}x, CPU {per} {cpu:.2f}x (median of per-round ratios)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--a", type=Path, required=True, help="the 'before' checkout (with its own .venv)")
    ap.add_argument("--b", type=Path, required=True, help="the 'after' checkout")
    ap.add_argument("--suite", choices=("ss", "vmess"), default="ss")
    ap.add_argument("--mib", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--vless", action="store_true", help="vmess suite: VLESS over TLS rows too")
    ap.add_argument("--trojan", action="store_true", help="vmess suite: Trojan rows too (Debian's trojan server)")
    ap.add_argument("--servers", default="libev,v2ray", help="ss suite: libev, v2ray or both")
    ap.add_argument("--conns", type=int, default=0,
                    help="CPU per new connection: this many sequential echo connections per run instead of iperf3")
    ap.add_argument("--env-b", action="append", default=[], metavar="NAME=VALUE",
                    help="an environment variable for B's relay only (e.g. a malloc tunable)")
    args = ap.parse_args()
    trees = {"A": args.a.resolve(), "B": args.b.resolve()}
    print(f"A = {trees['A']}\nB = {trees['B']} {' '.join(args.env_b)}\nload before {os.getloadavg()}", flush=True)
    lab = Lab().up_()
    try:
        iperf_server = lab.start_peer("iperf3", lab.up, ["iperf3", "-s", "-B", SERVER4])
        lab.wait_listening(lab.up, SERVER4, 5201, iperf_server)
        envs = {"A": {}, "B": dict(item.split("=", 1) for item in args.env_b)}
        suites: list[Suite] = []
        if args.conns:
            echo = lab.start_peer("echo", lab.up, [sys.executable, "-c", ECHO, SERVER4, str(ECHO_PORT)])
            lab.wait_listening(lab.up, SERVER4, ECHO_PORT, echo)
            suites.append(socks5_suite(lab, trees, envs))
        if args.suite == "ss":
            suites += ss_suites(lab, trees, envs, args.servers.split(","))
        else:
            suites += vmess_suites(lab, trees, envs, args.vless, args.trojan)
        for i in range(args.rounds):
            for title, rows, server_pid, _base, _refs in suites:
                order = rows[i % len(rows):] + rows[:i % len(rows)]
                for row, (start, stop, pid_of) in order:
                    measure(lab, row, server_pid, args.mib, start, stop, pid_of, args.conns)
                    units = ("conn/s", "us/conn") if args.conns else ("Gbit/s", "s/GiB")
                    print(f"round {i + 1} {title}: {row.name} {row.rates[-1]:.2f} {units[0]} "
                          f"CPU {row.cpu[-1]:.2f} {units[1]} (server {row.server_cpu[-1]:.2f})", flush=True)
    finally:
        lab.down()
    what = f"{args.conns} sequential connections" if args.conns else f"{args.mib} MiB"
    print(f"\n{what} per run, {args.rounds} rounds; load after {os.getloadavg()}")
    for title, rows, _pid, base, refs in suites:
        report(title, [r for r, _ in rows], base, refs, args.conns)


Row = tuple[Client, tuple[Callable[[], Any], Callable[[Any], None], Callable[[Any], int]]]
Suite = tuple[str, list[Row], int, str, list[str]]


def relay_rows(lab: Lab, trees: dict[str, Path], envs: dict[str, dict[str, str]],
               nodes: list[dict[str, Any]], tag: str) -> list[Row]:
    manifest = lab.dir / f"manifest-{tag}.json"
    manifest.write_text(json.dumps({"nodes": nodes, "groups": fixed_groups([nodes[0]["name"]])}))
    rows: list[Row] = []
    for which, tree in trees.items():
        def start(tree: Path = tree, env: dict[str, str] = envs[which]) -> subprocess.Popen[bytes]:
            return relay_process(lab, tree, manifest, 10, env)

        def pid_of(proc: subprocess.Popen[bytes]) -> int:
            return proc.pid

        rows.append((Client(f"relay {which}"), (start, stop_relay, pid_of)))
    return rows


def peer_row(lab: Lab, name: str, argv: list[str], wait_ip: str = "127.0.0.1") -> Row:
    def start() -> Peer:
        return run_peer(lab, name.replace(" ", "-"), argv, wait_ip)

    def pid_of(peer: Peer) -> int:
        return peer.proc.pid

    return (Client(name), (start, stop_peer(lab), pid_of))


def socks5_suite(lab: Lab, trees: dict[str, Path], envs: dict[str, dict[str, str]]) -> Suite:
    """Relay A and B to danted: the SOCKS5 baseline the protocols' per-connection CPU is set beside."""
    server = lab.danted(DANTE4)
    rows = relay_rows(lab, trees, envs, [node("socks5", "socks5", DANTE4, 1080, None, None)], "socks5")
    return ("socks5 -> danted", rows, server.proc.pid, "relay B", ["relay A"])


def ss_suites(lab: Lab, trees: dict[str, Path], envs: dict[str, dict[str, str]], servers: list[str]) -> list[Suite]:
    suites: list[Suite] = []
    for server in servers:
        if server == "libev":
            ip = SS_LIBEV4
            peer = lab.ss_server([ip], SS_PORT, METHOD, PASSWORD, bind=ip)
        else:
            ip = SS_V2RAY4
            peer = lab.v2ray_ss_server(ip, SS_PORT, METHOD, PASSWORD)
        ss_node = {**node(f"ss_{server}", "ss", ip, SS_PORT, None, PASSWORD), "cipher": METHOD}
        conf = lab.dir / f"v2ray-ss-client-{server}.json"
        conf.write_text(json.dumps(v2ray_client({"protocol": "shadowsocks", "settings": {"servers": [
            {"address": ip, "port": SS_PORT, "method": METHOD, "password": PASSWORD}]}})))
        rows = relay_rows(lab, trees, envs, [ss_node], server) + [
            peer_row(lab, "ss-redir", ["ss-redir", "-T", "-s", ip, "-p", str(SS_PORT), "-l", str(TPROXY_PORT),
                                       "-b", "0.0.0.0", "-k", PASSWORD, "-m", METHOD]),
            peer_row(lab, "v2ray ss client", ["v2ray", "-config", str(conf)])]
        name = "ss-server (shadowsocks-libev)" if server == "libev" else "v2ray 4.34 shadowsocks inbound"
        suites.append((f"Shadowsocks {METHOD} -> {name}", rows, peer.proc.pid, "relay B",
                       ["relay A", "ss-redir", "v2ray ss client"]))
    return suites


def vmess_suites(lab: Lab, trees: dict[str, Path], envs: dict[str, dict[str, str]], vless: bool,
                 trojan: bool = False) -> list[Suite]:
    ca = trustme.CA()
    cert = ca.issue_cert(SNI, V2RAY4)
    key_file, cert_file, ca_file = lab.dir / "k.pem", lab.dir / "c.pem", lab.dir / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    ca.cert_pem.write_to_path(str(ca_file))
    os.environ["SSL_CERT_FILE"] = str(ca_file)  # the relay processes inherit it
    v2ray_server(lab, str(cert_file), str(key_file))
    server_pid = lab.peers[-1].proc.pid
    cases: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
        ("vmess", v2_node("vmess", "vmess", "tcp", security=METHOD),
         {"protocol": "vmess", "settings": {"vnext": [{
             "address": V2RAY4, "port": PORTS[("vmess", "tcp")],
             "users": [{"id": UUID, "alterId": 0, "security": METHOD}]}]}})]
    if vless:
        cases.append(("vless-tls", v2_node("vless_tls", "vless", "tls"),
                      {"protocol": "vless", "settings": {"vnext": [{
                          "address": V2RAY4, "port": PORTS[("vless", "tls")],
                          "users": [{"id": UUID, "encryption": "none"}]}]},
                       "streamSettings": {"network": "tcp", "security": "tls",
                                          "tlsSettings": {"serverName": SNI, "allowInsecure": True}}}))
    suites: list[Suite] = []
    if trojan:
        suites.append(trojan_suite(lab, trees, envs, ca))
    for tag, v2node, outbound in cases:
        conf = lab.dir / f"v2ray-client-{tag}.json"
        conf.write_text(json.dumps(v2ray_client(outbound)))
        rows = relay_rows(lab, trees, envs, [v2node], tag) + [
            peer_row(lab, "v2ray client", ["v2ray", "-config", str(conf)])]
        suites.append((f"{tag} -> v2ray 4.34", rows, server_pid, "relay B", ["relay A", "v2ray client"]))
    return suites


def trojan_suite(lab: Lab, trees: dict[str, Path], envs: dict[str, dict[str, str]], ca: trustme.CA) -> Suite:
    """Relay A, relay B and v2ray 4.34's trojan outbound, each to Debian's trojan (trojan-gfw)
    with a certificate of `ca` (which the relays trust through SSL_CERT_FILE)."""
    cert = ca.issue_cert(TROJAN_SNI, TROJAN4)
    key_file, cert_file = lab.dir / "trojan-k.pem", lab.dir / "trojan-c.pem"
    cert.private_key_pem.write_to_path(str(key_file))
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    server = lab.trojan_server(TROJAN_PORT, TROJAN_PASSWORD, cert_file, key_file)
    conf = lab.dir / "v2ray-client-trojan.json"
    conf.write_text(json.dumps(v2ray_client({
        "protocol": "trojan",
        "settings": {"servers": [{"address": TROJAN4, "port": TROJAN_PORT, "password": TROJAN_PASSWORD}]},
        "streamSettings": {"network": "tcp", "security": "tls",
                           "tlsSettings": {"serverName": TROJAN_SNI, "allowInsecure": True}}})))
    rows = relay_rows(lab, trees, envs, [trojan_node("trojan", TROJAN4)], "trojan") + [
        peer_row(lab, "v2ray client", ["v2ray", "-config", str(conf)])]
    return ("trojan -> trojan (Debian)", rows, server.proc.pid, "relay B", ["relay A", "v2ray client"])


if __name__ == "__main__":
    main()
