"""Atomic reload in the lab (issue 14): the real `dae-runtime` swapped to new builds by
`dae-runtime reload` and SIGHUP while flows run through it.

- a flow started after a reload is decided by the new rules (a destination flips direct ->
  proxy), one started before keeps its outbound;
- a build that does not load (exit 1) or needs a restart (exit 3) is refused with its reason and
  changes nothing (netlink snapshot, the programs attached, routing);
- a checksummed proxied TCP transfer (both ways) and a UDP stream (every datagram echoed)
  survive 20 reloads without a lost or corrupted byte;
- reload under ~1k new flows/s loses none of them;
- after all of it SIGTERM leaves the namespace as it found it.
"""
from __future__ import annotations

import hashlib
import json
import os
import selectors
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

from dae_py.runtime.lab import http_get
from dae_py.runtime.lab.gateway_proc import compile_build

from .helpers import (
    Gw,
    Lab,
    client_get,
    gateway,
    gateway_snapshot,
    lab_config,
    parse_exit_stats,
    proxy_lab,
    snapshot_diff,
)

pytestmark = pytest.mark.root

ECHO_PORT = 9100  # our TCP echo in upstream (proxied by every config here)
DIRECT_ECHO_PORT = 9101  # the same echo, routed direct (the flood's kernel-only flows)
UDP_PORT = 9001  # the lab's UDP echo (proxied)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from proxy_lab()


@pytest.fixture(scope="module")
def echo(lab: Lab) -> Iterator[EchoServer]:
    server = EchoServer(lab, (ECHO_PORT, DIRECT_ECHO_PORT))
    try:
        yield server
    finally:
        server.close()


class EchoServer:
    """A TCP echo in the upstream namespace, served by one thread (selectors): cheap enough to
    take a thousand connections a second."""

    def __init__(self, lab: Lab, ports: tuple[int, ...]) -> None:
        self.sel = selectors.DefaultSelector()
        self.listeners = []
        for port in ports:
            s = lab.socket("upstream", socket.AF_INET)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("0.0.0.0", port))
            s.listen(4096)
            s.setblocking(False)
            self.sel.register(s, selectors.EVENT_READ, None)
            self.listeners.append(s)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(0.2):
                sock: socket.socket = key.fileobj  # type: ignore[assignment]  # we registered sockets
                if key.data is None:
                    try:
                        conn, _ = sock.accept()
                    except BlockingIOError:
                        continue
                    conn.setblocking(False)
                    self.sel.register(conn, selectors.EVENT_READ, bytearray())
                    continue
                pending: bytearray = key.data
                try:
                    data = sock.recv(262144)
                except BlockingIOError:
                    continue
                except OSError:
                    data = b""
                if not data:
                    self.sel.unregister(sock)
                    sock.close()
                    continue
                sock.setblocking(True)  # the echo's writes may block briefly: back-pressure
                try:
                    sock.sendall(data)
                except OSError:
                    self.sel.unregister(sock)
                    sock.close()
                    continue
                sock.setblocking(False)
                del pending

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)
        for key in list(self.sel.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]  # sockets only
        self.sel.close()


def config(lab: Lab, *, proxied_http: tuple[int, ...] = (8081,), extra_rules: tuple[str, ...] = (),
           extra_global: str = "") -> str:
    t = lab.topo
    ports = ", ".join(str(p) for p in (*proxied_http, ECHO_PORT, UDP_PORT))
    return lab_config(t, fallback="direct", rules=[*extra_rules, f"dip({t.upstream_ip4}) && dport({ports}) -> proxy"],
                      extra_global=extra_global)


def build(tmp: Path, name: str, text: str) -> Path:
    cfg = tmp / f"{name}.yaml"
    cfg.write_text(text)
    out = tmp / name
    compile_build(cfg, out)
    return out


