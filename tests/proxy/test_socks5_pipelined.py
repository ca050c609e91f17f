"""The pipelined SOCKS5 handshake of `proxy.socks5.dial`: greeting and CONNECT in one segment,
servers that read byte by byte or strictly, early target bytes, and the step-by-step fallback."""
from __future__ import annotations

import socket
import time

import pytest

from dae_py.runtime.proxy import Destination, DialOptions, ProxyRefusedError, dial_tcp, socks5
from tests.proxy.test_proxy import run, serve, socks_node, socks_ok
from tests.relay.servers import GREETING, REPLY, REQUEST, echo_after, raw_server, recv_exact, stop

OPTS = DialOptions(connect_timeout=2, handshake_timeout=0.3)


class TestPipelinedSocks5:
    def test_greeting_and_connect_leave_in_one_segment(self) -> None:
        seen: list[bytes] = []

        def handle(conn: socket.socket) -> None:
            time.sleep(0.05)  # both parts are queued by now if they were sent together
            seen.append(conn.recv(4096))
            conn.sendall(b"\x05\x00" + REPLY)
            echo_after(conn)

        async def scenario() -> None:
            listener, port, task = await raw_server(handle)
            stream = await dial_tcp(socks_node(port), Destination("192.0.2.7", 80), OPTS)
            await stream.sendall(b"ping")
            assert await stream.recv(4) == b"ping"
            stream.close()
            await stop(listener, task)

        run(scenario)
        assert seen == [GREETING + REQUEST]

    def test_server_reading_byte_by_byte(self) -> None:
        def handle(conn: socket.socket) -> None:
            got = b"".join(recv_exact(conn, 1) for _ in range(len(GREETING)))
            assert got == GREETING
            conn.sendall(b"\x05\x00")
            got = b"".join(recv_exact(conn, 1) for _ in range(len(REQUEST)))
            assert got == REQUEST
            for byte in REPLY:  # and a reply dribbled out byte by byte
                conn.sendall(bytes((byte,)))
                time.sleep(0.002)
            echo_after(conn)

        async def scenario() -> None:
            listener, port, task = await raw_server(handle)
            stream = await dial_tcp(socks_node(port), Destination("192.0.2.7", 80), OPTS)
            await stream.sendall(b"x" * 100)
            got = b""
            while len(got) < 100:
                got += await stream.recv(100)
            assert got == b"x" * 100
            stream.close()
            await stop(listener, task)

        run(scenario)

    def test_strict_asyncio_server(self) -> None:
        async def scenario() -> None:
            seen: list[bytes] = []
            server, port = await serve(lambda r, w: socks_ok(r, w, seen))
            for _ in range(3):
                stream = await dial_tcp(socks_node(port), Destination("192.0.2.7", 80), OPTS)
                await stream.sendall(b"hello")
                assert await stream.recv(5) == b"hello"
                stream.close()
            assert seen == [REQUEST[:4] + REQUEST[4:]] * 3
            server.close()

        run(scenario)

    def test_target_bytes_in_the_reply_segment_are_kept(self) -> None:
        def handle(conn: socket.socket) -> None:
            recv_exact(conn, len(GREETING) + len(REQUEST))
            conn.sendall(b"\x05\x00" + REPLY + b"220 banner\r\n")  # a server-first protocol
            echo_after(conn)

        async def scenario() -> None:
            listener, port, task = await raw_server(handle)
            stream = await dial_tcp(socks_node(port), Destination("192.0.2.7", 80), OPTS)
            assert await stream.recv(100) == b"220 banner\r\n"
            stream.close()
            await stop(listener, task)

        run(scenario)

    def test_domain_bound_address_in_the_reply(self) -> None:
        name = b"proxy.example"
        reply = b"\x05\x00\x00\x03" + bytes((len(name),)) + name + b"\x04\x38"

        def handle(conn: socket.socket) -> None:
            recv_exact(conn, len(GREETING) + len(REQUEST))
            conn.sendall(b"\x05\x00" + reply[:5])  # split inside the address
            time.sleep(0.02)
            conn.sendall(reply[5:] + b"early")
            echo_after(conn)

        async def scenario() -> None:
            listener, port, task = await raw_server(handle)
            stream = await dial_tcp(socks_node(port), Destination("192.0.2.7", 80), OPTS)
            assert await stream.recv(100) == b"early"
            stream.close()
            await stop(listener, task)

        run(scenario)

    def test_refusal_is_still_named(self) -> None:
        def handle(conn: socket.socket) -> None:
            recv_exact(conn, len(GREETING) + len(REQUEST))
            conn.sendall(b"\x05\x00\x05\x05\x00\x01\x00\x00\x00\x00\x00\x00")
            conn.recv(10)

        async def scenario() -> None:
            listener, port, task = await raw_server(handle)
            with pytest.raises(ProxyRefusedError, match="connection refused"):
                await dial_tcp(socks_node(port), Destination("192.0.2.7", 80), OPTS)
            assert ("127.0.0.1", port) not in socks5._NO_PIPELINING  # refusal is not a lost request
            await stop(listener, task)

        run(scenario)

    @pytest.mark.parametrize("then", ["hang", "close"])
    def test_server_that_drops_the_pipelined_request_gets_the_plain_handshake(self,
                                                                             then: str) -> None:
        """A server reading the greeting with one recv(64) swallows the request: it answers
        the method selection, then waits (or gives up). The dial is redone step by step, and
        the node is remembered."""
        segments: list[bytes] = []

        def handle(conn: socket.socket) -> None:
            segments.append(conn.recv(64))  # greeting (and, pipelined, the lost request)
            conn.sendall(b"\x05\x00")
            if len(segments[-1]) > len(GREETING):
                if then == "hang":
                    conn.recv(64)  # waits for a request that already came
                return
            segments.append(conn.recv(64))
            conn.sendall(REPLY)
            echo_after(conn)

        async def scenario() -> None:
            listener, port, task = await raw_server(handle)
            socks5._NO_PIPELINING.discard(("127.0.0.1", port))
            try:
                for _ in range(2):
                    stream = await dial_tcp(socks_node(port), Destination("192.0.2.7", 80), OPTS)
                    await stream.sendall(b"ok")
                    assert await stream.recv(2) == b"ok"
                    stream.close()
                assert ("127.0.0.1", port) in socks5._NO_PIPELINING
            finally:
                socks5._NO_PIPELINING.discard(("127.0.0.1", port))
                await stop(listener, task)

        run(scenario)
        # pipelined once, then step by step for the retry and for the next flow
        assert segments == [GREETING + REQUEST, GREETING, REQUEST, GREETING, REQUEST]
