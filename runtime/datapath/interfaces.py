"""Resolve the `lan_interface` / `wan_interface` config values to real interfaces.

A value is a name, a glob (`br-*`, `eth?`, `veth*`, `wlan[01]`), or a list of them. `auto` stands
for a set the namespace's state defines:

- WAN: every interface that holds a default route (IPv4 or IPv6, main table);
- LAN: every interface that is up, carries an Ethernet header, holds an IPv4 address in a
  private range (10/8, 172.16/12, 192.168/16) or an IPv6 unique local one (fc00::/7), and is
  neither `lo`, nor a WAN (resolved first), nor an interface holding a default route: the
  networks a gateway serves, as a router's "LAN" ports are told apart from its uplink. A tunnel
  (WireGuard, tun, PPP) is never picked by `auto`, since one with a private address is far more
  often a VPN uplink than a LAN; name it to have it.

Resolution happens at set-up time, against the interfaces present then, in the datapath's
network namespace, and again on every refresh (linkwatch), so a set follows the links.

Every entry must match something: a config that names an interface that isn't there is far more
likely a typo or a missing link than an intent, and silently attaching to fewer interfaces would
leave clients unproxied with no visible error. So a non-matching entry raises an error that
names the entry and lists the interfaces that do exist.
"""
from __future__ import annotations

import fnmatch
import ipaddress
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

