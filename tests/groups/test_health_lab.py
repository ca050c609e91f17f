"""Health checks through real peers: HTTP via CONNECT/SOCKS5, DNS via UDP ASSOCIATE or TCP."""
from __future__ import annotations

import asyncio

import pytest

from dae_py.runtime.groups import Check
from tests.relay.conftest import CHECK, gateway_env, group_of, manifest
from tests.relay.lab import Lab

pytestmark = pytest.mark.root


def test_checks_mark_working_nodes_alive_and_dead_ones_down(lab: Lab) -> None:
    group = {"name": "checked", "id": 2, "policy": "min", "nodes": ["dead", "dante", "tiny"],
             "check": CHECK}

    async def scenario() -> None:
        async with gateway_env(lab, manifest([group]), health_checks=True) as env:
            checked = group_of(env.gateway.table, 2)
            while checked.checker.rounds == 0:  # the periodic loop's first round
                await asyncio.sleep(0.01)
            stats = checked.stats
            for kind, name in ((Check.TCP, "dante"), (Check.UDP, "dante"), (Check.TCP, "tiny"),
                               (Check.DNS_TCP, "tiny")):
                last = stats[kind][name].last
                assert stats[kind][name].alive and last is not None, (kind, name)
                assert last < 1.0
            assert not stats[Check.UDP]["tiny"].checked  # http nodes carry no UDP
            for kind in (Check.TCP, Check.UDP):
                assert not stats[kind]["dead"].alive
                assert "Connection refused" in str(stats[kind]["dead"].last_error)
            tcp, udp = checked.selected(Check.TCP), checked.selected(Check.UDP)
            assert tcp is not None and tcp.name in ("dante", "tiny")
            assert udp is not None and udp.name == "dante"

    lab.run(scenario)
