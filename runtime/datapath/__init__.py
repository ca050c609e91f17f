"""Kernel plumbing around a loaded tc program: interfaces, clsact + cls_bpf filters, fwmark
policy routing, sysctls, and a write-ahead state file so a crashed runtime can be cleaned up.

    dp = Datapath(lan=["br-*"], wan="auto", fwmark=0x8000000, table=2023,
                  state_path="/run/dae-py/state.json")
    dp.setup(ingress_fd=lan_ingress_prog_fd, egress_fd=wan_egress_prog_fd)
    ...
    dp.replace(ingress_fd=new_fd)       # reload: atomic program swap, no gap
    dp.teardown()                       # undo everything, exactly

    # after a crash (next start, or `dae-runtime cleanup`):
    cleanup("/run/dae-py/state.json")

Which program goes where: `ingress_fd` at the ingress of every LAN interface (client traffic
to intercept), `egress_fd` at the egress of every WAN interface (the gateway's own traffic);
optionally `wan_ingress_fd` and `lan_egress_fd` for the other two hooks.

Everything runs through pyroute2 netlink and /proc/sys (no ip/tc/sysctl binaries), in the
caller's network namespace or in `netns` (a name under /run/netns or a path).
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

# _pyroute2 first (it comes first in the line): importing it swaps in the lean pyroute2 package
# before any module here imports pyroute2's submodules (runtime/datapath/_pyroute2.py)
from . import _pyroute2, interfaces, policy_routing, state, sysctls, tc  # noqa: F401 - _pyroute2: for its effect
from ._netns import NetnsNotFound, open_iproute
from .interfaces import Interface, InterfaceResolutionError
from .policy_routing import DEFAULT_RULE_PRIORITY, FwmarkRule, LocalRoute
from .state import DEFAULT_STATE_PATH, CleanupReport, StateBusy, StateFile, cleanup
from .tc import DEFAULT_HANDLE, DEFAULT_PRIO, EGRESS, INGRESS, FilterSlot, TcError

log = logging.getLogger(__name__)

__all__ = [
    "Datapath", "cleanup", "CleanupReport", "StateBusy", "Interface",
    "InterfaceResolutionError", "TcError", "NetnsNotFound", "DEFAULT_STATE_PATH",
    "interfaces", "policy_routing", "state", "sysctls", "tc",
]

LAN, WAN = "lan", "wan"
#: (role, direction) of each program argument
_HOOKS = {
    "ingress_fd": (LAN, INGRESS),
    "egress_fd": (WAN, EGRESS),
    "wan_ingress_fd": (WAN, INGRESS),
    "lan_egress_fd": (LAN, EGRESS),
}


class Datapath:
    """The kernel side of one gateway instance.

    Nothing happens at construction. `setup()` resolves the interfaces, takes the state
    lock, undoes what a crashed predecessor left in the same state file, then applies, in
    order: sysctls, policy rules + local routes, clsact qdiscs, filters (the filters last, so
    the routing they rely on is there before the first packet is marked). Each change goes to
    the state file before it is made. If any step fails, what was done is undone and the error
    re-raised.
    """

    def __init__(
        self,
        lan: str | Sequence[str] | None,
        wan: str | Sequence[str] | None,
        fwmark: int,
        table: int,
        netns: str | None = None,
        state_path: str | os.PathLike[str] = DEFAULT_STATE_PATH,
        *,
        fwmask: int | None = None,
        rule_priority: int = DEFAULT_RULE_PRIORITY,
        tc_priority: int = DEFAULT_PRIO,
        tc_handle: int = DEFAULT_HANDLE,
        ipv6: bool = True,
        forwarding: bool = True,
        reinject: str | Sequence[str] | None = None,
        manage_sysctls: bool = True,
    ) -> None:
        """
        lan, wan: interface names/globs or `auto`; see `interfaces`.
        fwmark/fwmask: the mark the programs set on packets to deliver locally (mask defaults
            to the mark itself, so other bits of the mark stay free for other users).
        table: the routing table holding `local default dev lo`.
        reinject: interfaces where the egress program re-injects locally originated packets
            (they need accept_local); default: the WAN interfaces when `egress_fd` is given.
        manage_sysctls: False leaves all sysctls to the operator.
        """
        if not 0 < fwmark <= 0xFFFFFFFF:
            raise ValueError(f"fwmark must be a non-zero u32, not {fwmark!r}")
        if fwmask is None:
            fwmask = fwmark
        if fwmark & fwmask != fwmark:
            raise ValueError(f"fwmark {fwmark:#x} has bits outside fwmask {fwmask:#x}")
        if not 0 < table < 0xFFFFFFFF or table in (253, 254, 255):
            raise ValueError(f"table {table} is reserved or out of range")
        self.lan_spec, self.wan_spec, self.reinject_spec = lan, wan, reinject
        self.fwmark, self.fwmask, self.table = fwmark, fwmask, table
        self.netns = netns
        self.state_path = Path(state_path)
        self.rule_priority, self.tc_priority, self.tc_handle = rule_priority, tc_priority, tc_handle
        self.ipv6, self.forwarding, self.manage_sysctls = ipv6, forwarding, manage_sysctls
        self.lan_interfaces: list[Interface] = []
        self.wan_interfaces: list[Interface] = []
        self._state = StateFile(self.state_path)
        self._reinject: list[Interface] | None = None
        self._ingress_l3_fd: int | None = None
        self._filters: dict[tuple[str, str, str], int] = {}  # (role, dir, ifname) -> entry id
        self._fds: dict[str, int | None] = {}  # the programs last attached, for interfaces that appear later
        self._active = False

    # -- public API --

    @property
    def active(self) -> bool:
        return self._active

    def setup(
        self,
        ingress_fd: int,
        egress_fd: int | None = None,
        *,
        wan_ingress_fd: int | None = None,
        lan_egress_fd: int | None = None,
        ingress_l3_fd: int | None = None,
        pins: Iterable[str] = (),
    ) -> None:
        """Apply everything. `ingress_l3_fd`: the program for LAN interfaces without an
        Ethernet header (tun, WireGuard, PPP); without it such an interface is an error, since
        the Ethernet program would misread every packet. `pins`: BPF filesystem pins the caller
        created (or is about to) for this datapath; they are removed by teardown/cleanup."""
        if self._active:
            raise RuntimeError("datapath already set up; use replace() or teardown()")
        fds = {"ingress_fd": ingress_fd, "egress_fd": egress_fd,
               "wan_ingress_fd": wan_ingress_fd, "lan_egress_fd": lan_egress_fd}
        self._ingress_l3_fd = ingress_l3_fd
        self._fds = dict(fds)
        self._state.lock()
        try:
            if self._state.load() is not None and self._state.entries:
                log.warning("%s holds changes of a datapath that did not tear down: undoing",
                            self.state_path)
                report = state.undo_all(self._state)
                if not report.ok:
                    raise RuntimeError(f"stale state could not be cleaned: {report.failed}")
            with open_iproute(self.netns) as ipr:
                self._resolve(ipr)
            self._check_l3(fds)
            reinject = self._reinject_names(egress_fd is not None)
            self._state.begin(self.netns, lan=[i.name for i in self.lan_interfaces],
                              wan=[i.name for i in self.wan_interfaces],
                              fwmark=self.fwmark, fwmask=self.fwmask, table=self.table)
        except BaseException:
            self._state.unlock()
            raise
        try:
            for path in pins:
                self.record_pin(path)
            if self.manage_sysctls:
                self._apply_sysctls(reinject)
            with open_iproute(self.netns) as ipr:
                self._apply_policy_routing(ipr)
                self._attach_all(ipr, fds)
        except BaseException:
            log.error("datapath setup failed: undoing what was done")
            try:
                state.undo_all(self._state)
            finally:
                self._state.unlock()
            raise
        self._active = True

    def replace(
        self,
        ingress_fd: int | None = None,
        egress_fd: int | None = None,
        *,
        wan_ingress_fd: int | None = None,
        lan_egress_fd: int | None = None,
        ingress_l3_fd: int | None = None,
    ) -> None:
        """Swap in new programs (reload). Each given fd replaces the program at its hook on
        every interface with one atomic NLM_F_REPLACE; a hook that had no program gets one.
        Hooks not given keep their program."""
        self._require_active()
        fds = {"ingress_fd": ingress_fd, "egress_fd": egress_fd,
               "wan_ingress_fd": wan_ingress_fd, "lan_egress_fd": lan_egress_fd}
        if ingress_fd is not None:  # the pair is swapped together (an L3 LAN needs both)
            self._ingress_l3_fd = ingress_l3_fd
        self._check_l3(fds)
        self._fds.update({k: v for k, v in fds.items() if v is not None})
        with open_iproute(self.netns) as ipr:
            self._attach_all(ipr, fds)

    def refresh(self) -> list[str]:
        """Follow the interfaces: a LAN or WAN glob that now matches a new link (a `br-*` created
        after start), `auto` WANs that now hold a default route, `auto` LANs that now qualify.
        Each new interface gets its kernel parameters and its programs, journaled like the first
        ones. An interface that went away is forgotten (its filters went with it; their journal
        entries are dropped, so a churn of `veth*` links does not grow the state file); one that
        is still there but no longer selected (an `auto` LAN that lost its private address, a WAN
        that lost the default route) has its filters removed. Returns the names newly attached."""
        self._require_active()
        with open_iproute(self.netns) as ipr:
            wan = interfaces.resolve_lenient(self.wan_spec, ipr, role=WAN)
            lan = interfaces.resolve_lenient(self.lan_spec, ipr, role=LAN, exclude=[i.name for i in wan])
            wan = [i for i in wan if i.name not in {x.name for x in lan}]
            old = {(LAN, i.name, i.index) for i in self.lan_interfaces} | \
                  {(WAN, i.name, i.index) for i in self.wan_interfaces}
            new_lan = [i for i in lan if (LAN, i.name, i.index) not in old]
            new_wan = [i for i in wan if (WAN, i.name, i.index) not in old]
            now = {(LAN, i.name, i.index) for i in lan} | {(WAN, i.name, i.index) for i in wan}
            present = set(interfaces.list_links(ipr.get_links()).items())
            for role, name, index in old - now:
                self._let_go(role, name, index, present=(name, index) in present)
            self.lan_interfaces, self.wan_interfaces = lan, wan
            if not new_lan and not new_wan:
                return []
            if self.manage_sysctls:
                bounce = [i.name for i in new_wan] if self._fds.get("egress_fd") is not None else []
                wanted = sysctls.plan([i.name for i in new_lan], [i.name for i in new_wan], reinject=bounce,
                                      forwarding=self.forwarding, ipv6=self.ipv6, netns=self.netns)
                def journal(change: sysctls.SysctlChange) -> None:
                    self._state.record("sysctl", netns=self.netns, **change.to_dict())

                sysctls.apply(wanted, self.netns, before_write=journal)
            for arg, fd in self._fds.items():
                if fd is None:
                    continue
                role, direction = _HOOKS[arg]
                for iface in new_lan if role == LAN else new_wan:
                    if role == WAN and iface.l3:
                        log.warning("wan_interface %s carries bare IP packets: not attached", iface.name)
                        continue
                    use = self._ingress_l3_fd if arg == "ingress_fd" and iface.l3 else fd
                    if use is None:
                        log.warning("lan_interface %s carries bare IP packets and no L3 program was given: "
                                    "not attached", iface.name)
                        continue
                    self._filters.pop((role, direction, iface.name), None)  # a re-created link of that name
                    self._attach_one(ipr, role, direction, iface, use)
        names = [i.name for i in new_lan + new_wan]
        log.info("interfaces attached since start: %s", ", ".join(names))
        return names

    def _let_go(self, role: str, name: str, index: int, *, present: bool) -> None:
        """An interface no longer selected for `role`: drop our filters on it, and our clsact if
        nothing else uses it (undone through the journal when the link is still there; only
        forgotten when it is gone, since its filters died with it). Its sysctls stay journaled:
        they are restored at the stop (a gone interface's are skipped then)."""
        for key in [k for k in self._filters if k[0] == role and k[2] == name]:
            del self._filters[key]
        still_ours = {n for r, _, n in self._filters}  # the other role may still use the link

        def ours(entry: dict[str, object]) -> bool:
            if entry.get("ifname") != name or entry.get("ifindex") != index:
                return False
            if entry["kind"] == "filter":
                return str(entry.get("name", "")).startswith(f"{tc.NAME_PREFIX}:{role}-")
            return entry["kind"] == "qdisc" and name not in still_ours

        if present:
            report = state.undo_entries(self._state, ours)
            if report.failed:
                log.warning("detaching %s_interface %s left: %s", role, name, "; ".join(report.failed))
            log.info("%s_interface %s is no longer selected: detached", role, name)
        else:
            for entry in self._state.entries:
                if ours(entry):
                    self._state.forget(int(entry["id"]))
            log.info("%s_interface %s is gone", role, name)

    def record_pin(self, path: str | os.PathLike[str]) -> None:
        """Journal a BPF pin (call before creating it) so cleanup removes it."""
        self._state.record("pin", netns=None, path=os.fspath(path))

    def teardown(self) -> CleanupReport:
        """Undo every change of this datapath (filters, qdiscs we created, rules, routes,
        sysctls, pins), newest first, and release the state."""
        self._require_active()
        try:
            report = state.undo_all(self._state)
        finally:
            self._active = False
            self._filters.clear()
            self._state.unlock()
        if not report.ok:
            log.error("datapath teardown left: %s", report.failed)
        return report

    def __enter__(self) -> Datapath:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._active:
            self.teardown()

    # -- steps --

    def _require_active(self) -> None:
        if not self._active:
            raise RuntimeError("datapath is not set up")

    def _resolve(self, ipr: object) -> None:
        # the WAN first: `lan_interface: auto` leaves the WANs out
        self.wan_interfaces = interfaces.resolve_interfaces(self.wan_spec, ipr, role=WAN)
        self.lan_interfaces = interfaces.resolve_interfaces(
            self.lan_spec, ipr, role=LAN, exclude=[i.name for i in self.wan_interfaces])
        both = {i.name for i in self.lan_interfaces} & {i.name for i in self.wan_interfaces}
        if both:
            raise InterfaceResolutionError(
                f"interface(s) {', '.join(sorted(both))} resolved as both LAN and WAN"
            )
        if self.reinject_spec is not None:
            self._reinject = interfaces.resolve_interfaces(
                self.reinject_spec, ipr, role="reinject", allow_auto=False)
        else:
            self._reinject = None

    def _reinject_names(self, have_egress: bool) -> list[str]:
        if self._reinject is not None:
            return [i.name for i in self._reinject]
        return [i.name for i in self.wan_interfaces] if have_egress else []

    def _apply_sysctls(self, reinject: list[str]) -> None:
        wanted = sysctls.plan(
            [i.name for i in self.lan_interfaces],
            [i.name for i in self.wan_interfaces],
            reinject=reinject,
            forwarding=self.forwarding,
            ipv6=self.ipv6,
            netns=self.netns,
        )

        def journal(change: sysctls.SysctlChange) -> None:
            self._state.record("sysctl", netns=self.netns, **change.to_dict())

        sysctls.apply(wanted, self.netns, before_write=journal)

    def _families(self) -> list[int]:
        fams: list[int] = list(policy_routing.FAMILIES)
        return fams if self.ipv6 else fams[:1]

    def _apply_policy_routing(self, ipr: object) -> None:
        for family in self._families():
            rule = FwmarkRule(family, self.fwmark, self.fwmask, self.table, self.rule_priority)
            if not policy_routing.rule_present(ipr, rule):
                eid = self._state.record("rule", netns=self.netns, **rule.to_dict())
                if not policy_routing.add_rule(ipr, rule):
                    self._state.forget(eid)
            route = LocalRoute(family, self.table)
            if not policy_routing.route_present(ipr, route):
                eid = self._state.record("route", netns=self.netns, **route.to_dict())
                if not policy_routing.add_route(ipr, route):
                    self._state.forget(eid)

    def _check_l3(self, fds: dict[str, int | None]) -> None:
        bare = [i.name for i in self.lan_interfaces if i.l3]
        if bare and fds["ingress_fd"] is not None and self._ingress_l3_fd is None:
            raise InterfaceResolutionError(
                f"lan_interface: {', '.join(bare)} carries bare IP packets (no Ethernet header) "
                "and no L3 ingress program was given")

    def _attach_all(self, ipr: object, fds: dict[str, int | None]) -> None:
        for arg, fd in fds.items():
            if fd is None:
                continue
            role, direction = _HOOKS[arg]
            for iface in self.lan_interfaces if role == LAN else self.wan_interfaces:
                if role == WAN and iface.l3:
                    # the WAN programs parse Ethernet frames; a bare-IP WAN (PPP, WireGuard, tun)
                    # keeps only the kernel parameters (docs/local-routing.md)
                    log.warning("wan_interface %s carries bare IP packets: the gateway's own traffic "
                                "through it is not routed by the rules", iface.name)
                    continue
                use = fd
                if arg == "ingress_fd" and iface.l3 and self._ingress_l3_fd is not None:
                    use = self._ingress_l3_fd
                self._attach_one(ipr, role, direction, iface, use)

    def _attach_one(self, ipr: object, role: str, direction: str, iface: Interface,
                    fd: int) -> None:
        slot = FilterSlot(iface.index, direction, self.tc_priority, self.tc_handle,
                          name=f"{tc.NAME_PREFIX}:{role}-{direction}")
        prog_id = tc.prog_id_of_fd(fd)
        key = (role, direction, iface.name)
        if key in self._filters:  # ours already: journal the new program, then swap
            self._state.update(self._filters[key], prog_id=prog_id)
            tc.replace(ipr, slot, fd)
            return
        if tc.clsact_missing(ipr, iface.index):
            eid = self._state.record("qdisc", netns=self.netns, ifname=iface.name,
                                     ifindex=iface.index)
            if not tc.add_clsact(ipr, iface.index):
                self._state.forget(eid)
        eid = self._state.record(
            "filter", netns=self.netns, ifname=iface.name, ifindex=iface.index,
            direction=direction, prio=slot.prio, handle=slot.handle, protocol=slot.protocol,
            name=slot.name, prog_id=prog_id,
        )
        try:
            tc.attach(ipr, slot, fd)
        except BaseException:
            if not tc.is_ours(tc.find_filter(ipr, slot), slot):
                self._state.forget(eid)
            raise
        self._filters[key] = eid
