"""Flows through a running `dae-runtime`: direct, proxied (danted, tinyproxy), UDP ASSOCIATE,
block, direct with a mark, and a broken "proxy" that must not hurt the gateway.

One lab and one runtime for the module (both torn down at its end); each test cleans up what
it adds (routing rules, fake servers).
"""
from __future__ import annotations

import errno
import json
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from .helpers import (
    FlowLine,
    Gw,
    Lab,
    client_get,
    flow_lines,
    gateway,
    lab_config,
    refused_promptly,
    runtime_lab,
    udp_exchange,
)

pytestmark = pytest.mark.root

GARBAGE_PORTS = (1098, 1099)  # our fake proxies: 1099 named as socks5, 1098 as http
MARK = 0x100
MARK_TABLE = 100


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        lab.start_danted(1080)
        lab.start_tinyproxy(8888)
        for port in (8081, 8082, 8084, 8085, 8086, 8087, 8088):
            lab.start_http_peer(port)
        lab.start_udp_echo(9000)
        lab.start_udp_echo(9001)
        yield lab


def _recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed mid-handshake")
        buf += chunk
    return buf


class GarbageServer:
    """A fake proxy in upstream (socks5 or http) that passes the health checks and answers
    real flows with garbage.

    The groups' health check CONNECTs to the check URL (upstream:8080): for that target it
    plays a proxy well enough (tunnel "opened", then a canned `204` to the HTTP check), so the
    node stays alive and a flow really dials it. For any other target it sends bytes no proxy
    would send and closes: the dial fails in the middle of the handshake.
    """

    GARBAGE = b"\x07\x00\x00\x01 this is not a proxy \xff\xfe\r\n\r\n"
    CHECK_PORT = 8080

    def __init__(self, lab: Lab, port: int, kind: str) -> None:
        self.kind = kind
        self.sock = lab.socket("upstream", socket.AF_INET)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((lab.topo.upstream_ip4, port))
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.garbage_sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            try:
                conn.settimeout(2)
                if self.kind == "socks5":
                    # byte-exact, as a real server reads: the relay pipelines greeting + request
                    head = _recv_exact(conn, 2)        # VER, NMETHODS
                    _recv_exact(conn, head[1])         # the methods
                    conn.sendall(b"\x05\x00")          # "no auth": fine so far
                    req = _recv_exact(conn, 4)         # CONNECT / UDP ASSOCIATE request
                    if req[3] == 3:
                        size = _recv_exact(conn, 1)
                        req += size + _recv_exact(conn, size[0] + 2)
                    else:
                        req += _recv_exact(conn, (16 if req[3] == 4 else 4) + 2)
                    port = int.from_bytes(req[-2:], "big")
                    ok = req[1:2] == b"\x01" and port == self.CHECK_PORT
                    tunnel = b"\x05\x00\x00\x01\x00\x00\x00\x00\x00\x00"
                else:
                    req = b""
                    while b"\r\n\r\n" not in req:
                        chunk = conn.recv(4096)
                        if not chunk:
                            return
                        req += chunk
                    ok = req.startswith(b"CONNECT ") and \
                        req.split(b" ", 2)[1].endswith(b":%d" % self.CHECK_PORT)
                    tunnel = b"HTTP/1.1 200 Connection established\r\n\r\n"
                if ok:
                    conn.sendall(tunnel)
                    conn.recv(4096)
                    conn.sendall(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                else:
                    self.garbage_sent += 1
                    conn.sendall(self.GARBAGE)
            except OSError:
                pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.fixture(scope="module")
def garbage(lab: Lab) -> Iterator[list[GarbageServer]]:
    servers = [GarbageServer(lab, GARBAGE_PORTS[0], "http"),
               GarbageServer(lab, GARBAGE_PORTS[1], "socks5")]
    try:
        yield servers
    finally:
        for s in servers:
            s.close()


@pytest.fixture(scope="module", params=[1, 2], ids=["in-process", "2-workers"])
def gw(lab: Lab, garbage: list[GarbageServer], tmp_path_factory: pytest.TempPathFactory,
       request: pytest.FixtureRequest) -> Iterator[Gw]:
    """The runtime in one process, then with its TCP relay in two worker processes
    (global.relay_workers: docs/relay-workers.md): every test runs against both."""
    t = lab.topo
    up4, up6 = t.upstream_ip4, t.upstream_ip6
    rules = [
        f"dip({up4}) && dport(8081) -> socks",
        f"dip('{up6}') && dport(8081) -> socks",
        f"dip({up4}, '{up6}') && dport(8082) -> httpp",
        "l4proto(udp) && dport(9001) -> socks",
        "dport(8084) -> block",
        f"dport(8085) -> direct(mark: {MARK:#x})",
        "dport(8086) -> bad",
        "dport(8087) -> badhttp",
        "dport(8088) -> badfirst",
    ]
    nodes = {
        "garbage": f"socks5://{up4}:{GARBAGE_PORTS[1]}",
        "garbage_http": f"http://{up4}:{GARBAGE_PORTS[0]}",
        "dante": f"socks5://{up4}:1080",
        "tiny": f"http://{up4}:8888",
    }
    groups = {
        "socks": "{policy: 'fixed(0)', filter: ['name(dante)']}",
        "httpp": "{policy: 'fixed(0)', filter: ['name(tiny)']}",
        "bad": "{policy: 'fixed(0)', filter: ['name(garbage)']}",
        "badhttp": "{policy: 'fixed(0)', filter: ['name(garbage_http)']}",
        # garbage first: a dial that fails must move on to the next alive node
        "badfirst": "{policy: 'fixed(0)', filter: ['name(garbage, dante)']}",
    }
    cfg = lab_config(t, rules=rules, fallback="direct", nodes=nodes, groups=groups,
                     extra_global=f"  relay_workers: {request.param}")
    with gateway(lab, cfg, tmp_path_factory.mktemp("flows")) as g:
        yield g


def manifest_rule(gw: Gw, index: int) -> dict:
    rules = json.loads((gw.build_dir / "manifest.json").read_text())["rules"]
    return next(r for r in rules if r["index"] == index)


def relay_line_for(gw: Gw, client_port: int, timeout: float = 3.0) -> list[FlowLine]:
    """The relay's flow line for the client's source port (it is written after the dial)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [f for f in flow_lines(gw.log_text()) if f.src.endswith(f":{client_port}")]
        if found or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


# --- 1. direct and proxied, v4 and v6 -------------------------------------------------------


@pytest.mark.parametrize("v", [4, 6])
def test_direct_flow_reaches_server_from_client_address(lab: Lab, gw: Gw, v: int) -> None:
    """Fallback direct: routed by the kernel, the server sees the client's own address, and
    the relay never logs the flow."""
    t = lab.topo
    dst, client = (t.upstream_ip4, t.client_ip4) if v == 4 else (t.upstream_ip6, t.client_ip6)
    body = client_get(lab, dst, 8080)
    assert body["peer"] == client
    time.sleep(0.3)
    assert relay_line_for(gw, body["client_port"], timeout=0) == []


@pytest.mark.parametrize("v", [4, 6])
@pytest.mark.parametrize("port,group,node,rule_v4,rule_v6", [
    (8081, "socks", "dante", 0, 1),
    (8082, "httpp", "tiny", 2, 2),
])
def test_proxied_flow_reaches_server_from_proxy_address(lab: Lab, gw: Gw, v: int, port: int,
                                                        group: str, node: str, rule_v4: int,
                                                        rule_v6: int) -> None:
    """A proxied flow arrives from the proxy's address (danted / tinyproxy run in upstream and
    leave from its address), and the relay logs it with its rule, config line, group, node."""
    t = lab.topo
    dst, client = (t.upstream_ip4, t.client_ip4) if v == 4 else (t.upstream_ip6, t.client_ip6)
    body = client_get(lab, dst, port)
    assert body["peer"] == dst, f"expected the proxy's address {dst}, got {body}"
    assert body["peer"] != client
    lines = relay_line_for(gw, body["client_port"])
    assert len(lines) == 1, lines
    line = lines[0]
    rule = manifest_rule(gw, rule_v4 if v == 4 else rule_v6)
    assert (line.proto, line.outbound, line.node) == ("tcp", group, node)
    assert (line.rule, line.config_line) == (rule["index"], rule["line"])
    assert line.src.startswith(f"[{client}]:" if v == 6 else f"{client}:")
    assert line.dst == (f"[{dst}]:{port}" if v == 6 else f"{dst}:{port}")


# --- 3. UDP through SOCKS5 UDP ASSOCIATE ------------------------------------------------------


@pytest.mark.parametrize("v", [4, 6])
def test_udp_through_socks5_udp_associate(lab: Lab, gw: Gw, v: int) -> None:
    """The echo sees danted's address; the reply comes back from the original destination."""
    t = lab.topo
    dst, client = (t.upstream_ip4, t.client_ip4) if v == 4 else (t.upstream_ip6, t.client_ip6)
    peer, _pport, payload, reply_src, sport = udp_exchange(lab, dst, 9001, b"hello-udp")
    assert payload == b"hello-udp"
    assert peer == dst and peer != client, "the echo must see the proxy, not the client"
    assert reply_src == (dst, 9001)
    lines = relay_line_for(gw, sport)
    assert [(f.proto, f.outbound, f.node, f.rule) for f in lines] == [("udp", "socks", "dante", 3)]


