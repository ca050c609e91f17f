"""Transparent listening sockets (IP_TRANSPARENT / IPV6_TRANSPARENT), v4 and v6 on one port,
guarded by the program's socket filter, and the check that a destination is the relay itself."""
from __future__ import annotations

import errno
import ipaddress
import socket
from typing import TypedDict, Unpack

from dae_py.runtime.net.sockets import IP_RECVORIGDSTADDR, IPV6_RECVORIGDSTADDR, SOL_IPV6, set_mark, set_transparent

SO_ATTACH_BPF = getattr(socket, "SO_ATTACH_BPF", 50)


def attach_guard(sock: socket.socket, prog_fd: int) -> None:
    """Attach the program's `tproxy_guard` socket filter (docs/hardening.md): the socket then
    sees only packets the tc program delivered with bpf_sk_assign (they carry its fwmark), and
    the sockets a TCP listener accepts inherit the filter."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, prog_fd)


def addressed_to_self(dst: tuple[str, int], port: int) -> bool:
    """A flow to our own listener (a local address, our port) would be relayed to ourselves,
    again and again, each hop on a new socket. Only destinations on our port pay for the check
    (a bind probe: it succeeds only for a local address, since the probe is not transparent)."""
    if dst[1] != port:
        return False
    try:
        ip = ipaddress.ip_address(dst[0])
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    try:
        probe = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET,
                              socket.SOCK_DGRAM)
    except OSError:  # out of fds: cannot tell, and a flow to our port is never worth it
        return True
    try:
        probe.bind((dst[0], 0))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def transparent_socket(kind: int, host: str, port: int, *, so_mark: int = 0,
                       recv_orig_dst: bool = False, guard_fd: int | None = None,
                       reuseport: bool = False) -> socket.socket:
    """`guard_fd`: the socket filter to attach before the socket is bound (no unguarded moment);
    `reuseport`: SO_REUSEPORT, so that the relay workers' listeners share the port
    (runtime/relay/workers.py)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if guard_fd is not None:
            attach_guard(sock, guard_fd)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuseport:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
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


class SocketOptions(TypedDict, total=False):
    """`transparent_socket`'s keyword arguments, as `bind_pair` passes them on."""

    so_mark: int
    recv_orig_dst: bool
    guard_fd: int | None
    reuseport: bool


def bind_pair(kind: int, hosts: tuple[str, ...], port: int, **kwargs: Unpack[SocketOptions]
              ) -> list[socket.socket]:
    """One socket per host, all on the same port (port 0: the first one's ephemeral port)."""
    for _attempt in range(8):
        socks: list[socket.socket] = []
        try:
            chosen = port
            for host in hosts:
                sock = transparent_socket(kind, host, chosen, **kwargs)
                socks.append(sock)
                chosen = sock.getsockname()[1]
            return socks
        except OSError as exc:
            for sock in socks:
                sock.close()
            if port != 0 or exc.errno != errno.EADDRINUSE:
                raise
    raise OSError(errno.EADDRINUSE, "no port free on every address")
