"""Encode the compiler's routing IR as the interpreter's match entries (dae's `routing` map).

One entry per parameter of a rule function, in rule order; a function with several parameters
is a run of entries whose `outbound` is OUT_OR except the last; functions of one rule are chained
with OUT_AND; the last entry of a rule carries the rule's outbound id (or OUT_MUST_RULES). A final
FALLBACK entry always matches. CIDR sets (one per dip()/sip() call, as dae builds them) become LPM
tries, referenced by their slot in the program's `lpm_sets` ARRAY_OF_MAPS.

Layout: bench/interpreter/interp.bpf.c, `struct match_entry` and `struct lpm_key`.
"""
from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

from dae_py.compiler.cexpr import comm_words
from dae_py.contract.ir import L4_TCP, L4_UDP, CidrSet, DomainRef, Field, Match, PortSet, RoutingIR, ValueSet

# enum match_type
M_DOMAIN, M_DIP, M_SIP, M_DPORT, M_SPORT, M_L4PROTO, M_IPVERSION, M_MAC, M_PNAME, M_DSCP, M_FALLBACK = range(11)
OUT_MUST_RULES = 0xFC
OUT_OR = 0xFE
OUT_AND = 0xFF

MAX_ENTRIES = 16384      # INTERP_MAX_ENTRIES
MAX_LPM_SETS = 4096      # INTERP_MAX_LPM_SETS
DOMAIN_WORDS = 16        # INTERP_DOMAIN_WORDS

# union value[16], negated, type, outbound, must, mark, rule, pad, pad2
ENTRY = struct.Struct("<16sBBBBIHHI")
assert ENTRY.size == 32
LPM_KEY_SIZE = 4 + 1 + 16
LPM_VALUE = struct.pack("<I", 1)

_L4_BITS = {L4_TCP: 1, L4_UDP: 2}
_IPV_BITS = {4: 1, 6: 2}


class EncodeError(Exception):
    pass


@dataclass
class Encoded:
    entries: list[bytes] = field(default_factory=list)
    lpm_sets: list[list[bytes]] = field(default_factory=list)  # per slot: LPM keys
    rules_encoded: int = 0

    def routing_payload(self) -> tuple[bytes, bytes, int]:
        keys = b"".join(struct.pack("<I", i) for i in range(len(self.entries)))
        return keys, b"".join(self.entries), len(self.entries)


def lpm_key(net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> bytes:
    addr = net.network_address.packed.ljust(16, b"\0")
    return struct.pack("<IB", 8 + net.prefixlen, net.version) + addr


def _pad(b: bytes) -> bytes:
    return b.ljust(16, b"\0")


class _Sets:
    def __init__(self, enc: Encoded):
        self.enc = enc
        self.index: dict[CidrSet, int] = {}

    def slot(self, s: CidrSet) -> int:
        if s not in self.index:
            self.index[s] = len(self.enc.lpm_sets)
            self.enc.lpm_sets.append([lpm_key(n) for n in s.v4] + [lpm_key(n) for n in s.v6])
        return self.index[s]


def _items(m: Match, sets: _Sets) -> list[tuple[int, bytes]]:
    """The entries of one function call: (type, 16-byte value)."""
    v = m.values
    if m.field in (Field.DIP, Field.SIP):
        assert isinstance(v, CidrSet)
        return [(M_DIP if m.field is Field.DIP else M_SIP, _pad(struct.pack("<I", sets.slot(v))))]
    if m.field in (Field.DPORT, Field.SPORT):
        assert isinstance(v, PortSet)
        t = M_DPORT if m.field is Field.DPORT else M_SPORT
        return [(t, _pad(struct.pack("<HH", lo, hi))) for lo, hi in v.ranges]
    if m.field is Field.L4PROTO:
        assert isinstance(v, ValueSet)
        mask = 0
        for x in v.values:
            mask |= _L4_BITS[x]
        return [(M_L4PROTO, _pad(bytes([mask])))]
    if m.field is Field.IPVERSION:
        assert isinstance(v, ValueSet)
        mask = 0
        for x in v.values:
            mask |= _IPV_BITS[x]
        return [(M_IPVERSION, _pad(bytes([mask])))]
    if m.field is Field.MAC:
        assert isinstance(v, ValueSet)
        return [(M_MAC, _pad(struct.pack("<Q", x))) for x in v.values]
    if m.field is Field.DSCP:
        assert isinstance(v, ValueSet)
        return [(M_DSCP, _pad(bytes([x]))) for x in v.values]
    if m.field is Field.PNAME:
        assert isinstance(v, ValueSet)
        return [(M_PNAME, struct.pack("<QQ", *comm_words(x))) for x in v.values]
    if m.field is Field.DOMAIN:
        assert isinstance(v, DomainRef)
        if v.bit >= DOMAIN_WORDS * 64:
            raise EncodeError(f"domain set bit {v.bit} does not fit the interpreter's bitmap")
        return [(M_DOMAIN, _pad(struct.pack("<I", v.bit)))]
    raise EncodeError(f"unknown field {m.field}")  # pragma: no cover


def encode(ir: RoutingIR) -> Encoded:
    """Entries for every live rule of `ir` (rules the passes dropped are not emitted, as in the
    compiled program), then the fallback entry."""
    enc = Encoded()
    sets = _Sets(enc)
    for r in ir.live_rules():
        a = r.action
        # An empty set (possible only in rules the passes drop) would be a function that never
        # matches: an l4proto entry with an empty mask says exactly that.
        funcs = [(_items(m, sets) or [(M_L4PROTO, _pad(b"\0"))], m.negated) for m in r.matches]
        if not r.matches:
            funcs = [([(M_FALLBACK, _pad(b""))], False)]
        for fi, (items, neg) in enumerate(funcs):
            for ii, (typ, value) in enumerate(items):
                last_in_func = ii == len(items) - 1
                last_in_rule = last_in_func and fi == len(funcs) - 1
                if not last_in_func:
                    out = OUT_OR
                elif not last_in_rule:
                    out = OUT_AND
                else:
                    out = OUT_MUST_RULES if a.must_rules else a.outbound_id
                enc.entries.append(ENTRY.pack(value, int(neg), typ, out, int(a.must), a.mark, r.index, 0, 0))
        enc.rules_encoded += 1
    fb = ir.fallback
    enc.entries.append(ENTRY.pack(_pad(b""), 0, M_FALLBACK, fb.outbound_id, int(fb.must), fb.mark, len(ir.rules), 0, 0))
    if len(enc.entries) > MAX_ENTRIES:
        raise EncodeError(f"{len(enc.entries)} entries do not fit the interpreter's table ({MAX_ENTRIES})")
    if len(enc.lpm_sets) > MAX_LPM_SETS:
        raise EncodeError(f"{len(enc.lpm_sets)} CIDR sets do not fit the interpreter's lpm_sets ({MAX_LPM_SETS})")
    return enc
