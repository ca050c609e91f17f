"""Subscription bodies in the three forms users meet, turned into the manifest's node dicts.

- a list of share links, one a line, usually base64 of the whole list (v2rayN, dae, most
  providers' default);
- SIP008 JSON (`{"version": 1, "servers": [{"server", "server_port", "method", "password",
  "plugin", "plugin_opts", "remarks"}]}`), Shadowsocks only;
- Clash/mihomo YAML with a `proxies:` list (`name`, `type`, `server`, `port` and the type's keys).

Every entry becomes a share link first (SIP008 and Clash entries are written as the link a
provider would have given), and every link goes through `proxy_links.parse_link`, the parser
the compiler checks configs with: a node from a subscription means what the same link in
`nodes:` means, and is refused for the same reasons. The compiler reads `file://` sources with
this at compile time; the runtime reads what it fetches with it (runtime/subscriptions).

Nothing here raises for one bad entry: it is *dropped*, with its name (or its position) and
the reason, and the rest are kept. A body that is none of the three forms raises
SubscriptionFormatError. No message carries a password, a UUID or a whole link.
"""
from __future__ import annotations

import base64
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote, unquote, urlencode

from .proxy_links import LinkError, b64decode_text, mask_link, parse_link

#: A subscription of 100,000 links is ~10 MB.
MAX_BODY_BYTES = 16 << 20


class SubscriptionFormatError(ValueError):
    """A body that is no subscription form at all (the last good copy should be kept)."""


@dataclass
class Parsed:
    """What one body gave: the node dicts (tagged, dialable set) and what was dropped, why."""

    form: str  # "links", "sip008", "clash"
    nodes: list[dict[str, Any]] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)  # "NAME: REASON"


def _b64(data: str) -> str:
    return base64.urlsafe_b64encode(data.encode()).decode().rstrip("=")


# --- the three forms -> (name, link) -------------------------------------------------------

def _link_lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _name_of_link(link: str) -> str:
    """The name a link gives itself: its #fragment, or a vmess JSON's `ps`."""
    body, sep, frag = link.partition("#")
    if sep and frag:
        return unquote(frag).strip()
    if body.lower().startswith("vmess://"):
        try:
            info = json.loads(b64decode_text(body[len("vmess://"):]))
            return str(info.get("ps") or "").strip() if isinstance(info, dict) else ""
        except (ValueError, RecursionError):
            return ""
    return ""


def sip008_link(server: Mapping[str, Any]) -> str:
    """One SIP008 server as its SIP002 link."""
    method, password = str(server.get("method") or ""), str(server.get("password") or "")
    host, port = str(server.get("server") or ""), server.get("server_port")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    link = f"ss://{_b64(f'{method}:{password}')}@{host}:{port}"
    if server.get("plugin"):
        opts = str(server.get("plugin_opts") or "")
        link += "/?" + urlencode({"plugin": str(server["plugin"]) + (";" + opts if opts else "")}, quote_via=quote)
    return link


def _clash_host(proxy: Mapping[str, Any]) -> str:
    host = str(proxy.get("server") or "")
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


def _query(params: Mapping[str, Any]) -> str:
    items = {k: str(v) for k, v in params.items() if v not in (None, "", False)}
    return ("?" + urlencode(items, quote_via=quote)) if items else ""


def _clash_ws(proxy: Mapping[str, Any]) -> tuple[str, str]:
    """(path, host) of a Clash entry's ws/h2/grpc options."""
    network = str(proxy.get("network") or "tcp")
    if network == "ws":
        ws = proxy.get("ws-opts") or {}
        headers = ws.get("headers") or {}
        path = str(ws.get("path") or proxy.get("ws-path") or "/")
        early = ws.get("max-early-data")
        if early:
            path += ("&" if "?" in path else "?") + f"ed={int(early)}"
        return path, str(headers.get("Host") or headers.get("host") or "")
    if network == "h2":
        h2 = proxy.get("h2-opts") or {}
        hosts = h2.get("host") or []
        return str(h2.get("path") or "/"), ",".join(str(h) for h in hosts) if isinstance(hosts, list) else str(hosts)
    if network == "grpc":
        return str((proxy.get("grpc-opts") or {}).get("grpc-service-name") or ""), ""
    return "/", ""


