"""qtype(a, aaaa, https, 65, ...): the question's type, by name (dnspython's mnemonics) or number."""
from __future__ import annotations

from typing import Any

import dns.rdatatype

from .base import CheckContext, DnsFieldSpec, Query


def _check(ctx: CheckContext, call: Any) -> dict[str, Any]:
    types = []
    for p in call.params:
        try:
            types.append(int(p.value) if p.value.isdigit() else int(dns.rdatatype.from_text(p.value.upper())))
        except (ValueError, dns.rdatatype.UnknownRdatatype):
            ctx.error(p.value_offset, f"unknown DNS query type '{p.value}'",
                      "a type name such as a, aaaa, cname, https, or a number")
    return {"qtypes": types}


def _load(raw: dict[str, Any]) -> frozenset[int]:
    return frozenset(int(t) for t in raw.get("qtypes", ()))


def _matches(types: frozenset[int], q: Query) -> bool:
    return q.qtype in types


SPEC = DnsFieldSpec("qtype", ("request", "response"), _check, _load, _matches)
