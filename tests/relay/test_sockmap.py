"""The kernel pump (runtime/relay/sockmap.py, templates/bpf/sockmap.c) on loopback TCP pairs:
the hand-over loses nothing, EOF and RST are forwarded, a reader that stops reading holds the
sender back (bounded gateway memory) and then gets every byte, and nothing is left in the maps."""
from __future__ import annotations

import asyncio
import hashlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from dae_py.compiler.emit import SOCKMAP_OBJECT
from dae_py.runtime.relay import RelayConfig, sockmap
from dae_py.runtime.relay.pump import IdleSweeper
from dae_py.runtime.relay.sockmap import SockmapFlow, SockmapPump
from tests.conftest import have_root_bpf
from tests.relay.conftest import tcp_pair

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def sockmap_object(sockmap_build: Path) -> Path:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    return sockmap_build / SOCKMAP_OBJECT


@pytest.fixture
def pump(sockmap_object: Path) -> Iterator[SockmapPump]:
    pump = SockmapPump(str(sockmap_object))
    try:
        yield pump
        assert pump.entries() == (0, 0, 0), "a flow left entries in the maps"
    finally:
        pump.close()


class Harness:
    """client <-> [relay_client | relay_upstream] <-> server, the middle a SockmapFlow."""

    def __init__(self, pump: SockmapPump, sweeper: IdleSweeper | None = None) -> None:
        self.loop = asyncio.get_running_loop()
        self.client, relay_client = tcp_pair()
        relay_upstream, self.server = tcp_pair()
        self.up = self.down = 0
        self.ended: asyncio.Future[object] = self.loop.create_future()
        self.flow = SockmapFlow(self.loop, pump, relay_client, relay_upstream, self._up, self._down,
                                self._on_end, sweeper)

    def _up(self, n: int) -> None:
        self.up += n

    def _down(self, n: int) -> None:
        self.down += n

    def _on_end(self, _flow: SockmapFlow, outcome: object) -> None:
        self.ended.set_result(outcome)

    def start(self) -> None:
        assert self.flow.join()
        self.flow.start()

    def close(self) -> None:
        self.client.close()
        self.server.close()


async def read_all(sock: socket.socket, n: int | None = None) -> bytes:
    """Read until EOF (or n bytes)."""
    loop = asyncio.get_running_loop()
    out = bytearray()
    while n is None or len(out) < n:
        data = await loop.sock_recv(sock, 1 << 20)
        if not data:
            break
        out += data
    return bytes(out)


def run(coro_fn: Callable[[], Awaitable[None]], timeout: float = 20.0) -> None:
    async def main() -> None:
        await asyncio.wait_for(coro_fn(), timeout)
    asyncio.run(main())


def test_bytes_queued_before_the_hand_over_are_sent_and_counted(pump: SockmapPump) -> None:
    async def scenario() -> None:
        h = Harness(pump)
        loop = h.loop
        await loop.sock_sendall(h.client, b"early")  # waits in relay_client's queue
        await asyncio.sleep(0.02)
        h.start()
        assert await read_all(h.server, 5) == b"early"
        await loop.sock_sendall(h.server, b"reply")
        assert await read_all(h.client, 5) == b"reply"
        h.flow.close()
        assert await h.ended == "closed by the relay"
        assert (h.up, h.down) == (5, 5)
        h.close()

    run(scenario)


@pytest.mark.parametrize("first", ["client", "server"])
def test_half_close_is_forwarded_behind_the_bytes(pump: SockmapPump, first: str) -> None:
    """One side sends a lot and shuts down its sending side: the other reads every byte, then
    EOF, and can still answer; then it closes too and the flow ends 'closed'."""
    async def scenario() -> None:
        h = Harness(pump)
        h.start()
        loop = h.loop
        a, b = (h.client, h.server) if first == "client" else (h.server, h.client)
        payload = os.urandom(3 << 20)
        reader = loop.create_task(read_all(b))
        await loop.sock_sendall(a, payload)
        a.shutdown(socket.SHUT_WR)
        got = await reader
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        await loop.sock_sendall(b, b"answer")
        b.shutdown(socket.SHUT_WR)
        assert await read_all(a) == b"answer"
        assert await h.ended == "closed"
        moved = (h.up, h.down) if first == "client" else (h.down, h.up)
        assert moved == (len(payload), 6)
        h.close()

    run(scenario)


@pytest.mark.parametrize("side", ["client", "server"])
def test_a_reset_aborts_the_other_side(pump: SockmapPump, side: str) -> None:
    async def scenario() -> None:
        h = Harness(pump)
        h.start()
        loop = h.loop
        await loop.sock_sendall(h.client, b"x" * 1000)
        assert len(await read_all(h.server, 1000)) == 1000
        gone, other = (h.client, h.server) if side == "client" else (h.server, h.client)
        gone.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        gone.close()
        outcome = await h.ended
        assert isinstance(outcome, ConnectionResetError)
        with pytest.raises(ConnectionResetError):
            await read_all(other)
        other.close()

    run(scenario)


