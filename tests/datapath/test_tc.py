"""clsact + cls_bpf attach/replace/detach through pyroute2, in a namespace of the test's own."""
from __future__ import annotations

import socket
import struct

import pytest

from dae_py.runtime.datapath import tc
from dae_py.runtime.datapath._netns import open_iproute, run_in_netns

from . import lab

pytestmark = pytest.mark.root

RTMGRP_TC = 0x8
RTM_NEWTFILTER, RTM_DELTFILTER = 44, 45


def _tc_monitor(ns: str) -> socket.socket:
    """A raw rtnetlink socket in `ns` subscribed to tc events."""

    def make() -> socket.socket:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        s.bind((0, RTMGRP_TC))
        return s

    return run_in_netns(ns, make)


def _event_types(sock: socket.socket) -> list[int]:
    sock.settimeout(0.3)
    types = []
    try:
        while True:
            data = sock.recv(65536)
            off = 0
            while off + 16 <= len(data):
                length, mtype = struct.unpack_from("=IH", data, off)
                types.append(mtype)
                off += (length + 3) & ~3
    except TimeoutError:
        pass
    return types


def test_clsact_created_flag_and_removal(ns: str) -> None:
    lab.add_veth(ns, "t0", "t1")
    idx = lab.ifindex(ns, "t0")
    with open_iproute(ns) as ipr:
        assert not tc.has_clsact(ipr, idx)
        assert tc.ensure_clsact(ipr, idx) is True  # we created it
        assert tc.ensure_clsact(ipr, idx) is False  # already there: not ours to remember
        assert tc.has_clsact(ipr, idx)
        assert tc.remove_clsact(ipr, idx) is True
        assert not tc.has_clsact(ipr, idx)
        assert tc.remove_clsact(ipr, idx) is False  # gone already: tolerated


def test_ingress_qdisc_in_the_way_is_reported(ns: str) -> None:
    lab.add_veth(ns, "t0", "t1")
    idx = lab.ifindex(ns, "t0")
    with open_iproute(ns) as ipr:
        ipr.tc("add", "ingress", idx)
        with pytest.raises(tc.TcError, match="ingress"):
            tc.ensure_clsact(ipr, idx)


def test_attach_replace_detach(ns: str, prog_fds: dict[str, int]) -> None:
    lab.add_veth(ns, "t0", "t1")
    idx = lab.ifindex(ns, "t0")
    id_a, id_b = tc.prog_id_of_fd(prog_fds["a"]), tc.prog_id_of_fd(prog_fds["b"])
    assert id_a and id_b and id_a != id_b
    ingress = tc.FilterSlot(idx, tc.INGRESS)
    egress = tc.FilterSlot(idx, tc.EGRESS)
    with open_iproute(ns) as ipr:
        tc.ensure_clsact(ipr, idx)
        tc.attach(ipr, ingress, prog_fds["a"])
        tc.attach(ipr, egress, prog_fds["a"])
        for slot, parent in ((ingress, 0xFFFFFFF2), (egress, 0xFFFFFFF3)):
            [f] = tc.list_filters(ipr, idx, slot.direction)
            assert (f.parent, f.prio, f.handle, f.kind) == (parent, 0xDAE, 0xDAE, "bpf")
            assert f.name == f"dae-py:{slot.direction}"
            assert f.prog_id == id_a and f.direct_action

        monitor = _tc_monitor(ns)
        try:
            tc.replace(ipr, ingress, prog_fds["b"])
            events = _event_types(monitor)
        finally:
            monitor.close()
        # One NLM_F_REPLACE: the kernel reports a new filter and never a deleted one, i.e. the
        # hook was not empty at any moment.
        assert RTM_NEWTFILTER in events and RTM_DELTFILTER not in events
        [f] = tc.list_filters(ipr, idx, tc.INGRESS)
        assert (f.prio, f.handle, f.prog_id) == (0xDAE, 0xDAE, id_b)
        assert tc.list_filters(ipr, idx, tc.EGRESS)[0].prog_id == id_a

        assert tc.detach(ipr, ingress) is True
        assert tc.list_filters(ipr, idx, tc.INGRESS) == []
        assert len(tc.list_filters(ipr, idx, tc.EGRESS)) == 1  # the other hook untouched
        assert tc.detach(ipr, ingress) is False  # already gone: tolerated
        assert tc.detach(ipr, egress) is True
        assert tc.remove_clsact(ipr, idx)


def test_foreign_filters_are_left_alone(ns: str, prog_fds: dict[str, int]) -> None:
    lab.add_veth(ns, "t0", "t1")
    idx = lab.ifindex(ns, "t0")
    ours = tc.FilterSlot(idx, tc.INGRESS)
    with open_iproute(ns) as ipr:
        assert tc.ensure_clsact(ipr, idx)
        # someone else's filter at another priority, and one squatting our slot on egress
        ipr.tc("add-filter", "bpf", idx, 1, fd=prog_fds["b"], name="other", parent="ffff:fff2",
               prio=1, classid=1, direct_action=True)
        ipr.tc("add-filter", "bpf", idx, tc.DEFAULT_HANDLE, fd=prog_fds["b"], name="squatter",
               parent="ffff:fff3", prio=tc.DEFAULT_PRIO, classid=1, direct_action=True)
        with pytest.raises(tc.TcError, match="foreign"):
            tc.attach(ipr, tc.FilterSlot(idx, tc.EGRESS), prog_fds["a"])
        assert tc.detach(ipr, tc.FilterSlot(idx, tc.EGRESS)) is False  # not ours: kept
        tc.attach(ipr, ours, prog_fds["a"])
        assert {f.name for f in tc.list_filters(ipr, idx, tc.INGRESS)} == {"other", "dae-py:ingress"}
        assert tc.detach(ipr, ours)
        assert [f.name for f in tc.list_filters(ipr, idx, tc.INGRESS)] == ["other"]
        # the qdisc stays while anyone's filters are on it
        assert tc.remove_clsact(ipr, idx) is False and tc.has_clsact(ipr, idx)
