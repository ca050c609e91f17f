"""What `ss://` (SIP002), `trojan://`, `vmess://` and `vless://` links must hold, checked at
compile time; secrets masked.

`parse_link` (nodes.py) splits a link into host, port, userinfo and query; the functions here
finish the node dict for one scheme each: they raise LinkError (with the offset in the link of
the offending part, for a precise file:line:col) for links that can never work, and return the
reason a link the runtime cannot dial yet (SS2022 multi-user keys, trojan over gRPC)
is left out, so it becomes a warning and groups do not select it. No message carries a password:
links are shown through `mask_link`.
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from dae_py.contract import capabilities

from .diagnostics import did_you_mean
from .urls import mask_secrets

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
