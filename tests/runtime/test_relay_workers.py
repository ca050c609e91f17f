"""`global.relay_workers: 2`: TCP flows carried by two worker processes sharing the tproxy port.

One lab and one runtime for the module. The kernel spreads connections over the workers'
listeners (bpf_sk_assign into a SO_REUSEPORT group); a worker killed with SIGKILL is started
again without touching the other's flows; a reload reaches both; the stop leaves no process.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from .helpers import Gw, Lab, client_get, flow_lines, gateway, lab_config, parse_exit_stats, runtime_lab, wait_for

pytestmark = pytest.mark.root

ECHO_PORT = 8090
WORKER_RE = re.compile(r"\[w(\d)\] dae\.worker: worker \d \(pid (\d+)\): relaying tcp", re.M)
FLOW_WORKER_RE = re.compile(r"\[w(\d)\] runtime\.relay\.tcp: tcp \S+:(\d+) -> ", re.M)


class EchoServer:
    """A TCP echo server in upstream, for flows that stay open across a worker's death."""

    def __init__(self, lab: Lab, port: int) -> None:
        self.sock = lab.socket("upstream", socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((lab.topo.upstream_ip4, port))
        self.sock.listen(256)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True, name="echo")
        self.thread.start()

    def _serve(self) -> None:
        conns: list[socket.socket] = []
        while not self.stop.is_set():
            ready, _, _ = select.select([self.sock, *conns], [], [], 0.1)
            for s in ready:
                if s is self.sock:
                    conns.append(self.sock.accept()[0])
                    continue
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                if data:
                    s.sendall(data)
                else:
                    conns.remove(s)
                    s.close()
        for s in conns:
            s.close()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def config(lab: Lab, rules: list[str]) -> str:
    return lab_config(lab.topo, rules=rules, extra_global="  relay_workers: 2")


RULES = ["dport(8081) -> proxy", f"dport({ECHO_PORT}) -> proxy"]


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        lab.start_danted(1080)
        lab.start_http_peer(8081)
        lab.start_http_peer(8082)
        yield lab


@pytest.fixture(scope="module")
def echo(lab: Lab) -> Iterator[EchoServer]:
    server = EchoServer(lab, ECHO_PORT)
    yield server
    server.close()


