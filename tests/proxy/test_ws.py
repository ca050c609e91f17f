"""The WebSocket client (runtime/net/ws.py): frames both ways, the upgrade checked, early data
as Xray and v2ray >= 4.35 read it (base64url in Sec-WebSocket-Protocol), pings answered,
a close ending the stream. The server here is a small RFC 6455 one on loopback; the client
against a real server (v2ray 4.34's, gorilla/websocket) is in test_vmess_lab.py."""
from __future__ import annotations

import asyncio
import base64
import os
import struct
from collections.abc import Awaitable, Callable

import pytest

from dae_py.runtime.net import ws
from dae_py.runtime.net.errors import ProxyProtocolError
from dae_py.runtime.net.sockets import DialOptions, connect_tcp
from dae_py.runtime.net.stream import SocketStream


def server_frame(payload: bytes, opcode: int = ws.OP_BINARY, fin: bool = True) -> bytes:
    n = len(payload)
    b0 = (0x80 if fin else 0) | opcode
    if n < 126:
        return struct.pack("!BB", b0, n) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", b0, 126, n) + payload
    return struct.pack("!BBQ", b0, 127, n) + payload


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 200_000])
def test_client_frames_are_masked_and_parse_back(size: int) -> None:
    payload = os.urandom(size)
    frame = ws.client_frame(payload, key=b"\x01\x02\x03\x04")
    assert frame[1] & 0x80  # masked
    assert payload[:4] != frame[-size:][:4] or size == 0
    parsed = ws.parse_frame(frame)
    assert parsed is not None and parsed[0] == ws.OP_BINARY and parsed[1] == payload
    assert parsed[2] == len(frame)
    assert ws.parse_frame(frame[:-1]) is None  # cut short: wait for more


@pytest.mark.parametrize("frame,why", [
    (bytes((0xC2, 0)), "reserved bits"),
    (bytes((0x89, 126, 0, 200)) + bytes(200), "control frame"),
    (bytes((0x09, 0)), "control frame"),
    (bytes((0x83, 0)), "unknown opcode"),
])
def test_frames_no_server_may_send_are_refused(frame: bytes, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        ws.parse_frame(frame)


def test_the_upgrade_request_carries_early_data_base64url_without_padding() -> None:
    req = ws.upgrade_request("h.example", "/p", b"a2V5", b"\xfb\xff\x00")
    assert b"GET /p HTTP/1.1\r\nHost: h.example\r\n" in req
    assert b"\r\nSec-WebSocket-Protocol: -_8A\r\n" in req and req.endswith(b"\r\n\r\n")


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter, dict[str, str]], Awaitable[None]]


async def serve(handler: Handler, status: bytes = b"101 Switching Protocols",
                accept: bool = True) -> tuple[asyncio.Server, int, dict[str, str]]:
    seen: dict[str, str] = {}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        seen["request"] = lines[0]
        headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        seen.update(headers)
        key = headers["sec-websocket-key"].encode()
        answer = ws.accept_key(key) if accept else b"bm9wZQ=="
        writer.write(b"HTTP/1.1 " + status + b"\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Accept: " + answer + b"\r\n\r\n")
        await handler(reader, writer, headers)
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], seen


async def read_client_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    buf = b""
    while True:
        parsed = ws.parse_frame(buf)
        if parsed is not None:
            return parsed[0], parsed[1]
        buf += await reader.read(65536)


async def open_client(port: int, early: int = 0) -> ws.WsStream:
    raw = SocketStream(await connect_tcp("127.0.0.1", port, DialOptions()))
    return await ws.open_ws(raw, "h.example", "/path", "node", 5.0, early)


def test_data_flows_both_ways_and_pings_are_answered() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        opcode, data = await read_client_frame(reader)
        writer.write(server_frame(b"ping!", ws.OP_PING))
        writer.write(server_frame(data[:3], ws.OP_BINARY, fin=False) + server_frame(data[3:], ws.OP_CONT))
        await writer.drain()
        opcode, pong = await read_client_frame(reader)
        assert (opcode, pong) == (ws.OP_PONG, b"ping!")
        writer.write(server_frame(struct.pack("!H", 1000), ws.OP_CLOSE))
        await writer.drain()

    async def scenario() -> tuple[bytes, dict[str, str]]:
        server, port, seen = await serve(handler)
        stream = await open_client(port)
        payload = os.urandom(100_000)
        await stream.sendall(payload)
        got = b""
        while data := await stream.recv():
            got += data
        stream.close()
        server.close()
        assert got == payload
        return got, seen

    _, seen = asyncio.run(scenario())
    assert seen["request"] == "GET /path HTTP/1.1" and seen["host"] == "h.example"
    assert seen["upgrade"].lower() == "websocket" and "sec-websocket-protocol" not in seen


def test_early_data_rides_in_the_upgrade_and_the_rest_in_a_frame() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                      headers: dict[str, str]) -> None:
        early = headers["sec-websocket-protocol"]
        first = base64.urlsafe_b64decode(early + "=" * (-len(early) % 4))
        _, rest = await read_client_frame(reader)
        writer.write(server_frame(first + rest))
        await writer.drain()

    async def scenario() -> bytes:
        server, port, seen = await serve(handler)
        stream = await open_client(port, early=16)
        assert seen == {}  # nothing sent before the first write
        await stream.sendall(b"0123456789abcdef-and-the-rest")
        got = await stream.recv()
        stream.close()
        server.close()
        return got

    assert asyncio.run(scenario()) == b"0123456789abcdef-and-the-rest"


@pytest.mark.parametrize("status,accept,why", [
    (b"404 Not Found", True, "answered 404 Not Found"),
    (b"101 Switching Protocols", False, "wrong Sec-WebSocket-Accept"),
])
def test_a_failed_upgrade_names_the_cause(status: bytes, accept: bool, why: str) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        await writer.drain()

    async def scenario() -> None:
        server, port, _ = await serve(handler, status, accept)
        try:
            await open_client(port)
        finally:
            server.close()

    with pytest.raises(ProxyProtocolError, match=why):
        asyncio.run(scenario())


def test_a_close_mid_frame_is_a_protocol_error() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, _: dict[str, str]) -> None:
        writer.write(server_frame(b"x" * 1000)[:500])
        await writer.drain()

    async def scenario() -> None:
        server, port, _ = await serve(handler)
        stream = await open_client(port)
        try:
            while await stream.recv():
                pass
        finally:
            stream.close()
            server.close()

    with pytest.raises(ProxyProtocolError, match="middle of a WebSocket frame"):
        asyncio.run(scenario())


def test_masking_xors_the_key_cyclically_in_c_and_in_python(monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1001)
    key = b"\x01\x02\x03\x04"
    expected = bytes(b ^ key[i % 4] for i, b in enumerate(data))
    assert ws._c_mask is not None  # the dependency's compiled speedups are installed
    assert ws.mask(data, key) == expected
    monkeypatch.setattr(ws, "_c_mask", None)
    assert ws.mask(data, key) == expected and ws.mask(b"", key) == b""
