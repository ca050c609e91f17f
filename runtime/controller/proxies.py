"""/proxies: outbounds, groups and nodes in mihomo's shapes; delay tests; pinning a node.

Every group is shown as a `Selector` (its members in `all`, the node new flows take in `now`)
because every group accepts a pin (PUT): a pinned group carries new flows through that node
while it is alive, as a Clash `select` group, and falls back to its own policy (shown in
`dae-policy`) when the node is down or the pin is removed (DELETE). DIRECT and REJECT are the
build's outbounds 0 and 1."""
from __future__ import annotations

import asyncio
import ipaddress
import json
import time
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web

from dae_py.runtime.groups import CheckSpec, Group, http_probe
from dae_py.runtime.groups.stats import Check
from dae_py.runtime.proxy import Node

from .common import BAD_REQUEST, NOT_FOUND, TIMEOUT, error, iso, view
from .view import GatewayView

routes = web.RouteTableDef()

#: mihomo's adapter type names for the protocols the runtime dials.
TYPES = {"socks5": "Socks5", "socks": "Socks5", "http": "Http", "https": "Http", "ss": "Shadowsocks",
         "shadowsocks": "Shadowsocks", "trojan": "Trojan", "vmess": "Vmess", "vless": "Vless"}
DIRECT, REJECT = "DIRECT", "REJECT"


def _base(name: str, kind: str, alive: bool, history: list[dict[str, Any]], udp: bool) -> dict[str, Any]:
    return {"name": name, "type": kind, "alive": alive, "history": history, "extra": {}, "udp": udp,
            "uot": False, "xudp": False, "tfo": False, "mptcp": False, "smux": False, "interface": "",
            "dialer-proxy": "", "routing-mark": 0, "id": name}


def now_of(group: Group) -> str:
    """The node the group's next TCP flow takes (its pin while alive), '' with none alive."""
    node = group.pinned if group.pinned is not None and group.stats[Check.TCP][group.pinned.name].alive \
        else group.selected(Check.TCP)
    if node is None:
        alive = group.alive(Check.TCP)
        node = alive[0] if alive else None
    return node.name if node is not None else ""


def node_json(v: GatewayView, node: Node) -> dict[str, Any]:
    alive, _latency = v.node_state(node.name)
    history = [{"time": iso(t), "delay": d} for t, d in v.node_history(node.name).delays]
    out = _base(node.name, TYPES.get(node.protocol, node.protocol.capitalize()), alive, history,
                node.supports_udp)
    out["server"] = f"{node.host}:{node.port}"
    return out


def group_json(v: GatewayView, group: Group) -> dict[str, Any]:
    now = now_of(group)
    history = [{"time": iso(t), "delay": d} for t, d in v.node_history(now).delays] if now else []
    out = _base(group.name, "Selector", bool(group.alive(Check.TCP)), history,
                any(n.supports_udp for n in group.nodes))
    out.update({"all": [n.name for n in group.nodes], "now": now, "fixed": group.pinned.name if group.pinned else "",
                "testUrl": group.spec.check.tcp_check_url, "expectedStatus": "", "hidden": False, "icon": "",
                "dae-policy": group.spec.policy.value})
    return out


def all_proxies(v: GatewayView) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {
        DIRECT: _base(DIRECT, "Direct", True, [], True),
        REJECT: _base(REJECT, "Reject", True, [], True),
    }
    for name, node in v.nodes().items():
        out[name] = node_json(v, node)
    for group in v.groups():
        out[group.name] = group_json(v, group)
    return out


def _find(v: GatewayView, name: str) -> tuple[Group | None, Node | None, bool]:
    """(group, node, special): what `name` is; all empty: unknown."""
    group = v.group(name)
    if group is not None:
        return group, None, False
    node = v.nodes().get(name)
    if node is not None:
        return None, node, False
    return None, None, name in (DIRECT, REJECT)


