"""Unsolicited packets at the WAN ingress (templates/bpf/wan.h; docs/local-routing.md): the
compiled `wan_ingress` hands a packet to the tproxy listener only when the gateway bounced it
there itself (it carries DAE_FWMARK, which nothing on the wire can carry). Packets arriving from
the wire that belong to no flow the gateway started, or that mimic the reply direction of one it
did, pass untouched, and none of them reaches the tproxy sockets.

    client ns  c0 --- g0  gateway ns  g1 --- u0  upstream ns (the wire side of the WAN)
    10.78.1.2/24      .1          10.78.2.1/24    .2      (and fd78:1::/64, fd78:2::/64)

The real compiled program runs on the gateway (Datapath: lan_ingress on g0, wan_egress and
wan_ingress on g1, the fwmark policy route), with the runtime's transparent TCP/UDP sockets on
the tproxy port behind the compiled tproxy_guard. Every socket logs what reaches it.
"""
from __future__ import annotations

import ipaddress
import selectors
import socket
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest

from dae_py.compiler.pipeline import compile_config
from dae_py.runtime.bpf import BpfObject
from dae_py.runtime.build import Build, load_tables
from dae_py.runtime.datapath import Datapath
from dae_py.runtime.datapath._netns import open_iproute, run_in_netns
from dae_py.runtime.packets import IPPROTO_TCP, IPPROTO_UDP, FlowSpec, flow_key, parse_flow_value

from . import lab

pytestmark = pytest.mark.root

TPROXY_PORT = 15000
IP_TRANSPARENT, IP_RECVORIGDSTADDR = 19, 20
IPV6_TRANSPARENT, IPV6_RECVORIGDSTADDR = 75, 74
SO_ATTACH_BPF = 50
CLIENT4, CLIENT6 = "10.78.1.2", "fd78:1::2"
GW_WAN4, GW_WAN6 = "10.78.2.1", "fd78:2::1"
UP4, UP6 = "10.78.2.2", "fd78:2::2"
LOCAL_SPORT = 40123  # the gateway's own proxied flow leaves from this port

CONFIG = f"""\
global:
  tproxy_port: {TPROXY_PORT}
  lan_interface: [g0]
  wan_interface: [g1]
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  proxy: {{policy: 'fixed(0)'}}
routing:
  rules:
    - "dport(8080) -> proxy"
  fallback: direct
"""


@dataclass
class Seen:
    """What one logging socket received: (proto, peer address, local address) per packet or
    connection (the local address is the original destination on a transparent socket)."""

    role: str
    got: list[tuple[str, str, str]] = field(default_factory=list)


class Servers:
    """The tproxy sockets in the gateway (guarded, answering "PROXY <original destination>")
    and plain servers on 8080 in the client namespace, all served by one selector thread."""

    def __init__(self, gw: str, client: str, guard_fd: int) -> None:
        self.gw = gw
        self.sel = selectors.DefaultSelector()
        self.socks: list[socket.socket] = []
        self.seen = {"proxy": Seen("proxy"), "client": Seen("client")}
        self.stop = threading.Event()
        for fam, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                self._register(run_in_netns(gw, self._sock, fam, kind, any_addr, TPROXY_PORT, guard_fd), "proxy")
                self._register(run_in_netns(client, self._sock, fam, kind, any_addr, 8080, None), "client")
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    @staticmethod
    def _sock(fam: int, kind: int, addr: str, port: int, guard_fd: int | None) -> socket.socket:
        s = socket.socket(fam, kind)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if fam == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        lvl = socket.IPPROTO_IP if fam == socket.AF_INET else socket.IPPROTO_IPV6
        if kind == socket.SOCK_DGRAM:  # the destination of each datagram (tproxy: the original)
            s.setsockopt(lvl, IP_RECVORIGDSTADDR if fam == socket.AF_INET else IPV6_RECVORIGDSTADDR, 1)
        if guard_fd is not None:  # the runtime's tproxy socket: transparent, guarded
            s.setsockopt(lvl, IP_TRANSPARENT if fam == socket.AF_INET else IPV6_TRANSPARENT, 1)
            s.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, guard_fd)
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
                    self._handle(cast(socket.socket, key.fileobj), key.data)
                except OSError:
                    pass

    def _handle(self, s: socket.socket, role: str) -> None:
        seen = self.seen[role]
        if s.type == socket.SOCK_STREAM:
            conn, peer = s.accept()
            conn.settimeout(2)
            with conn:
                local = conn.getsockname()[0]  # tproxy: the original destination
                seen.got.append(("tcp", peer[0], local))
                conn.recv(100)
                conn.sendall(f"PROXY {local}".encode() if role == "proxy" else b"CLIENT")
            return
        _, anc, _, peer = s.recvmsg(100, 256)
        orig = s.getsockname()[0]
        for _lvl, typ, data in anc:
            if typ == IP_RECVORIGDSTADDR:
                orig = socket.inet_ntop(socket.AF_INET, data[4:8])
            elif typ == IPV6_RECVORIGDSTADDR:
                orig = socket.inet_ntop(socket.AF_INET6, data[8:24])
        seen.got.append(("udp", peer[0], orig))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        for s in self.socks:
            s.close()


def exchange(ns: str, proto: str, dst: str, port: int, src: tuple[str, int] | None = None,
             timeout: float = 0.5) -> str:
    """A TCP connection (or a UDP datagram) from `ns`, optionally from a given source; the
    answer, "timeout", or the error."""

    def body() -> str:
        fam = socket.AF_INET6 if ":" in dst else socket.AF_INET
        s = socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        s.settimeout(timeout)
        with s:
            try:
                if src is not None:
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    s.bind(src)
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


