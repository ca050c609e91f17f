"""The Datapath as a whole: setup/replace/teardown, and cleanup after a crash must leave the
namespace exactly as it was (qdiscs, filters, rules, routes in all tables v4+v6, sysctls)."""
from __future__ import annotations

import gc
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from dae_py.runtime.datapath import Datapath, StateBusy, TcError, cleanup, tc
from dae_py.runtime.datapath._netns import open_iproute

from . import lab

pytestmark = pytest.mark.root
ROOT = Path(__file__).resolve().parents[2]
FWMARK, TABLE = 0x8000000, 2023


@pytest.fixture
def gw(ns: str) -> str:
    lab.make_gateway(ns)
    return ns


def make(gw: str, state_path: Path, **kw: Any) -> Datapath:
    return Datapath(lan=["lan*"], wan="auto", fwmark=FWMARK, table=TABLE, netns=gw,
                    state_path=state_path, **kw)


def our_filters(ns: str) -> list[tuple]:
    return [f for f in lab.snapshot(ns)["filters"] if str(f[5]).startswith("dae-py")]


def test_setup_applies_and_teardown_restores(gw: str, state_path: Path,
                                             prog_fds: dict[str, int]) -> None:
    before = lab.snapshot(gw)
    dp = make(gw, state_path)
    dp.setup(prog_fds["a"], prog_fds["b"])
    assert [i.name for i in dp.lan_interfaces] == ["lan0", "lan1"]
    assert [i.name for i in dp.wan_interfaces] == ["wan0"]
    during = lab.snapshot(gw)
    id_a, id_b = tc.prog_id_of_fd(prog_fds["a"]), tc.prog_id_of_fd(prog_fds["b"])
    assert sorted(our_filters(gw)) == [
        ("lan0", "ingress", 0xDAE, 0xDAE, "bpf", "dae-py:lan-ingress", id_a),
        ("lan1", "ingress", 0xDAE, 0xDAE, "bpf", "dae-py:lan-ingress", id_a),
        ("wan0", "egress", 0xDAE, 0xDAE, "bpf", "dae-py:wan-egress", id_b),
    ]
    assert {q[0] for q in during["qdiscs"] if q[1] == "clsact"} == {"lan0", "lan1", "wan0"}
    assert len([r for r in during["rules"] if r[-4] == 0xDA]) == 2  # FRA_PROTOCOL, v4+v6
    assert sorted(r[15] for r in during["routes"] if r[5] == 0xDA) == [TABLE, TABLE]  # RTA_TABLE
    s = during["sysctls"]
    assert s["net/ipv4/ip_forward"] == "1" and s["net/ipv6/conf/all/forwarding"] == "1"
    assert s["net/ipv4/conf/lan0/send_redirects"] == "0"
    assert s["net/ipv4/conf/lan0/accept_local"] == "1"  # src_valid_mark is on in this ns
    assert s["net/ipv4/conf/lan0/rp_filter"] == "2"  # strict would drop marked packets
    assert s["net/ipv4/conf/wan0/accept_local"] == "1"  # egress program given: re-injection
    assert s["net/ipv6/conf/wan0/accept_ra"] == "2"
    state = json.loads(state_path.read_text())
    assert {e["kind"] for e in state["entries"]} == {"sysctl", "rule", "route", "qdisc", "filter"}

    report = dp.teardown()
    assert report.ok and not report.absent
    assert lab.diff(before, lab.snapshot(gw)) == ""
    assert not state_path.exists()


