"""A group's node filter, as dae writes it, in the form both halves evaluate.

`filter: [name(a, b), "subtag(sub1) && !name(keyword: hk)", "name(regex: '^us') [add_latency: 20ms]"]`:
the list is ORed, the calls of one filter ANDed, a call's parameters ORed, `!` negates a call;
`name()` matches the node's name (equal, `keyword:` substring, `regex:` search) and `subtag()`
the subscription it came from (a config node has none). No filter: every node.

The compiler checks the filter text and evaluates it on the config's nodes (its policy checks
need the selection); it writes the checked filter into the group's manifest entry, and the
runtime evaluates the same filter on the nodes it fetches from subscriptions (runtime/
subscriptions), so a node that appears in a subscription later joins the groups that select it.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .userregex import compile_user_regex

FUNCTIONS = ("name", "subtag")
KEYS = (None, "keyword", "regex")


@dataclass(frozen=True)
class Param:
    key: str | None  # None: equal
    value: str

    def to_json(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value}


@dataclass(frozen=True)
class Call:
    func: str  # "name" or "subtag"
    params: tuple[Param, ...]
    negated: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"func": self.func, "negated": self.negated, "params": [p.to_json() for p in self.params]}

    def matches(self, name: str, tag: str | None) -> bool:
        """Whether the call (before its `!`) matches the node."""
        subject = name if self.func == "name" else tag
        if subject is None:
            return False
        for p in self.params:
            if p.key is None and subject == p.value:
                return True
            if p.key == "keyword" and p.value in subject:
                return True
            if p.key == "regex" and compile_user_regex(p.value).search(subject) is not None:
                return True
        return False


@dataclass(frozen=True)
class Filter:
    """One entry of the list: calls ANDed, and the latency added to the nodes it selects."""

    calls: tuple[Call, ...]
    add_latency_ms: float = 0.0
    text: str = ""  # as written, for messages

    def to_json(self) -> dict[str, Any]:
        return {"text": self.text, "calls": [c.to_json() for c in self.calls], "add_latency_ms": self.add_latency_ms}

    def matches(self, name: str, tag: str | None) -> bool:
        return all(c.matches(name, tag) != c.negated for c in self.calls)


@dataclass(frozen=True)
class NodeFilter:
    """A group's whole filter; `filters == ()` selects every node (dae: no filter)."""

    filters: tuple[Filter, ...] = ()

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.filters]

    @classmethod
    def from_json(cls, raw: Sequence[Mapping[str, Any]] | None) -> NodeFilter:
        """Raises ValueError for a function or key this version does not know (a manifest of
        another version), and for a regex the dialect refuses."""
        filters = []
        for f in raw or ():
            calls = []
            for c in f.get("calls") or ():
                func = str(c.get("func"))
                if func not in FUNCTIONS:
                    raise ValueError(f"node filter: unknown function {func!r}")
                params = []
                for p in c.get("params") or ():
                    key = p.get("key")
                    if key not in KEYS:
                        raise ValueError(f"node filter: unknown key {key!r}")
                    if key == "regex":
                        compile_user_regex(str(p.get("value")))
                    params.append(Param(key, str(p.get("value"))))
                calls.append(Call(func, tuple(params), bool(c.get("negated"))))
            filters.append(Filter(tuple(calls), float(f.get("add_latency_ms") or 0.0), str(f.get("text") or "")))
        return cls(tuple(filters))

    def select(self, nodes: Iterable[tuple[str, str | None]]) -> dict[str, float]:
        """node name -> its add_latency (ms), for the nodes (name, tag) the filter selects: the
        first filter's nodes in the order given, then the second's, ... (dae's order, which
        `fixed(N)` counts in); a node several filters select keeps the first one's latency."""
        pool = list(nodes)
        if not self.filters:
            return {name: 0.0 for name, _ in pool}
        out: dict[str, float] = {}
        for f in self.filters:
            for name, tag in pool:
                if name not in out and f.matches(name, tag):
                    out[name] = f.add_latency_ms
        return out
