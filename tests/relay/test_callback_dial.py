"""The relay's callback dial (fastdial.CallbackDial): accept to an established spliced flow
without a task, failover, refusals, the fallback for nodes dropping the pipelined request, and
the socket options it sets."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import Callable

import pytest

from dae_py.runtime.groups.stats import Check
from dae_py.runtime.proxy import DialOptions, socks5
from dae_py.runtime.relay import OutboundTable, RelayConfig, Route, TcpRelay
from tests.proxy.test_proxy import run, serve, socks_ok
from tests.relay.conftest import group_of
from tests.relay.servers import GREETING, REPLY, REQUEST, echo_after, raw_server, recv_exact, stop


class DecidingRouter:
    """A router with the kernel router's one-call interface: every flow to group 2."""

    def route(self, flow: object) -> Route:
        return Route(2, None, " (fallback)")


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
        # warm_pool 0: these are the fresh dial's cases, against one-connection scripted servers
        # (the pool's own cases: test_warmpool_lab.py, against danted and tinyproxy)
        config = RelayConfig(connect_timeout=1, handshake_timeout=handshake_timeout, warm_pool=0)
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


async def until(check: Callable[[], object], seconds: float = 3.0) -> None:
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

    def test_fails_over_to_the_next_node_and_marks_the_first_down(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.INFO)

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            server, port = await serve(socks_ok)
            fast = FastRelay([closed_port(), port])
            await fast.start()
            client = fast.flow()
            await loop.sock_sendall(client, b"x")
            assert await asyncio.wait_for(loop.sock_recv(client, 1), 2) == b"x"
            group = group_of(fast.relay.outbounds, 2)
            assert [n.name for n in group.alive(Check.TCP)] == ["n1"]
            client.close()
            await fast.close()
            server.close()

        run(scenario)
        assert "node 'n0' is down: connect to 127.0.0.1:" in caplog.text
        assert "via proxy node n1" in caplog.text

    def test_every_node_down_refuses_at_once(self, caplog: pytest.LogCaptureFixture) -> None:
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

    def test_malformed_reply_is_named(self, caplog: pytest.LogCaptureFixture) -> None:
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
        group_of(fast.relay.outbounds, 2).opts = DialOptions(so_mark=0x80, connect_timeout=1,
                                                       handshake_timeout=1)
        await fast.start()
        client = fast.flow()
        await loop.sock_sendall(client, b"m")
        assert await asyncio.wait_for(loop.sock_recv(client, 1), 2) == b"m"
        assert fast.relay._sweeper is not None
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
