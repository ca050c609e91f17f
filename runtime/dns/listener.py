"""UDP and TCP listeners for `dns.bind`: bytes in, `answer(wire)` out, nothing trusted.

A datagram that is not a DNS query is dropped (garbage, or a response: answering those could
start a loop) or, when its header is readable, answered FORMERR; it never ends the listener.
In-flight queries are bounded (`max_pending`): past that, new datagrams are dropped, as a
busy resolver does. TCP connections carry length-prefixed messages (RFC 7766), one answer per
query in order, closed when idle or on a bad length. The sockets are the relay's transparent
ones: dns.bind may name an address the gateway answers for without holding it.

UDP is a plain non-blocking socket on the loop's add_reader, not an asyncio datagram endpoint:
one wake-up reads every datagram waiting (up to READ_BURST), where the endpoint reads one per
wake-up and calls a protocol method for it. Each is answered inside that callback when it can be
(`answer_now`: a cache hit, sent at once; `answer_soon`: a plain miss, asked upstream and
answered from the upstream socket's callback), and only the rest become tasks (`answer`).
"""
from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections.abc import Awaitable, Callable, Coroutine
from functools import partial
from typing import Any

from dae_py.runtime.relay.listen import transparent_socket

log = logging.getLogger("dae.dns.listen")

Answer = Callable[[bytes, int], Awaitable[bytes | None]]  # (query wire, max answer size) -> answer
TCP_IDLE = 10.0
MAX_TCP_CONNECTIONS = 512
READ_BURST = 256  # datagrams read per readiness callback before other sockets get the loop
AnswerNow = Callable[[bytes], bytes | None]  # (query wire) -> an answer at once, or None
Send = Callable[[bytes], None]
# (query wire, send, where a hijacked query was sent or None) -> True: it will send the answer
AnswerSoon = Callable[[bytes, Send, "tuple[str, int] | None"], bool]


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
    def __init__(self, answer: Answer, answer_now: AnswerNow | None = None, max_pending: int = 4096,
                 answer_soon: AnswerSoon | None = None) -> None:
        self.answer = answer
        self.answer_now = answer_now  # the cache-hit path, run inside the reader callback
        self.answer_soon = answer_soon  # the plain-miss path, run there too (module.fast)
        self.max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()
        self._udp: list[socket.socket] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._tcp_conns = 0
        self.dropped = self.send_failed = 0
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
            self._udp.append(udp)
            loop.add_reader(udp.fileno(), self._readable, udp)
            self._servers.append(await asyncio.start_server(self._tcp, sock=tcp, backlog=256))
            self.addresses.append((host, port))
            log.info("dns listening on %s udp+tcp", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def _readable(self, sock: socket.socket) -> None:
        """Every datagram waiting (up to READ_BURST): hits answered here, the rest dispatched."""
        recv = sock.recvfrom
        now = self.answer_now
        for _ in range(READ_BURST):
            try:
                data, addr = recv(65535)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # an ICMP error queued by an earlier answer: not ours to fix
                log.debug("dns udp: %s", exc)
                continue
            if now is not None:
                try:
                    reply = now(data)
                except Exception:  # noqa: BLE001 - fall back to the full path, which logs
                    reply = None
                if reply is not None:
                    try:
                        sock.sendto(reply, addr)
                    except OSError:  # a full send buffer: the answer is lost, the client retries
                        self.send_failed += 1
                    continue
            self.spawn_udp(sock, data, addr)

    def spawn_udp(self, sock: socket.socket, data: bytes, addr: tuple[Any, ...]) -> None:
        """A query answer_now did not answer: the fast miss path if it takes it, else a task."""
        soon = self.answer_soon
        if soon is not None:
            try:
                if soon(data, partial(self._reply, sock, addr), None):  # dns.bind: asked us, no origin
                    return
            except Exception:  # a bug there must not lose the query: the full path answers it
                log.exception("dns: the fast path failed on a UDP query from %s", addr[0])
        if not spawn_bounded(self._tasks, self.max_pending, self._udp_query(sock, data, addr)):
            self.dropped += 1

    def _reply(self, sock: socket.socket, addr: tuple[Any, ...], reply: bytes) -> None:
        if sock.fileno() < 0:  # closed while the query was out
            return
        try:
            sock.sendto(reply, addr)
        except OSError:
            self.send_failed += 1

    async def _udp_query(self, sock: socket.socket, data: bytes, addr: tuple[Any, ...]) -> None:
        try:
            reply = await self.answer(data, 0)
        except Exception:  # a bug answering one query must not stop the others (logged, so not BLE001)
            log.exception("dns: failed to answer a UDP query from %s", addr[0])
            return
        if reply is not None:
            self._reply(sock, addr, reply)

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
        loop = asyncio.get_running_loop()
        for s in self._udp:
            loop.remove_reader(s.fileno())
            s.close()
        self._udp = []
        await close_servers(self._servers, self._tasks)
