"""End to end: a Datapath around a minimal bpf_sk_assign tproxy program really delivers
clients' (and the gateway's own) TCP and UDP, IPv4 and IPv6, to a transparent proxy socket, and
the kernel really needs what the Datapath sets (the evidence behind sysctls.py).

    client ns  c0 --- g0  gateway ns  g1 --- u0  upstream ns
    10.77.1.2/24      .1          10.77.2.1/24    .2      (and fd77:1::/64, fd77:2::/64)

Upstream answers "UPSTREAM" on 8080 and 8081; the gateway's transparent sockets on 15000
answer "PROXY <original destination>". The program intercepts port 8080 only.
"""
from __future__ import annotations

import os
import selectors
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, cast

import pytest

from dae_py.runtime.datapath import Datapath, sysctls
from dae_py.runtime.datapath._netns import open_iproute, run_in_netns

from . import lab

pytestmark = pytest.mark.root

IP_TRANSPARENT, IP_RECVORIGDSTADDR = 19, 20
IPV6_TRANSPARENT, IPV6_RECVORIGDSTADDR = 75, 74
UP4, UP6 = "10.77.2.2", "fd77:2::2"
PROBES = [("tcp", UP4), ("udp", UP4), ("tcp", UP6), ("udp", UP6)]


class Servers:
    """Upstream echo servers and the gateway's transparent proxy sockets, served by one
    selector thread; every socket is created inside its namespace (a socket belongs to the
    namespace it was created in, whichever thread uses it later)."""

    def __init__(self, gw: str, up: str) -> None:
        self.gw = gw
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.stop = threading.Event()
        for fam, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for port in (8080, 8081):
                for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                    s = run_in_netns(up, self._sock, fam, kind, any_addr, port, False)
                    self._register(s, "upstream")
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                s = run_in_netns(gw, self._sock, fam, kind, any_addr, 15000, True)
                self._register(s, "proxy")
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @staticmethod
    def _sock(fam: int, kind: int, addr: str, port: int, transparent: bool) -> socket.socket:
        s = socket.socket(fam, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        if transparent:
            lvl = socket.IPPROTO_IP if fam == socket.AF_INET else socket.IPPROTO_IPV6
            s.setsockopt(lvl, IP_TRANSPARENT if fam == socket.AF_INET else IPV6_TRANSPARENT, 1)
            if kind == socket.SOCK_DGRAM:
                s.setsockopt(lvl, IP_RECVORIGDSTADDR if fam == socket.AF_INET
                             else IPV6_RECVORIGDSTADDR, 1)
        s.bind((addr, port))
        if kind == socket.SOCK_STREAM:
            s.listen(16)
        s.setblocking(False)
        return s

    def _register(self, s: socket.socket, role: str) -> None:
        self.socks.append(s)
        self.sel.register(s, selectors.EVENT_READ, role)

    def _loop(self) -> None:
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.1):
                try:
                    self._handle(cast(socket.socket, key.fileobj), key.data)  # only sockets are registered
                except OSError:
                    pass

    def _handle(self, s: socket.socket, role: str) -> None:
        if s.type == socket.SOCK_STREAM:
            conn, _ = s.accept()
            conn.settimeout(2)
            with conn:
                conn.recv(100)
                local = conn.getsockname()[0]  # tproxy: the original destination
                conn.sendall(b"UPSTREAM" if role == "upstream" else f"PROXY {local}".encode())
            return
        if role == "upstream":
            _, peer = s.recvfrom(100)
            s.sendto(b"UPSTREAM", peer)
            return
        _, anc, _, peer = s.recvmsg(100, 256)
        orig = None
        for _lvl, typ, data in anc:
            if typ == IP_RECVORIGDSTADDR:
                orig = (socket.inet_ntop(socket.AF_INET, data[4:8]),
                        struct.unpack("!H", data[2:4])[0])
            elif typ == IPV6_RECVORIGDSTADDR:
                orig = (socket.inet_ntop(socket.AF_INET6, data[8:24]),
                        struct.unpack("!H", data[2:4])[0])
        assert orig is not None
        # reply from the original destination: a second transparent socket bound to it
        reply = run_in_netns(self.gw, self._sock, s.family, socket.SOCK_DGRAM, orig[0], orig[1],
                             True)
        with reply:
            reply.sendto(f"PROXY {orig[0]}".encode(), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def probe(ns: str, proto: str, dst: str, port: int = 8080) -> str:
    """What answers a TCP or UDP exchange from `ns` to dst:port ("timeout" if nothing)."""

    def body() -> str:
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        s.settimeout(1.0)
        with s:
            try:
                if proto == "tcp":
                    s.connect((dst, port))
                    s.sendall(b"hi")
                else:
                    s.sendto(b"hi", (dst, port))
                return s.recv(100).decode() or "closed"
            except TimeoutError:
                return "timeout"
            except OSError as exc:
                return f"error: {exc.strerror}"

    return run_in_netns(ns, body)


def results(ns: str, port: int = 8080) -> dict[str, str]:
    return {f"{p}{'6' if ':' in d else '4'}": probe(ns, p, d, port) for p, d in PROBES}


@pytest.fixture
def tlab(make_netns: Callable[[], str]) -> Iterator[dict[str, str]]:
    c, g, u = make_netns(), make_netns(), make_netns()
    lab.add_veth(g, "g0", "c0", peer_ns=c)
    lab.add_veth(g, "g1", "u0", peer_ns=u)
    for ns, ifname, a4, a6 in ((c, "c0", "10.77.1.2", "fd77:1::2"), (g, "g0", "10.77.1.1", "fd77:1::1"),
                               (g, "g1", "10.77.2.1", "fd77:2::1"), (u, "u0", UP4, UP6)):
        lab.add_addr(ns, ifname, a4, 24)
        lab.add_addr(ns, ifname, a6, 64)
    for ns, gw4, gw6 in ((c, "10.77.1.1", "fd77:1::1"), (u, "10.77.2.1", "fd77:2::1"),
                         (g, UP4, UP6)):
        with open_iproute(ns) as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway=gw4)
            ipr.route("add", family=socket.AF_INET6, dst="::/0", gateway=gw6)
    for ns in (c, g, u):
        sysctls.write("net/ipv4/ip_forward", 0, ns)
        sysctls.write("net/ipv6/conf/all/forwarding", 0, ns)
    servers = Servers(g, u)
    try:
        yield {"client": c, "gw": g, "up": u}
    finally:
        servers.close()


