"""VMess with the AEAD request header (v2ray >= 4.28, alterId 0): TCP and UDP.

What goes on the wire (v2fly's "VMess protocol" and "VMess AEAD" notes; facts checked against
v2ray-core 4.34's proxy/vmess/aead and encoding packages):

- cmdKey = MD5(UUID bytes || "c48619fe-8f02-49e0-b9e9-edf763e17e21");
- KDF(key, path...) = nested HMAC-SHA256: H0 = HMAC("VMess AEAD KDF", SHA-256), each path
  element p wraps the previous one as the hash of HMAC(p, .), applied to `key`;
- AuthID = AES-128-ECB(KDF16(cmdKey, "AES Auth ID Encryption"),
  unix time (8, BE) || 4 random bytes || CRC32 of those 12 (BE)): the server finds the user by
  it and refuses one more than 120 s off its clock;
- request header = AuthID || AEAD(len) || 8-byte nonce || AEAD(instruction), both AES-128-GCM
  under keys and nonces from KDF(cmdKey, label, AuthID, nonce), the AuthID as associated data;
- instruction = ver 1 || body IV (16) || body key (16) || response auth V || options || padding
  length << 4 | security || 0 || command (1 TCP, 2 UDP) || port || address type (1 IPv4,
  2 domain, 3 IPv6) || address || padding || FNV-1a-32 of all before;
- the response body key/IV are SHA-256 of the request's, first 16 bytes; the response header is
  AEAD(len) || AEAD(V || options || command || command length || command), under
  KDF(response key/IV, "AEAD Resp Header ...");
- body: chunks of [2-byte length][sealed payload]; the nonce is the 2-byte chunk count (BE) ||
  IV[2:12]; aes-128-gcm keys AES-GCM with the body key, chacha20-poly1305 ChaCha20-Poly1305 with
  MD5(key) || MD5(MD5(key)); `none` sends [length][payload]; `zero` no chunks at all (the raw
  stream). A UDP session carries one datagram per chunk to the one destination of its request
  (for `zero` too: we keep the chunks there, or datagram boundaries would be lost).

We send the chunk-stream option only (no length masking or padding: those hide lengths, they
add no security, and v2ray honours whatever options the client asks for). The server answers
nothing until the target sends something, so a dial succeeds once the header is written. A
wrong UUID shows as a server that never answers (v2ray 4.34 reads and drops a random 1.7-3.3 KB
and holds the connection open, its defence against probing; past that it resets): a reset
before the response header raises ProxyAuthError naming the node, and a flow that ends with
nothing received logs one warning per node saying what that looks like. A close (not a reset)
before the response is a plain end of stream: v2ray closes that way when the target closed
without a byte, too.
"""
from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import struct
import time
import uuid
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from dae_py.runtime.net.stream import RECV_SIZE, Buffer, LayeredStream, Stream, handed_on

from .aeadchunks import SealBuffers, packed_length, sealed_size
from .base import Destination, DialError, DialOptions, Node, ProxyAuthError, ProxyProtocolError, ReplyCallback
from .streamudp import Connect, StreamUdpAssociation
from .transport import connect_to, describe, open_stream_on

log = logging.getLogger(__name__)
T = TypeVar("T")

VERSION = 1
CMD_TCP, CMD_UDP = 1, 2
OPT_CHUNK_STREAM = 0x01
SEC_AES128_GCM, SEC_CHACHA20_POLY1305, SEC_NONE = 3, 4, 5
TAG = 16
MAX_CHUNK = 0x4000  # payload bytes per chunk we send (v2ray reads chunks up to 65535)
CMD_KEY_SALT = b"c48619fe-8f02-49e0-b9e9-edf763e17e21"
SEAL_BUFFERS = SealBuffers(sealed_size(RECV_SIZE, MAX_CHUNK, 2 + TAG))  # one relay read's chunks
KDF_ROOT = b"VMess AEAD KDF"


@dataclass(frozen=True)
class Security:
    """A `security`/`scy` value: its wire number, whether chunks are used, how chunks seal."""

    name: str
    wire: int
    chunked: bool
    aead: Callable[[bytes], AESGCM | ChaCha20Poly1305] | None


