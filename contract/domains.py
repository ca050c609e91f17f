"""Which domain sets a name belongs to: the bits the DNS module binds to each answer's IPs.

Built once per build from the IR's domain sets. Full and suffix patterns go into dicts (a name is
checked against each of its label suffixes), keywords into one Aho-Corasick-free pass per set
(Python's `in` on a short name is fast), regexes are compiled once with RE2 (contract.userregex:
dae's Go syntax, linear time). dae's semantics: suffix matches the name itself or any name ending
in '.' + suffix; keyword is a substring; regex is a search.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .ir import DomainSet
from .userregex import UserRegex, compile_user_regex


@dataclass
class DomainMatcher:
    full: dict[str, int] = field(default_factory=dict)
    suffix: dict[str, int] = field(default_factory=dict)
    keywords: list[tuple[str, int]] = field(default_factory=list)
    regexes: list[tuple[UserRegex, int]] = field(default_factory=list)

    @classmethod
    def from_sets(cls, sets: tuple[DomainSet, ...]) -> DomainMatcher:
        m = cls()
        for s in sets:
            bit = 1 << s.bit
            for name in s.full:
                m.full[name] = m.full.get(name, 0) | bit
            for name in s.suffix:
                m.suffix[name] = m.suffix.get(name, 0) | bit
            m.keywords.extend((k, bit) for k in s.keyword)
            m.regexes.extend((compile_user_regex(r), bit) for r in s.regex)
        return m

    def bits(self, name: str) -> int:
        """Bitmask of the domain sets that `name` matches."""
        name = name.lower().rstrip(".")
        out = self.full.get(name, 0)
        labels = name.split(".")
        for i in range(len(labels)):
            out |= self.suffix.get(".".join(labels[i:]), 0)
        for kw, bit in self.keywords:
            if not out & bit and kw in name:
                out |= bit
        for rx, bit in self.regexes:
            if not out & bit and rx.search(name):
                out |= bit
        return out
