"""ip(CIDR, geoip:TAG, ext:FILE:TAG): an address in the answer (response rules only), as dip()
means it; any answer address in the set matches, and a v4 network never matches a v6 address."""
from __future__ import annotations

import ipaddress
from typing import Any

from .base import CheckContext, DnsFieldSpec, IPNet, Query


def _check(ctx: CheckContext, call: Any) -> dict[str, Any]:
    cidrs = ctx.cidrs(call)
    v4, v6 = cidrs if cidrs is not None else ([], [])
    return {"v4": v4, "v6": v6}


def _load(raw: dict[str, Any]) -> tuple[IPNet, ...]:
    return tuple(ipaddress.ip_network(n) for n in (*raw.get("v4", ()), *raw.get("v6", ())))


def _matches(nets: tuple[IPNet, ...], q: Query) -> bool:
    return any(ip.version == n.version and ip in n for ip in q.ips for n in nets)


SPEC = DnsFieldSpec("ip", ("response",), _check, _load, _matches)
