"""The relay's warm pools (runtime/relay/warmpool.py) against real danted and tinyproxy: a flow
takes a connection opened ahead of it and the pool refills; idle connections close; one the
node closed while it waited is dropped, and one it closed just before its first use makes the
flow dial fresh; the pool stays within its bound; a reload replaces the pools; pooled sockets
carry the dial's SO_MARK."""
from __future__ import annotations

import asyncio
import logging
import socket
import subprocess
from collections.abc import Callable

import pytest

from dae_py.runtime.groups import Check, Group
from dae_py.runtime.net.sockets import SO_MARK
from dae_py.runtime.proxy import Node, prepared
from dae_py.runtime.relay import OutboundTable, RelayConfig
from dae_py.runtime.relay.warmpool import WarmPools, _Ready

from . import servers
from .conftest import DANTE4, Env, gateway_env, group_id, manifest
from .lab import RELAY_MARK, SERVER4, Lab
from .test_tcp_lab import refusals, whoami_through

pytestmark = pytest.mark.root

NODE_IP = {"dante": DANTE4, "dante_auth": "10.77.2.11", "tiny": "10.77.2.12", "tiny_auth": "10.77.2.13"}
NODE_PORT = {"dante": 1080, "dante_auth": 1080, "tiny": 8888, "tiny_auth": 8888}


def config(size: int = 2, idle: float = 10.0) -> RelayConfig:
    return RelayConfig(so_mark=RELAY_MARK, connect_timeout=3, handshake_timeout=3, warm_pool=size,
                       warm_pool_idle_timeout=idle)


def pools_of(env: Env) -> WarmPools:
    pools = env.gateway.tcp.pools
    assert pools is not None
    return pools


async def until(predicate: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def ready_socks(pools: WarmPools) -> list[socket.socket]:
    return [conn.sock for pool in pools.pools.values() for conn in pool.ready]


def kill_node_side(lab: Lab, node: str) -> None:
    """Destroy the node's side of every established connection to it (`ss -K` in the upstream
    namespace): each of ours gets a reset, as when a server drops its waiting handshakes."""
    subprocess.run(["nsenter", f"--net=/run/netns/{lab.up}", "ss", "-K", "-tn", "state", "established",
                    "src", f"{NODE_IP[node]}:{NODE_PORT[node]}"], check=True, capture_output=True)


@pytest.mark.parametrize("node", ["dante", "dante_auth", "tiny", "tiny_auth"])
def test_a_flow_takes_a_pooled_connection_and_the_pool_refills(lab: Lab, node: str) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config()) as env:
            pools = pools_of(env)
            oid = group_id(node)
            assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == NODE_IP[node]
            assert (pools.stats.hits, pools.stats.misses) == (0, 1)  # the first flow dialed fresh
            await until(lambda: pools.ready_count() == 2)
            for n in range(1, 4):
                assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == NODE_IP[node]
                assert pools.stats.hits == n
                await until(lambda: pools.ready_count() == 2)  # refilled after each
            assert env.gateway.stats[f"g_{node}"].flows == 4
            assert pools.stats.dead_on_use == pools.stats.failed == 0

    lab.run(scenario)


def test_idle_pooled_connections_are_closed_and_the_pool_forgotten(lab: Lab) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config(idle=0.5)) as env:
            pools = pools_of(env)
            assert await whoami_through(env, socket.AF_INET, SERVER4, group_id("dante")) == DANTE4
            await until(lambda: pools.ready_count() == 2)
            held = ready_socks(pools)
            await until(lambda: not pools.pools, timeout=3.0)  # no flow for idle_timeout: gone
            assert pools.stats.expired == 2
            assert all(s.fileno() == -1 for s in held)  # closed, not leaked
            assert pools.total == 0

    lab.run(scenario)


def test_a_pooled_connection_the_node_closes_while_it_waits_is_dropped(lab: Lab) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config()) as env:
            pools = pools_of(env)
            oid = group_id("dante")
            assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == DANTE4
            await until(lambda: pools.ready_count() == 2)
            kill_node_side(lab, "dante")
            await until(lambda: pools.ready_count() == 0)
            assert pools.stats.dropped == 2
            # the next flow finds none ready: it dials fresh and the pool fills again
            assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == DANTE4
            assert pools.stats.misses == 2
            await until(lambda: pools.ready_count() == 2)

    lab.run(scenario)


