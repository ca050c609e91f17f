"""The relay's per-connection fast path: the pipelined SOCKS5 handshake (and its fallback), the
FdPoller, the task-less spliced flow of TcpRelay and its idle sweeper, and what the running
gateway imports."""
from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dae_py.runtime.groups.stats import Check
from dae_py.runtime.proxy import Destination, DialOptions, ProxyRefusedError, dial_tcp
from dae_py.runtime.proxy import socks5
from dae_py.runtime.net.poller import IN, OUT, poller_for
from dae_py.runtime.relay import OutboundTable, RelayConfig, StaticRouter, TcpRelay
from dae_py.runtime.relay.pump import IdleSweeper, SplicedFlow

from tests.proxy.test_proxy import run, serve, socks_ok, socks_node

OPTS = DialOptions(connect_timeout=2, handshake_timeout=0.3)
GREETING = b"\x05\x01\x00"
REQUEST = b"\x05\x01\x00\x01\xc0\x00\x02\x07\x00\x50"  # CONNECT 192.0.2.7:80
REPLY = b"\x05\x00\x00\x01\x7f\x00\x00\x01\x04\x38"


async def raw_server(handle) -> tuple[socket.socket, int, asyncio.Task]:
    """A listener whose connections `handle(conn)` serves in a thread (blocking sockets, as
    simple servers are written)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]

    def serve_forever() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            conn.settimeout(3)
            try:
                handle(conn)
            except OSError:
                pass
            finally:
                conn.close()

    task = asyncio.get_running_loop().create_task(asyncio.to_thread(serve_forever))
    return listener, port, task


async def stop(listener: socket.socket, task: asyncio.Task) -> None:
    listener.shutdown(socket.SHUT_RDWR)
    listener.close()
    await asyncio.wait_for(task, 5)


def recv_exact(conn: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = conn.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("closed")
        buf += chunk
    return buf


def echo_after(conn: socket.socket) -> None:
    while data := conn.recv(4096):
        conn.sendall(data)


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


class TestPoller:
    def test_watch_modify_remove_and_stale_views(self) -> None:
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            poller = poller_for(loop)
            assert poller_for(loop) is poller
            a, b = socket.socketpair()
            a.setblocking(False)
            got: list[int] = []
            fired = asyncio.Event()

            def handler(events: int) -> None:
                got.append(events)
                poller.modify(a.fileno(), IN)  # writable was a one-off
                fired.set()

            poller.watch(a.fileno(), OUT, handler)
            await asyncio.wait_for(fired.wait(), 2)
            assert got[0] & OUT
            fired.clear()
            b.send(b"x")
            await asyncio.wait_for(fired.wait(), 2)
            assert got[-1] & IN
            poller.remove(a.fileno())
            poller.remove(a.fileno())  # twice: no error
            poller.watch(a.fileno(), IN, handler)
            # closed behind the poller's back: remove and watch cope
            fd = a.fileno()
            a.close()
            poller.remove(fd)
            c, d = socket.socketpair()
            poller.watch(c.fileno(), IN, handler)
            poller.remove(c.fileno())
            for s in (b, c, d):
                s.close()

        run(scenario)


async def tcp_pair() -> tuple[socket.socket, socket.socket]:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    a = socket.create_connection(listener.getsockname())
    b, _ = listener.accept()
    listener.close()
    a.setblocking(False)
    b.setblocking(False)
    return a, b


class TestSplicedFlow:
    def test_idle_sweeper_ends_only_idle_flows(self) -> None:
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            sweeper = IdleSweeper(loop, 0.2, tick=0.02)
            ended: dict[str, tuple[float, object]] = {}
            t0 = loop.time()
            pairs = []
            for name in ("idle", "busy"):
                client, relay_client = await tcp_pair()
                relay_upstream, server = await tcp_pair()
                pairs.append((client, server))
                SplicedFlow(loop, relay_client, relay_upstream, lambda n: None, lambda n: None,
                            lambda f, o, name=name: ended.__setitem__(name, (loop.time() - t0, o)),
                            sweeper=sweeper).start()
            busy_client = pairs[1][0]
            for _ in range(20):  # 0.4 s of traffic every 0.02 s
                busy_client.send(b"x")
                await asyncio.sleep(0.02)
            assert "busy" not in ended
            elapsed, outcome = ended["idle"]
            assert outcome == "idle" and 0.2 <= elapsed < 0.35
            await asyncio.sleep(0.35)
            assert ended["busy"][1] == "idle"
            assert not sweeper.flows
            sweeper.close()
            for client, server in pairs:
                client.close()
                server.close()

        run(scenario)

    def test_both_way_eof_closes_and_counts(self) -> None:
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            client, relay_client = await tcp_pair()
            relay_upstream, server = await tcp_pair()
            counts = {"up": 0, "down": 0}
            done = loop.create_future()
            flow = SplicedFlow(loop, relay_client, relay_upstream,
                               lambda n: counts.__setitem__("up", counts["up"] + n),
                               lambda n: counts.__setitem__("down", counts["down"] + n),
                               lambda f, o: done.set_result(o))
            flow.start()
            await loop.sock_sendall(client, b"a" * 200_000)
            client.shutdown(socket.SHUT_WR)
            got = b""
            while data := await loop.sock_recv(server, 65536):
                got += data
            assert got == b"a" * 200_000  # the half-close arrived after the bytes
            await loop.sock_sendall(server, b"b" * 1000)
            server.shutdown(socket.SHUT_WR)
            got = b""
            while data := await loop.sock_recv(client, 65536):
                got += data
            assert got == b"b" * 1000
            assert await asyncio.wait_for(done, 2) == "closed"
            assert counts == {"up": 200_000, "down": 1000}
            assert relay_client.fileno() == -1 and relay_upstream.fileno() == -1
            client.close()
            server.close()

        run(scenario)


class TestTcpRelayHandOff:
    def test_established_flow_keeps_no_task_and_counts(self) -> None:
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            server, port = await serve(socks_ok)
            manifest = {"nodes": [{"name": "fake", "protocol": "socks5", "host": "127.0.0.1",
                                   "port": port}],
                        "groups": [{"name": "proxy", "id": 2, "nodes": ["fake"],
                                    "policy": "random"}]}
            config = RelayConfig(connect_timeout=2, handshake_timeout=1)
            table = OutboundTable.from_manifest(manifest, config.dial_options())
            relay = TcpRelay(StaticRouter(2), table, config)
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            client = socket.create_connection(listener.getsockname())
            conn, peer = listener.accept()
            await relay.handle(conn, peer, dst=("192.0.2.7", 80))  # returns once handed off
            assert not relay._flows and relay._sweeper is not None
            assert len(relay._sweeper.flows) == 1
            counters = relay.stats["proxy"]
            assert (counters.flows, counters.active) == (1, 1)
            client.setblocking(False)
            await loop.sock_sendall(client, b"hello")
            assert await loop.sock_recv(client, 5) == b"hello"
            client.shutdown(socket.SHUT_WR)  # socks_ok closes on EOF: both ways end
            assert await asyncio.wait_for(loop.sock_recv(client, 5), 2) == b""
            for _ in range(100):
                if counters.active == 0:
                    break
                await asyncio.sleep(0.01)
            assert (counters.active, counters.bytes_up, counters.bytes_down) == (0, 5, 5)
            assert not relay._sweeper.flows
            client.close()
            listener.close()
            await relay.close()
            server.close()

        run(scenario)

    def test_close_ends_established_flows(self) -> None:
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            server, port = await serve(socks_ok)
            manifest = {"nodes": [{"name": "fake", "protocol": "socks5", "host": "127.0.0.1",
                                   "port": port}],
                        "groups": [{"name": "proxy", "id": 2, "nodes": ["fake"],
                                    "policy": "random"}]}
            config = RelayConfig(connect_timeout=2, handshake_timeout=1)
            relay = TcpRelay(StaticRouter(2), OutboundTable.from_manifest(manifest, config.dial_options()),
                             config)
            listener = socket.socket()
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            client = socket.create_connection(listener.getsockname())
            conn, peer = listener.accept()
            await relay.handle(conn, peer, dst=("192.0.2.7", 80))
            await relay.close()
            client.setblocking(False)
            assert await asyncio.wait_for(loop.sock_recv(client, 5), 2) == b""
            assert relay.stats["proxy"].active == 0
            client.close()
            listener.close()
            server.close()

        run(scenario)


def test_running_gateway_does_not_import_the_compiler_front_end() -> None:
    """The runtime process needs neither the rule parser (lark), the YAML loader nor the
    compiler's settings: megabytes of RSS it would keep for nothing."""
    code = ("import sys, runtime.cli, runtime.gateway, runtime.relay, runtime.kernel_router\n"
            "bad = [m for m in ('lark', 'ruamel', 'ruamel.yaml', 'dae_py.compiler.settings', 'dae_py.compiler.rules',"
            " 'dae_py.contract.evaluate', 'jinja2') if m in sys.modules]\n"
            "print(bad)\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_log_time_stamps_match_the_default_format() -> None:
    import logging

    from dae_py.runtime.cli import _Formatter

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ours, default = _Formatter(fmt), logging.Formatter(fmt)
    for created in (1_700_000_000.0, 1_700_000_000.0005, 1_700_000_000.999, 1_700_000_001.25):
        record = logging.LogRecord("runtime.relay.tcp", logging.INFO, __file__, 1, "tcp %s", ("x",), None)
        record.created = created
        record.msecs = (created - int(created)) * 1000
        assert ours.format(record) == default.format(record)


def test_log_lines_name_the_module_without_the_package_namespace() -> None:
    import logging

    from dae_py.runtime.cli import _Formatter

    record = logging.LogRecord("dae_py.runtime.relay.tcp", logging.INFO, __file__, 1, "tcp %s", ("x",), None)
    line = _Formatter("%(name)s: %(message)s").format(record)
    assert line == "runtime.relay.tcp: tcp x"
    assert record.name == "dae_py.runtime.relay.tcp", "the record itself is left as it was"


class DecidingRouter:
    """A router with the kernel router's one-call interface: every flow to group 2."""

    def decide(self, flow: object) -> int:
        return 2

    def decide_tcp(self, src: tuple[str, int], dst: tuple[str, int]) -> tuple[int, str]:
        return 2, " (fallback)"


def closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class FastRelay:
    """A TcpRelay (started, so its loop and poller are set) and flows handed to its callback
    path the way its accept callback does, from connections to a listener of our own."""

    def __init__(self, ports: list[int], handshake_timeout: float = 1.0) -> None:
        nodes = [{"name": f"n{i}", "protocol": "socks5", "host": "127.0.0.1", "port": port}
                 for i, port in enumerate(ports)]
        manifest = {"nodes": nodes, "groups": [{"name": "proxy", "id": 2, "policy": "fixed",
                                                "fixed_index": 0,
                                                "nodes": [n["name"] for n in nodes]}]}
        config = RelayConfig(connect_timeout=1, handshake_timeout=handshake_timeout)
        self.relay = TcpRelay(DecidingRouter(), OutboundTable.from_manifest(manifest, config.dial_options()),
                              config)
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()

    async def start(self) -> None:
        await self.relay.start(0, ("127.0.0.1",))

    def flow(self) -> socket.socket:
        client = socket.create_connection(self.listener.getsockname())
        conn, peer = self.listener.accept()
        self.relay._accepted(conn, peer)
        client.setblocking(False)
        return client

    async def close(self) -> None:
        await self.relay.close()
        self.listener.close()


async def until(check, seconds: float = 3.0) -> None:  # type: ignore[no-untyped-def]
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    assert check()


class TestCallbackDial:
    def test_no_task_from_accept_to_established(self) -> None:
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            server, port = await serve(socks_ok)
            fast = FastRelay([port])
            await fast.start()
            client = fast.flow()
            assert fast.relay.dialing and not fast.relay._flows  # dialing, without a task
            await loop.sock_sendall(client, b"hello")
            assert await asyncio.wait_for(loop.sock_recv(client, 5), 2) == b"hello"
            assert not fast.relay._flows and not fast.relay.dialing
            counters = fast.relay.stats["proxy"]
            assert (counters.flows, counters.active) == (1, 1)
            client.shutdown(socket.SHUT_WR)
            assert await asyncio.wait_for(loop.sock_recv(client, 5), 2) == b""
            await until(lambda: counters.active == 0)
            assert (counters.bytes_up, counters.bytes_down) == (5, 5)
            client.close()
            await fast.close()
            server.close()

        run(scenario)

    def test_fails_over_to_the_next_node_and_marks_the_first_down(self, caplog) -> None:  # type: ignore[no-untyped-def]
        caplog.set_level(logging.INFO)

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            server, port = await serve(socks_ok)
            fast = FastRelay([closed_port(), port])
            await fast.start()
            client = fast.flow()
            await loop.sock_sendall(client, b"x")
            assert await asyncio.wait_for(loop.sock_recv(client, 1), 2) == b"x"
            group = fast.relay.outbounds.get(2)
            assert [n.name for n in group.alive(Check.TCP)] == ["n1"]
            client.close()
            await fast.close()
            server.close()

        run(scenario)
        assert "node 'n0' is down: connect to 127.0.0.1:" in caplog.text
        assert "via proxy node n1" in caplog.text

    def test_every_node_down_refuses_at_once(self, caplog) -> None:  # type: ignore[no-untyped-def]
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            fast = FastRelay([closed_port(), closed_port()])
            await fast.start()
            client = fast.flow()
            started = time.monotonic()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(loop.sock_recv(client, 1), 2)
            assert time.monotonic() - started < 1
            assert fast.relay.stats["proxy"].refused == 1
            client = fast.flow()  # all down now: refused without a dial
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(loop.sock_recv(client, 1), 2)
            assert fast.relay.stats["proxy"].refused == 2
            client.close()
            await fast.close()

        run(scenario)
        assert "every node failed" in caplog.text and "all nodes down" in caplog.text

    def test_malformed_reply_is_named(self, caplog) -> None:  # type: ignore[no-untyped-def]
        def handle(conn: socket.socket) -> None:
            recv_exact(conn, len(GREETING) + len(REQUEST))
            conn.sendall(b"\x05\x00\x05\x00\x00\x07\x00\x00")
            conn.recv(10)

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            listener, port, task = await raw_server(handle)
            fast = FastRelay([port])
            await fast.start()
            client = fast.flow()
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(loop.sock_recv(client, 1), 3)
            client.close()
            await fast.close()
            await stop(listener, task)

        run(scenario)
        assert "SOCKS5 reply with unknown address type 0x07" in caplog.text

    def test_node_dropping_the_pipelined_request_still_carries_the_flow(self) -> None:
        def handle(conn: socket.socket) -> None:
            first = conn.recv(64)
            conn.sendall(b"\x05\x00")
            if len(first) > len(GREETING):
                conn.recv(64)  # hangs: the request was swallowed
                return
            recv_exact(conn, len(REQUEST))
            conn.sendall(REPLY)
            echo_after(conn)

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            listener, port, task = await raw_server(handle)
            socks5._NO_PIPELINING.discard(("127.0.0.1", port))
            fast = FastRelay([port], handshake_timeout=0.3)
            await fast.start()
            try:
                client = fast.flow()
                await loop.sock_sendall(client, b"late")
                assert await asyncio.wait_for(loop.sock_recv(client, 4), 3) == b"late"
                assert ("127.0.0.1", port) in socks5._NO_PIPELINING
                client.close()
                client = fast.flow()  # the next flow takes the coroutine path at once
                assert fast.relay._flows and not fast.relay.dialing
                await loop.sock_sendall(client, b"next")
                assert await asyncio.wait_for(loop.sock_recv(client, 4), 3) == b"next"
                client.close()
            finally:
                socks5._NO_PIPELINING.discard(("127.0.0.1", port))
                await fast.close()
                await stop(listener, task)

        run(scenario)

    def test_target_bytes_in_the_reply_segment_reach_the_client(self) -> None:
        def handle(conn: socket.socket) -> None:
            recv_exact(conn, len(GREETING) + len(REQUEST))
            conn.sendall(b"\x05\x00" + REPLY + b"220 banner\r\n")
            echo_after(conn)

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            listener, port, task = await raw_server(handle)
            fast = FastRelay([port])
            await fast.start()
            client = fast.flow()
            assert await asyncio.wait_for(loop.sock_recv(client, 100), 2) == b"220 banner\r\n"
            await loop.sock_sendall(client, b"EHLO")
            assert await asyncio.wait_for(loop.sock_recv(client, 4), 2) == b"EHLO"
            client.close()
            await fast.close()
            await stop(listener, task)

        run(scenario)

    def test_close_during_a_dial_resets_the_client(self) -> None:
        def handle(conn: socket.socket) -> None:
            conn.recv(64)
            conn.recv(64)  # never answers

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            listener, port, task = await raw_server(handle)
            fast = FastRelay([port], handshake_timeout=5)
            await fast.start()
            client = fast.flow()
            await until(lambda: any(d.state == 2 for d in fast.relay.dialing))
            await fast.close()
            assert not fast.relay.dialing
            with pytest.raises(ConnectionResetError):
                await asyncio.wait_for(loop.sock_recv(client, 1), 2)
            client.close()
            await stop(listener, task)

        run(scenario)


@pytest.mark.root
def test_callback_dial_marks_its_socket() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        server, port = await serve(socks_ok)
        fast = FastRelay([port])
        fast.relay.outbounds.get(2).opts = DialOptions(so_mark=0x80, connect_timeout=1,
                                                       handshake_timeout=1)
        await fast.start()
        client = fast.flow()
        await loop.sock_sendall(client, b"m")
        assert await asyncio.wait_for(loop.sock_recv(client, 1), 2) == b"m"
        (flow,) = fast.relay._sweeper.flows
        assert flow.upstream.getsockopt(socket.SOL_SOCKET, socket.SO_MARK) == 0x80
        client.close()
        await fast.close()
        server.close()

    run(scenario)


def test_accepted_sockets_inherit_nodelay_from_the_relay_listener() -> None:
    """The callback path sets no TCP_NODELAY per flow: Linux copies it from the listener."""
    async def scenario() -> None:
        relay = TcpRelay(DecidingRouter(), OutboundTable({}), RelayConfig())
        port = await relay.start(0, ("127.0.0.1",))
        (listener,) = relay._listeners
        assert listener.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        probe = socket.socket()
        probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        probe.bind(("127.0.0.1", 0))
        probe.listen()
        client = socket.create_connection(probe.getsockname())
        conn, _ = probe.accept()
        assert conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        for s in (client, conn, probe):
            s.close()
        await relay.close()
        assert port

    run(scenario)