def reload_cmd(gw: Gw, build_dir: Path | None, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "dae_py.runtime.cli", "reload", *([str(build_dir)] if build_dir else []),
            "--state", str(gw.state_path), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def attached_programs(lab: Lab) -> list[Any]:
    return [f for f in gateway_snapshot(lab)["filters"] if "dae-py" in str(f)]


def without_programs(snap: dict[str, Any]) -> dict[str, Any]:
    """A snapshot with the filters' program ids left out: what a reload may change."""
    out = dict(snap)
    out["filters"] = [{k: v for k, v in f.items() if k not in ("prog_id", "id")} if isinstance(f, dict) else f
                      for f in snap["filters"]]
    return out


def test_new_rules_decide_new_flows_and_a_refused_build_changes_nothing(lab: Lab, tmp_path: Path) -> None:
    t = lab.topo
    a = config(lab)
    b_dir = build(tmp_path, "b", config(lab, proxied_http=(8080, 8081)))
    before = gateway_snapshot(lab)
    with gateway(lab, a, tmp_path / "gw") as gw:
        assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.client_ip4  # direct: the peer sees the client
        assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4  # proxied: the node's address
        # a connection open across the reload keeps its (direct) decision
        held = lab.socket("client", socket.AF_INET)
        held.settimeout(5)
        held.connect((t.upstream_ip4, 8080))
        progs_a = attached_programs(lab)

        done = reload_cmd(gw, b_dir)
        assert done.returncode == 0, done.stderr
        assert "live in" in done.stdout
        gw.wait_log(r"INFO dae\.reload: reloaded .* maps kept: flows")
        assert attached_programs(lab) != progs_a  # a new program in the same slot
        assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.upstream_ip4  # the new rule: proxied
        # the controller follows the swap: `dae-runtime status` shows build b's rule
        status = subprocess.run([sys.executable, "-m", "dae_py.runtime.cli", "status", "--json", "--state",
                                 str(gw.state_path)], capture_output=True, text=True, timeout=30)
        assert status.returncode == 0, status.stderr
        assert any("8080" in r["text"] for r in json.loads(status.stdout)["rules"]), status.stdout
        body = http_get(held, t.upstream_ip4)
        held.close()
        assert body["peer"] == t.client_ip4, "the flow opened before the reload changed outbound"

        during = gateway_snapshot(lab)
        progs_b = attached_programs(lab)
        # refusals: a corrupt object, a setting that needs a restart, a directory with no build
        broken = build(tmp_path, "broken", config(lab))
        (broken / "program.o").write_bytes(b"\x7fELF not really")
        port = build(tmp_path, "port", config(lab, extra_global="  tproxy_port: 12346").replace(
            "  tproxy_port: 12345\n", "", 1))
        for bad, reason, code in ((broken, "cannot open the program", 1), (port, "global.tproxy_port changed", 3),
                                  (tmp_path / "nothing", "not a build directory", 1)):
            out = reload_cmd(gw, bad)
            assert out.returncode == code, (bad, out.stdout, out.stderr)
            assert reason in out.stderr, out.stderr
            assert gw.alive
            assert attached_programs(lab) == progs_b
            assert gateway_snapshot(lab) == during, snapshot_diff(during, gateway_snapshot(lab))
            assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.upstream_ip4  # still build b's rules
        assert "reload of" in gw.log_text() and "refused" in gw.log_text()

        # SIGHUP re-reads the running build's directory
        since = gw.log_len()
        gw.process.send_signal(signal.SIGHUP)
        gw.wait_log(r"INFO dae\.reload: reloaded ", since=since)
        assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.upstream_ip4
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(15) == 0, gw.log_text()[-3000:]
    after = gateway_snapshot(lab)
    assert after == before, snapshot_diff(before, after)


def test_reload_without_a_gateway_says_so(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "dae_py.runtime.cli", "reload", "--state",
                          str(tmp_path / "state.json")], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert "no running gateway at" in out.stderr


# --- flows that must survive -----------------------------------------------------------------


class Transfer(threading.Thread):
    """A proxied TCP echo transfer: `total` bytes of a seeded stream sent in paced chunks, the
    echo read back; sha256 of both directions compared at the end."""

    def __init__(self, lab: Lab, host: str, total: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.sock = lab.socket("client", socket.AF_INET)
        self.sock.settimeout(15)
        self.sock.connect((host, ECHO_PORT))
        self.total, self.seconds = total, seconds
        self.sent = hashlib.sha256()
        self.received = hashlib.sha256()
        self.n_received = 0
        self.error: BaseException | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)

    def _read(self) -> None:
        try:
            while self.n_received < self.total:
                data = self.sock.recv(262144)
                if not data:
                    raise ConnectionError(f"closed after {self.n_received} of {self.total} bytes")
                self.received.update(data)
                self.n_received += len(data)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc

    def run(self) -> None:
        self.reader.start()
        chunk = 64 * 1024
        n_chunks = self.total // chunk
        pause = self.seconds / n_chunks
        seed = os.urandom(32)
        try:
            for i in range(n_chunks):
                data = hashlib.shake_256(seed + i.to_bytes(4, "big")).digest(chunk)
                self.sent.update(data)
                self.sock.sendall(data)
                time.sleep(pause)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        self.reader.join(30)
        self.sock.close()


class UdpStream(threading.Thread):
    """Numbered datagrams from one client socket (one flow), each waiting for its echo."""

    def __init__(self, lab: Lab, host: str, interval: float = 0.005) -> None:
        super().__init__(daemon=True)
        self.sock = lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.settimeout(2.0)
        self.host, self.interval = host, interval
        self.stop = threading.Event()
        self.sent = self.echoed = 0
        self.bad: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            payload = f"seq {self.sent} ".encode() + hashlib.sha256(str(self.sent).encode()).digest()
            self.sock.sendto(payload, (self.host, UDP_PORT))
            self.sent += 1
            try:
                data, _ = self.sock.recvfrom(65535)
            except TimeoutError:
                self.bad.append(f"datagram {self.sent - 1}: no echo")
                continue
            if not data.endswith(payload):
                self.bad.append(f"datagram {self.sent - 1}: echoed {data[-40:]!r}")
            else:
                self.echoed += 1
            time.sleep(self.interval)
        self.sock.close()


WORKERS = pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "2-workers"])  # docs/relay-workers.md


