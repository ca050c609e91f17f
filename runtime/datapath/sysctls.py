"""Kernel settings the gateway needs, set with a record of what they were, restored exactly.

What the tproxy path needs, found by experiment on this kernel (6.18) with a veth lab
(client ns -- gateway ns -- upstream ns), a tc ingress program doing `bpf_skc_lookup_tcp` /
`bpf_sk_lookup_udp` + `bpf_sk_assign` + `skb->mark = 1`, a transparent TCP listener and UDP
socket on the gateway, and probes TCP/UDP over IPv4/IPv6 to an address in the upstream ns
("PROXY" = the proxy socket answered; "-" = timeout):

  LAN path: packets from clients, intercepted at the LAN interface's ingress
    policy rule+route, everything 0 (ip_forward, rp_filter, accept_local, src_valid_mark)  PROXY x4
    no policy rule/route, ip_forward 0 or 1                                                 - x4
    + ip_forward=1                                                                          PROXY x4
    + rp_filter=1 (strict) or 2 (loose)                                                     PROXY x4
    src_valid_mark=1, accept_local=0, rp_filter=0                             v4 -, v6 PROXY
    src_valid_mark=1, accept_local=1, rp_filter=0 or 2                                      PROXY x4
    src_valid_mark=1, accept_local=1, rp_filter=1                             v4 -, v6 PROXY
  Local-origin path: the gateway's own connections, bounced at the WAN egress back into an
  ingress (dst MAC := own MAC, `bpf_redirect(ifindex, BPF_F_INGRESS)`), assigned there
    accept_local=0, rp_filter 0 or 2                                          v4 -, v6 PROXY
    accept_local=1, rp_filter 0, 1 or 2, ip_forward 0 or 1                                  PROXY x4
  Pass-through (no program, plain forwarding): ip_forward=0 -> -, ip_forward=1 -> UPSTREAM.

Why: with a custom fwmark rule and a custom `local` route installed, the kernel always runs the
full `fib_validate_source` on input (even with rp_filter=0). Its reverse lookup uses the mark
only if `src_valid_mark` is on; with the mark, the source resolves through our table to a
`local` route, and a local answer is a martian unless `accept_local`; strict rp_filter then also
fails because that route's device is lo, not the ingress interface. A locally originated packet
re-entering an ingress has a local source address by nature: martian unless `accept_local`.
IPv6 has no such source validation: only the policy route matters there.

So the plan (`plan`):
  * net.ipv4.ip_forward=1, net.ipv6.conf.all.forwarding=1: not for the proxied flows (those are
    delivered locally) but for everything the gateway passes through unproxied.
  * send_redirects=0 on conf.all and on each LAN interface (the kernel ORs the two): a gateway
    that forwards a packet back out the interface it came in on (a side-router on the clients'
    own segment) otherwise sends ICMP redirects telling clients to bypass it.
  * accept_local=1 on each LAN interface where src_valid_mark is in effect (all OR iface), and
    rp_filter=2 there if strict mode is in effect (max(all, iface) == 1). Nothing otherwise.
  * accept_local=1 on each interface where locally originated packets are re-injected (by
    default the WAN interfaces, when an egress program is attached).
  * accept_ra=2 on WAN interfaces whose accept_ra is 1, when IPv6 forwarding gets switched on:
    with forwarding=1 the kernel ignores router advertisements unless accept_ra=2, and a SLAAC
    WAN would lose its default route.

Reading and writing go through /proc/sys, in the datapath's network namespace (see `_netns`).
Keys use '/' (`net/ipv4/conf/eth0.100/rp_filter`): the dotted sysctl form is ambiguous for
interface names that contain dots (VLANs); dotted keys are accepted where no '/' appears.

Some writes propagate (the kernel rewrites other settings when they change): ip_forward /
conf.all.forwarding sets every interface's `forwarding`, `conf.default.forwarding` and
`conf.all.accept_redirects`; ipv6 conf.all.forwarding sets every interface's and the default's
`forwarding`. A change records those dependents' values too, and restoring puts them back, so
an interface that had its own forwarding value before gets it back.
"""
from __future__ import annotations

import glob
import logging
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field

from ._netns import run_in_netns

log = logging.getLogger(__name__)
PROC_SYS = "/proc/sys"

IP_FORWARD = "net/ipv4/ip_forward"
IPV6_FORWARDING = "net/ipv6/conf/all/forwarding"