def test_replace_swaps_programs_in_place(gw: str, state_path: Path,
                                         prog_fds: dict[str, int]) -> None:
    before = lab.snapshot(gw)
    id_a, id_b = tc.prog_id_of_fd(prog_fds["a"]), tc.prog_id_of_fd(prog_fds["b"])
    with make(gw, state_path) as dp:
        dp.setup(prog_fds["a"])
        assert {f[6] for f in our_filters(gw)} == {id_a}
        dp.replace(ingress_fd=prog_fds["b"])
        assert sorted((f[0], f[1], f[6]) for f in our_filters(gw)) == [
            ("lan0", "ingress", id_b), ("lan1", "ingress", id_b)]
        journal = json.loads(state_path.read_text())["entries"]
        assert {e["prog_id"] for e in journal if e["kind"] == "filter"} == {id_b}
        dp.replace(egress_fd=prog_fds["a"])  # a hook that had none gets one
        assert ("wan0", "egress", id_a) in [(f[0], f[1], f[6]) for f in our_filters(gw)]
    assert lab.diff(before, lab.snapshot(gw)) == ""


def test_crash_then_cleanup_restores_everything(gw: str, state_path: Path,
                                                prog_fds: dict[str, int]) -> None:
    before = lab.snapshot(gw)
    dp = make(gw, state_path)
    dp.setup(prog_fds["a"], prog_fds["a"])
    with pytest.raises(StateBusy):
        cleanup(state_path)  # the datapath is alive: hands off
    del dp  # "crash": no teardown
    gc.collect()
    assert lab.diff(before, lab.snapshot(gw)) != ""
    report = cleanup(state_path)
    assert report.ok and report.undone
    assert lab.diff(before, lab.snapshot(gw)) == ""
    assert not state_path.exists()
    assert cleanup(state_path).undone == []  # idempotent


