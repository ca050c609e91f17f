"""User regexes (domain(regex: ...), group filters, geosite regex entries): one compile function.

dae compiles these with Go's regexp package, which is RE2: linear-time matching, no
backreferences or lookaround, repeat counts up to 1000. Python's `re` backtracks (a filter such as
`(a+)+$` ran for minutes) and accepts syntax dae rejects, so user regexes go through google-re2,
which has Go's syntax and guarantees. RE2's parser reads a repeat count too large for an int
(`a{4294967296}`) as literal text where Go rejects it; `_REPEAT` restores Go's answer.
"""
from __future__ import annotations

import re
from functools import lru_cache
from typing import Protocol

import re2

MAX_REPEAT = 1000  # Go regexp/syntax: "invalid repeat count" above this
MAX_PATTERN_CHARS = 64 * 1024
MAX_MEM = 8 << 20  # RE2's own default program budget, made explicit

# `{n}`, `{n,}` or `{n,m}` not preceded by an escaping backslash.
_REPEAT = re.compile(r"(?<!\\)\{([0-9]+)(?:,([0-9]*))?\}")


class UserRegex(Protocol):
    def search(self, text: str) -> object | None: ...


def _options() -> re2.Options:
    opts = re2.Options()
    opts.log_errors = False  # RE2 would print every rejected pattern to stderr
    opts.max_mem = MAX_MEM
    return opts


@lru_cache(maxsize=4096)
def compile_user_regex(pattern: str) -> UserRegex:
    """Compile with RE2 (Go) semantics; raises ValueError with a message fit for the user."""
    if len(pattern) > MAX_PATTERN_CHARS:
        raise ValueError(f"regex is longer than {MAX_PATTERN_CHARS} characters")
    for m in _REPEAT.finditer(pattern):
        counts = [c for c in m.groups() if c]
        if any(len(c) > 6 or int(c) > MAX_REPEAT for c in counts):
            raise ValueError(f"invalid repeat count {m.group(0)!r} (at most {MAX_REPEAT}, as in dae/Go)")
    try:
        return re2.compile(pattern, _options())
    except re2.error as exc:
        reason = exc.args[0].decode("utf-8", "replace") if exc.args and isinstance(exc.args[0], bytes) else str(exc)
        raise ValueError(reason) from None
    except (TypeError, UnicodeError) as exc:  # e.g. a lone surrogate that has no UTF-8 form
        raise ValueError(str(exc)) from None


SET_MAX_MEM = 64 << 20  # the set's program and DFA budget: 1k geosite regexes need a few MiB
SET_MAX_TEXT = 1024  # longer texts are searched one regex at a time (see UserRegexSet)


class UserRegexSet:
    """Many user regexes searched in one pass (RE2::Set, one DFA over all of them): which of them
    match `text`. Each pattern is first checked and compiled alone by `compile_user_regex`, so
    the errors and the dialect are that function's; the set only makes the search cheaper
    (1k geosite regexes: one DFA walk over the name instead of 1k searches).

    RE2::Set reports a DFA that ran out of memory as "no match" (the Python binding drops the
    flag), so the set is only trusted where that cannot happen: texts of at most SET_MAX_TEXT
    characters (a DNS name has at most 253; a search adds at most one DFA state per input byte)
    under a SET_MAX_MEM budget. Longer texts, and sets RE2 will not compile within the budget,
    are searched one regex at a time, with the same answers."""

    def __init__(self, patterns: list[str]) -> None:
        self.patterns = patterns
        self.compiled = [compile_user_regex(p) for p in patterns]
        self._set: re2.Set | None = None
        if patterns:
            opts = _options()
            opts.max_mem = SET_MAX_MEM
            s = re2.Set.SearchSet(opts)
            try:
                for p in patterns:
                    s.Add(p)
                s.Compile()
            except re2.error:
                return  # stays None: one regex at a time
            self._set = s

    @property
    def uses_set(self) -> bool:
        return self._set is not None

    def matching(self, text: str) -> list[int]:
        """Indexes (into `patterns`) of the regexes that `text` matches anywhere (a search)."""
        s = self._set
        if s is not None and len(text) <= SET_MAX_TEXT:
            found: object = s.Match(text)  # a list of indexes or None (the stubs' `bool | None` is wrong)
            return found if isinstance(found, list) else []
        return [i for i, rx in enumerate(self.compiled) if rx.search(text)]
