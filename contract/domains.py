"""Which domain sets a name belongs to: the bits the DNS module binds to each answer's IPs, and
what the relay re-routes a sniffed name by.

dae's semantics: `full` is the name itself; `suffix` matches the name or any name ending in
'.' + suffix; `keyword` is a substring; `regex` is a search (RE2, Go's syntax: contract.userregex).
Names are lowercased and lose their trailing dots first; patterns are used as written.

`ReferenceDomainMatcher` says that in the plainest code: every pattern tried in turn. It is the
oracle. `DomainMatcher` gives the same answers at a cost that does not grow with the number of
rules (bench/domain_matcher.py: 100k full/suffix/keyword rules + 1k regexes):
- full and suffix patterns in two dicts (pattern -> bits of the sets that hold it); a name is
  looked up once whole and once per label boundary ("a.b.c": "a.b.c", "b.c", "c"), so a
  lookup costs one hash per label, the reversed-label trie's walk without its nodes;
- keywords in one Aho-Corasick automaton (pyahocorasick): one pass over the name finds every
  keyword in it, where `kw in name` per keyword costs one scan per keyword;
- regexes in one RE2::Set (contract.userregex.UserRegexSet): one DFA walk for all of them.
tests/compiler/test_domain_matcher.py holds the two to the same answers on random names.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import ahocorasick

from .ir import DomainSet
from .userregex import UserRegex, UserRegexSet, compile_user_regex


def _normal(name: str) -> str:
    return name.lower().rstrip(".")


@dataclass
class ReferenceDomainMatcher:
    """dae's domain matching, one pattern at a time: the oracle `DomainMatcher` is tested against."""

    full: dict[str, int] = field(default_factory=dict)
    suffix: dict[str, int] = field(default_factory=dict)
    keywords: list[tuple[str, int]] = field(default_factory=list)
    regexes: list[tuple[UserRegex, int]] = field(default_factory=list)

    @classmethod
    def from_sets(cls, sets: tuple[DomainSet, ...]) -> ReferenceDomainMatcher:
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
        name = _normal(name)
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


class DomainMatcher:
    """The matcher the runtime uses (DNS binding, sniffed names, explain): ReferenceDomainMatcher's
    answers, with a cost per name that does not grow with the number of patterns."""

    def __init__(self, full: dict[str, int], suffix: dict[str, int], keywords: dict[str, int],
                 regexes: dict[str, int]) -> None:
        self.full = full
        self.suffix = suffix
        self.keywords = keywords
        self._always = keywords.get("", 0)  # an empty keyword is in every name
        self._automaton: ahocorasick.Automaton | None = None
        if any(keywords):
            a = ahocorasick.Automaton()
            for kw, bits in keywords.items():
                if kw:
                    a.add_word(kw, bits)
            a.make_automaton()
            self._automaton = a
        patterns = list(regexes)
        self._regex_bits = [regexes[p] for p in patterns]
        self.regexes = UserRegexSet(patterns)

    @classmethod
    def from_sets(cls, sets: tuple[DomainSet, ...]) -> DomainMatcher:
        full: dict[str, int] = {}
        suffix: dict[str, int] = {}
        keywords: dict[str, int] = {}
        regexes: dict[str, int] = {}
        for s in sets:
            bit = 1 << s.bit
            for table, patterns in ((full, s.full), (suffix, s.suffix), (keywords, s.keyword), (regexes, s.regex)):
                for p in patterns:
                    table[p] = table.get(p, 0) | bit
        return cls(full, suffix, keywords, regexes)

    def bits(self, name: str) -> int:
        """Bitmask of the domain sets that `name` matches."""
        name = name.lower().rstrip(".")
        suffix = self.suffix.get
        out = self.full.get(name, 0) | suffix(name, 0) | self._always
        i = name.find(".")
        while i >= 0:
            out |= suffix(name[i + 1:], 0)
            i = name.find(".", i + 1)
        a = self._automaton
        if a is not None:
            for _end, bits in a.iter(name):
                out |= bits
        if self._regex_bits:
            regex_bits = self._regex_bits
            for i in self.regexes.matching(name):
                out |= regex_bits[i]
        return out
