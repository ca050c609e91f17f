"""The UDP relay's own guards, on loopback: datagrams addressed to the relay itself, and the
bounds on reply sockets and on client entries (per client or source IP, and in total)."""
from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

import pytest

from dae_py.runtime.proxy import DIRECT_ID
from dae_py.runtime.relay import OutboundTable, RelayConfig, StaticRouter, UdpRelay
from dae_py.runtime.relay.udp import LOG_EVERY, _Client, client_limit, reply_socket_limit

pytestmark = pytest.mark.root  # transparent reply sockets need CAP_NET_ADMIN

BLOCK = 1


def relay(**config: Any) -> UdpRelay:
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


def test_reply_sockets_are_bounded_per_client_and_in_total(caplog: pytest.LogCaptureFixture) -> None:
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

    with caplog.at_level(logging.WARNING, logger="dae_py.runtime.relay.udp"):
        asyncio.run(scenario())
    assert "guards: self-addressed" not in str(relay().stats)


def test_the_total_bound_never_exceeds_a_quarter_of_the_fd_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert reply_socket_limit(10**9) == max(1, soft // 4)
    assert reply_socket_limit(7) == min(7, max(1, soft // 4))


class Clock:
    """The relay's clock, moved by hand (idle ages without waiting)."""

    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def test_client_entries_are_bounded_per_source_ip_and_in_total(caplog: pytest.LogCaptureFixture) -> None:
    """Direct associations (a real socket each) to a loopback sink: 127.0.0.1 gets 3 entries,
    127.0.0.2 the 2 left of the total 5; newcomers past either bound are dropped (counted,
    one log line per source IP and interval) while admitted clients keep flowing; once one
    of its entries is idle past udp_client_evict_idle, a newcomer of that IP takes its place
    (its association closed) and the other IP's entries are untouched."""
    async def scenario() -> None:
        clock = Clock()
        r = UdpRelay(StaticRouter(DIRECT_ID), OutboundTable.from_manifest({}),
                     RelayConfig(udp_clients_per_ip=3, udp_clients=5, udp_client_evict_idle=5.0),
                     clock=clock)
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.settimeout(2)
        dst = sink.getsockname()

        def send(src: tuple[str, int], data: bytes = b"x") -> None:
            r.handle_packet(data, src, dst, socket.AF_INET)

        try:
            for port in range(1, 6):
                send(("127.0.0.1", port))
            assert sorted(r.clients) == [("127.0.0.1", p) for p in (1, 2, 3)]
            assert r.stats.guards.udp_client_limited == 2
            for port in range(1, 4):
                send(("127.0.0.2", port))
            assert len(r.clients) == 5 and r.stats.guards.udp_client_limited == 3
            await asyncio.sleep(0.1)  # the direct associations open
            send(("127.0.0.1", 1), b"still")  # admitted clients are untouched by the bound
            got = set()
            for _ in range(6):
                got.add(sink.recv(100))
            assert got == {b"x", b"still"}
            assert r.stats["direct"].dropped == 0
            lines = [m for m in caplog.messages if "dropped: at the bound" in m]
            assert len(lines) == 2, lines  # once for 127.0.0.1 (2 drops), once for the total
            assert "3 clients (source ports) for 127.0.0.1" in lines[0]
            assert "5 clients in all" in lines[1]
            assert "udp-client-limited=3" in str(r.stats)

            clock.t += 5.0
            send(("127.0.0.1", 2))  # 1 and 3 idle for 5 s; 3 used least recently (1 sent "still")
            evicted = r.clients[("127.0.0.1", 3)]
            assoc = evicted.assocs[DIRECT_ID].assoc
            assert assoc is not None
            send(("127.0.0.1", 9))
            assert ("127.0.0.1", 3) not in r.clients and ("127.0.0.1", 9) in r.clients
            assert not evicted.assocs and r.stats.guards.udp_client_evicted == 1
            assert assoc.closed
            assert sorted(c for c in r.clients if c[0] == "127.0.0.2") == [
                ("127.0.0.2", 1), ("127.0.0.2", 2)]
            send(("127.0.0.1", 10))  # 1 goes the same way
            assert ("127.0.0.1", 1) not in r.clients and r.stats.guards.udp_client_evicted == 2
            send(("127.0.0.1", 11))  # 2, 9, 10 are fresh: dropped, not logged again yet
            assert r.stats.guards.udp_client_limited == 4
            assert len([m for m in caplog.messages if "dropped: at the bound" in m]) == 2
            clock.t += 10.0
            r.sweep(clock.t - 5.0)  # nothing expires; the throttles age
            send(("127.0.0.1", 12))  # 2, 9, 10 idle 10 s now: one makes room
            assert r.stats.guards.udp_client_evicted == 3 and r.stats.guards.udp_client_limited == 4
            r.sweep(clock.t + r.config.udp_idle_timeout)
            assert not r.clients and not r._by_ip
        finally:
            sink.close()
            await r.close()

    with caplog.at_level(logging.WARNING, logger="dae_py.runtime.relay.udp"):
        asyncio.run(scenario())


def test_a_refused_client_is_logged_again_after_the_interval_with_the_count(caplog: pytest.LogCaptureFixture) -> None:
    """Past the bound a source IP spraying ports is one log line per LOG_EVERY, the next one
    saying how many were left unlogged."""
    async def scenario() -> None:
        clock = Clock()
        r = UdpRelay(StaticRouter(BLOCK), OutboundTable.from_manifest({}),
                     RelayConfig(udp_clients_per_ip=2, udp_client_evict_idle=2 * LOG_EVERY),
                     clock=clock)
        for port in range(1, 103):
            r.handle_packet(b"x", ("10.0.0.7", port), ("192.0.2.1", 53), socket.AF_INET)
        clock.t += LOG_EVERY
        r.handle_packet(b"x", ("10.0.0.7", 200), ("192.0.2.1", 53), socket.AF_INET)
        assert r.stats.guards.udp_client_limited == 101
        await r.close()

    with caplog.at_level(logging.WARNING, logger="dae_py.runtime.relay.udp"):
        asyncio.run(scenario())
    lines = [m for m in caplog.messages if "dropped: at the bound" in m]
    assert len(lines) == 2, lines
    assert "more since" not in lines[0] and "(+99 more since the last report)" in lines[1]


def test_the_client_bound_never_exceeds_an_eighth_of_the_fd_limit() -> None:
    import resource

    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert client_limit(10**9) == max(1, soft // 8)
    assert UdpRelay(StaticRouter(BLOCK), OutboundTable.from_manifest({})).client_limit == min(
        RelayConfig().udp_clients, max(1, soft // 8))
