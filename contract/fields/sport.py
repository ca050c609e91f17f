"""sport(PORT, LO-HI): the source port."""
from __future__ import annotations

from ..ir import Field
from .base import FieldSpec

SPEC = FieldSpec(Field.SPORT, ("sport",), "ports", lambda f: f.sport, operand="sport")
