"""TLS ClientHello server_name (RFC 8446 4.1.2, RFC 6066 3), from the first bytes of a stream.

The hello may be split across several TLS records (a record holds at most 2^14 bytes, and some
clients and middleboxes fragment on purpose) and across TCP segments: `sniff` takes everything
read so far, reassembles the handshake bytes from consecutive handshake records and answers
NEED_MORE until the whole ClientHello is there. Bounds: a record's length at most 2^14 + 2048
(RFC 8446 5.2, the ciphertext bound, so a plaintext one above it is malformed) and a ClientHello
at most MAX_HELLO bytes; past either it is NO, so a caller reading for a name reads a bounded
amount.
"""
from __future__ import annotations

from .result import NEED_MORE, NO, Verdict, valid_name

RECORD_HEADER = 5
MAX_RECORD = (1 << 14) + 2048
MAX_HELLO = 1 << 16  # post-quantum key shares make ~2 KiB hellos; 64 KiB is far beyond any seen
HANDSHAKE = 0x16
CLIENT_HELLO = 1
EXT_SERVER_NAME = 0
HOST_NAME = 0


def sniff(data: bytes) -> str | Verdict:
    """The server name of the ClientHello at the start of `data` (TLS records)."""
    hello = bytearray()
    pos = 0
    want: int | None = None  # the handshake message's total length, once its header is in
    while True:
        if len(data) - pos < RECORD_HEADER:
            return NEED_MORE if _plausible_prefix(data, pos) else NO
        ctype, major, length = data[pos], data[pos + 1], int.from_bytes(data[pos + 3:pos + 5], "big")
        if ctype != HANDSHAKE or major != 3 or length == 0 or length > MAX_RECORD:
            return NO
        fragment = data[pos + RECORD_HEADER:pos + RECORD_HEADER + length]
        hello += fragment
        if want is None and len(hello) >= 4:
            if hello[0] != CLIENT_HELLO:
                return NO
            want = 4 + int.from_bytes(hello[1:4], "big")
            if want > MAX_HELLO:
                return NO
        if want is not None and len(hello) >= want:
            return client_hello_sni(bytes(hello[4:want]))
        if len(fragment) < length:  # this record is still arriving
            return NEED_MORE
        pos += RECORD_HEADER + length


def _plausible_prefix(data: bytes, pos: int) -> bool:
    """Could the record header starting at `pos` (cut short) be a handshake record's?"""
    head = data[pos:]
    return (not head or head[0] == HANDSHAKE) and (len(head) < 2 or head[1] == 3)


def client_hello_sni(body: bytes) -> str | Verdict:
    """The host_name in a ClientHello's body (after its 4-byte handshake header): a name, or NO
    (malformed, or no server_name extension with a valid host name)."""
    try:
        return _sni(memoryview(body))
    except IndexError:
        return NO


def _sni(b: memoryview) -> str | Verdict:
    end = len(b)
    p = 2 + 32  # legacy_version, random
    p += 1 + b[p]  # legacy_session_id
    p += 2 + (b[p] << 8 | b[p + 1])  # cipher_suites
    p += 1 + b[p]  # legacy_compression_methods
    if p == end:
        return NO  # no extensions (SSL 3.0-era hello)
    ext_end = p + 2 + (b[p] << 8 | b[p + 1])
    if ext_end > end:
        return NO
    p += 2
    while p + 4 <= ext_end:
        etype, elen = b[p] << 8 | b[p + 1], b[p + 2] << 8 | b[p + 3]
        p += 4
        if p + elen > ext_end:
            return NO
        if etype == EXT_SERVER_NAME:
            return _host_name(b[p:p + elen])
        p += elen
    return NO


def _host_name(ext: memoryview) -> str | Verdict:
    if len(ext) < 2:
        return NO
    list_end = 2 + (ext[0] << 8 | ext[1])
    if list_end > len(ext):
        return NO
    p = 2
    while p + 3 <= list_end:
        kind, n = ext[p], ext[p + 1] << 8 | ext[p + 2]
        p += 3
        if p + n > list_end:
            return NO
        if kind == HOST_NAME:
            name = valid_name(bytes(ext[p:p + n]))
            return name if name is not None else NO
        p += n
    return NO
