"""The Host header of an HTTP/1.x request, from the first bytes of a stream.

Only a request line with a known method and an `HTTP/1.x` version counts (anything else is NO
early, so a binary protocol is not read for long); headers are read up to the blank line or
MAX_HEAD bytes. An absolute-form target (`GET http://name/ HTTP/1.1`, proxies' form) names the
host too; the Host header wins when both are there (RFC 9112 3.2.2 says they must agree).
"""
from __future__ import annotations

from .result import NEED_MORE, NO, Verdict, valid_name

MAX_HEAD = 16 * 1024
METHODS = (b"GET", b"HEAD", b"POST", b"PUT", b"DELETE", b"OPTIONS", b"TRACE", b"PATCH", b"CONNECT")
_LONGEST = max(len(m) for m in METHODS) + 1


def sniff(data: bytes) -> str | Verdict:
    head = data[:MAX_HEAD]
    line_end = head.find(b"\r\n")
    first = head if line_end < 0 else head[:line_end]
    sp = first.find(b" ")
    if sp < 0:
        if len(first) >= _LONGEST or not any(m.startswith(first) for m in METHODS):
            return NO
        return NEED_MORE if line_end < 0 else NO
    method = first[:sp]
    if method not in METHODS:
        return NO
    if line_end < 0:
        return NEED_MORE if len(head) < MAX_HEAD else NO
    parts = first.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return NO
    end = head.find(b"\r\n\r\n")
    # only complete lines: a Host line still arriving would give a cut-off name
    block = head[line_end + 2:end if end >= 0 else head.rfind(b"\r\n")]
    for line in block.split(b"\r\n"):
        name, colon, value = line.partition(b":")
        if colon and name.strip().lower() == b"host":
            return _host(value.strip())
    if end < 0:
        return NEED_MORE if len(head) < MAX_HEAD else NO
    target = parts[1]
    if target.lower().startswith((b"http://", b"https://")):
        authority = target.split(b"/", 3)[2]
        return _host(authority.rpartition(b"@")[2])
    return NO


def _host(value: bytes) -> str | Verdict:
    """`name`, `name:port`; `[v6]:port` and bare addresses are not names."""
    if value.startswith(b"["):
        return NO
    host, _, port = value.partition(b":")
    if port and not port.isdigit():
        return NO
    name = valid_name(host)
    return name if name is not None else NO
