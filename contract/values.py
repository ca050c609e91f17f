"""Scalar value parsers both halves need: the compiler for `mac()` rules, the runtime for
`dae-runtime explain --mac`. Each raises ValueError with a message fit to show the user as is."""
from __future__ import annotations

import re

_MAC = re.compile(r"^([0-9A-Fa-f]{2})([:-][0-9A-Fa-f]{2}){5}$")


def parse_mac(text: str) -> int:
    """'02:42:ac:11:00:02' -> 48-bit int (first octet most significant)."""
    if not _MAC.match(text.strip()):
        raise ValueError(f"invalid MAC address {text!r} (expected six hex octets like '02:42:ac:11:00:02')")
    return int(re.sub(r"[:-]", "", text.strip()), 16)


def format_mac(value: int) -> str:
    """48-bit int -> '02:42:ac:11:00:02'."""
    return ":".join(f"{(value >> (8 * (5 - i))) & 0xFF:02x}" for i in range(6))
