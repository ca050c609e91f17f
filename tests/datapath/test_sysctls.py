"""Sysctls: per-namespace access from a helper thread, exact restore, the tproxy plan."""
from __future__ import annotations

from pathlib import Path

import pytest

from dae_py.runtime.datapath import sysctls
from dae_py.runtime.datapath._netns import NetnsNotFound, run_in_netns

from . import lab

pytestmark = pytest.mark.root


def _read_root(key: str) -> str:
    return Path("/proc/sys", key).read_text().strip()


def test_keys() -> None:
    assert sysctls.normalise_key("net.ipv4.ip_forward") == "net/ipv4/ip_forward"
    assert sysctls.normalise_key("/proc/sys/net/ipv4/conf/eth0.5/rp_filter") == \
        "net/ipv4/conf/eth0.5/rp_filter"
    assert sysctls.conf_key("ipv4", "eth0.5", "rp_filter") == "net/ipv4/conf/eth0.5/rp_filter"
    with pytest.raises(ValueError):
        sysctls.conf_key("ipv4", "../x", "rp_filter")


def test_netns_access_is_per_namespace_and_thread_local(ns: str) -> None:
    """Writing in the namespace changes its value only; the caller's thread (and so the
    root namespace) is untouched, before and after."""
    root_before = _read_root("net/ipv4/conf/all/accept_local")
    own = "0" if root_before == "1" else "1"
    sysctls.write("net.ipv4.conf.all.accept_local", own, ns)
    assert sysctls.read(["net/ipv4/conf/all/accept_local"], ns) == \
        {"net/ipv4/conf/all/accept_local": own}
    assert _read_root("net/ipv4/conf/all/accept_local") == root_before
    assert run_in_netns(None, lambda: 42) == 42
    with pytest.raises(NetnsNotFound):
        sysctls.read(["net/ipv4/ip_forward"], "no-such-netns-dpt")


def test_apply_restore_exact_with_propagation(ns: str) -> None:
    """ip_forward and ipv6 all.forwarding rewrite every interface's forwarding (and v4's
    all.accept_redirects); an interface that had its own value must get it back."""
    lab.add_veth(ns, "s0", "s1")
    lab.settle(ns)
    sysctls.write("net/ipv4/ip_forward", 0, ns)
    sysctls.write("net/ipv4/conf/s0/forwarding", 1, ns)  # a per-interface choice
    sysctls.write("net/ipv6/conf/s1/forwarding", 1, ns)
    sysctls.write("net/ipv4/conf/s1/rp_filter", 1, ns)  # already what we'll want: untouched
    before = lab.snapshot(ns)
    wanted = [
        sysctls.Desired("net/ipv4/ip_forward", "1", "t"),
        sysctls.Desired("net/ipv6/conf/all/forwarding", "1", "t"),
        sysctls.Desired("net.ipv4.conf.s0.send_redirects", "0", "t"),
        sysctls.Desired("net/ipv4/conf/s1/rp_filter", "1", "t"),
    ]
    journal: list[sysctls.SysctlChange] = []
    changes = sysctls.apply(wanted, ns, before_write=journal.append)
    assert [c.key for c in changes] == [c.key for c in journal] == [
        "net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding", "net/ipv4/conf/s0/send_redirects"]
    after = sysctls.read(["net/ipv4/conf/s1/forwarding", "net/ipv4/conf/all/accept_redirects"], ns)
    assert after == {"net/ipv4/conf/s1/forwarding": "1", "net/ipv4/conf/all/accept_redirects": "0"}
    assert journal[0].dependents["net/ipv4/conf/s0/forwarding"] == "1"
    assert sysctls.restore(changes, ns) == []
    assert lab.diff(before, lab.snapshot(ns)) == ""


def test_restore_leaves_values_changed_by_someone_else(ns: str) -> None:
    key = "net/ipv4/conf/all/rp_filter"

    def value() -> str | None:
        return sysctls.read([key], ns)[key]

    sysctls.write(key, 2, ns)
    changes = sysctls.apply([sysctls.Desired(key, "1", "t")], ns)
    assert value() == "1"
    sysctls.write(key, 0, ns)  # an operator's value: neither ours nor the old one
    assert sysctls.restore(changes, ns) == [key]  # left alone, and reported
    assert value() == "0"

    changes = sysctls.apply([sysctls.Desired(key, "1", "t")], ns)
    sysctls.write(key, 0, ns)  # set back to the old value by someone: nothing to do
    assert sysctls.restore(changes, ns) == [] and value() == "0"

    changes = sysctls.apply([sysctls.Desired(key, "1", "t")], ns)
    assert sysctls.restore(changes, ns) == [] and value() == "0"  # ours: restored
    assert sysctls.restore(changes, ns) == [] and value() == "0"  # and again: no-op


def test_plan(ns: str) -> None:
    lab.add_veth(ns, "lan0", "lan1")
    lab.add_veth(ns, "wan0", "wan1")
    for k, v in (("net/ipv4/conf/all/src_valid_mark", 0), ("net/ipv4/conf/lan0/src_valid_mark", 0),
                 ("net/ipv4/conf/all/rp_filter", 1), ("net/ipv6/conf/wan0/accept_ra", 1)):
        sysctls.write(k, v, ns)
    keys = {d.key: d.value for d in sysctls.plan(["lan0"], ["wan0"], reinject=["wan0"], netns=ns)}
    assert keys == {
        "net/ipv4/ip_forward": "1",
        "net/ipv6/conf/all/forwarding": "1",
        "net/ipv4/conf/all/send_redirects": "0",
        "net/ipv4/conf/lan0/send_redirects": "0",
        "net/ipv4/conf/wan0/accept_local": "1",
        "net/ipv6/conf/wan0/accept_ra": "2",
    }
    # src_valid_mark in effect (wg-quick sets it globally): marked packets validate as local
    sysctls.write("net/ipv4/conf/all/src_valid_mark", 1, ns)
    keys = {d.key: d.value for d in sysctls.plan(["lan0"], [], netns=ns, forwarding=False)}
    assert keys == {
        "net/ipv4/conf/all/send_redirects": "0",
        "net/ipv4/conf/lan0/send_redirects": "0",
        "net/ipv4/conf/lan0/accept_local": "1",
        "net/ipv4/conf/lan0/rp_filter": "2",
    }