@pytest.fixture
def tproxy_fds(require_root: None, bpf_objects: dict[str, Path]) -> Iterator[dict[str, int]]:
    fds = {name: lab.load_prog(bpf_objects["tproxy"], name)
           for name in ("tproxy_ingress", "bounce_egress")}
    yield fds
    for fd in fds.values():
        os.close(fd)


def datapath(tlab: dict[str, str], tmp_path: Path, **kw: Any) -> Datapath:
    return Datapath(lan="g0", wan="auto", fwmark=1, table=100, netns=tlab["gw"],
                    state_path=tmp_path / "state.json", **kw)


ALL_PROXIED = {k: f"PROXY {UP6 if k.endswith('6') else UP4}" for k in ("tcp4", "udp4", "tcp6", "udp6")}


@pytest.mark.parametrize("src_valid_mark", [0, 1])
def test_lan_clients_reach_the_proxy(tlab: dict[str, str], tmp_path: Path,
                                     tproxy_fds: dict[str, int], src_valid_mark: int) -> None:
    """Client traffic to :8080 lands on the proxy socket, TCP and UDP, v4 and v6, also with
    src_valid_mark on (then the Datapath adds accept_local on the LAN interface); traffic to
    :8081 is forwarded untouched (ip_forward, which the Datapath sets)."""
    sysctls.write("net/ipv4/conf/all/src_valid_mark", src_valid_mark, tlab["gw"])
    assert probe(tlab["client"], "tcp", UP4, 8081) == "timeout"  # no forwarding yet
    with datapath(tlab, tmp_path) as dp:
        dp.setup(tproxy_fds["tproxy_ingress"])
        assert results(tlab["client"]) == ALL_PROXIED
        assert set(results(tlab["client"], 8081).values()) == {"UPSTREAM"}


def test_lan_path_without_policy_routing_times_out(tlab: dict[str, str], tmp_path: Path,
                                                   tproxy_fds: dict[str, int]) -> None:
    """The program alone (no fwmark rule / local route): the assigned packets are routed as
    forwarded and dropped, even with forwarding on."""
    g = tlab["gw"]
    sysctls.write("net/ipv4/ip_forward", 1, g)
    sysctls.write("net/ipv6/conf/all/forwarding", 1, g)
    with datapath(tlab, tmp_path, manage_sysctls=False) as dp:
        dp.setup(tproxy_fds["tproxy_ingress"])
        with open_iproute(g) as ipr:
            for fam in (socket.AF_INET, socket.AF_INET6):
                ipr.rule("del", family=fam, fwmark=1, fwmask=1, table=100, priority=1000,
                         protocol=0xDA)
        assert set(results(tlab["client"]).values()) == {"timeout"}


def test_src_valid_mark_without_accept_local_breaks_v4(tlab: dict[str, str], tmp_path: Path,
                                                       tproxy_fds: dict[str, int]) -> None:
    """Why the plan adds accept_local when src_valid_mark is on: without it IPv4 times out
    (the marked packet's source validates through our table as local: a martian)."""
    sysctls.write("net/ipv4/conf/all/src_valid_mark", 1, tlab["gw"])
    with datapath(tlab, tmp_path, manage_sysctls=False) as dp:
        dp.setup(tproxy_fds["tproxy_ingress"])
        assert results(tlab["client"]) == {**ALL_PROXIED, "tcp4": "timeout", "udp4": "timeout"}


@pytest.mark.parametrize("managed", [True, False], ids=["with-accept_local", "without"])
def test_gateway_own_traffic_reaches_the_proxy(tlab: dict[str, str], tmp_path: Path,
                                               tproxy_fds: dict[str, int], managed: bool) -> None:
    """Local-origin path: bounced at the WAN egress into the WAN ingress. With the Datapath's
    accept_local on the re-injecting interface all four reach the proxy; without it IPv4 is
    dropped as a martian (local source address arriving on an interface)."""
    g = tlab["gw"]
    sysctls.write("net/ipv4/conf/all/accept_local", 0, g)
    with datapath(tlab, tmp_path, manage_sysctls=managed) as dp:
        dp.setup(tproxy_fds["tproxy_ingress"], tproxy_fds["bounce_egress"],
                 wan_ingress_fd=tproxy_fds["tproxy_ingress"])
        assert sysctls.read(["net/ipv4/conf/g1/accept_local"], g) == \
            {"net/ipv4/conf/g1/accept_local": "1" if managed else "0"}
        expected = ALL_PROXIED if managed else {**ALL_PROXIED, "tcp4": "timeout",
                                                 "udp4": "timeout"}
        assert results(g) == expected
