"""Process-name fields (pname): names as the kernel keeps them (15 bytes); in C, two 64-bit compares
of the name the cgroup hooks recorded for the socket."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dae_py.contract.fields import FieldSpec
from dae_py.contract.ir import Match, ValueSet

from .. import cexpr
from ..rules import Call
from .common import Locate, no_key

if TYPE_CHECKING:
    from ..check import RoutingChecker
    from ..emit_linear import LargeSets

TASK_COMM_LEN = 16


def check_pnames(checker: RoutingChecker, spec: FieldSpec, call: Call, locate: Locate) -> ValueSet | None:
    vals, ok = [], True
    for p in call.params:
        if not no_key(checker, call, p, locate):
            ok = False
            continue
        name = p.value
        if len(name.encode()) >= TASK_COMM_LEN:
            checker.diags.warning(locate(p.value_offset), f"process name {name!r} is longer than 15 bytes; "
                                  f"the kernel truncates names, so this matches "
                                  f"{name.encode()[:15].decode(errors='ignore')!r}")
            name = name.encode()[:15].decode(errors="ignore")
        vals.append(name)
        checker.pnames[name] = None
    return ValueSet(tuple(vals)) if ok else None


def linear_expr(spec: FieldSpec, m: Match, large: LargeSets) -> str:
    v = m.values
    assert isinstance(v, ValueSet)
    terms = []
    for name in v.values:
        lo, hi = cexpr.comm_words(name)
        terms.append(f"(proc->comm_lo == 0x{lo:016x}ULL && proc->comm_hi == 0x{hi:016x}ULL) /* {name} */")
    return "(proc && " + cexpr.any_of(terms) + ")"
