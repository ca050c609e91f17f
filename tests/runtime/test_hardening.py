"""Hardening of the running gateway (issue 16, runtime): unsolicited traffic to the tproxy
port, a node that resets after CONNECT, running out of file descriptors, start-up failures.

All against the real `dae-runtime` in the lab's gateway namespace; the fd counts are those of
its /proc/PID/fd.
"""
from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import resource
import select
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.runtime.lab import parse_udp_echo

from .helpers import (
    Gw,
    Lab,
    client_get,
    flow_lines,
    gateway,
    gateway_snapshot,
    lab_config,
    proxy_lab,
    snapshot_diff,
    udp_exchange,
    wait_for,
)

pytestmark = pytest.mark.root

TPROXY_PORT = 12345


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from proxy_lab()


def fd_count(gw: Gw) -> int:
    assert gw.proc is not None
    return len(os.listdir(f"/proc/{gw.process.pid}/fd"))


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def udp_probe(lab: Lab, ns: str, host: str, count: int) -> None:
    """`count` datagrams from `ns` straight to the gateway's tproxy port, each from its own
    source port (a new client for the relay each time)."""
    for i in range(count):
        with lab.socket(ns, _family(host), socket.SOCK_DGRAM) as s:
            s.sendto(b"probe %d" % i, (host, TPROXY_PORT))


def tcp_probe_unanswered(lab: Lab, ns: str, host: str) -> bool:
    """A connect straight to the tproxy port gets no handshake (the SYN is dropped)."""
    with lab.socket(ns, _family(host)) as s:
        s.settimeout(1.0)
        try:
            s.connect((host, TPROXY_PORT))
        except TimeoutError:
            return True
        except OSError:
            return False  # refused or reset: something answered
        return False


# --- the tproxy port -------------------------------------------------------------------------


def test_tproxy_port_ignores_unsolicited_traffic_from_lan_and_wan(lab: Lab, tmp_path: Path) -> None:
    """UDP and TCP sent straight to port 12345, v4 and v6, from the client namespace (LAN) and
    the upstream namespace (WAN): the runtime's fd count does not grow (without protection 100
    datagrams made thousands of sockets), no SYN is answered, and proxied flows still work."""
    t = lab.topo
    cfg = lab_config(t, fallback="direct",
                     rules=[f"dip({t.upstream_ip4}, '{t.upstream_ip6}') && dport(8081, 9001) -> proxy"])
    with gateway(lab, cfg, tmp_path) as gw:
        for dst in (t.upstream_ip4, t.upstream_ip6):  # proxied: through the guarded listeners
            assert client_get(lab, dst, 8081)["peer"] == dst
            peer, _, payload, _, _ = udp_exchange(lab, dst, 9001, b"before")
            assert (peer, payload) == (dst, b"before")
        before = fd_count(gw)
        probes = (("client", t.gateway_lan_ip4), ("client", t.gateway_lan_ip6),
                  ("upstream", t.gateway_wan_ip4), ("upstream", t.gateway_wan_ip6))
        for ns, host in probes:
            udp_probe(lab, ns, host, 100)
        for ns, host in probes:
            assert tcp_probe_unanswered(lab, ns, host), f"{ns} -> {host}:{TPROXY_PORT} answered"
        time.sleep(1.0)  # a relay loop would have made thousands of sockets by now
        after = fd_count(gw)
        assert after <= before + 4, f"runtime fds {before} -> {after}"
        for dst in (t.upstream_ip4, t.upstream_ip6):
            assert client_get(lab, dst, 8081)["peer"] == dst
            peer, _, payload, _, _ = udp_exchange(lab, dst, 9001, b"after")
            assert (peer, payload) == (dst, b"after")
        log = gw.log_text()
        assert "probe" not in log and "12345 via" not in log, log[-3000:]  # the relay saw none
    assert "Traceback" not in gw.log_text()