AUTO = "auto"
_GLOB_CHARS = frozenset("*?[")
_RT_TABLE_MAIN = 254
_RTN_UNICAST = 1
_IFF_UP = 0x1
#: The address ranges that make an up interface a LAN for `lan_interface: auto`.
PRIVATE_NETWORKS = tuple(ipaddress.ip_network(n) for n in
                         ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"))
#: Link types whose packets carry an Ethernet header at tc (veth, bridges, bonds, VLANs, Wi-Fi
#: in managed mode and loopback all report one of these); anything else (tun, WireGuard, PPP,
#: IP tunnels: ARPHRD_NONE, _PPP, _TUNNEL, ...) hands tc a bare IP packet.
_ETHERNET_LINK_TYPES = frozenset({1, 772})  # ARPHRD_ETHER, ARPHRD_LOOPBACK


class InterfaceResolutionError(ValueError):
    """A configured interface name, glob or `auto` matched no interface."""


@dataclass(frozen=True, order=True)
class Interface:
    """An interface as seen at resolution time. The index identifies it to tc; the name is
    what the config, the logs and the state file speak of."""

    name: str
    index: int
    #: No Ethernet header at tc (tun, WireGuard, PPP): it needs the `lan_ingress_l3` program.
    l3: bool = False


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def normalise_spec(spec: str | Sequence[str] | None) -> list[str]:
    """Accept `"eth0"`, `"eth0, br-*"`, `["eth0", "br-*"]` or None (= nothing)."""
    if spec is None:
        return []
    items: Iterable[str] = spec.split(",") if isinstance(spec, str) else spec
    out = []
    for item in items:
        if not isinstance(item, str):
            raise InterfaceResolutionError(f"interface entry {item!r} is not a string")
        item = item.strip()
        if item:
            out.append(item)
    return out


def list_links(links: Iterable[Any]) -> dict[str, int]:
    """name -> ifindex of the links (netlink link messages, e.g. `ipr.get_links()`)."""
    return {link.get_attr("IFLA_IFNAME"): link["index"] for link in links}


def l3_links(links: Iterable[Any]) -> set[str]:
    """Names of the links (netlink link messages) whose packets reach tc without an Ethernet
    header."""
    return {link.get_attr("IFLA_IFNAME") for link in links
            if link["ifi_type"] not in _ETHERNET_LINK_TYPES}


def default_route_links(ipr: Any) -> set[int]:
    """Indexes of interfaces that hold a default route (v4 or v6) in the main table.

    Only unicast routes in the main table count: `auto` means "where this host's traffic to the
    internet leaves", which is the main table's default route. Other tables are excluded on
    purpose: the datapath's own `local default dev lo` in its policy table would otherwise make
    `lo` a WAN. Multipath default routes contribute every next hop's interface.
    """
    found: set[int] = set()
    for family in (socket.AF_INET, socket.AF_INET6):
        for route in ipr.get_routes(family=family, table=_RT_TABLE_MAIN):
            if route["dst_len"] != 0 or route["type"] != _RTN_UNICAST:
                continue
            table = route.get_attr("RTA_TABLE") or route["table"]
            if table != _RT_TABLE_MAIN:
                continue
            oif = route.get_attr("RTA_OIF")
            if oif:
                found.add(oif)
            for hop in route.get_attr("RTA_MULTIPATH") or ():
                if hop.get("oif"):
                    found.add(hop["oif"])
    return found


def private_address_links(ipr: Any) -> set[int]:
    """Indexes of interfaces holding an IPv4 address in a private range or an IPv6 ULA."""
    found: set[int] = set()
    for addr in ipr.get_addr():
        text = addr.get_attr("IFA_LOCAL") or addr.get_attr("IFA_ADDRESS")
        try:
            ip = ipaddress.ip_address(text)
        except ValueError:
            continue
        if any(ip in net for net in PRIVATE_NETWORKS):
            found.add(addr["index"])
    return found


def lan_auto_links(ipr: Any, dump: Iterable[Any], exclude: Iterable[str] = ()) -> set[int]:
    """The interfaces `lan_interface: auto` stands for now (see the module's docstring):
    up, Ethernet, a private or ULA address, not lo, not in `exclude` (the WANs), no default route."""
    dump = list(dump)
    skip = set(exclude) | {"lo"} | l3_links(dump)
    up = {link["index"] for link in dump
          if link["flags"] & _IFF_UP and link.get_attr("IFLA_IFNAME") not in skip}
    return (up & private_address_links(ipr)) - default_route_links(ipr)


def resolve(
    spec: str | Sequence[str] | None,
    links: dict[str, int],
    *,
    role: str,
    auto_ifindexes: set[int] | None = None,
) -> list[Interface]:
    """Resolve config entries against `links` (name -> index); pure, so testable without root.

    `role` ("lan"/"wan") only words the errors. `auto_ifindexes` is the set `auto` stands for
    (default-route holders for the WAN, private-address holders for the LAN); None means `auto`
    is not allowed here. Globs never match `lo` (a `*` meant "all my NICs", never loopback);
    naming `lo` explicitly still works. The result keeps config order, without duplicates.
    """
    entries = normalise_spec(spec)
    by_index = {index: name for name, index in links.items()}
    picked: dict[str, Interface] = {}
    unmatched: list[str] = []
    for entry in entries:
        if entry == AUTO:
            if auto_ifindexes is None:
                raise InterfaceResolutionError(f"{role}_interface: 'auto' is not meaningful here")
            names = sorted(by_index[i] for i in auto_ifindexes if i in by_index)
            if not names:
                raise InterfaceResolutionError(
                    f"{role}_interface: 'auto' found no {AUTO_MEANS.get(role, 'interface')}; "
                    f"interfaces present: {_present(links)}"
                )
        elif is_glob(entry):
            names = sorted(n for n in links if n != "lo" and fnmatch.fnmatchcase(n, entry))
        else:
            names = [entry] if entry in links else []
        if not names:
            unmatched.append(entry)
        for name in names:
            picked.setdefault(name, Interface(name, links[name]))
    if unmatched:
        what = ", ".join(repr(u) for u in unmatched)
        raise InterfaceResolutionError(
            f"{role}_interface: {what} matched no interface; interfaces present: {_present(links)}"
        )
    return list(picked.values())


#: What `auto` looks for, per role (for the error when it finds nothing).
AUTO_MEANS = {
    "wan": "interface holding a default route (IPv4 or IPv6, main table)",
    "lan": "up Ethernet interface with a private IPv4 or a ULA IPv6 address, other than lo, "
           "the WANs and the default route's interfaces",
}


def resolve_interfaces(
    spec: str | Sequence[str] | None, ipr: Any, *, role: str, allow_auto: bool | None = None,
    exclude: Iterable[str] = (), lenient: bool = False,
) -> list[Interface]:
    """Resolve against the live namespace behind `ipr` (one dump of each kind, whatever the
    number of entries). `auto` is allowed for the roles "wan" and "lan" unless `allow_auto`
    says otherwise; `exclude` (the WAN names, when resolving the LAN) is left out of what `auto`
    finds, never out of what a name or a glob says. `lenient`: an entry that matches nothing
    is skipped instead of an error."""
    if allow_auto is None:
        allow_auto = role in AUTO_MEANS
    entries = normalise_spec(spec)
    dump = list(ipr.get_links())
    links = list_links(dump)
    auto: set[int] | None = None
    if allow_auto:
        auto = set()
        if AUTO in entries:
            auto = lan_auto_links(ipr, dump, exclude) if role == "lan" else default_route_links(ipr)
    l3 = l3_links(dump)
    found: dict[str, Interface] = {}
    for group in ([e] for e in entries) if lenient else [entries]:
        try:
            resolved = resolve(group, links, role=role, auto_ifindexes=auto)
        except InterfaceResolutionError:
            if not lenient:
                raise
            continue
        for i in resolved:
            found.setdefault(i.name, Interface(i.name, i.index, l3=i.name in l3))
    return list(found.values())


def resolve_lenient(spec: str | Sequence[str] | None, ipr: Any, *, role: str,
                    exclude: Iterable[str] = ()) -> list[Interface]:
    """As resolve_interfaces, but an entry that matches nothing now (an interface gone, a glob
    with no match yet, `auto` with no default route for a moment) is skipped rather than an
    error: the datapath's refresh follows the links as they come and go."""
    return resolve_interfaces(spec, ipr, role=role, exclude=exclude, lenient=True)


def _present(links: dict[str, int]) -> str:
    return ", ".join(sorted(links)) or "(none)"
