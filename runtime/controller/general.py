"""/, /version, /rules, /configs (GET, PATCH log-level) and /dae/summary (the status page's
one poll: what `dae-runtime status` prints, as JSON)."""
from __future__ import annotations

import json
import logging
import time
from typing import Any

from aiohttp import web

from dae_py.contract.version import COMPILER_VERSION
from dae_py.runtime.groups.stats import Check

from .common import BAD_REQUEST, error, iso, view
from .logbus import LEVELS
from .proxies import now_of
from .view import GatewayView, open_fds, process_rss_bytes

routes = web.RouteTableDef()

VERSION = f"dae-py {COMPILER_VERSION}"


@routes.get("/")
async def hello(request: web.Request) -> web.Response:
    return web.json_response({"hello": "dae-py"})


@routes.get("/version")
async def version(request: web.Request) -> web.Response:
    return web.json_response({"meta": True, "version": VERSION})


@routes.get("/rules")
async def rules(request: web.Request) -> web.Response:
    """Every rule in order, the fallback last, as mihomo's {type, payload, proxy, size}; each
    carries its kernel hit count (flows it decided) in `hits` and its source in `where`."""
    rows = view(request).rules()
    return web.json_response({"rules": [
        {"type": r.clash_type, "payload": r.payload if r.text != "fallback" else "", "proxy": r.outbound,
         "size": -1, "index": r.index, "hits": r.hits, "where": r.where} for r in rows]})


def _log_level() -> str:
    level = logging.getLogger().getEffectiveLevel()
    for name, value in LEVELS.items():
        if value == level:
            return name
    return "info"


@routes.get("/configs")
async def get_configs(request: web.Request) -> web.Response:
    g = view(request).manifest.settings
    return web.json_response({
        "port": 0, "socks-port": 0, "redir-port": 0, "tproxy-port": g.tproxy_port, "mixed-port": 0,
        "tun": {"enable": False}, "allow-lan": True, "bind-address": "*", "mode": "rule",
        "log-level": _log_level(), "ipv6": True, "routing-mark": g.so_mark, "interface-name": "",
        "sniffing": False, "tcp-concurrent": False})


@routes.patch("/configs")
async def patch_configs(request: web.Request) -> web.Response:
    """Only `log-level` acts; any other key is refused by name (nothing is applied then),
    rather than accepted and ignored."""
    try:
        body = json.loads(await request.read() or b"null")
        if not isinstance(body, dict):
            raise TypeError
    except (ValueError, TypeError):
        return error(400, BAD_REQUEST)
    unknown = sorted(k for k in body if k != "log-level")
    if unknown:
        return error(400, f"not supported by dae-py: {', '.join(unknown)} (only log-level can be changed)")
    if "log-level" in body:
        level = LEVELS.get(str(body["log-level"]))
        if level is None:
            return error(400, BAD_REQUEST)
        logging.getLogger().setLevel(level)
        logging.getLogger("dae.gateway").warning("log level set to %s through the controller", body["log-level"])
    return web.Response(status=204)


def summary(v: GatewayView) -> dict[str, Any]:
    """The facts an operator wants at a glance (status page, `dae-runtime status`)."""
    kernel = v.kernel_outbounds()
    v.sync_counts()
    relay = v.relay.stats.snapshot()
    outbounds = []
    for o in v.manifest.outbounds:
        packets, nbytes = kernel.get(o.name, (0, 0))
        r = relay.get(o.name, {})
        outbounds.append({"name": o.name, "kind": o.kind, "kernel_packets": packets, "kernel_bytes": nbytes,
                          "flows": r.get("flows", 0), "active": r.get("active", 0),
                          "bytes_up": r.get("bytes_up", 0), "bytes_down": r.get("bytes_down", 0),
                          "refused": r.get("refused", 0)})
    groups = []
    for g in v.groups():
        nodes = []
        for n in g.nodes:
            st = g.stats[Check.TCP][n.name]
            nodes.append({"name": n.name, "protocol": n.protocol, "alive": st.alive, "checked": st.checked,
                          "latency_ms": round(st.last * 1000, 1) if st.last is not None else None,
                          "error": st.last_error, "chain": [h.protocol for h in n.chain],
                          "udp": n.supports_udp, "udp_missing": n.udp_missing})
        udp_alive = g.alive(Check.UDP)
        udp_node = g.selected(Check.UDP) or (udp_alive[0] if udp_alive else None)
        groups.append({"name": g.name, "policy": g.spec.policy.value, "now": now_of(g),
                       "pinned": g.pinned.name if g.pinned else None, "nodes": nodes,
                       "udp_now": udp_node.name if udp_node is not None else None})
    rules = [{"index": r.index, "text": r.text, "outbound": r.outbound, "where": r.where, "hits": r.hits}
             for r in sorted(v.rules(), key=lambda r: -r.hits)]
    conns = [{"id": c.id, "network": c.network, "src": f"{c.src[0]}:{c.src[1]}", "dst": f"{c.dst[0]}:{c.dst[1]}",
              "outbound": c.outbound, "node": c.node, "rule": c.rule, "upload": c.upload, "download": c.download,
              "age_s": round(time.time() - c.start, 1)} for c in v.tracker]
    subs = v.subscriptions.status() if v.subscriptions is not None else {}
    subscriptions = [{"name": name, "nodes": st["nodes"], "updated": iso(st["last_good"]) if st["last_good"] else None,
                      "error": st["error"], "refresh_s": st["refresh_s"]} for name, st in subs.items()]
    return {"version": VERSION, "config": v.manifest.config_file, "strategy": v.manifest.strategy,
            "uptime_s": round(time.time() - v.started, 1), "rss_bytes": process_rss_bytes(), "fds": open_fds(),
            "outbounds": outbounds, "groups": groups, "rules": rules, "connections": conns,
            "flows_total": v.tracker.total, "subscriptions": subscriptions}


@routes.get("/dae/summary")
async def get_summary(request: web.Request) -> web.Response:
    return web.json_response(summary(view(request)))
