"""Nodes, subscriptions and groups: parse node links and resolve each group's node list.

Groups are resolved at compile time (filters evaluated against the node pool: the config's
nodes and those of `file://` subscriptions), so the manifest lists concrete node names per
group. With subscriptions, each group's checked filter (contract/nodefilter.py) is written too:
the runtime evaluates it again on the nodes it fetches.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dae_py.contract import nodefilter
from dae_py.contract.capabilities import CHAIN_HOPS, KNOWN_PROTOCOLS, RUNTIME_PROTOCOLS, protocol, udp_missing
from dae_py.contract.proxy_links import LinkError, parse_link
from dae_py.contract.userregex import compile_user_regex

from .diagnostics import Diagnostics, SourcePos, did_you_mean
from .load import JsonPath, LoadedConfig
from .options import bounded_duration, check_tcp_check_url, check_udp_check_dns
from .rules import Call, RuleSyntaxError, parse_filter
from .subscriptions import Subscriptions, check_subscriptions

# The protocols the runtime can dial today (contract/capabilities.py); the others parse and
# validate but are reported, with what the runtime is missing for them.
DIALABLE = frozenset(RUNTIME_PROTOCOLS)
KNOWN = KNOWN_PROTOCOLS


def _chain_undialable(hops: list[dict[str, Any]]) -> str | None:
    """Why the runtime cannot dial the chain `hops[0] -> ... -> hops[-1]`, or None."""
    for i, hop in enumerate(hops, start=1):
        if hop["protocol"] not in DIALABLE:
            return f"hop {i} is {hop['protocol']}, which the runtime does not dial"
        if i > 1 and hop["protocol"] not in CHAIN_HOPS:
            return (f"hop {i} is {hop['protocol']}; after the first hop a chain takes "
                    f"{', '.join(CHAIN_HOPS)}")
        if i > 1 and hop.get("plugin"):
            return f"hop {i} has a SIP003 plugin, which only the first hop may have"
    return None


@dataclass
class NodePool:
    nodes: dict[str, dict[str, Any]]
    tags: dict[str, str | None]  # node name -> subscription tag
    subscriptions: Subscriptions = field(default_factory=Subscriptions)


def build_node_pool(cfg: LoadedConfig, diags: Diagnostics, allow_insecure: bool) -> NodePool:
    data = cfg.data
    nodes: dict[str, dict[str, Any]] = {}
    tags: dict[str, str | None] = {}
    for name, link in (data.get("nodes") or {}).items():
        at = cfg.pos.value(("nodes", name))
        hops = [h.strip() for h in link.split("->")]
        starts = [link.find(h) for h in hops]
        parsed = []
        try:
            for hop in hops:
                parsed.append(parse_link(name, hop, allow_insecure))
        except LinkError as exc:
            offset = None if exc.offset is None else starts[len(parsed)] + exc.offset
            diags.error(at if offset is None else cfg.pos.in_string(("nodes", name), offset),
                        str(exc))
            continue
        node = parsed[-1]
        unsupported = [u for u in (p.pop("unsupported", None) for p in parsed) if u]
        if len(parsed) > 1:
            node["chain"] = parsed[:-1]
        chain_why = _chain_undialable(parsed) if len(parsed) > 1 else None
        if unsupported and len(parsed) == 1:
            diags.warning(cfg.pos.in_string(("nodes", name), starts[-1] + unsupported[0][0]),
                          unsupported[0][1])
            node["dialable"] = False
        elif chain_why is None and len(parsed) > 1 and not unsupported:
            node["dialable"] = True  # the runtime dials each hop through the previous one
        elif len(parsed) > 1:
            diags.warning(at, f"node '{name}': the runtime cannot dial this chain: "
                              f"{chain_why or unsupported[0][1]}; groups will not select it")
            node["dialable"] = False
        elif node["protocol"] not in DIALABLE:
            cap = protocol(node["protocol"])
            why = f" ({cap.missing})" if cap is not None and cap.missing and len(parsed) == 1 else ""
            diags.warning(at, f"node '{name}': the runtime cannot dial {node['protocol']}"
                              f"{' chains' if len(parsed) > 1 else ''} yet{why}; groups will not select it")
            node["dialable"] = False
        else:
            node["dialable"] = True
        node["tag"] = None
        nodes[name] = node
        tags[name] = None
    subs = check_subscriptions(cfg, diags, set(nodes), allow_insecure, DIALABLE)
    for node in subs.nodes:
        nodes[node["name"]] = node
        tags[node["name"]] = node["tag"]
    return NodePool(nodes=nodes, tags=tags, subscriptions=subs)


def _node_filter(calls: tuple[Call, ...], latency_s: float, text: str) -> nodefilter.Filter:
    """A checked filter in the contract's form (the runtime evaluates the same on fetched nodes)."""
    return nodefilter.Filter(
        tuple(nodefilter.Call(c.name, tuple(nodefilter.Param(p.key, p.value) for p in c.params), c.negated)
              for c in calls),
        round(latency_s * 1000, 3), text)


