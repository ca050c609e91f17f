"""The copy loop's write-behind (runtime/net/writebehind.py): large sends of an encrypted flow on
a shared pool of threads. Over loopback TCP with a sealing layer of the test's own that, like
VMess and Shadowsocks, seals into a few reused buffers and lends them to the socket (a buffer
reused before its send is done shows as a wrong checksum): bulk bytes both ways, half-close in
order behind the last send, a reader that stops (no thread held, bounded buffering), a reset."""
from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Callable
from functools import partial

import pytest

from dae_py.runtime.net.stream import RECV_SIZE, Buffer, LayeredStream, SocketStream, send_lent
from dae_py.runtime.net.writebehind import OFFLOAD_MIN, SendPool
from dae_py.runtime.relay.flow import SEND_THREADS, RelayConfig, default_send_threads
from dae_py.runtime.relay.pump import relay
from tests.proxy.test_proxy import run
from tests.relay.test_splice import tcp_pair

XOR = bytes(b ^ 0x5A for b in range(256))  # the layer's "cipher": every byte XOR 0x5A


def xor(data: Buffer) -> bytes:
    return bytes(data).translate(XOR)


class Sealing(LayeredStream):
    """XOR 'sealing' into two reused buffers lent to the socket below (as VmessStream does with
    SEAL_BUFFERS); half-close is forwarded, so the test sees its order behind the last send."""

    def __init__(self, raw: SocketStream) -> None:
        self.raw = raw
        self._pending = b""
        self._free = [bytearray(RECV_SIZE), bytearray(RECV_SIZE)]
        self.lent_max = 0  # buffers lent at once at most

    async def sendall(self, data: Buffer) -> None:
        while not self._free:  # the pool holds both: the bound is the layer's own too
            await asyncio.sleep(0)
        buf = self._free.pop()
        self.lent_max = max(self.lent_max, 2 - len(self._free))
        out = memoryview(buf)[:len(data)]
        out[:] = xor(data)
        await send_lent(self.raw, out, partial(self._free.append, buf))

    async def recv(self, n: int = RECV_SIZE) -> bytes:
        data = await self.raw.recv(n)
        return xor(data) if data else b""

    def shutdown_write(self) -> None:
        self.raw.shutdown_write()


def pattern(size: int, seed: int) -> bytes:
    """Bytes that differ along the whole stream (a chunk sent twice or out of order shows)."""
    out = bytearray()
    block = 0
    while len(out) < size:
        out += hashlib.sha256(b"%d-%d" % (seed, block)).digest() * 2048
        block += 1
    return bytes(out[:size])


async def read_to_eof(sock: socket.socket, xored: bool = False) -> bytes:
    loop = asyncio.get_running_loop()
    got = bytearray()
    while data := await loop.sock_recv(sock, 1 << 18):
        got += xor(data) if xored else data
    return bytes(got)


def counter() -> tuple[dict[str, int], Callable[[int], None]]:
    seen = {"n": 0}

    def count(n: int) -> None:
        seen["n"] += n
    return seen, count


def test_bulk_both_ways_arrives_whole_and_in_order_with_half_close() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool = SendPool(2)
        client, relay_client = await tcp_pair()
        relay_upstream, server = await tcp_pair()
        upstream = Sealing(SocketStream(relay_upstream))
        up_seen, count_up = counter()
        down_seen, count_down = counter()
        task = loop.create_task(relay(SocketStream(relay_client), upstream, idle_timeout=10,
                                      count_up=count_up, count_down=count_down, senders=pool))
        up, down = pattern(24 << 20, 1), pattern(16 << 20, 2)

        async def client_side() -> bytes:
            await loop.sock_sendall(client, up)
            client.shutdown(socket.SHUT_WR)
            return await read_to_eof(client)

        async def server_side() -> bytes:
            got = await read_to_eof(server, xored=True)  # ends at the forwarded half-close
            await loop.sock_sendall(server, xor(down))
            server.close()
            return got

        to_client, to_server = await asyncio.gather(client_side(), server_side())
        assert hashlib.sha256(to_server).hexdigest() == hashlib.sha256(up).hexdigest()
        assert hashlib.sha256(to_client).hexdigest() == hashlib.sha256(down).hexdigest()
        assert (await task).startswith("closed")
        assert (up_seen["n"], down_seen["n"]) == (len(up), len(down))
        assert pool.jobs > 0, "no send went to the pool"
        assert upstream.lent_max <= 2 and pool.running <= 2
        pool.close()
        assert pool.running == 0
        client.close()

    run(scenario)