def _clash_ss_plugin(proxy: Mapping[str, Any]) -> str:
    """Clash's `plugin`/`plugin-opts` as SIP003's `plugin=NAME;opts`."""
    plugin = str(proxy.get("plugin") or "")
    opts = proxy.get("plugin-opts") or {}
    if plugin == "obfs":
        parts = ["obfs-local", f"obfs={opts.get('mode', 'http')}"]
        if opts.get("host"):
            parts.append(f"obfs-host={opts['host']}")
        return ";".join(parts)
    if plugin == "v2ray-plugin":
        parts = ["v2ray-plugin"]
        if opts.get("mode", "websocket") != "websocket":
            parts.append(f"mode={opts['mode']}")
        for key in ("host", "path"):
            if opts.get(key):
                parts.append(f"{key}={opts[key]}")
        if opts.get("tls"):
            parts.append("tls")
        return ";".join(parts)
    return plugin


def clash_link(proxy: Mapping[str, Any]) -> str:
    """One Clash/mihomo `proxies:` entry as the share link that says the same (LinkError for a
    type with no share-link form here)."""
    kind = str(proxy.get("type") or "").lower()
    host, port = _clash_host(proxy), proxy.get("port")
    sni = proxy.get("servername") or proxy.get("sni")
    insecure = "1" if proxy.get("skip-cert-verify") else None
    alpn = ",".join(str(a) for a in proxy.get("alpn") or []) or None
    if kind == "ss":
        userinfo = _b64(f"{proxy.get('cipher') or ''}:{proxy.get('password') or ''}")
        link = f"ss://{userinfo}@{host}:{port}"
        plugin = _clash_ss_plugin(proxy)
        return link + ("/" + _query({"plugin": plugin}) if plugin else "")
    if kind == "trojan":
        network = str(proxy.get("network") or "")
        path, ws_host = _clash_ws(proxy) if network else ("", "")
        return (f"trojan://{quote(str(proxy.get('password') or ''), safe='')}@{host}:{port}"
                + _query({"sni": sni, "allowInsecure": insecure, "alpn": alpn, "type": network or None,
                          "path": path if network else None, "host": ws_host}))
    if kind == "vmess":
        network = str(proxy.get("network") or "tcp")
        path, ws_host = _clash_ws(proxy)
        info = {"v": "2", "ps": str(proxy.get("name") or ""), "add": str(proxy.get("server") or ""),
                "port": port, "id": str(proxy.get("uuid") or ""), "aid": proxy.get("alterId") or 0,
                "scy": str(proxy.get("cipher") or "auto"), "net": network, "type": "none",
                "host": ws_host, "path": path, "tls": "tls" if proxy.get("tls") else "",
                "sni": sni or "", "alpn": alpn or ""}
        return "vmess://" + base64.b64encode(json.dumps(info).encode()).decode()
    if kind == "vless":
        network = str(proxy.get("network") or "tcp")
        path, ws_host = _clash_ws(proxy)
        security = "reality" if proxy.get("reality-opts") else "tls" if proxy.get("tls") else "none"
        return (f"vless://{proxy.get('uuid') or ''}@{host}:{port}"
                + _query({"encryption": "none", "security": security, "type": network, "sni": sni,
                          "allowInsecure": insecure, "alpn": alpn, "flow": proxy.get("flow"),
                          "path": path if network in ("ws", "h2", "grpc") else None, "host": ws_host}))
    if kind in ("socks5", "http"):
        scheme = "https" if kind == "http" and proxy.get("tls") else kind
        user, password = proxy.get("username"), proxy.get("password")
        auth = (f"{quote(str(user), safe='')}:{quote(str(password or ''), safe='')}@" if user else "")
        return f"{scheme}://{auth}{host}:{port}" + _query({"sni": sni, "allowInsecure": insecure})
    raise LinkError(f"unsupported protocol '{kind or '?'}'")


def _clash_entries(doc: Any) -> list[tuple[str, str | LinkError]]:
    proxies = doc.get("proxies") if isinstance(doc, dict) else None
    if not isinstance(proxies, list):
        raise SubscriptionFormatError("YAML without a 'proxies:' list")
    out: list[tuple[str, str | LinkError]] = []
    for i, proxy in enumerate(proxies, 1):
        if not isinstance(proxy, dict):
            out.append((f"#{i}", LinkError("entry is not a mapping")))
            continue
        name = str(proxy.get("name") or f"#{i}")
        try:
            out.append((name, clash_link(proxy)))
        except LinkError as exc:
            out.append((name, exc))
    return out


