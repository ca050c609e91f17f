"""DSCP fields (dscp): numbers 0-63; in C, one 64-bit mask shifted by the packet's code point."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dae_py.contract.fields import FieldSpec
from dae_py.contract.ir import Match, ValueSet

from ..rules import Call, Param
from ..values import parse_int
from .common import Locate, keyless_values

if TYPE_CHECKING:
    from ..check import RoutingChecker
    from ..emit_linear import LargeSets


def _code_point(p: Param) -> int:
    v = parse_int(p.value)
    if not 0 <= v <= 63:
        raise ValueError(f"dscp {p.value!r} is out of range 0-63 (DSCP is 6 bits)")
    return v


def check_dscp(checker: RoutingChecker, spec: FieldSpec, call: Call, locate: Locate) -> ValueSet | None:
    vals = keyless_values(checker, call, locate, _code_point)
    return None if vals is None else ValueSet(tuple(vals))


def linear_expr(spec: FieldSpec, m: Match, large: LargeSets) -> str:
    v = m.values
    assert isinstance(v, ValueSet)
    mask = 0
    for x in v.values:
        mask |= 1 << x
    return f"((0x{mask:016x}ULL >> p->{spec.operand}) & 1) /* {spec.name} {', '.join(map(str, v.values))} */"
