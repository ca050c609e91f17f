"""Shadowsocks 2022 (SIP022: 2022-blake3-aes-128-gcm, -aes-256-gcm, -chacha20-poly1305), TCP and
UDP; `shadowsocks.dial`/`associate` hand a node with a `2022-` method here.

What differs from the 2017 AEAD edition (shadowsocks.py), per the spec's sections:
- 2.1 the password is the base64 of a key exactly as long as the method's (no EVP_BytesToKey);
- 2.2 session subkey = BLAKE3 derive_key("shadowsocks 2022 session subkey", key + salt);
- 3.1 TCP: salt + AEAD(type 0, timestamp, length) + AEAD(address, padding length, padding,
  initial payload), sent in one write, then length/payload chunks of up to 0xFFFF bytes. The
  reply starts with salt + AEAD(type 1, timestamp, request salt, length) + AEAD(first payload);
  a reply whose type, timestamp (30 s) or request salt is wrong, or whose salt was seen in the
  last 60 s, is refused. We always pad the request header (we send it before any payload, so a
  server-first protocol is not held up);
- 3.2 UDP (AES): AES-ECB(key) of the separate header (session id, packet id) + AEAD body under
  the session's subkey with nonce = header[4:16]; the body carries type, timestamp, padding and
  the SOCKS address (replies also the client session id); replies pass a sliding-window check
  per server session;
- 4.1 UDP (ChaCha20): a 24-byte random nonce + XChaCha20-Poly1305(key) of the whole message.
  XChaCha20 is not in `cryptography`: its HChaCha20 subkey is one ChaCha20 block with the state's
  input subtracted again (`hchacha20`), checked against the XChaCha draft's test vector.

A wrong key shows as a server that closes or never answers (a 2022 server must not say why);
the same per-node log line as the 2017 edition names the node and the likely cause.
"""
from __future__ import annotations

import base64
import binascii
import logging
import os
import socket
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher as BlockCipher
from cryptography.hazmat.primitives.ciphers import algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from dae_py.runtime.net.sockets import resolve, set_mark

from .aeadchunks import seal_chunks
from .base import Destination, DialError, DialOptions, Node, ProxyProtocolError, ReplyCallback
from .socks5 import decode_addr, encode_addr
from .udp import SocketAssociation

log = logging.getLogger(__name__.rpartition(".")[0] + ".shadowsocks")  # one logger for both editions

CONTEXT = "shadowsocks 2022 session subkey"
TAG = 16
NONCE = 12
MAX_CHUNK = 0xFFFF
MAX_PADDING = 900
TIME_WINDOW = 30.0  # seconds a timestamp may differ from ours
SALT_MEMORY = 60.0  # seconds a seen reply salt is remembered
TYPE_CLIENT, TYPE_SERVER = 0, 1


@dataclass(frozen=True)
class Method:
    name: str
    key_size: int
    chacha: bool  # TCP: ChaCha20-Poly1305; UDP: XChaCha20-Poly1305 (section 4)

    def aead(self, key: bytes) -> AESGCM | ChaCha20Poly1305:
        return ChaCha20Poly1305(key) if self.chacha else AESGCM(key)


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("2022-blake3-aes-128-gcm", 16, False),
    Method("2022-blake3-aes-256-gcm", 32, False),
    Method("2022-blake3-chacha20-poly1305", 32, True),
)}


class HeaderError(ValueError):
    """A reply whose header decrypted but does not belong to our request (or is a replay)."""


def decode_psk(method: Method, password: str) -> bytes:
    """The pre-shared key from the base64 password; ValueError if it is not one of the right size
    (the message never shows the password)."""
    if ":" in password:
        raise ValueError("multi-user keys (iPSK:uPSK, SIP023 identity headers) are not supported")
    try:
        key = base64.b64decode(password.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the password of a {method.name} node must be the base64 of a "
                         f"{method.key_size}-byte key") from None
    if len(key) != method.key_size:
        raise ValueError(f"the key of a {method.name} node must be {method.key_size} bytes "
                         f"(its base64 decodes to {len(key)})")
    return key


