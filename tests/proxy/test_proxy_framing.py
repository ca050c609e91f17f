"""Shadowsocks AEAD and Trojan framing against known vectors and independent implementations
(OpenSSL's EVP_BytesToKey, RFC 5869 HKDF written out with hmac), and round trips."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import struct
import subprocess

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dae_py.runtime.proxy import Node, trojan
from dae_py.runtime.proxy import shadowsocks as ss
from dae_py.runtime.proxy.socks5 import encode_addr


def hkdf_sha1(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 written out: extract then expand, with HMAC-SHA1."""
    prk = hmac.new(salt, ikm, hashlib.sha1).digest()
    okm, block = b"", b""
    for i in range(1, -(-length // 20) + 1):
        block = hmac.new(prk, block + info + bytes((i,)), hashlib.sha1).digest()
        okm += block
    return okm[:length]


def test_the_reference_hkdf_matches_rfc5869_test_case_4() -> None:
    okm = hkdf_sha1(bytes([0x0B] * 11), bytes(range(13)), bytes(range(0xF0, 0xFA)), 42)
    assert okm.hex() == ("085a01ea1b10f36933068b56efa5ad81a4f14b822f5b091568a9cdd4f155fda2"
                         "c22e422478d305f3f896")


@pytest.mark.parametrize("cipher", list(ss.CIPHERS))
def test_session_subkey_is_hkdf_sha1_with_info_ss_subkey(cipher: str) -> None:
    size = ss.CIPHERS[cipher].key_size
    master, salt = os.urandom(size), os.urandom(size)
    assert ss.session_subkey(master, salt) == hkdf_sha1(master, salt, b"ss-subkey", size)


@pytest.mark.parametrize("password", ["foobar", "p@ss:w0rd with spaces", "\u00fcml\u00e4ut"])
@pytest.mark.parametrize("size,openssl_cipher", [(16, "aes-128-cbc"), (32, "aes-256-cbc")])
def test_master_key_is_openssls_evp_bytes_to_key(password: str, size: int,
                                                 openssl_cipher: str) -> None:
    out = subprocess.run(["openssl", "enc", f"-{openssl_cipher}", "-md", "md5", "-nosalt", "-P",
                          "-k", password], capture_output=True, text=True, check=True).stdout
    key = next(line.split("=", 1)[1] for line in out.splitlines() if line.startswith("key"))
    assert ss.evp_bytes_to_key(password.encode(), size).hex().upper() == key.strip()


def test_known_evp_bytes_to_key_vector() -> None:
    assert ss.evp_bytes_to_key(b"foobar", 32).hex() == (
        "3858f62230ac3c915f300c664312c63f568378529614d22ddb49237d2f60bfdf")


def decode_chunks(cipher: ss.Cipher, master: bytes, wire: bytes) -> list[bytes]:
    """An independent reader of the TCP framing: salt, then (len, payload) pairs, nonce += 1."""
    salt, rest = wire[:cipher.salt_size], wire[cipher.salt_size:]
    aead = cipher.aead(hkdf_sha1(master, salt, b"ss-subkey", cipher.key_size))
    counter, out = 0, []
    while rest:
        size = struct.unpack("!H", aead.decrypt(counter.to_bytes(12, "little"), rest[:18], None))[0]
        payload = aead.decrypt((counter + 1).to_bytes(12, "little"), rest[18:18 + size + 16], None)
        out.append(payload)
        rest = rest[18 + size + 16:]
        counter += 2
    return out


def sealer_for(cipher: str) -> tuple[ss.Cipher, bytes, ss.Sealer]:
    c = ss.CIPHERS[cipher]
    master = ss.evp_bytes_to_key(b"pw", c.key_size)
    return c, master, ss.Sealer(c, master)


@pytest.mark.parametrize("cipher", list(ss.CIPHERS))
def test_sealed_chunks_decode_with_an_independent_reader(cipher: str) -> None:
    c, master, sealer = sealer_for(cipher)
    data = os.urandom(40000)
    wire = sealer.salt + sealer.seal(b"hello") + sealer.seal(data)
    chunks = decode_chunks(c, master, wire)
    assert [len(x) for x in chunks] == [5, 0x3FFF, 0x3FFF, 40000 - 2 * 0x3FFF]
    assert b"".join(chunks) == b"hello" + data


@pytest.mark.parametrize("cipher", list(ss.CIPHERS))
def test_opener_reads_a_stream_fed_one_byte_at_a_time(cipher: str) -> None:
    c, master, sealer = sealer_for(cipher)
    data = os.urandom(20000)
    wire = sealer.salt + sealer.seal(data)
    opener = ss.Opener(c, master)
    got = b"".join(opener.feed(wire[i:i + 1]) for i in range(len(wire)))
    assert got == data and not opener.mid_chunk


def test_opener_rejects_a_stream_sealed_with_another_password() -> None:
    c = ss.CIPHERS["aes-128-gcm"]
    sealer = ss.Sealer(c, ss.evp_bytes_to_key(b"right", 16))
    wire = sealer.salt + sealer.seal(b"data")
    with pytest.raises(InvalidTag):
        ss.Opener(c, ss.evp_bytes_to_key(b"wrong", 16)).feed(wire)


def test_udp_packet_is_salt_then_one_aead_with_nonce_zero() -> None:
    c = ss.CIPHERS["aes-256-gcm"]
    master = ss.evp_bytes_to_key(b"pw", 32)
    salt = bytes(range(32))
    plain = encode_addr("10.0.0.1", 53) + b"query"
    packet = ss.pack_udp(c, master, plain, salt)
    subkey = hkdf_sha1(master, salt, b"ss-subkey", 32)
    assert packet == salt + AESGCM(subkey).encrypt(bytes(12), plain, None)
    assert ss.unpack_udp(c, master, packet) == plain
    with pytest.raises(InvalidTag):
        ss.unpack_udp(c, ss.evp_bytes_to_key(b"other", 32), packet)
    with pytest.raises(ValueError):
        ss.unpack_udp(c, master, packet[:40])


def test_trojan_request_is_sha224_hex_crlf_cmd_address_crlf() -> None:
    req = trojan.request("pw", trojan.CMD_CONNECT, "example.com", 443)
    assert req == (hashlib.sha224(b"pw").hexdigest().encode() + b"\r\n\x01\x03\x0bexample.com"
                   + b"\x01\xbb\r\n")
    assert len(trojan.password_hash("x")) == 56


def test_trojan_udp_frames_round_trip_split_anywhere() -> None:
    frames = [("10.0.0.1", 53, b"a" * 100), ("fd00::1", 7, b""), ("host.test", 9, b"xyz")]
    wire = b"".join(trojan.udp_frame(*f) for f in frames)
    for cut in range(len(wire) + 1):
        buf = bytearray(wire[:cut])
        got = trojan.parse_udp_frames(buf)
        buf += wire[cut:]
        got += trojan.parse_udp_frames(buf)
        assert got == frames and not buf


def test_trojan_udp_frame_without_crlf_is_malformed() -> None:
    wire = bytearray(encode_addr("10.0.0.1", 53) + b"\x00\x01XYa")
    with pytest.raises(ValueError):
        trojan.parse_udp_frames(wire)


def test_node_repr_and_str_never_show_the_password() -> None:
    node = Node("n", "trojan", "10.0.0.1", 443, password="hunter2",
                link="trojan://hunter2@10.0.0.1:443")
    assert "hunter2" not in repr(node) and "hunter2" not in str(node)
    with pytest.raises(ValueError) as info:
        Node.from_manifest({"name": "n", "protocol": "ss", "port": 1, "password": "hunter2"})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize("size", [0x3FFF - 1, 0x3FFF, 0x3FFF + 1, 2 * 0x3FFF])
def test_opener_reads_a_stream_cut_in_three_around_every_unit_boundary(size: int) -> None:
    """Read boundaries within 20 bytes of every unit (salt, sealed length, sealed payload) and
    a one-byte read after each: the opener keeps only the cut unit and decodes all of it."""
    c, master, sealer = sealer_for("aes-128-gcm")
    data = os.urandom(size)
    wire = sealer.salt + bytes(sealer.seal(data))
    starts, pos = [c.salt_size], c.salt_size
    for start in range(0, size, ss.MAX_PAYLOAD):
        pos += 2 + ss.TAG_SIZE
        starts.append(pos)
        pos += min(ss.MAX_PAYLOAD, size - start) + ss.TAG_SIZE
        starts.append(pos)
    for start in starts:
        for cut in range(max(start - 20, 0), min(start + 21, len(wire))):
            opener = ss.Opener(c, master)
            got = b"".join(opener.feed(p) for p in (wire[:cut], wire[cut:cut + 1], wire[cut + 1:]))
            assert got == data and not opener.mid_chunk, cut


class HeldSends:
    """A raw stream whose sends wait for `go` before taking the bytes (as a full socket makes
    them wait), so writes of several streams hold their seal buffers at once."""

    def __init__(self, go: asyncio.Event) -> None:
        self.go = go
        self.wire = bytearray()

    async def sendall(self, data: bytes | bytearray | memoryview) -> None:
        await self.go.wait()
        self.wire += data

    async def recv(self, n: int = 0) -> bytes:
        return b""

    def unread(self, data: bytes) -> None:
        pass

    def take_pending(self) -> bytes:
        return b""

    def shutdown_write(self) -> None:
        pass

    def close(self) -> None:
        pass

    def abort(self) -> None:
        pass

    def splice_fd(self) -> int | None:
        return None


def test_bulk_writes_of_streams_waiting_at_once_each_keep_their_own_bytes() -> None:
    """Three streams' bulk writes (pooled seal buffers) all waiting on their sends, then a
    write larger than a pooled buffer: each stream's wire opens to exactly what it wrote."""
    c = ss.CIPHERS["aes-128-gcm"]
    node = Node("n", "ss", "192.0.2.1", 8388, password="pw", cipher=c.name)
    master = ss.evp_bytes_to_key(b"pw", c.key_size)

    async def scenario() -> None:
        go = asyncio.Event()
        raws = [HeldSends(go) for _ in range(3)]
        streams = [ss.ShadowsocksStream(raw, node, c, master) for raw in raws]
        go.set()
        for stream in streams:  # the first write: salt and target address
            await stream.sendall(b"\x01\x0a\x00\x00\x01\x00\x50")
        go.clear()
        payloads = [os.urandom(4 * ss.MAX_PAYLOAD + i) for i in range(3)]
        sends = [asyncio.ensure_future(s.sendall(p)) for s, p in zip(streams, payloads, strict=True)]
        await asyncio.sleep(0)
        go.set()
        await asyncio.gather(*sends)
        big = os.urandom(ss.SEAL_BUFFERS.size)  # sealed, larger than a pooled buffer
        await streams[0].sendall(big)
        for i, raw in enumerate(raws):
            opened = ss.Opener(c, master).feed(bytes(raw.wire))
            assert opened == b"\x01\x0a\x00\x00\x01\x00\x50" + payloads[i] + (big if i == 0 else b"")

    asyncio.run(scenario())
