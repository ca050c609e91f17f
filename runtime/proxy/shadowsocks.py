"""Shadowsocks AEAD (aes-128-gcm, aes-256-gcm, chacha20-ietf-poly1305): TCP and UDP; the 2022
methods (SIP022) share the stream class and are framed by shadowsocks2022.py.

The framing follows the Shadowsocks AEAD spec (shadowsocks.org, "AEAD ciphers"):
- master key = EVP_BytesToKey(password) (OpenSSL's MD5 chain, no salt, one iteration);
- every TCP direction and every UDP packet starts with a random salt as long as the key;
  the session subkey is HKDF-SHA1(master, salt, info "ss-subkey");
- TCP: chunks of [AEAD(2-byte big-endian length)][AEAD(payload)], payload <= 0x3FFF, the
  12-byte little-endian nonce counting up by one per AEAD operation;
- UDP: salt + AEAD([SOCKS5 address][payload]) with the all-zero nonce.
The first TCP chunk sent carries the target address (SOCKS5 form); the server never answers it,
so a dial succeeds as soon as TCP does. A wrong password shows only as a server that never
answers (shadowsocks-libev holds such a connection open): when a flow or a check ends with
nothing received, one line per node says so, and the health check marks the node down.

SIP003 plugins (`plugin=` in the link): TCP goes to the plugin's local port
(runtime/proxy/plugins.py runs it), UDP straight to the server.

Pure functions (keys, Sealer/Opener, UDP packets) come first; the dialer and the association
after. Encrypted bytes cannot be spliced: `splice_fd()` is None, so the relay copies in user
space.
"""
from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from dae_py.runtime.net.sockets import connect_tcp, resolve, set_mark
from dae_py.runtime.net.stream import RECV_SIZE, Buffer, LayeredStream, SocketStream, Stream, handed_on

from . import plugins
from . import shadowsocks2022 as ss2022
from .aeadchunks import ChunkReader, SealBuffers, seal_chunks, seal_chunks_into, sealed_size
from .base import Destination, DialError, DialOptions, Node, ProxyAuthError, ProxyProtocolError, ReplyCallback
from .socks5 import decode_addr, encode_addr
from .udp import SocketAssociation

log = logging.getLogger(__name__)

TAG_SIZE = 16
NONCE_SIZE = 12
MAX_PAYLOAD = 0x3FFF
SUBKEY_INFO = b"ss-subkey"
AeadFactory = Callable[[bytes], "AESGCM | ChaCha20Poly1305"]
# One relay read's worth of chunks (the streams below copy what they send before returning).
SEAL_BUFFERS = SealBuffers(sealed_size(RECV_SIZE, MAX_PAYLOAD, 2 + 2 * TAG_SIZE))


@dataclass(frozen=True)
class Cipher:
    """One AEAD method: its key (= salt) size and the cryptography class implementing it."""

    name: str
    key_size: int
    aead: AeadFactory

    @property
    def salt_size(self) -> int:
        return self.key_size


CIPHERS: dict[str, Cipher] = {c.name: c for c in (
    Cipher("aes-128-gcm", 16, AESGCM),
    Cipher("aes-256-gcm", 32, AESGCM),
    Cipher("chacha20-ietf-poly1305", 32, ChaCha20Poly1305),
)}


def evp_bytes_to_key(password: bytes, key_size: int) -> bytes:
    """OpenSSL's EVP_BytesToKey with MD5, no salt, one round: D_i = MD5(D_{i-1} || password)."""
    out, prev = b"", b""
    while len(out) < key_size:
        prev = hashlib.md5(prev + password).digest()
        out += prev
    return out[:key_size]


def session_subkey(master: bytes, salt: bytes) -> bytes:
    """HKDF-SHA1(key=master, salt=salt, info='ss-subkey'), as long as the master key."""
    return HKDF(hashes.SHA1(), len(master), salt, SUBKEY_INFO).derive(master)


def nonce(counter: int) -> bytes:
    return counter.to_bytes(NONCE_SIZE, "little")


class Sealer:
    """The sending half of a TCP session: turns plaintext into AEAD chunks."""

    def __init__(self, cipher: Cipher, master: bytes, salt: bytes | None = None) -> None:
        self.salt = salt if salt is not None else os.urandom(cipher.salt_size)
        self._aead = cipher.aead(session_subkey(master, self.salt))
        self._counter = 0

    def seal(self, data: Buffer) -> bytes | bytearray:
        """[enc len][enc payload] chunks for `data` (any length; split at MAX_PAYLOAD)."""
        out, self._counter = seal_chunks(self._aead, self._counter, data, MAX_PAYLOAD)
        return out

    def sealed_size(self, size: int) -> int:
        return sealed_size(size, MAX_PAYLOAD, 2 + 2 * TAG_SIZE)

    def seal_into(self, data: Buffer, out: memoryview) -> None:
        """`seal` into `out` (exactly `sealed_size(len(data))` bytes)."""
        self._counter = seal_chunks_into(self._aead, self._counter, data, MAX_PAYLOAD, out)


