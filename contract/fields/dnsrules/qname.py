"""qname(suffix:, full:, keyword:, regex:, geosite:, ext:): the question's name, as domain() means it.

The compiler checks the parameters with the routing checker's domain() into a set of
`dns.domain_sets`; the call keeps its bit, and the runtime tests the bits the name matches.
"""
from __future__ import annotations

from typing import Any

from .base import CheckContext, DnsFieldSpec, Query


def _check(ctx: CheckContext, call: Any) -> dict[str, Any]:
    return {"domain_bit": ctx.domain_bit(call)}


def _load(raw: dict[str, Any]) -> int | None:
    bit = raw.get("domain_bit")
    return None if bit is None else int(bit)


def _matches(bit: int | None, q: Query) -> bool:
    return bit is not None and bool(q.qname_bits >> bit & 1)


SPEC = DnsFieldSpec("qname", ("request", "response"), _check, _load, _matches)
