"""Bind before answer: each A/AAAA answer's addresses get the domain bits of the query name and
its CNAME chain in the kernel's maps before the answer is sent.

The bits come from the build's own DomainMatcher over the routing IR's domain sets (the one the
kernel's bit numbers were assigned from; `explain` uses it too), and go through
`runtime.domain_map.DomainBindings.bind` (filter bit first, then the entry). A binding lives for
the answer's TTL plus `grace` (clients and their resolvers keep answers a little longer than
they should); `sweep()` removes expired ones, and at most `max_entries` live at a time (the
soonest to expire goes first). The last answer for an address decides its bits.

`domain_filter` (the bit array in front of the maps) only fills; after a sweep, when its fill
passes `filter_rebuild_fill` and it holds at least twice as many bits as there are live
bindings (a rebuild would then clear at least half), it is rebuilt from the live entries
(`DomainBindings.rebuild_filter`).
"""
from __future__ import annotations

import heapq
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from typing import Any

import dns.message
import dns.name
import dns.rdatatype

from dae_py.runtime.domain_map import FILTER_BITS

log = logging.getLogger("dae.dns.bind")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
DEFAULT_GRACE = 300.0
DEFAULT_MAX_ENTRIES = 65536  # the compiler's DOMAIN_MAP_SIZE: the kernel's LRU never evicts a live one
DEFAULT_FILTER_REBUILD_FILL = 0.125  # an unresolved address then pays the hash lookup 1 time in 8


_PLAIN_NAME = re.compile(rb"[A-Za-z0-9_*.-]+\.")


def name_text(name: dns.name.Name) -> str:
    """`name.to_text()` at a fraction of its cost for the usual absolute name (labels of letters,
    digits, `-`, `_` or `*`, which to_text would not escape; the dot count proves no label holds
    a dot); any other name goes through to_text."""
    labels = name.labels
    joined = b".".join(labels)
    if len(labels) > 1 and not labels[-1] and _PLAIN_NAME.fullmatch(joined) and \
            joined.count(b".") == len(labels) - 1:
        return joined.decode("ascii")
    return name.to_text()


def chain_names(r: dns.message.Message) -> list[str]:
    """The query name and every name its answer's CNAME chain passes through."""
    names = [name_text(r.question[0].name)] if r.question else []
    for rrset in r.answer:
        names.append(name_text(rrset.name))
        if rrset.rdtype == dns.rdatatype.CNAME:
            names.extend(name_text(rd.target) for rd in rrset)
    return names


def answer_addresses(r: dns.message.Message) -> list[IPAddress]:
    out: list[IPAddress] = []
    for rrset in r.answer:
        if rrset.rdtype in (dns.rdatatype.A, dns.rdatatype.AAAA):
            out.extend(ipaddress.ip_address(rd.address) for rd in rrset)
    return out


class Binder:
    def __init__(self, bindings: Any, bits_of: Callable[[str], int], *, grace: float = DEFAULT_GRACE,
                 max_entries: int = DEFAULT_MAX_ENTRIES, clock: Callable[[], float] = time.monotonic,
                 filter_rebuild_fill: float = DEFAULT_FILTER_REBUILD_FILL) -> None:
        self.bindings = bindings  # a DomainBindings (None: the program has no domain() rules)
        self.bits_of = bits_of
        self.grace = grace
        self.max_entries = max_entries
        self.clock = clock
        self._expiry: dict[IPAddress, float] = {}
        self._bits: dict[IPAddress, int] = {}
        self._heap: list[tuple[float, IPAddress]] = []
        self.bound = self.expired = self.evicted = 0
        self.filter_rebuild_fill = filter_rebuild_fill

    def __len__(self) -> int:
        return len(self._expiry)

    def bits_for(self, r: dns.message.Message) -> int:
        bits = 0
        for name in chain_names(r):
            bits |= self.bits_of(name)
        return bits

    def bind_answer(self, r: dns.message.Message, ttl: int) -> tuple[tuple[IPAddress, ...], int]:
        """Write the bits of r's names for each of its addresses; returns (addresses, bits),
        what `refresh` needs on a cache hit. An address whose names match no set is bound to 0
        only if it was bound before (an earlier, other name's bits must not route it)."""
        if self.bindings is None:
            return (), 0
        addrs: tuple[IPAddress, ...] | None = getattr(r, "dae_addrs", None)  # response routing's, if accepted
        if addrs is None:
            addrs = tuple(answer_addresses(r))
        if not addrs:
            return (), 0
        bits = self.bits_for(r)
        self.refresh(addrs, bits, ttl, force=True)
        return addrs, bits

    def refresh(self, addrs: tuple[IPAddress, ...], bits: int, ttl: int, force: bool = False) -> None:
        """Bind what is not bound to these bits already (swept, evicted, or re-bound by another
        name); a cache hit costs dict look-ups, no map write, when all is in place."""
        if self.bindings is None:
            return
        until = self.clock() + max(ttl, 0) + self.grace
        for a in addrs:
            if not (bits or a in self._expiry):
                continue
            if not force and self._bits.get(a) == bits and self._expiry.get(a, 0) >= until - self.grace:
                continue
            self.bindings.bind(a, bits)
            self._remember(a, until, bits)
            self.bound += 1

    def _remember(self, a: IPAddress, until: float, bits: int) -> None:
        new = a not in self._expiry
        self._expiry[a] = until
        self._bits[a] = bits
        heapq.heappush(self._heap, (until, a))
        if new and len(self._expiry) > self.max_entries:
            self._drop_soonest()
        if len(self._heap) > 4 * self.max_entries + 1024:  # stale heap items of re-bound addresses
            self._heap = [(t, x) for x, t in self._expiry.items()]
            heapq.heapify(self._heap)

    def _drop_soonest(self) -> None:
        while self._heap:
            t, a = heapq.heappop(self._heap)
            if self._expiry.get(a) == t:
                del self._expiry[a], self._bits[a]
                self.bindings.unbind(a)
                self.evicted += 1
                return

    def sweep(self) -> int:
        """Unbind every address whose binding has expired; returns how many."""
        now = self.clock()
        n = 0
        while self._heap and self._heap[0][0] <= now:
            t, a = heapq.heappop(self._heap)
            if self._expiry.get(a) == t:
                del self._expiry[a], self._bits[a]
                self.bindings.unbind(a)
                n += 1
        self.expired += n
        self.maybe_rebuild_filter()
        return n

    def maybe_rebuild_filter(self) -> bool:
        """Rebuild domain_filter when it is fuller than the threshold and mostly stale."""
        fill = getattr(self.bindings, "filter_fill", None)
        if fill is None or fill() < self.filter_rebuild_fill:
            return False
        if fill() * FILTER_BITS < 2 * len(self._expiry):
            return False  # the live bindings fill it: a rebuild would clear too little
        t0 = time.perf_counter()
        before, after = self.bindings.rebuild_filter()
        log.info("dns: domain_filter rebuilt from %d live bindings: %d -> %d bits set in %.0f ms",
                 len(self._expiry), before, after, (time.perf_counter() - t0) * 1e3)
        return True
