"""Real peers in the upstream namespace: danted (SOCKS5), tinyproxy (HTTP CONNECT), iperf3,
and the lab's own HTTP/UDP peers, including stop/restart for failover tests."""
from __future__ import annotations

import base64
import ipaddress
import json
import socket

import pytest

from dae_py.runtime.lab import Lab, PeerStartError, http_get

pytestmark = pytest.mark.root


class ProxyError(Exception):
    pass


def recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError(f"closed after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def socks5_connect(sock: socket.socket, host: str, port: int,
                   creds: tuple[str, str] | None = None) -> None:
    """RFC 1928 CONNECT (+ RFC 1929 username/password) on a connected socket."""
    sock.sendall(b"\x05\x01" + (b"\x02" if creds else b"\x00"))
    ver, method = recv_exact(sock, 2)
    assert ver == 5
    if method == 0xFF:
        raise ProxyError("no acceptable method")
    if method == 0x02:
        assert creds is not None
        user, pw = creds[0].encode(), creds[1].encode()
        sock.sendall(b"\x01" + bytes([len(user)]) + user + bytes([len(pw)]) + pw)
        _, status = recv_exact(sock, 2)
        if status != 0:
            raise ProxyError(f"authentication failed ({status})")
    ip = ipaddress.ip_address(host)
    atyp = b"\x01" if ip.version == 4 else b"\x04"
    sock.sendall(b"\x05\x01\x00" + atyp + ip.packed + port.to_bytes(2, "big"))
    ver, rep, _, atyp_r = recv_exact(sock, 4)
    if rep != 0:
        raise ProxyError(f"CONNECT refused, reply {rep}")
    alen = {1: 4, 4: 16}.get(atyp_r) or recv_exact(sock, 1)[0]
    recv_exact(sock, alen + 2)


def http_connect(sock: socket.socket, host: str, port: int,
                 creds: tuple[str, str] | None = None) -> int:
    """Send CONNECT, return the proxy's status; the head is read byte by byte so nothing of the
    tunnel is consumed."""
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    req = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
    if creds:
        token = base64.b64encode(f"{creds[0]}:{creds[1]}".encode()).decode()
        req += f"Proxy-Authorization: Basic {token}\r\n"
    sock.sendall((req + "\r\n").encode())
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += recv_exact(sock, 1)
    return int(head.split()[1])


def gateway_socket(lab: Lab, family: int = socket.AF_INET) -> socket.socket:
    s = lab.socket("gateway", family)
    s.settimeout(5)
    return s


@pytest.mark.parametrize("proxy_family,target_family", [
    (socket.AF_INET, socket.AF_INET), (socket.AF_INET, socket.AF_INET6),
    (socket.AF_INET6, socket.AF_INET6),
], ids=["v4-v4", "v4-v6", "v6-v6"])
def test_danted_relays(lab: Lab, proxy_family: int, target_family: int) -> None:
    t = lab.topo
    proxy = t.upstream_ip4 if proxy_family == socket.AF_INET else t.upstream_ip6
    target = t.upstream_ip4 if target_family == socket.AF_INET else t.upstream_ip6
    with gateway_socket(lab, proxy_family) as s:
        s.connect((proxy, 1080))
        socks5_connect(s, target, 8080)
        body = http_get(s, target)
    # The HTTP peer sees danted's external address, not the gateway's.
    assert body["peer"] == target


def test_tinyproxy_relays(lab: Lab) -> None:
    t = lab.topo
    for target in (t.upstream_ip4, t.upstream_ip6):
        with gateway_socket(lab) as s:
            s.connect((t.upstream_ip4, 8888))
            assert http_connect(s, target, 8080) == 200
            body = http_get(s, target)
        assert body["peer"] == target


