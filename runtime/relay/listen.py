"""Transparent listening sockets (IP_TRANSPARENT / IPV6_TRANSPARENT), v4 and v6 on one port."""
from __future__ import annotations

import errno
import socket

from runtime.outbound.sockets import (IP_RECVORIGDSTADDR, IPV6_RECVORIGDSTADDR, SOL_IPV6,
                                      set_mark, set_transparent)


def transparent_socket(kind: int, host: str, port: int, *, so_mark: int = 0,
                       recv_orig_dst: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, socket.IPV6_V6ONLY, 1)
        set_transparent(sock)
        set_mark(sock, so_mark)
        if recv_orig_dst:
            if family == socket.AF_INET6:
                sock.setsockopt(SOL_IPV6, IPV6_RECVORIGDSTADDR, 1)
            else:
                sock.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
        sock.setblocking(False)
        sock.bind((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def bind_pair(kind: int, hosts: tuple[str, ...], port: int, **kwargs: bool | int
              ) -> list[socket.socket]:
    """One socket per host, all on the same port (port 0: the first one's ephemeral port)."""
    for _attempt in range(8):
        socks: list[socket.socket] = []
        try:
            chosen = port
            for host in hosts:
                sock = transparent_socket(kind, host, chosen, **kwargs)  # type: ignore[arg-type]
                socks.append(sock)
                chosen = sock.getsockname()[1]
            return socks
        except OSError as exc:
            for sock in socks:
                sock.close()
            if port != 0 or exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "no port free on every address")