@routes.get("/proxies")
async def get_proxies(request: web.Request) -> web.Response:
    return web.json_response({"proxies": all_proxies(view(request))})


@routes.get("/proxies/{name}")
async def get_proxy(request: web.Request) -> web.Response:
    v = view(request)
    name = request.match_info["name"]
    proxies = all_proxies(v)
    if name not in proxies:
        return error(404, NOT_FOUND)
    return web.json_response(proxies[name])


async def run_delay(v: GatewayView, node: Node, url: str, timeout_s: float, opts: Any) -> float:
    """One HTTP check of `url` through `node`, as the health checks run it: the latency in
    seconds. Raises TimeoutError or the check's error."""
    host = urlsplit(url).hostname or ""
    try:
        ipaddress.ip_address(host)
        ips: tuple[str, ...] = (host,)
    except ValueError:
        ips = ()
    spec = CheckSpec(tcp_check_url=url, tcp_check_ips=ips, timeout=timeout_s)
    started = time.monotonic()
    await asyncio.wait_for(http_probe(node, spec, opts), timeout_s)
    return time.monotonic() - started


@routes.get("/proxies/{name}/delay")
async def get_delay(request: web.Request) -> web.Response:
    v = view(request)
    name = request.match_info["name"]
    group, node, special = _find(v, name)
    if group is None and node is None and not special:
        return error(404, NOT_FOUND)
    try:
        timeout_ms = int(request.query.get("timeout", ""))
        if not 0 < timeout_ms < 32768:  # mihomo parses it as an int16
            raise ValueError
    except ValueError:
        return error(400, BAD_REQUEST)
    url = request.query.get("url", "")
    if group is not None:
        url = url or group.spec.check.tcp_check_url
        now = now_of(group)
        node = next((n for n in group.nodes if n.name == now), None)
        if node is None:
            return error(503, "An error occurred in the delay test")
    if node is None:
        return error(400, "delay tests run through a node or a group")
    owners = [g for g in v.groups() if node in g.nodes]
    opts = owners[0].opts if owners else None
    if not url:
        url = owners[0].spec.check.tcp_check_url if owners else ""
    try:
        if opts is None or urlsplit(url).scheme not in ("http", "https"):
            raise ValueError("want an http(s) url")
        latency = await run_delay(v, node, url, timeout_ms / 1000, opts)
    except TimeoutError:
        for g in owners:
            g.record(node, Check.TCP, None, f"delay test of {url} timed out")
        return error(504, TIMEOUT)
    except ValueError:
        return error(400, BAD_REQUEST)
    except Exception as exc:  # noqa: BLE001 - the check's failure is the answer
        for g in owners:
            g.record(node, Check.TCP, None, f"delay test failed: {exc}")
        return error(503, "An error occurred in the delay test")
    delay = max(1, round(latency * 1000))
    v.node_history(node.name).add(time.time(), delay)
    for g in owners:
        g.record(node, Check.TCP, latency)
    return web.json_response({"delay": delay})


@routes.put("/proxies/{name}")
async def put_proxy(request: web.Request) -> web.Response:
    v = view(request)
    name = request.match_info["name"]
    group, node, special = _find(v, name)
    if group is None and node is None and not special:
        return error(404, NOT_FOUND)
    try:
        body = json.loads(await request.read() or b"null")
        choice = body["name"]
        if not isinstance(choice, str):
            raise TypeError
    except (ValueError, KeyError, TypeError):
        return error(400, BAD_REQUEST)
    if group is None:
        return error(400, "Must be a Selector")
    try:
        group.pin(choice)
    except ValueError as exc:
        return error(400, f"Selector update error: {exc}")
    return web.Response(status=204)


@routes.delete("/proxies/{name}")
async def unpin_proxy(request: web.Request) -> web.Response:
    v = view(request)
    group = v.group(request.match_info["name"])
    if group is None:
        return error(400, BAD_REQUEST)
    group.pin(None)
    return web.Response(status=204)
