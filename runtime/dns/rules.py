"""DNS request and response routing over the compiler's structured rules (manifest `dns.routing`).

A rule is a conjunction of calls; a call's parameters were ORed by the compiler into one set
(qname: a domain-set bit of `dns.domain_sets`, matched with the routing matcher; ip: CIDRs;
qtype: numbers; upstream: names); `negated` flips one call. First match wins, then fallback.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from dae_py.contract.manifest import DnsCall, DnsRuleList, DomainSetSpec

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
    def from_manifest(cls, raw: DnsCall | Mapping[str, Any]) -> "Call":
        c = raw if isinstance(raw, DnsCall) else DnsCall.from_json(raw)
        nets = tuple(ipaddress.ip_network(n) for n in (*(c.v4 or ()), *(c.v6 or ())))
        return cls(func=c.func, negated=c.negated, domain_bit=c.domain_bit, qtypes=frozenset(c.qtypes or ()),
                   upstreams=frozenset(c.upstreams or ()), nets=nets)

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
    def from_manifest(cls, raw: DnsRuleList | Mapping[str, Any] | None, default: str) -> "RuleList":
        spec = raw if isinstance(raw, DnsRuleList) or raw is None else DnsRuleList.from_json(raw, default)
        if spec is None:
            return cls(fallback=default)
        rules = tuple(Rule(r.text, r.line, r.target, tuple(Call.from_manifest(c) for c in r.calls))
                      for r in spec.rules)
        return cls(rules=rules, fallback=spec.fallback)

    def decide(self, q: Query) -> tuple[str, Rule | None]:
        """(target, the rule that chose it, or None for the fallback)."""
        for r in self.rules:
            if all(c.matches(q) for c in r.calls):
                return r.target, r
        return self.fallback, None


def qname_matcher(domain_sets: Sequence[DomainSetSpec | Mapping[str, Any]]) -> Callable[[str], int]:
    """The bits of a name against `dns.domain_sets`, with the routing's DomainMatcher."""
    from dae_py.contract.domains import DomainMatcher  # what Build.domain_matcher uses too
    from dae_py.contract.ir import DomainSet

    specs = [d if isinstance(d, DomainSetSpec) else DomainSetSpec.from_json(d) for d in domain_sets]
    sets = tuple(DomainSet(bit=d.bit, full=d.full, suffix=d.suffix, keyword=d.keyword, regex=d.regex) for d in specs)
    return DomainMatcher.from_sets(sets).bits
