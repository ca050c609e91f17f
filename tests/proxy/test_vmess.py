"""VMess and VLESS framing without a network: the KDF against an independent construction,
the sealed header and chunks round-trip, and bad nodes fail without showing their UUID.
(Interoperability itself is proven against v2ray 4.34 in test_vmess_lab.py.)"""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import socket
import struct
import uuid
import zlib
from typing import Any

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from dae_py.runtime.proxy import Destination, DialError, DialOptions, Node, ProxyAuthError, vless, vmess

UID = "b831381d-6324-4d53-ad4f-8cda48b30811"


def go_style_kdf(key: bytes, *path: bytes) -> bytes:
    """v2ray's KDF built from the standard library's HMAC, whose digestmod may be any hash
    constructor: each path element wraps the previous HMAC as the hash (what Go's hmac.New does
    with v2ray's hMacCreator)."""

    def level(keys: tuple[bytes, ...]) -> Any:
        if len(keys) == 1:
            return lambda data=b"": hmac.new(keys[0], data, hashlib.sha256)
        inner = level(keys[:-1])

        class Wrapped:
            digest_size = 32
            block_size = 64

            def __init__(self, data: bytes = b"") -> None:
                self._h = hmac.new(keys[-1], data, inner)

            def update(self, data: bytes) -> None:
                self._h.update(data)

            def digest(self) -> bytes:
                return self._h.digest()

            def copy(self) -> Wrapped:
                other = Wrapped.__new__(Wrapped)
                other._h = self._h.copy()
                return other

        return Wrapped

    return level((b"VMess AEAD KDF", *path))(key).digest()


@pytest.mark.parametrize("path", [(), (b"AES Auth ID Encryption",),
                                  (b"VMess Header AEAD Key", os.urandom(16), os.urandom(8))])
def test_the_kdf_is_the_nested_hmac_v2ray_builds(path: tuple[bytes, ...]) -> None:
    key = os.urandom(16)
    assert vmess.kdf(key, *path) == go_style_kdf(key, *path)


def test_fnv1a_and_cmd_key_known_values() -> None:
    assert vmess.fnv1a32(b"") == 0x811C9DC5 and vmess.fnv1a32(b"a") == 0xE40C292C
    assert vmess.cmd_key(uuid.UUID(UID).bytes) == hashlib.md5(
        uuid.UUID(UID).bytes + b"c48619fe-8f02-49e0-b9e9-edf763e17e21").digest()


def test_the_auth_id_decrypts_to_the_time_and_its_crc() -> None:
    key = vmess.cmd_key(uuid.UUID(UID).bytes)
    aid = vmess.auth_id(key, now=1_700_000_000, rand=b"\x01\x02\x03\x04")
    dec = Cipher(algorithms.AES(vmess.kdf(key, b"AES Auth ID Encryption")[:16]), modes.ECB()).decryptor()
    plain = dec.update(aid) + dec.finalize()
    assert struct.unpack("!q", plain[:8])[0] == 1_700_000_000 and plain[8:12] == b"\x01\x02\x03\x04"
    assert struct.unpack("!I", plain[12:])[0] == zlib.crc32(plain[:12])


def test_the_sealed_header_opens_as_a_server_would() -> None:
    key = vmess.cmd_key(uuid.UUID(UID).bytes)
    sec = vmess.SECURITIES["aes-128-gcm"]
    instr = vmess.instruction(b"\x11" * 16, b"\x22" * 16, 7, sec, vmess.CMD_TCP, "example.com", 443, b"")
    sealed = vmess.seal_header(key, instr)
    aid, length, nonce, body = sealed[:16], sealed[16:34], sealed[34:42], sealed[42:]
    size = struct.unpack("!H", AESGCM(vmess.kdf(key, b"VMess Header AEAD Key_Length", aid, nonce)[:16]).decrypt(
        vmess.kdf(key, b"VMess Header AEAD Nonce_Length", aid, nonce)[:12], length, aid))[0]
    plain = AESGCM(vmess.kdf(key, b"VMess Header AEAD Key", aid, nonce)[:16]).decrypt(
        vmess.kdf(key, b"VMess Header AEAD Nonce", aid, nonce)[:12], body, aid)
    assert size == len(plain) == len(instr) and plain == instr
    # ver, iv, key, V, opt (chunk stream), padding 0 | security 3, 0, cmd 1, port, domain
    assert plain[:33] == b"\x01" + b"\x11" * 16 + b"\x22" * 16
    assert plain[33:38] == bytes((7, 1, 3, 0, 1))
    assert plain[38:41] == struct.pack("!HB", 443, 2) and plain[41:53] == b"\x0bexample.com"
    assert struct.unpack("!I", plain[-4:])[0] == vmess.fnv1a32(plain[:-4])


