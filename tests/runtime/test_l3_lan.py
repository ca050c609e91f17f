"""A LAN interface without an Ethernet header (a tun device, as WireGuard/OpenVPN/PPP give):
the runtime attaches `lan_ingress_l3` there, and flows from it go direct or through the relay
like flows from an Ethernet LAN.

The "client" behind the tun device is this test: it writes IPv4/TCP packets into the device and
reads what the gateway routes back, speaking just enough TCP to send one HTTP request and read
the answer of the lab's HTTP peer, which reports the source address it saw.
"""
from __future__ import annotations

import fcntl
import ipaddress
import json
import os
import re
import select
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.runtime.packets import inet_checksum

from .helpers import Gw, Lab, flow_lines, gateway, lab_config, parse_exit_stats, runtime_lab

pytestmark = pytest.mark.root

TUN_NAME = "dae-tun0"
TUN_NET = "10.231.9.0/24"
TUN_GATEWAY = "10.231.9.1"
TUN_CLIENT = "10.231.9.2"
TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000
SYN, RST, PSH, ACK = 0x02, 0x04, 0x08, 0x10


def tcp_packet(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int,
               payload: bytes = b"") -> bytes:
    """An IPv4/TCP packet with correct checksums (the stack behind the tun device checks them)."""
    s, d = ipaddress.IPv4Address(src).packed, ipaddress.IPv4Address(dst).packed
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 65535, 0, 0) + payload
    pseudo = s + d + struct.pack("!BBH", 0, 6, len(tcp))
    tcp = tcp[:16] + struct.pack("!H", inet_checksum(pseudo + tcp)) + tcp[18:]
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0x4000, 64, 6, 0, s, d)
    return ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:] + tcp


def parse_tcp(pkt: bytes) -> tuple[int, int, int, int, int, bytes] | None:
    """(sport, dport, seq, ack, flags, payload) of an IPv4/TCP packet, else None."""
    if len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6:
        return None
    ihl = (pkt[0] & 0xF) * 4
    total = struct.unpack("!H", pkt[2:4])[0]
    sport, dport, seq, ack, off, flags = struct.unpack("!HHIIBB", pkt[ihl:ihl + 14])
    return sport, dport, seq, ack, flags, pkt[ihl + (off >> 4) * 4:total]


