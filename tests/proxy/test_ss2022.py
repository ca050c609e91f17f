"""Shadowsocks 2022 pieces without a network: HChaCha20 against the XChaCha draft's test vector
(draft-irtf-cfrg-xchacha-03, 2.2.1), the reply checks a client must make (type, timestamp,
request salt, replayed salt), the UDP replay window and the key's form. The whole protocol is
proven against sing-box in test_ss2022_lab.py."""
from __future__ import annotations

import base64
import struct
import time

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dae_py.runtime.proxy import shadowsocks2022 as ss

AES128 = ss.METHODS["2022-blake3-aes-128-gcm"]
CHACHA = ss.METHODS["2022-blake3-chacha20-poly1305"]
PSK = bytes(range(16))


def test_hchacha20_matches_the_xchacha_drafts_vector() -> None:
    key = bytes(range(32))
    nonce = bytes.fromhex("000000090000004a0000000031415927")
    assert ss.hchacha20(key, nonce).hex() == (
        "82413b4227b27bfed30e42508a877d73a0f9e4d58a74a853c12ec41326d3ecdc")


def reply(request_salt: bytes, payload: bytes, *, kind: int = 1, stamp: int | None = None,
          salt: bytes | None = None, psk: bytes = PSK) -> bytes:
    """A server's response stream, built from the spec (section 3.1.2) with our own primitives."""
    server = ss.Sealer(AES128, psk, salt)
    fixed = struct.pack("!BQ", kind, int(time.time()) if stamp is None else stamp) + request_salt + \
        struct.pack("!H", len(payload))
    enc = server._enc  # the same counter-nonce AEAD the server uses
    return server.salt + enc(fixed) + enc(payload) + server.seal(b" and more")


def opener(request_salt: bytes) -> ss.Opener:
    return ss.Opener(AES128, PSK, request_salt, ss.SaltMemory())


def test_a_reply_fed_byte_by_byte_opens_to_its_payload() -> None:
    salt = bytes(16)
    data = reply(salt, b"hello")
    op = opener(salt)
    got = b"".join(op.feed(data[i:i + 1]) for i in range(len(data)))
    assert got == b"hello and more" and not op.mid_chunk


@pytest.mark.parametrize("kwargs,error", [
    ({"kind": 0}, "reply header type 0"),
    ({"stamp": int(time.time()) - 120}, "more than 30s off our clock"),
])
def test_a_reply_header_that_is_not_for_us_is_refused(kwargs: dict, error: str) -> None:
    salt = bytes(16)
    with pytest.raises(ss.HeaderError, match=error):
        opener(salt).feed(reply(salt, b"x", **kwargs))


def test_a_reply_to_another_request_or_a_replayed_salt_is_refused() -> None:
    with pytest.raises(ss.HeaderError, match="request salt differs"):
        opener(bytes(16)).feed(reply(b"\1" * 16, b"x"))
    memory = ss.SaltMemory()
    data = reply(bytes(16), b"x", salt=b"\7" * 16)
    ss.Opener(AES128, PSK, bytes(16), memory).feed(data)
    with pytest.raises(ss.HeaderError, match="seen before"):
        ss.Opener(AES128, PSK, bytes(16), memory).feed(data)


def test_a_reply_under_another_key_fails_authentication() -> None:
    with pytest.raises(InvalidTag):
        opener(bytes(16)).feed(reply(bytes(16), b"x", psk=b"\x09" * 16))


def test_the_request_header_always_has_padding_or_payload() -> None:
    sealer = ss.Sealer(AES128, PSK)
    data = sealer.header(b"\1\x7f\0\0\1\0\x50")
    aead = AES128.aead(ss.session_subkey(PSK, sealer.salt))
    fixed = aead.decrypt(ss.nonce(0), data[16:16 + 11 + 16], None)
    kind, _, length = struct.unpack("!BQH", fixed)
    variable = aead.decrypt(ss.nonce(1), data[16 + 27:], None)
    assert kind == 0 and len(variable) == length
    (padding,) = struct.unpack_from("!H", variable, 7)
    assert 1 <= padding <= ss.MAX_PADDING and len(variable) == 7 + 2 + padding


@pytest.mark.parametrize("method", [AES128, CHACHA], ids=["aes", "chacha"])
def test_udp_packets_round_trip_and_replays_are_dropped(method: ss.Method) -> None:
    psk = bytes(range(method.key_size))
    client = ss.UdpCodec(method, psk)
    server_session = b"S" * 8
    body = struct.pack("!BQ", 1, int(time.time())) + client.session_id + struct.pack("!H", 3) + b"pad" + \
        b"\1\x0a\0\0\1\x1b\x59" + b"answer"
    header = server_session + (5).to_bytes(8, "big")
    if method.chacha:
        nonce = b"n" * 24
        packet = nonce + ss.xchacha_seal(psk, nonce, header + body)
    else:
        ecb = Cipher(algorithms.AES(psk), modes.ECB()).encryptor()
        packet = ecb.update(header) + AESGCM(ss.session_subkey(psk, server_session)).encrypt(
            header[4:16], body, None)
    assert client.unpack(packet) == ("10.0.0.1", 7001, b"answer")
    with pytest.raises(ss.HeaderError, match="out-of-window"):
        client.unpack(packet)
    assert len(client.pack(b"\1\x0a\0\0\1\x1b\x59", b"q")) > 0 and client.packet_id == 1


def test_replay_window_accepts_late_packets_once_and_refuses_old_ones() -> None:
    window = ss.ReplayWindow()
    assert window.accept(10) and window.accept(8) and not window.accept(8)
    assert window.accept(2000) and not window.accept(10)  # fell out of the window


@pytest.mark.parametrize("password,error", [
    ("abc", "base64 of a 16-byte key"),
    (base64.b64encode(bytes(32)).decode(), "must be 16 bytes"),
    (base64.b64encode(bytes(16)).decode() + ":x", "multi-user"),
])
def test_a_key_of_the_wrong_form_is_refused_without_showing_it(password: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as info:
        ss.decode_psk(AES128, password)
    assert password not in str(info.value)
