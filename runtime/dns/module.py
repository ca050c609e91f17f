"""The DNS module: one query from the wire to the answer, binding before answering.

    wire -> parse (FORMERR on a bad message) -> request routing -> reject | cache hit |
    in-flight join | upstream (response routing: accept | reject | re-query) -> cache ->
    bind the answer's addresses -> the client's answer

Every step that waits is bounded: an upstream exchange by UPSTREAM_TIMEOUT, the whole answer by
ANSWER_DEADLINE, after which the client gets SERVFAIL (never left to time out). `asis` means the
server the client asked; a client of `dns.bind` asked us, so it has none: SERVFAIL, and the
compiler warns about such a config.
"""
from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Mapping
from typing import Any, cast

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from dae_py.contract.manifest import DnsSettings

from .asis import ORIGIN, AsisUpstreams, Origin
from .binder import Binder, answer_addresses
from .cache import STALE_ANSWER_TTL, Cache, Key, key_of
from .fastmiss import FastMiss, ModuleView
from .listener import DnsListener
from .rules import Query, RuleList, qname_matcher
from .upstreams import Route, Upstream, UpstreamError
from .upstreams import make as make_upstream

log = logging.getLogger("dae.dns")

UPSTREAM_TIMEOUT = 2.0
ANSWER_DEADLINE = 4.0  # below the 5 s a stub resolver waits before it retries
MAX_REQUERIES = 3
UDP_DEFAULT_PAYLOAD = 512
UPSTREAM_PAYLOAD = 1232
SWEEP_INTERVAL = 5.0
# An upstream query's header (id patched per send, RD set, one question, an OPT record or none)
# and its OPT record: payload 1232, no extended rcode, version 0, no flags, no options.
QUERY_HEADER = {False: b"\0\0\x01\x00\0\x01\0\0\0\0\0\0", True: b"\0\0\x01\x00\0\x01\0\0\0\0\0\x01"}
OPT_1232 = b"\0\0\x29" + UPSTREAM_PAYLOAD.to_bytes(2, "big") + bytes(6)


def formerr_for(wire: bytes) -> bytes | None:
    """FORMERR for a message we cannot use, if its header is readable and it is a query."""
    if len(wire) < 12 or wire[2] & 0x80:  # too short for a header, or QR set (a response)
        return None
    m = dns.message.Message(id=struct.unpack_from("!H", wire)[0])
    m.flags = dns.flags.QR | dns.flags.RA
    m.set_rcode(dns.rcode.FORMERR)
    return m.to_wire()


def plain_query(wire: bytes) -> dns.message.Message | None:
    """The query of a header and exactly one question (answer_now checked the header), built
    from dnspython's name parser without its message reader: what `from_wire(question_only=
    True)` returns for it, at about half the cost (the reader's set-up and section machinery
    are most of a parse this small; measured in bench/RESULTS.md, issue 10 second slice).
    None when anything follows the question (the reader decides those)."""
    name, used = dns.name.from_wire(wire, 12)
    end = 12 + used
    if len(wire) != end + 4:
        return None
    qid, flags = struct.unpack_from("!HH", wire)
    rdtype, rdclass = struct.unpack_from("!HH", wire, end)
    q = dns.message.QueryMessage(id=qid)
    q.flags = dns.flags.Flag(flags)
    q.wire = wire
    q.find_rrset(q.question, name, dns.rdataclass.RdataClass.make(rdclass), dns.rdatatype.RdataType.make(rdtype),
                 create=True, force_unique=True)
    return q


def empty_answer(q: dns.message.Message, rcode: dns.rcode.Rcode = dns.rcode.NOERROR) -> dns.message.Message:
    """dae's `reject`: NOERROR, RA, nothing in the answer section (also used for SERVFAIL)."""
    r = dns.message.make_response(q, recursion_available=True)
    r.set_rcode(rcode)
    return r


