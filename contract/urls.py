"""URLs from configs: one safe split, and the masking of credentials in anything shown to users.

`urllib.parse.urlsplit` raises ValueError on a bad IPv6 bracket and `.port` raises on a bad port;
`split_url` turns both into one ValueError the callers report at the value's position. Node
links carry passwords (`socks5://user:secret@host`, `trojan://secret@host`) or are credentials
whole (`vmess://BASE64`, legacy `ss://BASE64`): `mask_secrets` hides them in every message,
hint and echoed source line (diagnostics.Diagnostic.render calls it).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import SplitResult, urlsplit

MASK = "***"

# scheme://USERINFO@  (userinfo: everything up to the token's last '@'; only white space and
# quotes end it. Standard base64 puts '/' and '+' in ss user info, and passwords hold '#', '?'
# or '@' unescaped: better to hide a host now and then than to show part of a secret.)
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<secret>[^\s'\"]+)@")
# Links that are a credential as a whole: vmess (base64 JSON with the UUID), legacy ss (base64).
# Subscription URLs carry the account's token in the query (`?token=`): its value.
_QUERY_SECRET = re.compile(r"(?P<scheme>[?&](?:token|key|auth|secret|password|passwd|pass|uuid|sid)=)"
                           r"(?P<secret>[^&\s'\"#]+)", re.IGNORECASE)
_OPAQUE = re.compile(r"(?P<scheme>\b(?:vmess|vless|ss|ssr)://)(?P<secret>[A-Za-z0-9+/=_-]{8,})(?![A-Za-z0-9+/=_-]*@)")


@dataclass(frozen=True)
class Url:
    """The parts of a split URL the compiler uses; `port` is None when absent."""

    scheme: str
    netloc: str
    hostname: str | None
    port: int | None
    username: str | None
    password: str | None
    path: str
    query: str
    fragment: str


def split_url(text: str) -> Url:
    """urlsplit plus port, raising only ValueError; the message never quotes the URL."""
    try:
        u: SplitResult = urlsplit(text)
        port = u.port
        hostname = u.hostname
    except ValueError as exc:
        reason = str(exc)
        if "Port" in reason or "port" in reason:
            raise ValueError("invalid port") from None
        raise ValueError(f"invalid URL ({reason.lower() or 'cannot be parsed'})") from None
    return Url(scheme=u.scheme.lower(), netloc=u.netloc, hostname=hostname, port=port, username=u.username,
               password=u.password, path=u.path, query=u.query, fragment=u.fragment)


def mask_secrets(text: str) -> str:
    """`socks5://user:pw@h` -> `socks5://***@h`, `vmess://eyJ...` -> `vmess://***`."""
    if "://" not in text:
        return text
    text = _USERINFO.sub(lambda m: m.group("scheme") + MASK + "@", text)
    text = _QUERY_SECRET.sub(lambda m: m.group("scheme") + MASK, text)
    return _OPAQUE.sub(lambda m: m.group("scheme") + MASK, text)


def mask_with_column(line: str, col0: int) -> tuple[str, int]:
    """Mask `line`, and move the 0-based column `col0` by what the masks before it removed."""
    masked = mask_secrets(line)
    if masked == line:
        return line, col0
    shift = 0
    for rx in (_USERINFO, _QUERY_SECRET, _OPAQUE):
        for m in rx.finditer(line):
            a, b = m.span("secret")
            if b <= col0:
                shift += (b - a) - len(MASK)
            elif a < col0:
                col0 = a  # the caret pointed inside a secret: point at its start
    return masked, max(col0 - shift, 0)


def redact_url(url: str) -> str:
    """A subscription URL as logs and messages show it: scheme, host and port; a path and a
    query (where providers put the account's token: `/link/TOKEN`, `?token=`) become '***'.
    A file:// URL is a local path, shown whole."""
    try:
        u = urlsplit(url)
        host = u.hostname or ""
        port = u.port
    except ValueError:
        return url.partition("://")[0] + "://" + MASK
    if u.scheme.lower() == "file":
        return url
    if ":" in host:
        host = f"[{host}]"
    shown = f"{u.scheme}://{host}{f':{port}' if port else ''}"
    if u.path not in ("", "/") or u.query or u.fragment:
        shown += "/" + MASK
    return shown
