"""The user-space matcher: decides a flow from the IR, with dae's semantics.

It is the reference the kernel program is tested against (differential tests) and what the
runtime uses where the kernel cannot decide (e.g. re-routing by a sniffed domain).
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from . import fields
from .ir import Match, RoutingIR

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
    """One match against a flow, with the field's own test (contract/fields/<name>.py)."""
    return fields.spec(m.field).matches(m.values, f) != m.negated


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
