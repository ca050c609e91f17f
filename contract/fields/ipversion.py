"""ipversion(4, 6): the IP version of the flow."""
from __future__ import annotations

from ..ir import Field
from .base import FieldSpec

SPEC = FieldSpec(Field.IPVERSION, ("ipversion",), "choice", lambda f: f.ipversion, operand="ipversion",
                 choices={"4": 4, "6": 6}, universe=(4, 6))