def _md5(data: bytes) -> bytes:
    h = hashes.Hash(hashes.MD5())
    h.update(data)
    return h.finalize()


def _sha256(data: bytes) -> bytes:
    h = hashes.Hash(hashes.SHA256())
    h.update(data)
    return h.finalize()


def chacha_key(key: bytes) -> bytes:
    """v2ray's 32-byte ChaCha20-Poly1305 key from a 16-byte body key."""
    first = _md5(key)
    return first + _md5(first)


SECURITIES: dict[str, Security] = {s.name: s for s in (
    Security("aes-128-gcm", SEC_AES128_GCM, True, AESGCM),
    Security("chacha20-poly1305", SEC_CHACHA20_POLY1305, True,
             lambda key: ChaCha20Poly1305(chacha_key(key))),
    Security("none", SEC_NONE, True, None),
    Security("zero", SEC_NONE, False, None),
)}
SECURITIES["auto"] = SECURITIES["aes-128-gcm"]  # what v2ray picks on a CPU with AES instructions


# --- key derivation and the sealed request header -------------------------------------------------

_IPAD = bytes(b ^ 0x36 for b in range(256))
_OPAD = bytes(b ^ 0x5C for b in range(256))


class _Base:
    """HMAC-SHA256 under the KDF's root key, keyed once (copies are ~3x cheaper than new ones)."""

    def __init__(self, key: bytes) -> None:
        self._keyed = crypto_hmac.HMAC(key, hashes.SHA256())

    def digest(self, data: bytes) -> bytes:
        h = self._keyed.copy()
        h.update(data)
        return h.finalize()


class _Wrapped:
    """HMAC(key, .) whose hash is the level below (64-byte blocks, 32-byte digests)."""

    def __init__(self, key: bytes, parent: _Base | _Wrapped) -> None:
        if len(key) > 64:
            key = parent.digest(key)
        block = key.ljust(64, b"\0")
        self._ipad, self._opad = block.translate(_IPAD), block.translate(_OPAD)
        self._parent = parent

    def digest(self, data: bytes) -> bytes:
        parent = self._parent
        return parent.digest(self._opad + parent.digest(self._ipad + data))


@lru_cache(maxsize=64)
def _level(path: tuple[bytes, ...]) -> _Base | _Wrapped:
    """The hash of a constant path prefix (the root and a label), built once."""
    return _Base(path[0]) if len(path) == 1 else _Wrapped(path[-1], _level(path[:-1]))


def kdf(key: bytes, *path: bytes) -> bytes:
    """VMess AEAD's KDF (32 bytes): HMAC(path[-1], .) over ... over HMAC-SHA256("VMess AEAD
    KDF", .), applied to `key`. Levels up to the label are cached; per-session ones (AuthID,
    nonce) are built per call."""
    fixed = (KDF_ROOT, *path[:1])
    h = _level(fixed)
    for element in path[1:]:
        h = _Wrapped(element, h)
    return h.digest(key)


def cmd_key(user_id: bytes) -> bytes:
    return _md5(user_id + CMD_KEY_SALT)


@lru_cache(maxsize=1024)
def _auth_block(key: bytes) -> Cipher[modes.ECB]:
    return Cipher(algorithms.AES(kdf(key, b"AES Auth ID Encryption")[:16]), modes.ECB())


def auth_id(key: bytes, now: int | None = None, rand: bytes | None = None) -> bytes:
    """The 16-byte AuthID for `key` (a cmdKey) at unix time `now`."""
    plain = struct.pack("!q", int(time.time()) if now is None else now) + (rand or os.urandom(4))
    plain += struct.pack("!I", zlib.crc32(plain))
    enc = _auth_block(key).encryptor()
    return enc.update(plain) + enc.finalize()


def seal_header(key: bytes, instruction: bytes, now: int | None = None,
                nonce: bytes | None = None) -> bytes:
    """AuthID || sealed length || nonce || sealed instruction."""
    aid = auth_id(key, now)
    nonce = nonce if nonce is not None else os.urandom(8)
    length = AESGCM(kdf(key, b"VMess Header AEAD Key_Length", aid, nonce)[:16]).encrypt(
        kdf(key, b"VMess Header AEAD Nonce_Length", aid, nonce)[:12],
        struct.pack("!H", len(instruction)), aid)
    body = AESGCM(kdf(key, b"VMess Header AEAD Key", aid, nonce)[:16]).encrypt(
        kdf(key, b"VMess Header AEAD Nonce", aid, nonce)[:12], instruction, aid)
    return aid + length + nonce + body


