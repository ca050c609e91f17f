"""DNS request and response routing over the compiler's structured rules (manifest `dns.routing`).

A rule is a conjunction of calls; a call's parameters were ORed by the compiler into one set
(qname: a domain-set bit of `dns.domain_sets`, matched with the routing matcher; ip: CIDRs;
qtype: numbers; upstream: names); `negated` flips one call. First match wins, then fallback.
"""
from __future__ import annotations

import ipaddress
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dae_py.contract.fields import dnsrules
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
    """One call of a rule: its function (a `contract.fields.dnsrules` spec, None for a name this
    runtime does not know, which never matches) and the value that spec loaded from the manifest."""

    func: str
    negated: bool
    value: Any = None

    @classmethod
    def from_manifest(cls, raw: DnsCall | Mapping[str, Any]) -> Call:
        c = raw if isinstance(raw, DnsCall) else DnsCall.from_json(raw)
        s = dnsrules.spec(c.func)
        return cls(func=c.func, negated=c.negated, value=None if s is None else s.load(c.to_json()))

    def matches(self, q: Query) -> bool:
        return self._match(q) != self.negated

    def _match(self, q: Query) -> bool:
        s = dnsrules.spec(self.func)
        return s is not None and s.matches(self.value, q)


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
    def from_manifest(cls, raw: DnsRuleList | Mapping[str, Any] | None, default: str) -> RuleList:
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
