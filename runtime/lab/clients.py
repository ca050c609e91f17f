"""Tiny clients for the lab's own peers, on sockets the caller already connected.

They take a connected socket (e.g. from `Lab.socket(...)`, or one a SOCKS5/CONNECT handshake
already went through) so the same helper checks a direct, a relayed and a transparently
proxied path alike.
"""
from __future__ import annotations

import json
import socket
from typing import Any


def read_http_response(
    sock: socket.socket, limit: int = 1 << 20
) -> tuple[int, dict[str, str], bytes]:
    """(status, lower-cased headers, body) of one response; reads until close or
    Content-Length."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError(f"connection closed inside the response head: {buf[:200]!r}")
        buf += chunk
        if len(buf) > limit:
            raise ValueError("response head too long")
    head, body = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        key, _, value = line.partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers["content-length"]) if "content-length" in headers else None
    while length is None or len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
        if len(body) > limit:
            raise ValueError("response body too long")
    return status, headers, body


def http_get(sock: socket.socket, host: str, path: str = "/") -> dict[str, Any]:
    """GET `path` from the lab's HTTP peer over `sock`; the decoded JSON body
    ({"peer": ..., "port": ..., "local": ..., "local_port": ..., "path": ...})."""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
    status, _, body = read_http_response(sock)
    if status != 200:
        raise ConnectionError(f"HTTP {status}: {body[:200]!r}")
    return json.loads(body)


def parse_udp_echo(reply: bytes) -> tuple[str, int, bytes]:
    """(peer ip, peer port, payload) from a reply of the lab's UDP echo server."""
    head, _, payload = reply.partition(b"\n")
    ip, port = head.decode().split()
    return ip, int(port), payload
