"""dscp(N): the DSCP code point, 0-63."""
from __future__ import annotations

from ..ir import Field
from .base import FieldSpec

SPEC = FieldSpec(Field.DSCP, ("dscp",), "dscp", lambda f: f.dscp, operand="dscp", universe=tuple(range(64)))
