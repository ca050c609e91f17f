"""clsact qdisc and cls_bpf filters: attach a loaded tc program to an interface, replace it
atomically on reload, and remove exactly what was attached.

The filters sit in a fixed, recognisable slot: clsact parent (`ffff:fff2` ingress,
`ffff:fff3` egress), protocol all, priority `DEFAULT_PRIO`, handle `DEFAULT_HANDLE`, with a
`dae-py:<direction>` name (the `TCA_BPF_NAME` that `tc filter show` prints). A slot is what
makes an atomic reload possible: an `RTM_NEWTFILTER` with `NLM_F_REPLACE` at the same
parent/priority/protocol/handle makes cls_bpf swap the program under RCU
(`cls_bpf_change` -> `list_replace_rcu`), so packets see either the old or the new program and
never no program, and the kernel emits no `RTM_DELTFILTER` on the way. Detaching deletes that
one slot, and only if it still holds a filter with our name: a foreign filter there is left
alone.

A clsact qdisc is created only when the interface has none; whether we created it is reported
to the caller (who records it), and it is removed only in that case and only once no filter of
anyone's is left on it, since deleting a clsact qdisc silently detaches every filter on it.

All functions take an open `pyroute2.IPRoute`, which may be bound to a network namespace
(`IPRoute(netns=...)`); none keeps state of its own.
"""
from __future__ import annotations

import errno
import re
import struct
from dataclasses import dataclass
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

INGRESS = "ingress"
EGRESS = "egress"
DIRECTIONS = (INGRESS, EGRESS)
PARENTS = {INGRESS: 0xFFFFFFF2, EGRESS: 0xFFFFFFF3}
CLSACT_HANDLE = 0xFFFF0000
CLSACT_PARENT = 0xFFFFFFF1  # TC_H_CLSACT (== TC_H_INGRESS)

#: 0xdae = 3502: shows up as "pref 3502 ... handle 0xdae" in `tc filter show`.
DEFAULT_PRIO = 0x0DAE
DEFAULT_HANDLE = 0x0DAE
ETH_P_ALL = 0x0003
NAME_PREFIX = "dae-py"

_TCA_BPF_ID = 11  # not in pyroute2 0.9.7's cls_bpf nla map: read raw


class TcError(RuntimeError):
    """An attach/detach could not be done as asked (a slot taken by someone else, an ingress
    qdisc in the way, ...)."""


@dataclass(frozen=True)
class FilterSlot:
    """Where one program is attached: enough to find, replace and delete exactly it."""

    ifindex: int
    direction: str
    prio: int = DEFAULT_PRIO
    handle: int = DEFAULT_HANDLE
    protocol: int = ETH_P_ALL
    name: str = ""

    def __post_init__(self) -> None:
        if self.direction not in PARENTS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, not {self.direction!r}")
        if not self.name:
            object.__setattr__(self, "name", default_name(self.direction))

    @property
    def parent(self) -> int:
        return PARENTS[self.direction]


@dataclass(frozen=True)
class FilterInfo:
    """A cls_bpf filter as dumped by the kernel."""

    ifindex: int
    parent: int
    prio: int
    handle: int
    protocol: int
    kind: str
    name: str | None
    prog_id: int | None
    direct_action: bool


def default_name(direction: str) -> str:
    return f"{NAME_PREFIX}:{direction}"


def prog_id_of_fd(fd: int) -> int | None:
    """The kernel id of the BPF program behind `fd`, from /proc/self/fdinfo (no libbpf needed).
    Recorded so a state file and the tests can tell which program a slot holds."""
    try:
        with open(f"/proc/self/fdinfo/{fd}") as fh:
            match = re.search(r"^prog_id:\s*(\d+)", fh.read(), re.M)
    except OSError:
        return None
    return int(match.group(1)) if match else None


# --- qdisc ----------------------------------------------------------------------------------


def qdisc_kinds(ipr: Any, ifindex: int) -> dict[int, str]:
    """parent -> kind of the qdiscs on `ifindex`."""
    return {
        q["parent"]: q.get_attr("TCA_KIND")
        for q in ipr.get_qdiscs(ifindex)
        if q["index"] == ifindex
    }


def has_clsact(ipr: Any, ifindex: int) -> bool:
    return qdisc_kinds(ipr, ifindex).get(CLSACT_PARENT) == "clsact"


def clsact_missing(ipr: Any, ifindex: int) -> bool:
    """True when a clsact must be created; raises if an `ingress` qdisc holds its place
    (both live at ffff:fff1, so clsact cannot be added next to it)."""
    kind = qdisc_kinds(ipr, ifindex).get(CLSACT_PARENT)
    if kind == "clsact":
        return False
    if kind is not None:
        raise TcError(
            f"interface #{ifindex} has a {kind!r} qdisc at ffff:fff1; clsact cannot be added "
            "beside it (remove it or convert its filters to clsact)"
        )
    return True


def add_clsact(ipr: Any, ifindex: int) -> bool:
    """Create the clsact qdisc. False if it appeared meanwhile (then it isn't ours)."""
    try:
        ipr.tc("add", "clsact", ifindex)
    except NetlinkError as exc:
        if exc.code == errno.EEXIST:
            return False
        raise
    return True


def ensure_clsact(ipr: Any, ifindex: int) -> bool:
    """Make sure `ifindex` has a clsact qdisc; True iff this call created it."""
    return clsact_missing(ipr, ifindex) and add_clsact(ipr, ifindex)