@pytest.fixture(scope="module")
def gw(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    with gateway(lab, config(lab, RULES), tmp_path_factory.mktemp("workers")) as g:
        yield g


def workers(gw: Gw) -> dict[int, int]:
    """Worker index -> its latest pid, from the log."""
    return {int(i): int(pid) for i, pid in WORKER_RE.findall(gw.log_text())}


def flow_workers(text: str) -> dict[int, int]:
    """The client's source port -> the worker that logged its flow."""
    return {int(port): int(i) for i, port in FLOW_WORKER_RE.findall(text)}


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_both_workers_receive_connections(lab: Lab, gw: Gw) -> None:
    assert sorted(workers(gw)) == [0, 1]
    since = gw.log_len()
    ports = [client_get(lab, lab.topo.upstream_ip4, 8081)["client_port"] for _ in range(40)]
    wait_for(lambda: len(flow_lines(gw.log_text()[since:])) >= 40, timeout=5)
    by_worker = flow_workers(gw.log_text()[since:])
    assert set(ports) <= set(by_worker)
    counts = [sum(1 for p in ports if by_worker[p] == w) for w in (0, 1)]
    assert min(counts) >= 5, counts  # 40 hashed flows: each worker gets some (p ~ 1e-6 of fewer)
    assert all(f.outbound == "proxy" for f in flow_lines(gw.log_text()[since:]))


def _echo_flows(lab: Lab, n: int) -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = lab.socket("client", socket.AF_INET)
        s.settimeout(5)
        s.connect((lab.topo.upstream_ip4, ECHO_PORT))
        s.sendall(b"hello")
        assert s.recv(5) == b"hello"
        socks.append(s)
    return socks


def test_killed_worker_is_restarted_and_the_other_keeps_its_flows(lab: Lab, gw: Gw, echo: EchoServer) -> None:
    since = gw.log_len()
    socks = _echo_flows(lab, 24)
    try:
        wait_for(lambda: len(flow_workers(gw.log_text()[since:])) >= 24, timeout=5)
        owner = flow_workers(gw.log_text()[since:])
        by_sock = {s: owner[s.getsockname()[1]] for s in socks}
        assert set(by_sock.values()) == {0, 1}, by_sock
        victim = workers(gw)[0]
        os.kill(victim, signal.SIGKILL)
        gw.wait_log(rf"relay worker 0 \(pid {victim}\) exited with SIGKILL", timeout=5, since=since)
        for s, w in by_sock.items():
            if w == 1:  # untouched: still echoes
                s.sendall(b"still there")
                assert s.recv(11) == b"still there"
            else:  # its relay went with the worker: the client sees the end
                s.settimeout(2)
                try:
                    assert s.recv(16) == b""
                except ConnectionResetError:
                    pass
        wait_for(lambda: workers(gw).get(0) not in (None, victim), timeout=10)
        assert not alive(victim)
        # the restarted worker takes its share again
        later = gw.log_len()
        ports = [client_get(lab, lab.topo.upstream_ip4, 8081)["client_port"] for _ in range(24)]
        wait_for(lambda: set(ports) <= set(flow_workers(gw.log_text()[later:])), timeout=5)
        assert {flow_workers(gw.log_text()[later:])[p] for p in ports} == {0, 1}
    finally:
        for s in socks:
            s.close()


def test_reload_reaches_every_worker(lab: Lab, gw: Gw) -> None:
    since = gw.log_len()
    new_config = config(lab, ["dport(8082) -> proxy", *RULES])
    gw.config_path.write_text(new_config)
    proc = subprocess.run([sys.executable, "-m", "dae_py.compiler.cli", "-q", "-o", str(gw.build_dir),
                           str(gw.config_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = subprocess.run([*gw.argv("reload", str(gw.build_dir), "--state", str(gw.state_path))],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
    gw.wait_log(r"\[w0\] dae\.worker: worker 0: now routing", since=since)
    gw.wait_log(r"\[w1\] dae\.worker: worker 1: now routing", since=since)
    later = gw.log_len()
    ports = [client_get(lab, lab.topo.upstream_ip4, 8082)["client_port"] for _ in range(16)]
    wait_for(lambda: set(ports) <= set(flow_workers(gw.log_text()[later:])), timeout=5)
    flows = [f for f in flow_lines(gw.log_text()[later:]) if f.dst.endswith(":8082")]
    assert len(flows) == 16 and all(f.outbound == "proxy" and f.rule == 0 for f in flows)


def test_stop_leaves_no_worker_behind(tmp_path: Path) -> None:
    """A lab of its own: the module's runtime must not share a namespace with a second one."""
    for lab in runtime_lab():
        lab.start_danted(1080)
        lab.start_http_peer(8081)
        with gateway(lab, config(lab, RULES), tmp_path) as g:
            pids = list(workers(g).values())
            assert len(pids) == 2 and all(alive(p) for p in pids)
            client_get(lab, lab.topo.upstream_ip4, 8081)
    deadline = time.monotonic() + 5
    while any(alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(p) for p in pids)
    assert "worker 0: stopped" in g.log_text() and "worker 1: stopped" in g.log_text()
    _kernel, relay = parse_exit_stats(g.log_text())
    assert relay.get("proxy") == 1  # the workers' last counters reached the exit line


def controller(gw: Gw, method: str, path: str) -> tuple[int, Any]:
    """One request to the controller's unix socket in the state directory (no secret there)."""
    with socket.socket(socket.AF_UNIX) as s:
        s.settimeout(5)
        try:
            s.connect(str(gw.state_path.parent / "controller.sock"))
        except (FileNotFoundError, ConnectionRefusedError):  # not listening yet
            return 0, None
        s.sendall(f"{method} {path} HTTP/1.1\r\nHost: dae\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split()[1])
    return status, json.loads(body) if body.startswith(b"{") else body.decode()


def test_controller_lists_and_closes_the_workers_flows_and_counts_them(lab: Lab, gw: Gw, echo: EchoServer) -> None:
    wait_for(lambda: controller(gw, "GET", "/connections")[0] == 200, timeout=10)  # started in the background
    before = _flows(controller(gw, "GET", "/dae/summary")[1])
    socks: list[socket.socket] = []
    try:
        # The workers keep a connection list once the main process tells them the controller
        # runs (within a second): flows opened before that are not listed, so try twice.
        for _attempt in range(2):
            socks += _echo_flows(lab, 8)
            ports = {str(s.getsockname()[1]): s for s in socks[-8:]}

            def listed(ports: dict[str, socket.socket] = ports) -> dict[str, Any]:
                body = controller(gw, "GET", "/connections")[1]
                return {c["metadata"]["sourcePort"]: c for c in body["connections"]
                        if c["metadata"]["sourcePort"] in ports}
            with contextlib.suppress(AssertionError):
                conns = wait_for(lambda: c if len(c := listed()) == 8 else None, timeout=3)
                break
        else:
            raise AssertionError("the workers' flows were never listed")
        port, one = next(iter(conns.items()))
        assert one["metadata"]["network"] == "tcp" and one["chains"][-1] == "proxy"
        assert one["upload"] == 5 and one["download"] == 5
        assert controller(gw, "DELETE", f"/connections/{one['id']}")[0] == 204
        ports[port].settimeout(5)
        assert ports[port].recv(100) == b""  # the worker closed it: the client sees the end
        wait_for(lambda: port not in listed(), timeout=3)
        assert len(listed()) == 7
    finally:
        for s in socks:
            s.close()
    # the workers' counters reach the main process's (the API's) within a report or two
    wait_for(lambda: _flows(controller(gw, "GET", "/dae/summary")[1]) >= before + len(socks), timeout=5)


def _flows(summary: dict[str, Any]) -> int:
    return sum(int(o.get("flows", 0)) for o in summary.get("outbounds", []) if o.get("name") == "proxy")


def test_a_second_runtime_on_the_port_is_refused_and_takes_no_flow(lab: Lab, gw: Gw, tmp_path: Path) -> None:
    """Its TCP listeners could join the workers' reuseport group (same user): it must fail
    before it makes them, at the UDP socket, which is not SO_REUSEPORT."""
    from dae_py.runtime.lab.gateway_proc import GatewayStartError

    second = Gw(lab, config(lab, RULES), tmp_path)
    with pytest.raises(GatewayStartError, match="Address already in use"):
        second.start(timeout=30)
    if second._log is not None:
        second._log.close()
    since = gw.log_len()
    ports = [client_get(lab, lab.topo.upstream_ip4, 8081)["client_port"] for _ in range(16)]
    wait_for(lambda: set(ports) <= set(flow_workers(gw.log_text()[since:])), timeout=5)
    assert "workers on port" not in second.log_text()
