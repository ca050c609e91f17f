"""The user-space matcher: decides a flow from the IR, with dae's semantics.

It is the reference the kernel program is tested against (differential tests) and what the
runtime uses where the kernel cannot decide (e.g. re-routing by a sniffed domain).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from .ir import CidrSet, DomainRef, Field, Match, PortSet, RoutingIR, ValueSet

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Flow:
    l4proto: int
    src: IPAddress
    sport: int
    dst: IPAddress
    dport: int
    mac: int | None = None
    dscp: int = 0
    pname: str | None = None
    domain_bits: int = 0  # the bits bound to `dst` by DNS

    @property
    def ipversion(self) -> int:
        return self.dst.version


@dataclass(frozen=True)
class Decision:
    rule: int | None  # index into routing.rules, None for the fallback
    outbound: str
    outbound_id: int
    mark: int
    must: bool


def match_one(m: Match, f: Flow) -> bool:
    v = m.values
    hit: bool
    if m.field is Field.DIP:
        assert isinstance(v, CidrSet)
        hit = v.contains(f.dst)
    elif m.field is Field.SIP:
        assert isinstance(v, CidrSet)
        hit = v.contains(f.src)
    elif m.field is Field.DPORT:
        assert isinstance(v, PortSet)
        hit = v.contains(f.dport)
    elif m.field is Field.SPORT:
        assert isinstance(v, PortSet)
        hit = v.contains(f.sport)
    elif m.field is Field.L4PROTO:
        assert isinstance(v, ValueSet)
        hit = v.contains(f.l4proto)
    elif m.field is Field.IPVERSION:
        assert isinstance(v, ValueSet)
        hit = v.contains(f.ipversion)
    elif m.field is Field.MAC:
        assert isinstance(v, ValueSet)
        hit = f.mac is not None and v.contains(f.mac)
    elif m.field is Field.DSCP:
        assert isinstance(v, ValueSet)
        hit = v.contains(f.dscp)
    elif m.field is Field.PNAME:
        assert isinstance(v, ValueSet)
        hit = f.pname is not None and v.contains(f.pname[:15])
    elif m.field is Field.DOMAIN:
        assert isinstance(v, DomainRef)
        hit = bool(f.domain_bits >> v.bit & 1)
    else:  # pragma: no cover
        raise AssertionError(m.field)
    return hit != m.negated


def classify(ir: RoutingIR, f: Flow) -> Decision:
    """First matching rule wins; `must_rules` rules set must and matching goes on."""
    must = False
    for r in ir.rules:
        if r.never_matches:
            continue
        if all(match_one(m, f) for m in r.matches):
            a = r.action
            if a.must_rules:
                must = True
                continue
            return Decision(r.index, a.outbound, a.outbound_id, a.mark, must or a.must)
    fb = ir.fallback
    return Decision(None, fb.outbound, fb.outbound_id, fb.mark, must or fb.must)