def remove_clsact(ipr: Any, ifindex: int, *, only_if_unused: bool = True) -> bool:
    """Delete the clsact qdisc (which detaches every filter on it). With `only_if_unused`
    (default) it stays when filters are still attached: they are someone else's, attached
    after we created the qdisc. True if it was deleted; tolerant of it being gone."""
    if not has_clsact(ipr, ifindex):
        return False
    if only_if_unused and any(list_filters(ipr, ifindex, d) for d in DIRECTIONS):
        return False
    try:
        ipr.tc("del", "clsact", ifindex)
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            return False
        raise
    return True


# --- filters --------------------------------------------------------------------------------


def _raw_u32_attr(nla: Any, nla_type: int) -> int | None:
    """Read a u32 attribute pyroute2 doesn't know (decoded as 'UNKNOWN') from the raw buffer."""
    for slot in nla.get("attrs", ()):
        if slot[0] != "UNKNOWN":
            continue
        cell = slot.cell[1]  # undecoded nla_base: raw buffer + offset of its header
        length, kind = struct.unpack_from("=HH", cell.data, cell.offset)
        if kind & 0x3FFF == nla_type and length >= 8:
            return struct.unpack_from("=I", cell.data, cell.offset + 4)[0]
    return None


def list_filters(ipr: Any, ifindex: int, direction: str) -> list[FilterInfo]:
    """The filters at one clsact hook (the per-priority chain heads, handle 0, are skipped)."""
    parent = PARENTS[direction]
    try:
        msgs = list(ipr.get_filters(index=ifindex, parent=parent))
    except NetlinkError as exc:
        if exc.code in (errno.EINVAL, errno.ENOENT, errno.ENODEV):  # no clsact / no link
            return []
        raise
    out = []
    for msg in msgs:
        if msg["index"] != ifindex or msg["parent"] != parent or msg["handle"] == 0:
            continue
        options = msg.get_attr("TCA_OPTIONS")
        name = prog_id = None
        flags = 0
        if options is not None and msg.get_attr("TCA_KIND") == "bpf":
            name = options.get_attr("TCA_BPF_NAME")
            flags = options.get_attr("TCA_BPF_FLAGS") or 0
            prog_id = _raw_u32_attr(options, _TCA_BPF_ID)
        info = msg["info"]
        out.append(
            FilterInfo(
                ifindex=ifindex,
                parent=parent,
                prio=info >> 16,
                handle=msg["handle"],
                protocol=_ntohs(info & 0xFFFF),
                kind=msg.get_attr("TCA_KIND"),
                name=name,
                prog_id=prog_id,
                direct_action=bool(flags & 1),
            )
        )
    return out


def find_filter(ipr: Any, slot: FilterSlot) -> FilterInfo | None:
    """Whatever filter occupies `slot` (ours or not), or None."""
    for f in list_filters(ipr, slot.ifindex, slot.direction):
        if f.prio == slot.prio and f.handle == slot.handle:
            return f
    return None


def is_ours(info: FilterInfo | None, slot: FilterSlot) -> bool:
    return info is not None and info.kind == "bpf" and info.name == slot.name


def attach(ipr: Any, slot: FilterSlot, fd: int) -> None:
    """Attach program `fd` (direct-action) at `slot`, or atomically swap the program of the
    filter that is already ours there. Refuses to overwrite a foreign filter in the slot.

    The clsact qdisc must exist (see `ensure_clsact`).
    """
    current = find_filter(ipr, slot)
    if current is not None and not is_ours(current, slot):
        raise TcError(
            f"tc slot {slot.direction} pref {slot.prio} handle {slot.handle:#x} on interface "
            f"#{slot.ifindex} holds a foreign filter ({current.kind}, name {current.name!r}); "
            "choose another priority/handle"
        )
    command = "replace-filter" if current is not None else "add-filter"
    ipr.tc(
        command,
        "bpf",
        slot.ifindex,
        slot.handle,
        fd=fd,
        name=slot.name,
        parent=slot.parent,
        prio=slot.prio,
        protocol=slot.protocol,
        classid=1,
        direct_action=True,
    )


def replace(ipr: Any, slot: FilterSlot, fd: int) -> None:
    """Swap in program `fd` at `slot` with one NLM_F_REPLACE request: no window without a
    filter. Creates the filter if the slot is empty (and refuses a foreign one)."""
    attach(ipr, slot, fd)


def detach(ipr: Any, slot: FilterSlot) -> bool:
    """Delete the filter at `slot` if it is still ours. True if one was deleted; tolerant of
    the filter, the qdisc or the interface being gone."""
    if not is_ours(find_filter(ipr, slot), slot):
        return False
    try:
        ipr.tc(
            "del-filter",
            "bpf",
            slot.ifindex,
            slot.handle,
            parent=slot.parent,
            prio=slot.prio,
            protocol=slot.protocol,
        )
    except NetlinkError as exc:
        if exc.code in (errno.ENOENT, errno.EINVAL, errno.ENODEV):
            return False
        raise
    return True


def _ntohs(value: int) -> int:
    return ((value & 0xFF) << 8) | (value >> 8)


__all__ = [
    "INGRESS", "EGRESS", "DIRECTIONS", "PARENTS", "DEFAULT_PRIO", "DEFAULT_HANDLE",
    "FilterSlot", "FilterInfo", "TcError", "prog_id_of_fd", "has_clsact", "clsact_missing",
    "add_clsact", "ensure_clsact", "remove_clsact", "list_filters", "find_filter", "is_ours",
    "attach", "replace", "detach",
]
