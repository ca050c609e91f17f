"""The compiler's side of the match fields: one implementation per value kind, listed once.

`contract.fields` declares each field (names, kind, operand, evaluation); what the compiler adds
is the same for every field of a kind: all CIDR fields are checked and emitted by `cidr`, all
port fields by `ports`, and so on. A field whose compiler side differs from its kind's would get
its own module and a line in `OVERRIDES`; none does today.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dae_py.contract.fields import FieldSpec
from dae_py.contract.ir import Field, Match, MatchValues

from ..rules import Call
from . import choice, cidr, domain, dscp, mac, pname, ports
from .common import Locate

if TYPE_CHECKING:
    from ..check import RoutingChecker
    from ..emit_linear import LargeSets


@dataclass(frozen=True)
class FieldImpl:
    """How the compiler checks a call of a field into IR values, and writes a match as a C
    expression for the straight-line classifier."""

    check: Callable[[RoutingChecker, FieldSpec, Call, Locate], MatchValues | None]
    linear_expr: Callable[[FieldSpec, Match, LargeSets], str]


KINDS: dict[str, FieldImpl] = {
    "cidr": FieldImpl(cidr.check_cidrs, cidr.linear_expr),
    "ports": FieldImpl(ports.check_ports, ports.linear_expr),
    "choice": FieldImpl(choice.check_choice, choice.linear_expr),
    "mac": FieldImpl(mac.check_macs, mac.linear_expr),
    "dscp": FieldImpl(dscp.check_dscp, dscp.linear_expr),
    "pname": FieldImpl(pname.check_pnames, pname.linear_expr),
    "domain": FieldImpl(domain.check_domain, domain.linear_expr),
}

OVERRIDES: dict[Field, FieldImpl] = {}


def impl(spec: FieldSpec) -> FieldImpl:
    """The compiler's implementation of a field: its own, else its kind's."""
    return OVERRIDES.get(spec.field) or KINDS[spec.kind]


__all__ = ["KINDS", "OVERRIDES", "FieldImpl", "impl"]
