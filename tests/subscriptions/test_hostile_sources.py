"""Subscription sources that misbehave: a server that accepts and never answers, one that sends
its headers and then trickles the body a byte at a time, one that answers garbage, one whose body
never ends (past the size bound) and one that closes mid-body. Each fetch ends with a FetchError
within its time bound, the error never holds the URL's token, and the event loop stays free
(another task keeps running while the fetch waits)."""
from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest

from dae_py.contract.subformats import MAX_BODY_BYTES
from dae_py.runtime.subscriptions.fetch import FetchError, fetch_body

TOKEN = "S3cretSubToken"
TIMEOUT = 0.6
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
    for _ in range(600):
        writer.write(b"x")
        await writer.drain()
        await asyncio.sleep(0.05)


async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"\x16\x03\x01\x00\xffnot http at all\r\n\r\n" + bytes(range(256)))
    await writer.drain()
    await asyncio.sleep(5)


async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"a" * (1 << 20))
    try:
        for _ in range((MAX_BODY_BYTES >> 20) + 8):
            writer.write(chunk)
            await writer.drain()
    except ConnectionError:
        pass


async def cut(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.readuntil(b"\r\n\r\n")
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 5000\r\n\r\nc3M6Ly9h")
    await writer.drain()
    writer.close()


async def fetch_from(handler: Handler) -> tuple[str, float, int]:
    """The fetch's error text, how long it took, and how often a 10 ms ticker ran meanwhile."""
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    tick_task = asyncio.create_task(ticker())
    start = time.monotonic()
    try:
        with pytest.raises(FetchError) as err:
            await fetch_body(f"http://127.0.0.1:{port}/api/subscribe?token={TOKEN}", timeout=TIMEOUT)
        return str(err.value), time.monotonic() - start, ticks
    finally:
        tick_task.cancel()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize("handler, why", [
    (silent, "timed out"),
    (trickle, "timed out"),
    (garbage, "bad HTTP response"),
    (endless, "body larger than"),
    (cut, "Payload"),
], ids=["silent", "trickle", "garbage", "endless", "cut"])
def test_a_misbehaving_source_ends_in_a_bounded_error_without_the_token(handler: Handler, why: str) -> None:
    message, took, ticks = asyncio.run(fetch_from(handler))
    assert why in message
    assert TOKEN not in message
    assert took < TIMEOUT + 5  # the endless body is 16 MiB over loopback: the size bound, not the clock, ends it
    if why == "timed out":  # the loop stayed free while the fetch waited (~60 ticks if idle)
        assert ticks >= 10
