"""Chunk-batching edges of the AEAD framings, exercised against a real server through the
lab's `whoami` echo target: writes of exactly one chunk, one byte either side of it, many chunks
in one write, and replies read back in pieces cut at every kind of place (inside a length, inside
a tag, a byte past a unit), so that an in-place seal or open that miscounts shows as corrupt
bytes or an authentication failure."""
from __future__ import annotations

import os

from dae_py.runtime.net.stream import RECV_SIZE, Buffer, SocketStream, Stream

# Cut sizes for the reads under the framing: 1 and 2 split a length, 17/18/19 land inside, at
# and past the sealed length of SIP004, the large ones inside and past a full chunk.
CUTS = (1, 2, 17, 18, 19, 0x3FFF + 15, 0x3FFF + 16, 0x3FFF + 17, 0x4000 + 18, 3, 65536, 7)


def edge_sizes(max_payload: int) -> list[int]:
    """Write sizes around a framing's largest chunk, and one write of many chunks."""
    return [1, max_payload - 1, max_payload, max_payload + 1, 2 * max_payload,
            3 * max_payload + 7, (1 << 20) + 3]


class Cutting:
    """A SocketStream whose reads return at most the next size of CUTS (cycling): the framing
    above it sees every kind of partial unit, from a real server's bytes."""

    def __init__(self, raw: SocketStream) -> None:
        self.raw = raw
        self._i = 0

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        cut = CUTS[self._i % len(CUTS)]
        self._i += 1
        return await self.raw.recv(min(n, cut))

    async def sendall(self, data: Buffer) -> None:
        await self.raw.sendall(data)

    def unread(self, data: bytes) -> None:
        self.raw.unread(data)

    def take_pending(self) -> bytes:
        return self.raw.take_pending()

    def shutdown_write(self) -> None:
        self.raw.shutdown_write()

    def close(self) -> None:
        self.raw.close()

    def abort(self) -> None:
        self.raw.abort()

    def splice_fd(self) -> int | None:
        return None


async def read_exactly(stream: Stream, n: int, step: int = RECV_SIZE) -> bytes:
    got = bytearray()
    while len(got) < n:
        data = await stream.recv(min(step, n - len(got)))
        assert data, f"EOF after {len(got)} of {n} bytes"
        got += data
    return bytes(got)


async def echo_edges(stream: Stream, max_payload: int) -> None:
    """Through `stream` (dialled to the whoami target): its greeting line, then each edge size
    written in one sendall and read back whole, then all of them in one write read back in
    odd-sized recv calls (the stream's own split of a decoded read)."""
    greeting = b""
    while not greeting.endswith(b"\n"):
        data = await stream.recv(1)
        assert data, "EOF before the target's greeting"
        greeting += data
    sizes = edge_sizes(max_payload)
    for size in sizes:
        payload = os.urandom(size)
        await stream.sendall(payload)
        assert await read_exactly(stream, size) == payload, f"a {size}-byte write came back changed"
    payload = os.urandom(sum(sizes))
    await stream.sendall(memoryview(payload))
    assert await read_exactly(stream, len(payload), step=max_payload + 5) == payload