def test_a_reader_that_stops_holds_the_sender_back_then_gets_every_byte(pump: SockmapPump) -> None:
    """The server stops reading: past the program's backlog bound the client's window closes
    (it cannot push more than the buffers along the way hold), and once the server reads again
    every byte arrives in order, through user space and then the kernel again."""
    async def scenario() -> None:
        h = Harness(pump)
        h.start()
        loop = h.loop
        total = 96 << 20
        payload = os.urandom(1 << 20)
        digest = hashlib.sha256()
        sent = 0

        async def send() -> None:
            nonlocal sent
            while sent < total:
                await loop.sock_sendall(h.client, payload)
                digest.update(payload)
                sent += len(payload)
            h.client.shutdown(socket.SHUT_WR)

        sender = loop.create_task(send())
        await asyncio.sleep(1.0)  # the server reads nothing meanwhile
        stalled = sent
        assert stalled < 48 << 20, f"the client pushed {stalled >> 20} MiB into a peer that does not read"
        got = hashlib.sha256()
        n = 0
        while True:
            data = await loop.sock_recv(h.server, 1 << 20)
            if not data:
                break
            got.update(data)
            n += len(data)
        await sender
        assert n == total and got.digest() == digest.digest()
        h.server.close()
        assert await h.ended == "closed"
        assert h.up == total
        h.client.close()

    run(scenario, timeout=60)


def test_many_concurrent_flows_each_arrive_whole(pump: SockmapPump) -> None:
    """FLOWS flows at once, each a different payload each way, checksummed at both ends."""
    flows = int(os.environ.get("DAE_SOCKMAP_FLOWS", "500"))

    async def one(h: Harness) -> None:
        loop = h.loop
        up, down = os.urandom(20_000 + len(str(id(h))) * 101), os.urandom(7_000)
        readers = (loop.create_task(read_all(h.server)), loop.create_task(read_all(h.client)))
        await loop.sock_sendall(h.client, up)
        h.client.shutdown(socket.SHUT_WR)
        await loop.sock_sendall(h.server, down)
        h.server.shutdown(socket.SHUT_WR)
        got_up, got_down = await asyncio.gather(*readers)
        assert hashlib.sha256(got_up).digest() == hashlib.sha256(up).digest()
        assert hashlib.sha256(got_down).digest() == hashlib.sha256(down).digest()
        assert await h.ended == "closed"
        assert (h.up, h.down) == (len(up), len(down))
        h.close()

    async def scenario() -> None:
        harnesses = []
        for _ in range(flows):
            h = Harness(pump)
            h.start()
            harnesses.append(h)
        await asyncio.gather(*(one(h) for h in harnesses))

    run(scenario, timeout=120)


def test_an_object_that_does_not_load_means_splice_and_one_warning(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bad = tmp_path / "sockmap.o"
    bad.write_bytes(b"not an ELF object")
    sockmap._warned.clear()
    assert SockmapPump.open(str(bad)) is None
    assert SockmapPump.open(str(bad)) is None
    warnings = [r.getMessage() for r in caplog.records if r.name == "dae_py.runtime.relay.sockmap"]
    assert len(warnings) == 1 and "spliced instead" in warnings[0]


def test_relay_mode_sets_splice_sockmap_and_the_builds_object() -> None:
    base = RelayConfig(so_mark=7)
    copy, splice, kernel = (sockmap.with_mode(base, mode, "/b") for mode in ("copy", "splice", "sockmap"))
    assert (copy.splice, copy.sockmap) == (False, False)
    assert (splice.splice, splice.sockmap) == (True, False)
    assert (kernel.splice, kernel.sockmap, kernel.sockmap_object, kernel.so_mark) == (True, True, "/b/sockmap.o", 7)


def test_the_idle_sweeper_sees_bytes_the_kernel_moved(pump: SockmapPump) -> None:
    """Bytes that never reach user space still keep a flow alive and reach its counters at the
    sweeper's tick; the flow that moves nothing is ended as idle."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        sweeper = IdleSweeper(loop, 0.3, tick=0.03)
        idle, busy = Harness(pump, sweeper), Harness(pump, sweeper)
        idle.start()
        busy.start()
        for _ in range(20):  # 0.6 s of traffic, all of it redirected in the kernel
            await loop.sock_sendall(busy.client, b"x" * 100)
            await read_all(busy.server, 100)
            await asyncio.sleep(0.03)
        assert await idle.ended == "idle"
        assert not busy.ended.done()
        assert busy.up == 2000
        assert await busy.ended == "idle"
        sweeper.close()
        idle.close()
        busy.close()

    run(scenario)


def test_closing_the_pump_leaves_no_fd_and_no_attachment(sockmap_object: Path) -> None:
    """The link (the attachment), the program and the maps are fds of this process: closing the
    pump closes them all, so nothing of it outlives the relay (nothing is pinned)."""
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        pump = SockmapPump(str(sockmap_object))
        assert len(os.listdir("/proc/self/fd")) > before
        pump.close()
        assert len(os.listdir("/proc/self/fd")) == before