def resolve_groups(
    cfg: LoadedConfig, diags: Diagnostics, pool: NodePool, defaults: dict[str, Any]
) -> list[dict[str, Any]]:
    """Evaluate each group's filter against the pool; ids follow direct (0) and block (1)."""
    groups = []
    for gid, (name, spec) in enumerate((cfg.data.get("groups") or {}).items(), start=2):
        gpath = ("groups", name)
        filters = spec.get("filter")
        filter_list = [filters] if isinstance(filters, str) else (filters or [])
        selected: dict[str, float] = {}  # node -> add_latency, in the pool's order
        filter_hits: list[tuple[JsonPath, str, list[str]]] = []  # each filter and the nodes it selects
        filter_failed = False
        compiled: list[nodefilter.Filter] = []
        if not filter_list:
            selected = {n: 0.0 for n in pool.nodes}
        for i, text in enumerate(filter_list):
            fpath = gpath + ("filter",) + ((i,) if not isinstance(filters, str) else ())
            try:
                calls, extra = parse_filter(text)
            except RuleSyntaxError as exc:
                diags.error(cfg.pos.in_string(fpath, exc.offset), f"group filter: {exc.message}")
                continue
            bad = False
            for c in calls:
                if c.name not in ("name", "subtag"):
                    diags.error(cfg.pos.in_string(fpath, c.offset), f"unknown filter function '{c.name}'",
                                did_you_mean(c.name, ["name", "subtag"]))
                    bad = True
                for p in c.params:
                    if p.key not in (None, "keyword", "regex"):
                        diags.error(cfg.pos.in_string(fpath, p.offset), f"unknown filter key '{p.key}'",
                                    did_you_mean(p.key or "", ["keyword", "regex"]))
                        bad = True
                    elif p.key == "regex":
                        try:
                            compile_user_regex(p.value)
                        except ValueError as exc:
                            diags.error(cfg.pos.in_string(fpath, p.value_offset), f"invalid regex {p.value!r}: {exc}")
                            bad = True
            latency = 0.0
            if extra is not None:
                if extra.key != "add_latency":
                    diags.error(cfg.pos.in_string(fpath, extra.offset), f"unknown filter option '{extra.key}'",
                                "only [add_latency: DURATION] is supported")
                    bad = True
                else:
                    try:
                        latency = bounded_duration("add_latency", extra.value)
                    except ValueError as exc:
                        diags.error(cfg.pos.in_string(fpath, extra.value_offset), str(exc))
                        bad = True
            if bad:
                filter_failed = True
                continue
            one = _node_filter(calls, latency, text)
            compiled.append(one)
            matched = list(nodefilter.NodeFilter((one,)).select((n, pool.tags.get(n)) for n in pool.nodes))
            for node_name in matched:
                selected.setdefault(node_name, latency)
            filter_hits.append((fpath, text, matched))
        dialable = [n for n in selected if pool.nodes[n].get("dialable")]
        undialable = None
        if not filter_failed:
            undialable = _filters_without_dialable_nodes(cfg, diags, name, filter_hits, pool, bool(dialable))
        if not filter_list and selected and not dialable:  # no filter: every node, none dialable
            undialable = (cfg.pos.key(gpath), f"group '{name}' (no filter: every node) has only nodes the runtime "
                                              f"cannot dial: {_undialable_list(list(selected), pool)}")
        policy = spec["policy"].replace(" ", "")
        fixed_index = 0
        if policy.startswith("fixed("):
            policy = "fixed"
            fixed_index = _fixed_index(cfg, diags, name, gpath, list(selected), dialable, pool)
        # A group that selects no node is an error only when routing sends flows to it; the routing
        # checker decides (it knows which groups the rules use), see RoutingChecker.empty_groups.
        check = {}
        for key in ("tcp_check_url", "tcp_check_http_method", "udp_check_dns", "check_interval", "check_tolerance"):
            check[key] = spec.get(key, defaults[key])
        groups.append({
            "name": name, "id": gid, "policy": policy, "fixed_index": fixed_index,
            # only the nodes the runtime dials (the others were warned about at their definition),
            # so the runtime's node list and fixed_index are the compiler's
            "nodes": dialable, "add_latency_ms": {n: round(selected[n] * 1000, 3) for n in dialable if selected[n]},
            "check": _check_settings(check, cfg, gpath, diags),
        })
        if pool.subscriptions.specs:
            # the runtime selects among the nodes it fetches with the same filter, and counts
            # fixed(N) in that selection
            groups[-1]["filter"] = nodefilter.NodeFilter(tuple(compiled)).to_json()
            if policy == "fixed":
                groups[-1]["fixed_n"] = int(spec["policy"].replace(" ", "")[6:-1])
            if not dialable and pool.subscriptions.remote and not filter_failed:
                # popped by the routing checker (empty_groups): nodes may come from the runtime's fetch
                groups[-1]["awaits_subscriptions"] = list(pool.subscriptions.remote)
        no_udp = [n for n in dialable if _udp_missing(pool.nodes[n])]
        if dialable and len(no_udp) == len(dialable):
            # popped by the routing checker, which warns when routing may send UDP to the group
            groups[-1]["no_udp"] = (cfg.pos.key(gpath), f"group '{name}': none of its nodes carries UDP ("
                                    + "; ".join(f"{n}: {_udp_missing(pool.nodes[n])}" for n in no_udp[:3])
                                    + (f"; and {len(no_udp) - 3} more" if len(no_udp) > 3 else "") + ")")
        if undialable is not None:
            # (position, message) of the filter whose nodes the runtime cannot dial; the routing
            # checker pops it (so it never reaches a manifest) and reports it, see empty_groups.
            groups[-1]["undialable"] = undialable
        if filter_failed:
            # Only ever set alongside an error, so it never reaches a manifest: it tells the
            # routing checker not to add "selects no node" to the filter's own error.
            groups[-1]["filter_failed"] = True
    return groups