class TunClient:
    """One TCP connection at a time from TUN_CLIENT, through the tun device's file descriptor."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def _read(self, sport: int, dport: int, timeout: float) -> tuple[int, int, int, bytes]:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no TCP packet for port {sport} within {timeout} s")
            if not select.select([self.fd], [], [], left)[0]:
                continue
            got = parse_tcp(os.read(self.fd, 65536))
            if got and got[0] == dport and got[1] == sport:
                return got[2], got[3], got[4], got[5]

    def http_get(self, dst: str, dport: int, sport: int, timeout: float = 10.0) -> dict:
        """Handshake, one GET, the JSON body of the answer; then a RST."""
        write = lambda flags, seq, ack, data=b"": os.write(  # noqa: E731 - a one-line helper kept beside its uses
            self.fd, tcp_packet(TUN_CLIENT, dst, sport, dport, seq, ack, flags, data))
        isn = 1000
        write(SYN, isn, 0)
        while True:
            seq, _, flags, _ = self._read(sport, dport, timeout)
            if flags & (SYN | ACK) == SYN | ACK:
                break
        peer_next = seq + 1
        request = f"GET / HTTP/1.0\r\nHost: {dst}\r\n\r\n".encode()
        write(ACK, isn + 1, peer_next)
        write(PSH | ACK, isn + 1, peer_next, request)
        body = b""
        try:
            while b"}" not in body:
                seq, _, flags, data = self._read(sport, dport, timeout)
                if data and seq == peer_next:
                    body += data
                    peer_next += len(data)
                    write(ACK, isn + 1 + len(request), peer_next)
                if flags & RST:
                    raise ConnectionResetError(f"reset by {dst}:{dport} after {body!r}")
        finally:
            write(RST | ACK, isn + 1 + len(request), peer_next)
        return json.loads(body.split(b"\r\n\r\n", 1)[1])


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        lab.start_danted(1080)
        lab.start_http_peer(8081)
        lab.start_http_peer(8443)
        yield lab


@pytest.fixture(scope="module")
def tun(lab: Lab) -> Iterator[TunClient]:
    def open_tun() -> int:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", TUN_NAME.encode(), IFF_TUN | IFF_NO_PI))
        return fd

    fd = lab.call_in("gateway", open_tun)  # the device lives as long as the fd, in the gateway
    try:
        for argv in (["ip", "addr", "add", f"{TUN_GATEWAY}/24", "dev", TUN_NAME],
                     ["ip", "link", "set", TUN_NAME, "up"]):
            lab.run("gateway", argv, check=True)
        lab.run("upstream", ["ip", "route", "add", TUN_NET, "via", lab.topo.gateway_wan_ip4], check=True)
        yield TunClient(fd)
    finally:
        os.close(fd)
        lab.run("upstream", ["ip", "route", "del", TUN_NET])


@pytest.fixture(scope="module")
def gw(lab: Lab, tun: TunClient, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    cfg = lab_config(lab.topo, rules=["dport(8443) -> proxy"], fallback="direct")
    cfg = cfg.replace(f"lan_interface: [{lab.topo.gateway_lan_if}]",
                      f"lan_interface: [{lab.topo.gateway_lan_if}, {TUN_NAME}]")
    with gateway(lab, cfg, tmp_path_factory.mktemp("l3")) as g:
        yield g


def test_the_l3_program_is_attached_to_the_tun_device(lab: Lab, gw: Gw) -> None:
    gw.wait_log(rf"gateway ready: .* lan {lab.topo.gateway_lan_if},{TUN_NAME} \(L3\)")
    shown = lab.run("gateway", ["tc", "filter", "show", "dev", TUN_NAME, "ingress"], check=True).stdout
    assert "lan_ingress_l3" in shown, shown
    eth = lab.run("gateway", ["tc", "filter", "show", "dev", lab.topo.gateway_lan_if, "ingress"],
                  check=True).stdout
    assert re.search(r"\blan_ingress\b(?!_l3)", eth) and "lan_ingress_l3" not in eth, eth


def test_direct_and_proxied_flows_from_an_l3_lan(lab: Lab, gw: Gw, tun: TunClient) -> None:
    up4 = lab.topo.upstream_ip4
    direct = tun.http_get(up4, 8081, 41001)
    assert direct["peer"] == TUN_CLIENT  # routed by the kernel, source kept
    since = len(gw.log_text())
    proxied = tun.http_get(up4, 8443, 41002)
    assert proxied["peer"] == up4  # the relay's dial through danted (upstream's own address)
    gw.wait_log(rf"tcp {TUN_CLIENT}:41002 -> {up4}:8443 .* via proxy node dante", since=since)
    assert [f for f in flow_lines(gw.log_text()) if f.src == f"{TUN_CLIENT}:41001"] == []
    gw.stop()
    kernel, relay = parse_exit_stats(gw.log_text())
    assert kernel["proxy"][0] > 0 and kernel["direct"][0] > 0, kernel
    assert relay["proxy"] >= 1, relay


def test_an_l3_lan_without_the_l3_program_is_refused_before_any_change(
        lab: Lab, tun: TunClient, tmp_path: Path) -> None:
    from dae_py.runtime.datapath import Datapath, InterfaceResolutionError

    dp = Datapath(lan=[TUN_NAME], wan=None, fwmark=0x8000000, table=2023, netns=lab.ns("gateway"),
                  state_path=tmp_path / "state.json")
    before = lab.run("gateway", ["tc", "qdisc", "show", "dev", TUN_NAME], check=True).stdout
    with pytest.raises(InterfaceResolutionError, match=rf"{TUN_NAME} carries bare IP packets"):
        dp.setup(ingress_fd=-1)  # never used: the check comes before the first change
    assert lab.run("gateway", ["tc", "qdisc", "show", "dev", TUN_NAME], check=True).stdout == before