class Opener(ChunkReader):
    """The receiving half of a TCP session: salt first, then chunks, fed as bytes arrive.

    `feed` returns the plaintext of every complete chunk; InvalidTag means the peer does not
    share our key (a wrong password or cipher) or the stream was tampered with."""

    def __init__(self, cipher: Cipher, master: bytes) -> None:
        super().__init__(None, cipher.salt_size, MAX_PAYLOAD)
        self._cipher = cipher
        self._master = master

    def _first(self, unit: bytes) -> int:
        self._aead = self._cipher.aead(session_subkey(self._master, unit))
        return 2 + TAG_SIZE


def pack_udp(cipher: Cipher, master: bytes, plain: bytes, salt: bytes | None = None) -> bytes:
    """One UDP packet: salt + AEAD(plain) under the salt's subkey, nonce zero."""
    salt = salt if salt is not None else os.urandom(cipher.salt_size)
    return salt + cipher.aead(session_subkey(master, salt)).encrypt(bytes(NONCE_SIZE), plain, None)


def unpack_udp(cipher: Cipher, master: bytes, packet: bytes) -> bytes:
    """The plaintext of one UDP packet; ValueError if short, InvalidTag if not ours."""
    if len(packet) < cipher.salt_size + TAG_SIZE:
        raise ValueError(f"{len(packet)}-byte packet is shorter than salt and tag")
    salt = packet[:cipher.salt_size]
    return cipher.aead(session_subkey(master, salt)).decrypt(
        bytes(NONCE_SIZE), packet[cipher.salt_size:], None)


# --- the dialer ---------------------------------------------------------------------------------

_MASTER_KEYS: dict[tuple[str, str], bytes] = {}
_SILENT: set[str] = set()  # nodes whose last failure was a silent close (logged once)


def is_2022(node: Node) -> bool:
    """Shadowsocks 2022 (SIP022): framing, keys and UDP of its own, in shadowsocks2022.py."""
    return (node.cipher or "").startswith("2022-")


def keys_of(node: Node) -> tuple[Cipher, bytes]:
    """The node's cipher and master key (cached: EVP_BytesToKey once per node)."""
    cipher = CIPHERS.get(node.cipher or "")
    if cipher is None:
        raise DialError(f"unsupported shadowsocks cipher {node.cipher!r} "
                        f"(supported: {', '.join(CIPHERS)})", node)
    if not node.password:
        raise DialError("shadowsocks node has no password", node)
    key = (cipher.name, node.password)
    master = _MASTER_KEYS.get(key)
    if master is None:
        master = _MASTER_KEYS[key] = evp_bytes_to_key(node.password.encode(), cipher.key_size)
    return cipher, master


class ShadowsocksStream(LayeredStream):
    """A Stream carrying AEAD chunks over a TCP connection to the node.

    Half-close is not forwarded (shadowsocks-libev ends the whole session on the first EOF it
    sees, which would cut the reply short): the flow ends on the other side's EOF or idle."""

    def __init__(self, raw: Stream, node: Node, cipher: Cipher | None, master: bytes) -> None:
        self.raw = raw
        self.node = node
        self._ss2022 = cipher is None  # a 2022 method: its own framing (shadowsocks2022.py)
        self._sealer: Sealer | ss2022.Sealer
        self._opener: Opener | ss2022.Opener
        if cipher is None:
            self._sealer, self._opener = ss2022.stream_parts(node)
        else:
            self._sealer, self._opener = Sealer(cipher, master), Opener(cipher, master)
        self._pending = b""
        self._salt_sent = False  # the first sendall (the target address) carries the salt
        self._sent_payload = False

    async def send_header(self, dst: Destination) -> None:
        if isinstance(self._sealer, ss2022.Sealer):  # salt and both header chunks, one write
            self._salt_sent = True
            await self.raw.sendall(self._sealer.header(encode_addr(dst.host, dst.port)))
            return
        await self.sendall(encode_addr(dst.host, dst.port))

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        while not self._pending:
            try:
                data = await self.raw.recv(RECV_SIZE)
            except asyncio.CancelledError:  # the flow or the check ended, the server mute
                if self._opener.received == 0 and self._sent_payload:
                    self._silent("sent no byte of reply before the flow ended")
                raise
            except ConnectionResetError:
                if self._opener.received:
                    raise
                raise self._reset() from None
            if not data:
                return self._eof()
            try:
                self._pending = handed_on(self._opener.feed(data))
            except ss2022.HeaderError as exc:
                raise ss2022.header_error(self.node, exc) from None
            except InvalidTag:
                raise ProxyProtocolError(
                    f"a reply failed AEAD authentication: the server does not share our key "
                    f"(wrong password or cipher {self.node.cipher}?)", self.node) from None
        _SILENT.discard(self.node.name)
        data = self._pending
        if len(data) <= n:  # the usual case: all of it, no copy
            self._pending = b""
            return handed_on(data)
        data, self._pending = data[:n], data[n:]
        return data

    def _reset(self) -> ProxyAuthError:
        """sing-box (and other 2022 servers) reset a request they cannot authenticate."""
        return ProxyAuthError(f"the server reset the connection before any reply: a wrong "
                              f"password/key or cipher ({self.node.cipher}) looks like this", self.node)

    def _silent(self, what: str) -> None:
        """One line per node (until it answers again): shadowsocks servers never reject a bad
        key out loud, they stay mute (shadowsocks-libev holds the connection open)."""
        if self.node.name not in _SILENT:
            _SILENT.add(self.node.name)
            log.warning("node %s: the server %s: a wrong password or cipher looks like this "
                        "(so does a target that never answers)", self.node, what)

    def _eof(self) -> bytes:
        if self._opener.mid_chunk:
            raise ProxyProtocolError("the server closed the connection in the middle of a "
                                     "chunk", self.node)
        if self._opener.received == 0:  # common for upload-only flows: not worth a warning
            log.debug("node %s: the server closed the connection without a byte of reply",
                      self.node)
        return b""

    async def sendall(self, data: Buffer) -> None:
        if not data:
            return
        sealer = self._sealer
        if self._salt_sent and len(data) > MAX_PAYLOAD and isinstance(sealer, Sealer):
            # bulk: sealed into a reused buffer
            self._sent_payload = True
            size = sealer.sealed_size(len(data))
            buf = SEAL_BUFFERS.take(size)
            try:
                with memoryview(buf) as whole, whole[:size] as out:
                    sealer.seal_into(data, out)
                    await self._send(out)
            finally:
                SEAL_BUFFERS.give(buf)
            return
        sealed: Buffer = sealer.seal(data)
        if not self._salt_sent:
            self._salt_sent = True
            sealed = self._sealer.salt + sealed
        else:
            self._sent_payload = True
        await self._send(sealed)

    async def _send(self, sealed: Buffer) -> None:
        try:
            await self.raw.sendall(sealed)
        except (ConnectionResetError, BrokenPipeError):
            if self._opener.received:
                raise
            raise self._reset() from None


