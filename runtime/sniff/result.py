"""What a sniffer answers besides a name, and the one check every sniffed name passes."""
from __future__ import annotations

import enum
import ipaddress

MAX_NAME = 253  # RFC 1035 presentation length without the trailing dot
_LABEL_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_")


class Verdict(enum.Enum):
    NEED_MORE = "need more"  # the start of this protocol: read more and ask again
    NO = "no"  # not this protocol, malformed, or it names no server


NEED_MORE = Verdict.NEED_MORE
NO = Verdict.NO


def valid_name(raw: bytes | str) -> str | None:
    """`raw` as a name the relay may route by and hand to a proxy: ASCII letters, digits, '-' and
    '_' in labels of 1..63 characters, at most 253 in all, lowercased, one trailing dot dropped.
    IP literals are not names (there is nothing to route or dial by that the address does not
    already say). Anything else is None: a sniffed name is attacker-chosen text that ends up in
    SOCKS5/HTTP requests and log lines."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode("ascii")
        except UnicodeDecodeError:
            return None
    else:
        text = raw
    name = text.lower()
    if name.endswith("."):
        name = name[:-1]
    if not name or len(name) > MAX_NAME:
        return None
    for label in name.split("."):
        if not 0 < len(label) <= 63 or not _LABEL_CHARS.issuperset(label):
            return None
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return name
    return None
