"""Port fields (dport, sport): ports and ranges; in C, compares or a bit in a port-set bitmap."""
from __future__ import annotations

from typing import TYPE_CHECKING

from dae_py.contract.fields import FieldSpec
from dae_py.contract.ir import Match, PortSet

from .. import cexpr
from ..rules import Call
from ..values import parse_port_range
from .common import Locate, keyless_values

if TYPE_CHECKING:
    from ..check import RoutingChecker
    from ..emit_linear import LargeSets

SMALL_PORT_RANGES = 8


def check_ports(checker: RoutingChecker, spec: FieldSpec, call: Call, locate: Locate) -> PortSet | None:
    ranges = keyless_values(checker, call, locate, lambda p: parse_port_range(p.value))
    return None if ranges is None else PortSet(tuple(ranges))


def linear_expr(spec: FieldSpec, m: Match, large: LargeSets) -> str:
    v = m.values
    assert isinstance(v, PortSet)
    pf = f"p->{spec.operand}"
    if len(v.ranges) > SMALL_PORT_RANGES:
        return f"port_in_set({large.port_index(v)}, {pf})"
    return cexpr.ports(pf, v.ranges)
