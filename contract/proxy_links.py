"""What `ss://` (SIP002), `trojan://`, `vmess://` and `vless://` links must hold, checked at
compile time (and by the runtime on the links a subscription fetches: both halves parse links
with this one module, so a link means the same in a config and in a subscription); secrets masked.

`parse_link` (at the end) splits a link into host, port, userinfo and query; the functions here
finish the node dict for one scheme each: they raise LinkError (with the offset in the link of
the offending part, for a precise file:line:col) for links that can never work, and return the
reason a link the runtime cannot dial yet (SS2022 multi-user keys, trojan over gRPC)
is left out, so it becomes a warning and groups do not select it. No message carries a password:
links are shown through `mask_link`.
"""
from __future__ import annotations

import base64
import binascii
import difflib
import json
import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs, unquote

from dae_py.contract import capabilities

from .capabilities import KNOWN_PROTOCOLS
from .urls import mask_secrets, split_url

SS_AEAD = ("aes-128-gcm", "aes-256-gcm", "chacha20-ietf-poly1305")
SS_2022 = ("2022-blake3-aes-128-gcm", "2022-blake3-aes-256-gcm",
           "2022-blake3-chacha20-poly1305")
SS_STREAM = ("rc4-md5", "aes-128-cfb", "aes-192-cfb", "aes-256-cfb", "aes-128-ctr",
             "aes-192-ctr", "aes-256-ctr", "camellia-128-cfb", "camellia-192-cfb",
             "camellia-256-cfb", "bf-cfb", "chacha20", "chacha20-ietf", "salsa20", "table",
             "none", "plain")
SS_OTHER_AEAD = ("aes-192-gcm", "xchacha20-ietf-poly1305")
TROJAN_NETWORKS = ("", "tcp", "original")  # and "ws" (over TLS): finish_trojan

Unsupported = tuple[int, str]  # (offset in the link, why the runtime cannot dial it yet)