def fnv1a32(data: bytes) -> int:
    h = 0x811C9DC5
    for b in data:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h


def encode_address(host: str, port: int) -> bytes:
    """port (BE) || type || address, the v2ray form VMess and VLESS share (1 IPv4, 2 domain,
    3 IPv6)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        name = host.encode("idna")
        if not 0 < len(name) < 256:
            raise ValueError(f"domain {host!r} cannot be encoded") from None
        return struct.pack("!HBB", port, 2, len(name)) + name
    return struct.pack("!HB", port, 1 if ip.version == 4 else 3) + ip.packed


def instruction(body_iv: bytes, body_key: bytes, v: int, security: Security, cmd: int,
                host: str, port: int, padding: bytes | None = None) -> bytes:
    padding = os.urandom(os.urandom(1)[0] % 16) if padding is None else padding
    opt = OPT_CHUNK_STREAM if security.chunked or cmd == CMD_UDP else 0
    head = (bytes((VERSION,)) + body_iv + body_key
            + bytes((v, opt, len(padding) << 4 | security.wire, 0, cmd))
            + encode_address(host, port) + padding)
    return head + struct.pack("!I", fnv1a32(head))


# --- the body ------------------------------------------------------------------------------------------

class ChunkSealer:
    """Plaintext to chunks: [2-byte length][payload sealed] (or plain, for `none`), all of one
    write sealed in place into one buffer (one send for every chunk of it)."""

    def __init__(self, security: Security, key: bytes, iv: bytes) -> None:
        self._aead = security.aead(key) if security.aead is not None else None
        self._iv_tail = iv[2:12]
        self._count = 0

    def sealed_size(self, size: int, limit: int = MAX_CHUNK) -> int:
        return sealed_size(size, limit, 2 + (TAG if self._aead is not None else 0))

    def seal(self, data: Buffer, limit: int = MAX_CHUNK) -> bytes | bytearray:
        aead = self._aead
        if aead is not None and 0 < len(data) <= limit:  # one chunk (small writes): no views
            sealed = aead.encrypt(struct.pack("!H", self._count & 0xFFFF) + self._iv_tail, data, None)
            self._count += 1
            return packed_length(len(sealed)) + sealed
        out = bytearray(self.sealed_size(len(data), limit))
        with memoryview(out) as view:
            self.seal_into(data, view, limit)
        return out

    def seal_into(self, data: Buffer, view: memoryview, limit: int = MAX_CHUNK) -> None:
        """`seal` into `view` (`sealed_size(len(data))` bytes at least)."""
        aead = self._aead
        overhead = TAG if aead is not None else 0
        pos = 0
        with memoryview(data) as src:
            for start in range(0, len(src), limit):
                piece = src[start:start + limit]
                end = pos + 2 + len(piece) + overhead
                view[pos:pos + 2] = packed_length(len(piece) + overhead)
                if aead is None:
                    view[pos + 2:end] = piece
                else:
                    aead.encrypt_into(struct.pack("!H", self._count & 0xFFFF) + self._iv_tail, piece,
                                      None, view[pos + 2:end])
                    self._count += 1
                pos = end


class ChunkOpener:
    """Chunks to plaintext, fed as bytes arrive: `feed` returns each complete chunk's payload
    (UDP: one datagram each), `feed_joined` all of them in one buffer (TCP: decrypted in place,
    no per-chunk copies). An empty chunk is the peer's end of stream (`ended`). Only an
    incomplete chunk's bytes are kept between feeds."""

    def __init__(self, security: Security, key: bytes, iv: bytes) -> None:
        self._aead = security.aead(key) if security.aead is not None else None
        self._overhead = TAG if self._aead is not None else 0
        self._iv_tail = iv[2:12]
        self._count = 0
        self._part = bytearray()  # an incomplete chunk: its length and what came of it
        self.ended = False

    @property
    def mid_chunk(self) -> bool:
        return bool(self._part)

    def _nonce(self) -> bytes:
        nonce = struct.pack("!H", self._count & 0xFFFF) + self._iv_tail
        self._count += 1
        return nonce

    def _units(self, data: bytes | bytearray | memoryview) -> Iterator[memoryview]:
        """Each complete chunk's body (sealed or plain) in `data` and the bytes kept before it;
        the rest of an incomplete chunk is kept. A view is valid until the next one is asked for."""
        part = self._part
        overhead = self._overhead
        with memoryview(data) as src:
            pos, size = 0, len(src)
            if part:  # finish the chunk the last read cut
                if len(part) < 2:
                    take = min(2 - len(part), size)
                    part += src[:take]
                    pos = take
                    if len(part) < 2:
                        return
                need = 2 + struct.unpack_from("!H", part)[0]
                take = need - len(part)
                if take > size - pos:
                    part += src[pos:]
                    return
                part += src[pos:pos + take]
                pos += take
                if need - 2 == overhead:
                    self.ended = True
                    part.clear()
                    return
                with memoryview(part) as whole, whole[2:] as unit:
                    yield unit
                part.clear()
            while not self.ended and size - pos >= 2:
                (length,) = struct.unpack_from("!H", src, pos)
                if size - pos - 2 < length:
                    break
                start = pos + 2
                pos = start + length
                if length == overhead:
                    self.ended = True
                    return
                with src[start:pos] as unit:
                    yield unit
            if pos < size and not self.ended:
                part += src[pos:]

    def feed(self, data: bytes | bytearray | memoryview) -> list[bytes]:
        aead = self._aead
        if aead is None:
            return [bytes(unit) for unit in self._units(data)]
        return [aead.decrypt(self._nonce(), unit, None) for unit in self._units(data)]

    def feed_joined(self, data: bytes | bytearray | memoryview) -> bytearray:
        aead = self._aead
        overhead = self._overhead
        out = bytearray(len(self._part) + len(data))
        written = 0
        with memoryview(out) as view:
            for unit in self._units(data):
                end = written + len(unit) - overhead
                if aead is None:
                    view[written:end] = unit
                else:
                    aead.decrypt_into(self._nonce(), unit, None, view[written:end])
                written = end
        del out[written:]
        return out


