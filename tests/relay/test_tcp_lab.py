"""TCP through the relay in a namespace lab: nftables tproxy -> relay -> real peers."""
from __future__ import annotations

import asyncio
import logging
import socket
import time
from pathlib import Path

import pytest

from dae_py.runtime.groups import Check
from dae_py.runtime.relay import RelayConfig
from dae_py.runtime.relay.sockmap import with_mode

from . import servers
from .conftest import DANTE4, DANTE6, DANTE_AUTH, TINY, TINY_AUTH, Env, gateway_env, group_id, group_of, manifest
from .lab import GW_UP4, RELAY_MARK, SERVER4, SERVER6, Lab

pytestmark = pytest.mark.root


def refusals(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The relay's one line per refused flow."""
    return [r.getMessage() for r in caplog.records
            if r.name == "dae_py.runtime.relay.tcp" and " refused: " in r.getMessage()]


async def whoami_through(env: Env, family: int, server: str, outbound_id: int) -> str:
    sock = env.client(family, outbound_id=outbound_id)
    try:
        await servers.connect(sock, server, 7000)
        return (await servers.recv_line(sock)).decode().split()[0]
    finally:
        sock.close()


@pytest.mark.parametrize("family,server,node,seen", [
    (socket.AF_INET, SERVER4, "dante", DANTE4),
    (socket.AF_INET6, SERVER6, "dante", DANTE6),
    (socket.AF_INET6, SERVER6, "dante6", DANTE6),
    (socket.AF_INET, SERVER4, "dante_auth", DANTE_AUTH),
    (socket.AF_INET, SERVER4, "tiny", TINY),
    (socket.AF_INET, SERVER4, "tiny_auth", TINY_AUTH),
])
def test_tcp_flow_reaches_server_through_the_proxy(lab: Lab, family: int, server: str, node: str,
                                                   seen: str | None) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            assert await whoami_through(env, family, server, group_id(node)) == seen
            counters = env.gateway.stats[f"g_{node}"]
            assert counters.flows == 1

    lab.run(scenario)


def test_direct_flow_leaves_from_the_gateway(lab: Lab) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            assert await whoami_through(env, socket.AF_INET, SERVER4, 0) == GW_UP4
            assert env.gateway.stats["direct"].flows == 1

    lab.run(scenario)


@pytest.mark.parametrize("mode", ["sockmap", "splice", "copy"])
@pytest.mark.parametrize("outbound", ["direct", "dante"])
def test_half_close_is_forwarded_both_ways(lab: Lab, outbound: str, mode: str, sockmap_build: Path) -> None:
    """The client shuts down its sending side: the server sees EOF, still answers, and the
    client then reads the answer and the server's EOF. (Not through tinyproxy: on the client's
    EOF it shuts the server side and exits, dropping what the server still sends.)"""
    outbound_id = 0 if outbound == "direct" else group_id(outbound)
    config = with_mode(RelayConfig(so_mark=RELAY_MARK, connect_timeout=3, handshake_timeout=3), mode,
                       sockmap_build)

    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config) as env:
            sock = env.client(outbound_id=outbound_id)
            await servers.connect(sock, SERVER4, 7000)
            payload = b"x" * 300_000
            await asyncio.get_running_loop().sock_sendall(sock, payload)
            sock.shutdown(socket.SHUT_WR)
            data = await servers.recv_all(sock)
            sock.close()
            head, _, rest = data.partition(b"\n")
            assert rest == payload + b"BYE\n"
            name = "direct" if outbound == "direct" else f"g_{outbound}"
            await asyncio.sleep(0.05)  # let the relay finish its bookkeeping
            counters = env.gateway.stats[name]
            assert counters.bytes_up == len(payload)
            assert counters.bytes_down == len(data)
            assert counters.active == 0
            pump = env.gateway.tcp.sockmap
            assert (pump is not None) == (mode == "sockmap")
            if pump is not None:
                assert pump.entries() == (0, 0, 0)

    lab.run(scenario)


