"""UDP and TCP listeners for `dns.bind`: bytes in, `answer(wire)` out, nothing trusted.

A datagram that is not a DNS query is dropped (garbage, or a response: answering those could
start a loop) or, when its header is readable, answered FORMERR; it never ends the listener.
In-flight queries are bounded (`max_pending`): past that, new datagrams are dropped, as a
busy resolver does. TCP connections carry length-prefixed messages (RFC 7766), one answer per
query in order, closed when idle or on a bad length. The sockets are the relay's transparent
ones: dns.bind may name an address the gateway answers for without holding it.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, cast

from dae_py.runtime.relay.listen import transparent_socket

log = logging.getLogger("dae.dns.listen")

Answer = Callable[[bytes, int], Awaitable[bytes | None]]  # (query wire, max answer size) -> answer
TCP_IDLE = 10.0
MAX_TCP_CONNECTIONS = 512


async def tcp_session(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, answer: Answer) -> None:
    """Length-prefixed queries on one connection (RFC 7766), answered in order, until the client
    closes, idles for TCP_IDLE, sends a bad length, or a query gets no answer; then closed."""
    peer = writer.get_extra_info("peername")
    try:
        while True:
            head = await asyncio.wait_for(reader.readexactly(2), TCP_IDLE)
            (n,) = struct.unpack("!H", head)
            if n < 12:
                break
            data = await asyncio.wait_for(reader.readexactly(n), TCP_IDLE)
            reply = await answer(data, 65535)
            if reply is None:
                break
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError):
        pass
    except Exception:
        log.exception("dns: failed to answer a TCP query from %s", peer)
    finally:
        writer.close()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsListener) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)  # a datagram endpoint's transport

    def datagram_received(self, data: bytes, addr: tuple[Any, ...]) -> None:
        now = self.server.answer_now
        if now is not None and self.transport is not None:
            try:
                reply = now(data)
            except Exception:  # noqa: BLE001 - fall back to the full path, which logs
                reply = None
            if reply is not None:
                self.transport.sendto(reply, addr)
                return
        self.server.spawn_udp(self, data, addr)

    def error_received(self, exc: Exception) -> None:  # ICMP errors of earlier replies: not ours to fix
        log.debug("dns udp: %s", exc)


async def close_servers(servers: list[asyncio.Server], tasks: set[asyncio.Task[None]]) -> None:
    """Stop accepting, cancel the queries in flight and wait (at most 1 s each) for the servers:
    what both listeners (dns.bind and the hijack port) do at close."""
    for srv in servers:
        srv.close()
    for t in list(tasks):
        t.cancel()
    if tasks:
        await asyncio.gather(*tasks, return_exceptions=True)
    for srv in servers:
        try:
            await asyncio.wait_for(srv.wait_closed(), 1.0)
        except TimeoutError:
            pass


def spawn_bounded(tasks: set[asyncio.Task[None]], limit: int, coro: Coroutine[Any, Any, None]) -> bool:
    """Run `coro` as a task tracked in `tasks` unless `limit` are in flight (then it is closed
    unrun and False says the query was dropped)."""
    if len(tasks) >= limit:
        coro.close()
        return False
    t = asyncio.get_running_loop().create_task(coro)
    tasks.add(t)
    t.add_done_callback(tasks.discard)
    return True


class DnsListener:
    def __init__(self, answer: Answer, answer_now: Callable[[bytes], bytes | None] | None = None,
                 max_pending: int = 4096) -> None:
        self.answer = answer
        self.answer_now = answer_now  # the cache-hit path, run inside the datagram callback
        self.max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()
        self._transports: list[asyncio.DatagramTransport] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._tcp_conns = 0
        self.dropped = 0
        self.addresses: list[tuple[str, int]] = []

    async def start(self, binds: list[tuple[str, int]]) -> None:
        loop = asyncio.get_running_loop()
        for host, want in binds:
            for _attempt in range(20 if want == 0 else 1):  # port 0 (tests): one port for both
                udp = transparent_socket(socket.SOCK_DGRAM, host, want)
                port = udp.getsockname()[1]
                try:
                    tcp = transparent_socket(socket.SOCK_STREAM, host, port)
                    break
                except OSError:
                    udp.close()
                    if want:
                        raise
            else:
                raise OSError(f"no port free for both UDP and TCP on {host}")
            transport, _ = await loop.create_datagram_endpoint(lambda: _UdpProtocol(self), sock=udp)
            self._transports.append(transport)
            self._servers.append(await asyncio.start_server(self._tcp, sock=tcp, backlog=256))
            self.addresses.append((host, port))
            log.info("dns listening on %s udp+tcp", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def spawn_udp(self, proto: _UdpProtocol, data: bytes, addr: tuple[Any, ...]) -> None:
        if not spawn_bounded(self._tasks, self.max_pending, self._udp(proto, data, addr)):
            self.dropped += 1

    async def _udp(self, proto: _UdpProtocol, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            reply = await self.answer(data, 0)
        except Exception:  # a bug answering one query must not stop the others (logged, so not BLE001)
            log.exception("dns: failed to answer a UDP query from %s", addr[0])
            return
        if reply is not None and proto.transport is not None and not proto.transport.is_closing():
            proto.transport.sendto(reply, addr)

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_conns >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        self._tcp_conns += 1
        try:
            await tcp_session(reader, writer, self.answer)
        finally:
            self._tcp_conns -= 1

    async def close(self) -> None:
        for tr in self._transports:
            tr.close()
        await close_servers(self._servers, self._tasks)