def test_sigkill_then_cleanup(gw: str, state_path: Path, bpf_objects: dict[str, Path]) -> None:
    """A real crash: the runtime is a separate process, killed with SIGKILL after setup. Its
    BPF pin is journaled too and removed by the cleanup."""
    before = lab.snapshot(gw)
    pin = f"/sys/fs/bpf/{lab.unique('dptpin')}"
    child = textwrap.dedent(f"""
        import ctypes, sys, time
        sys.path.insert(0, {str(ROOT)!r})
        from dae_py.runtime.datapath import Datapath
        from tests.datapath import lab
        fd = lab.load_prog(__import__("pathlib").Path({str(bpf_objects["pass_a"])!r}))
        dp = Datapath(lan=["lan*"], wan="auto", fwmark={FWMARK}, table={TABLE},
                      netns={gw!r}, state_path={str(state_path)!r})
        dp.setup(fd, fd, pins=[{pin!r}])
        libbpf = ctypes.CDLL("libbpf.so.1")
        assert libbpf.bpf_obj_pin(fd, {pin!r}.encode()) == 0
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", child], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        assert os.path.exists(pin) and our_filters(gw)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    report = cleanup(state_path)
    assert report.ok and f"pin {pin}" in report.undone
    assert not os.path.exists(pin)
    assert lab.diff(before, lab.snapshot(gw)) == ""


def test_cleanup_tolerates_what_is_already_gone(gw: str, state_path: Path,
                                                prog_fds: dict[str, int]) -> None:
    before = lab.snapshot(gw)
    dp = make(gw, state_path)
    dp.setup(prog_fds["a"], prog_fds["a"])
    lan1 = lab.ifindex(gw, "lan1")
    gone_idx = {lan1, lab.ifindex(gw, "xl1")}
    del dp
    gc.collect()
    with open_iproute(gw) as ipr:  # an operator "helped" half-way
        ipr.tc("del", "clsact", lab.ifindex(gw, "lan0"))
        ipr.rule("del", family=2, fwmark=FWMARK, fwmask=FWMARK, table=TABLE, priority=1000)
        ipr.link("del", index=lan1)
    report = cleanup(state_path)
    assert report.ok and report.absent
    assert lab.diff(lab.without_links(before, {"lan1", "xl1"}, gone_idx),
                    lab.snapshot(gw)) == ""


def test_preexisting_objects_are_left_alone(gw: str, state_path: Path,
                                            prog_fds: dict[str, int]) -> None:
    """A clsact with someone's filter, an equivalent fwmark rule and an identical local route
    existed before: set-up uses them, teardown leaves every one of them."""
    lan0 = lab.ifindex(gw, "lan0")
    with open_iproute(gw) as ipr:
        ipr.tc("add", "clsact", lan0)
        ipr.tc("add-filter", "bpf", lan0, 1, fd=prog_fds["b"], name="other",
               parent="ffff:fff2", prio=1, classid=1, direct_action=True)
        ipr.rule("add", family=2, fwmark=FWMARK, fwmask=FWMARK, table=TABLE, priority=77)
        lo = ipr.link_lookup(ifname="lo")[0]
        ipr.route("add", family=10, dst="::/0", type="local", oif=lo, table=TABLE, scope=254)
    before = lab.snapshot(gw)
    with make(gw, state_path) as dp:
        dp.setup(prog_fds["a"])
        kinds = [e["kind"] for e in json.loads(state_path.read_text())["entries"]]
        assert kinds.count("rule") == 1 and kinds.count("route") == 1  # only the v6 rule/v4 route
        assert kinds.count("qdisc") == 1  # lan1's; lan0's clsact was there
    assert lab.diff(before, lab.snapshot(gw)) == ""


def test_failed_setup_rolls_back(gw: str, state_path: Path, prog_fds: dict[str, int]) -> None:
    lan1 = lab.ifindex(gw, "lan1")
    with open_iproute(gw) as ipr:  # someone squats our slot on lan1's ingress
        ipr.tc("add", "clsact", lan1)
        ipr.tc("add-filter", "bpf", lan1, tc.DEFAULT_HANDLE, fd=prog_fds["b"], name="squat",
               parent="ffff:fff2", prio=tc.DEFAULT_PRIO, classid=1, direct_action=True)
    before = lab.snapshot(gw)
    dp = make(gw, state_path)
    with pytest.raises(TcError, match="foreign"):
        dp.setup(prog_fds["a"], prog_fds["a"])
    assert not dp.active
    assert lab.diff(before, lab.snapshot(gw)) == ""
    assert not state_path.exists()
    assert cleanup(state_path).undone == []  # and the lock was released


def test_next_setup_cleans_up_after_a_crashed_predecessor(gw: str, state_path: Path,
                                                          prog_fds: dict[str, int]) -> None:
    before = lab.snapshot(gw)
    dp = make(gw, state_path)
    dp.setup(prog_fds["a"], prog_fds["a"])
    del dp
    gc.collect()
    with make(gw, state_path) as dp2:
        dp2.setup(prog_fds["b"])
        with pytest.raises(StateBusy):  # while dp2 lives, nobody else takes its state
            make(gw, state_path).setup(prog_fds["a"])
        assert {f[6] for f in our_filters(gw)} == {tc.prog_id_of_fd(prog_fds["b"])}
    assert lab.diff(before, lab.snapshot(gw)) == ""


def test_caller_namespace_mode(gw: str, tmp_path: Path, bpf_objects: dict[str, Path]) -> None:
    """netns=None: a runtime that already runs inside the namespace (as under `ip netns exec`
    or in a container). Run in a child that moves itself there first."""
    child = textwrap.dedent(f"""
        import gc, sys
        sys.path.insert(0, {str(ROOT)!r})
        from pyroute2 import netns
        netns.setns({gw!r}, flags=0)
        from dae_py.runtime.datapath import Datapath, cleanup
        from tests.datapath import lab
        fd = lab.load_prog(__import__("pathlib").Path({str(bpf_objects["pass_a"])!r}))
        snap = lambda: {{k: v for k, v in lab.snapshot(None).items()}}
        before = snap()
        state = {str(tmp_path / "s.json")!r}
        dp = Datapath(lan="lan*", wan="wan0", fwmark=1, table=100, state_path=state)
        dp.setup(fd, fd)
        assert snap() != before
        dp.teardown()
        assert lab.diff(before, snap()) == "", lab.diff(before, snap())
        dp = Datapath(lan="lan*", wan="wan0", fwmark=1, table=100, state_path=state)
        dp.setup(fd)
        del dp; gc.collect()
        assert cleanup(state).ok
        assert lab.diff(before, snap()) == "", lab.diff(before, snap())
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
