"""Fields with a few named values (l4proto, ipversion): the spec's `choices`; in C, equalities."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dae_py.contract.fields import FieldSpec
from dae_py.contract.ir import Field, Match, ValueSet

from .. import cexpr
from ..diagnostics import did_you_mean
from ..rules import Call
from .common import Locate, no_key

if TYPE_CHECKING:
    from ..check import RoutingChecker
    from ..emit_linear import LargeSets


def check_choice(checker: RoutingChecker, spec: FieldSpec, call: Call, locate: Locate) -> ValueSet | None:
    allowed = spec.choices
    vals, ok = [], True
    for p in call.params:
        if not no_key(checker, call, p, locate):
            ok = False
            continue
        v = allowed.get(p.value.lower())
        if v is None:
            checker.diags.error(locate(p.value_offset), f"invalid {spec.name} {p.value!r} (expected "
                                + " or ".join(allowed) + ")", did_you_mean(p.value.lower(), allowed))
            ok = False
        else:
            vals.append(v)
    return ValueSet(tuple(vals)) if ok else None


# Values C has names for, per field: protocol numbers by their IPPROTO_ macro.
C_NAMES: dict[Field, dict[int, str]] = {Field.L4PROTO: cexpr.L4_NAMES}


def c_value(spec: FieldSpec, x: int) -> str:
    """A value as C writes it: its name where C has one, else the number."""
    return C_NAMES.get(spec.field, {}).get(x, str(x))


def linear_expr(spec: FieldSpec, m: Match, large: LargeSets) -> str:
    v = m.values
    assert isinstance(v, ValueSet)
    return cexpr.any_of([f"p->{spec.operand} == {c_value(spec, x)}" for x in v.values])
