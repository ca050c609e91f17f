"""sip(CIDR, geoip:TAG, ext:FILE:TAG): the source address."""
from __future__ import annotations

from ..ir import Field
from .base import FieldSpec

SPEC = FieldSpec(Field.SIP, ("sip",), "cidr", lambda f: f.src, operand="saddr")
