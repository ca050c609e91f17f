"""Upstream DNS transports; every socket carries the runtime's so_mark.

dnspython does the messages and, for udp/tcp/tls, the exchange (`dns.asyncquery`) through
`MarkedBackend`, its asyncio backend with SO_MARK set before connect. DoH is an HTTP/2 POST
(RFC 8484) with httpx2 (the HTTP client dnspython itself uses), whose transport sets SO_MARK
through `socket_options`; the body is the message as dnspython renders it.

Hostnames are resolved once at start (`Upstream.resolve`), as dae does; each query then goes
to that address. Every exchange is bounded by `timeout`; failures raise UpstreamError.
"""
from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import dns.asyncquery
import dns.exception
import dns.flags
import dns.inet
import dns.message
from dns import _asyncio_backend  # the backend classes dnspython's own asyncio queries use

from dae_py.contract.manifest import DnsUpstream
from dae_py.runtime.net.sockets import set_mark

log = logging.getLogger("dae.dns.upstream")


class UpstreamError(Exception):
    """The upstream gave no usable answer (timeout, refused, TLS, HTTP status, bad message)."""


class MarkedBackend(_asyncio_backend.Backend):
    """dnspython's asyncio backend, with SO_MARK on every socket it makes (so the gateway's
    program never captures the module's own queries)."""

    def __init__(self, so_mark: int) -> None:
        super().__init__()
        self.so_mark = so_mark

    async def make_socket(self, af: int, socktype: int, proto: int = 0, source: Any = None,
                          destination: Any = None, timeout: float | None = None,
                          ssl_context: ssl.SSLContext | None = None, server_hostname: str | None = None) -> Any:
        loop = asyncio.get_running_loop()
        sock = socket.socket(af, socktype, proto)
        try:
            set_mark(sock, self.so_mark)
            sock.setblocking(False)
            if source is not None:
                sock.bind(source)
            if socktype == socket.SOCK_DGRAM:
                if destination is not None:
                    sock.connect(destination)
                transport, protocol = await loop.create_datagram_endpoint(
                    _asyncio_backend._DatagramProtocol, sock=sock)
                return _asyncio_backend._DatagramSocket(af, transport, protocol)
            await asyncio.wait_for(loop.sock_connect(sock, destination), timeout)
            r, w = await asyncio.wait_for(asyncio.open_connection(
                sock=sock, ssl=ssl_context, server_hostname=server_hostname if ssl_context else None), timeout)
            return _asyncio_backend._StreamSocket(af, r, w)
        except BaseException:
            sock.close()
            raise


@dataclass
class Upstream:
    """One `dns.upstream` entry of the manifest (name, scheme, host, port, path)."""

    name: str
    scheme: str
    host: str
    port: int
    path: str = ""
    so_mark: int = 0
    timeout: float = 2.0
    address: str | None = None  # host resolved at start
    _backend: MarkedBackend | None = field(default=None, repr=False)
    _http: Any = field(default=None, repr=False)
    _ssl: ssl.SSLContext | None = field(default=None, repr=False)

    @classmethod
    def from_manifest(cls, raw: DnsUpstream | Mapping[str, Any], so_mark: int, timeout: float) -> Upstream:
        spec = raw if isinstance(raw, DnsUpstream) else DnsUpstream.from_json(raw)
        return cls(name=spec.name, scheme=spec.scheme, host=spec.host, port=spec.port, path=spec.path,
                   so_mark=so_mark, timeout=timeout)

    @property
    def supported(self) -> bool:
        return self.scheme in ("udp", "tcp", "tcp+udp", "tls", "https")

    async def resolve(self) -> None:
        """Resolve the host once (an IP literal is used as is); on failure the upstream stays
        unusable and its queries are answered SERVFAIL."""
        self._backend = MarkedBackend(self.so_mark)
        if dns.inet.is_address(self.host):
            self.address = self.host
        else:
            try:
                infos = await asyncio.get_running_loop().getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
                self.address = str(infos[0][4][0])
            except OSError as exc:
                log.error("dns upstream %s: cannot resolve %s: %s", self.name, self.host, exc)
                return
        if self.scheme in ("tls", "https"):
            self._ssl = ssl.create_default_context()
            if self.scheme == "https":
                self._ssl.set_alpn_protocols(["h2", "http/1.1"])
        log.info("dns upstream %s: %s://%s:%d%s", self.name, self.scheme, self.address, self.port,
                 f" ({self.host})" if self.address != self.host else "")

    async def query(self, q: dns.message.Message) -> dns.message.Message:
        """q's answer from this upstream, within self.timeout; UpstreamError otherwise."""
        if not self.supported:
            raise UpstreamError(f"{self.scheme}:// is not supported")
        if self.address is None or self._backend is None:
            raise UpstreamError(f"upstream {self.name} has no address")
        try:
            return await asyncio.wait_for(self._exchange(q), self.timeout)
        except (TimeoutError, dns.exception.Timeout) as exc:
            raise UpstreamError(f"{self.name}: no answer within {self.timeout:g}s") from exc
        except (OSError, ssl.SSLError, dns.exception.DNSException, ValueError, EOFError) as exc:
            raise UpstreamError(f"{self.name}: {type(exc).__name__}: {exc}") from exc

    async def _exchange(self, q: dns.message.Message) -> dns.message.Message:
        addr, b, t = self.address, self._backend, self.timeout
        assert addr is not None
        if self.scheme in ("udp", "tcp+udp"):
            try:
                r = await dns.asyncquery.udp(q, addr, timeout=t, port=self.port, backend=b,
                                             ignore_unexpected=True)
            except (TimeoutError, dns.exception.Timeout, OSError, dns.exception.DNSException):
                if self.scheme == "udp":
                    raise
                r = None  # tcp+udp: any UDP failure is retried over TCP
            if r is not None and not r.flags & dns.flags.TC:
                return r
            log.debug("dns upstream %s: %s, retrying over TCP", self.name, "truncated" if r else "UDP failed")
        if self.scheme in ("udp", "tcp", "tcp+udp"):
            return await dns.asyncquery.tcp(q, addr, timeout=t, port=self.port, backend=b)
        if self.scheme == "tls":
            return await dns.asyncquery.tls(q, addr, timeout=t, port=self.port, backend=b, ssl_context=self._ssl,
                                            server_hostname=self.host)
        return await self._https(q)

    async def _https(self, q: dns.message.Message) -> dns.message.Message:
        import httpx2

        if self._http is None:
            transport = httpx2.AsyncHTTPTransport(
                http2=True, verify=self._ssl or True,
                socket_options=[(socket.SOL_SOCKET, getattr(socket, "SO_MARK", 36), self.so_mark)]
                if self.so_mark else None)
            self._http = httpx2.AsyncClient(http2=True, transport=transport, timeout=self.timeout)
        host = f"[{self.address}]" if ":" in str(self.address) else self.address
        resp = await self._http.post(
            f"https://{host}:{self.port}{self.path or '/dns-query'}", content=q.to_wire(),
            headers={"accept": "application/dns-message", "content-type": "application/dns-message",
                     "host": self.host if self.port == 443 else f"{self.host}:{self.port}"},
            extensions={"sni_hostname": self.host})
        if not 200 <= resp.status_code < 300:
            raise UpstreamError(f"{self.name}: HTTP status {resp.status_code}")
        r = dns.message.from_wire(resp.content)
        if not q.is_response(r):
            raise UpstreamError(f"{self.name}: the answer does not match the query")
        return r

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
