"""The parsed form of one routing rule, before any meaning is given to it.

Offsets are 0-based character positions inside the rule string, so that later stages can point
at the exact token when they report a problem.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple


class Param(NamedTuple):
    """One parameter of a call. A NamedTuple rather than a frozen dataclass: a rule can carry
    100,000 of them, and a NamedTuple is built ~3x faster (same fields, equality and hash)."""

    key: str | None
    value: str
    offset: int  # of the value (of the key when there is one)
    value_offset: int
    quoted: bool
    raw_key: str | None = None  # the key as written, for values such as bare MACs that contain ':'


@dataclass(frozen=True)
class Call:
    name: str
    params: tuple[Param, ...]
    offset: int
    negated: bool = False
    has_parens: bool = True


@dataclass(frozen=True)
class RuleAst:
    calls: tuple[Call, ...]
    outbound: Call
    text: str