class DnsModule:
    def __init__(self, manifest_dns: DnsSettings | Mapping[str, Any], bindings: Any, bits_of: Any, so_mark: int,
                 upstream_timeout: float = UPSTREAM_TIMEOUT, deadline: float = ANSWER_DEADLINE,
                 route: Route | None = None) -> None:
        """`manifest_dns`: the manifest's typed DNS settings (a JSON dict is read through them).
        `route`: the outbound for an upstream's address (None: every upstream direct)."""
        cfg = manifest_dns if isinstance(manifest_dns, DnsSettings) else DnsSettings.from_json(manifest_dns)
        self.upstreams = {name: make_upstream(u, so_mark, upstream_timeout, route)
                          for name, u in cfg.upstream.items()}
        self.request = RuleList.from_manifest(cfg.request, "asis")
        self.response = RuleList.from_manifest(cfg.response, "accept")
        self.qname_bits = qname_matcher(cfg.domain_sets)
        self.cache = Cache(cfg.max_cache_size, dict(cfg.fixed_domain_ttl))
        self.prefer = cfg.ipversion_prefer
        self.optimistic = cfg.optimistic_cache  # serve an expired answer at once, refresh it behind
        self._refreshing: set[asyncio.Task[dns.message.Message]] = set()
        self.binder = Binder(bindings, bits_of)
        self.deadline = deadline
        self.binds = [(b.host, b.port) for b in cfg.bind]
        self.asis = AsisUpstreams(so_mark, upstream_timeout)  # hijacked queries' own resolvers
        self.hijack: Any = None  # the HijackListener, when the build hijacks LAN DNS (hijack.py)
        self._sweeper: asyncio.Task[None] | None = None
        self._plain: dict[bytes, tuple[str, int, int]] = {}  # answer_now's question bytes -> cache key
        self._parsed: dict[bytes, dns.message.Message] = {}  # misses answer_now parsed, for `answer`
        self.answered = self.failed = self.rejected = 0
        self.fast = FastMiss(self._fast_view())  # plain UDP misses, answered on callbacks (fastmiss.py)
        self.listener = DnsListener(self.answer, self.answer_now, answer_soon=self.fast.take)

    @classmethod
    async def start(cls, build: Any, bindings: Any, so_mark: int, guard_fd: int | None = None,
                    relay: Any = None) -> DnsModule | None:
        """The module of a build, listening on dns.bind and on the hijack port; None (and a
        warning) when the build has neither (no dns section). `relay`: the gateway's relay, whose
        router and outbounds carry each upstream's traffic."""
        cfg = build.manifest.dns
        if not cfg.bind and not cfg.hijack_port:
            if build.manifest.rules and getattr(build, "domain_words", 0) and bindings is not None:
                log.warning("no dns section: domain() rules will not match (nothing binds names to addresses)")
            return None
        bits_of = build.domain_matcher.bits if bindings is not None else (lambda name: 0)
        route = None
        if relay is not None:
            from .upstreams.route import routed

            route = routed(relay.tcp.router, relay.tcp.outbounds)
        mod = cls(cfg, bindings, bits_of, so_mark, route=route)
        await mod.open()
        if cfg.hijack_port:
            from .hijack import HijackListener

            mod.hijack = HijackListener(mod.answer, mod.answer_now, answer_soon=mod.fast.take, so_mark=so_mark,
                                        guard_fd=guard_fd)
            try:
                await mod.hijack.start(cfg.hijack_port)
            except BaseException:
                await mod.close()
                raise
        return mod

    async def open(self, binds: list[tuple[str, int]] | None = None) -> None:
        for up in self.upstreams.values():
            await up.resolve()
            if not up.supported:
                log.warning("dns upstream %s: %s:// is not supported; its queries are answered SERVFAIL",
                            up.name, up.scheme)
        await self.listener.start(binds if binds is not None else self.binds)
        if self.binder.bindings is not None:
            self._sweeper = asyncio.get_running_loop().create_task(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            try:
                self.binder.sweep()
            except OSError as exc:  # a map write failed: try again next round
                log.warning("dns: expiring bindings failed: %s", exc)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        if self.hijack is not None:
            await self.hijack.close()
        for t in list(self._refreshing):
            t.cancel()
        await self.listener.close()
        await self.fast.close()
        for up in self.upstreams.values():
            await up.close()
        await self.asis.close()
        log.info("dns: %d answered, %d SERVFAIL, %d rejected; cache %d entries (%d hits, %d misses, "
                 "%d joined in flight); %d addresses bound", self.answered, self.failed, self.rejected,
                 len(self.cache), self.cache.hits, self.cache.misses, self.cache.deduplicated, len(self.binder))

    # --- the callback miss path's view of the module (fastmiss.py) -----------------------------

    def _fast_view(self) -> ModuleView:
        return ModuleView(parsed=self._parsed, cache=self.cache, deadline=self.deadline,
                          general_only=self._general_only, decide=self._decide, upstream=self._upstream_for,
                          upstream_query=self._upstream_query, routed=self._routed, store=self._store,
                          fetch=self._fetch, rejected=self._rejected_wire, answered=self._answered_wire,
                          failed=self._failed_wire)

    def _general_only(self, key: Key) -> bool:
        """Does an option answer this question another way (ipversion_prefer's empty answer,
        optimistic_cache's stale one)? Then only the general path answers it."""
        return self._preferred_away(key) or bool(self.optimistic and self.cache.stale(key) is not None)

    def _decide(self, key: Key) -> tuple[str, int]:
        """Request routing of a question: (its target, the qname's domain bits)."""
        bits = self.qname_bits(key[0])
        target, _rule = self.request.decide(Query(key[0], key[1], bits))
        return target, bits

    def _upstream_for(self, target: str, origin: Origin | None) -> Upstream | None:
        """The upstream a target names, without waiting: `asis` is the origin's, if the general
        path made it already (None for a dns.bind client, which has no origin)."""
        if target == "asis":
            return self.asis.ready(origin) if origin is not None else None
        return self.upstreams.get(target)

    def _rejected_wire(self, q: dns.message.Message) -> bytes:
        self.rejected += 1
        return self._render(q, empty_answer(q), 0)

    def _answered_wire(self, q: dns.message.Message, wire: bytes, r: dns.message.Message) -> bytes:
        """r as the UDP answer to the client's query `wire` (passed on as it came when it can be)."""
        self.answered += 1
        return self._passed_on(q, wire, r, 0) or self._render(q, self._shaped(q, r), 0)

    def _failed_wire(self, q: dns.message.Message, exc: Exception) -> bytes:
        return self._render(q, self._failed(q, exc), 0)

    # --- one query ---------------------------------------------------------------------------

    async def answer(self, wire: bytes, max_size: int) -> bytes | None:
        """The wire answer to one query (max_size 0: UDP, the client's EDNS payload), or None
        to send nothing."""
        q = self._parsed.pop(wire, None)  # answer_now's parse of a plain query that missed
        if q is None:
            try:
                q = dns.message.from_wire(wire)
            except Exception:  # noqa: BLE001 - any malformed input: dnspython raises many kinds
                return formerr_for(wire)
        if q.flags & dns.flags.QR:
            return None
        if q.opcode() != dns.opcode.QUERY:
            r = empty_answer(q, dns.rcode.NOTIMP)
        elif len(q.question) != 1:
            r = empty_answer(q, dns.rcode.FORMERR)
        else:
            hit = self._wire_hit(q, wire, max_size)
            if hit is not None:
                return hit
            try:
                async with asyncio.timeout(self.deadline):  # no extra task, unlike wait_for
                    got = await self.resolve(q, wire, max_size)
                if isinstance(got, bytes):
                    return got
                r = got
            except (TimeoutError, UpstreamError) as exc:
                r = self._failed(q, exc)
        return self._render(q, r, max_size)

    def _failed(self, q: dns.message.Message, exc: Exception) -> dns.message.Message:
        """The answer when the upstreams failed: stale from the cache (RFC 8767: a stale answer
        beats SERVFAIL), else SERVFAIL."""
        stale = self.cache.stale_answer_for(q)
        if stale is not None:
            log.info("dns: %s: upstream failed (%s), answered from the expired cache",
                     q.question[0].name, str(exc) or "deadline passed")
            return stale
        self.failed += 1
        log.warning("dns: %s %s: SERVFAIL (%s)", q.question[0].name,
                    dns.rdatatype.to_text(q.question[0].rdtype), str(exc) or "deadline passed")
        return empty_answer(q, dns.rcode.SERVFAIL)

    @staticmethod
    def _render(q: dns.message.Message, r: dns.message.Message, max_size: int) -> bytes:
        """r as wire within max_size (0: UDP, the client's EDNS payload); truncated (TC) when
        it does not fit (RFC 1035 4.2.1: the client retries over TCP)."""
        if not max_size:
            max_size = max(UDP_DEFAULT_PAYLOAD, q.payload if q.edns >= 0 else 0)
        try:
            return r.to_wire(max_size=max_size)
        except dns.exception.TooBig:
            t = empty_answer(q)
            t.set_rcode(r.rcode())
            t.flags |= dns.flags.TC
            return t.to_wire()

    def answer_now(self, wire: bytes) -> bytes | None:
        """A cache hit answered inside the datagram callback, without a task: a plain query (one
        question, no EDNS, QR clear; header counts read first so nothing else is parsed) whose
        answer is cached and fits 512 bytes. Anything else returns None and takes `answer`."""
        if len(wire) < 17 or wire[2] & 0xF8 or wire[4:6] != b"\0\1" or wire[6:12] != bytes(6):
            return None  # not QUERY with QR clear, or not exactly one question and nothing else
        # The question's bytes, name case-folded (label lengths are < 0x40, never letters; type
        # and class are not folded), name a cache key once a parsed query of them was answered.
        # A client that writes names in lower case (most do) finds its key without folding.
        qb = wire[12:]
        key = self._plain.get(qb)
        if key is None:
            qb = wire[12:-4].lower() + wire[-4:]
            key = self._plain.get(qb)
        if key is not None and not (self.prefer and self._preferred_away(key)):
            hit = self.cache.plain_hit(key, wire)
            if hit is not None:
                out, e, now = hit
                sec = int(now)
                if e.checked != sec:  # its bindings checked (and restored) at most once a second
                    e.checked = sec
                    self.binder.refresh(e.addrs, e.bits, int(e.expires - now))
                self.answered += 1
                return out
        try:
            q = plain_query(wire) or dns.message.from_wire(wire, question_only=True)
        except Exception:  # noqa: BLE001 - `answer` parses it again and says FORMERR
            return None
        parsed = self._wire_hit(q, wire, UDP_DEFAULT_PAYLOAD)
        if parsed is None:  # a miss: the task that answers it need not parse it again
            if len(self._parsed) >= 4096:
                self._parsed.clear()
            self._parsed[wire] = q
        # to_wire() without a file returns the bytes (None only when it writes to a file)
        if parsed is not None and len(wire) == 12 + len(cast(bytes, q.question[0].name.to_wire())) + 4:
            if len(self._plain) >= 2 * max(self.cache.max_size, 1):
                self._plain.clear()  # keys of evicted entries: start over
            self._plain[qb] = key_of(q)
        return parsed

    def _wire_hit(self, q: dns.message.Message, wire: bytes, max_size: int) -> bytes | None:
        """The hot path: a cached answer as bytes (its bindings checked first), or None."""
        if self._preferred_away(key_of(q)):
            return None
        if not max_size:
            max_size = max(UDP_DEFAULT_PAYLOAD, q.payload if q.edns >= 0 else 0)
        key = key_of(q)
        e = self.cache.entry(key)
        if e is None:
            return None
        out = self.cache.wire_hit(q, wire, max_size)
        if out is not None:
            self.binder.refresh(e.addrs, e.bits, int(e.expires - self.cache.clock()))
            self.answered += 1
        return out

    async def resolve(self, q: dns.message.Message, wire: bytes | None = None,
                      max_size: int = 0) -> dns.message.Message | bytes:
        """The answer to q; as bytes when it is the upstream's own answer to q's question bytes
        (`wire`), unchanged but for the id (no rendering on a cache miss)."""
        question = q.question[0]
        key = key_of(q)
        name = key[0]  # the name as text, lower case (domain matching ignores case anyway)
        bits = self.qname_bits(name)
        target, _rule = self.request.decide(Query(name, int(question.rdtype), bits))
        if target == "reject":
            self.rejected += 1
            return empty_answer(q)
        if target == "asis" and ORIGIN.get() is None:
            raise UpstreamError("request routing chose 'asis', but a dns.bind client has no other server")
        if self._preferred_away(key_of(q)):
            return empty_answer(q)
        key = key_of(q)
        cached = self.cache.answer_for(q)
        if cached is not None:
            e = self.cache.entry(key)
            if e is not None:
                self.binder.refresh(e.addrs, e.bits, int(e.expires - self.cache.clock()))
            self.answered += 1
            return cached
        stale = self.cache.stale_answer_for(q) if self.optimistic else None
        if stale is not None:  # optimistic_cache: the expired answer now, a fresh one behind it
            e = self.cache.stale(key)
            if e is not None:
                self.binder.refresh(e.addrs, e.bits, STALE_ANSWER_TTL)
            self._refresh(q, target, bits)
            self.answered += 1
            return stale
        r = await self.cache.inflight(key, lambda: self._fetch(q, target, bits, wire))
        self.answered += 1
        return self._passed_on(q, wire, r, max_size) or self._shaped(q, r)

    @staticmethod
    def _passed_on(q: dns.message.Message, wire: bytes | None, r: dns.message.Message, max_size: int) -> bytes | None:
        """The upstream's own answer bytes under the client's id and question bytes, when r is
        that answer to the client's question and fits; None: render it (`_shaped`)."""
        raw: bytes | None = getattr(r, "raw", None)
        if raw is not None and wire is not None and (q.edns >= 0 or not getattr(r, "raw_edns", True)):
            limit = max_size or max(UDP_DEFAULT_PAYLOAD, q.payload if q.edns >= 0 else 0)
            qlen = getattr(r, "raw_qlen", 0)
            if len(raw) <= limit and qlen and wire[12:qlen].lower() == raw[12:qlen].lower():
                return wire[:2] + raw[2:12] + wire[12:qlen] + raw[qlen:]
        return None

    def _refresh(self, q: dns.message.Message, target: str, bits: int) -> None:
        """Ask upstream for q in the background (once per key: joined like any query in flight)."""
        key = key_of(q)
        if self.cache.is_in_flight(key):
            return
        task = asyncio.get_running_loop().create_task(self.cache.inflight(key, lambda: self._fetch(q, target, bits)))
        self._refreshing.add(task)
        task.add_done_callback(self._refreshed)

    def _refreshed(self, task: asyncio.Task[dns.message.Message]) -> None:
        self._refreshing.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.info("dns: background refresh failed: %s", task.exception())

    def _preferred_away(self, key: tuple[str, int, int]) -> bool:
        """ipversion_prefer: an AAAA (A) question of a name known to have A (AAAA) records gets
        an empty answer; known means an unexpired cached answer with records (as dae does)."""
        if not self.prefer:
            return False
        name, qt, cls = key
        away: dict[tuple[int, int], int] = {(4, dns.rdatatype.AAAA): dns.rdatatype.A,
                                            (6, dns.rdatatype.A): dns.rdatatype.AAAA}
        other = away.get((self.prefer, qt))
        if other is None:
            return False
        hit = self.cache.get((name, int(other), cls))
        return hit is not None and bool(answer_addresses(hit[0]))

    async def _fetch(self, q: dns.message.Message, target: str, bits: int,
                     wire: bytes | None = None, seen: list[str] | None = None) -> dns.message.Message:
        """Ask upstreams (following response routing), cache, and bind: all before any waiter
        gets the answer. With the client's `wire`, the upstream query is its question bytes under
        a new header (EDNS only if the client used it), so an accepted answer can be passed on
        as it came (`resolve`). `seen`: upstreams already asked (the fast path hands a re-query
        over with the first one in it)."""
        uq, qlen = self._upstream_query(q, wire)
        seen = list(seen or [])
        while True:
            up = self.upstreams.get(target) if target != "asis" else await self.asis.current()
            if up is None:
                raise UpstreamError(f"no upstream '{target}'")
            seen.append(target)
            r = await up.query(uq)
            nxt = self._routed(q, target, bits, r, qlen, seen)
            if nxt is None:
                break
            target = nxt
        self._store(q, r)
        return r

    @staticmethod
    def _upstream_query(q: dns.message.Message, wire: bytes | None) -> tuple[dns.message.Message, int]:
        """The query to send upstream for q, and the length of the client's header+question in
        `wire` (0: no wire, or not one question), whose bytes it reuses."""
        question = q.question[0]
        edns = q.edns >= 0
        uq = dns.message.QueryMessage()  # what make_query builds, without parsing the question again
        uq.flags = dns.flags.RD
        uq.question = [question]
        if edns:
            uq.use_edns(0, payload=UPSTREAM_PAYLOAD)
        qlen = 0
        if wire is not None and wire[4:6] == b"\0\1":
            qlen = 12 + len(cast(bytes, question.name.to_wire())) + 4
            uq.wire = QUERY_HEADER[edns] + wire[12:qlen] + (OPT_1232 if edns else b"")  # read by upstreams.udp
        return uq, qlen

    def _routed(self, q: dns.message.Message, target: str, bits: int, r: dns.message.Message,
                qlen: int, seen: list[str]) -> str | None:
        """Response routing of `target`'s answer r: None when r is final (accepted, rejected
        with its answer section emptied, or a loop stopped), else the upstream to ask next."""
        question = q.question[0]
        ips = tuple(answer_addresses(r))
        decision, rule = self.response.decide(Query(key_of(q)[0], int(question.rdtype), bits,
                                                    upstream=target, ips=ips))
        if decision == "accept":
            r.dae_addrs = ips  # type: ignore[attr-defined]  # the binder's input, not parsed twice
            if qlen and getattr(r, "raw", None) is not None:
                r.raw_qlen, r.raw_edns = qlen, q.edns >= 0  # type: ignore[attr-defined]  # resolve() passes r.raw on
            return None
        if decision == "reject":  # as dae: the upstream's answer with its answer section emptied
            self.rejected += 1
            r.answer = []
            return None
        if len(seen) > MAX_REQUERIES or decision in seen:
            log.warning("dns: %s: response routing loops (%s -> %s); accepting the last answer",
                        question.name, " -> ".join(seen), decision)
            return None
        log.debug("dns: %s: answer of %s re-queried with %s (%s)", question.name, target, decision,
                  rule.text if rule else "fallback")
        return decision

    def _store(self, q: dns.message.Message, r: dns.message.Message) -> None:
        """Cache r and bind its addresses (before anyone is answered with it)."""
        key = key_of(q)
        if key[0].rstrip(".") in self.cache.fixed_ttl:
            r.raw_qlen = 0  # type: ignore[attr-defined]  # its TTLs are rewritten: render it
        ttl = self.cache.put(key, r)
        t0 = time.perf_counter()
        addrs, bits = self.binder.bind_answer(r, ttl if ttl else self.cache.lifetime(key, r))
        e = self.cache.entry(key)
        if e is not None:
            e.addrs, e.bits = addrs, bits
        if bits:
            log.debug("dns: %s bound %d addresses in %.0f us", q.question[0].name, len(addrs),
                      (time.perf_counter() - t0) * 1e6)

    @staticmethod
    def _shaped(q: dns.message.Message, r: dns.message.Message) -> dns.message.Message:
        """r's content under q's id, question and EDNS (several clients may share one r)."""
        out = dns.message.make_response(q, recursion_available=True)
        out.set_rcode(r.rcode())
        out.answer = list(r.answer)
        out.authority = list(r.authority)
        return out