def test_prefix_bytes_are_sent_first(lab: Lab) -> None:
    """Bytes the datapath already read (sniffing) reach the server before the rest."""
    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            listener = env.lab.socket(env.lab.gw, socket.AF_INET, socket.SOCK_STREAM)
            listener.bind(("127.0.0.1", 0))
            listener.listen()
            client = env.lab.socket(env.lab.gw, socket.AF_INET, socket.SOCK_STREAM)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(client, listener.getsockname())
            conn, peer = await loop.sock_accept(listener)
            env.routes[peer[1]] = group_id("dante")
            task = loop.create_task(env.gateway.tcp.handle(conn, peer, prefix=b"PRE:",
                                                           dst=(SERVER4, 7000)))
            await loop.sock_sendall(client, b"rest")
            client.shutdown(socket.SHUT_WR)
            data = await servers.recv_all(client)
            assert data.split(b"\n", 1)[1] == b"PRE:restBYE\n"
            await task
            client.close()
            listener.close()

    lab.run(scenario)


@pytest.mark.parametrize("node,expected", [
    ("dante_badpw", "SOCKS5 username/password rejected for user 'alice'"),
    ("tiny_badpw", "HTTP proxy authentication failed for user 'bob' (40"),
])
def test_auth_failure_is_a_clear_error(lab: Lab, caplog: pytest.LogCaptureFixture, node: str, expected: str) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            sock = env.client(outbound_id=group_id(node))
            await servers.connect(sock, SERVER4, 7000)
            with pytest.raises(ConnectionResetError):
                await servers.recv_all(sock)
            sock.close()

    with caplog.at_level(logging.INFO):
        lab.run(scenario)
    refused = refusals(caplog)
    assert len(refused) == 1, refused
    assert expected in refused[0] and f"'{node}'" in refused[0]


async def garbage_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.0 418 I am not a SOCKS server\r\n\r\n")
    await writer.drain()
    writer.close()


async def silent_proxy(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # never answers; the relay must time out
    writer.close()


@pytest.mark.parametrize("node,expected", [
    ("garbage", "not a SOCKS5 server: method reply starts with 0x48"),
    ("garbage_http", "HTTP CONNECT " + SERVER4 + ":7000 answered 418"),
    ("silent", "SOCKS5 CONNECT handshake timed out after 1s"),
])
def test_malformed_peer_is_a_clear_error_and_other_flows_continue(lab: Lab, caplog: pytest.LogCaptureFixture, node: str,
                                                                  expected: str) -> None:
    config = RelayConfig(so_mark=RELAY_MARK, connect_timeout=1, handshake_timeout=1)

    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config) as env:
            fakes = []
            for port, handler in ((1080, garbage_proxy), (8080, garbage_proxy)):
                fakes.append(await servers.tcp_server(
                    lab.socket(lab.up, socket.AF_INET, socket.SOCK_STREAM), "10.77.2.20", port,
                    handler))
            fakes.append(await servers.tcp_server(
                lab.socket(lab.up, socket.AF_INET, socket.SOCK_STREAM), "10.77.2.21", 1080,
                silent_proxy))
            good = env.client(outbound_id=group_id("dante"))
            await servers.connect(good, SERVER4, 7000)
            assert (await servers.recv_line(good)).split()[0] == DANTE4.encode()

            bad = env.client(outbound_id=group_id(node))
            await servers.connect(bad, SERVER4, 7000)
            with pytest.raises(ConnectionResetError):
                await servers.recv_all(bad)
            bad.close()

            # the established flow still relays, and new flows still work
            loop = asyncio.get_running_loop()
            await loop.sock_sendall(good, b"still here")
            good.shutdown(socket.SHUT_WR)
            assert await servers.recv_all(good) == b"still hereBYE\n"
            good.close()
            assert await whoami_through(env, socket.AF_INET, SERVER4, group_id("dante")) == DANTE4
            for fake in fakes:
                fake.close()

    with caplog.at_level(logging.INFO):
        lab.run(scenario)
    refused = refusals(caplog)
    assert len(refused) == 1, refused
    assert expected in refused[0] and f"'{node}'" in refused[0], refused[0]


