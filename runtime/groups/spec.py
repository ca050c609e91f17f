"""A group as the runtime runs it: policy, member nodes, health-check settings, validated.

Read from the manifest's typed GroupEntry / CheckSettings (contract/manifest.py); a JSON dict
(tests, tools) is read through those first. The manifest's JSON form::

    {"name": "proxy", "id": 2, "policy": "min_moving_avg", "fixed_index": 0,
     "nodes": ["n1", "n2"],
     "check": {"tcp_check_url": ["http://host:port/path", "192.0.2.1"],
               "tcp_check_http_method": "HEAD", "udp_check_dns": ["dns-host:53", "192.0.2.53"],
               "check_interval_s": 30.0, "check_tolerance_ms": 50.0}}
"""
from __future__ import annotations

import enum
import ipaddress
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from dae_py.contract.manifest import CheckSettings, GroupEntry
from dae_py.runtime.proxy.base import parse_hostport


class Policy(str, enum.Enum):
    RANDOM = "random"
    FIXED = "fixed"
    MIN = "min"
    MIN_AVG10 = "min_avg10"
    MIN_MOVING_AVG = "min_moving_avg"

    @property
    def by_latency(self) -> bool:
        return self in (Policy.MIN, Policy.MIN_AVG10, Policy.MIN_MOVING_AVG)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class CheckSpec:
    """Health-check settings (dae's defaults when the manifest gives none)."""

    tcp_check_url: str = "http://cp.cloudflare.com"
    tcp_check_ips: tuple[str, ...] = ("1.1.1.1", "2606:4700:4700::1111")
    tcp_check_http_method: str = "HEAD"
    dns_host: str = "dns.google"
    dns_port: int = 53
    dns_ips: tuple[str, ...] = ("8.8.8.8", "2001:4860:4860::8888")
    interval: float = 30.0
    tolerance: float = 0.050
    timeout: float = 10.0
    dns_qname: str = "."

    def __post_init__(self) -> None:
        """Settings the checker could not run are refused here, at start, not at each check."""
        url = urlsplit(self.tcp_check_url)
        try:
            url_port = url.port
        except ValueError:
            url_port = -1
        if url.scheme not in ("http", "https") or not url.hostname or url_port == -1:
            raise ValueError(f"tcp_check_url {self.tcp_check_url!r}: "
                             f"want http(s)://host[:port]/path")
        if not 0 < self.dns_port < 65536:
            raise ValueError(f"udp_check_dns {self.dns_host}:{self.dns_port}: port out of range")
        bad = [ip for ip in self.tcp_check_ips + self.dns_ips if not _is_ip(ip)]
        if bad:
            raise ValueError(f"health check addresses {', '.join(map(repr, bad))}: not IP addresses")
        if not self.interval > 0 or not self.tolerance >= 0:
            raise ValueError(f"check_interval {self.interval:g}s / check_tolerance "
                             f"{self.tolerance * 1000:g}ms: want a positive interval")

    @classmethod
    def from_manifest(cls, raw: CheckSettings | Mapping[str, Any] | None) -> CheckSpec:
        settings = raw if isinstance(raw, CheckSettings) else CheckSettings.from_json(raw)
        kwargs: dict[str, Any] = {}
        if settings.tcp_check_url:
            url, *ips = settings.tcp_check_url
            host = urlsplit(url).hostname or ""
            kwargs["tcp_check_url"] = url
            kwargs["tcp_check_ips"] = tuple(ips) or ((host,) if _is_ip(host) else ())
        if settings.tcp_check_http_method:
            kwargs["tcp_check_http_method"] = settings.tcp_check_http_method.upper()
        if settings.udp_check_dns:
            target, *ips = settings.udp_check_dns
            host, port = parse_hostport(target, 53)
            kwargs["dns_host"], kwargs["dns_port"] = host, port
            kwargs["dns_ips"] = tuple(ips) or ((host,) if _is_ip(host) else ())
        if settings.check_interval_s is not None:
            kwargs["interval"] = settings.check_interval_s
        if settings.check_tolerance_ms is not None:
            kwargs["tolerance"] = settings.check_tolerance_ms / 1000.0
        if not kwargs:
            return cls()
        kwargs["timeout"] = min(10.0, kwargs.get("interval", cls.interval))
        return cls(**kwargs)


_FIXED = re.compile(r"fixed\((\d+)\)")


@dataclass(frozen=True)
class GroupSpec:
    name: str
    id: int
    policy: Policy
    nodes: tuple[str, ...]
    fixed_index: int = 0
    check: CheckSpec = field(default_factory=CheckSpec)
    #: node -> seconds added to its measured latency when the latency policies rank nodes: the
    #: `[add_latency: -500ms]` of the filter that selected it (dae's way to prefer or avoid nodes).
    add_latency: Mapping[str, float] = field(default_factory=dict)

    @classmethod
    def from_manifest(cls, raw: GroupEntry | Mapping[str, Any], *, allow_empty: bool = False) -> GroupSpec:
        """`allow_empty`: a group that waits for subscription nodes (runtime/subscriptions)."""
        entry = raw if isinstance(raw, GroupEntry) else GroupEntry.from_json(raw)
        policy_text, fixed_index = entry.policy, entry.fixed_index
        match = _FIXED.fullmatch(policy_text)
        if match:
            policy_text, fixed_index = "fixed", int(match.group(1))
        try:
            policy = Policy(policy_text)
        except ValueError:
            raise ValueError(f"group '{entry.name}': unknown policy {policy_text!r} "
                             f"(known: {', '.join(p.value for p in Policy)})") from None
        if not entry.nodes and not allow_empty:
            raise ValueError(f"group '{entry.name}': no nodes")
        if entry.nodes and not 0 <= fixed_index < len(entry.nodes):
            raise ValueError(f"group '{entry.name}': fixed({fixed_index}) but the group has "
                             f"{len(entry.nodes)} node(s)")
        bad = [n for n, ms in entry.add_latency_ms.items() if not math.isfinite(ms)]
        if bad:
            raise ValueError(f"group '{entry.name}': add_latency of {', '.join(bad)} is not a number")
        add_latency = {n: ms / 1000.0 for n, ms in entry.add_latency_ms.items() if n in entry.nodes and ms}
        return cls(name=entry.name, id=entry.id, policy=policy, nodes=entry.nodes,
                   fixed_index=fixed_index, check=CheckSpec.from_manifest(entry.check), add_latency=add_latency)