async def dial(node: Node, dst: Destination, opts: DialOptions) -> ShadowsocksStream:
    """A TCP connection to the node (or to its SIP003 plugin's local port) with the target
    address sent (the server never answers)."""
    if is_2022(node):  # a bad cipher, key or no password fails before any connection
        ss2022.keys_of(node)
    else:
        keys_of(node)
    if node.plugin:
        raw = SocketStream(await plugins.connect(node, opts))
    else:
        raw = SocketStream(await connect_tcp(node.host, node.port, opts, node))
    return await dial_on(raw, node, dst, opts)


async def dial_on(raw: Stream, node: Node, dst: Destination, opts: DialOptions) -> ShadowsocksStream:
    """Shadowsocks over `raw`, a stream already connected to the node (a chain's hop)."""
    if is_2022(node):
        stream = ShadowsocksStream(raw, node, None, b"")
    else:
        cipher, master = keys_of(node)
        stream = ShadowsocksStream(raw, node, cipher, master)
    try:
        await stream.send_header(dst)
    except BaseException:
        raw.abort()
        raise
    return stream


def start(node: Node) -> None:
    """A group holding the node started: its SIP003 plugin runs from now on."""
    plugins.acquire(node)


def stop(node: Node) -> None:
    plugins.release(node)


class ShadowsocksUdpAssociation(SocketAssociation):
    """One UDP socket connected to the node; each datagram is one sealed packet."""

    def __init__(self, node: Node, sock: socket.socket, cipher: Cipher, master: bytes,
                 on_reply: ReplyCallback) -> None:
        super().__init__(sock, on_reply)
        self.node = node
        self._cipher = cipher
        self._master = master
        self.rejected = 0  # replies that failed authentication

    def send(self, data: bytes, dst: Destination) -> None:
        if not self.closed:
            self._send(pack_udp(self._cipher, self._master, encode_addr(dst.host, dst.port) + data))

    def received(self, packet: bytes, addr: tuple) -> None:
        try:
            plain = unpack_udp(self._cipher, self._master, packet)
            host, port, end = decode_addr(plain, 0)
        except InvalidTag:
            self.rejected += 1
            if self.rejected == 1:
                log.warning("node %s: a UDP reply failed AEAD authentication (wrong password or "
                            "cipher?); dropped", self.node)
            return
        except ValueError as exc:
            self.dropped += 1
            log.debug("node %s: malformed UDP reply dropped: %s", self.node, exc)
            return
        self._on_reply(plain[end:], (host, port))


async def associate(node: Node, opts: DialOptions,
                    on_reply: ReplyCallback) -> ShadowsocksUdpAssociation | ss2022.Shadowsocks2022UdpAssociation:
    if is_2022(node):
        return await ss2022.associate(node, opts, on_reply)
    cipher, master = keys_of(node)
    fam, addr = (await resolve(node.host, node.port, opts.connect_timeout, node))[0]
    sock = socket.socket(fam, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        set_mark(sock, opts.so_mark)
        sock.connect(addr)
    except OSError as exc:
        sock.close()
        raise DialError(f"UDP socket to {node.host}:{node.port}: {exc.strerror or exc}",
                        node) from None
    return ShadowsocksUdpAssociation(node, sock, cipher, master, on_reply)