class ResponseHeader:
    """Parses the sealed response header at the start of the server's bytes."""

    def __init__(self, key: bytes, iv: bytes, v: int) -> None:
        self._len_aead = AESGCM(kdf(key, b"AEAD Resp Header Len Key")[:16])
        self._len_nonce = kdf(iv, b"AEAD Resp Header Len IV")[:12]
        self._aead = AESGCM(kdf(key, b"AEAD Resp Header Key")[:16])
        self._nonce = kdf(iv, b"AEAD Resp Header IV")[:12]
        self._v = v

    def parse(self, buf: bytes) -> int:
        """How many bytes of `buf` the header takes (0: not all there yet); InvalidTag or
        ValueError if it is not ours."""
        if len(buf) < 2 + TAG:
            return 0
        (size,) = struct.unpack("!H", self._len_aead.decrypt(self._len_nonce, buf[:2 + TAG], None))
        end = 2 + TAG + size + TAG
        if len(buf) < end:
            return 0
        plain = self._aead.decrypt(self._nonce, buf[2 + TAG:end], None)
        if len(plain) < 4 or plain[0] != self._v:
            raise ValueError("the response header does not answer our request")
        return end


_WARNED: set[str] = set()
WHY = "a wrong UUID looks like this (so do a server alterId other than 0 and a clock more than 120 s off)"


def refused(node: Node, protocol: str, why: str) -> ProxyAuthError:
    """A reset before any response: the server closed with our bytes unread, i.e. it never took
    the request (v2ray drops an unknown user's connection this way once its drain overflows).
    A warning once per node (until it answers again): the relay's flow log shows only the error."""
    exc = ProxyAuthError(f"the server reset the connection without a {protocol} response: {why}", node)
    if node.name not in _WARNED:
        _WARNED.add(node.name)
        log.warning("%s", exc)
    return exc