@pytest.mark.parametrize("v", [4, 6])
def test_udp_direct_is_not_relayed(lab: Lab, gw: Gw, v: int) -> None:
    t = lab.topo
    dst, client = (t.upstream_ip4, t.client_ip4) if v == 4 else (t.upstream_ip6, t.client_ip6)
    peer, _pport, payload, reply_src, sport = udp_exchange(lab, dst, 9000, b"direct-udp")
    assert (peer, payload, reply_src) == (client, b"direct-udp", (dst, 9000))
    time.sleep(0.3)
    assert relay_line_for(gw, sport, timeout=0) == []


# --- 4. block and direct(mark) ---------------------------------------------------------------


@pytest.mark.parametrize("v", [4, 6])
def test_block_times_out_and_other_flows_still_work(lab: Lab, gw: Gw, v: int) -> None:
    """`block` drops in the kernel: the client's SYNs go unanswered, so connect() times out
    (no RST, no ICMP). A server does listen on that port; other flows keep working."""
    t = lab.topo
    dst, client = (t.upstream_ip4, t.client_ip4) if v == 4 else (t.upstream_ip6, t.client_ip6)
    with lab.socket("client", socket.AF_INET if v == 4 else socket.AF_INET6) as s:
        s.settimeout(2.0)
        t0 = time.monotonic()
        with pytest.raises(TimeoutError):
            s.connect((dst, 8084))
        assert time.monotonic() - t0 >= 1.9
    assert client_get(lab, dst, 8080)["peer"] == client
    assert client_get(lab, dst, 8081)["peer"] == dst
    assert gw.alive


