"""The hijack listener: LAN DNS the program assigned to the module (templates/bpf/dns_hijack.h),
answered from the address the client asked, so clients need no change.

UDP: two IP_TRANSPARENT sockets (0.0.0.0 and ::) on the manifest's `dns.hijack_port`, with
IP_RECVORIGDSTADDR / IPV6_RECVORIGDSTADDR: `recvmsg` gives each query's original destination
(the resolver the client sent it to). The answer leaves from a transparent socket bound to that
address and port, one per destination (kept, least recently used closed past REPLY_SOCKETS),
with a filter that drops everything it might receive: it only sends.

TCP: two transparent listeners on the same port; the kernel accepts the assigned SYN as the
original destination, so the accepted socket's local address is the resolver the client
asked, and replies need nothing more. Queries are length-prefixed (`listener.tcp_session`).

Both kinds get the program's tproxy_guard filter (only packets bpf_sk_assign delivered, which
carry the fwmark, reach them). Each query runs with `asis.ORIGIN` set (the callback miss path,
which runs in no task, is given the origin as an argument), so request routing's `asis` asks
the client's own resolver. Bad input is the module's business (FORMERR or drop);
nothing here parses DNS, and in-flight queries are bounded as on `dns.bind`.
"""
from __future__ import annotations

import asyncio
import ctypes
import logging
import socket
from collections import OrderedDict
from functools import partial
from typing import Any

from dae_py.runtime.net.sockets import SOL_IPV6, set_mark, set_transparent
from dae_py.runtime.relay.listen import bind_pair
from dae_py.runtime.relay.udp import ANC_SIZE, orig_dst

from .asis import ORIGIN
from .listener import (
    MAX_TCP_CONNECTIONS,
    READ_BURST,
    Answer,
    AnswerNow,
    AnswerSoon,
    close_servers,
    spawn_bounded,
    tcp_session,
)

log = logging.getLogger("dae.dns.hijack")

REPLY_SOCKETS = 256
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.POINTER(_SockFilter))]


_DROP_ALL = (_SockFilter * 1)(_SockFilter(0x06, 0, 0, 0))  # BPF_RET | BPF_K, 0: keep no bytes
_DROP_ALL_PROG = _SockFprog(1, ctypes.cast(_DROP_ALL, ctypes.POINTER(_SockFilter)))


def send_only(sock: socket.socket) -> None:
    """A classic socket filter that drops every packet: the socket never queues input."""
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(_DROP_ALL_PROG))


def is_local(ip: str) -> bool:
    """Does this host hold `ip`? (A plain bind succeeds only on a local address.)"""
    probe = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.bind((ip, 0))
    except OSError:
        return False
    finally:
        probe.close()
    return True


def reply_socket(dst: tuple[str, int], so_mark: int) -> socket.socket:
    """A send-only transparent UDP socket bound to `dst`. On an address that is not the host's,
    SO_REUSEADDR lets it share `dst` with the relay's reply sockets; on one of the host's own
    addresses it must be the port's only socket (the program leaves queries to a resolver of
    the gateway's at its address alone, so a socket there is another program's, and sharing
    its port would take its datagrams): EADDRINUSE then."""
    family = socket.AF_INET6 if ":" in dst[0] else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        send_only(sock)
        if not is_local(dst[0]):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(SOL_IPV6, socket.IPV6_V6ONLY, 1)
        set_transparent(sock)
        set_mark(sock, so_mark)
        sock.setblocking(False)
        sock.bind(dst)
    except BaseException:
        sock.close()
        raise
    return sock


