"""The DNS rule functions (`dns.routing.request/response.rules`): one module each, listed once.

The compiler checks a call through `spec(name).check`, the settings pass asks `functions(section)`
which names a section allows, and the runtime loads and matches calls through the same specs.
"""
from __future__ import annotations

from . import ip, qname, qtype, upstream
from .base import CheckContext, DnsFieldSpec, Query

DNS_FIELDS: tuple[DnsFieldSpec, ...] = (
    qname.SPEC,
    qtype.SPEC,
    upstream.SPEC,
    ip.SPEC,
)

_BY_NAME: dict[str, DnsFieldSpec] = {s.name: s for s in DNS_FIELDS}


def spec(name: str) -> DnsFieldSpec | None:
    """The DNS rule function called `name`, or None."""
    return _BY_NAME.get(name)


def functions(section: str) -> tuple[str, ...]:
    """The function names a section ('request' or 'response') allows, in registry order."""
    return tuple(s.name for s in DNS_FIELDS if section in s.sections)


__all__ = ["DNS_FIELDS", "CheckContext", "DnsFieldSpec", "Query", "functions", "spec"]
