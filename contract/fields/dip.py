"""dip(CIDR, geoip:TAG, ext:FILE:TAG), also spelt ip(): the destination address."""
from __future__ import annotations

from ..ir import Field
from .base import FieldSpec

SPEC = FieldSpec(Field.DIP, ("dip", "ip"), "cidr", lambda f: f.dst, operand="daddr")
