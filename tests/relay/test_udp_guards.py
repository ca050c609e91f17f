"""The UDP relay's own guards, on loopback: datagrams addressed to the relay itself, and the
bounds on reply sockets (per client and in total)."""
from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from runtime.relay import OutboundTable, RelayConfig, StaticRouter, UdpRelay
from runtime.relay.udp import _Client, reply_socket_limit

pytestmark = pytest.mark.root  # transparent reply sockets need CAP_NET_ADMIN

BLOCK = 1


def relay(**config: int) -> UdpRelay:
    return UdpRelay(StaticRouter(BLOCK), OutboundTable.from_manifest({}), RelayConfig(**config))


def test_a_datagram_to_the_relay_s_own_port_is_refused_before_any_state() -> None:
    async def scenario() -> None:
        r = relay()
        port = await r.start(0, hosts=("127.0.0.1",))
        try:
            for sport in range(40000, 40100):
                r.handle_packet(b"probe", ("127.0.0.1", sport), ("127.0.0.1", port), socket.AF_INET)
            assert r.stats.guards.self_addressed == 100
            assert not r.clients and not r.stats.by_outbound
            r.handle_packet(b"x", ("127.0.0.1", 40000), ("127.0.0.1", port + 1), socket.AF_INET)
            assert list(r.clients) == [("127.0.0.1", 40000)]  # another port: a flow as usual
        finally:
            await r.close()

    asyncio.run(scenario())


def test_reply_sockets_are_bounded_per_client_and_in_total(caplog) -> None:
    async def scenario() -> None:
        r = relay(udp_reply_sockets_per_client=3, udp_reply_sockets=5)
        await r.start(0, hosts=("127.0.0.1",))
        sinks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2)]
        try:
            clients = []
            for s in sinks:
                s.bind(("127.0.0.1", 0))
                c = _Client(s.getsockname(), socket.AF_INET, r.now())
                r.clients[c.src] = c
                clients.append(c)
            for i in range(5):  # TEST-NET-1 remotes: bound transparently, never sent to
                r._reply(clients[0], (f"192.0.2.{i + 1}", 53), b"a", "direct")
            assert len(r.reply_sockets) == 3 and r.stats.guards.udp_reply_limited == 2
            for i in range(5):
                r._reply(clients[1], (f"192.0.2.{i + 11}", 53), b"b", "direct")
            assert len(r.reply_sockets) == 5  # the total bound
            assert r.stats.guards.udp_reply_limited == 5
            assert r.stats["direct"].dropped == 5 and r.stats["direct"].bytes_down == 5
            r._reply(clients[1], ("192.0.2.1", 53), b"c", "direct")  # an existing socket: no new
            assert r.stats.guards.udp_reply_limited == 5            # one, client 1's third remote
            r._reply(clients[1], ("192.0.2.2", 53), b"d", "direct")  # its fourth: past its bound
            assert r.stats.guards.udp_reply_limited == 6
            lines = [m for m in caplog.messages if "dropped: at the bound" in m]
            assert len(lines) == 2, lines  # once per client
            assert "3 remotes for this client" in lines[0]
            assert "5 reply sockets in all" in lines[1]
            assert sinks[0].recv(10) == b"a"
            assert sorted(sinks[1].recv(10) for _ in range(3)) == [b"b", b"b", b"c"]
            r.sweep(r.now() + r.config.udp_idle_timeout)  # expiry frees the bound again
            assert not r.reply_sockets and not r.clients
        finally:
            for s in sinks:
                s.close()
            await r.close()

    with caplog.at_level(logging.WARNING, logger="runtime.relay.udp"):
        asyncio.run(scenario())
    assert "guards: self-addressed" not in str(relay().stats)


def test_the_total_bound_never_exceeds_a_quarter_of_the_fd_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert reply_socket_limit(10**9) == max(1, soft // 4)
    assert reply_socket_limit(7) == min(7, max(1, soft // 4))