def test_relay_refuses_datagrams_delivered_to_its_own_address(lab: Lab, tmp_path: Path) -> None:
    """The second line of defence: a rule that proxies datagrams addressed to the gateway's own
    tproxy port makes the datapath deliver them (they pass the guard); the UDP relay refuses
    them instead of relaying them to itself, counts them and says so."""
    t = lab.topo
    cfg = lab_config(t, fallback="direct", rules=[
        f"dip({t.gateway_lan_ip4}, '{t.gateway_lan_ip6}') && dport({TPROXY_PORT}) -> proxy"])
    with gateway(lab, cfg, tmp_path) as gw:
        before = fd_count(gw)
        for host in (t.gateway_lan_ip4, t.gateway_lan_ip6):
            udp_probe(lab, "client", host, 100)
        gw.wait_log(r"udp \S+ -> \S+:12345 refused: addressed to the relay itself")
        time.sleep(1.0)
        after = fd_count(gw)
        assert after <= before + 4, f"runtime fds {before} -> {after}"
        assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.client_ip4  # direct, alive
    assert gw.proc is not None and gw.process.returncode == 0
    last = [ln for ln in gw.log_text().splitlines() if "; relay: " in ln][-1]
    assert "guards: self-addressed=200" in last, last
    assert len([ln for ln in gw.log_text().splitlines() if "addressed to the relay itself" in ln]) <= 4


# --- UDP reply sockets --------------------------------------------------------------------------

MANY_NET = "10.231.64.0/23"  # 512 addresses, all local to the upstream namespace


@contextlib.contextmanager
def many_remotes(lab: Lab) -> Iterator[list[str]]:
    """Every address of MANY_NET answers in upstream (a `local` route to lo there, the UDP
    echo bound to the wildcard address), routed to via the upstream from the gateway."""
    t = lab.topo
    local = {"dst": MANY_NET, "type": "local", "table": 255, "scope": 254}  # scope host
    with lab.iproute("upstream") as ipr:
        ipr.route("add", oif=ipr.link_lookup(ifname="lo")[0], **local)
    try:
        with lab.iproute("gateway") as ipr:
            ipr.route("add", dst=MANY_NET, gateway=t.upstream_ip4)
        try:
            yield [str(ip) for ip in ipaddress.ip_network(MANY_NET).hosts()]
        finally:
            with lab.iproute("gateway") as ipr:
                ipr.route("del", dst=MANY_NET, gateway=t.upstream_ip4)
    finally:
        with lab.iproute("upstream") as ipr:
            ipr.route("del", oif=ipr.link_lookup(ifname="lo")[0], **local)


@contextlib.contextmanager
def echo_on(lab: Lab, hosts: list[str], port: int) -> Iterator[None]:
    """A UDP echo on each of `hosts` (one socket each in upstream), so that every reply comes
    from the address it was sent to."""
    socks = []
    for host in hosts:
        s = lab.socket("upstream", socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, port))
        socks.append(s)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            ready, _, _ = select.select(socks, [], [], 0.2)
            for s in ready:
                data, addr = s.recvfrom(65535)
                s.sendto(data, addr)

    thread = threading.Thread(target=serve, name="many-echo", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(5)
        for s in socks:
            s.close()


def test_udp_reply_sockets_are_bounded_per_client(lab: Lab, tmp_path: Path) -> None:
    """One client socket sends to 300 remotes through the proxy: replies come back from the
    first 256 (the per-client bound, one reply socket each), the rest are dropped, counted
    and logged once; the runtime's fds grow by about the bound, not by 300."""
    t = lab.topo
    cfg = lab_config(t, fallback="direct", rules=[f"dip({MANY_NET}) -> proxy"])
    with many_remotes(lab) as remotes, echo_on(lab, remotes[:300], 9002), \
            gateway(lab, cfg, tmp_path) as gw:
        before = fd_count(gw)
        seen: set[str] = set()
        with lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("0.0.0.0", 0))
            s.settimeout(0.5)
            for rnd in range(3):  # the first datagrams wait for the UDP ASSOCIATE
                for host in remotes[:300]:
                    if host not in seen:
                        s.sendto(b"r%d" % rnd, (host, 9002))
                while True:
                    try:
                        _data, src = s.recvfrom(65535)
                    except TimeoutError:
                        break
                    seen.add(src[0])
        assert len(seen) == 256, len(seen)
        limited = [ln for ln in gw.log_text().splitlines() if "dropped: at the bound" in ln]
        assert len(limited) == 1 and "256 remotes for this client" in limited[0], limited
        assert fd_count(gw) <= before + 256 + 8
    last = [ln for ln in gw.log_text().splitlines() if "; relay: " in ln][-1]
    m = re.search(r"udp-reply-limited=(\d+)", last)
    assert m and int(m[1]) >= 44, last


SPRAY_PORTS = 700  # source ports one LAN host sends from: more than udp_clients_per_ip (512)
PER_IP = 512
SECOND_CLIENT = "10.231.1.3"  # another LAN host: a second address on the client's interface


