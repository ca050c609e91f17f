"""l4proto(tcp, udp): the transport protocol."""
from __future__ import annotations

from ..ir import L4_TCP, L4_UDP, Field
from .base import FieldSpec

SPEC = FieldSpec(Field.L4PROTO, ("l4proto",), "choice", lambda f: f.l4proto, operand="l4proto",
                 choices={"tcp": L4_TCP, "udp": L4_UDP}, universe=(L4_TCP, L4_UDP))
