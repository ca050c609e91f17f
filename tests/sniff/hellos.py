"""Real ClientHellos for the sniffer tests: made by Python's ssl (MemoryBIO, no socket), and
captured from `openssl s_client` and `curl` connecting to a loopback listener; and QUIC Initial
packets sealed around them the way a client does (RFC 9001 5), for v1 and v2."""
from __future__ import annotations

import shutil
import socket
import ssl
import struct
import subprocess
import threading
from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from dae_py.runtime.sniff import NEED_MORE, quic, tls


def python_hello(name: str | None, alpn: tuple[str, ...] = ()) -> bytes:
    """The bytes Python's ssl sends first for a connection to `name` (its TLS records)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname=name)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def handshake_message(records: bytes) -> bytes:
    """The handshake bytes inside TLS records (their 5-byte headers removed)."""
    out, pos = bytearray(), 0
    while pos + 5 <= len(records):
        n = int.from_bytes(records[pos + 3:pos + 5], "big")
        out += records[pos + 5:pos + 5 + n]
        pos += 5 + n
    return bytes(out)


def rerecord(records: bytes, size: int) -> bytes:
    """The same handshake bytes re-cut into records of at most `size` bytes (RFC 8446 5.1 lets a
    sender fragment a handshake message across records)."""
    msg = handshake_message(records)
    out = bytearray()
    for i in range(0, len(msg), size):
        piece = msg[i:i + size]
        out += b"\x16\x03\x01" + len(piece).to_bytes(2, "big") + piece
    return bytes(out)


def capture(argv_of: Callable[[int], list[str]], timeout: float = 10.0) -> bytes:
    """What a client program sends first to a loopback listener; `argv_of(port)` builds its
    command line. The listener reads until the hello is complete, then closes."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    srv.settimeout(timeout)
    port = srv.getsockname()[1]
    got = bytearray()

    def serve() -> None:
        try:
            conn, _ = srv.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(timeout)
            while tls.sniff(bytes(got)) is NEED_MORE:
                data = conn.recv(65536)
                if not data:
                    break
                got.extend(data)

    t = threading.Thread(target=serve)
    t.start()
    try:
        subprocess.run(argv_of(port), capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pass
    t.join(timeout)
    srv.close()
    return bytes(got)


def openssl_hello(name: str) -> bytes:
    assert shutil.which("openssl"), "openssl (Debian package) is needed"
    return capture(lambda port: ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", name])


def curl_hello(name: str) -> bytes:
    assert shutil.which("curl"), "curl (Debian package) is needed"
    return capture(lambda port: ["curl", "-sk", "--max-time", "5", "--resolve", f"{name}:{port}:127.0.0.1",
                                 f"https://{name}:{port}/"])


# --- QUIC Initial packets, sealed as a client seals them ----------------------------------


def varint(v: int) -> bytes:
    if v < 1 << 6:
        return bytes([v])
    if v < 1 << 14:
        return struct.pack("!H", v | 0x4000)
    if v < 1 << 30:
        return struct.pack("!I", v | 0x80000000)
    return struct.pack("!Q", v | 0xC000000000000000)


def crypto_frame(offset: int, data: bytes) -> bytes:
    return b"\x06" + varint(offset) + varint(len(data)) + data


def seal_initial(frames: bytes, dcid: bytes, pn: int = 0, version: int = quic.V1, scid: bytes = b"\x01\x02",
                 pad_to: int = 1200, token: bytes = b"") -> bytes:
    """One client Initial packet carrying `frames` (PADDING added up to `pad_to` bytes), with a
    2-byte packet number, header protection and AES-128-GCM as RFC 9001 5 says."""
    aead, iv, hp = quic._keys(version, dcid)
    pn_len = 2
    first = 0xC0 | quic.INITIAL_TYPE[version] << 4 | (pn_len - 1)
    head = bytes([first]) + version.to_bytes(4, "big") + bytes([len(dcid)]) + dcid + bytes([len(scid)]) + scid
    head += varint(len(token)) + token
    overhead = len(head) + 2 + pn_len + 16
    if len(frames) + overhead < pad_to:
        frames += bytes(pad_to - overhead - len(frames))
    length = pn_len + len(frames) + 16
    header = head + struct.pack("!H", length | 0x4000) + pn.to_bytes(pn_len, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    sealed = aead.encrypt(nonce, frames, header)
    pn_offset = len(header) - pn_len
    sample = sealed[4 - pn_len:4 - pn_len + 16]
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(sample) + enc.finalize()
    out = bytearray(header + sealed)
    out[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        out[pn_offset + i] ^= mask[1 + i]
    return bytes(out)