@contextlib.contextmanager
def nofile_at_least(n: int) -> Iterator[None]:
    """This process's RLIMIT_NOFILE soft limit raised to `n` (at most the hard limit) while the
    block runs: the runtime inherits it, and the relay's total client bound (an eighth of it)
    must stay above the per-IP bound for the per-IP bound to be what the test sees."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@contextlib.contextmanager
def second_lan_address(lab: Lab) -> Iterator[str]:
    t = lab.topo
    prefix = ipaddress.ip_network(t.lan_net4).prefixlen
    with lab.iproute("client") as ipr:
        idx = ipr.link_lookup(ifname=t.client_if)[0]
        ipr.addr("add", index=idx, address=SECOND_CLIENT, prefixlen=prefix)
    try:
        yield SECOND_CLIENT
    finally:
        with lab.iproute("client") as ipr:
            ipr.addr("del", index=idx, address=SECOND_CLIENT, prefixlen=prefix)


def test_udp_clients_are_bounded_per_source_ip(lab: Lab, tmp_path: Path) -> None:
    """One LAN host sends from 700 source ports to a proxied UDP echo: the relay admits 512 of
    them (the per-IP bound; one SOCKS5 association each, a TCP control connection and a UDP
    socket), the rest are dropped, counted and logged once; the runtime's fds grow by about
    two per admitted client, not per port, and another host's UDP flow keeps working."""
    t = lab.topo
    dst = (t.upstream_ip4, 9001)
    cfg = lab_config(t, fallback="direct", rules=[f"dip({t.upstream_ip4}) && dport(9001) -> proxy"])
    with nofile_at_least(8 * (SPRAY_PORTS + 64)), second_lan_address(lab) as other, \
            gateway(lab, cfg, tmp_path) as gw, contextlib.ExitStack() as stack:
        before = fd_count(gw)
        socks = []
        for _ in range(SPRAY_PORTS):
            s = stack.enter_context(lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM))
            s.bind((t.client_ip4, 0))  # kept open: each stays its own client for the relay
            socks.append(s)
        flow_rx = re.compile(rf"udp {re.escape(t.client_ip4)}:(\d+) -> "
                             rf"{re.escape(t.upstream_ip4)}:9001 .*via proxy node")

        def admitted() -> set[int]:
            return {int(p) for p in flow_rx.findall(gw.log_text())}

        def spray(order: list[socket.socket]) -> None:
            for i, s in enumerate(order):
                s.sendto(b"spray", dst)
                if i % 64 == 63:
                    time.sleep(0.02)  # pacing, so the runtime reads them as they come

        started = time.monotonic()
        spray(socks)

        last_sent = [time.monotonic()]

        def associations_up() -> bool:
            """True once PER_IP clients are admitted. While the runtime opens 512 associations
            its listener's buffer may overflow and drop some of the first datagrams (a slow
            VM drops more), so every 5 s the ports not yet admitted send again."""
            now = admitted()
            if len(now) >= PER_IP:
                return True
            if time.monotonic() - last_sent[0] >= 5.0:
                spray([s for s in socks if s.getsockname()[1] not in now])
                last_sent[0] = time.monotonic()
            return False

        wait_for(associations_up, timeout=120)  # the associations are up
        # Again, now that the runtime is idle (while it opened 512 associations its listener's
        # buffer may have overflowed): the admitted ports first, so none of them is idle when
        # the refused ones come, which are then refused again, each counted.
        ports = admitted()
        spray(sorted(socks, key=lambda s: s.getsockname()[1] not in ports))
        grown = fd_count(gw) - before
        assert grown <= 2 * PER_IP + 32, f"runtime fds grew by {grown} for {SPRAY_PORTS} ports"
        with lab.socket("client", socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((other, 0))
            s.settimeout(1.0)
            reply = None
            for _ in range(5):  # the first datagram waits for the UDP ASSOCIATE
                s.sendto(b"other host", dst)
                try:
                    reply, src = s.recvfrom(65535)
                    break
                except TimeoutError:
                    continue
            assert reply is not None, "the second host's UDP flow got no reply"
            assert src == dst and parse_udp_echo(reply)[2] == b"other host"
        assert admitted() == ports and len(ports) == PER_IP
        limited = [ln for ln in gw.log_text().splitlines() if "dropped: at the bound" in ln]
        # once per source IP and 10 s (a slow machine may span more than one interval)
        assert 1 <= len(limited) <= 1 + (time.monotonic() - started) // 10, limited
        assert all(f"{PER_IP} clients (source ports) for {t.client_ip4}" in ln
                   for ln in limited), limited
    last = [ln for ln in gw.log_text().splitlines() if "; relay: " in ln][-1]
    m = re.search(r"udp-client-limited=(\d+)", last)
    assert m and int(m[1]) >= SPRAY_PORTS - PER_IP, last
    assert "udp-client-evicted" not in last, last  # nobody was idle long enough
    assert "Traceback" not in gw.log_text()


# --- a node that resets after CONNECT --------------------------------------------------------


class RstAfterConnect:
    """A SOCKS5 server in the upstream namespace that accepts the greeting (method 0x00, also
    when offered username/password), reads the CONNECT request and then resets the connection
    (SO_LINGER 0), except for CONNECTs to `relay_port`, which it carries (so the group's health
    checks find it alive and the failure comes from the flow's own dial)."""

    def __init__(self, lab: Lab, port: int, relay_port: int) -> None:
        t = lab.topo
        self.lab = lab
        self.relay_port = relay_port
        self.sock = lab.socket("upstream", socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((t.upstream_ip4, port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.resets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="rst-socks", daemon=True)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._session, args=(conn,), daemon=True).start()

    @staticmethod
    def _read(conn: socket.socket, buf: bytes, n: int) -> bytes:
        while len(buf) < n:
            chunk = conn.recv(4096)
            if not chunk:
                raise ConnectionError("eof")
            buf += chunk
        return buf

    def _session(self, conn: socket.socket) -> None:
        conn.settimeout(5)
        try:
            buf = self._read(conn, b"", 2)
            buf = self._read(conn, buf, 2 + buf[1])
            conn.sendall(b"\x05\x00")
            buf = buf[2 + buf[1]:]
            buf = self._read(conn, buf, 5)
            atyp = buf[3]
            total = {1: 4 + 4 + 2, 4: 4 + 16 + 2}.get(atyp, 4 + 1 + buf[4] + 2)
            buf = self._read(conn, buf, total)
            port = struct.unpack("!H", buf[total - 2:total])[0]
            if port != self.relay_port:
                self.resets += 1
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()
                return
            host = socket.inet_ntoa(buf[4:8]) if atyp == 1 else self.lab.topo.upstream_ip4
            up = self.lab.socket("upstream", socket.AF_INET)
            up.settimeout(5)
            up.connect((host, port))
            conn.sendall(b"\x05\x00\x00\x01" + socket.inet_aton(self.lab.topo.upstream_ip4) + b"\x00\x00")
            self._pipe(conn, up)
        except (OSError, ConnectionError, KeyError, IndexError, struct.error):
            conn.close()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        def copy(src: socket.socket, dst: socket.socket) -> None:
            try:
                while chunk := src.recv(65536):
                    dst.sendall(chunk)
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass

        other = threading.Thread(target=copy, args=(b, a), daemon=True)
        other.start()
        copy(a, b)
        other.join(10)
        a.close()
        b.close()

    def __enter__(self) -> RstAfterConnect:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("path", ["callback", "coroutine"])
def test_reset_after_connect_fails_over_to_the_next_node(lab: Lab, tmp_path: Path, path: str) -> None:
    """First node: accepts the SOCKS5 handshake, then resets the CONNECT; second: danted. The
    flow succeeds via danted, the first node is marked down, and no asyncio task exception is
    left behind. `callback`: a node without credentials (relay.fastdial's pipelined dial);
    `coroutine`: with credentials (Group.dial_tcp and socks5.dial step by step)."""
    t = lab.topo
    cred = "" if path == "callback" else "u:p@"
    with RstAfterConnect(lab, 1090, relay_port=8080) as rst:
        cfg = lab_config(
            t, fallback="direct",
            rules=[f"dip({t.upstream_ip4}, '{t.upstream_ip6}') && dport(8081) -> pair"],
            nodes={"rst": f"socks5://{cred}{t.upstream_ip4}:1090",
                   "dante": f"socks5://{t.upstream_ip4}:1080"},
            groups={"pair": "{policy: 'fixed(0)', filter: ['name(rst, dante)']}"})
        with gateway(lab, cfg, tmp_path) as gw:
            body = client_get(lab, t.upstream_ip4, 8081)
            assert body["peer"] == t.upstream_ip4
            line = wait_for(lambda: [f for f in flow_lines(gw.log_text())
                                     if f.src.endswith(f":{body['client_port']}")])
            assert line[0].node == "dante", line
            assert rst.resets >= 1
            assert "group 'pair' [tcp]: node 'rst' is down" in gw.log_text()
    log = gw.log_text()
    assert "Task exception was never retrieved" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


# --- out of file descriptors -----------------------------------------------------------------


def _exhaust(gw: Gw, limit: int) -> None:
    """Lower the runtime's RLIMIT_NOFILE to `limit` (soft and hard)."""
    assert gw.proc is not None
    resource.prlimit(gw.process.pid, resource.RLIMIT_NOFILE, (limit, limit))


def _open_flows(lab: Lab, host: str, n: int) -> list[socket.socket]:
    """n proxied TCP connections left open (each costs the relay two fds, or an EMFILE)."""
    out = []
    for _ in range(n):
        s = lab.socket("client", _family(host))
        s.settimeout(2)
        try:
            s.connect((host, 8081))
        except OSError:
            s.close()
            continue
        out.append(s)
    return out


def test_sigterm_out_of_fds_tears_down_cleanly(lab: Lab, tmp_path: Path) -> None:
    """The runtime's RLIMIT_NOFILE lowered to what it holds, then flows until accept fails
    with EMFILE: SIGTERM still removes everything (snapshot equal to before) and exits 0."""
    t = lab.topo
    before = gateway_snapshot(lab)
    cfg = lab_config(t, fallback="direct",
                     rules=[f"dip({t.upstream_ip4}, '{t.upstream_ip6}') && dport(8081) -> proxy"])
    with gateway(lab, cfg, tmp_path) as gw:
        assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4
        _exhaust(gw, max(int(fd) for fd in os.listdir(f"/proc/{gw.process.pid}/fd")) + 1)
        held = _open_flows(lab, t.upstream_ip4, 20)
        try:
            gw.wait_log(r"Too many open files", timeout=10)
            gw.process.send_signal(15)
            code = gw.process.wait(30)
        finally:
            for s in held:
                s.close()
        gw._join_pump()
        log = gw.log_text()
        assert code == 0, log[-3000:]
        assert "datapath removed" in log, log[-3000:]
        assert "left behind" not in log, log[-3000:]
        after = gateway_snapshot(lab)
        assert after == before, snapshot_diff(before, after)
        assert not gw.state_entries()


def test_sigterm_that_cannot_tear_down_says_so_and_exits_1(lab: Lab, tmp_path: Path) -> None:
    """RLIMIT_NOFILE at 3 (nothing can ever be opened again): the teardown cannot run; the
    runtime says what it left behind in an error line and exits 1, and `dae-runtime cleanup`
    then removes it all."""
    t = lab.topo
    before = gateway_snapshot(lab)
    cfg = lab_config(t, fallback="direct", rules=["dport(8081) -> proxy"])
    with gateway(lab, cfg, tmp_path) as gw:
        _exhaust(gw, 3)
        gw.process.send_signal(15)
        code = gw.process.wait(30)
        gw._join_pump()
        log = gw.log_text()
        assert code == 1, log[-3000:]
        assert "ERROR dae.gateway: datapath teardown left behind: " in log, log[-3000:]
        assert "datapath removed" not in log
        assert "Traceback" not in log, log[-3000:]
        assert gw.state_entries()
        result = gw.cleanup()
        assert result.returncode == 0, result.stderr
        after = gateway_snapshot(lab)
        assert after == before, snapshot_diff(before, after)


# --- start-up failures -----------------------------------------------------------------------


def _run_build(lab: Lab, gw: Gw) -> tuple[int, str]:
    r = lab.run("gateway", gw.argv("run", str(gw.build_dir), "--state", str(gw.state_path)),
                env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                timeout=60)
    return r.returncode, r.stdout + r.stderr


@pytest.mark.parametrize("check, value", [
    ("tcp_check_url", ["ftp://nowhere/"]),
    ("check_interval_s", "soon"),
    ("udp_check_dns", ["dns.example:99999"]),
])
def test_start_up_failure_is_one_line_not_a_traceback(lab: Lab, tmp_path: Path, check: str,
                                                     value: object) -> None:
    """A build whose health-check settings the runtime cannot run (edited into the manifest,
    since the compiler rejects them): exit 1, one 'cannot start the gateway' line, no trace,
    and the namespace untouched."""
    t = lab.topo
    before = gateway_snapshot(lab)
    gw = Gw(lab, lab_config(t, rules=["dport(8081) -> proxy"]), tmp_path)
    manifest_path = gw.build_dir / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    for group in manifest["groups"]:
        group.setdefault("check", {})[check] = value
    manifest_path.write_text(json.dumps(manifest))
    code, out = _run_build(lab, gw)
    assert code == 1, out
    errors = [ln for ln in out.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "cannot start the gateway: " in errors[0], out
    assert "Traceback" not in out, out
    assert gateway_snapshot(lab) == before
