"""What a routing match field is, declared once: the type every `contract/fields/<name>.py` fills in.

A field module says which config function names select it, which IR value type its matches
carry, which datapath operand it reads, and how the reference evaluator tests a flow against it.
The checker, the passes, the evaluator and both C emitters read these declarations instead of
naming fields one by one, so a new field of an existing kind is one module and one registry line.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import TYPE_CHECKING, Any

from ..ir import CidrSet, DomainRef, Field, MatchValues, PortSet, ValueSet

if TYPE_CHECKING:
    from ..evaluate import Flow

# Value kinds: how a field's parameters are checked and which IR value type they become. The
# compiler has one shared checker and emitter per kind (compiler/fields/), so fields of one kind
# (dip and sip, dport and sport) share them and differ only in the data below.
KIND_TYPES: dict[str, type] = {
    "cidr": CidrSet, "ports": PortSet, "choice": ValueSet, "mac": ValueSet, "dscp": ValueSet,
    "pname": ValueSet, "domain": DomainRef,
}


@dataclass(frozen=True)
class FieldSpec:
    """One match field.

    `names` are the config function names (the first is the canonical one, equal to the IR's
    `Field` value); `operand` names the member of the datapath's `struct pkt` the field reads
    (None when the value comes from a map, as for pname and domain); `flow_value` picks the same
    value from an evaluator flow (None: the flow has no such value, and the match misses);
    `choices` maps parameter words to values for a `choice` field; `universe` is every value a
    classified packet can have, when that is a small set (lets the passes find `!f(all)` rules);
    `merges` says whether two positive matches of one rule may be intersected into one.
    """

    field: Field
    names: tuple[str, ...]
    kind: str
    flow_value: Callable[[Flow], Any]
    operand: str | None = None
    choices: dict[str, int] = dc_field(default_factory=dict)
    universe: tuple[Any, ...] | None = None
    merges: bool = True

    def __post_init__(self) -> None:
        if self.kind not in KIND_TYPES:
            raise ValueError(f"field {self.field.value}: unknown kind {self.kind!r}")
        if self.names[0] != self.field.value:
            raise ValueError(f"field {self.field.value}: its first name must be the IR's, not {self.names[0]!r}")

    @property
    def name(self) -> str:
        return self.field.value

    @property
    def value_type(self) -> type:
        return KIND_TYPES[self.kind]

    def matches(self, values: MatchValues, flow: Flow) -> bool:
        """Whether `flow` lies in `values` (negation is the caller's business)."""
        if not isinstance(values, self.value_type):
            raise TypeError(f"{self.name}(): {type(values).__name__} is not a {self.value_type.__name__}")
        v = self.flow_value(flow)
        if v is None:
            return False
        if isinstance(values, DomainRef):
            return bool(v >> values.bit & 1)
        return bool(values.contains(v))
