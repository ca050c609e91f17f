"""Map contents that the compiler computes and the runtime loads: LPM tries and port bitmaps.

Each table is written to build/maps/NAME.bin as fixed-size records (key then value, both in the
layout the BPF program declares), so the runtime can bulk-load it without knowing what it means.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from dae_py.contract.ir import IPNetwork


@dataclass
class MapTable:
    """One BPF map's initial contents."""

    name: str
    kind: str  # lpm_trie | array
    key_size: int
    value_size: int
    records: list[tuple[bytes, bytes]] = field(default_factory=list)

    def payload(self) -> bytes:
        return b"".join(k + v for k, v in self.records)


def words_bytes(bits: int, words: int) -> bytes:
    return b"".join(struct.pack("<Q", (bits >> (64 * i)) & 0xFFFFFFFFFFFFFFFF) for i in range(words))


def lpm_key(net: IPNetwork) -> bytes:
    return struct.pack("<I", net.prefixlen) + net.network_address.packed


def cidr_membership(sets: list[tuple[IPNetwork, ...]], family: int) -> dict[IPNetwork, int]:
    """For every prefix in the union of `sets` (one family), the bitmask of sets containing it.

    With longest-prefix matching, an address's longest match p lies in set S exactly when some
    network of S contains p: every network of every set is itself in the trie, so a longer
    network of S containing the address would have been the longest match instead.
    """
    width = 32 if family == 4 else 128
    exact: dict[tuple[int, int], int] = {}  # network -> sets that list exactly this network
    union: dict[tuple[int, int], IPNetwork] = {}
    for i, nets in enumerate(sets):
        for n in nets:
            if n.version != family:
                continue
            k = (int(n.network_address), n.prefixlen)
            exact[k] = exact.get(k, 0) | (1 << i)
            union[k] = n
    out: dict[IPNetwork, int] = {}
    for (addr, plen), net in union.items():
        bits = 0
        for length in range(plen, -1, -1):  # p and all its supernets
            sup = (addr >> (width - length)) << (width - length) if length else 0
            bits |= exact.get((sup, length), 0)
        out[net] = bits
    return out


def lpm_table(name: str, family: int, membership: dict[IPNetwork, int], words: int) -> MapTable:
    t = MapTable(name=name, kind="lpm_trie", key_size=4 + (4 if family == 4 else 16), value_size=8 * words)
    for net in sorted(membership, key=lambda n: (n.prefixlen, int(n.network_address))):
        t.records.append((lpm_key(net), words_bytes(membership[net], words)))
    return t


def port_bitmap(ranges: tuple[tuple[int, int], ...]) -> bytes:
    bits = bytearray(8192)
    for lo, hi in ranges:
        for port in range(lo, hi + 1):
            bits[port >> 3] |= 1 << (port & 7)
    return bytes(bits)


def normalise_net(n: IPNetwork) -> IPNetwork:
    return ipaddress.ip_network(n, strict=False)
