"""The routing match fields: one module each, listed once here (sing-box's include/registry.go).

Everything that gives a field its meaning iterates this list or looks a field up in it: the
checker (`by_name`), the passes, the reference evaluator and the C emitters (`spec`). The order
is the order the emitters generate per-field code in, so it is part of the generated C.

Adding a field of an existing kind (say a second port field) is its `Field` member in `ir.py`
(the IR's JSON vocabulary), its module here and its line below: the checker, the passes, the
evaluator and the linear emitter need nothing else, nor does the bit-vector emitter for the
kinds with several members (cidr, ports), which reads `operand`: the member of `struct pkt` (parse.h)
the value is parsed into, which a field the datapath does not parse yet must add there. A new
kind adds its compiler implementation to `compiler/fields/` and a line to its `KINDS`.
"""
from __future__ import annotations

from ..ir import Field
from . import dip, domain, dport, dscp, ipversion, l4proto, mac, pname, sip, sport
from .base import KIND_TYPES, FieldSpec

FIELDS: tuple[FieldSpec, ...] = (
    l4proto.SPEC,
    ipversion.SPEC,
    dip.SPEC,
    sip.SPEC,
    dport.SPEC,
    sport.SPEC,
    mac.SPEC,
    dscp.SPEC,
    pname.SPEC,
    domain.SPEC,
)

_BY_FIELD: dict[Field, FieldSpec] = {s.field: s for s in FIELDS}
_BY_NAME: dict[str, FieldSpec] = {n: s for s in FIELDS for n in s.names}


def spec(fld: Field) -> FieldSpec:
    """The declaration of `fld` (KeyError for a field no module registers)."""
    return _BY_FIELD[fld]


def by_name(name: str) -> FieldSpec | None:
    """The field a config function name selects, or None."""
    return _BY_NAME.get(name)


def names() -> tuple[str, ...]:
    """Every config function name of a routing field, for 'did you mean'."""
    return tuple(_BY_NAME)


def of_kind(kind: str) -> tuple[FieldSpec, ...]:
    """The registered fields of one kind, in registry order."""
    return tuple(s for s in FIELDS if s.kind == kind)


__all__ = ["FIELDS", "KIND_TYPES", "FieldSpec", "by_name", "names", "of_kind", "spec"]
