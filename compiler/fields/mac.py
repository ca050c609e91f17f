"""MAC fields (mac): colon or dash separated addresses; in C, 48-bit compares behind has_mac."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dae_py.contract.fields import FieldSpec
from dae_py.contract.ir import Match, ValueSet
from dae_py.contract.values import format_mac, parse_mac

from .. import cexpr
from ..rules import Call
from .common import Locate

if TYPE_CHECKING:
    from ..check import RoutingChecker
    from ..emit_linear import LargeSets


def check_macs(checker: RoutingChecker, spec: FieldSpec, call: Call, locate: Locate) -> ValueSet | None:
    vals, ok = [], True
    for p in call.params:
        text = p.value if p.key is None else f"{p.raw_key}{p.value}"
        try:
            vals.append(parse_mac(text))
        except ValueError as exc:
            # A bare MAC lexes as 'key: value' (its first octet is the key): point at its start.
            checker.diags.error(locate(p.value_offset if p.key is None else p.offset), str(exc))
            ok = False
    return ValueSet(tuple(vals)) if ok else None


def linear_expr(spec: FieldSpec, m: Match, large: LargeSets) -> str:
    v = m.values
    assert isinstance(v, ValueSet)
    return "(p->has_mac && " + cexpr.any_of(
        [f"p->{spec.operand} == 0x{x:012x}ULL /* {format_mac(x)} */" for x in v.values]) + ")"
