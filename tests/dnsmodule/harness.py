"""The DNS module's in-process test set-up, shared by the test files of tests/dnsmodule (and
the controller's metrics test): the zone, a config through the real compiler, a module on
loopback, ways to ask it (`ask` on the general path; a UDP client of its dns.bind listener;
`HijackTap`, the hijack listener's dispatch with each answer caught as it leaves), and the
upstreams to ask (fakes.FakeUpstream, a zone server; `RawUpstream`, driven by hand)."""
from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import dns.message
import dns.rrset

from dae_py.compiler.pipeline import compile_config
from dae_py.contract.domains import DomainMatcher
from dae_py.runtime.dns import DnsModule
from dae_py.runtime.dns.hijack import HijackListener
from dae_py.runtime.dns.upstreams.udp import POOL_SIZE

from .fakes import FakeUpstream, RecordingBindings, Zone

ZONE = Zone({
    "a.proxied.test.": [("A", 60, "10.232.1.1"), ("AAAA", 60, "fd00:232::1")],
    "www.proxied.test.": [("CNAME", 60, "edge.cdn.test.")],
    "edge.cdn.test.": [("A", 30, "10.232.1.2")],
    "cdn.direct.test.": [("CNAME", 60, "x.proxied.test.")],
    "x.proxied.test.": [("A", 60, "10.232.1.3")],
    "b.direct.test.": [("A", 5, "10.232.2.1")],
    "bad.test.": [("A", 60, "10.99.0.1")],
    "fixed.test.": [("A", 600, "10.232.3.1")],
})


def config(ports: dict[str, tuple[str, int]], *, request: Sequence[str] = (), response: Sequence[str] = (),
           req_fallback: str = "main", extra: str = "") -> str:
    ups = "\n".join(f"    {n}: '{scheme}://127.0.0.1:{p}'" for n, (scheme, p) in ports.items())
    req = "\n".join(f'        - "{r}"' for r in request)
    resp = "\n".join(f'        - "{r}"' for r in response)
    return f"""\
global:
  lan_interface: [lo]
dns:
  bind: '127.0.0.1:53'
{extra}  upstream:
{ups}
  routing:
    request:
      rules:
{req or '        []'}
      fallback: {req_fallback}
    response:
      rules:
{resp or '        []'}
      fallback: accept
routing:
  rules:
    - "domain(suffix: proxied.test) -> direct(mark: 1)"
    - "domain(full: b.direct.test) -> direct(mark: 2)"
  fallback: direct
""".replace("      rules:\n        []", "      rules: []")


async def with_module(text: str, body: Callable[[DnsModule, RecordingBindings], Awaitable[Any]]) -> Any:
    checked = compile_config(None, None, text=text)
    bindings = RecordingBindings()
    mod = DnsModule(checked.dns, bindings, DomainMatcher.from_sets(checked.ir.domain_sets).bits, so_mark=0,
                    upstream_timeout=0.5, deadline=1.5)
    await mod.open([("127.0.0.1", 0)])
    try:
        return await body(mod, bindings)
    finally:
        await mod.close()


async def ask(mod: DnsModule, name: str, rdtype: str = "A", **kw: Any) -> dns.message.Message:
    q = dns.message.make_query(name, rdtype, **kw)
    wire = await mod.answer(q.to_wire(), 0)
    assert wire is not None
    r = dns.message.from_wire(wire)
    assert r.id == q.id
    return r


def addresses(r: dns.message.Message) -> list[str]:
    return [rd.address for rrset in r.answer if rrset.rdtype in (1, 28) for rd in rrset]


def replied(wire: bytes | None) -> bytes:
    """The module's answer, which must be there (None means it dropped the query)."""
    assert wire is not None, "the module dropped the query"
    return wire