def test_zero_sends_no_chunk_option_except_over_udp() -> None:
    zero = vmess.SECURITIES["zero"]
    tcp = vmess.instruction(bytes(16), bytes(16), 1, zero, vmess.CMD_TCP, "10.0.0.1", 80, b"")
    udp = vmess.instruction(bytes(16), bytes(16), 1, zero, vmess.CMD_UDP, "10.0.0.1", 53, b"")
    assert tcp[34:36] == bytes((0, 5)) and udp[34:36] == bytes((1, 5))


@pytest.mark.parametrize("name", ["aes-128-gcm", "chacha20-poly1305", "none"])
def test_chunks_round_trip_fed_a_byte_at_a_time(name: str) -> None:
    sec = vmess.SECURITIES[name]
    key, iv = os.urandom(16), os.urandom(16)
    data = os.urandom(50_000)
    wire = vmess.ChunkSealer(sec, key, iv).seal(data)
    opener = vmess.ChunkOpener(sec, key, iv)
    out = []
    for i in range(0, len(wire), 997):
        out += opener.feed(wire[i:i + 997])
    assert b"".join(out) == data and not opener.mid_chunk
    assert len(out) == -(-len(data) // vmess.MAX_CHUNK)
    end = struct.pack("!H", vmess.TAG if sec.aead else 0) + (
        AESGCM(key).encrypt(struct.pack("!H", len(out)) + iv[2:12], b"", None) if name == "aes-128-gcm" else b"")
    if name != "chacha20-poly1305":
        assert opener.feed(end) == [] and opener.ended


def test_the_chunk_nonce_counts_in_16_bits_like_v2ray() -> None:
    sec = vmess.SECURITIES["aes-128-gcm"]
    key, iv = os.urandom(16), os.urandom(16)
    sealer = vmess.ChunkSealer(sec, key, iv)
    sealer._count = 0xFFFF
    wire = sealer.seal(b"a") + sealer.seal(b"b")
    assert AESGCM(key).decrypt(b"\xff\xff" + iv[2:12], wire[2:2 + 17], None) == b"a"
    assert AESGCM(key).decrypt(b"\x00\x00" + iv[2:12], wire[21:], None) == b"b"


def test_a_tampered_chunk_fails_authentication() -> None:
    sec = vmess.SECURITIES["aes-128-gcm"]
    key, iv = os.urandom(16), os.urandom(16)
    wire = bytearray(vmess.ChunkSealer(sec, key, iv).seal(b"payload"))
    wire[-1] ^= 1
    with pytest.raises(InvalidTag):
        vmess.ChunkOpener(sec, key, iv).feed(bytes(wire))


def test_the_chacha_key_is_md5_chained() -> None:
    key = os.urandom(16)
    first = hashlib.md5(key).digest()
    assert vmess.chacha_key(key) == first + hashlib.md5(first).digest()


def test_addresses_encode_port_first() -> None:
    assert vmess.encode_address("10.0.0.1", 53) == b"\x00\x35\x01\x0a\x00\x00\x01"
    assert vmess.encode_address("::1", 80) == b"\x00\x50\x03" + bytes(15) + b"\x01"
    assert vmess.encode_address("a.b", 1) == b"\x00\x01\x02\x03a.b"


def test_the_vless_request() -> None:
    uid = uuid.UUID(UID).bytes
    assert vless.request(uid, vless.CMD_UDP, "10.0.0.1", 53) == (
        b"\x00" + uid + b"\x00\x02\x00\x35\x01\x0a\x00\x00\x01")


@pytest.mark.parametrize("protocol,username,cipher,why", [
    ("vmess", "not-a-uuid", "aes-128-gcm", "no valid UUID"),
    ("vmess", UID, "aes-256-cfb", "unsupported VMess security"),
    ("vless", "", None, "no valid UUID"),
])
def test_a_bad_node_fails_the_dial_without_showing_its_uuid(protocol: str, username: str,
                                                            cipher: str | None, why: str) -> None:
    node = Node("n", protocol, "127.0.0.1", 9, username=username, cipher=cipher)
    module = vmess if protocol == "vmess" else vless

    async def dial() -> None:
        await module.dial(node, Destination("10.0.0.1", 80), DialOptions())

    with pytest.raises(DialError) as info:
        asyncio.run(dial())
    assert why in str(info.value) and "node 'n'" in str(info.value)
    if username:
        assert username not in str(info.value)
    assert UID not in repr(node) and UID not in str(node)


def test_a_vmess_session_over_loopback_answers_and_closes() -> None:
    """A minimal server (the response format as v2ray writes it) answering one request: the
    stream strips the response header and opens the chunks."""
    received: dict[str, bytes] = {}

    async def scenario() -> bytes:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            key = vmess.cmd_key(uuid.UUID(UID).bytes)
            head = await reader.readexactly(42)
            aid, length, nonce = head[:16], head[16:34], head[34:42]
            size = struct.unpack("!H", AESGCM(vmess.kdf(key, b"VMess Header AEAD Key_Length", aid, nonce)[:16])
                                 .decrypt(vmess.kdf(key, b"VMess Header AEAD Nonce_Length", aid, nonce)[:12],
                                          length, aid))[0]
            plain = AESGCM(vmess.kdf(key, b"VMess Header AEAD Key", aid, nonce)[:16]).decrypt(
                vmess.kdf(key, b"VMess Header AEAD Nonce", aid, nonce)[:12],
                await reader.readexactly(size + 16), aid)
            iv, bkey, v = plain[1:17], plain[17:33], plain[33]
            sec = vmess.SECURITIES["chacha20-poly1305"]
            opener = vmess.ChunkOpener(sec, bkey, iv)
            chunks: list[bytes] = []
            while not chunks:
                chunks = opener.feed(await reader.read(4096))
            received["up"] = b"".join(chunks)
            rkey, riv = hashlib.sha256(bkey).digest()[:16], hashlib.sha256(iv).digest()[:16]
            rhead = bytes((v, 0, 0, 0))
            writer.write(AESGCM(vmess.kdf(rkey, b"AEAD Resp Header Len Key")[:16]).encrypt(
                vmess.kdf(riv, b"AEAD Resp Header Len IV")[:12], struct.pack("!H", len(rhead)), None))
            writer.write(AESGCM(vmess.kdf(rkey, b"AEAD Resp Header Key")[:16]).encrypt(
                vmess.kdf(riv, b"AEAD Resp Header IV")[:12], rhead, None))
            writer.write(vmess.ChunkSealer(sec, rkey, riv).seal(b"pong" * 5000))
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        node = Node("n", "vmess", "127.0.0.1", port, username=UID, cipher="chacha20-poly1305")
        stream = await vmess.dial(node, Destination("example.com", 80), DialOptions())
        await stream.sendall(b"ping")
        got = b""
        while data := await stream.recv():
            got += data
        stream.close()
        server.close()
        return got

    assert asyncio.run(scenario()) == b"pong" * 5000
    assert received["up"] == b"ping"


@pytest.mark.parametrize("protocol", ["vmess", "vless"])
@pytest.mark.parametrize("reset", [False, True])
def test_a_server_that_ends_before_answering(protocol: str, reset: bool,
                                             caplog: pytest.LogCaptureFixture) -> None:
    """A close before the response is a plain end of stream (v2ray ends so when the target
    closed without a byte, and when it refuses a VLESS user) with a line naming the node; a
    reset (our bytes unread: the request was never taken) is a ProxyAuthError."""

    async def scenario() -> bytes:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            if not reset:
                await reader.read(4096)
            else:
                await asyncio.sleep(0.2)  # our request unread in the socket
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        node = Node(f"n_{protocol}", protocol, "127.0.0.1", port, username=UID, cipher="aes-128-gcm")
        module = vmess if protocol == "vmess" else vless
        stream = await module.dial(node, Destination("10.0.0.1", 80), DialOptions())
        try:
            await stream.sendall(b"x" * 100)
            return await stream.recv()
        finally:
            stream.close()
            server.close()

    vmess._WARNED.clear()
    with caplog.at_level(logging.INFO):
        if reset:
            with pytest.raises(ProxyAuthError, match="reset the connection without a"):
                asyncio.run(scenario())
        else:
            assert asyncio.run(scenario()) == b""
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert f"node 'n_{protocol}'" in text and "wrong UUID" in text and UID not in text


@pytest.mark.parametrize("name", ["aes-128-gcm", "none"])
def test_chunks_round_trip_cut_in_three_around_every_unit_boundary(name: str) -> None:
    """Each read boundary within 20 bytes of a chunk's start (inside its length, its payload or
    its tag), then a one-byte read, then the rest: the opener keeps only the cut chunk and
    decodes all of it, both as datagrams and joined."""
    sec = vmess.SECURITIES[name]
    key, iv = os.urandom(16), os.urandom(16)
    data = os.urandom(2 * vmess.MAX_CHUNK + 5)
    wire = bytes(vmess.ChunkSealer(sec, key, iv).seal(data))
    step = vmess.MAX_CHUNK + 2 + (vmess.TAG if sec.aead else 0)
    for start in range(step, len(wire), step):
        for cut in range(start - 20, start + 21):
            joined, listed = vmess.ChunkOpener(sec, key, iv), vmess.ChunkOpener(sec, key, iv)
            parts = (wire[:cut], wire[cut:cut + 1], wire[cut + 1:])
            assert b"".join(bytes(joined.feed_joined(p)) for p in parts) == data, cut
            assert b"".join(b"".join(listed.feed(p)) for p in parts) == data, cut
            assert not joined.mid_chunk and not listed.mid_chunk