class HijackListener:
    def __init__(self, answer: Answer, answer_now: AnswerNow | None = None, *, answer_soon: AnswerSoon | None = None,
                 so_mark: int = 0, guard_fd: int | None = None, max_pending: int = 4096) -> None:
        self.answer = answer
        self.answer_now = answer_now
        self.answer_soon = answer_soon  # the plain-miss path (module.fast), given each query's origin (asis)
        self.so_mark = so_mark
        self.guard_fd = guard_fd
        self.max_pending = max_pending
        self.port = 0
        self._udp: list[socket.socket] = []
        self._servers: list[asyncio.base_events.Server] = []
        self._replies: OrderedDict[tuple[str, int], socket.socket] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._tcp_conns = 0
        self._unbindable: set[tuple[str, int]] = set()
        self.queries = self.dropped = self.reply_failed = 0

    async def start(self, port: int, hosts: tuple[str, ...] = ("0.0.0.0", "::")) -> int:
        """Listen on `port` (0: any port free for UDP and TCP on every host, for tests)."""
        loop = asyncio.get_running_loop()
        for _attempt in range(20 if port == 0 else 1):
            udp = bind_pair(socket.SOCK_DGRAM, hosts, port, so_mark=self.so_mark, recv_orig_dst=True,
                            guard_fd=self.guard_fd)
            chosen = udp[0].getsockname()[1]
            try:
                tcp = bind_pair(socket.SOCK_STREAM, hosts, chosen, so_mark=self.so_mark, guard_fd=self.guard_fd)
                break
            except OSError:
                for s in udp:
                    s.close()
                if port:
                    raise
        else:
            raise OSError(f"no port free for both UDP and TCP on {', '.join(hosts)}")
        self._udp = udp
        for s in udp:
            loop.add_reader(s.fileno(), self._readable, s)
        for s in tcp:
            self._servers.append(await asyncio.start_server(self._tcp, sock=s, backlog=256))
        self.port = chosen
        log.info("dns hijack listening on port %d udp+tcp (%s)", chosen, ", ".join(hosts))
        return chosen

    # --- UDP ---------------------------------------------------------------------------------

    def _readable(self, sock: socket.socket) -> None:
        for _ in range(READ_BURST):
            try:
                data, anc, _flags, src = sock.recvmsg(65535, ANC_SIZE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.debug("dns hijack: receive failed: %s", exc)
                return
            dst = orig_dst(anc)
            if dst is None:  # not delivered by the program: no resolver to answer as
                self.dropped += 1
                continue
            self.dispatch(data, dst, (src[0], src[1]))

    def dispatch(self, data: bytes, dst: tuple[str, int], client: tuple[str, int]) -> None:
        """One datagram `client` sent to `dst`: a hit answered at once, a plain miss on the
        callback path (told the origin, for asis), anything else a task with ORIGIN set."""
        self.queries += 1
        now = self.answer_now
        if now is not None:
            try:
                reply = now(data)
            except Exception:  # noqa: BLE001 - the full path answers it, and logs
                reply = None
            if reply is not None:
                self._send(dst, client, reply)
                return
        soon = self.answer_soon
        if soon is not None:
            try:
                if soon(data, partial(self._send, dst, client), dst):
                    return
            except Exception:  # a bug there must not lose the query: the full path answers it
                log.exception("dns hijack: the fast path failed on a query from %s", client[0])
        if not spawn_bounded(self._tasks, self.max_pending, self._udp_query(data, dst, client)):
            self.dropped += 1

    async def _udp_query(self, data: bytes, dst: tuple[str, int], client: tuple[str, int]) -> None:
        ORIGIN.set(dst)  # this task's own context: asis asks the resolver the client asked
        try:
            reply = await self.answer(data, 0)
        except Exception:  # a bug answering one query must not stop the others (logged, so not BLE001)
            log.exception("dns hijack: failed to answer a UDP query from %s", client[0])
            return
        if reply is not None:
            self._send(dst, client, reply)

    def _send(self, dst: tuple[str, int], client: tuple[str, int], reply: bytes) -> None:
        """The answer to `client`, from `dst` (the address it asked); nothing once closed (a
        callback-path answer may come in while the module closes: no new reply socket then)."""
        if not self._udp:
            return
        sock = self._reply_socket(dst)
        if sock is None:
            self.reply_failed += 1
            return
        try:
            sock.sendto(reply, client)
        except OSError as exc:
            self.reply_failed += 1
            log.debug("dns hijack: reply to %s failed: %s", client[0], exc)

    def _reply_socket(self, dst: tuple[str, int]) -> socket.socket | None:
        sock = self._replies.get(dst)
        if sock is not None:
            self._replies.move_to_end(dst)
            return sock
        try:
            sock = reply_socket(dst, self.so_mark)
        except OSError as exc:
            if dst not in self._unbindable:  # once per address: a local resolver holds it, say
                self._unbindable.add(dst)
                log.warning("dns hijack: cannot answer as %s port %d (%s); its queries get no answer "
                            "(a must_direct rule for it lets them through)", dst[0], dst[1], exc)
            return None
        self._replies[dst] = sock
        while len(self._replies) > REPLY_SOCKETS:
            _, old = self._replies.popitem(last=False)
            old.close()
        return sock

    # --- TCP ---------------------------------------------------------------------------------

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._tcp_conns >= MAX_TCP_CONNECTIONS:
            writer.close()
            return
        local: Any = writer.get_extra_info("sockname")
        ORIGIN.set((str(local[0]), int(local[1])))  # the accepted socket is the resolver the client asked
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
        self._servers = []
        for s in self._replies.values():
            s.close()
        self._replies.clear()
