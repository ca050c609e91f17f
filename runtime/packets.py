"""Build whole Ethernet frames for BPF_PROG_TEST_RUN (explain, tests, benchmarks), and the
map keys the program uses for them. Map layouts come from contract/maps.py (checked against the
BTF of a built program by tests/test_map_layouts.py)."""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Protocol

from dae_py.contract.maps import DECISION_MUST, FLOW_KEY, FLOW_VALUE, IP_KEY, PNAME_VALUE, U64

IPPROTO_TCP = 6
IPPROTO_UDP = 17
DEFAULT_SRC_MAC = 0x020000000001
DEFAULT_DST_MAC = 0x020000000002

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class FlowSpec:
    l4proto: int
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    mac: int = DEFAULT_SRC_MAC
    dscp: int = 0
    vlan: int | None = None
    tcp_flags: int = 0x02  # SYN: the first packet of a TCP flow

    def __post_init__(self) -> None:
        if self.src.version != self.dst.version:
            raise ValueError("source and destination must be the same IP version")


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of `data`, padded to an even length."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(f: FlowSpec, payload: bytes = b"") -> bytes:
    if f.l4proto == IPPROTO_TCP:
        l4 = struct.pack("!HHIIBBHHH", f.sport, f.dport, 1, 0, 5 << 4, f.tcp_flags, 65535, 0, 0) + payload
    elif f.l4proto == IPPROTO_UDP:
        l4 = struct.pack("!HHHH", f.sport, f.dport, 8 + len(payload), 0) + payload
    else:
        raise ValueError(f"unsupported l4proto {f.l4proto}")
    if f.dst.version == 4:
        ip = struct.pack("!BBHHHBBH4s4s", 0x45, f.dscp << 2, 20 + len(l4), 1, 0x4000, 64, f.l4proto, 0,
                         f.src.packed, f.dst.packed)
        ip = ip[:10] + struct.pack("!H", inet_checksum(ip)) + ip[12:]
        ethertype = 0x0800
    else:
        vtf = (6 << 28) | ((f.dscp << 2) << 20)
        ip = struct.pack("!IHBB16s16s", vtf, len(l4), f.l4proto, 64, f.src.packed, f.dst.packed)
        ethertype = 0x86DD
    eth = DEFAULT_DST_MAC.to_bytes(6, "big") + f.mac.to_bytes(6, "big")
    if f.vlan is not None:
        eth += struct.pack("!HH", 0x8100, f.vlan & 0xFFF)
    return eth + struct.pack("!H", ethertype) + ip + l4


def _addr16(a: IPAddress) -> bytes:
    return a.packed if a.version == 6 else a.packed + bytes(12)


class KeyFields(Protocol):
    """What `flow_key` reads: a FlowSpec has it, and so has `contract.evaluate.Flow`."""

    @property
    def l4proto(self) -> int: ...
    @property
    def src(self) -> IPAddress: ...
    @property
    def sport(self) -> int: ...
    @property
    def dst(self) -> IPAddress: ...
    @property
    def dport(self) -> int: ...


def flow_key(f: KeyFields) -> bytes:
    """struct flow_key: saddr[4], daddr[4] (v4 in word 0), sport, dport (network order), proto, version."""
    return FLOW_KEY.pack(_addr16(f.src), _addr16(f.dst), f.sport, f.dport, f.l4proto, f.dst.version)


def domain_key(dst: IPAddress) -> bytes:
    """struct ip_key: IPv4 as ::ffff:a.b.c.d."""
    if dst.version == 4:
        return IP_KEY.pack(bytes(10) + b"\xff\xff" + dst.packed)
    return IP_KEY.pack(dst.packed)


def domain_value(bits: int, words: int) -> bytes:
    return b"".join(U64.pack((bits >> (64 * i)) & (2**64 - 1)) for i in range(words))


def pname_value(name: str, pid: int = 0, exe: str | None = None) -> bytes:
    """struct pname_value: comm[16] (as two little-endian u64), pid, pad, exe[16] likewise (the
    executable's basename; the same as comm when not given)."""
    comm = name.encode()[:15].ljust(16, b"\0")
    path = (name if exe is None else exe).encode()[:15].ljust(16, b"\0")
    return PNAME_VALUE.pack(int.from_bytes(comm[:8], "little"), int.from_bytes(comm[8:], "little"), pid,
                            int.from_bytes(path[:8], "little"), int.from_bytes(path[8:], "little"))


@dataclass(frozen=True)
class KernelDecision:
    rule: int
    outbound: int
    mark: int
    must: bool


def parse_flow_value(raw: bytes) -> KernelDecision:
    """struct flow_value { struct decision {u32 mark; u16 rule; u8 outbound; u8 flags}; u64 last_seen; }"""
    v = FLOW_VALUE.unpack(raw)
    return KernelDecision(rule=v["decision.rule"], outbound=v["decision.outbound"], mark=v["decision.mark"],
                          must=bool(v["decision.flags"] & DECISION_MUST))


def parse_endpoint(text: str) -> tuple[IPAddress, int]:
    """'1.2.3.4:80' or '[2001:db8::1]:443'."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"invalid IPv6 endpoint {text!r} (expected [addr]:port)")
    else:
        host, sep, port = text.rpartition(":")
        if not sep or ":" in host:
            raise ValueError(f"invalid endpoint {text!r} (expected IP:PORT, or [IPv6]:PORT)")
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"invalid IP address {host!r}") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"invalid port {port!r}")
    return addr, int(port)
