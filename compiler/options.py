"""Bounds on the global and per-group options the runtime acts on.

The schema checks shapes; this checks that the runtime can run the value. Each case here was once
accepted and then broke the gateway: `check_interval: 0s` spun a core and reset every proxied
flow, `.nan` killed the health task, a `tcp_check_url` without a scheme raised at start (a
restart loop under systemd). Each function raises ValueError with a message fit for the user.
"""
from __future__ import annotations

import ipaddress
import math
import re
from typing import Any

from .urls import split_url
from .values import parse_duration

# seconds: (minimum, maximum), both allowed
DURATION_BOUNDS: dict[str, tuple[float, float]] = {
    "check_interval": (1.0, 86400.0),  # below 1 s the checks are the load; above a day, they are off
    "check_tolerance": (0.0, 3600.0),
    "sniffing_timeout": (0.0, 60.0),
    "add_latency": (-3600.0, 3600.0),
    "udphop_interval": (1.0, 86400.0),  # dae's default 30s; Hysteria hops no faster than every 5s
    "interval": (60.0, 30 * 86400.0),  # a subscription's refresh: providers rate-limit
    "warm_pool_idle_timeout": (0.5, 600.0),  # below 0.5 s a pool reopens constantly; servers close sooner than 10 min
}


def _fmt(seconds: float) -> str:
    if abs(seconds) > 86400 and seconds % 3600 == 0:  # '720h', not '2.592e+06s'
        return f"{seconds / 3600:g}h"
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


# ---- dae's other global options ------------------------------------------------------------------
# Each is checked here even when the runtime does not act on it (contract/capabilities.py OPTIONS
# says what it does instead): a value dae would reject is an error here too, so a config that
# compiles here also loads in dae.

#: bpf_conn_state_map_size: entries of the `flows` LRU map. dae's default is 262144; below 1024 a
#: busy LAN evicts live flows' decisions, above 2^24 the map alone pins over a gigabyte.
FLOW_TABLE_BOUNDS = (1024, 1 << 24)


def check_flow_table_size(raw: Any) -> int:
    """bpf_conn_state_map_size -> the `flows` map's max_entries."""
    if isinstance(raw, bool) or not isinstance(raw, int):
        raise ValueError(f"bpf_conn_state_map_size: {raw!r} is not a number of entries")
    lo, hi = FLOW_TABLE_BOUNDS
    if not lo <= raw <= hi:
        raise ValueError(f"bpf_conn_state_map_size: {raw} is out of range ({lo} to {hi} entries)")
    return raw


def check_resolver(key: str, raw: Any) -> tuple[str, int]:
    """bootstrap_resolver / fallback_resolver: 'IPv4:PORT' or '[IPv6]:PORT', as dae reads them."""
    text = str(raw).strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
        ok = bool(sep) and rest.startswith(":")
    else:
        host, sep, port = text.rpartition(":")
        ok = bool(sep) and ":" not in host
    try:
        ip = ipaddress.ip_address(host) if ok else None
    except ValueError:
        ip = None
    if ip is None or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"{key}: {text!r} is not 'IPv4:PORT' or '[IPv6]:PORT' (e.g. '8.8.8.8:53')")
    return str(ip), int(port)


def check_range_text(key: str, raw: Any) -> tuple[int, int]:
    """tls_fragment_length / tls_fragment_interval: 'LO-HI' (bytes, milliseconds), LO <= HI."""
    lo, sep, hi = str(raw).strip().partition("-")
    if not (lo.strip().isdigit() and (not sep or hi.strip().isdigit())):
        raise ValueError(f"{key}: {raw!r} is not 'LO-HI' (e.g. '50-100')")
    a, b = int(lo), int(hi) if sep else int(lo)
    if a > b:
        raise ValueError(f"{key}: {raw!r}: {a} is more than {b}")
    return a, b


# Hysteria's bandwidth units (dae's bandwidth_max_*): bits per second, or a bare number of bytes per second.
_BANDWIDTH = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(b|bps)?\s*$", re.I)
_BANDWIDTH_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}


def check_bandwidth(key: str, raw: Any) -> int:
    """bandwidth_max_tx / _rx -> bytes per second: '200 mbps', '200 m', '1 gb', or 25000000 (bytes/s)."""
    if isinstance(raw, bool):
        raise ValueError(f"{key}: {raw!r} is not a bandwidth")
    if isinstance(raw, int):
        return raw
    m = _BANDWIDTH.match(str(raw))
    if m is None:
        raise ValueError(f"{key}: {raw!r} is not a bandwidth (e.g. '200 mbps', '1 g', or bytes per second)")
    number, prefix, unit = float(m.group(1)), m.group(2).lower(), m.group(3)
    if not prefix and unit is None:
        return int(number)  # a bare number: bytes per second
    return int(number * _BANDWIDTH_SCALE[prefix] / 8)