@pytest.mark.parametrize("node", ["dante", "tiny"])
def test_a_pooled_connection_dead_at_first_use_costs_no_flow(lab: Lab, node: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The node's close lands between `take` and the flow's request (here: the pool is made
    blind to it): the flow notices the reset, dials the same node fresh and is carried; the
    node is not marked down."""
    monkeypatch.setattr(_Ready, "on_event", lambda self, events: None)

    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config()) as env:
            pools = pools_of(env)
            oid = group_id(node)
            assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == NODE_IP[node]
            await until(lambda: pools.ready_count() == 2)
            kill_node_side(lab, node)
            await asyncio.sleep(0.1)  # the resets have arrived; the pool did not look
            for _ in range(2):  # both pooled connections are dead: each flow redials
                assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == NODE_IP[node]
            assert pools.stats.dead_on_use == 2
            group = env.gateway.table.get(oid)
            assert isinstance(group, Group) and all(s.alive for s in group.stats[Check.TCP].values())
            assert env.gateway.stats[f"g_{node}"].refused == 0

    lab.run(scenario)


def test_the_pool_stays_within_its_bound_under_concurrent_flows(lab: Lab) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config(size=3)) as env:
            pools = pools_of(env)
            oid = group_id("dante")
            for _ in range(4):
                results = await asyncio.gather(*(whoami_through(env, socket.AF_INET, SERVER4, oid)
                                                 for _ in range(12)))
                assert results == [DANTE4] * 12
                assert pools.total <= 3 and pools.ready_count() <= 3
            await until(lambda: pools.ready_count() == 3)
            assert pools.total == 3
            out = subprocess.run(["nsenter", f"--net=/run/netns/{lab.gw}", "ss", "-tnH", "state", "established",
                                  "dst", f"{DANTE4}:1080"], capture_output=True, text=True, check=True).stdout
            assert len(out.splitlines()) == 3  # the flows' own are closed; the pool's 3 remain

    lab.run(scenario)


def test_pooled_sockets_carry_the_dials_mark(lab: Lab) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config()) as env:
            pools = pools_of(env)
            assert await whoami_through(env, socket.AF_INET, SERVER4, group_id("dante")) == DANTE4
            await until(lambda: pools.ready_count() == 2)
            assert [s.getsockopt(socket.SOL_SOCKET, SO_MARK) for s in ready_socks(pools)] == [RELAY_MARK] * 2

    lab.run(scenario)


def test_a_reload_replaces_the_pools(lab: Lab) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config()) as env:
            old = pools_of(env)
            oid = group_id("dante")
            assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == DANTE4
            await until(lambda: old.ready_count() == 2)
            held = ready_socks(old)
            gw = env.gateway
            table = OutboundTable.from_manifest(manifest(), gw.tcp.config.dial_options())
            old_table = gw.swap(gw.tcp.router, table)
            await old_table.close()
            new = pools_of(env)
            assert new is not old and old.closed and all(s.fileno() == -1 for s in held)
            assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == DANTE4
            assert (new.stats.hits, new.stats.misses) == (0, 1)  # nothing carried over
            await until(lambda: new.ready_count() == 2)
            assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == DANTE4
            assert new.stats.hits == 1

    lab.run(scenario)


def test_no_pool_when_off(lab: Lab) -> None:
    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config(size=0)) as env:
            assert env.gateway.tcp.pools is None
            assert await whoami_through(env, socket.AF_INET, SERVER4, group_id("dante")) == DANTE4

    lab.run(scenario)


def test_only_protocols_that_negotiate_ahead_get_a_pool() -> None:
    def node(protocol: str, username: str | None = None, chain: tuple[Node, ...] = ()) -> Node:
        return Node(name="n", protocol=protocol, host="192.0.2.1", port=1080, username=username,
                    password="p" if username else None, chain=chain)

    assert prepared(node("socks5")) is not None
    assert prepared(node("socks5", username="u")) is not None  # auth done ahead too
    assert prepared(node("http")) is not None
    for protocol in ("https", "ss", "trojan", "vmess", "vless"):
        assert prepared(node(protocol)) is None, protocol
    assert prepared(node("socks5", chain=(node("socks5"),))) is None


@pytest.mark.parametrize("node", ["dante", "tiny"])
def test_a_refused_connect_on_a_pooled_connection_is_named_and_refused(lab: Lab, node: str,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    """The node answers the pooled connection's CONNECT with a refusal (nothing listens at the
    target): the flow is refused with the node's reason, as on a fresh dial."""
    async def scenario() -> None:
        async with gateway_env(lab, manifest(), config()) as env:
            pools = pools_of(env)
            oid = group_id(node)
            assert await whoami_through(env, socket.AF_INET, SERVER4, oid) == NODE_IP[node]
            await until(lambda: pools.ready_count() == 2)
            sock = env.client(outbound_id=oid)
            await servers.connect(sock, SERVER4, 7999)  # closed port behind the node
            with pytest.raises(ConnectionResetError):  # the relay refuses with a reset
                await servers.recv_all(sock)
            sock.close()
            assert pools.stats.hits == 1 and pools.stats.dead_on_use == 0
            assert env.gateway.stats[f"g_{node}"].refused == 1

    with caplog.at_level(logging.INFO):
        lab.run(scenario)
    refused = refusals(caplog)
    assert len(refused) == 1 and f"'{node}'" in refused[0], refused