def test_failover_to_the_next_node_when_the_first_proxy_stops(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    first, second = lab.next_proxy_ip(), lab.next_proxy_ip()
    peer1 = lab.danted(first)
    lab.danted(second)
    extra_nodes = [{"name": "p1", "protocol": "socks5", "host": first, "port": 1080},
                   {"name": "p2", "protocol": "socks5", "host": second, "port": 1080}]
    group = {"name": "failover", "id": 2, "policy": "min", "nodes": ["p1", "p2"],
             "check": {"check_interval_s": 30, "check_tolerance_ms": 50}}

    async def scenario() -> None:
        async with gateway_env(lab, manifest([group], extra_nodes)) as env:
            assert await whoami_through(env, socket.AF_INET, SERVER4, 2) == first
            await asyncio.to_thread(peer1.stop)
            assert await whoami_through(env, socket.AF_INET, SERVER4, 2) == second
            failover = group_of(env.gateway.table, 2)
            chosen = failover.select()
            assert chosen is not None and chosen.name == "p2"
            assert not failover.stats[Check.TCP]["p1"].alive
            # the next flow goes straight to p2: p1 is down until a check revives it
            before = failover.dial_attempts
            assert await whoami_through(env, socket.AF_INET, SERVER4, 2) == second
            assert failover.dial_attempts == before + 1

    with caplog.at_level(logging.INFO):
        lab.run(scenario)
    down = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
    assert len(down) == 1 and "'p1'" in down[0] and "Connection refused" in down[0], down


def test_all_nodes_down_refuses_at_once(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    group = {"name": "doomed", "id": 3, "policy": "min_avg10", "nodes": ["dead", "dead2"],
             "check": {"check_interval_s": 30, "check_tolerance_ms": 50}}

    async def scenario() -> None:
        async with gateway_env(lab, manifest([group])) as env:
            doomed = group_of(env.gateway.table, 3)
            for _attempt in range(2):
                sock = env.client(outbound_id=3)
                started = time.monotonic()
                await servers.connect(sock, SERVER4, 7000)
                with pytest.raises(ConnectionResetError):
                    await servers.recv_all(sock)
                sock.close()
                assert time.monotonic() - started < 2.0
                # first flow: both nodes tried once; second flow: no dial at all
                assert doomed.dial_attempts == 2
            assert env.gateway.stats["doomed"].refused == 2

    with caplog.at_level(logging.INFO):
        lab.run(scenario)
    refused = refusals(caplog)
    assert len(refused) == 2
    assert ("every node failed: 'dead' (socks5 10.77.2.22:1080): "
            "connect to 10.77.2.22:1080 failed") in refused[0]
    assert "all nodes down for tcp" in refused[1]


def test_block_refuses_at_once(lab: Lab) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            sock = env.client(outbound_id=1)
            await servers.connect(sock, SERVER4, 7000)
            with pytest.raises(ConnectionResetError):
                await servers.recv_all(sock)
            sock.close()
            assert env.gateway.stats["block"].refused == 1

    lab.run(scenario)


def test_a_flow_to_the_relay_itself_is_refused_not_looped(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            sock = env.client(outbound_id=0)
            await servers.connect(sock, "10.77.1.1", 12345)  # the gateway's own address
            with pytest.raises(ConnectionResetError):
                await servers.recv_all(sock)
            sock.close()
            assert env.gateway.stats["direct"].flows == 0

    with caplog.at_level(logging.INFO):
        lab.run(scenario)
    assert any("addressed to the relay itself" in line for line in refusals(caplog))