def _ip(lab: Lab, *args: str) -> None:
    r = lab.run("gateway", ["ip", *args])
    assert r.returncode == 0, f"ip {' '.join(args)}: {r.stderr}"


@pytest.mark.parametrize("v", [4, 6])
def test_direct_with_mark_sets_the_mark(lab: Lab, gw: Gw, v: int) -> None:
    """`direct(mark: 0x100)` goes direct, with the mark: observed through policy routing in
    the gateway namespace. We add `ip rule fwmark 0x100 lookup 100` with a `prohibit` default
    in table 100: marked packets then get ICMP "administratively prohibited" and the client's
    connect fails at once, while an unmarked direct flow to the same server still connects."""
    t = lab.topo
    fam = "-4" if v == 4 else "-6"
    dst, client = (t.upstream_ip4, t.client_ip4) if v == 4 else (t.upstream_ip6, t.client_ip6)
    assert client_get(lab, dst, 8085)["peer"] == client  # direct, mark not yet routed anywhere
    _ip(lab, fam, "route", "add", "prohibit", "default", "table", str(MARK_TABLE))
    try:
        _ip(lab, fam, "rule", "add", "fwmark", f"{MARK:#x}/{MARK:#x}", "lookup", str(MARK_TABLE),
            "pref", "100")
        try:
            t0 = time.monotonic()
            with pytest.raises(OSError) as info:
                client_get(lab, dst, 8085, timeout=3.0)
            assert not isinstance(info.value, TimeoutError)
            assert info.value.errno in (errno.EHOSTUNREACH, errno.EACCES, errno.ENETUNREACH), \
                info.value
            assert time.monotonic() - t0 < 1.5
            assert client_get(lab, dst, 8080)["peer"] == client  # unmarked: unaffected
        finally:
            _ip(lab, fam, "rule", "del", "fwmark", f"{MARK:#x}/{MARK:#x}", "lookup",
                str(MARK_TABLE), "pref", "100")
    finally:
        _ip(lab, fam, "route", "del", "prohibit", "default", "table", str(MARK_TABLE))
    assert client_get(lab, dst, 8085)["peer"] == client


