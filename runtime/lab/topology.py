"""The lab's three namespaces and two links, built with pyroute2 only.

    client ns               gateway ns                   upstream ns
    eth0 ---------------- lan0        wan0 ---------------- eth0
    10.231.1.2/24     10.231.1.1  10.231.2.1            10.231.2.2/24
    fd00:231:1::2/64  fd00:231:1::1 fd00:231:2::1       fd00:231:2::2/64

The veths are created inside the gateway namespace with their peer placed straight into the
client/upstream namespace, so nothing ever appears in the root namespace and interface names
can be fixed (lan0, wan0, eth0) even when several labs run side by side.
The client's default routes point at the gateway; the upstream only knows the way back to the
client subnet via the gateway. That is the routed (not NATed) path a transparent gateway has.
"""
from __future__ import annotations

import ipaddress
import logging
from dataclasses import asdict, dataclass

from pyroute2 import IPRoute, netns

from .nsutil import write_sysctl

log = logging.getLogger(__name__)

IFA_F_NODAD = 0x02


@dataclass(frozen=True)
class Topology:
    """Every name and address of one lab. Addresses exist only inside its namespaces."""

    run_id: str
    client_ns: str
    gateway_ns: str
    upstream_ns: str
    client_if: str = "eth0"
    gateway_lan_if: str = "lan0"
    gateway_wan_if: str = "wan0"
    upstream_if: str = "eth0"
    lan_net4: str = "10.231.1.0/24"
    lan_net6: str = "fd00:231:1::/64"
    wan_net4: str = "10.231.2.0/24"
    wan_net6: str = "fd00:231:2::/64"
    client_ip4: str = "10.231.1.2"
    client_ip6: str = "fd00:231:1::2"
    gateway_lan_ip4: str = "10.231.1.1"
    gateway_lan_ip6: str = "fd00:231:1::1"
    gateway_wan_ip4: str = "10.231.2.1"
    gateway_wan_ip6: str = "fd00:231:2::1"
    upstream_ip4: str = "10.231.2.2"
    upstream_ip6: str = "fd00:231:2::2"
    # Fixed MACs: BPF tests that build whole Ethernet frames can rely on them.
    client_mac: str = "02:00:0a:e7:01:02"
    gateway_lan_mac: str = "02:00:0a:e7:01:01"
    gateway_wan_mac: str = "02:00:0a:e7:02:01"
    upstream_mac: str = "02:00:0a:e7:02:02"

    @property
    def namespaces(self) -> dict[str, str]:
        """Role -> namespace name."""
        return {"client": self.client_ns, "gateway": self.gateway_ns, "upstream": self.upstream_ns}

    def as_dict(self) -> dict[str, str]:
        return asdict(self)


def _plen(net: str) -> int:
    return ipaddress.ip_network(net).prefixlen


def _prepare_ns(name: str) -> None:
    """Per-namespace sysctls that must precede interface creation.

    DAD off: a new IPv6 address is otherwise 'tentative' for about a second and a connect()
    to it fails; the default value is what a veth created later inherits.
    """
    for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
        write_sysctl(name, key, 0)
    for key in ("net.ipv6.conf.all.accept_ra", "net.ipv6.conf.default.accept_ra"):
        write_sysctl(name, key, 0)
    with IPRoute(netns=name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def _addr_up(ipr: IPRoute, ifname: str, mac: str, ip4: str, net4: str, ip6: str, net6: str) -> None:
    idx = ipr.link_lookup(ifname=ifname)[0]
    ipr.link("set", index=idx, address=mac)
    ipr.addr("add", index=idx, address=ip4, prefixlen=_plen(net4))
    ipr.addr("add", index=idx, address=ip6, prefixlen=_plen(net6), flags=IFA_F_NODAD)
    ipr.link("set", index=idx, state="up")


def build(topo: Topology) -> None:
    """Create namespaces, veths, addresses, routes and forwarding for `topo`.

    On error the caller tears down (it knows which namespaces exist by name).
    """
    t = topo
    for name in (t.client_ns, t.gateway_ns, t.upstream_ns):
        netns.create(name)
        _prepare_ns(name)

    write_sysctl(t.gateway_ns, "net.ipv4.ip_forward", 1)
    write_sysctl(t.gateway_ns, "net.ipv6.conf.all.forwarding", 1)

    with IPRoute(netns=t.gateway_ns) as ipr:
        ipr.link("add", ifname=t.gateway_lan_if, kind="veth",
                 peer={"ifname": t.client_if, "net_ns_fd": t.client_ns})
        ipr.link("add", ifname=t.gateway_wan_if, kind="veth",
                 peer={"ifname": t.upstream_if, "net_ns_fd": t.upstream_ns})
        _addr_up(ipr, t.gateway_lan_if, t.gateway_lan_mac, t.gateway_lan_ip4, t.lan_net4,
                 t.gateway_lan_ip6, t.lan_net6)
        _addr_up(ipr, t.gateway_wan_if, t.gateway_wan_mac, t.gateway_wan_ip4, t.wan_net4,
                 t.gateway_wan_ip6, t.wan_net6)

    with IPRoute(netns=t.client_ns) as ipr:
        _addr_up(ipr, t.client_if, t.client_mac, t.client_ip4, t.lan_net4, t.client_ip6, t.lan_net6)
        idx = ipr.link_lookup(ifname=t.client_if)[0]
        ipr.route("add", dst="0.0.0.0/0", gateway=t.gateway_lan_ip4, oif=idx)
        ipr.route("add", dst="::/0", gateway=t.gateway_lan_ip6, oif=idx, family=10)

    with IPRoute(netns=t.upstream_ns) as ipr:
        _addr_up(ipr, t.upstream_if, t.upstream_mac, t.upstream_ip4, t.wan_net4,
                 t.upstream_ip6, t.wan_net6)
        idx = ipr.link_lookup(ifname=t.upstream_if)[0]
        ipr.route("add", dst=t.lan_net4, gateway=t.gateway_wan_ip4, oif=idx)
        ipr.route("add", dst=t.lan_net6, gateway=t.gateway_wan_ip6, oif=idx, family=10)
    log.debug("lab %s built", t.run_id)


def remove_namespace(name: str) -> bool:
    """Remove one namespace file; its veths go when the last process in it is gone."""
    try:
        netns.remove(name)
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.error("could not remove netns %s: %s", name, exc)
        return False
    return True