class LinkError(ValueError):
    """A link that can never be dialed. `offset`: where in the link the problem starts."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.offset = offset


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint (the compiler's diagnostics word it the same way)."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None


def mask_link(link: str) -> str:
    """The link with its secrets replaced by '***': the userinfo's password (the whole
    userinfo where it is the secret: ss, trojan, vless), a base64 body (legacy ss, vmess)."""
    scheme, sep, rest = link.partition("://")
    if not sep:
        return re.sub(r"^[^@]*@", "***@", link)
    masked = mask_secrets(link)  # the renderer's rule: the whole user info, user names too
    if masked != link:
        return masked
    authority = re.split(r"[/?#]", rest, maxsplit=1)[0]
    if scheme.lower() in ("ss", "vmess") and not re.search(r":\d+$", authority):
        return f"{scheme}://***" + rest[len(authority):]  # a short base64 body
    return link


def _offset_of(link: str, needle: str) -> int | None:
    idx = link.find(needle)
    return idx if idx >= 0 else None


def finish_ss(node: dict[str, Any], link: str, query: dict[str, str]) -> Unsupported | None:
    """Move the method into "cipher", check it and the password; plugins are not dialable."""
    name = node["name"]
    method = (node.get("username") or "").lower()
    node["username"] = None
    node["cipher"] = method
    at = link.find("://") + 3
    if not method:
        raise LinkError(f"node '{name}': ss link has no method (expected "
                        f"base64 of 'method:password' before '@host:port')", at)
    if node.get("password") in (None, ""):
        raise LinkError(f"node '{name}': ss link has no password", at)
    if method in SS_STREAM:
        raise LinkError(f"node '{name}': ss method '{method}' is a stream cipher without "
                        f"authentication; not supported (use one of {', '.join(SS_AEAD)})", at)
    if method not in SS_AEAD + SS_2022 + SS_OTHER_AEAD:
        hint = did_you_mean(method, SS_AEAD)
        raise LinkError(f"node '{name}': unknown ss method '{method}'"
                        + (f" ({hint})" if hint else f" (supported: {', '.join(SS_AEAD)})"), at)
    if method in SS_2022:
        unsupported = _ss2022_key(name, method, node["password"], at)
        if unsupported:
            return unsupported
    if method in SS_OTHER_AEAD:
        return at, (f"node '{name}': ss method '{method}' is not supported yet (supported: "
                    f"{', '.join(SS_AEAD)}); groups will not select it")
    if "plugin" in query:
        return _ss_plugin(node, link, query["plugin"], at)
    return None


SS_2022_KEY_SIZES = {"2022-blake3-aes-128-gcm": 16, "2022-blake3-aes-256-gcm": 32,
                     "2022-blake3-chacha20-poly1305": 32}


def _ss2022_key(name: str, method: str, password: str, at: int) -> Unsupported | None:
    """SIP022 2.1: the password is the base64 of a key of exactly the method's size; `iPSK:uPSK`
    (SIP023 multi-user identity headers) parses but is not dialled. Never shows the password."""
    if ":" in password:
        return at, (f"node '{name}': Shadowsocks 2022 multi-user keys (iPSK:uPSK, SIP023 identity "
                    "headers) are not supported; groups will not select it")
    size = SS_2022_KEY_SIZES[method]
    try:
        key = base64.b64decode(password.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise LinkError(f"node '{name}': a {method} password must be the base64 of a {size}-byte "
                        "key (e.g. from 'openssl rand -base64 " + str(size) + "')", at) from None
    if len(key) != size:
        raise LinkError(f"node '{name}': a {method} key must be {size} bytes; the password's base64 "
                        f"decodes to {len(key)}", at)
    return None


def _ss_plugin(node: dict[str, Any], link: str, value: str, at: int) -> Unsupported | None:
    """SIP002's `plugin=NAME;OPT=V;...` (URL-decoded already): the name the runtime starts as a
    SIP003 subprocess, and the rest as its SS_PLUGIN_OPTIONS. Only the name's form is checked
    here: whether it is installed is the gateway's business, not the compiling machine's."""
    name = node["name"]
    plugin, _, options = value.strip().partition(";")
    plugin = plugin.strip()
    if not plugin:
        return None  # `plugin=` with nothing: shadowsocks clients read it as no plugin
    if not re.fullmatch(r"[A-Za-z0-9._/+-]+", plugin):
        raise LinkError(f"node '{name}': ss plugin name {plugin!r} is not a program name",
                        _offset_of(link, "plugin=") or at)
    node["plugin"] = plugin
    node["plugin_opts"] = options
    return None


def finish_trojan(node: dict[str, Any], link: str, query: dict[str, str]) -> Unsupported | None:
    """The userinfo is the password; ALPN list; only the plain TLS transport is dialable."""
    name = node["name"]
    user, password = node.get("username"), node.get("password")
    node["password"] = user if password is None else f"{user}:{password}"
    node["username"] = None
    if not node["password"]:
        raise LinkError(f"node '{name}': trojan link has no password (expected "
                        f"it before '@host:port')", link.find("://") + 3)
    alpn = [p.strip() for p in query.get("alpn", "").split(",") if p.strip()]
    node["alpn"] = alpn
    network = query.get("type", "").lower()
    security = query.get("security", "tls").lower()
    if network == "ws" and security in ("tls", ""):  # the shared WebSocket transport, over TLS
        node["transport"], unsupported = _transport(name, "ws", True, query.get("path", "/"),
                                                    query.get("host", ""), _offset_of(link, "type=") or 0)
        return unsupported
    if network not in TROJAN_NETWORKS:
        return (_offset_of(link, "type=") or 0,
                f"node '{name}': trojan over '{network}' transport is not supported yet; "
                "groups will not select it")
    if security not in ("tls", ""):
        return (_offset_of(link, "security=") or 0,
                f"node '{name}': trojan with security '{security}' is not supported yet; "
                "groups will not select it")
    return None


# --- vmess:// and vless:// (v2ray-family links) ------------------------------------------------

VMESS_SECURITIES = ("auto", "aes-128-gcm", "chacha20-poly1305", "none", "zero")
V2_NETWORKS = ("tcp", "ws", "h2", "http", "grpc", "quic", "kcp", "httpupgrade")
V2_TLS = ("", "none", "tls")
V2_TLS_UNSUPPORTED = ("reality", "xtls")
_UUID = re.compile(r"^[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}$")
_ED = re.compile(r"^\d{1,6}$")


def _transport(name: str, network: str, tls: bool, path: str, host: str, at: int,
               early_header: str = "") -> tuple[dict[str, Any], Unsupported | None]:
    """The manifest's transport dict; `?ed=N` leaves the path for `max_early_data`; a network
    the runtime has no transport for is reported through the capability table."""
    network = network or "tcp"
    if network not in V2_NETWORKS:
        hint = did_you_mean(network, V2_NETWORKS)
        raise LinkError(f"node '{name}': unknown transport '{network}'"
                        + (f" ({hint})" if hint else f" (known: {', '.join(V2_NETWORKS)})"), at)
    base, _, query = (path or "/").partition("?")
    early = 0
    rest = []
    for part in filter(None, query.split("&")):
        key, _, value = part.partition("=")
        if key == "ed":
            if not _ED.match(value):
                raise LinkError(f"node '{name}': WebSocket early data 'ed={value}' is not a byte count", at)
            early = int(value)
        else:
            rest.append(part)
    transport = {"network": network, "tls": tls, "path": base + ("?" + "&".join(rest) if rest else ""),
                 "host": host or None, "max_early_data": early,
                 "early_data_header": early_header or "Sec-WebSocket-Protocol"}
    cap = capabilities.transport(network)
    if cap is not None and not cap.dialable:
        return transport, (at, f"node '{name}': the '{network}' transport is not supported ({cap.missing}); "
                               "groups will not select it")
    return transport, None


def _check_uuid(name: str, scheme: str, value: Any, at: int) -> str:
    """The UUID, checked; the message never shows it (it is the node's credential)."""
    text = str(value or "").strip()
    if not text:
        raise LinkError(f"node '{name}': {scheme} link has no UUID", at)
    if not _UUID.match(text):
        raise LinkError(f"node '{name}': the {scheme} link's user id is not a UUID "
                        "(expected 8-4-4-4-12 hex digits; not shown: it is the credential)", at)
    return text


def finish_vmess(node: dict[str, Any], link: str, info: dict[str, Any]) -> Unsupported | None:
    """v2rayN's JSON (v, ps, add, port, id, aid, scy, net, type, host, path, tls, sni, alpn):
    UUID, security, transport and TLS checked; what the runtime cannot dial is reported."""
    name = node["name"]
    at = len("vmess://")
    node["username"] = _check_uuid(name, "vmess", info.get("id"), at)
    security = str(info.get("scy") or "auto").lower()
    if security not in VMESS_SECURITIES:
        hint = did_you_mean(security, VMESS_SECURITIES)
        raise LinkError(f"node '{name}': unknown vmess security '{security}'"
                        + (f" ({hint})" if hint else f" (supported: {', '.join(VMESS_SECURITIES)})"), at)
    node["cipher"] = security
    tls = str(info.get("tls") or "").lower()
    if tls not in V2_TLS + V2_TLS_UNSUPPORTED:
        raise LinkError(f"node '{name}': unknown vmess tls '{tls}' (expected 'tls' or '')", at)
    host = str(info.get("host") or "")
    network = str(info.get("net") or "tcp").lower()
    transport, unsupported = _transport(name, network, tls == "tls", str(info.get("path") or "/"),
                                        host if network in ("ws", "h2", "http") else "", at)
    node["transport"] = transport
    node["sni"] = str(info.get("sni") or "") or None
    alpn = info.get("alpn") or ""
    node["alpn"] = [p.strip() for p in str(alpn).split(",") if p.strip()]
    try:
        aid = int(info.get("aid") or 0)
    except (TypeError, ValueError):
        raise LinkError(f"node '{name}': vmess alterId {info.get('aid')!r} is not a number", at) from None
    if unsupported:
        return unsupported
    if tls in V2_TLS_UNSUPPORTED:
        return at, f"node '{name}': vmess with '{tls}' is not supported; groups will not select it"
    header = str(info.get("type") or "none").lower()
    if network == "tcp" and header not in ("none", ""):
        return at, (f"node '{name}': the tcp '{header}' header obfuscation is not supported; "
                    "groups will not select it")
    if aid != 0:
        return at, (f"node '{name}': alterId {aid} asks for the legacy (MD5) VMess header, which the "
                    "runtime does not speak (it speaks the AEAD header, alterId 0); groups will not select it")
    return None


def finish_vless(node: dict[str, Any], link: str, query: dict[str, str]) -> Unsupported | None:
    """`vless://uuid@host:port?type=&security=&sni=&path=&host=&encryption=none#name`."""
    name = node["name"]
    at = link.find("://") + 3
    user, password = node.get("username"), node.get("password")
    node["username"] = _check_uuid(name, "vless", user if password is None else f"{user}:{password}", at)
    node["password"] = None
    encryption = query.get("encryption", "none").lower()
    if encryption not in ("none", ""):
        raise LinkError(f"node '{name}': vless encryption '{encryption}' is not 'none'",
                        _offset_of(link, "encryption=") or at)
    security = query.get("security", "none").lower()
    if security not in V2_TLS + V2_TLS_UNSUPPORTED:
        raise LinkError(f"node '{name}': unknown vless security '{security}' (expected 'tls' or 'none')",
                        _offset_of(link, "security=") or at)
    network = query.get("type", "tcp").lower()
    host = query.get("host", "") if network in ("ws", "h2", "http") else ""
    transport, unsupported = _transport(name, network, security == "tls", query.get("path", "/"), host,
                                        _offset_of(link, "type=") or at, query.get("eh", ""))
    node["transport"] = transport
    node["alpn"] = [p.strip() for p in query.get("alpn", "").split(",") if p.strip()]
    if unsupported:
        return unsupported
    if security in V2_TLS_UNSUPPORTED:
        return (_offset_of(link, "security=") or at,
                f"node '{name}': vless with '{security}' is not supported; groups will not select it")
    flow = query.get("flow", "")
    if flow:
        return (_offset_of(link, "flow=") or at,
                f"node '{name}': vless flow '{flow}' (XTLS) is not supported; groups will not select it")
    header = query.get("headerType", "none").lower()
    if network == "tcp" and header not in ("none", ""):
        return (_offset_of(link, "headerType=") or at,
                f"node '{name}': the tcp '{header}' header obfuscation is not supported; "
                "groups will not select it")
    return None


# --- one link -> the manifest's node dict ---------------------------------------------------

DEFAULT_PORTS = {"socks5": 1080, "socks5h": 1080, "http": 80, "https": 443, "trojan": 443}


def b64decode_text(text: str) -> str:
    """Base64 (standard or URL-safe, padded or not) of UTF-8 text; ValueError otherwise."""
    pad = "=" * (-len(text) % 4)
    return base64.urlsafe_b64decode(text.replace("+", "-").replace("/", "_") + pad).decode("utf-8")


def _port_offset(link: str) -> int | None:
    authority = re.split(r"[/?#]", link.partition("://")[2], maxsplit=1)[0]
    colon = authority.rfind(":")
    return len(link.partition("://")[0]) + 3 + colon + 1 if colon >= 0 else None


def parse_link(name: str, link: str, allow_insecure: bool = False) -> dict[str, Any]:
    """Parse one node link into the manifest's node dict (raises LinkError).

    "unsupported" (popped by the caller, never in a manifest): None, or (offset in the link,
    why the runtime cannot dial this node yet)."""
    scheme, sep, rest = link.partition("://")
    scheme = scheme.lower()
    if not sep:
        raise LinkError(f"node '{name}': link {mask_link(link)!r} has no scheme (expected e.g. 'socks5://host:port')")
    if scheme not in KNOWN_PROTOCOLS:
        hint = did_you_mean(scheme, KNOWN_PROTOCOLS)
        raise LinkError(f"node '{name}': unknown protocol '{scheme}'" + (f" ({hint})" if hint else ""))
    node: dict[str, Any] = {"name": name, "protocol": scheme, "link": link, "username": None,
                            "password": None, "sni": None, "allow_insecure": allow_insecure, "params": {}}
    if scheme == "vmess":
        try:
            info = json.loads(b64decode_text(rest))
            node.update(host=str(info["add"]), port=int(info["port"]), username=str(info["id"]),
                        params={k: v for k, v in info.items() if k not in ("add", "port", "id")})
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            # bad base64, UTF-8 or JSON (all ValueError), a missing key, JSON that is not an object or
            # whose port is not a number (Infinity: OverflowError), JSON nested past the recursion limit
            raise LinkError(f"node '{name}': vmess link is not v2rayN base64 JSON with add/port/id ({exc})") from None
        if not 0 < node["port"] < 65536:
            raise LinkError(f"node '{name}': vmess port {node['port']} out of range", len("vmess://"))
        node["unsupported"] = finish_vmess(node, link, info)
        return node
    if scheme == "ss" and "@" not in rest.split("#")[0]:
        try:  # legacy form: ss://base64(method:password@host:port)#tag
            head, _, frag = rest.partition("#")
            userinfo, at_sign, hostport = b64decode_text(head).rpartition("@")
        except ValueError:  # binascii.Error, UnicodeDecodeError: not base64 of UTF-8
            raise LinkError(f"node '{name}': ss link is neither SIP002 nor base64 "
                            "'method:password@host:port'") from None
        if not at_sign:
            raise LinkError(f"node '{name}': ss link is neither SIP002 nor base64 'method:password@host:port'")
        # as SIP002 (base64 user info): the password may hold '/', '?' or '#', which a URL would split at
        rest = (base64.urlsafe_b64encode(userinfo.encode()).decode().rstrip("=") + "@" + hostport
                + ("#" + frag if frag else ""))
    try:
        u = split_url(f"{scheme}://{rest}")
    except ValueError as exc:
        raise LinkError(f"node '{name}': {exc} in {mask_link(link)!r}",
                        _port_offset(link) if "port" in str(exc) else None) from None
    port = u.port
    if not u.hostname:
        raise LinkError(f"node '{name}': link {mask_link(link)!r} has no host")
    port = port or DEFAULT_PORTS.get(scheme)
    if port is None:
        raise LinkError(f"node '{name}': link {mask_link(link)!r} has no port")
    node["host"] = u.hostname
    node["port"] = port
    query = {k: v[-1] for k, v in parse_qs(u.query).items()}
    node["params"] = query
    if u.username is not None:
        node["username"] = unquote(u.username)
    if u.password is not None:
        node["password"] = unquote(u.password)
    if scheme == "ss" and node["username"] and node["password"] is None:
        try:
            method, _, password = b64decode_text(node["username"]).partition(":")
            node["username"], node["password"] = method, password
        except ValueError:  # binascii.Error, UnicodeDecodeError: not base64 of UTF-8
            raise LinkError(f"node '{name}': ss userinfo is neither base64 'method:password' nor "
                            f"'method:password'", len(scheme) + 3) from None
    if scheme in ("ss", "trojan"):
        node["unsupported"] = (finish_ss if scheme == "ss" else finish_trojan)(node, link, query)
    if scheme == "vless":
        node["unsupported"] = finish_vless(node, link, query)
    if scheme in ("https", "trojan", "vless"):
        node["sni"] = query.get("sni") or query.get("peer") or None
        if query.get("allowInsecure") in ("1", "true"):
            node["allow_insecure"] = True
    return node
