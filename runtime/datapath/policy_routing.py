"""The policy routing that turns "the tc program marked this packet" into local delivery.

`bpf_sk_assign` only pre-selects the socket; the IP layer still routes the packet, and a
destination that isn't local gets forwarded (and `ip_forward` drops an skb that carries a socket)
unless routing says "local". Hence, per address family:

    ip rule add fwmark MARK/MASK lookup TABLE pref PRIO
    ip route add local 0.0.0.0/0 dev lo table TABLE        (IPv6: local ::/0)

Checked on this kernel (6.18, veth lab): without them both TCP and UDP, v4 and v6, time out
whatever the sysctls; with them they reach the proxy socket (the matrix is in sysctls.py).

Adds are idempotent and ownership-aware: `ensure_*` adds only what is missing and says whether
it did, so the caller records (and later removes) exactly what it added. Something equivalent
that was already there is left alone, both now and at removal. Removals are tolerant of the
object already being gone.
"""
from __future__ import annotations

import errno
import socket
from dataclasses import asdict, dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

#: Early enough that marked packets reach the local table before host policy rules (VPN
#: clients such as wg-quick add theirs at 32764/32765) can send them elsewhere.
DEFAULT_RULE_PRIORITY = 1000
#: The routing-protocol tag (`proto 218` in `ip rule` / `ip route`) on what we add: it tells an
#: operator where the entries come from and lets removal match our entry and nothing else.
#: 218 (0xda) is not among the numbers iproute2's rt_protos assigns.
DEFAULT_PROTO = 0xDA
FAMILIES = (socket.AF_INET, socket.AF_INET6)
_FR_ACT_TO_TBL = 1
_RTN_LOCAL = 2
_RT_SCOPE_HOST = 254
_GONE = (errno.ENOENT, errno.ESRCH, errno.ENODEV)


_FAMILY_NAMES: dict[int, str] = {socket.AF_INET: "inet", socket.AF_INET6: "inet6"}


def family_name(family: int) -> str:
    return _FAMILY_NAMES[family]


@dataclass(frozen=True)
class FwmarkRule:
    """`ip [-6] rule add fwmark MARK/MASK lookup TABLE pref PRIORITY`."""

    family: int
    fwmark: int
    fwmask: int
    table: int
    priority: int = DEFAULT_RULE_PRIORITY
    protocol: int = DEFAULT_PROTO

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class LocalRoute:
    """`ip [-6] route add local 0.0.0.0/0 (::/0) dev lo table TABLE`."""

    family: int
    table: int
    protocol: int = DEFAULT_PROTO

    @property
    def dst(self) -> str:
        return "0.0.0.0/0" if self.family == socket.AF_INET else "::/0"

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


def _table_of(msg: Any) -> int:
    return msg.get_attr("FRA_TABLE") or msg.get_attr("RTA_TABLE") or msg["table"]


# --- rules ----------------------------------------------------------------------------------


def find_rules(ipr: Any, rule: FwmarkRule) -> list[Any]:
    """Rules equivalent to `rule`: same family, fwmark/mask, table and nothing else selecting
    (no from/to/iif/oif...). The priority is not compared: an equivalent rule elsewhere
    already does the job, and adding a second copy would only be noise."""
    out = []
    for msg in ipr.get_rules(family=rule.family):
        if msg["action"] != _FR_ACT_TO_TBL or _table_of(msg) != rule.table:
            continue
        if msg["src_len"] or msg["dst_len"]:
            continue
        if (msg.get_attr("FRA_FWMARK") or 0) != rule.fwmark:
            continue
        mask = msg.get_attr("FRA_FWMASK")
        if (0xFFFFFFFF if mask is None else mask) != rule.fwmask:
            continue
        if any(msg.get_attr(a) for a in ("FRA_IIFNAME", "FRA_OIFNAME", "FRA_UID_RANGE",
                                          "FRA_SPORT_RANGE", "FRA_DPORT_RANGE", "FRA_L3MDEV",
                                          "FRA_IP_PROTO", "FRA_GOTO")):
            continue
        if msg["flags"] & 0x2:  # FIB_RULE_INVERT: "not fwmark ..." is a different rule
            continue
        out.append(msg)
    return out