@pytest.fixture
def wlab(make_netns: Callable[[], str]) -> dict[str, str]:
    c, g, u = make_netns(), make_netns(), make_netns()
    lab.add_veth(g, "g0", "c0", peer_ns=c)
    lab.add_veth(g, "g1", "u0", peer_ns=u)
    for ns, ifname, a4, a6 in ((c, "c0", CLIENT4, CLIENT6), (g, "g0", "10.78.1.1", "fd78:1::1"),
                               (g, "g1", GW_WAN4, GW_WAN6), (u, "u0", UP4, UP6)):
        lab.add_addr(ns, ifname, a4, 24)
        lab.add_addr(ns, ifname, a6, 64)
    for ns, gw4, gw6 in ((c, "10.78.1.1", "fd78:1::1"), (u, GW_WAN4, GW_WAN6), (g, UP4, UP6)):
        with open_iproute(ns) as ipr:
            ipr.route("add", dst="0.0.0.0/0", gateway=gw4)
            ipr.route("add", family=socket.AF_INET6, dst="::/0", gateway=gw6)
    return {"client": c, "gw": g, "up": u}


@pytest.fixture
def program(require_root: None, tmp_path: Path) -> Iterator[tuple[BpfObject, Build]]:
    compile_config(None, tmp_path / "build", text=CONFIG, name="wan.yaml")
    build = Build.open(tmp_path / "build")
    obj = BpfObject(build.object_path)
    try:
        obj.load()
        load_tables(obj, build)
        yield obj, build
    finally:
        obj.close()


def test_unsolicited_wan_packets_pass_untouched_and_never_reach_the_tproxy_sockets(
        wlab: dict[str, str], program: tuple[BpfObject, Build], tmp_path: Path) -> None:
    obj, build = program
    g, up, client = wlab["gw"], wlab["up"], wlab["client"]
    servers = Servers(g, client, obj.program_fd("tproxy_guard"))
    dp = Datapath(lan="g0", wan="g1", fwmark=build.manifest.settings.fwmark, table=100, netns=g,
                  state_path=tmp_path / "state.json")
    try:
        dp.setup(obj.program_fd("lan_ingress"), obj.program_fd("wan_egress"),
                 wan_ingress_fd=obj.program_fd("wan_ingress"))
        # The bounce works: the gateway's own flows to :8080 (the rule's port) reach the tproxy
        # sockets through wan_egress -> wan_ingress, so wan_ingress is live on g1.
        for proto in ("tcp", "udp"):
            for gw_addr, dst in ((GW_WAN4, UP4), (GW_WAN6, UP6)):
                assert exchange(g, proto, dst, 8080, src=(gw_addr, LOCAL_SPORT)) == \
                    ("PROXY " + dst if proto == "tcp" else "timeout")  # the UDP socket only logs
        own = list(servers.seen["proxy"].got)
        assert sorted(own) == sorted([(p, a, d) for p in ("tcp", "udp")
                                      for a, d in ((GW_WAN4, UP4), (GW_WAN6, UP6))])

        # From the wire: (1) to a LAN host through the gateway, on the rule's port; (2) to the
        # gateway's own WAN address on that port; (3) straight at the tproxy port; (4) the
        # reply direction of the gateway's proxied flow, from upstream:8080 to its source port.
        answers = {}
        for proto in ("tcp", "udp"):
            for fam, client_addr, gw_addr, up_addr in (("4", CLIENT4, GW_WAN4, UP4), ("6", CLIENT6, GW_WAN6, UP6)):
                answers[f"{proto}{fam} to the LAN host"] = exchange(up, proto, client_addr, 8080)
                answers[f"{proto}{fam} to the gateway :8080"] = exchange(up, proto, gw_addr, 8080)
                answers[f"{proto}{fam} to the tproxy port"] = exchange(up, proto, gw_addr, TPROXY_PORT)
                answers[f"{proto}{fam} as the reply of the gateway's flow"] = exchange(
                    up, proto, gw_addr, LOCAL_SPORT, src=(up_addr, 8080))
        proxied = [a for a in answers.values() if a.startswith("PROXY")]
        assert proxied == [], answers
        # Nothing from the wire reached a tproxy socket (only the gateway's own flows above).
        assert servers.seen["proxy"].got == own, servers.seen["proxy"].got
        # Passed untouched: the LAN host got the packets with their own addresses (TCP answered
        # end to end; the reply leaves the LAN host for a port no rule sends to the proxy).
        for fam in ("4", "6"):
            assert answers[f"tcp{fam} to the LAN host"] == "CLIENT"
        assert sorted(servers.seen["client"].got) == sorted(
            [(p, up_addr, c) for p in ("tcp", "udp") for up_addr, c in ((UP4, CLIENT4), (UP6, CLIENT6))])
        # The gateway's own address answers as it would without the gateway's programs.
        for fam in ("4", "6"):
            assert answers[f"tcp{fam} to the gateway :8080"] == "error: Connection refused"
            assert answers[f"tcp{fam} to the tproxy port"] == "timeout"  # the guard drops the SYN
        # No packet from the wire was given a proxied decision: the only proxied flows in the
        # table are the gateway's own four.
        assert proxied_flows(obj) == {flow_key(FlowSpec(proto, ipaddress.ip_address(a), LOCAL_SPORT,
                                                        ipaddress.ip_address(d), 8080))
                                      for proto in (IPPROTO_TCP, IPPROTO_UDP)
                                      for a, d in ((GW_WAN4, UP4), (GW_WAN6, UP6))}
    finally:
        dp.teardown()
        servers.close()


def proxied_flows(obj: BpfObject) -> set[bytes]:
    """Keys of the flow table whose decision sends the flow to a group (outbound >= 2)."""
    return {k for k, v in obj.map("flows").items() if parse_flow_value(v).outbound >= 2}
