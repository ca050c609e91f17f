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