#: key -> (glob patterns of settings the kernel rewrites when key is written)
PROPAGATES: dict[str, tuple[str, ...]] = {
    IP_FORWARD: ("net/ipv4/conf/*/forwarding", "net/ipv4/conf/all/accept_redirects"),
    "net/ipv4/conf/all/forwarding": (
        "net/ipv4/conf/*/forwarding",
        "net/ipv4/conf/all/accept_redirects",
    ),
    IPV6_FORWARDING: ("net/ipv6/conf/*/forwarding",),
}


class SysctlError(OSError):
    """A setting could not be read or written."""


def normalise_key(key: str) -> str:
    """'net.ipv4.ip_forward' or '/proc/sys/net/ipv4/ip_forward' -> 'net/ipv4/ip_forward'."""
    if key.startswith(PROC_SYS + "/"):
        key = key[len(PROC_SYS) + 1 :]
    if "/" not in key:
        key = key.replace(".", "/")
    return key.strip("/")


def conf_key(family: str, ifname: str, name: str) -> str:
    """`conf_key('ipv4', 'eth0.100', 'rp_filter')` -> 'net/ipv4/conf/eth0.100/rp_filter'."""
    if family not in ("ipv4", "ipv6"):
        raise ValueError(f"family must be 'ipv4' or 'ipv6', not {family!r}")
    if not ifname or "/" in ifname or ifname in (".", ".."):
        raise ValueError(f"bad interface name {ifname!r}")
    return f"net/{family}/conf/{ifname}/{name}"


def _path(key: str) -> str:
    return os.path.join(PROC_SYS, normalise_key(key))


# --- raw access (call these inside the namespace) ----------------------------------------------


def read_here(key: str) -> str | None:
    """Value of `key` in the calling thread's namespace, None if the setting doesn't exist."""
    try:
        with open(_path(key)) as fh:
            return fh.read().strip()
    except FileNotFoundError:
        return None


def write_here(key: str, value: str | int) -> None:
    try:
        with open(_path(key), "w") as fh:
            fh.write(f"{value}\n")
    except OSError as exc:
        raise SysctlError(exc.errno, f"cannot write {normalise_key(key)}={value}: {exc.strerror}") from exc


def _expand(patterns: Iterable[str]) -> list[str]:
    keys: list[str] = []
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(PROC_SYS, pattern))):
            key = os.path.relpath(path, PROC_SYS)
            if key not in keys:
                keys.append(key)
    return keys


# --- namespace-aware helpers ----------------------------------------------------------------------


def read(keys: Iterable[str], netns: str | None = None) -> dict[str, str | None]:
    """Read several settings in `netns` (one helper thread for all of them)."""
    wanted = [normalise_key(k) for k in keys]
    return run_in_netns(netns, lambda: {k: read_here(k) for k in wanted})


def read_glob(patterns: Iterable[str], netns: str | None = None) -> dict[str, str]:
    """All settings matching glob patterns (relative to /proc/sys), e.g. for snapshots."""
    pats = list(patterns)

    def body() -> dict[str, str]:
        out = {}
        for key in _expand(pats):
            try:
                value = read_here(key)
            except OSError:  # write-only or unset-and-unreadable (stable_secret: EIO)
                continue
            if value is not None:
                out[key] = value
        return out

    return run_in_netns(netns, body)


def write(key: str, value: str | int, netns: str | None = None) -> None:
    run_in_netns(netns, write_here, normalise_key(key), value)


# --- recorded changes --------------------------------------------------------------------------


@dataclass
class SysctlChange:
    """One setting we changed: enough to put it (and what the kernel changed along with it)
    back. `why` is for the logs and the state file's reader."""

    key: str
    old: str
    new: str
    dependents: dict[str, str] = field(default_factory=dict)
    why: str = ""

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> SysctlChange:
        dependents = data.get("dependents") or {}
        if not isinstance(dependents, Mapping):
            raise TypeError(f"sysctl state: 'dependents' must be a mapping, not {dependents!r}")
        return cls(
            key=str(data["key"]),
            old=str(data["old"]),
            new=str(data["new"]),
            dependents={str(k): str(v) for k, v in dependents.items()},
            why=str(data.get("why", "")),
        )


@dataclass(frozen=True)
class Desired:
    key: str
    value: str
    why: str