def _udp_missing(node: dict[str, Any]) -> str | None:
    """Why the runtime relays no UDP through this (dialable) node, or None: as Node.udp_missing."""
    return udp_missing(node["protocol"], bool(node.get("chain")))


def _why_not_dialable(node: dict[str, Any]) -> str:
    cap = protocol(node["protocol"])
    if node.get("chain"):
        return f"{node['name']} ({node['protocol']} chain)"
    return f"{node['name']} ({node['protocol']}{': ' + cap.missing if cap is not None and cap.missing else ''})"


def _undialable_list(names: list[str], pool: NodePool, limit: int = 3) -> str:
    shown = [_why_not_dialable(pool.nodes[n]) for n in names[:limit]]
    return ", ".join(shown) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _filters_without_dialable_nodes(cfg: LoadedConfig, diags: Diagnostics, group: str,
                                    hits: list[tuple[JsonPath, str, list[str]]], pool: NodePool,
                                    group_has_one: bool) -> tuple[SourcePos, str] | None:
    """Each filter that selects nodes but none the runtime can dial: a warning at it when the other
    filters still give the group a node to dial; when none does, the first such filter and its
    message are returned, for the routing checker to report (an error when routing sends flows to
    the group: the runtime would refuse every one). A filter that selects nothing at all, beside
    others, is a warning at it; a group that selects nothing at all is the routing checker's."""
    undialable: tuple[SourcePos, str] | None = None
    for fpath, text, matched in hits:
        if any(pool.nodes[n].get("dialable") for n in matched):
            continue
        at = cfg.pos.value(fpath)
        if matched:
            what = (f"group '{group}': filter '{text}' selects only nodes the runtime cannot dial: "
                    f"{_undialable_list(matched, pool)}")
            if group_has_one:
                diags.warning(at, what)
            elif undialable is None:
                undialable = (at, what)
        elif group_has_one or len(hits) > 1:
            diags.warning(at, f"group '{group}': filter '{text}' selects no node")
    return undialable