def run(coro_fn: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return asyncio.run(coro_fn())


def plain(name: str, rdtype: str = "A") -> dns.message.Message:
    """A query the callback paths take: one question, no EDNS."""
    return dns.message.make_query(name, rdtype, use_edns=False)


# --- upstreams -------------------------------------------------------------------------------


class RawUpstream:
    """A UDP 'upstream' the test drives by hand: it receives the module's queries and answers
    only what the test tells it to. With `tcp`, a TCP listener on the same port that accepts
    (the kernel does) and never answers."""

    def __init__(self, *, tcp: bool = False) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.tcp: socket.socket | None = None
        if tcp:
            self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self.tcp.setblocking(False)
            self.tcp.bind(("127.0.0.1", self.port))
            self.tcp.listen(8)

    async def start(self) -> RawUpstream:
        return self

    async def query(self) -> tuple[dns.message.Message, Any]:
        data, addr = await asyncio.wait_for(asyncio.get_running_loop().sock_recvfrom(self.sock, 4096), 3)
        return dns.message.from_wire(data), addr

    def answer(self, q: dns.message.Message, addr: Any, ip: str, *, qid: int | None = None) -> None:
        r = dns.message.make_response(q)
        r.answer.append(dns.rrset.from_text(q.question[0].name, 60, "IN", "A", ip))
        if qid is not None:
            r.id = qid
        self.sock.sendto(r.to_wire(), addr)

    def tcp_connections(self) -> int:
        """Connections made to the TCP listener so far (accepted now, and closed)."""
        n = 0
        while self.tcp is not None:
            try:
                conn, _ = self.tcp.accept()
            except BlockingIOError:
                break
            conn.close()
            n += 1
        return n

    async def close(self) -> None:
        self.sock.close()
        if self.tcp is not None:
            self.tcp.close()


U = TypeVar("U", FakeUpstream, RawUpstream)


def with_upstreams(body: Callable[..., Awaitable[Any]], specs: dict[str, tuple[str, Zone, dict[str, Any]]],
                   **config_kw: Any) -> None:
    """Run body(module, bindings, {name: FakeUpstream}) with one FakeUpstream per spec
    (name -> (scheme, zone, FakeUpstream options)) as the config's upstreams."""
    async def main() -> None:
        ups: dict[str, FakeUpstream] = {}
        try:
            for name, (_scheme, zone, kw) in specs.items():
                ups[name] = await FakeUpstream(zone, **kw).start()
            text = config({n: (specs[n][0], u.port) for n, u in ups.items()}, **config_kw)
            await with_module(text, lambda m, b: body(m, b, ups))
        finally:
            for u in ups.values():
                await u.close()
    asyncio.run(main())


def one_upstream(body: Callable[[DnsModule, RecordingBindings, FakeUpstream], Awaitable[Any]], *,
                 scheme: str = "udp", upstream_kw: dict[str, Any] | None = None, **config_kw: Any) -> None:
    """Run body(module, bindings, upstream) against one FakeUpstream of ZONE named 'main'."""
    with_upstreams(lambda m, b, ups: body(m, b, ups["main"]), {"main": (scheme, ZONE, upstream_kw or {})},
                   **config_kw)


# --- a UDP client of the dns.bind listener ---------------------------------------------------


def client(addr: tuple[str, int]) -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setblocking(False)
    s.connect(addr)
    return s


async def recv(s: socket.socket, timeout: float = 3.0) -> dns.message.Message:
    return dns.message.from_wire(await asyncio.wait_for(asyncio.get_running_loop().sock_recv(s, 4096), timeout))


def over_udp(body: Callable[[DnsModule, RecordingBindings, socket.socket, U], Awaitable[Any]],
             upstream: Callable[[], U], *, scheme: str = "udp", **config_kw: Any) -> None:
    """Run body(module, bindings, client, upstream): the module with `upstream()` as its
    upstream 'main', asked by a UDP client of its dns.bind listener; all closed after."""
    async def main() -> None:
        up = await upstream().start()
        try:
            async def inner(mod: DnsModule, b: RecordingBindings) -> None:
                s = client(mod.listener.addresses[0])
                try:
                    await body(mod, b, s, up)
                finally:
                    s.close()
            await with_module(config({"main": (scheme, up.port)}, **config_kw), inner)
        finally:
            await up.close()
    run(main)


async def warm(s: socket.socket, up: RawUpstream) -> None:
    """Open every association of the pool (the general path does that; the fast path then has
    one ready for each query)."""
    for i in range(POOL_SIZE):
        s.send(plain(f"warm{i}.test").to_wire())
        q, addr = await up.query()
        up.answer(q, addr, "10.0.0.9")
        await recv(s)


# --- hijacked queries ------------------------------------------------------------------------


@dataclass(frozen=True)
class Sent:
    """One answer as it left: from which address, in a task or a callback, and what was bound
    at that moment."""

    origin: tuple[str, int]
    answer: dns.message.Message
    in_task: bool
    bound: dict[Any, int]


class HijackTap(HijackListener):
    """The hijack listener's own dispatch (`HijackListener.dispatch`: cache hit, callback path
    with the origin, else a task with ORIGIN set) for datagrams the test hands it, as if the
    program had delivered them to `origin`; each answer is caught where it would leave from a
    transparent socket bound to the origin (those need the lab)."""

    def __init__(self, mod: DnsModule, bindings: RecordingBindings) -> None:
        super().__init__(mod.answer, mod.answer_now, answer_soon=mod.fast.take)
        self.bindings = bindings
        self.sent: asyncio.Queue[Sent] = asyncio.Queue()

    def _send(self, dst: tuple[str, int], client: tuple[str, int], reply: bytes) -> None:
        self.sent.put_nowait(Sent(dst, dns.message.from_wire(reply), asyncio.current_task() is not None,
                                  dict(self.bindings.entries)))

    def ask(self, q: dns.message.Message, origin: tuple[str, int]) -> None:
        self.dispatch(q.to_wire(), origin, ("127.0.0.2", 40000))

    async def answer_to(self, q: dns.message.Message, timeout: float = 3.0) -> Sent:
        got = await asyncio.wait_for(self.sent.get(), timeout)
        assert got.answer.id == q.id
        return got

    async def warm(self, origin: tuple[str, int], up: RawUpstream | None = None) -> None:
        """Make the origin's asis upstream and open its pool (general-path queries do both);
        `up`: a RawUpstream to answer them by hand (else the upstream answers itself)."""
        for i in range(POOL_SIZE):
            q = plain(f"warm{i}.test")
            self.ask(q, origin)
            if up is not None:
                uq, addr = await up.query()
                up.answer(uq, addr, "10.0.0.9")
            got = await self.answer_to(q)
            assert got.in_task  # the first queries to a resolver take the general path


def hijacked(body: Callable[[DnsModule, RecordingBindings, HijackTap, U], Awaitable[Any]],
             upstream: Callable[[], U], **config_kw: Any) -> None:
    """Run body(module, bindings, tap, upstream): a module whose request routing falls back to
    `asis`, asked through a HijackTap; the queries' origin is `upstream`'s address, so `asis`
    asks it. (The config's named upstream points there too, unused but for the compiler.)"""
    async def main() -> None:
        up = await upstream().start()
        try:
            async def inner(mod: DnsModule, b: RecordingBindings) -> None:
                tap = HijackTap(mod, b)
                try:
                    await body(mod, b, tap, up)
                finally:
                    await tap.close()
            await with_module(config({"main": ("udp", up.port)}, req_fallback="asis", **config_kw), inner)
        finally:
            await up.close()
    run(main)