def test_a_stalled_reader_holds_no_thread_and_buffers_boundedly() -> None:
    """One pool thread: a flow whose server stops reading must not keep it from the next flow,
    and the relay takes from the client only what the sockets and two chunks hold."""
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool = SendPool(1)
        client, relay_client = await tcp_pair()
        relay_upstream, server = await tcp_pair()  # `server` never reads
        seen, count_up = counter()
        stalled = loop.create_task(relay(SocketStream(relay_client), Sealing(SocketStream(relay_upstream)),
                                         idle_timeout=3.0, count_up=count_up, count_down=lambda n: None,
                                         senders=pool))
        pusher = loop.create_task(loop.sock_sendall(client, b"x" * (64 << 20)))
        last = -1
        while seen["n"] != last:  # until the relay stops taking bytes
            last = seen["n"]
            await asyncio.sleep(0.2)
        assert 0 < seen["n"] < 32 << 20, f"the relay took {seen['n']} bytes from a stalled flow"
        assert not pusher.done()

        # a second flow moves its bulk through the same single thread meanwhile
        client2, relay_client2 = await tcp_pair()
        relay_upstream2, server2 = await tcp_pair()
        moving = loop.create_task(relay(SocketStream(relay_client2), Sealing(SocketStream(relay_upstream2)),
                                        idle_timeout=10, count_up=lambda n: None, count_down=lambda n: None,
                                        senders=pool))
        payload = pattern(8 << 20, 3)

        async def push() -> None:
            await loop.sock_sendall(client2, payload)
            client2.shutdown(socket.SHUT_WR)

        got, _ = await asyncio.gather(read_to_eof(server2, xored=True), push())
        assert got == payload
        server2.close()
        assert (await moving).startswith("closed")
        assert pool.jobs > 0 and not stalled.done(), "the second flow ran after the stalled one ended"

        # the stalled flow ends on its idle timeout: both sockets closed, nothing left behind
        assert (await stalled).startswith("idle")
        pusher.cancel()
        await asyncio.gather(pusher, return_exceptions=True)
        pool.close()
        assert pool.running == 0
        for sock in (client, client2, server):
            sock.close()

    run(scenario)


def test_a_reset_mid_send_ends_the_flow_with_an_error() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        pool = SendPool(2)
        client, relay_client = await tcp_pair()
        relay_upstream, server = await tcp_pair()
        task = loop.create_task(relay(SocketStream(relay_client), Sealing(SocketStream(relay_upstream)),
                                      idle_timeout=10, count_up=lambda n: None, count_down=lambda n: None,
                                      senders=pool))
        pusher = loop.create_task(loop.sock_sendall(client, b"y" * (512 << 20)))
        await loop.sock_recv(server, 1 << 20)  # bulk is moving
        server.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        server.close()  # RST: the relay's next send fails
        outcome = await asyncio.wait_for(task, 10)
        assert outcome.startswith("error"), outcome
        with pytest.raises(OSError):  # the relay aborted the client's side behind it
            await asyncio.wait_for(pusher, 10)
        pool.close()
        assert pool.running == 0
        client.close()

    run(scenario)


def test_small_writes_stay_on_the_loop() -> None:
    async def scenario() -> None:
        pool = SendPool(1)
        a, b = await tcp_pair()
        stream = SocketStream(a)
        stream.write_behind(pool)
        await stream.sendall(b"z" * (OFFLOAD_MIN - 1))
        await stream.send_lent(bytearray(100))
        assert pool.jobs == 0 and pool.running == 0
        await stream.sendall(b"z" * OFFLOAD_MIN)
        await stream.drain()
        assert pool.jobs == 1
        stream.close()
        assert await read_to_eof(b) == b"z" * (OFFLOAD_MIN - 1) + bytes(100) + b"z" * OFFLOAD_MIN
        b.close()
        pool.close()

    run(scenario)


def test_the_send_threads_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DAE_PY_SEND_THREADS", "0")
    assert RelayConfig().send_threads == 0
    monkeypatch.setenv("DAE_PY_SEND_THREADS", "3")
    assert default_send_threads() == 3
    monkeypatch.setenv("DAE_PY_SEND_THREADS", "many")
    assert default_send_threads() == SEND_THREADS
    monkeypatch.delenv("DAE_PY_SEND_THREADS")
    assert RelayConfig().send_threads == SEND_THREADS
