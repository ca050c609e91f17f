"""Bounds on the global and per-group options the runtime acts on.

The schema checks shapes; this checks that the runtime can run the value. Each case here was once
accepted and then broke the gateway: `check_interval: 0s` spun a core and reset every proxied
flow, `.nan` killed the health task, a `tcp_check_url` without a scheme raised at start (a
restart loop under systemd). Each function raises ValueError with a message fit for the user.
"""
from __future__ import annotations

import ipaddress
import math
from typing import Any

from .urls import split_url
from .values import parse_duration

# seconds: (minimum, maximum), both allowed
DURATION_BOUNDS: dict[str, tuple[float, float]] = {
    "check_interval": (1.0, 86400.0),  # below 1 s the checks are the load; above a day, they are off
    "check_tolerance": (0.0, 3600.0),
    "sniffing_timeout": (0.0, 60.0),
    "add_latency": (-3600.0, 3600.0),
}


def _fmt(seconds: float) -> str:
    return f"{seconds:g}s" if abs(seconds) >= 1 or seconds == 0 else f"{seconds * 1000:g}ms"


def bounded_duration(key: str, raw: Any) -> float:
    """parse_duration plus: finite, a number or string (not a bool), inside DURATION_BOUNDS[key]."""
    if isinstance(raw, bool) or not isinstance(raw, (str, int, float)):
        raise ValueError(f"{key}: {raw!r} is not a duration (expected e.g. '30s', '50ms')")
    seconds = parse_duration(raw)
    if not math.isfinite(seconds):
        raise ValueError(f"{key}: {raw!r} is not a finite duration")
    lo, hi = DURATION_BOUNDS[key]
    if not lo <= seconds <= hi:
        raise ValueError(f"{key}: {raw!r} is out of range ({_fmt(lo)} to {_fmt(hi)})")
    return seconds


def _require_ips(key: str, after: str, items: list[str]) -> None:
    """The list's items after its first are addresses to reach the target at, without DNS."""
    for item in items:
        try:
            ipaddress.ip_address(item)
        except ValueError:
            raise ValueError(f"{key}: {item!r} is not an IP address (after the {after} come IPs)") from None


def check_tcp_check_url(items: list[str]) -> None:
    """`[URL, IP...]`: an http(s) URL with a host, then IP addresses to reach it at."""
    if not items:
        raise ValueError("tcp_check_url is empty (expected 'http(s)://host[:port]/path' then optional IPs)")
    url, *ips = items
    try:
        u = split_url(url)
    except ValueError as exc:
        raise ValueError(f"tcp_check_url {url!r}: {exc}") from None
    if u.scheme not in ("http", "https") or not u.hostname:
        raise ValueError(f"tcp_check_url {url!r}: expected 'http(s)://host[:port]/path'")
    _require_ips("tcp_check_url", "URL", ips)


def check_udp_check_dns(items: list[str]) -> None:
    """`[HOST[:PORT], IP...]`: a DNS server name (port 53 by default), then its IPs."""
    if not items:
        raise ValueError("udp_check_dns is empty (expected 'host[:port]' then optional IPs)")
    target, *ips = items
    text = target.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"udp_check_dns {target!r}: expected 'host:port' or '[v6]:port'")
    elif text.count(":") == 1:
        host, port = text.split(":")
    else:
        host, port = text, ""
    if not host or "/" in host or " " in host:
        raise ValueError(f"udp_check_dns {target!r}: expected 'host[:port]'")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"udp_check_dns {target!r}: invalid port")
    _require_ips("udp_check_dns", "server", ips)
