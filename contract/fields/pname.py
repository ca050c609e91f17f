"""pname(NAME): the name of the local process that opened the socket (the kernel keeps 15 bytes)."""
from __future__ import annotations

from ..ir import Field
from .base import FieldSpec

SPEC = FieldSpec(Field.PNAME, ("pname",), "pname", lambda f: None if f.pname is None else f.pname[:15])