def _fixed_index(cfg: LoadedConfig, diags: Diagnostics, group: str, path: JsonPath, selected: list[str],
                 dialable: list[str], pool: NodePool) -> int:
    """`fixed(N)`: node N of what the filters select, as in dae; checked here, at the policy, so a
    gateway never starts with an index past its group. Returns the index into `dialable` (the
    manifest's node list)."""
    policy = cfg.data["groups"][group]["policy"]
    n = int(policy.replace(" ", "")[6:-1])
    at = cfg.pos.value(path + ("policy",))
    if not selected:
        return 0  # the routing checker reports a group that selects no node
    if n >= len(selected):
        diags.error(at, f"group '{group}': fixed({n}) but the group has {len(selected)} node(s)",
                    f"its filter selects {', '.join(selected[:5])}{', ...' if len(selected) > 5 else ''}; "
                    f"fixed() counts from 0")
        return 0
    node = selected[n]
    if node not in dialable:
        if dialable:  # else the filter's own error says the group has no node to dial
            diags.error(at, f"group '{group}': fixed({n}) selects node {_why_not_dialable(pool.nodes[node])}, "
                            "which the runtime cannot dial",
                        f"the dialable nodes are fixed({', '.join(str(selected.index(d)) for d in dialable[:5])})"
                        f" ({', '.join(dialable[:5])})")
        return 0
    return dialable.index(node)


def _check_settings(raw: dict[str, Any], cfg: LoadedConfig, path: JsonPath, diags: Diagnostics) -> dict[str, Any]:
    def as_list(v: Any) -> list[str]:
        return [v] if isinstance(v, str) else list(v)

    out = {"tcp_check_url": as_list(raw["tcp_check_url"]), "tcp_check_http_method": raw["tcp_check_http_method"],
           "udp_check_dns": as_list(raw["udp_check_dns"])}
    for key, check in (("tcp_check_url", check_tcp_check_url), ("udp_check_dns", check_udp_check_dns)):
        if key in cfg.data["groups"][path[-1]]:  # the global value is checked once, in global_settings
            try:
                check(out[key])
            except ValueError as exc:
                diags.error(cfg.pos.value(path + (key,)), str(exc))
    for key in ("check_interval", "check_tolerance"):
        try:
            seconds = bounded_duration(key, raw[key])
        except ValueError as exc:
            if key in cfg.data["groups"][path[-1]]:  # else the global value, reported once already
                diags.error(cfg.pos.value(path + (key,)), str(exc))
            seconds = 0.0
        out[key + ("_s" if key == "check_interval" else "_ms")] = seconds if key == "check_interval" else seconds * 1000
    return out


def position_of(cfg: LoadedConfig, path: JsonPath) -> SourcePos:
    return cfg.pos.value(path)
