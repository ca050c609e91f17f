"""The routing IR: what every later stage (passes, C emitter, user-space matcher) works from.

The IR is plain frozen dataclasses with no reference to YAML or C. The kernel matcher (generated
C) and the user-space matcher (`contract.evaluate`) are both derived from it, which is what lets
the tests hold one against the other.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# Fixed outbound ids: groups follow from 2 in the order the config declares them.
OUTBOUND_DIRECT = 0
OUTBOUND_BLOCK = 1

L4_TCP = 6
L4_UDP = 17


class Field(str, Enum):
    """What a match looks at. The value is the config function name."""

    L4PROTO = "l4proto"
    IPVERSION = "ipversion"
    SIP = "sip"
    DIP = "dip"
    SPORT = "sport"
    DPORT = "dport"
    MAC = "mac"
    DSCP = "dscp"
    PNAME = "pname"
    DOMAIN = "domain"


@dataclass(frozen=True)
class PortSet:
    """Inclusive port ranges, sorted and coalesced by the passes."""

    ranges: tuple[tuple[int, int], ...]

    def contains(self, port: int) -> bool:
        return any(lo <= port <= hi for lo, hi in self.ranges)


@dataclass(frozen=True)
class CidrSet:
    """IPv4 and IPv6 networks; a v4 network never matches a v6 flow and vice versa."""

    v4: tuple[ipaddress.IPv4Network, ...]
    v6: tuple[ipaddress.IPv6Network, ...]

    def contains(self, addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
        nets = self.v4 if addr.version == 4 else self.v6
        return any(addr in n for n in nets)

    def __len__(self) -> int:
        return len(self.v4) + len(self.v6)


@dataclass(frozen=True)
class ValueSet:
    """A small set of discrete values: l4proto numbers, ip versions, DSCP codes, MACs (int), names."""

    values: tuple[Any, ...]

    def contains(self, v: Any) -> bool:
        return v in self.values


@dataclass(frozen=True)
class DomainSet:
    """One `domain(...)` call's patterns. `bit` is its position in the kernel's per-IP bitmap."""

    bit: int
    full: tuple[str, ...] = ()
    suffix: tuple[str, ...] = ()
    keyword: tuple[str, ...] = ()
    regex: tuple[str, ...] = ()

    def patterns(self) -> tuple[tuple[str, ...], ...]:
        return (self.full, self.suffix, self.keyword, self.regex)

    def size(self) -> int:
        return sum(len(p) for p in self.patterns())


@dataclass(frozen=True)
class DomainRef:
    """A match on domain: refers to a DomainSet by its bit."""

    bit: int


MatchValues = PortSet | CidrSet | ValueSet | DomainRef


@dataclass(frozen=True)
class Match:
    field: Field
    values: MatchValues
    negated: bool = False


@dataclass(frozen=True)
class Action:
    """What a matched rule decides. `must_rules` rules set `must` and let matching go on."""

    outbound: str
    outbound_id: int
    mark: int = 0
    must: bool = False
    must_rules: bool = False


@dataclass(frozen=True)
class SourceRef:
    file: str
    line: int
    col: int
    text: str
    # The text shortened for program.c comments and manifest.json (`rules.abbreviate`); None when
    # the rule is short. Not part of ir.json (which keeps `text`), so not part of equality either.
    abbrev: str | None = field(default=None, compare=False)

    @property
    def shown(self) -> str:
        return self.text if self.abbrev is None else self.abbrev


@dataclass(frozen=True)
class Rule:
    index: int  # 0-based position in routing.rules (kept through passes)
    matches: tuple[Match, ...]
    action: Action
    source: SourceRef
    never_matches: bool = False  # set by passes; such rules are not emitted


@dataclass(frozen=True)
class Outbound:
    id: int
    name: str
    kind: str  # direct | block | group


@dataclass(frozen=True)
class RoutingIR:
    rules: tuple[Rule, ...]
    fallback: Action
    outbounds: tuple[Outbound, ...]
    domain_sets: tuple[DomainSet, ...] = ()
    pnames: tuple[str, ...] = field(default=())

    def fields_used(self) -> frozenset[Field]:
        return frozenset(m.field for r in self.live_rules() for m in r.matches)

    def live_rules(self) -> tuple[Rule, ...]:
        return tuple(r for r in self.rules if not r.never_matches)

    def outbound_name(self, oid: int) -> str:
        for o in self.outbounds:
            if o.id == oid:
                return o.name
        raise KeyError(oid)


def max_domain_words(ir: RoutingIR) -> int:
    """How many 64-bit words the per-IP domain bitmap needs (at least one)."""
    return max(1, (len(ir.domain_sets) + 63) // 64)