# --- 8. a broken peer ------------------------------------------------------------------------


@pytest.mark.parametrize("port,group,node,expect", [
    (8086, "bad", "garbage", "SOCKS5 reply version 0x07 (expected 0x05)"),
    (8087, "badhttp", "garbage_http", "malformed HTTP CONNECT status line"),
])
def test_garbage_proxy_fails_the_flow_not_the_gateway(lab: Lab, gw: Gw, garbage: list[GarbageServer], port: int,
                                                      group: str, node: str,
                                                      expect: str) -> None:
    """A "proxy" of ours that answers garbage: the flow is refused promptly with a log line
    naming the node and the cause; the next flows through good nodes work; the runtime lives."""
    t = lab.topo
    since = gw.log_len()
    refused_promptly(lab, t.upstream_ip4, port)
    m = gw.wait_log(rf"tcp \S+ -> {t.upstream_ip4}:{port} via {group} refused: (.*)$",
                    since=since)
    assert node in m.group(1) and expect in m.group(1), m.group(0)
    assert sum(s.garbage_sent for s in garbage) >= 1  # the flow really dialed the fake
    assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4
    assert client_get(lab, t.upstream_ip6, 8082)["peer"] == t.upstream_ip6
    assert client_get(lab, t.upstream_ip4, 8080)["peer"] == t.client_ip4
    assert gw.alive


def test_group_moves_past_a_garbage_node(lab: Lab, gw: Gw) -> None:
    """Group `badfirst` = [garbage, dante] with fixed(0): garbage passes its health checks,
    so the flow dials it first; the handshake fails, garbage is marked down and the same flow
    is retried on dante."""
    t = lab.topo
    since = gw.log_len()
    body = client_get(lab, t.upstream_ip4, 8088)
    assert body["peer"] == t.upstream_ip4
    lines = relay_line_for(gw, body["client_port"])
    assert [(f.outbound, f.node) for f in lines] == [("badfirst", "dante")]
    gw.wait_log(r"group 'badfirst' \[tcp\]: node 'garbage' is down: "
                r".*SOCKS5 reply version 0x07", since=since)
    assert gw.alive


# --- what the running gateway keeps loaded --------------------------------------------------

# Native libraries of optional features, as /proc/PID/maps names them: this gateway has socks5
# and http nodes only (no vmess/ss/trojan, no ws/grpc transport), so none may be mapped.
OPTIONAL_NATIVE = {"cryptography": "/cryptography/hazmat/bindings/", "blake3": "/blake3/",
                   "websockets": "/websockets/speedups", "aioquic": "/aioquic/"}


def test_a_plain_gateway_maps_no_optional_native_library(lab: Lab, gw: Gw) -> None:
    """Checked on the running process after a proxied flow (the dial path loaded): megabytes of
    RSS each (tests/test_import_contracts.py checks the pure-Python ones by sys.modules)."""
    from dae_py.runtime.lab.procs import descendants

    t = lab.topo
    client_get(lab, t.upstream_ip4, 8081)
    assert gw.proc is not None
    maps = ""
    for pid in (gw.proc.pid, *descendants(gw.proc.pid)):
        try:
            maps += open(f"/proc/{pid}/maps").read()
        except OSError:
            pass
    assert "_ssl" in maps or "libssl" in maps, "the maps were read (the interpreter's own libraries)"
    assert [name for name, path in OPTIONAL_NATIVE.items() if path in maps] == []
