"""DNS request and response routing over the compiler's structured rules (manifest `dns.routing`).

A rule is a conjunction of calls; a call's parameters were ORed by the compiler into one set
(qname: a domain-set bit of `dns.domain_sets`, matched with the routing matcher; ip: CIDRs;
qtype: numbers; upstream: names); `negated` flips one call. First match wins, then fallback.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable

IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Query:
    """What a rule may look at: the question, and for responses the upstream and answer IPs."""

    qname: str
    qtype: int
    qname_bits: int  # bits of dns.domain_sets that qname matches
    upstream: str | None = None
    ips: tuple[IPAddr, ...] = ()


@dataclass(frozen=True)
class Call:
    func: str
    negated: bool
    domain_bit: int | None = None
    qtypes: frozenset[int] = frozenset()
    upstreams: frozenset[str] = frozenset()
    nets: tuple[IPNet, ...] = ()

    @classmethod
    def from_manifest(cls, raw: dict[str, Any]) -> "Call":
        nets = tuple(ipaddress.ip_network(n) for n in (*raw.get("v4", ()), *raw.get("v6", ())))
        return cls(func=raw["func"], negated=bool(raw.get("negated")), domain_bit=raw.get("domain_bit"),
                   qtypes=frozenset(raw.get("qtypes", ())), upstreams=frozenset(raw.get("upstreams", ())),
                   nets=nets)

    def matches(self, q: Query) -> bool:
        return self._match(q) != self.negated

    def _match(self, q: Query) -> bool:
        if self.func == "qname":
            return self.domain_bit is not None and bool(q.qname_bits >> self.domain_bit & 1)
        if self.func == "qtype":
            return q.qtype in self.qtypes
        if self.func == "upstream":
            return q.upstream in self.upstreams
        if self.func == "ip":  # any answer address in the set (a v4 net never matches a v6 address)
            return any(ip.version == n.version and ip in n for ip in q.ips for n in self.nets)
        return False


@dataclass(frozen=True)
class Rule:
    text: str
    line: int
    target: str
    calls: tuple[Call, ...]


@dataclass(frozen=True)
class RuleList:
    rules: tuple[Rule, ...] = ()
    fallback: str = "asis"

    @classmethod
    def from_manifest(cls, raw: dict[str, Any] | None, default: str) -> "RuleList":
        if not raw:
            return cls(fallback=default)
        rules = tuple(Rule(r["text"], int(r.get("line", 0)), r["target"],
                           tuple(Call.from_manifest(c) for c in r.get("calls", ())))
                      for r in raw.get("rules", ()))
        return cls(rules=rules, fallback=raw.get("fallback", default))

    def decide(self, q: Query) -> tuple[str, Rule | None]:
        """(target, the rule that chose it, or None for the fallback)."""
        for r in self.rules:
            if all(c.matches(q) for c in r.calls):
                return r.target, r
        return self.fallback, None


def qname_matcher(domain_sets: list[dict[str, Any]]) -> Callable[[str], int]:
    """The bits of a name against `dns.domain_sets`, with the routing's DomainMatcher."""
    from dae_py.contract.domains import DomainMatcher  # what Build.domain_matcher uses too
    from dae_py.contract.ir import DomainSet

    sets = tuple(DomainSet(bit=d["bit"], full=tuple(d["full"]), suffix=tuple(d["suffix"]),
                           keyword=tuple(d["keyword"]), regex=tuple(d["regex"])) for d in domain_sets)
    return DomainMatcher.from_sets(sets).bits
