"""upstream(NAME): the upstream that answered (response rules only). The names are checked
against dns.upstream by the settings pass, which knows the upstreams."""
from __future__ import annotations

from typing import Any

from .base import CheckContext, DnsFieldSpec, Query


def _check(ctx: CheckContext, call: Any) -> dict[str, Any]:
    return {"upstreams": [p.value for p in call.params]}


def _load(raw: dict[str, Any]) -> frozenset[str]:
    return frozenset(raw.get("upstreams", ()))


def _matches(names: frozenset[str], q: Query) -> bool:
    return q.upstream in names


SPEC = DnsFieldSpec("upstream", ("response",), _check, _load, _matches)
