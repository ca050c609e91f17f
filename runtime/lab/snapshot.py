"""A comparable picture of a namespace's networking state, to prove a runtime left no trace.

The runtime's tests take one snapshot before starting the gateway and one after stopping it and
assert equality. So everything that changes on its own is dropped (counters, cache info,
refcounts, BPF program ids, which are new on every load even of the same object), interface
indexes become names, and lists are sorted. Everything a runtime may add or forget to remove is
kept: qdiscs, tc filters, ip rules, routes of every table (v4 and v6), links, addresses, and the
sysctls the caller names.
"""
from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from pyroute2 import IPRoute

from .nsutil import call_in_netns, sysctl_path

# Attributes that change without anyone touching the configuration.
VOLATILE_ATTRS = frozenset({
    "TCA_STATS", "TCA_STATS2", "TCA_XSTATS", "TCA_STATS_APP", "TCA_BPF_ID", "TCA_PAD",
    "RTA_CACHEINFO", "RTA_EXPIRES", "IFA_CACHEINFO",
})
HEADER_DROP = frozenset({"header", "attrs", "event", "index", "pad1", "pad2", "pad",
                         "stats", "value"})
IFF_UP = 0x1
TC_H_ROOT = 0xFFFFFFFF
CLSACT_PARENTS = (0xFFFFFFF2, 0xFFFFFFF3)  # ingress, egress hooks of clsact


def tc_handle(value: int) -> str:
    """tc's 'major:minor' notation, e.g. 0xfffffff2 -> 'ffff:fff2'."""
    if value == TC_H_ROOT:
        return "root"
    return f"{value >> 16:x}:{value & 0xFFFF:x}"


# Attribute types pyroute2 0.9.7 leaves undecoded ("UNKNOWN"), by context. None: volatile, drop.
QDISC_UNKNOWN: dict[int, str | None] = {12: "TCA_HW_OFFLOAD"}
FILTER_UNKNOWN: dict[int, str | None] = {11: "TCA_CHAIN"}
BPF_OPTIONS_UNKNOWN: dict[int, str | None] = {
    9: "TCA_BPF_FLAGS_GEN",
    10: "TCA_BPF_TAG",  # hash of the instructions: the same object reloaded keeps it
    11: None,  # TCA_BPF_ID: new on every load
}

Names = dict[int, "str | None"]


def _raw_payload(nla: Any) -> str | None:
    """Hex of an undecoded attribute's payload, read from the message buffer."""
    data, offset, length = getattr(nla, "data", None), getattr(nla, "offset", None), \
        getattr(nla, "length", None)
    if data is None or offset is None or not length:
        return None
    return bytes(data[offset + 4 : offset + length]).hex()


