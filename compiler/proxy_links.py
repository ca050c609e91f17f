"""What `ss://` (SIP002) and `trojan://` links must hold, checked at compile time; secrets masked.

`parse_link` (nodes.py) splits a link into host, port, userinfo and query; the functions here
finish the node dict for one scheme each: they raise LinkError (with the offset in the link of
the offending part, for a precise file:line:col) for links that can never work, and return the
reason a link the runtime cannot dial yet (SS2022, SIP003 plugins, trojan over WebSocket/gRPC)
is left out, so it becomes a warning and groups do not select it. No message carries a password:
links are shown through `mask_link`.
"""
from __future__ import annotations

import re
from typing import Any

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
TROJAN_NETWORKS = ("", "tcp", "original")

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
        return at, (f"node '{name}': Shadowsocks 2022 ({method}) is not supported yet; "
                    "groups will not select it")
    if method in SS_OTHER_AEAD:
        return at, (f"node '{name}': ss method '{method}' is not supported yet (supported: "
                    f"{', '.join(SS_AEAD)}); groups will not select it")
    if "plugin" in query:
        plugin = query["plugin"].split(";")[0]
        return (_offset_of(link, "plugin=") or at,
                f"node '{name}': SIP003 plugins are not supported yet (plugin '{plugin}'); "
                "groups will not select it")
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
    if network not in TROJAN_NETWORKS:
        return (_offset_of(link, "type=") or 0,
                f"node '{name}': trojan over '{network}' transport is not supported yet; "
                "groups will not select it")
    security = query.get("security", "tls").lower()
    if security not in ("tls", ""):
        return (_offset_of(link, "security=") or 0,
                f"node '{name}': trojan with security '{security}' is not supported yet; "
                "groups will not select it")
    return None
