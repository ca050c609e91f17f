"""The SNI of a QUIC client's first flight: Initial packets decrypted with the keys anyone can
derive from the packet's Destination Connection ID (RFC 9001 5.2, RFC 9369 3.3.1 for v2).

Per packet: long header, version 1 or 2, Initial type; client Initial secret = HKDF-Expand-Label
of HKDF-Extract(version salt, DCID); header protection removed with AES-128-ECB over the sample
(RFC 9001 5.4); payload opened with AES-128-GCM, nonce = IV xor packet number. Frames: PADDING,
PING, ACK and CRYPTO (RFC 9000 17.2.2 allows nothing else but CONNECTION_CLOSE in an Initial);
CRYPTO data is placed by its offset, so frames out of order and a ClientHello spread over several
Initial packets (Chrome's with post-quantum key shares is) reassemble into one handshake stream.
Datagrams may coalesce packets (RFC 9000 12.2): each long-header packet is walked by its Length.

`sniff(datagrams)` is pure: the relay keeps the datagrams of a flow until it answers.
"""
from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

from .result import NEED_MORE, NO, Verdict
from .tls import CLIENT_HELLO, MAX_HELLO, client_hello_sni

V1 = 0x00000001
V2 = 0x6B3343CF
SALTS = {V1: bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a"),
         V2: bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")}
LABELS = {V1: (b"quic key", b"quic iv", b"quic hp"), V2: (b"quicv2 key", b"quicv2 iv", b"quicv2 hp")}
INITIAL_TYPE = {V1: 0b00, V2: 0b01}  # the long header's packet type bits (RFC 9369 3.2)
MAX_DATAGRAMS = 16  # a first flight is 1-3 datagrams; a sender of more is not sending a hello
MAX_CID = 20


def sniff(datagrams: Sequence[bytes]) -> str | Verdict:
    """The ClientHello's server name in the Initial packets of `datagrams` (in arrival order)."""
    chunks: dict[int, bytes] = {}
    seen_initial = False
    for dgram in datagrams[:MAX_DATAGRAMS]:
        for payload in _initial_payloads(dgram):
            if payload is None:
                return NO
            seen_initial = True
            if not _crypto_frames(payload, chunks):
                return NO
    if not seen_initial:
        return NO
    stream = _contiguous(chunks)
    if len(stream) < 4:
        return NEED_MORE
    if stream[0] != CLIENT_HELLO:
        return NO
    want = 4 + int.from_bytes(stream[1:4], "big")
    if want > MAX_HELLO:
        return NO
    if len(stream) < want:
        return NEED_MORE
    return client_hello_sni(stream[4:want])


def looks_like_initial(datagram: bytes) -> bool:
    """A cheap first test (no crypto): a long header of version 1 or 2 with the Initial type."""
    if len(datagram) < 7 or datagram[0] & 0xC0 != 0xC0:
        return False
    version = int.from_bytes(datagram[1:5], "big")
    return version in SALTS and (datagram[0] >> 4) & 0b11 == INITIAL_TYPE[version]


def _initial_payloads(dgram: bytes) -> list[bytes | None]:
    """The decrypted payloads of the Initial packets in one datagram; None for an Initial that
    does not open (not QUIC, or not a client's Initial). Other packet types are skipped."""
    out: list[bytes | None] = []
    pos = 0
    while pos < len(dgram):
        first = dgram[pos]
        if first & 0x80 == 0:  # a short header runs to the datagram's end: never an Initial
            break
        parsed = _long_header(dgram, pos)
        if parsed is None:
            if not out:  # the datagram's first packet: this is not QUIC
                out.append(None)
            break
        version, ptype, dcid, pn_offset, end = parsed
        if version in SALTS and ptype == INITIAL_TYPE[version]:
            out.append(_open(dgram[pos:end], pn_offset - pos, version, dcid))
        pos = end
    return out


def _long_header(d: bytes, pos: int) -> tuple[int, int, bytes, int, int] | None:
    """(version, type, DCID, packet number offset, packet end) of the long-header packet at pos."""
    try:
        if d[pos] & 0x40 == 0:
            return None  # fixed bit clear: not QUIC v1/v2
        version = int.from_bytes(d[pos + 1:pos + 5], "big")
        if version not in SALTS:
            return None
        p = pos + 5
        dcid_len = d[p]
        if dcid_len > MAX_CID:
            return None
        dcid = d[p + 1:p + 1 + dcid_len]
        p += 1 + dcid_len
        scid_len = d[p]
        if scid_len > MAX_CID:
            return None
        p += 1 + scid_len
        ptype = (d[pos] >> 4) & 0b11
        if ptype == INITIAL_TYPE[version]:
            token_len, p = _varint(d, p)
            p += token_len
        elif ptype == (0b11 if version == V1 else 0b00):  # Retry: no Length field, runs to the end
            return version, ptype, dcid, len(d), len(d)
        length, p = _varint(d, p)
    except IndexError:
        return None
    end = p + length
    if len(dcid) != dcid_len or end > len(d) or length < 20:
        return None
    return version, ptype, dcid, p, end


def _varint(d: bytes, p: int) -> tuple[int, int]:
    """RFC 9000 16: a 1/2/4/8-byte integer, its length in the top two bits."""
    n = 1 << (d[p] >> 6)
    if p + n > len(d):
        raise IndexError("varint cut short")
    v = d[p] & 0x3F
    for i in range(1, n):
        v = v << 8 | d[p + i]
    return v, p + n


@lru_cache(maxsize=256)
def _keys(version: int, dcid: bytes) -> tuple[AESGCM, bytes, bytes]:
    """(AEAD, IV, header protection key) of a client's Initial packets for `dcid`."""
    import hmac

    initial = hmac.new(SALTS[version], dcid, "sha256").digest()  # HKDF-Extract
    client = _expand_label(initial, b"client in", 32)
    key_label, iv_label, hp_label = LABELS[version]
    return (AESGCM(_expand_label(client, key_label, 16)), _expand_label(client, iv_label, 12),
            _expand_label(client, hp_label, 16))


def _expand_label(secret: bytes, label: bytes, length: int) -> bytes:
    """TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446 7.1)."""
    full = b"tls13 " + label
    info = struct.pack("!HB", length, len(full)) + full + b"\x00"
    return HKDFExpand(hashes.SHA256(), length, info).derive(secret)


def _open(packet: bytes, pn_offset: int, version: int, dcid: bytes) -> bytes | None:
    aead, iv, hp = _keys(version, dcid)
    sample = packet[pn_offset + 4:pn_offset + 20]
    if len(sample) < 16:
        return None
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    first = packet[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 0x03) + 1
    pn_bytes = bytes(packet[pn_offset + i] ^ mask[1 + i] for i in range(pn_len))
    header = bytes([first]) + packet[1:pn_offset] + pn_bytes
    nonce = (int.from_bytes(iv, "big") ^ int.from_bytes(pn_bytes, "big")).to_bytes(12, "big")
    try:
        return aead.decrypt(nonce, packet[pn_offset + pn_len:], header)
    except (InvalidTag, ValueError):
        return None


def _crypto_frames(payload: bytes, chunks: dict[int, bytes]) -> bool:
    """Collect the CRYPTO frames of one Initial payload into `chunks` (offset -> data); False on
    a frame an Initial may not carry or a malformed one."""
    p = 0
    try:
        while p < len(payload):
            ftype = payload[p]
            if ftype == 0x00 or ftype == 0x01:  # PADDING, PING
                p += 1
            elif ftype in (0x02, 0x03):  # ACK (with ECN counts for 0x03)
                p += 1
                _largest, p = _varint(payload, p)
                _delay, p = _varint(payload, p)
                ranges, p = _varint(payload, p)
                _first, p = _varint(payload, p)
                for _ in range(min(ranges, len(payload))):
                    _gap, p = _varint(payload, p)
                    _len, p = _varint(payload, p)
                if ftype == 0x03:
                    for _ in range(3):
                        _n, p = _varint(payload, p)
            elif ftype == 0x06:  # CRYPTO
                offset, p = _varint(payload, p + 1)
                length, p = _varint(payload, p)
                if p + length > len(payload) or offset + length > MAX_HELLO:
                    return False
                chunks[offset] = payload[p:p + length]
                p += length
            elif ftype in (0x1C, 0x1D):  # CONNECTION_CLOSE: the client gives up
                return False
            else:
                return False
    except IndexError:
        return False
    return True


def _contiguous(chunks: dict[int, bytes]) -> bytes:
    """The stream bytes from offset 0 as far as they run without a gap (overlaps allowed)."""
    out = bytearray()
    for offset in sorted(chunks):
        data = chunks[offset]
        if offset > len(out):
            break
        if offset + len(data) > len(out):
            out += data[len(out) - offset:]
    return bytes(out)