@WORKERS
def test_tcp_and_udp_flows_survive_20_reloads(lab: Lab, echo: EchoServer, tmp_path: Path, workers: int) -> None:
    t = lab.topo
    g = f"  relay_workers: {workers}"
    builds = [build(tmp_path, "b0", config(lab, extra_global=g)),
              build(tmp_path, "b1", config(lab, extra_rules=(f"dip({t.upstream_ip4}) && dport(7) -> block",),
                                           extra_global=g))]
    with gateway(lab, config(lab, extra_global=g), tmp_path / "gw") as gw:
        # the stream's first datagram waits for the UDP ASSOCIATE: start it before counting
        stream = UdpStream(lab, t.upstream_ip4)
        stream.start()
        transfer = Transfer(lab, t.upstream_ip4, total=48 * 1024 * 1024, seconds=8.0)
        transfer.start()
        times = []
        for i in range(20):
            out = reload_cmd(gw, builds[i % 2], "--json")
            assert out.returncode == 0, out.stderr
            times.append(json.loads(out.stdout)["seconds"])
            time.sleep(0.1)
        transfer.join(60)
        stream.stop.set()
        stream.join(10)
        assert transfer.error is None, transfer.error
        assert transfer.n_received == transfer.total
        assert transfer.received.hexdigest() == transfer.sent.hexdigest()
        assert not stream.bad, stream.bad[:5]
        assert stream.echoed > 100
        flows = [line for line in gw.log_text().splitlines() if f":{ECHO_PORT} (" in line and " via proxy " in line]
        assert len(flows) == 1, "the transfer was relayed as one flow"
        assert gw.log_text().count("INFO dae.reload: reloaded") == 20
        print(f"20 reloads: median {sorted(times)[10] * 1e3:.1f} ms, max {max(times) * 1e3:.1f} ms")


