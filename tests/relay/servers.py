"""Small servers and clients the relay tests talk to (all asyncio, on the test's loop)."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from typing import cast

import dns.message

from dae_py.runtime.net.sockets import wait_readable

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _bind(sock: socket.socket, host: str, port: int) -> socket.socket:
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    sock.bind((host, port))
    return sock


async def tcp_server(sock: socket.socket, host: str, port: int, handler: Handler) -> asyncio.Server:
    """Serve `handler` on an unbound socket (made in whatever namespace the caller chose)."""
    _bind(sock, host, port)
    return await asyncio.start_server(handler, sock=sock)


async def whoami(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Say who connected, echo until EOF, then say BYE: proves both half-closes."""
    peer = writer.get_extra_info("peername")
    writer.write(f"{peer[0]} {peer[1]}\n".encode())
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        writer.write(b"BYE\n")
        await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def http_204(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


def dns_answer(wire: bytes) -> bytes:
    return dns.message.make_response(dns.message.from_wire(wire)).to_wire()


async def dns_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        size = int.from_bytes(await reader.readexactly(2), "big")
        answer = dns_answer(await reader.readexactly(size))
        writer.write(len(answer).to_bytes(2, "big") + answer)
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


class _Udp(asyncio.DatagramProtocol):
    def __init__(self, answer: Callable[[bytes, tuple], bytes | None]) -> None:
        self.answer = answer
        self.transport: asyncio.DatagramTransport | None = None
        self.seen: list[tuple] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        self.seen.append(addr)
        reply = self.answer(data, addr)
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)


async def udp_server(sock: socket.socket, host: str, port: int,
                     answer: Callable[[bytes, tuple], bytes | None]) -> _Udp:
    _bind(sock, host, port)
    _, proto = await asyncio.get_running_loop().create_datagram_endpoint(
        lambda: _Udp(answer), sock=sock)
    return proto


def udp_echo(data: bytes, addr: tuple) -> bytes:
    """The echo says who sent the datagram (the proxy, for proxied flows)."""
    return f"{addr[0]} {addr[1]}|".encode() + data


async def connect(sock: socket.socket, host: str, port: int, timeout: float = 5.0) -> socket.socket:
    await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
    return sock


async def recv_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    """Everything until EOF; ConnectionResetError surfaces as is."""
    loop = asyncio.get_running_loop()
    chunks: list[bytes] = []
    while True:
        data = await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


async def recv_line(sock: socket.socket, timeout: float = 5.0) -> bytes:
    loop = asyncio.get_running_loop()
    buf = b""
    while b"\n" not in buf:
        data = await asyncio.wait_for(loop.sock_recv(sock, 1), timeout)
        if not data:
            break
        buf += data
    return buf


async def udp_exchange(sock: socket.socket, dst: tuple[str, int], data: bytes,
                       timeout: float = 5.0) -> tuple[bytes, tuple[str, int]]:
    """Send one datagram, return the first reply and who it came from."""
    sock.sendto(data, dst)
    return await udp_recv(sock, timeout)


async def udp_recv(sock: socket.socket, timeout: float = 5.0) -> tuple[bytes, tuple[str, int]]:
    async def receive() -> tuple[bytes, tuple[str, int]]:
        while True:
            try:
                data, addr = sock.recvfrom(65535)
                return data, (addr[0], addr[1])
            except BlockingIOError:
                await wait_readable(sock.fileno())

    return await asyncio.wait_for(receive(), timeout)


# --- raw SOCKS5 peers served from a thread (blocking sockets, as simple servers are written)
GREETING = b"\x05\x01\x00"
REQUEST = b"\x05\x01\x00\x01\xc0\x00\x02\x07\x00\x50"  # CONNECT 192.0.2.7:80
REPLY = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"


async def raw_server(handle: Callable[[socket.socket], None]) -> tuple[socket.socket, int, asyncio.Task]:
    """A listener whose connections `handle(conn)` serves in a thread (blocking sockets, as
    simple servers are written)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve_forever() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(3)
            try:
                handle(conn)
            except OSError:
                pass
            finally:
                conn.close()

    task = asyncio.get_running_loop().create_task(asyncio.to_thread(serve_forever))
    return listener, port, task


async def stop(listener: socket.socket, task: asyncio.Task) -> None:
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    await asyncio.wait_for(task, 5)


def recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def echo_after(conn: socket.socket) -> None:
    while data := conn.recv(4096):
        conn.sendall(data)
