"""lan_interface / wan_interface resolution: names, globs, `auto`, and the errors."""
from __future__ import annotations

import socket

import pytest

from dae_py.runtime.datapath import interfaces
from dae_py.runtime.datapath._netns import open_iproute
from dae_py.runtime.datapath.interfaces import Interface, InterfaceResolutionError, resolve

from . import lab

LINKS = {"lo": 1, "eth0": 2, "eth1": 3, "br-lan": 4, "br-guest": 5, "wlan0": 6, "eth10": 7}


def names(found: list[Interface]) -> list[str]:
    return [i.name for i in found]


def test_names_globs_lists() -> None:
    assert names(resolve("eth0", LINKS, role="lan")) == ["eth0"]
    assert names(resolve(["br-*", "eth?"], LINKS, role="lan")) == \
        ["br-guest", "br-lan", "eth0", "eth1"]
    assert names(resolve("eth0, br-lan", LINKS, role="lan")) == ["eth0", "br-lan"]
    assert names(resolve(["eth*", "eth0"], LINKS, role="lan")) == ["eth0", "eth1", "eth10"]
    assert resolve(["eth[01]"], LINKS, role="lan") == [Interface("eth0", 2), Interface("eth1", 3)]
    assert resolve(None, LINKS, role="lan") == [] and resolve([], LINKS, role="lan") == []


def test_globs_never_pick_loopback_but_names_can() -> None:
    assert "lo" not in names(resolve("*", LINKS, role="lan"))
    assert names(resolve("lo", LINKS, role="lan")) == ["lo"]


def test_errors_name_what_did_not_match() -> None:
    with pytest.raises(InterfaceResolutionError) as err:
        resolve(["eth0", "eth9", "vlan*"], LINKS, role="lan")
    msg = str(err.value)
    assert "lan_interface" in msg and "'eth9'" in msg and "'vlan*'" in msg
    assert "'eth0'" not in msg and "br-lan" in msg  # lists what is present


def test_auto() -> None:
    assert names(resolve("auto", LINKS, role="wan", auto_ifindexes={6, 2})) == \
        ["eth0", "wlan0"]
    assert names(resolve(["auto", "eth1"], LINKS, role="wan", auto_ifindexes={2})) == \
        ["eth0", "eth1"]
    with pytest.raises(InterfaceResolutionError, match="default route"):
        resolve("auto", LINKS, role="wan", auto_ifindexes=set())
    with pytest.raises(InterfaceResolutionError, match="private IPv4 or a ULA"):
        resolve("auto", LINKS, role="lan", auto_ifindexes=set())
    with pytest.raises(InterfaceResolutionError, match="not meaningful here"):
        resolve("auto", LINKS, role="reinject")


@pytest.mark.root
def test_live_resolution_with_default_routes(ns: str) -> None:
    """In a namespace of our own: globs against real links, and `auto` = the interfaces
    holding a v4 or v6 default route in the main table (a multipath one counting each hop),
    never lo although the datapath's `local default dev lo` lives in another table."""
    for a, b in (("br-a", "xa"), ("br-b", "xb"), ("eth0", "eth1"), ("wan4", "p4"),
                 ("wan6", "p6"), ("mpa", "qa"), ("mpb", "qb")):
        lab.add_veth(ns, a, b)
    lab.add_addr(ns, "wan4", "10.99.4.1", 24)
    lab.add_addr(ns, "wan6", "fd99:6::1", 64)
    lab.add_addr(ns, "mpa", "10.99.5.1", 24)
    lab.add_addr(ns, "mpb", "10.99.6.1", 24)
    with open_iproute(ns) as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.route("add", family=socket.AF_INET, dst="0.0.0.0/0", type="local", oif=lo,
                  table=100, scope=254)
        with pytest.raises(InterfaceResolutionError, match="default route"):
            interfaces.resolve_interfaces("auto", ipr, role="wan")
        ipr.route("add", dst="0.0.0.0/0", gateway="10.99.4.254")
        ipr.route("add", family=socket.AF_INET6, dst="::/0", gateway="fd99:6::fe")
        assert names(interfaces.resolve_interfaces("auto", ipr, role="wan")) == ["wan4", "wan6"]
        ipr.route("del", dst="0.0.0.0/0", gateway="10.99.4.254")
        ipr.route("add", dst="0.0.0.0/0", multipath=[{"gateway": "10.99.5.254"},
                                                      {"gateway": "10.99.6.254"}])
        assert names(interfaces.resolve_interfaces("auto", ipr, role="wan")) == \
            ["mpa", "mpb", "wan6"]
        assert names(interfaces.resolve_interfaces(["br-*", "eth?"], ipr, role="lan")) == \
            ["br-a", "br-b", "eth0", "eth1"]
        with pytest.raises(InterfaceResolutionError, match="'ppp\\*'"):
            interfaces.resolve_interfaces(["br-*", "ppp*"], ipr, role="lan")
        # wan4 lost its default route above: its private address makes it a LAN for auto now
        assert names(interfaces.resolve_interfaces("auto", ipr, role="lan")) == ["wan4"]


@pytest.mark.root
def test_lan_auto_picks_up_private_address_holders(ns: str) -> None:
    """lan_interface: auto = up Ethernet links with a private IPv4 or ULA IPv6 address, minus
    lo, the WANs passed as `exclude`, links holding a default route, and down links; public
    and link-local addresses do not count."""
    for a, b in (("lan4", "pa"), ("lan6", "pb"), ("pub0", "pc"), ("wan0", "pd"), ("up0", "pe"),
                 ("down0", "pf"), ("cg0", "pg")):
        lab.add_veth(ns, a, b)
    lab.add_addr(ns, "lan4", "192.168.77.1", 24)
    lab.add_addr(ns, "lan6", "fd77::1", 64)
    lab.add_addr(ns, "pub0", "198.51.100.1", 24)  # TEST-NET-2: public, never a LAN by auto
    lab.add_addr(ns, "wan0", "10.77.0.1", 24)
    lab.add_addr(ns, "up0", "172.20.0.1", 16)
    lab.add_addr(ns, "down0", "10.78.0.1", 24)
    lab.add_addr(ns, "cg0", "100.64.0.1", 10)  # CGNAT space: an ISP's side, not ours
    with open_iproute(ns) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="down0")[0], state="down")
        ipr.route("add", dst="0.0.0.0/0", gateway="10.77.0.254")
        assert names(interfaces.resolve_interfaces("auto", ipr, role="lan")) == ["lan4", "lan6", "up0"]
        assert names(interfaces.resolve_interfaces("auto", ipr, role="lan", exclude=["up0"])) == ["lan4", "lan6"]
        # a name or a glob is never filtered by exclude or by the address rule
        assert names(interfaces.resolve_interfaces(["auto", "pub0"], ipr, role="lan", exclude=["up0"])) == \
            ["lan4", "lan6", "pub0"]