class Flood(threading.Thread):
    """New TCP flows as fast as one thread makes them (connect, 16 bytes echoed, close): each
    must succeed."""

    def __init__(self, lab: Lab, host: str, port: int) -> None:
        super().__init__(daemon=True)
        self.lab, self.host, self.port = lab, host, port
        self.stop = threading.Event()
        self.ok = 0
        self.failed: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with self.lab.socket("client", socket.AF_INET) as s:
                    s.settimeout(5)
                    s.connect((self.host, self.port))
                    s.sendall(b"0123456789abcdef")
                    got = b""
                    while len(got) < 16:
                        chunk = s.recv(16 - len(got))
                        if not chunk:
                            break
                        got += chunk
                if got != b"0123456789abcdef":
                    self.failed.append(f"flow {self.ok + len(self.failed)}: echoed {got!r}")
                else:
                    self.ok += 1
            except OSError as exc:
                self.failed.append(f"flow {self.ok + len(self.failed)}: {exc}")


@WORKERS
def test_reload_under_new_flows_loses_none(lab: Lab, echo: EchoServer, tmp_path: Path, workers: int) -> None:
    t = lab.topo
    g = f"  relay_workers: {workers}"
    builds = [build(tmp_path, "b0", config(lab, extra_global=g)),
              build(tmp_path, "b1", config(lab, extra_rules=(f"dip({t.upstream_ip4}) && dport(7) -> block",),
                                           extra_global=g))]
    before = gateway_snapshot(lab)
    with gateway(lab, config(lab, extra_global=g), tmp_path / "gw") as gw:
        floods = [Flood(lab, t.upstream_ip4, DIRECT_ECHO_PORT), Flood(lab, t.upstream_ip4, DIRECT_ECHO_PORT),
                  Flood(lab, t.upstream_ip4, ECHO_PORT)]
        for f in floods:
            f.start()
        time.sleep(0.3)
        t0 = time.monotonic()
        start_ok = sum(f.ok for f in floods)
        for i in range(6):
            out = reload_cmd(gw, builds[i % 2])
            assert out.returncode == 0, out.stderr
        elapsed = time.monotonic() - t0
        made = sum(f.ok for f in floods) - start_ok
        for f in floods:
            f.stop.set()
        for f in floods:
            f.join(10)
        failed = [line for f in floods for line in f.failed]
        assert not failed, failed[:5]
        assert floods[2].ok > 0, "no proxied flow was made"
        rate = made / elapsed
        print(f"{made} flows in {elapsed:.2f} s across 6 reloads: {rate:.0f}/s")
        assert rate > 300, f"only {rate:.0f} new flows/s: the test did not load the reload"
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(15) == 0, gw.log_text()[-3000:]
    after = gateway_snapshot(lab)
    assert after == before, snapshot_diff(before, after)


