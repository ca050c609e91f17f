"""C expressions for single matches, shared by the generated classifiers.

Every function returns a C boolean expression over `p` (struct pkt) and the lookups done at the
top of classify(). Constants are written the way a person would: hex words with the dotted form
in a comment.
"""
from __future__ import annotations

import ipaddress

from dae_py.contract.ir import L4_TCP, L4_UDP

L4_NAMES = {L4_TCP: "IPPROTO_TCP", L4_UDP: "IPPROTO_UDP"}


def any_of(terms: list[str]) -> str:
    if not terms:
        return "0"
    if len(terms) == 1:
        return terms[0]
    return "(" + " || ".join(terms) + ")"


def all_of(terms: list[str]) -> str:
    if not terms:
        return "1"
    if len(terms) == 1:
        return terms[0]
    return " && ".join(terms)


def net4(addr_field: str, net: ipaddress.IPv4Network) -> str:
    base = int(net.network_address)
    if net.prefixlen == 32:
        return f"{addr_field}[0] == 0x{base:08x} /* {net.network_address} */"
    if net.prefixlen == 0:
        return "1"
    mask = (0xFFFFFFFF << (32 - net.prefixlen)) & 0xFFFFFFFF
    return f"IP4_IN({addr_field}[0], 0x{base:08x}, 0x{mask:08x}) /* {net} */"


def net6(addr_field: str, net: ipaddress.IPv6Network) -> str:
    base = int(net.network_address)
    terms = []
    for i in range(4):
        word = (base >> (96 - 32 * i)) & 0xFFFFFFFF
        bits = min(max(net.prefixlen - 32 * i, 0), 32)
        if bits == 0:
            break
        if bits == 32:
            terms.append(f"{addr_field}[{i}] == 0x{word:08x}")
        else:
            mask = (0xFFFFFFFF << (32 - bits)) & 0xFFFFFFFF
            terms.append(f"({addr_field}[{i}] & 0x{mask:08x}) == 0x{word:08x}")
    if not terms:
        return "1"
    return "(" + " && ".join(terms) + f") /* {net} */" if len(terms) > 1 else terms[0] + f" /* {net} */"


def cidrs(addr_field: str, v4: tuple[ipaddress.IPv4Network, ...], v6: tuple[ipaddress.IPv6Network, ...]) -> str:
    parts = []
    if v4:
        parts.append(f"(p->ipversion == 4 && {any_of([net4(addr_field, n) for n in v4])})")
    if v6:
        parts.append(f"(p->ipversion == 6 && {any_of([net6(addr_field, n) for n in v6])})")
    return any_of(parts)


def ports(port_field: str, ranges: tuple[tuple[int, int], ...]) -> str:
    terms = []
    for lo, hi in ranges:
        if lo == hi:
            terms.append(f"{port_field} == {lo}")
        elif lo == 0 and hi == 65535:
            terms.append("1")
        elif lo == 0:
            terms.append(f"{port_field} <= {hi}")
        elif hi == 65535:
            terms.append(f"{port_field} >= {lo}")
        else:
            terms.append(f"({port_field} >= {lo} && {port_field} <= {hi})")
    return any_of(terms)


def comm_words(name: str) -> tuple[int, int]:
    raw = name.encode()[:15].ljust(16, b"\0")
    return int.from_bytes(raw[:8], "little"), int.from_bytes(raw[8:], "little")


def negate(expr: str) -> str:
    return f"!({expr})"
