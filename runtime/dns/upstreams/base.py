"""What every DNS upstream shares: its manifest entry, the address resolved once at start, the
outbound its traffic takes, and one bounded `query`.

Each upstream is dialled through the routing decision for its own address (`Route`: given the
transport, "tcp" or "udp", and the address, it returns the outbound the routing rules pick), so
a proxied upstream goes through its group: TCP-based schemes through the group's `dial_tcp`, UDP
ones through its `open_udp`. Without a route everything goes direct from sockets carrying the
runtime's so_mark. A scheme module subclasses `Upstream` and implements `_exchange`.
"""
from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Generic, TypeVar

import dns.exception
import dns.inet
import dns.message

from dae_py.runtime.net.errors import OutboundError
from dae_py.runtime.proxy.base import Destination, DialOptions, Outbound
from dae_py.runtime.proxy.direct import DirectOutbound

log = logging.getLogger("dae.dns.upstream")

Route = Callable[[str, str, int], Outbound]  # (l4proto "tcp"/"udp", ip, port) -> the outbound to use


class UpstreamError(Exception):
    """The upstream gave no usable answer (timeout, refused, TLS, HTTP status, bad message)."""


def ca_file() -> str | None:
    """The CA bundle a test or an operator named (SSL_CERT_FILE, as OpenSSL reads it), for the
    TLS stacks that do not read that variable themselves (aioquic)."""
    return os.environ.get("SSL_CERT_FILE") or None


def checked_answer(q: dns.message.Message, wire: bytes, who: str, *, any_id: bool = False) -> dns.message.Message:
    """The answer in `wire` if it answers q (its id, unless the transport carries id 0, and its
    question); UpstreamError otherwise."""
    try:
        r = dns.message.from_wire(wire)
    except dns.exception.DNSException as exc:
        raise UpstreamError(f"{who}: malformed answer: {exc}") from exc
    if any_id:
        r.id = q.id
    if not q.is_response(r):
        raise UpstreamError(f"{who}: the answer does not match the query")
    if not any_id:
        r.raw = wire  # type: ignore[attr-defined]  # the answer as it came: the module may pass it on
    return r


C = TypeVar("C")


class SharedConnection(Generic[C]):
    """The one multiplexed connection of an upstream (DoH's HTTP/2, DoQ's and DoH3's QUIC):
    `get` returns it while `alive`, else one caller dials and the others wait for that dial
    (a failed dial fails them all, once)."""

    def __init__(self) -> None:
        self.conn: C | None = None
        self._connecting: asyncio.Future[C] | None = None

    async def get(self, alive: Callable[[C], bool], dial: Callable[[], Awaitable[C]]) -> C:
        c = self.conn
        if c is not None and alive(c):
            return c
        if self._connecting is not None:
            return await asyncio.shield(self._connecting)
        fut: asyncio.Future[C] = asyncio.get_running_loop().create_future()
        self._connecting = fut
        try:
            c = await dial()
            self.conn = c
            fut.set_result(c)
            return c
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            self._connecting = None


class Upstream:
    """One `dns.upstream` entry (name, scheme, host, port, path), usable after `resolve()`."""

    scheme: str = ""  # the class's scheme; an instance keeps the configured spelling
    default_port: ClassVar[int] = 53
    transports: ClassVar[tuple[str, ...]] = ("udp",)  # which routes it needs: "udp", "tcp"
    supported: ClassVar[bool] = True

    def __init__(self, name: str, scheme: str, host: str, port: int, path: str = "", so_mark: int = 0,
                 timeout: float = 2.0, route: Route | None = None) -> None:
        self.name = name
        self.scheme = scheme
        self.host = host
        self.port = port or self.default_port
        self.path = path
        self.so_mark = so_mark
        self.timeout = timeout
        self.route = route
        self.address: str | None = None  # host resolved at start
        self.outbounds: dict[str, Outbound] = {}  # "tcp"/"udp" -> the outbound the routing chose
        self.queries = self.errors = 0
        self.answered = 0  # queries answered, and the seconds they took in total (for /metrics)
        self.answer_seconds = 0.0

    @property
    def dest(self) -> Destination:
        assert self.address is not None
        return Destination(self.address, self.port)

    @property
    def family(self) -> int:
        return socket.AF_INET6 if self.address is not None and ":" in self.address else socket.AF_INET

    def ssl_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    async def resolve(self) -> None:
        """Resolve the host once (an IP literal is used as is) and route each transport's
        traffic; on failure the upstream stays unusable and its queries are answered SERVFAIL."""
        if dns.inet.is_address(self.host):
            self.address = self.host
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                self.address = str(infos[0][4][0])
            except OSError as exc:
                log.error("dns upstream %s: cannot resolve %s: %s", self.name, self.host, exc)
                return
        direct = DirectOutbound(DialOptions(so_mark=self.so_mark, connect_timeout=self.timeout,
                                            handshake_timeout=self.timeout))
        for l4 in self.transports:
            try:
                self.outbounds[l4] = self.route(l4, self.address, self.port) if self.route is not None else direct
            except ValueError as exc:
                log.error("dns upstream %s: %s; its queries are answered SERVFAIL", self.name, exc)
                self.address = None
                return
        via = ", ".join(f"{l4} via {o.name}" for l4, o in self.outbounds.items())
        log.info("dns upstream %s: %s://%s:%d%s (%s)", self.name, self.scheme, self.address, self.port,
                 f" ({self.host})" if self.address != self.host else "", via)

    async def query(self, q: dns.message.Message) -> dns.message.Message:
        """q's answer from this upstream, within self.timeout; UpstreamError otherwise."""
        if not self.supported:
            raise UpstreamError(f"{self.scheme}:// is not supported")
        if self.address is None:
            raise UpstreamError(f"upstream {self.name} has no address")
        self.queries += 1
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.timeout):
                answer = await self._exchange(q)
            self.answered += 1
            self.answer_seconds += time.perf_counter() - started
            return answer
        except UpstreamError:
            self.errors += 1
            raise
        except TimeoutError as exc:
            self.errors += 1
            raise UpstreamError(f"{self.name}: no answer within {self.timeout:g}s") from exc
        except (OSError, OutboundError, ssl.SSLError, dns.exception.DNSException, ValueError, EOFError) as exc:
            self.errors += 1
            raise UpstreamError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    async def _exchange(self, q: dns.message.Message) -> dns.message.Message:
        raise NotImplementedError

    async def close(self) -> None:
        """Close pooled sockets and connections."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "scheme": self.scheme, "address": self.address, "port": self.port,
                "via": {l4: o.name for l4, o in self.outbounds.items()}}