def _load_yaml(text: str) -> Any:
    from ruamel.yaml import YAML  # lazy: only Clash bodies need it
    from ruamel.yaml.error import YAMLError

    try:
        return YAML(typ="safe", pure=True).load(text)
    except (YAMLError, ValueError, RecursionError) as exc:
        raise SubscriptionFormatError(f"not YAML ({type(exc).__name__})") from None


def entries(body: bytes | str) -> tuple[str, list[tuple[str, str | LinkError]]]:
    """(form, [(name, link or why it has none)]) of one body; SubscriptionFormatError when the
    body is none of the three forms (or is empty)."""
    if isinstance(body, bytes):
        if len(body) > MAX_BODY_BYTES:
            raise SubscriptionFormatError(f"larger than {MAX_BODY_BYTES >> 20} MiB")
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SubscriptionFormatError("not UTF-8") from None
    else:
        text = body
    text = text.strip()
    if not text:
        raise SubscriptionFormatError("empty")
    if text.startswith("{"):
        try:
            doc = json.loads(text)
        except (ValueError, RecursionError):
            raise SubscriptionFormatError("not JSON (it starts with '{')") from None
        servers = doc.get("servers") if isinstance(doc, dict) else None
        if not isinstance(servers, list):
            raise SubscriptionFormatError("JSON without a SIP008 'servers' list")
        return "sip008", [(str(s.get("remarks") or s.get("id") or f"#{i}"), sip008_link(s))
                          if isinstance(s, dict) else (f"#{i}", LinkError("entry is not an object"))
                          for i, s in enumerate(servers, 1)]
    if "://" not in text.split("\n", 1)[0]:
        try:
            decoded = b64decode_text("".join(text.split()))
        except ValueError:
            decoded = None
        if decoded is not None and "://" in decoded:
            return "links", [(_name_of_link(line), line) for line in _link_lines(decoded)]
        if "proxies" in text:
            return "clash", _clash_entries(_load_yaml(text))
        raise SubscriptionFormatError("neither base64 of share links, SIP008 JSON nor Clash YAML")
    return "links", [(_name_of_link(line), line) for line in _link_lines(text)]


def parse_body(tag: str, body: bytes | str, *, taken: Iterable[str] = (),
               allow_insecure: bool = False, dialable: frozenset[str] = frozenset()) -> Parsed:
    """The nodes of subscription `tag` (each `tag` set, `dialable` from the capability
    protocols given and the parser's verdict), named as the body names them (`TAG-N` when it
    does not; `TAG-NAME` when the name is taken by a node of the config or an earlier entry)."""
    form, found = entries(body)
    parsed = Parsed(form=form)
    used = set(taken)
    for i, (raw_name, link) in enumerate(found, 1):
        name = raw_name.strip() or f"{tag}-{i}"
        if name in used:
            name = f"{tag}-{name}"
        if name in used:
            name = f"{tag}-{i}"
        if isinstance(link, LinkError):
            parsed.dropped.append(f"{raw_name or '#' + str(i)}: {link}")
            continue
        try:
            node = parse_link(name, link.partition("#")[0], allow_insecure)
        except LinkError as exc:
            parsed.dropped.append(f"{raw_name or '#' + str(i)}: {exc}")
            continue
        except (ValueError, TypeError) as exc:  # e.g. a Clash port that is no number
            parsed.dropped.append(f"{raw_name or '#' + str(i)}: bad field ({type(exc).__name__}) in "
                                  f"{mask_link(link)!r}")
            continue
        unsupported = node.pop("unsupported", None)
        if unsupported:
            parsed.dropped.append(f"{name}: {unsupported[1]}")
            continue
        if node["protocol"] not in dialable:
            parsed.dropped.append(f"{name}: the runtime cannot dial {node['protocol']} yet")
            continue
        node["tag"] = tag
        node["dialable"] = True
        used.add(name)
        parsed.nodes.append(node)
    return parsed
