"""dport(PORT, LO-HI), also spelt port(): the destination port."""
from __future__ import annotations

from ..ir import Field
from .base import FieldSpec

SPEC = FieldSpec(Field.DPORT, ("dport", "port"), "ports", lambda f: f.dport, operand="dport")
