"""Process-name fields (pname): names as the kernel keeps them (15 bytes); in C, two 64-bit compares
against each of the two names the cgroup hooks recorded for the socket (templates/bpf/cgroup.h):
the task's comm and its executable's basename."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dae_py.contract.fields import FieldSpec
from dae_py.contract.ir import Match, ValueSet

from .. import cexpr
from ..rules import Call, Param
from .common import Locate, keyless_values

if TYPE_CHECKING:
    from ..check import RoutingChecker
    from ..emit_linear import LargeSets

TASK_COMM_LEN = 16


def check_pnames(checker: RoutingChecker, spec: FieldSpec, call: Call, locate: Locate) -> ValueSet | None:
    def kernel_name(p: Param) -> str:
        name = p.value
        if len(name.encode()) >= TASK_COMM_LEN:
            name = name.encode()[:15].decode(errors="ignore")
            checker.diags.warning(locate(p.value_offset), f"process name {p.value!r} is longer than 15 bytes; "
                                  f"the kernel truncates names, so this matches {name!r}")
        checker.pnames[name] = None
        return name

    vals = keyless_values(checker, call, locate, kernel_name)
    return None if vals is None else ValueSet(tuple(vals))


def linear_expr(spec: FieldSpec, m: Match, large: LargeSets) -> str:
    v = m.values
    assert isinstance(v, ValueSet)
    terms = []
    for name in v.values:
        lo, hi = cexpr.comm_words(name)
        terms.append(f"(proc->comm_lo == 0x{lo:016x}ULL && proc->comm_hi == 0x{hi:016x}ULL) /* {name} */")
        terms.append(f"(proc->exe_lo == 0x{lo:016x}ULL && proc->exe_hi == 0x{hi:016x}ULL)")
    return "(proc && " + cexpr.any_of(terms) + ")"