def _plain(value: Any, nested: dict[str, Names] | None = None) -> Any:
    """pyroute2 values -> JSON-able values, nested NLAs -> dicts."""
    if isinstance(value, dict):
        if "attrs" in value:
            return _attrs(value["attrs"], {}, {}, nested)
        return {str(k): _plain(v) for k, v in value.items() if k != "header"}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _attrs(attrs: Iterable[Any], ifnames: dict[int, str], unknown: Names,
           nested: dict[str, Names] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in attrs:
        name, value = item[0], item[1]
        if name in VOLATILE_ATTRS:
            continue
        if name == "UNKNOWN":
            nla_type = value.get("header", {}).get("type")
            known = unknown.get(nla_type, f"UNKNOWN_{nla_type}")
            if known is None:
                continue
            name, value = known, _raw_payload(value)
        elif name in ("RTA_OIF", "RTA_IIF", "FRA_IFNAME", "FRA_OIFNAME", "IFLA_MASTER",
                      "IFLA_LINK") and isinstance(value, int):
            value = ifnames.get(value, value)
        elif nested and name in nested and isinstance(value, dict) and "attrs" in value:
            value = _attrs(value["attrs"], ifnames, nested[name])
        value = _plain(value)
        if name in out:  # repeated attribute (e.g. multipath): keep all
            prev = out[name]
            out[name] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[name] = value
    return out


def _msg(msg: Any, ifnames: dict[int, str], drop: Iterable[str] = (), unknown: Names | None = None,
         nested: dict[str, Names] | None = None) -> dict[str, Any]:
    out = {k: _plain(v) for k, v in msg.items() if k not in HEADER_DROP and k not in drop}
    if "index" in msg:
        out["dev"] = ifnames.get(msg["index"], msg["index"])
    out.update(_attrs(msg.get("attrs", []), ifnames, unknown or {}, nested))
    return out


def _sorted(items: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(items, key=lambda d: json.dumps(d, sort_keys=True, default=str))


def _links(ipr: IPRoute) -> tuple[dict[int, str], list[dict[str, Any]]]:
    ifnames: dict[int, str] = {}
    links, masters = [], []
    for link in ipr.get_links():
        name = link.get_attr("IFLA_IFNAME")
        ifnames[link["index"]] = name
        info = link.get_attr("IFLA_LINKINFO")
        xdp = link.get_attr("IFLA_XDP")
        masters.append(link.get_attr("IFLA_MASTER"))
        links.append({
            "ifname": name,
            "kind": info.get_attr("IFLA_INFO_KIND") if info else None,
            "up": bool(link["flags"] & IFF_UP),
            "mtu": link.get_attr("IFLA_MTU"),
            "address": link.get_attr("IFLA_ADDRESS"),
            "xdp_attached": xdp.get_attr("IFLA_XDP_ATTACHED") if xdp else None,
        })
    for link, master in zip(links, masters, strict=True):
        link["master"] = ifnames.get(master, master) if master else None
    return ifnames, _sorted(links)


def _tc(ipr: IPRoute, ifnames: dict[int, str]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    qdiscs, filters = [], []
    parents_by_index: dict[int, set[int]] = {}
    for q in ipr.get_qdiscs():
        d = _msg(q, ifnames, drop=("info", "handle", "parent", "family"), unknown=QDISC_UNKNOWN)
        d["handle"], d["parent"] = tc_handle(q["handle"]), tc_handle(q["parent"])
        qdiscs.append(d)
        parents = parents_by_index.setdefault(q["index"], set())
        if q.get_attr("TCA_KIND") == "clsact":
            parents.update(CLSACT_PARENTS)
        elif q["handle"]:
            parents.add(q["handle"])
    for index, parents in parents_by_index.items():
        for parent in sorted(parents):
            for f in ipr.get_filters(index=index, parent=parent):
                nested = {"TCA_OPTIONS": BPF_OPTIONS_UNKNOWN} \
                    if f.get_attr("TCA_KIND") == "bpf" else None
                d = _msg(f, ifnames, drop=("info", "handle", "parent", "family"),
                         unknown=FILTER_UNKNOWN, nested=nested)
                d["parent"], d["handle"] = tc_handle(f["parent"]), f"{f['handle']:x}"
                d["prio"], d["protocol"] = f["info"] >> 16, f"{f['info'] & 0xFFFF:04x}"
                filters.append(d)
    return _sorted(qdiscs), _sorted(filters)


def _read_sysctls(keys: Iterable[str]) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for key in keys:
        try:
            out[key] = sysctl_path(key).read_text().strip()
        except OSError:
            out[key] = None
    return out


def netlink_snapshot(ns: str | None = None, sysctls: Iterable[str] = ()) -> dict[str, Any]:
    """Normalised qdiscs, tc filters, rules and routes (all tables, v4+v6), links, addresses and
    the named sysctls of namespace `ns` (None: this process's namespace).

    Two snapshots compare equal (`==`) exactly when none of these was changed in between.
    """
    with IPRoute(netns=ns) if ns else IPRoute() as ipr:
        ifnames, links = _links(ipr)
        qdiscs, filters = _tc(ipr, ifnames)
        rules = _sorted(_msg(r, ifnames) for fam in (2, 10) for r in ipr.get_rules(family=fam))
        routes = _sorted(_msg(r, ifnames) for fam in (2, 10) for r in ipr.get_routes(family=fam))
        addrs = _sorted(
            {"dev": ifnames.get(a["index"], a["index"]), "family": a["family"],
             "address": a.get_attr("IFA_ADDRESS"), "local": a.get_attr("IFA_LOCAL"),
             "prefixlen": a["prefixlen"], "scope": a["scope"]}
            for a in ipr.get_addr()
        )
    keys = list(sysctls)
    values = call_in_netns(ns, lambda: _read_sysctls(keys)) if keys else {}
    return {"links": links, "addresses": addrs, "qdiscs": qdiscs, "filters": filters,
            "rules": rules, "routes": routes, "sysctls": values}