def closed_unanswered(node: Node, protocol: str, why: str) -> None:
    """A plain close before any response. v2ray sends its response header with the target's
    first bytes, so a target that closes without a byte (an upload-only flow) ends the same way
    as a refused user (VLESS closes at once): not an error, the flow just ends; one line says
    what it may mean."""
    log.info("node %s: the server closed the connection without a %s response: %s (so does a "
             "target that closes without sending a byte)", node, protocol, why)


def warn_mute(node: Node, protocol: str) -> None:
    """A server that never answered a flow that sent data: v2ray holds a connection with an
    unknown user open (it reads and drops up to a few kilobytes, then closes), so for small
    requests this is how a wrong UUID shows. Once per node, until it answers again."""
    if node.name not in _WARNED:
        _WARNED.add(node.name)
        log.warning("node %s: the server sent no %s response before the flow ended: a wrong UUID "
                    "looks like this (so does a target that never answers)", node, protocol)


class Session:
    """Keys and state of one VMess request: what the stream and the UDP session share."""

    def __init__(self, node: Node, cmd: int, dst: Destination) -> None:
        self.node = node
        self.security = security_of(node)
        user = user_id(node)
        self.body_key, self.body_iv = os.urandom(16), os.urandom(16)
        self.v = os.urandom(1)[0]
        self.header = seal_header(cmd_key(user), instruction(
            self.body_iv, self.body_key, self.v, self.security, cmd, dst.host, dst.port))
        resp_key, resp_iv = _sha256(self.body_key)[:16], _sha256(self.body_iv)[:16]
        chunked = self.security.chunked or cmd == CMD_UDP
        # `zero` over UDP: `none` chunks keep the datagrams apart
        body = self.security if self.security.chunked else SECURITIES["none"]
        self.sealer = ChunkSealer(body, self.body_key, self.body_iv) if chunked else None
        self.opener = ChunkOpener(body, resp_key, resp_iv) if chunked else None
        self.response = ResponseHeader(resp_key, resp_iv, self.v)


class VmessStream(LayeredStream):
    """A VMess session's payload over its transport stream `raw`."""

    def __init__(self, raw: Stream, session: Session) -> None:
        self.raw = raw
        self.node = session.node
        self._s = session
        self._pending = b""
        self._head = bytearray()  # server bytes until the response header is complete
        self._answered = False
        self._chunks: list[bytes] = []
        self._sent_payload = False
        self._eof = False

    async def sendall(self, data: Buffer) -> None:
        if not data:
            return
        self._sent_payload = True
        sealer = self._s.sealer
        if sealer is None or len(data) <= MAX_CHUNK:
            await self.raw.sendall(sealer.seal(data) if sealer is not None else data)
            return
        size = sealer.sealed_size(len(data))
        buf = SEAL_BUFFERS.take(size)  # the streams below copy what they send before returning
        try:
            with memoryview(buf) as whole, whole[:size] as out:
                sealer.seal_into(data, out)
                await self.raw.sendall(out)
        finally:
            SEAL_BUFFERS.give(buf)

    async def send_packet(self, data: bytes) -> None:
        """One datagram as one chunk (UDP sessions)."""
        assert self._s.sealer is not None
        self._sent_payload = True
        await self.raw.sendall(self._s.sealer.seal(data, limit=0xFFFF - TAG))

    async def recv_packet(self) -> bytes | None:
        """The next datagram (UDP sessions), None at the end."""
        while not self._chunks:
            data = await self._read()
            if data is None:
                return None
            opener = self._s.opener
            self._chunks = self._open(opener.feed, data) if opener is not None else [data] if data else []
        return self._chunks.pop(0)

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        while not self._pending:
            data = await self._read()
            if data is None:
                return b""
            opener = self._s.opener
            self._pending = handed_on(self._open(opener.feed_joined, data)) if opener is not None else data
        data = self._pending
        if len(data) <= n:  # the usual case: all of it, no copy
            self._pending = b""
            return handed_on(data)
        data, self._pending = data[:n], data[n:]
        return data

    def _open(self, feed: Callable[[bytes], T], data: bytes) -> T:
        try:
            return feed(data)
        except InvalidTag:
            raise ProxyProtocolError(f"a {self._s.security.name} chunk failed authentication",
                                     self.node) from None

    async def _read(self) -> bytes | None:
        """The body bytes one read of `raw` brought past the response header (maybe none),
        None at the end."""
        opener = self._s.opener
        if self._eof or (opener is not None and opener.ended):
            return None
        try:
            data = await self.raw.recv(RECV_SIZE)
        except ConnectionResetError:
            if self._answered:
                raise
            raise refused(self.node, "VMess", WHY) from None
        except asyncio.CancelledError:  # the flow or the check ended, the server still mute
            if not self._answered and self._sent_payload:
                warn_mute(self.node, "VMess")
            raise
        if not data:
            self._eof = True
            if not self._answered:
                closed_unanswered(self.node, "VMess", WHY)
                return None
            if opener is not None and opener.mid_chunk:
                raise ProxyProtocolError("the server closed the connection in the middle of a chunk",
                                         self.node)
            return None
        if not self._answered:
            self._head += data
            try:
                end = self._s.response.parse(bytes(self._head))
            except (InvalidTag, ValueError):
                raise ProxyProtocolError("the VMess response header failed authentication (not a "
                                         "VMess AEAD server?)", self.node) from None
            if not end:
                return b""
            self._answered = True
            _WARNED.discard(self.node.name)
            data = bytes(self._head[end:])
            self._head.clear()
        return data


