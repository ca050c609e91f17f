"""What a DNS rule field is: the type each `contract/fields/dnsrules/<name>.py` fills in.

DNS request and response rules (`dns.routing`) have their own small function set (qname, qtype,
upstream, ip). Each function is one module, listed once in this package's registry: it says in
which sections it may appear, checks its parameters into the manifest's form of a call (the
compiler runs this), reads that form back and matches a query against it (the runtime runs
these). Neither side names a function.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

IPNet = Any  # ipaddress.IPv4Network | ipaddress.IPv6Network, kept loose for the protocols below


class Param(Protocol):
    """A parsed parameter (compiler/rules/ast.py `Param`), as the checks read it."""

    @property
    def key(self) -> str | None: ...
    @property
    def value(self) -> str: ...
    @property
    def value_offset(self) -> int: ...


class CallSite(Protocol):
    """A parsed call (compiler/rules/ast.py `Call`), as the checks read it."""

    @property
    def name(self) -> str: ...
    @property
    def params(self) -> Sequence[Param]: ...


class CheckContext(Protocol):
    """What a check needs from the compiler: error reporting at a parameter, and the routing
    checker's own matchers, so that qname() means what domain() means and ip() what dip() means."""

    def error(self, offset: int, message: str, hint: str | None = None) -> None: ...
    def domain_bit(self, call: Any) -> int | None: ...
    def cidrs(self, call: Any) -> tuple[list[str], list[str]] | None: ...


class Query(Protocol):
    """What a rule may look at (runtime/dns/rules.py `Query`)."""

    @property
    def qtype(self) -> int: ...
    @property
    def qname_bits(self) -> int: ...
    @property
    def upstream(self) -> str | None: ...
    @property
    def ips(self) -> tuple[Any, ...]: ...


@dataclass(frozen=True)
class DnsFieldSpec:
    """One DNS rule function.

    `check` turns a call's parameters into the manifest keys of the call (besides `func` and
    `negated`); `load` reads those keys back into the value `matches` tests a query against.
    """

    name: str
    sections: tuple[str, ...]
    check: Callable[[CheckContext, Any], dict[str, Any]]
    load: Callable[[dict[str, Any]], Any]
    matches: Callable[[Any, Query], bool]