def session_subkey(psk: bytes, salt: bytes) -> bytes:
    return blake3.blake3(psk + salt, derive_key_context=CONTEXT).digest(len(psk))


def nonce(counter: int) -> bytes:
    return counter.to_bytes(NONCE, "little")


def _now() -> int:
    return int(time.time())


def _check_time(stamp: int) -> None:
    if abs(stamp - time.time()) > TIME_WINDOW:
        raise HeaderError(f"timestamp {stamp} is more than {TIME_WINDOW:g}s off our clock")


class SaltMemory:
    """Reply salts seen in the last 60 s (section 3.1.4: exact, no Bloom filter)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[bytes, float] = OrderedDict()

    def check_and_add(self, salt: bytes, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        while self._seen and next(iter(self._seen.values())) < now - SALT_MEMORY:
            self._seen.popitem(last=False)
        if salt in self._seen:
            raise HeaderError("the reply's salt was seen before (a replay)")
        self._seen[salt] = now


REPLY_SALTS = SaltMemory()


# --- TCP -----------------------------------------------------------------------------------------

class Sealer:
    """The request stream: `header` first (salt and both header chunks), then `seal`ed chunks."""

    def __init__(self, method: Method, psk: bytes, salt: bytes | None = None) -> None:
        self.salt = salt if salt is not None else os.urandom(method.key_size)
        self._aead = method.aead(session_subkey(psk, self.salt))
        self._counter = 0

    def _enc(self, plain: bytes | memoryview) -> bytes:
        out = self._aead.encrypt(nonce(self._counter), plain, None)
        self._counter += 1
        return out

    def header(self, address: bytes, payload: bytes = b"", padding: int | None = None,
               stamp: int | None = None) -> bytes:
        """salt + AEAD(fixed header) + AEAD(variable header): one write (section 3.1.3)."""
        if padding is None:
            padding = 0 if payload else 1 + int.from_bytes(os.urandom(2), "big") % MAX_PADDING
        variable = address + struct.pack("!H", padding) + os.urandom(padding) + payload
        fixed = struct.pack("!BQH", TYPE_CLIENT, _now() if stamp is None else stamp, len(variable))
        return self.salt + self._enc(fixed) + self._enc(variable)

    def seal(self, data: bytes | bytearray | memoryview) -> bytes | bytearray:
        out, self._counter = seal_chunks(self._aead, self._counter, data, MAX_CHUNK)
        return out


class Opener:
    """The response stream, fed as bytes arrive: salt, the fixed header (type 1, timestamp,
    our request salt, length), the first payload, then length/payload chunks.
    InvalidTag: not our key; HeaderError: a header that is not the reply to our request."""

    def __init__(self, method: Method, psk: bytes, request_salt: bytes,
                 salts: SaltMemory = REPLY_SALTS) -> None:
        self._method = method
        self._psk = psk
        self._request_salt = request_salt
        self._salts = salts
        self._aead: AESGCM | ChaCha20Poly1305 | None = None
        self._counter = 0
        self._buf = bytearray()
        self._need = method.key_size
        self._state = "salt"  # salt, header, payload, length
        self.received = 0

    @property
    def mid_chunk(self) -> bool:
        return bool(self._buf)

    def _dec(self, unit: bytes) -> bytes:
        assert self._aead is not None
        plain = self._aead.decrypt(nonce(self._counter), unit, None)
        self._counter += 1
        return plain

    def feed(self, data: bytes | bytearray) -> bytes:
        self.received += len(data)
        buf = self._buf
        buf += data
        out = []
        pos = 0
        while len(buf) - pos >= self._need:
            unit = bytes(buf[pos:pos + self._need])
            pos += self._need
            if self._state == "salt":
                self._salts.check_and_add(unit)
                self._aead = self._method.aead(session_subkey(self._psk, unit))
                self._state, self._need = "header", 1 + 8 + self._method.key_size + 2 + TAG
            elif self._state == "header":
                plain = self._dec(unit)
                kind, stamp = struct.unpack_from("!BQ", plain)
                salt = plain[9:9 + self._method.key_size]
                (length,) = struct.unpack_from("!H", plain, 9 + self._method.key_size)
                if kind != TYPE_SERVER:
                    raise HeaderError(f"reply header type {kind}, expected {TYPE_SERVER}")
                _check_time(stamp)
                if salt != self._request_salt:
                    raise HeaderError("the reply is not to our request (request salt differs)")
                self._state, self._need = "payload", length + TAG
            elif self._state == "payload":
                out.append(self._dec(unit))
                self._state, self._need = "length", 2 + TAG
            else:
                (length,) = struct.unpack("!H", self._dec(unit))
                self._state, self._need = "payload", length + TAG
        del buf[:pos]
        return b"".join(out)


def keys_of(node: Node) -> tuple[Method, bytes]:
    method = METHODS.get(node.cipher or "")
    if method is None:
        raise DialError(f"unsupported shadowsocks 2022 method {node.cipher!r}", node)
    try:
        return method, decode_psk(method, node.password or "")
    except ValueError as exc:
        raise DialError(str(exc), node) from None


def stream_parts(node: Node) -> tuple[Sealer, Opener]:
    method, psk = keys_of(node)
    sealer = Sealer(method, psk)
    return sealer, Opener(method, psk, sealer.salt)


def header_error(node: Node, exc: HeaderError) -> ProxyProtocolError:
    return ProxyProtocolError(f"the shadowsocks 2022 reply was refused: {exc}", node)


# --- UDP -----------------------------------------------------------------------------------------

def hchacha20(key: bytes, nonce16: bytes) -> bytes:
    """HChaCha20 (XChaCha draft, section 2.2): ChaCha20's first block with the input state
    subtracted again is the permuted state; words 0-3 and 12-15 are the subkey."""
    block = BlockCipher(algorithms.ChaCha20(key, nonce16), None).encryptor().update(bytes(64))
    out = struct.unpack("<16I", block)
    state = struct.unpack("<4I", b"expand 32-byte k") + struct.unpack("<8I", key) + struct.unpack("<4I", nonce16)
    words = [(o - s) & 0xFFFFFFFF for o, s in zip(out, state, strict=True)]
    return struct.pack("<8I", *(words[0:4] + words[12:16]))


def xchacha_seal(key: bytes, nonce24: bytes, plain: bytes) -> bytes:
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).encrypt(bytes(4) + nonce24[16:], plain, None)


def xchacha_open(key: bytes, nonce24: bytes, sealed: bytes) -> bytes:
    sub = hchacha20(key, nonce24[:16])
    return ChaCha20Poly1305(sub).decrypt(bytes(4) + nonce24[16:], sealed, None)


class ReplayWindow:
    """Section 3.2.4's sliding window over packet ids: the newest id and a bitmap of the 1024
    before it; a repeated or too old id is refused."""

    SIZE = 1024

    def __init__(self) -> None:
        self.top = -1
        self.bits = 0

    def accept(self, packet_id: int) -> bool:
        if packet_id > self.top:
            shift = packet_id - self.top
            self.bits = ((self.bits << shift) | 1) & ((1 << self.SIZE) - 1) if shift < self.SIZE else 1
            self.top = packet_id
            return True
        back = self.top - packet_id
        if back >= self.SIZE or self.bits >> back & 1:
            return False
        self.bits |= 1 << back
        return True


class UdpCodec:
    """One client UDP session: our session id and packet counter, the server sessions seen."""

    def __init__(self, method: Method, psk: bytes, session_id: bytes | None = None) -> None:
        self.method = method
        self.psk = psk
        self.session_id = session_id or os.urandom(8)
        self.packet_id = 0
        self._servers: OrderedDict[bytes, tuple[AESGCM | ChaCha20Poly1305 | None, ReplayWindow]] = OrderedDict()
        if not method.chacha:
            block = BlockCipher(algorithms.AES(psk), modes.ECB())
            self._ecb_enc, self._ecb_dec = block.encryptor(), block.decryptor()
            self._aead = AESGCM(session_subkey(psk, self.session_id))

    def pack(self, address: bytes, payload: bytes, stamp: int | None = None) -> bytes:
        pid = self.packet_id
        self.packet_id += 1
        body = struct.pack("!BQH", TYPE_CLIENT, _now() if stamp is None else stamp, 0) + address + payload
        header = self.session_id + pid.to_bytes(8, "big")
        if self.method.chacha:
            nonce24 = os.urandom(24)
            return nonce24 + xchacha_seal(self.psk, nonce24, header + body)
        return self._ecb_enc.update(header) + self._aead.encrypt(header[4:16], body, None)

    def _server(self, session: bytes) -> tuple[AESGCM | ChaCha20Poly1305 | None, ReplayWindow]:
        entry = self._servers.get(session)
        if entry is None:
            aead = None if self.method.chacha else AESGCM(session_subkey(self.psk, session))
            entry = self._servers[session] = (aead, ReplayWindow())
            while len(self._servers) > 4:  # old server sessions (a server restart) age out
                self._servers.popitem(last=False)
        return entry

    def unpack(self, packet: bytes) -> tuple[str, int, bytes]:
        """(host, port, payload) of a server packet; InvalidTag / HeaderError / ValueError."""
        if self.method.chacha:
            if len(packet) < 24 + 16 + TAG:
                raise ValueError(f"{len(packet)}-byte packet is too short")
            plain = xchacha_open(self.psk, packet[:24], packet[24:])
            header, body = plain[:16], plain[16:]
            aead, window = self._server(header[:8])
        else:
            if len(packet) < 16 + TAG:
                raise ValueError(f"{len(packet)}-byte packet is too short")
            header = self._ecb_dec.update(packet[:16])
            aead, window = self._server(header[:8])
            assert aead is not None
            body = aead.decrypt(header[4:16], packet[16:], None)
        if header[:8] == self.session_id:
            raise HeaderError("the server used our session id as its own")
        kind, stamp = struct.unpack_from("!BQ", body)
        if kind != TYPE_SERVER:
            raise HeaderError(f"packet type {kind}, expected {TYPE_SERVER}")
        _check_time(stamp)
        if body[9:17] != self.session_id:
            raise HeaderError("the packet is for another client session")
        (padding,) = struct.unpack_from("!H", body, 17)
        host, port, end = decode_addr(body, 19 + padding)
        if not window.accept(int.from_bytes(header[8:16], "big")):
            raise HeaderError("repeated or out-of-window packet id")
        return host, port, body[end:]


class Shadowsocks2022UdpAssociation(SocketAssociation):
    def __init__(self, node: Node, sock: socket.socket, codec: UdpCodec, on_reply: ReplyCallback) -> None:
        super().__init__(sock, on_reply)
        self.node = node
        self.codec = codec
        self.rejected = 0

    def send(self, data: bytes, dst: Destination) -> None:
        if not self.closed:
            self._send(self.codec.pack(encode_addr(dst.host, dst.port), data))

    def received(self, packet: bytes, addr: tuple) -> None:
        try:
            host, port, payload = self.codec.unpack(packet)
        except (InvalidTag, HeaderError) as exc:
            self.rejected += 1
            if self.rejected == 1:
                why = "failed authentication (wrong key?)" if isinstance(exc, InvalidTag) else str(exc)
                log.warning("node %s: a shadowsocks 2022 UDP reply %s; dropped", self.node, why)
            return
        except ValueError as exc:
            self.dropped += 1
            log.debug("node %s: malformed UDP reply dropped: %s", self.node, exc)
            return
        self._on_reply(payload, (host, port))


async def associate(node: Node, opts: DialOptions, on_reply: ReplyCallback) -> Shadowsocks2022UdpAssociation:
    method, psk = keys_of(node)
    fam, addr = (await resolve(node.host, node.port, opts.connect_timeout, node))[0]
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        set_mark(sock, opts.so_mark)
        sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise DialError(f"UDP socket to {node.host}:{node.port}: {exc.strerror or exc}", node) from None
    return Shadowsocks2022UdpAssociation(node, sock, UdpCodec(method, psk), on_reply)


__all__ = ["METHODS", "HeaderError", "Opener", "ReplayWindow", "Sealer", "UdpCodec", "associate",
           "decode_psk", "hchacha20", "keys_of", "session_subkey", "stream_parts"]