def user_id(node: Node) -> bytes:
    try:
        return uuid.UUID(node.username or "").bytes
    except ValueError:
        raise DialError(f"{node.protocol} node has no valid UUID", node) from None


def security_of(node: Node) -> Security:
    security = SECURITIES.get((node.cipher or "auto").lower())
    if security is None:
        raise DialError(f"unsupported VMess security {node.cipher!r} "
                        f"(supported: {', '.join(SECURITIES)})", node)
    return security


async def open_session(node: Node, opts: DialOptions, cmd: int, dst: Destination) -> VmessStream:
    security_of(node), user_id(node)  # a bad node fails before anything is dialled
    return await open_session_on(await connect_to(node, opts), node, opts, cmd, dst)


async def open_session_on(raw: Stream, node: Node, opts: DialOptions, cmd: int,
                          dst: Destination) -> VmessStream:
    """The node's transport and the request header over `raw`, a stream already connected to
    the node (directly, or through a chain's earlier hops)."""
    try:
        session = Session(node, cmd, dst)
    except BaseException:
        raw.abort()
        raise
    stream = await open_stream_on(raw, node, opts)
    try:
        await stream.sendall(session.header)
    except BaseException:
        stream.abort()
        raise
    log.debug("node %s: VMess %s session over %s to %s", node, session.security.name,
              describe(node), dst)
    return VmessStream(stream, session)


async def dial(node: Node, dst: Destination, opts: DialOptions) -> VmessStream:
    return await open_session(node, opts, CMD_TCP, dst)


async def dial_on(raw: Stream, node: Node, dst: Destination, opts: DialOptions) -> VmessStream:
    """A VMess TCP session over a stream already connected to the node (a chain's later hop)."""
    return await open_session_on(raw, node, opts, CMD_TCP, dst)


async def associate(node: Node, opts: DialOptions, on_reply: ReplyCallback) -> StreamUdpAssociation:
    return await associate_on(lambda: connect_to(node, opts), node, opts, on_reply)


async def associate_on(connect: Connect, node: Node, opts: DialOptions,
                       on_reply: ReplyCallback) -> StreamUdpAssociation:
    """UDP sessions, one per destination, each over a fresh stream `connect` gives, already
    connected to the node (straight, or through a chain's earlier hops)."""
    security_of(node), user_id(node)  # a bad node fails here, not per datagram

    async def session(dst: Destination) -> VmessStream:
        return await open_session_on(await connect(), node, opts, CMD_UDP, dst)

    return StreamUdpAssociation(node, on_reply, session)


__all__ = ["SECURITIES", "ChunkOpener", "ChunkSealer", "VmessStream", "associate", "auth_id", "cmd_key",
           "associate_on", "dial", "dial_on", "encode_address", "fnv1a32", "instruction", "kdf", "seal_header"]