def rule_present(ipr: Any, rule: FwmarkRule) -> bool:
    return bool(find_rules(ipr, rule))


def add_rule(ipr: Any, rule: FwmarkRule) -> bool:
    """Add the rule; False if an identical one appeared meanwhile (EEXIST)."""
    try:
        ipr.rule("add", family=rule.family, fwmark=rule.fwmark, fwmask=rule.fwmask,
                 table=rule.table, priority=rule.priority, action="to_tbl",
                 protocol=rule.protocol)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    return True


def ensure_rule(ipr: Any, rule: FwmarkRule) -> bool:
    """Add the rule unless an equivalent one exists. True iff this call added it."""
    return not rule_present(ipr, rule) and add_rule(ipr, rule)


def delete_rule(ipr: Any, rule: FwmarkRule) -> bool:
    """Delete exactly this rule (priority and protocol tag included, so an equivalent rule
    that someone else owns is never touched). True if deleted; False if already gone."""
    if not any(_owned_rule(m, rule) for m in find_rules(ipr, rule)):
        return False
    try:
        ipr.rule("del", family=rule.family, fwmark=rule.fwmark, fwmask=rule.fwmask,
                 table=rule.table, priority=rule.priority, action="to_tbl",
                 protocol=rule.protocol)
    except NetlinkError as exc:
        if exc.code in _GONE:
            return False
        raise
    return True


def _owned_rule(msg: Any, rule: FwmarkRule) -> bool:
    return (msg.get_attr("FRA_PRIORITY") or 0) == rule.priority and (
        msg.get_attr("FRA_PROTOCOL") or 0) == rule.protocol


# --- routes ---------------------------------------------------------------------------------


def _lo_index(ipr: Any) -> int:
    found = ipr.link_lookup(ifname="lo")
    if not found:
        raise RuntimeError("no 'lo' interface in this network namespace")
    return found[0]


def find_routes(ipr: Any, route: LocalRoute) -> list[Any]:
    """`local` default routes via lo in `route.table`, whoever added them."""
    lo = _lo_index(ipr)
    return [
        msg
        for msg in ipr.get_routes(family=route.family, table=route.table)
        if msg["dst_len"] == 0
        and msg["type"] == _RTN_LOCAL
        and _table_of(msg) == route.table
        and msg.get_attr("RTA_OIF") == lo
    ]


def route_present(ipr: Any, route: LocalRoute) -> bool:
    return bool(find_routes(ipr, route))


def add_route(ipr: Any, route: LocalRoute) -> bool:
    """Add the route; False if one appeared meanwhile (EEXIST). `scope host` is what
    iproute2 uses for local routes; the kernel refuses a local route with universe scope."""
    try:
        ipr.route("add", family=route.family, dst=route.dst, type="local",
                  oif=_lo_index(ipr), table=route.table, scope=_RT_SCOPE_HOST,
                  proto=route.protocol)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    return True


def ensure_route(ipr: Any, route: LocalRoute) -> bool:
    """Add the route unless one is there. True iff this call added it."""
    return not route_present(ipr, route) and add_route(ipr, route)


def delete_route(ipr: Any, route: LocalRoute) -> bool:
    """Delete our `local default dev lo` route (the one with our protocol tag) from the table;
    False if already gone."""
    found = [m for m in find_routes(ipr, route) if m["proto"] == route.protocol]
    if not found:
        return False
    msg = found[0]
    kwargs: dict[str, Any] = {}
    if msg.get_attr("RTA_PRIORITY") is not None:
        kwargs["priority"] = msg.get_attr("RTA_PRIORITY")
    try:
        ipr.route("del", family=route.family, dst=route.dst, type="local",
                  oif=_lo_index(ipr), table=route.table, scope=_RT_SCOPE_HOST,
                  proto=route.protocol, **kwargs)
    except NetlinkError as exc:
        if exc.code in _GONE:
            return False
        raise
    return True
