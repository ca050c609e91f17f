"""mac(MAC): the source MAC address (none on a frame without an Ethernet header)."""
from __future__ import annotations

from ..ir import Field
from .base import FieldSpec

SPEC = FieldSpec(Field.MAC, ("mac",), "mac", lambda f: f.mac, operand="smac")
