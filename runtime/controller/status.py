"""`dae-runtime status`: what the running gateway is doing, as text (or --json), from its
controller: by default the unix socket in its state directory (no secret there: the socket's
mode 0600 is the check), or `--controller ADDR:PORT` with the secret from
$DAE_CONTROLLER_SECRET (never on the command line, where `ps` would show it)."""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from . import socket_path


class StatusError(Exception):
    """The gateway could not be asked; the message says why and what to check."""


async def fetch(state_dir: Path, controller: str | None, secret: str | None) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {secret}"} if secret else {}
    timeout = aiohttp.ClientTimeout(total=10)
    if controller:
        from .app import parse_address

        host, port = parse_address(controller)
        url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/dae/summary"
        connector: aiohttp.BaseConnector = aiohttp.TCPConnector()
        where = controller
    else:
        sock = socket_path(state_dir)
        if not sock.exists():
            raise StatusError(f"no controller socket at {sock}: is the gateway running with this state "
                              f"directory (--state)?")
        connector = aiohttp.UnixConnector(path=str(sock))
        url = "http://gateway/dae/summary"
        where = str(sock)
    try:
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as s, \
                s.get(url, headers=headers) as r:
            if r.status == 401:
                raise StatusError(f"{where}: the controller wants its secret (set $DAE_CONTROLLER_SECRET)")
            if r.status != 200:
                raise StatusError(f"{where}: HTTP {r.status}")
            body: dict[str, Any] = await r.json()
            return body
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        raise StatusError(f"{where}: {str(exc) or type(exc).__name__}") from exc


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n}"


def _table(rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def render(s: dict[str, Any], top_rules: int = 10) -> str:
    out = [f"{s['version']} · {s['config']} ({s['strategy']}) · up {s['uptime_s']:.0f} s · "
           f"RSS {_size(s['rss_bytes'])} · {s['fds']} fds", "", "outbounds:"]
    out += _table([["name", "kind", "kernel packets", "kernel bytes", "flows", "active", "up", "down", "refused"]] +
                  [[o["name"], o["kind"], str(o["kernel_packets"]), _size(o["kernel_bytes"]), str(o["flows"]),
                    str(o["active"]), _size(o["bytes_up"]), _size(o["bytes_down"]), str(o["refused"])]
                   for o in s["outbounds"]])
    out += ["", "groups:"]
    for g in s["groups"]:
        udp_capable = [n for n in g["nodes"] if n.get("udp", True)]
        udp = (f"UDP via {g['udp_now']}" if g.get("udp_now") else
               "UDP: (none alive)" if udp_capable else "UDP refused: no node carries UDP")
        out.append(f"  {g['name']} ({g['policy']}): new flows via {g['now'] or '(none alive)'}"
                   + (f", pinned to {g['pinned']}" if g["pinned"] else "") + f"; {udp}")
        rows = [["node", "protocol", "health", "latency", "udp", "last error"]]
        for n in g["nodes"]:
            health = "alive" if n["alive"] else "DOWN"
            if not n["checked"]:
                health += " (unchecked)"
            protocol = " -> ".join([*n.get("chain", []), n["protocol"]])
            rows.append([n["name"], protocol, health,
                         "-" if n["latency_ms"] is None else f"{n['latency_ms']:g} ms",
                         "yes" if n.get("udp", True) else "no", n["error"] or ""])
        out += ["  " + line for line in _table(rows)]
        out += [f"    {n['name']} carries no UDP: {n['udp_missing']}" for n in g["nodes"]
                if n.get("udp_missing")]
    if s.get("subscriptions"):
        out += ["", "subscriptions:"]
        out += _table([["name", "nodes", "updated", "every", "last error"]] +
                      [[u["name"], str(u["nodes"]), u["updated"] or "never (compiled nodes)",
                        f"{u['refresh_s']:g} s", u["error"] or ""] for u in s["subscriptions"]])
    out += ["", f"busiest rules (flows decided, top {top_rules}):"]
    out += _table([["hits", "rule", "outbound", "where"]] +
                  [[str(r["hits"]), r["text"], r["outbound"], r["where"]] for r in s["rules"][:top_rules]])
    conns = s["connections"]
    out += ["", f"connections: {len(conns)} active, {s['flows_total']} since start"]
    if conns:
        out += _table([["source", "destination", "outbound", "node", "rule", "up", "down", "age"]] +
                      [[c["src"], c["dst"], c["outbound"], c["node"], c["rule"], _size(c["upload"]),
                        _size(c["download"]), f"{c['age_s']:.0f} s"] for c in conns])
    return "\n".join(out)


def main(args: argparse.Namespace) -> int:
    from dae_py.runtime.datapath.state import default_state_path

    state_path = Path(args.state or os.environ.get("DAE_STATE") or default_state_path())
    secret = os.environ.get("DAE_CONTROLLER_SECRET") or None
    try:
        summary = asyncio.run(fetch(state_path.parent, args.controller, secret))
    except (StatusError, ValueError) as exc:
        print(f"dae-runtime status: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, sort_keys=True) if args.json else render(summary))
    return 0
