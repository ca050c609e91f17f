"""Binding domain bits to destination addresses in a loaded program: the one way to write them.

A program with `domain()` rules reads these maps (docs/maps.md):
- `domain_routing4` / `domain_routing6`, LRU hashes from the destination address (the IPv4 or
  IPv6 address in network order) to the domain-set bits of the name it was resolved from;
- `domain_filter`, an array of 2^20 bits in front of them: bit `filter_bit(address)` is set for
  every address ever bound. The program skips the hash lookup (about a third of a first packet's
  classification cost) when the bit is clear, so an entry whose bit is not set is never seen.

Hence the order here: the filter bit first, then the entry. Bits are never cleared by the
program; unbinding leaves them set, which only costs a lookup, so the filter only fills. The DNS
module's binder calls `rebuild_filter` when `filter_fill()` passes its threshold: every word is
recomputed from the entries the routing maps hold now and rewritten where it differs. A new word
always holds the bits of every live entry in it, so no entry is hidden even for a moment (and
binds run on the same event loop, never between the read and the write).
"""
from __future__ import annotations

import ipaddress
import struct
from typing import TYPE_CHECKING, Any

from dae_py.runtime.packets import domain_key, domain_value

if TYPE_CHECKING:
    from dae_py.runtime.bpf.maps import BpfMap

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

FILTER_WORDS = 16384  # u64 words: 2^20 bits (128 KiB); the template's DOMAIN_FILTER_WORDS
FILTER_MULTIPLIER = 0x9E3779B1  # Fibonacci hashing; the template's domain_filter_bit()
FILTER_BITS = FILTER_WORDS * 64


def filter_bit(dst: IPAddress) -> int:
    """The filter bit of an address, as the program computes it: the address's 32-bit words
    (host order) XORed together, times FILTER_MULTIPLIER mod 2^32, top 20 bits."""
    n = int(dst)
    x = n if dst.version == 4 else (n >> 96) ^ (n >> 64) ^ (n >> 32) ^ n
    return (((x & 0xFFFFFFFF) * FILTER_MULTIPLIER) & 0xFFFFFFFF) >> 12