def test_renumbered_outbounds_keep_flows_and_counters_by_name(lab: Lab, echo: EchoServer, tmp_path: Path) -> None:
    """A build that puts a new group before `proxy` gives `proxy` another id: the decisions in
    `flows` and the per-outbound counters follow the name, not the number."""
    t = lab.topo
    a = config(lab)
    b_text = config(lab, extra_rules=(f"dip({t.upstream_ip4}) && dport(7) -> aaa",)).replace(
        "groups:\n", "groups:\n  aaa: {policy: random}\n", 1)
    b_dir = build(tmp_path, "b", b_text)
    ids = {o["name"]: o["id"] for o in json.loads((b_dir / "manifest.json").read_text())["outbounds"]}
    assert ids["aaa"] < ids["proxy"], ids  # the premise: proxy was renumbered
    with gateway(lab, a, tmp_path / "gw") as gw:
        held = lab.socket("client", socket.AF_INET)
        held.settimeout(5)
        held.connect((t.upstream_ip4, ECHO_PORT))

        def round_trips(n: int) -> None:
            for i in range(n):
                msg = f"ping {i:06d}".encode()
                held.sendall(msg)
                got = b""
                while len(got) < len(msg):
                    got += held.recv(len(msg) - len(got))
                assert got == msg

        round_trips(60)
        out = reload_cmd(gw, b_dir)
        assert out.returncode == 0, out.stderr
        m = gw.wait_log(r"reload: (\d+) flow decision\(s\) moved to the new outbound ids")
        assert int(m.group(1)) >= 1
        round_trips(20)  # the held flow, still proxied, now under proxy's new id
        assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4  # a new flow: proxied
        held.close()
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(15) == 0, gw.log_text()[-3000:]
    kernel, _relay = parse_exit_stats(gw.log_text())
    assert kernel["proxy"][0] >= 80, kernel  # counted before the reload and after, under one name
    assert kernel["aaa"] == (0, 0), kernel  # nothing of proxy's counted under its old id


def _resolve(lab: Lab, name: str, server: str | None = None) -> list[str]:
    """A query from the client to the gateway's dns.bind (or to `server`:53, which the program
    hijacks into the DNS module); the A addresses of the answer."""
    import dns.message
    import dns.query
    import dns.rdatatype

    q = dns.message.make_query(name, "A")
    with lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM) as s:
        r = dns.query.udp(q, server or lab.topo.gateway_lan_ip4, timeout=5, sock=s)
    return [a.address for rr in r.answer if rr.rdtype == dns.rdatatype.A for a in rr]


def test_domain_bindings_survive_a_reload_with_the_same_domain_sets(lab: Lab, tmp_path: Path) -> None:
    """A name resolved before a reload still routes its address after it, without resolving
    again, when the new build has the same domain sets; with other sets the bindings start
    empty (docs/reload.md) and the next answer binds them again."""
    t = lab.topo
    lab.start_dnsmasq(5300, {"p.proxied.test": [t.upstream_ip4]}, ttl=60)

    def cfg(sets: str, extra: tuple[str, ...] = ()) -> str:
        return lab_config(t, fallback="direct", rules=[*extra, f"domain({sets}) -> proxy"]) + (
            f"dns:\n  bind: ['{t.gateway_lan_ip4}:53']\n  upstream:\n    zone: 'udp://{t.upstream_ip4}:5300'\n"
            "  routing:\n    request:\n      fallback: zone\n")
    same = build(tmp_path, "same", cfg("suffix: proxied.test", (f"dip({t.upstream_ip4}) && dport(7) -> block",)))
    other = build(tmp_path, "other", cfg("suffix: proxied.test, suffix: other.test"))
    with gateway(lab, cfg("suffix: proxied.test"), tmp_path / "gw") as gw:
        assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.client_ip4  # nothing bound yet: direct
        assert _resolve(lab, "p.proxied.test") == [t.upstream_ip4]
        assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.upstream_ip4  # bound: proxied
        out = reload_cmd(gw, same)
        assert out.returncode == 0, out.stderr
        assert "domain_routing4" in gw.wait_log(r"INFO dae\.reload: reloaded .*").group(0)
        assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.upstream_ip4  # still bound, not resolved again
        since = gw.log_len()
        out = reload_cmd(gw, other)
        assert out.returncode == 0, out.stderr
        assert "the domain sets changed" in out.stderr  # warned
        gw.wait_log(r"DNS module restarted", since=since)
        assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.client_ip4  # the bindings started empty
        assert _resolve(lab, "p.proxied.test") == [t.upstream_ip4]
        assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.upstream_ip4  # bound again by the answer
        # the restarted module took the hijack port over too: LAN DNS to any resolver is answered
        assert _resolve(lab, "p.proxied.test", server=t.upstream_ip4) == [t.upstream_ip4]