def test_danted_username_auth() -> None:
    with Lab() as lab:
        peer = lab.start_danted(1081, auth=True)
        assert peer.credentials is not None
        user, pw = peer.credentials
        assert user in lab.users
        t = lab.topo
        with gateway_socket(lab) as s:
            s.connect((t.upstream_ip4, 1081))
            with pytest.raises(ProxyError, match="no acceptable method"):
                socks5_connect(s, t.upstream_ip4, 8080)  # offers only "no auth"
        with gateway_socket(lab) as s:
            s.connect((t.upstream_ip4, 1081))
            with pytest.raises((ProxyError, ConnectionError)):
                socks5_connect(s, t.upstream_ip4, 8080, creds=(user, pw + "x"))
        lab.start_http_peer(8080)
        with gateway_socket(lab) as s:
            s.connect((t.upstream_ip4, 1081))
            socks5_connect(s, t.upstream_ip4, 8080, creds=(user, pw))
            assert http_get(s, t.upstream_ip4)["peer"] == t.upstream_ip4
        assert peer.config_path is not None
        assert "socksmethod: username" in peer.config_path.read_text()


def test_tinyproxy_basic_auth() -> None:
    with Lab() as lab:
        peer = lab.start_tinyproxy(8889, auth=("alice", "s3cret"))
        lab.start_http_peer(8080)
        t = lab.topo
        with gateway_socket(lab) as s:
            s.connect((t.upstream_ip4, 8889))
            assert http_connect(s, t.upstream_ip4, 8080) == 407
        with gateway_socket(lab) as s:
            s.connect((t.upstream_ip4, 8889))
            # tinyproxy 1.11 answers wrong credentials with 401, missing ones with 407.
            assert http_connect(s, t.upstream_ip4, 8080, creds=("alice", "wrong")) in (401, 407)
        with gateway_socket(lab) as s:
            s.connect((t.upstream_ip4, 8889))
            assert http_connect(s, t.upstream_ip4, 8080, creds=peer.credentials) == 200
            assert http_get(s, t.upstream_ip4)["peer"] == t.upstream_ip4


def test_iperf3(lab: Lab) -> None:
    server = lab.start_iperf3(5201)
    try:
        res = lab.run("client", ["iperf3", "-c", lab.topo.upstream_ip4, "-p", "5201",
                                 "-n", "200M", "-J"], timeout=20, check=True)
        result = json.loads(res.stdout)
        assert result["end"]["sum_received"]["bits_per_second"] > 1e8
        assert result["start"]["connected"][0]["local_host"] == lab.topo.client_ip4
    finally:
        server.stop()


def _refused(lab: Lab, ns: str, addr: tuple[str, int]) -> bool:
    with lab.socket(ns) as s:
        s.settimeout(5)
        try:
            s.connect(addr)
        except ConnectionRefusedError:
            return True
    return False


def test_stop_and_restart() -> None:
    with Lab() as lab:
        t = lab.topo
        http = lab.start_http_peer(8081)
        danted = lab.start_danted(1082)
        first_pids = (http.pid, danted.pid)

        http.stop()
        assert not http.running
        assert _refused(lab, "client", (t.upstream_ip4, 8081))
        http.restart()
        assert http.running and http.pid != first_pids[0]
        with lab.socket("client") as s:
            s.settimeout(5)
            s.connect((t.upstream_ip4, 8081))
            assert http_get(s, t.upstream_ip4)["peer"] == t.client_ip4

        danted.stop()
        assert _refused(lab, "gateway", (t.upstream_ip4, 1082))
        danted.start()
        assert danted.pid != first_pids[1]
        with gateway_socket(lab) as s:
            s.connect((t.upstream_ip4, 1082))
            socks5_connect(s, t.upstream_ip4, 8081)
            assert http_get(s, t.upstream_ip4)["peer"] == t.upstream_ip4
        assert danted.log_path.read_text().count("=== ") == 2  # both starts are logged

        tinyproxy = lab.start_tinyproxy(8890)
        tinyproxy.restart()
        with gateway_socket(lab) as s:
            s.connect((t.upstream_ip4, 8890))
            assert http_connect(s, t.upstream_ip4, 8081) == 200
            assert http_get(s, t.upstream_ip4)["peer"] == t.upstream_ip4


def test_start_failure_reports_log() -> None:
    """A server that can't start fails loudly, with its own log in the message."""
    with Lab() as lab:
        lab.start_http_peer(1080)  # takes danted's port
        with pytest.raises(PeerStartError, match=r"(?s)danted-1080 exited.*danted"):
            lab.start_danted(1080)