class DomainBindings:
    """The domain maps of one loaded program (a BpfObject, or anything with .map(name))."""

    def __init__(self, obj: Any, words: int):
        names = set(obj.map_names())
        if "domain_routing4" in names:
            self.routing = {4: obj.map("domain_routing4"), 6: obj.map("domain_routing6")}
            self._key = _packed
        else:  # builds of compiler versions before the split: one map, IPv4 as ::ffff:a.b.c.d
            routing = obj.map("domain_routing")
            self.routing = {4: routing, 6: routing}
            self._key = domain_key
        # (and before the filter: none; bench.ab_builds times such builds against new ones)
        self.filter = obj.map("domain_filter") if "domain_filter" in names else None
        self._filter_lookup = self.filter.lookuper() if self.filter is not None else None  # (hot: every bind)
        self._words_view = _map_words(self.filter) if self.filter is not None else None
        self.words = words
        self._filter_set: int | None = None  # bits set in the filter; counted on first use
        self.rebuilds = 0

    @classmethod
    def of(cls, obj: Any, words: int) -> DomainBindings | None:
        """The bindings of a program, or None if it has no domain() rules (and so no maps)."""
        names = set(obj.map_names())
        return cls(obj, words) if names & {"domain_routing4", "domain_routing"} else None

    def bind(self, dst: IPAddress, bits: int) -> None:
        """Bind `bits` (an int, bit b = domain set b) to `dst`: filter bit, then the entry."""
        filt = self.filter
        if filt is not None:
            self._set_filter_bit(filt, dst)
        self.routing[dst.version].update(self._key(dst), domain_value(bits, self.words))

    def write_entry_only(self, dst: IPAddress, bits: int) -> None:
        """The entry without its filter bit: for tests that show the program then ignores it."""
        self.routing[dst.version].update(self._key(dst), domain_value(bits, self.words))

    def _filter_word(self, filt: BpfMap, dst: IPAddress) -> tuple[bytes, int, int]:
        """(key of the filter word holding dst's bit, the word, the bit's mask)."""
        bit = filter_bit(dst)
        view = self._words_view
        if view is not None and filt is self.filter:
            return struct.pack("<I", bit >> 6), view[bit >> 6], 1 << (bit & 63)
        key = struct.pack("<I", bit >> 6)
        fast = self._filter_lookup
        raw = fast(key) if fast is not None and filt is self.filter else filt.lookup(key)
        return key, struct.unpack("<Q", raw)[0] if raw else 0, 1 << (bit & 63)

    def _set_filter_bit(self, filt: BpfMap, dst: IPAddress) -> None:
        key, word, mask = self._filter_word(filt, dst)
        if not word & mask:
            self._write_word(filt, key, word | mask)
            if self._filter_set is not None:
                self._filter_set += 1

    def _write_word(self, filt: BpfMap, key: bytes, word: int) -> None:
        """One filter word: a store into the mapping (mmapable maps; the program only reads the
        filter and this process is its one writer, so read-modify-write is safe), else a syscall."""
        view = self._words_view
        if view is not None and filt is self.filter:
            view[struct.unpack("<I", key)[0]] = word
        else:
            filt.update(key, struct.pack("<Q", word))

    def _filter_words(self) -> list[int]:
        filt = self.filter
        assert filt is not None
        if self._words_view is not None:
            return list(self._words_view)
        out = []
        for i in range(FILTER_WORDS):
            raw = filt.lookup(struct.pack("<I", i))
            out.append(struct.unpack("<Q", raw)[0] if raw else 0)
        return out

    def filter_fill(self) -> float:
        """The share of filter bits set (0.0 without a filter): the chance that a first packet
        to an address nobody resolved still pays the hash lookup."""
        if self.filter is None:
            return 0.0
        if self._filter_set is None:  # the map may outlive builds (a state map): count it once
            self._filter_set = sum(w.bit_count() for w in self._filter_words())
        return self._filter_set / FILTER_BITS

    def bound_addresses(self) -> list[IPAddress]:
        """Every address the routing maps hold an entry for."""
        out: list[IPAddress] = []
        maps = [self.routing[4]] if self.routing[4] is self.routing[6] else [self.routing[4], self.routing[6]]
        for m in maps:
            for key in m.keys():
                ip = ipaddress.ip_address(bytes(key))
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None and self._key is domain_key:
                    ip = ip.ipv4_mapped
                out.append(ip)
        return out

    def rebuild_filter(self) -> tuple[int, int]:
        """Recompute the filter from the live entries, rewriting only the words that change;
        returns (bits set before, bits set after)."""
        if self.filter is None:
            return 0, 0
        want = [0] * FILTER_WORDS
        for ip in self.bound_addresses():
            bit = filter_bit(ip)
            want[bit >> 6] |= 1 << (bit & 63)
        have = self._filter_words()
        before = sum(w.bit_count() for w in have)
        for i, (old, new) in enumerate(zip(have, want, strict=True)):
            if old != new:
                self._write_word(self.filter, struct.pack("<I", i), new)
        self._filter_set = sum(w.bit_count() for w in want)
        self.rebuilds += 1
        return before, self._filter_set

    def filter_bit_set(self, dst: IPAddress) -> bool:
        if self.filter is None:
            return True
        _key, word, mask = self._filter_word(self.filter, dst)
        return bool(word & mask)

    def unbind(self, dst: IPAddress) -> bool:
        """Remove the entry of `dst`; its filter bit stays (it may be shared)."""
        return self.routing[dst.version].delete(self._key(dst))

    def lookup(self, dst: IPAddress) -> int | None:
        """The bits bound to `dst`, or None without an entry (the filter is not consulted)."""
        raw = self.routing[dst.version].lookup(self._key(dst))
        if raw is None:
            return None
        return sum(struct.unpack_from("<Q", raw, 8 * i)[0] << (64 * i) for i in range(len(raw) // 8))


def _map_words(filt: Any) -> memoryview | None:
    """The filter array mapped into this process as u64 words, or None (a build from before
    the map was mmapable, or a stand-in without an fd): then every access is a syscall."""
    import mmap

    fd = getattr(filt, "fd", None)
    if not isinstance(fd, int) or getattr(filt, "value_size", 8) != 8 or \
            getattr(filt, "max_entries", FILTER_WORDS) != FILTER_WORDS:
        return None
    try:
        mapping = mmap.mmap(fd, FILTER_WORDS * 8, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except (OSError, ValueError):
        return None
    return memoryview(mapping).cast("Q")


def _packed(dst: IPAddress) -> bytes:
    return dst.packed
