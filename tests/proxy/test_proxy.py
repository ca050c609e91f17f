"""Outbound protocols against fake peers on loopback: every malformed reply is a clear error
naming the node, nothing hangs, and what the peer sent early is not lost."""
from __future__ import annotations

import asyncio
import base64
import socket
import ssl
import struct
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop

from dae_py.runtime.proxy import (
    Destination,
    DialError,
    DialOptions,
    Node,
    ProxyAuthError,
    ProxyProtocolError,
    ProxyRefusedError,
    SocketStream,
    dial_tcp,
    open_udp,
)
from dae_py.runtime.proxy.socks5 import Socks5UdpAssociation, decode_addr, encode_addr
from dae_py.runtime.relay.pump import relay

OPTS = DialOptions(connect_timeout=2, handshake_timeout=0.3)
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def run(coro_fn: Callable[[], Awaitable]) -> object:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(asyncio.wait_for(coro_fn(), 20))


async def serve(handler: Handler,
                ssl_ctx: ssl.SSLContext | None = None) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0, ssl=ssl_ctx)
    return server, server.sockets[0].getsockname()[1]


def socks_node(port: int, user: str | None = None, password: str | None = None) -> Node:
    return Node("fake", "socks5", "127.0.0.1", port, user, password)


async def socks_ok(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                   seen: list[bytes] | None = None) -> None:
    """A minimal SOCKS5 server whose 'target' is an echo."""
    head = await reader.readexactly(2)
    await reader.readexactly(head[1])
    writer.write(b"\x05\x00")
    request = await reader.readexactly(4)
    atyp = request[3]
    if atyp == 3:
        size_byte = await reader.readexactly(1)
        addr = size_byte + await reader.readexactly(size_byte[0] + 2)
    else:
        addr = await reader.readexactly({1: 4, 4: 16}[atyp] + 2)
    if seen is not None:
        seen.append(request + addr)
    writer.write(b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38")
    while data := await reader.read(65536):
        writer.write(data)
    writer.close()


def scripted(*steps: bytes | int) -> Handler:
    """int: read that many bytes; bytes: send them. Then hold the connection until EOF."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for step in steps:
                if isinstance(step, int):
                    await reader.readexactly(step)
                else:
                    writer.write(step)
                    await writer.drain()
            await reader.read()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
    return handler


def closing(*steps: bytes | int) -> Handler:
    """Like `scripted`, then close at once."""
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for step in steps:
            if isinstance(step, int):
                await reader.readexactly(step)
            else:
                writer.write(step)
        await writer.drain()
        writer.close()
    return handler


GREETING, REQUEST_V4 = 3, 10  # our no-auth greeting; a CONNECT to an IPv4 target


class TestSocks5:
    @pytest.mark.parametrize("handler,error,message", [
        (closing(b"HTTP/1.1 400 Bad Request\r\n\r\n"), ProxyProtocolError,
         "not a SOCKS5 server: method reply starts with 0x48 (expected 0x05)"),
        (scripted(GREETING, b"\x05\xff"), ProxyAuthError,
         "SOCKS5 server accepts none of our authentication methods "
         "(no-auth; does it need a username?)"),
        (scripted(GREETING, b"\x05\x02"), ProxyProtocolError,
         "SOCKS5 server chose method 0x02, which we did not offer"),
        (scripted(GREETING, b"\x05\x00", REQUEST_V4, b"\x05\x05\x00\x01"), ProxyRefusedError,
         "SOCKS5 CONNECT 192.0.2.7:80: connection refused"),
        (scripted(GREETING, b"\x05\x00", REQUEST_V4, b"\x04\x00\x00\x01"), ProxyProtocolError,
         "SOCKS5 reply version 0x04 (expected 0x05): b'\\x04\\x00\\x00\\x01'"),
        (scripted(GREETING, b"\x05\x00", REQUEST_V4, b"\x05\x00\x00\x07"), ProxyProtocolError,
         "SOCKS5 reply with unknown address type 0x07"),
        (closing(GREETING, b"\x05\x00", REQUEST_V4, b"\x05\x00\x00\x01\x7f\x00"),
         ProxyProtocolError,
         "connection closed while reading the SOCKS5 reply address (after 2 of 6 bytes)"),
        (closing(GREETING), ProxyProtocolError,
         "connection closed while reading the SOCKS5 method selection reply (before any byte)"),
        (scripted(), ProxyProtocolError, "SOCKS5 CONNECT handshake timed out after 0.3s"),
    ], ids=["garbage", "no-method", "unoffered-method", "rep-refused", "bad-version", "bad-atyp",
            "truncated", "closed", "silent"])
    def test_malformed_reply_is_a_clear_error_naming_the_node(self, handler: Handler, error: type[Exception],
                                                             message: str) -> None:
        async def scenario() -> None:
            server, port = await serve(handler)
            started = time.monotonic()
            with pytest.raises(error) as info:
                await dial_tcp(socks_node(port), Destination("192.0.2.7", 80), OPTS)
            assert time.monotonic() - started < 2
            assert str(info.value) == f"node 'fake' (socks5 127.0.0.1:{port}): {message}"
            server.close()

        run(scenario)

    def test_rejected_credentials(self) -> None:
        auth = 1 + 1 + 1 + 1 + len("wrong")  # ver, ulen, "u", plen, password

        async def scenario() -> None:
            server, port = await serve(scripted(4, b"\x05\x02", auth, b"\x01\x01"))
            with pytest.raises(ProxyAuthError, match="username/password rejected for user 'u' "
                                                     r"\(status 0x01\)"):
                await dial_tcp(socks_node(port, "u", "wrong"), Destination("192.0.2.7", 80), OPTS)
            server.close()

        run(scenario)

    @pytest.mark.parametrize("dst,encoded", [
        (Destination("192.0.2.7", 80), b"\x01\xc0\x00\x02\x07\x00\x50"),
        (Destination("2001:db8::7", 443), b"\x04" + socket.inet_pton(socket.AF_INET6,
                                                                     "2001:db8::7") + b"\x01\xbb"),
        (Destination("example.test", 8080), b"\x03\x0cexample.test\x1f\x90"),
    ])
    def test_connect_request_encodes_the_destination_and_the_stream_is_spliceable(
            self, dst: Destination, encoded: bytes) -> None:
        async def scenario() -> None:
            seen: list[bytes] = []
            server, port = await serve(lambda r, w: socks_ok(r, w, seen))
            stream = await dial_tcp(socks_node(port), dst, OPTS)
            assert isinstance(stream, SocketStream) and stream.splice_fd() is not None
            await stream.sendall(b"hello")
            assert await stream.recv(5) == b"hello"
            assert seen == [b"\x05\x01\x00" + encoded]
            stream.close()
            server.close()

        run(scenario)

    def test_address_codec_round_trips_and_rejects_garbage(self) -> None:
        for host in ("192.0.2.1", "2001:db8::1", "example.test"):
            assert decode_addr(b"xx" + encode_addr(host, 53), 2) == (host, 53,
                                                                    2 + len(encode_addr(host, 53)))
        for bad in (b"", b"\x01\x7f", b"\x09abcdef", b"\x03\x05ab"):
            with pytest.raises(ValueError):
                decode_addr(bad, 0)


def udp_socks_server(drop_first_garbage: bool = True) -> tuple[Handler, dict[str, Any]]:
    """A SOCKS5 server that grants UDP ASSOCIATE on 0.0.0.0:<port> (the client must then use
    the control connection's address) and echoes datagrams back with their header."""
    state: dict = {}

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        await reader.readexactly(3)
        writer.write(b"\x05\x00")
        request = await reader.readexactly(4 + 4 + 2)
        state["request"] = request
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind(("127.0.0.1", 0))
        udp.setblocking(False)
        writer.write(b"\x05\x00\x00\x01\x00\x00\x00\x00" + struct.pack("!H", udp.getsockname()[1]))

        def readable() -> None:
            data, addr = udp.recvfrom(65535)
            if drop_first_garbage and not state.get("garbage_sent"):
                state["garbage_sent"] = True
                udp.sendto(b"\x00\x00\x00\x09garbage", addr)
            udp.sendto(data, addr)

        loop.add_reader(udp.fileno(), readable)
        state["close"] = writer.close
        await reader.read()
        loop.remove_reader(udp.fileno())
        udp.close()
        writer.close()

    return handler, state


class TestSocks5Udp:
    def test_associate_sends_and_receives_through_the_relay_and_drops_garbage(self) -> None:
        async def scenario() -> None:
            handler, state = udp_socks_server()
            server, port = await serve(handler)
            replies: asyncio.Queue = asyncio.Queue()
            assoc = await open_udp(socks_node(port), OPTS,
                                   lambda data, src: replies.put_nowait((data, src)))
            assert isinstance(assoc, Socks5UdpAssociation)
            closed = asyncio.Event()
            assoc.on_close.append(lambda _a: closed.set())
            assoc.send(b"ping", Destination("198.51.100.9", 7001))
            assert await asyncio.wait_for(replies.get(), 2) == (b"ping", ("198.51.100.9", 7001))
            assert assoc.dropped == 1  # the malformed datagram
            assert state["request"][:4] == b"\x05\x03\x00\x01"  # we named our UDP address
            state["close"]()  # control connection ends -> association ends
            await asyncio.wait_for(closed.wait(), 2)
            server.close()

        run(scenario)

    def test_http_nodes_carry_no_udp(self) -> None:
        async def scenario() -> None:
            with pytest.raises(DialError, match="http nodes carry no UDP"):
                await open_udp(Node("h", "http", "127.0.0.1", 1), OPTS, lambda d, s: None)

        run(scenario)


def http_node(port: int, user: str | None = None, password: str | None = None,
              protocol: str = "http", **kw: Any) -> Node:
    return Node("web", protocol, "127.0.0.1", port, user, password, **kw)


def connect_then(response: bytes, seen: list[bytes] | None = None) -> Handler:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()
            return
        if seen is not None:
            seen.append(head)
        writer.write(response)
        await writer.drain()
        try:
            if response.startswith(b"HTTP/1.1 200"):
                while data := await reader.read(65536):
                    writer.write(data)
            else:
                await reader.read()
        except ConnectionError:
            pass
        writer.close()
    return handler


class TestHttpConnect:
    def test_basic_auth_and_bytes_sent_with_the_response_are_kept(self) -> None:
        async def scenario() -> None:
            seen: list[bytes] = []
            server, port = await serve(connect_then(
                b"HTTP/1.1 200 Connection established\r\nX: y\r\n\r\nEARLY", seen))
            stream = await dial_tcp(http_node(port, "u", "p"), Destination("2001:db8::1", 443),
                                    OPTS)
            assert await stream.recv() == b"EARLY"
            await stream.sendall(b"more")
            assert await stream.recv() == b"more"
            token = base64.b64encode(b"u:p").decode()
            assert seen == [(f"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n"
                             f"Proxy-Authorization: Basic {token}\r\n\r\n").encode()]
            stream.close()
            server.close()

        run(scenario)

    @pytest.mark.parametrize("response,error,message", [
        (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", ProxyProtocolError,
         "malformed HTTP CONNECT status line b'SSH-2.0-OpenSSH_9.2'"),
        (b"HTTP/1.1 407 Proxy Authentication Required\r\n\r\n", ProxyAuthError,
         "HTTP proxy authentication required (no credentials) (407 Proxy Authentication "
         "Required)"),
        (b"HTTP/1.1 502 Bad Gateway\r\n\r\n", ProxyRefusedError,
         "HTTP CONNECT 192.0.2.7:80 answered 502 Bad Gateway"),
        (b"HTTP/1.1 200 OK\r\n" + b"X-Long: " + b"a" * 20000, ProxyProtocolError,
         "the HTTP CONNECT response head is longer than 16384 bytes"),
        (b"", ProxyProtocolError, "HTTP CONNECT handshake timed out after 0.3s"),
    ], ids=["garbage", "407", "502", "endless-head", "silent"])
    def test_bad_response_is_a_clear_error_naming_the_node(self, response: bytes, error: type[Exception],
                                                          message: str) -> None:
        async def scenario() -> None:
            server, port = await serve(connect_then(response))
            with pytest.raises(error) as info:
                await dial_tcp(http_node(port), Destination("192.0.2.7", 80), OPTS)
            assert str(info.value).startswith(f"node 'web' (http 127.0.0.1:{port}): {message}")
            server.close()

        run(scenario)

    def test_refused_connection_names_the_node(self) -> None:
        async def scenario() -> None:
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
            probe.close()
            with pytest.raises(DialError) as info:
                await dial_tcp(http_node(port), Destination("192.0.2.7", 80), OPTS)
            assert str(info.value) == (f"node 'web' (http 127.0.0.1:{port}): connect to "
                                       f"127.0.0.1:{port} failed: Connection refused")

        run(scenario)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("tls")
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=proxy.test", "-addext", "subjectAltName=DNS:proxy.test",
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    return cert, key


class TestHttps:
    def server_context(self, certificate: tuple[Path, Path], sni_seen: list) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(*certificate)
        ctx.sni_callback = lambda sslobj, name, _ctx: sni_seen.append(name)
        return ctx

    def test_tunnel_over_tls_with_sni_and_allow_insecure(self, certificate: tuple[Path, Path]) -> None:
        async def scenario() -> None:
            sni: list = []
            server, port = await serve(connect_then(b"HTTP/1.1 200 OK\r\n\r\n"),
                                       self.server_context(certificate, sni))
            node = http_node(port, protocol="https", sni="proxy.test", allow_insecure=True)
            stream = await dial_tcp(node, Destination("192.0.2.7", 80), OPTS)
            assert stream.splice_fd() is None  # TLS: the relay copies
            await stream.sendall(b"x" * 100_000)
            got = b""
            while len(got) < 100_000:
                got += await stream.recv()
            assert got == b"x" * 100_000 and sni == ["proxy.test"]
            stream.close()
            server.close()

        run(scenario)

    def test_untrusted_certificate_is_refused_without_allow_insecure(self, certificate: tuple[Path, Path]) -> None:
        async def scenario() -> None:
            server, port = await serve(connect_then(b"HTTP/1.1 200 OK\r\n\r\n"),
                                       self.server_context(certificate, []))
            node = http_node(port, protocol="https", sni="proxy.test")
            with pytest.raises(ProxyProtocolError, match="TLS handshake failed: "
                                                         "CERTIFICATE_VERIFY_FAILED"):
                await dial_tcp(node, Destination("192.0.2.7", 80), OPTS)
            server.close()

        run(scenario)


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.setblocking(False)
    a = socket.socket()
    a.setblocking(False)
    loop = asyncio.get_running_loop()
    await loop.sock_connect(a, listener.getsockname())
    b, _ = await loop.sock_accept(listener)
    listener.close()
    return a, b


class TestPump:
    def test_both_directions_half_close_and_counts(self) -> None:
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            client, relay_client = await tcp_pair()
            relay_upstream, server = await tcp_pair()
            counts = {"up": 0, "down": 0}
            task = loop.create_task(relay(
                SocketStream(relay_client), SocketStream(relay_upstream),
                idle_timeout=10, count_up=lambda n: counts.__setitem__("up", counts["up"] + n),
                count_down=lambda n: counts.__setitem__("down", counts["down"] + n)))
            up, down = b"u" * 3_000_000, b"d" * 2_000_000

            async def read_to_eof(sock: socket.socket) -> bytes:
                chunks = []
                while data := await loop.sock_recv(sock, 1 << 16):
                    chunks.append(data)
                return b"".join(chunks)

            async def client_side() -> bytes:
                await loop.sock_sendall(client, up)
                client.shutdown(socket.SHUT_WR)
                return await read_to_eof(client)

            async def server_side() -> bytes:
                got = await read_to_eof(server)  # EOF arrives: the client's half-close
                await loop.sock_sendall(server, down)
                server.close()
                return got

            got_down, got_up = await asyncio.gather(client_side(), server_side())
            outcome = await task
            assert (got_up, got_down) == (up, down)
            assert counts == {"up": len(up), "down": len(down)}
            assert outcome == "closed (copy)"
            client.close()

        run(scenario)

    def test_idle_flow_is_ended(self) -> None:
        async def scenario() -> None:
            client, relay_client = await tcp_pair()
            relay_upstream, server = await tcp_pair()
            outcome = await relay(SocketStream(relay_client), SocketStream(relay_upstream),
                                  idle_timeout=0.05, count_up=lambda n: None,
                                  count_down=lambda n: None)
            assert outcome.startswith("idle for 0.05s")
            loop = asyncio.get_running_loop()
            assert await loop.sock_recv(client, 10) == b""
            assert await loop.sock_recv(server, 10) == b""
            client.close()
            server.close()

        run(scenario)


@pytest.mark.root
def test_every_outgoing_socket_carries_the_mark() -> None:
    """so_mark keeps the gateway's own traffic out of the datapath (needs CAP_NET_ADMIN)."""
    async def scenario() -> None:
        seen: list[bytes] = []
        server, port = await serve(lambda r, w: socks_ok(r, w, seen))
        marked = DialOptions(so_mark=0x80, connect_timeout=2, handshake_timeout=1)
        stream = await dial_tcp(socks_node(port), Destination("192.0.2.7", 80), marked)
        assert isinstance(stream, SocketStream)
        assert stream.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x80
        stream.close()
        handler, _state = udp_socks_server(drop_first_garbage=False)
        udp_server, udp_port = await serve(handler)
        assoc = await open_udp(socks_node(udp_port), marked, lambda d, s: None)
        assert isinstance(assoc, Socks5UdpAssociation)
        assert assoc._sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x80
        assert assoc._control.sock.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x80
        assoc.close()
        server.close()
        udp_server.close()

    run(scenario)
