"""UDP through the relay: IP_RECVORIGDSTADDR, full-cone NAT per client, SOCKS5 UDP ASSOCIATE,
replies from transparent sockets bound to the original destination."""
from __future__ import annotations

import asyncio
import logging
import socket

import pytest

from . import servers
from .conftest import DANTE4, DANTE6, gateway_env, group_id, manifest
from .lab import GW_UP4, SERVER4, SERVER6, Lab

pytestmark = pytest.mark.root


def who(reply: bytes) -> tuple[str, int, bytes]:
    head, _, data = reply.partition(b"|")
    host, port = head.decode().split()
    return host, int(port), data


@pytest.mark.parametrize("family,server,node,seen", [
    (socket.AF_INET, SERVER4, "dante", DANTE4),
    (socket.AF_INET6, SERVER6, "dante", DANTE6),
    (socket.AF_INET6, SERVER6, "dante6", DANTE6),
    (socket.AF_INET, SERVER4, "direct", GW_UP4),
])
def test_udp_reply_comes_from_the_original_destination(lab: Lab, family: int, server: str, node: str,
                                                       seen: str | None) -> None:
    outbound_id = 0 if node == "direct" else group_id(node)

    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            sock = env.client(family, socket.SOCK_DGRAM, outbound_id=outbound_id)
            reply, source = await servers.udp_exchange(sock, (server, 7001), b"ping")
            assert source == (server, 7001)
            host, _port, data = who(reply)
            assert (host, data) == (seen, b"ping")
            sock.close()
            name = "direct" if node == "direct" else f"g_{node}"
            counters = env.gateway.stats[name]
            assert (counters.flows, counters.bytes_up, counters.bytes_down) == (1, 4, len(reply))

    lab.run(scenario)


@pytest.mark.parametrize("node", ["direct", "dante"])
def test_udp_is_full_cone_per_client_source(lab: Lab, node: str) -> None:
    """Two destinations from one client source share one upstream mapping."""
    outbound_id = 0 if node == "direct" else group_id(node)

    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            sock = env.client(socket.AF_INET, socket.SOCK_DGRAM, outbound_id=outbound_id)
            first, src1 = await servers.udp_exchange(sock, (SERVER4, 7001), b"a")
            second, src2 = await servers.udp_exchange(sock, (SERVER4, 7002), b"b")
            assert (src1, src2) == ((SERVER4, 7001), (SERVER4, 7002))
            assert who(first)[:2] == who(second)[:2]
            assert len(env.gateway.udp.clients) == 1
            assert len(env.gateway.udp.reply_sockets) == 2
            sock.close()

    lab.run(scenario)


def test_udp_mapping_expires_when_idle(lab: Lab) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            udp = env.gateway.udp
            sock = env.client(socket.AF_INET, socket.SOCK_DGRAM, outbound_id=group_id("dante"))
            first, _ = await servers.udp_exchange(sock, (SERVER4, 7001), b"a")
            later = udp.now() + env.gateway.udp.config.udp_idle_timeout / 2
            udp.sweep(later)
            assert len(udp.clients) == 1  # half the idle time: kept
            udp.sweep(later + env.gateway.udp.config.udp_idle_timeout)
            assert not udp.clients and not udp.reply_sockets
            assert env.gateway.stats["g_dante"].active == 0
            again, source = await servers.udp_exchange(sock, (SERVER4, 7001), b"b")
            assert source == (SERVER4, 7001) and who(again)[2] == b"b"
            assert env.gateway.stats["g_dante"].active == 1
            sock.close()

    lab.run(scenario)


def test_udp_fails_over_to_the_next_socks5_node(lab: Lab, caplog: pytest.LogCaptureFixture) -> None:
    group = {"name": "udpfail", "id": 2, "policy": "fixed", "fixed_index": 0,
             "nodes": ["dead", "tiny", "dante"], "check": {}}

    async def scenario() -> None:
        async with gateway_env(lab, manifest([group])) as env:
            sock = env.client(socket.AF_INET, socket.SOCK_DGRAM, outbound_id=2)
            reply, _ = await servers.udp_exchange(sock, (SERVER4, 7001), b"x")
            assert who(reply)[0] == DANTE4
            sock.close()

    with caplog.at_level(logging.INFO):
        lab.run(scenario)
    flows = [r.getMessage() for r in caplog.records if r.name == "dae_py.runtime.relay.udp"
             and "via udpfail" in r.getMessage()]
    assert flows == [f"udp {flows[0].split()[1]} -> {SERVER4}:7001 via udpfail node dante"]


@pytest.mark.parametrize("outbound,expected", [
    ("g_tiny", "group 'g_tiny': no node carries udp"),
    ("block", "UDP flow is blocked"),
])
def test_udp_refused_with_one_clear_line(lab: Lab, caplog: pytest.LogCaptureFixture, outbound: str,
                                         expected: str) -> None:
    outbound_id = 1 if outbound == "block" else group_id("tiny")

    async def scenario() -> None:
        async with gateway_env(lab, manifest()) as env:
            sock = env.client(socket.AF_INET, socket.SOCK_DGRAM, outbound_id=outbound_id)
            for _ in range(3):
                sock.sendto(b"x", (SERVER4, 7001))
            while env.gateway.stats[outbound].refused == 0:
                await asyncio.sleep(0.01)
            sock.close()

    with caplog.at_level(logging.INFO):
        lab.run(scenario)
    lines = [r.getMessage() for r in caplog.records if r.name == "dae_py.runtime.relay.udp"
             and "refused" in r.getMessage()]
    assert len(lines) == 1 and expected in lines[0], lines
