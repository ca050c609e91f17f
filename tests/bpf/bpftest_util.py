"""Packet and key builders shared by the libbpf layer tests (kept out of conftest.py so test
modules can import them by a name unique in the tree)."""
from __future__ import annotations

import socket
import struct

from dae_py.runtime.packets import inet_checksum

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_STOLEN = 4
TC_ACT_REDIRECT = 7
TC_ACT_UNSPEC_U32 = 0xFFFFFFFF  # -1 as the kernel's __u32 retval


def ipv4_frame(dst: str, src: str = "192.0.2.1", proto: int = socket.IPPROTO_TCP,
               dport: int = 443, sport: int = 40000) -> bytes:
    """A whole Ethernet + IPv4 + TCP (or UDP) frame, as tc would see it."""
    if proto == socket.IPPROTO_TCP:
        l4 = struct.pack("!HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
    else:
        l4 = struct.pack("!HHHH", sport, dport, 8, 0)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 1, 0x4000, 64, proto, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
    eth = bytes.fromhex("020000000002" "020000000001") + struct.pack("!H", 0x0800)
    return eth + ip + l4


def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def ip_key(addr: str) -> bytes:
    """A hash key holding an IPv4 address in network order, as the program reads it."""
    return socket.inet_aton(addr)


def lpm_key(prefix: str) -> bytes:
    """``struct lpm_v4_key {u32 prefixlen; u32 addr}``: prefixlen host order, addr network."""
    addr, plen = prefix.split("/")
    return u32(int(plen)) + socket.inet_aton(addr)
