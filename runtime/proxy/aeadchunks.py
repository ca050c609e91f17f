"""The AEAD chunk stream Shadowsocks sends after its salt (SIP004; SIP022 after its header),
shared by shadowsocks.py and shadowsocks2022.py (a module of its own: the two import each other)."""
from __future__ import annotations

import struct

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305


def seal_chunks(aead: AESGCM | ChaCha20Poly1305, counter: int, data: bytes | memoryview,
                max_payload: int) -> tuple[bytes, int]:
    """The AEAD chunk stream (SIP004, and SIP022 after its header): each piece of at most
    `max_payload` bytes as [sealed 2-byte length][sealed piece], nonces counting up from
    `counter` (12 bytes, little-endian). Returns the bytes and the next counter."""
    encrypt = aead.encrypt
    out = []
    n = counter
    for start in range(0, len(data), max_payload):
        piece = data[start:start + max_payload]
        out.append(encrypt(n.to_bytes(12, "little"), struct.pack("!H", len(piece)), None))
        out.append(encrypt((n + 1).to_bytes(12, "little"), piece, None))
        n += 2
    return b"".join(out), n
