"""Parsers for the scalar values that appear in configs: durations, ports, MACs, marks.

Each raises ValueError with a message fit to show the user as is.
"""
from __future__ import annotations

import ipaddress
import re

_DURATION = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ns|us|ms|s|m|h)")
_UNITS = {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | int | float) -> float:
    """'1m30s' -> 90.0 seconds; a bare number is seconds. A leading '-' is allowed (add_latency)."""
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    sign = -1.0 if text.startswith("-") else 1.0
    text = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(text):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(text) or not text:
        raise ValueError(f"invalid duration {value!r} (expected e.g. '30s', '50ms', '1m30s')")
    return sign * total


def parse_int(text: str) -> int:
    """Decimal, 0x hex, 0o octal or 0b binary."""
    try:
        return int(text.strip(), 0)
    except ValueError:
        raise ValueError(f"invalid number {text!r}") from None


def parse_port_range(text: str) -> tuple[int, int]:
    """'443' or '10080-30000' -> inclusive range."""
    parts = text.strip().split("-")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"invalid port or port range {text!r}")
    lo = int(parts[0])
    hi = int(parts[-1])
    if not (0 <= lo <= 65535 and 0 <= hi <= 65535):
        raise ValueError(f"port {text!r} is out of range 0-65535")
    if lo > hi:
        raise ValueError(f"port range {text!r} is empty ({lo} > {hi})")
    return lo, hi


def parse_network(text: str) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, bool]:
    """An IP or CIDR; returns the network and whether host bits had to be cleared."""
    t = text.strip()
    try:
        net = ipaddress.ip_network(t, strict=False)
    except ValueError:
        raise ValueError(f"invalid IP address or CIDR {text!r}") from None
    if "/" in t:
        try:
            ipaddress.ip_network(t, strict=True)
            return net, False
        except ValueError:
            return net, True
    return net, False


def parse_mark(text: str) -> int:
    mark = parse_int(text)
    if not 0 <= mark <= 0xFFFFFFFF:
        raise ValueError(f"mark {text!r} does not fit in 32 bits")
    return mark
