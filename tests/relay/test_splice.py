"""Established flows without a task: SplicedFlow, its idle sweeper, and TcpRelay handing a
dialed flow over to one."""
from __future__ import annotations

import asyncio
import socket

from dae_py.runtime.relay import OutboundTable, RelayConfig, StaticRouter, TcpRelay
from dae_py.runtime.relay.pump import IdleSweeper, SplicedFlow
from tests.proxy.test_proxy import run, serve, socks_ok
from tests.relay.conftest import tcp_pair


class TestSplicedFlow:
    def test_idle_sweeper_ends_only_idle_flows(self) -> None:
        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            sweeper = IdleSweeper(loop, 0.2, tick=0.02)
            ended: dict[str, tuple[float, object]] = {}
            t0 = loop.time()
            pairs = []
            for name in ("idle", "busy"):
                client, relay_client = tcp_pair()
                relay_upstream, server = tcp_pair()
                pairs.append((client, server))

                def on_end(_flow: SplicedFlow, outcome: object, name: str = name) -> None:
                    ended[name] = (loop.time() - t0, outcome)

                SplicedFlow(loop, relay_client, relay_upstream, lambda n: None, lambda n: None, on_end,
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
            client, relay_client = tcp_pair()
            relay_upstream, server = tcp_pair()
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