def apply(
    desired: Sequence[Desired],
    netns: str | None = None,
    before_write: Callable[[SysctlChange], None] | None = None,
) -> list[SysctlChange]:
    """Set each desired value that differs from the current one.

    `before_write(change)` is called before each write (to put the old value on disk first, so
    a crash right after the write can still be undone). Settings already at the desired value
    are neither written nor recorded: restoring must not touch what we didn't change.
    """

    def body() -> list[SysctlChange]:
        changes = []
        for want in desired:
            key = normalise_key(want.key)
            current = read_here(key)
            if current is None:
                raise SysctlError(2, f"no such setting: {key}")
            if current == want.value:
                continue
            dependents = {
                k: v
                for k in _expand(PROPAGATES.get(key, ()))
                if k != key and (v := read_here(k)) is not None
            }
            change = SysctlChange(key, current, want.value, dependents, want.why)
            if before_write is not None:
                before_write(change)
            write_here(key, want.value)
            log.info("sysctl %s: %s -> %s (%s)", key, current, want.value, want.why)
            changes.append(change)
        return changes

    return run_in_netns(netns, body)


def restore(changes: Sequence[SysctlChange], netns: str | None = None) -> list[str]:
    """Undo `changes`, last first. A setting whose value is no longer the one we wrote was
    changed by someone else since: it is left alone (and returned). Settings that are gone
    (an interface deleted since) are skipped silently. Dependents are put back after their
    key, each only where it differs from the recorded value."""

    def body() -> list[str]:
        skipped = []
        for change in reversed(list(changes)):
            current = read_here(change.key)
            if current is None:
                continue
            if current != change.new:
                if current != change.old:
                    log.warning("sysctl %s is %s, not the %s we set: leaving it",
                                change.key, current, change.new)
                    skipped.append(change.key)
                continue
            write_here(change.key, change.old)
            for key, old in change.dependents.items():
                now = read_here(key)
                if now is not None and now != old:
                    write_here(key, old)
            log.info("sysctl %s restored to %s", change.key, change.old)
        return skipped

    return run_in_netns(netns, body)


# --- what the gateway needs ---------------------------------------------------------------------


def plan(
    lan: Sequence[str],
    wan: Sequence[str],
    *,
    reinject: Sequence[str] = (),
    forwarding: bool = True,
    ipv6: bool = True,
    netns: str | None = None,
) -> list[Desired]:
    """The settings the tproxy datapath needs for these interfaces (see the module docstring
    for the evidence). Reads current values where the need depends on them."""
    probe = [IP_FORWARD, IPV6_FORWARDING, "net/ipv4/conf/all/src_valid_mark",
             "net/ipv4/conf/all/rp_filter", "net/ipv4/conf/all/send_redirects"]
    for ifname in lan:
        probe += [conf_key("ipv4", ifname, n) for n in ("src_valid_mark", "rp_filter")]
    for ifname in wan:
        probe.append(conf_key("ipv6", ifname, "accept_ra"))
    cur = read(probe, netns)

    def val(key: str) -> int:
        v = cur.get(key)
        return int(v) if v not in (None, "") else 0

    out: list[Desired] = []
    if forwarding:
        out.append(Desired(IP_FORWARD, "1", "forward traffic the gateway doesn't proxy"))
        if ipv6:
            out.append(Desired(IPV6_FORWARDING, "1", "forward IPv6 traffic not proxied"))
    if lan:
        out.append(Desired("net/ipv4/conf/all/send_redirects", "0",
                           "no ICMP redirects telling LAN clients to bypass the gateway"))
    for ifname in lan:
        out.append(Desired(conf_key("ipv4", ifname, "send_redirects"), "0",
                           "no ICMP redirects telling LAN clients to bypass the gateway"))
        svm = val("net/ipv4/conf/all/src_valid_mark") or val(conf_key("ipv4", ifname, "src_valid_mark"))
        if svm:
            out.append(Desired(conf_key("ipv4", ifname, "accept_local"), "1",
                               "src_valid_mark on: marked packets' source validates as local"))
            rpf = max(val("net/ipv4/conf/all/rp_filter"), val(conf_key("ipv4", ifname, "rp_filter")))
            if rpf == 1:
                out.append(Desired(conf_key("ipv4", ifname, "rp_filter"), "2",
                                   "strict rp_filter fails marked packets (reverse route via lo)"))
    for ifname in reinject:
        out.append(Desired(conf_key("ipv4", ifname, "accept_local"), "1",
                           "locally originated packets re-enter here with a local source"))
    if forwarding and ipv6:
        for ifname in wan:
            if val(conf_key("ipv6", ifname, "accept_ra")) == 1:
                out.append(Desired(conf_key("ipv6", ifname, "accept_ra"), "2",
                                   "keep accepting router advertisements with forwarding on"))
    # one entry per key, first reason wins
    seen: dict[str, Desired] = {}
    for d in out:
        seen.setdefault(normalise_key(d.key), Desired(normalise_key(d.key), d.value, d.why))
    return list(seen.values())
