"""fwmark rules and `local default dev lo` routes: idempotent add, exact removal."""
from __future__ import annotations

import socket

import pytest

from dae_py.runtime.datapath import policy_routing as pr
from dae_py.runtime.datapath._netns import open_iproute

from . import lab

pytestmark = pytest.mark.root
FAMILIES = [socket.AF_INET, socket.AF_INET6]


@pytest.mark.parametrize("family", FAMILIES, ids=["v4", "v6"])
@pytest.mark.parametrize("table", [100, 2023])
def test_add_is_idempotent_and_removal_exact(ns: str, family: int, table: int) -> None:
    before = lab.snapshot(ns)
    rule = pr.FwmarkRule(family, 0x8000000, 0x8000000, table)
    route = pr.LocalRoute(family, table)
    with open_iproute(ns) as ipr:
        assert pr.ensure_rule(ipr, rule) is True
        assert pr.ensure_route(ipr, route) is True
        assert pr.ensure_rule(ipr, rule) is False  # already there
        assert pr.ensure_route(ipr, route) is False
        [r] = pr.find_rules(ipr, rule)
        assert (r.get_attr("FRA_FWMARK"), r.get_attr("FRA_FWMASK")) == (0x8000000, 0x8000000)
        assert r.get_attr("FRA_PRIORITY") == pr.DEFAULT_RULE_PRIORITY
        [rt] = pr.find_routes(ipr, route)
        assert rt["type"] == 2 and rt["dst_len"] == 0  # RTN_LOCAL, default
        assert lab.snapshot(ns) != before
        assert pr.delete_rule(ipr, rule) and pr.delete_route(ipr, route)
        assert not pr.delete_rule(ipr, rule) and not pr.delete_route(ipr, route)  # tolerated
    assert lab.diff(before, lab.snapshot(ns)) == ""


@pytest.mark.parametrize("family", FAMILIES, ids=["v4", "v6"])
def test_preexisting_equivalents_are_not_ours(ns: str, family: int) -> None:
    """An operator's own `ip rule add fwmark 1 lookup 100` / local route (other protocol,
    other priority) satisfies ensure_*, and our delete_* never removes it."""
    dst = "0.0.0.0/0" if family == socket.AF_INET else "::/0"
    with open_iproute(ns) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.rule("add", family=family, fwmark=1, fwmask=1, table=100, priority=500)
        ipr.route("add", family=family, dst=dst, type="local", oif=lo, table=100, scope=254)
    before = lab.snapshot(ns)
    rule, route = pr.FwmarkRule(family, 1, 1, 100), pr.LocalRoute(family, 100)
    with open_iproute(ns) as ipr:
        assert pr.ensure_rule(ipr, rule) is False
        assert pr.ensure_route(ipr, route) is False
        assert pr.delete_rule(ipr, rule) is False
        assert pr.delete_route(ipr, route) is False
    assert lab.diff(before, lab.snapshot(ns)) == ""
