"""Socket plumbing shared by the proxy protocols, the groups' probes and the relay.

Everything runs on non-blocking sockets driven by the loop's add_reader/add_writer, never through
asyncio transports: the relay needs the raw file descriptors for splice(2).
"""
from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import socket
from dataclasses import dataclass
from typing import Any

from .errors import DialError
from .poller import connected, poller_for

SO_MARK = getattr(socket, "SO_MARK", 36)
IP_TRANSPARENT = getattr(socket, "IP_TRANSPARENT", 19)
IPV6_TRANSPARENT = 75
IP_RECVORIGDSTADDR = getattr(socket, "IP_RECVORIGDSTADDR", 20)
IP_ORIGDSTADDR = IP_RECVORIGDSTADDR
IPV6_RECVORIGDSTADDR = 74
IPV6_ORIGDSTADDR = IPV6_RECVORIGDSTADDR
SOL_IPV6 = getattr(socket, "SOL_IPV6", 41)
SOCK_NONBLOCK = getattr(socket, "SOCK_NONBLOCK", 0)
IPPROTO_MPTCP = getattr(socket, "IPPROTO_MPTCP", 262)
# socket(IPPROTO_MPTCP) fails with these where the kernel has no MPTCP (EPROTONOSUPPORT) or it is
# off in this namespace (net.mptcp.enabled=0: ENOPROTOOPT); the connection is then plain TCP.
_NO_MPTCP = (errno.EPROTONOSUPPORT, errno.ENOPROTOOPT, errno.EINVAL, errno.ESOCKTNOSUPPORT)


@dataclass(frozen=True)
class DialOptions:
    """Socket options and timeouts every outgoing connection honours."""

    so_mark: int = 0
    connect_timeout: float = 10.0
    handshake_timeout: float = 10.0
    mptcp: bool = False  # global.mptcp: TCP to nodes is Multipath TCP where the kernel allows it


def tcp_socket(family: int, mptcp: bool = False) -> socket.socket:
    """A non-blocking stream socket: IPPROTO_MPTCP when `mptcp` (dae's global.mptcp) and the kernel
    takes it, else plain TCP. An MPTCP socket falls back to TCP by itself when the peer does not
    speak MPTCP, so only the kernel's refusal is handled here."""
    if mptcp:
        try:
            return socket.socket(family, socket.SOCK_STREAM | SOCK_NONBLOCK, IPPROTO_MPTCP)
        except OSError as exc:
            if exc.errno not in _NO_MPTCP:
                raise
    return socket.socket(family, socket.SOCK_STREAM | SOCK_NONBLOCK)


def _wake(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


async def wait_readable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_reader(fd, _wake, fut)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


async def wait_writable(fd: int) -> None:
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.add_writer(fd, _wake, fut)
    try:
        await fut
    finally:
        loop.remove_writer(fd)


def family_of(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ipaddress.ip_address(host).version == 6 else socket.AF_INET


def set_mark(sock: socket.socket, mark: int) -> None:
    """Mark the gateway's own traffic so the datapath never captures it again."""
    if mark:
        sock.setsockopt(socket.SOL_SOCKET, SO_MARK, mark)


def set_transparent(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(SOL_IPV6, IPV6_TRANSPARENT, 1)
    else:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)


_LITERALS: dict[tuple[str, int], list[tuple[int, tuple]]] = {}  # IP literal (host, port) -> answer


def _literal(host: str, port: int) -> list[tuple[int, tuple]] | None:
    """resolve()'s answer for an IP literal, cached (nodes are dialed again and again)."""
    key = (host, port)
    cached = _LITERALS.get(key)
    if cached is not None:
        return cached
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return None
    fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    answer: list[tuple[int, tuple]] = [(fam, (host, port, 0, 0) if fam == socket.AF_INET6 else (host, port))]
    if len(_LITERALS) < 4096:
        _LITERALS[key] = answer
    return answer


async def resolve(host: str, port: int, timeout: float, node: Any = None,
                  family: int = 0) -> list[tuple[int, tuple]]:
    """[(family, sockaddr)] for an IP literal (no lookup) or a name (getaddrinfo, bounded)."""
    literal = _literal(host, port)
    if literal is not None:
        return literal
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout):
            infos = await loop.getaddrinfo(host, port, family=family, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise DialError(f"resolving {host!r} timed out after {timeout:g}s", node) from None
    except OSError as exc:
        raise DialError(f"cannot resolve {host!r}: {exc.strerror or exc}", node) from None
    return [(fam, addr) for fam, _, _, _, addr in infos]


async def connect_tcp(host: str, port: int, opts: DialOptions,
                      node: Any = None) -> socket.socket:
    """A connected, non-blocking, marked TCP socket; DialError (naming the node) otherwise."""
    return await connect_in(asyncio.get_running_loop(), host, port, opts, node, keep=False)


async def connect_in(loop: asyncio.AbstractEventLoop, host: str, port: int, opts: DialOptions,
                     node: Any = None, *, keep: bool) -> socket.socket:
    """connect_tcp on `loop`. `keep`: leave the socket in the loop's FdPoller set (disarmed),
    for a SocketStream that reads next (`SocketStream(sock, loop, in_poller=True)`)."""
    deadline = loop.time() + opts.connect_timeout
    last: Exception | None = None
    addrs = _literal(host, port) or await resolve(host, port, opts.connect_timeout, node)
    for fam, addr in addrs:
        sock = tcp_socket(fam, opts.mptcp)  # non-blocking from the start: no ioctl(FIONBIO)
        waited = False
        try:
            set_mark(sock, opts.so_mark)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
            if err == errno.EINPROGRESS:
                if deadline - loop.time() <= 0:
                    raise TimeoutError
                await connected(loop, sock.fileno(), deadline)
                waited = True
                err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OSError(err, os.strerror(err))
            if waited and not keep:
                poller_for(loop).remove(sock.fileno())
            return sock
        except TimeoutError:
            sock.close()
            last = DialError(f"connect to {addr[0]}:{addr[1]} timed out after "
                             f"{opts.connect_timeout:g}s", node)
            break
        except OSError as exc:
            if waited:
                poller_for(loop).remove(sock.fileno())
            sock.close()
            last = DialError(f"connect to {addr[0]}:{addr[1]} failed: "
                             f"{exc.strerror or exc}", node)
        except BaseException:
            if waited:
                poller_for(loop).remove(sock.fileno())
            sock.close()
            raise
    assert last is not None
    raise last


def abort(sock: socket.socket) -> None:
    """Close with an RST: the peer learns at once that the flow is refused."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    except OSError:
        pass
    sock.close()
