"""netlink_snapshot: equal when nothing changed (traffic, reloading the same BPF object),
different when a qdisc, filter, rule, route or watched sysctl changed."""
from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.runtime.lab import Lab, http_get, netlink_snapshot

pytestmark = pytest.mark.root

SYSCTLS = ["net.ipv4.ip_forward", "net.ipv4.conf.all.rp_filter", "net.ipv6.conf.all.forwarding",
           "net.ipv4.conf.lan0.rp_filter"]

PROG = """
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
__attribute__((section("tc"), used)) int lab_pass(struct __sk_buff *skb) { return %s; }
char _license[] __attribute__((section("license"), used)) = "GPL";
"""


def compile_prog(tmp_path: Path, name: str, verdict: str) -> Path:
    # Same file name for every variant: tc names the filter after the file, so only the
    # program's tag can tell two variants apart.
    (tmp_path / name).mkdir()
    src, obj = tmp_path / name / "prog.c", tmp_path / name / "prog.o"
    src.write_text(PROG % verdict)
    subprocess.run(["clang", "-O2", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
                    "-c", str(src), "-o", str(obj)], check=True, capture_output=True)
    return obj


@pytest.fixture
def plain_lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def changed_sections(a: dict, b: dict) -> set[str]:
    return {k for k in a if a[k] != b[k]}


def test_unchanged_despite_traffic(plain_lab: Lab) -> None:
    lab = plain_lab
    before = lab.snapshot("gateway", SYSCTLS)
    lab.start_http_peer(8080)
    for family, ip in ((socket.AF_INET, lab.topo.upstream_ip4),
                       (socket.AF_INET6, lab.topo.upstream_ip6)):
        for _ in range(5):
            with lab.socket("client", family) as s:
                s.settimeout(5)
                s.connect((ip, 8080))
                http_get(s, ip)
    after = lab.snapshot("gateway", SYSCTLS)
    assert before == after
    assert before["sysctls"]["net.ipv4.ip_forward"] == "1"
    assert {"links", "addresses", "qdiscs", "filters", "rules", "routes", "sysctls"} <= set(before)


def test_root_namespace_snapshot_is_stable() -> None:
    assert netlink_snapshot(None, ["net.ipv4.ip_forward"]) == \
        netlink_snapshot(None, ["net.ipv4.ip_forward"])


def test_detects_and_forgets_changes(plain_lab: Lab) -> None:
    lab = plain_lab
    before = lab.snapshot("gateway", SYSCTLS)
    with lab.iproute("gateway") as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        lan = ipr.link_lookup(ifname=lab.topo.gateway_lan_if)[0]
        ipr.rule("add", table=100, priority=100, fwmark=1)
        ipr.rule("add", table=100, priority=100, fwmark=1, family=socket.AF_INET6)
        ipr.route("add", dst="0.0.0.0/0", type="local", oif=lo, table=100, scope=254)
        ipr.route("add", dst="::/0", type="local", oif=lo, table=100, family=socket.AF_INET6)
        ipr.tc("add", "clsact", lan)
        lab.sysctl("gateway", "net.ipv4.conf.lan0.rp_filter", 2)
        during = lab.snapshot("gateway", SYSCTLS)
        assert changed_sections(before, during) == {"rules", "routes", "qdiscs", "sysctls"}

        ipr.tc("del", "clsact", lan)
        ipr.route("del", dst="0.0.0.0/0", type="local", oif=lo, table=100, scope=254)
        ipr.route("del", dst="::/0", type="local", oif=lo, table=100, family=socket.AF_INET6)
        ipr.rule("del", table=100, priority=100, fwmark=1)
        ipr.rule("del", table=100, priority=100, fwmark=1, family=socket.AF_INET6)
    rp_filter = before["sysctls"]["net.ipv4.conf.lan0.rp_filter"]
    lab.sysctl("gateway", "net.ipv4.conf.lan0.rp_filter", rp_filter)
    assert lab.snapshot("gateway", SYSCTLS) == before


BPFFS = Path("/sys/fs/bpf")


@pytest.fixture
def tc_bpffs_restored() -> Iterator[None]:
    """`tc ... bpf obj FILE` (iproute2's own loader) creates its work dir in the BPF filesystem,
    which the lab's namespaces share with the host: /sys/fs/bpf/tc/globals plus the `ip` and
    `xdp` links to it. Remove what appeared during the test, if nothing was pinned in it."""
    before = set(BPFFS.iterdir()) if BPFFS.is_dir() else set()
    try:
        yield
    finally:
        if BPFFS.is_dir():
            new = set(BPFFS.iterdir()) - before
            for link in (e for e in new if e.is_symlink()):
                link.unlink()
            for top in (e for e in new if not e.is_symlink() and e.is_dir()):
                for sub in sorted(top.rglob("*"), key=lambda q: len(q.parts), reverse=True):
                    if sub.is_dir():
                        sub.rmdir()  # fails (and shows) if tc left a pin inside
                top.rmdir()


def test_bpf_filters(plain_lab: Lab, tmp_path: Path, tc_bpffs_restored: None) -> None:
    """Program ids change on every load and are ignored; the tag (instruction hash) is kept."""
    lab = plain_lab
    lan = lab.topo.gateway_lan_if
    ok = compile_prog(tmp_path, "ok", "TC_ACT_OK")
    shot = compile_prog(tmp_path, "shot", "TC_ACT_UNSPEC")

    def attach(obj: Path) -> None:
        lab.run("gateway", ["tc", "filter", "replace", "dev", lan, "ingress", "pref", "1",
                            "handle", "1", "bpf", "da", "obj", str(obj), "sec", "tc"],
                check=True)

    lab.run("gateway", ["tc", "qdisc", "add", "dev", lan, "clsact"], check=True)
    attach(ok)
    first = lab.snapshot("gateway")
    bpf = [f for f in first["filters"] if f.get("TCA_OPTIONS", {}).get("TCA_BPF_TAG")]
    assert len(bpf) == 1 and bpf[0]["parent"] == "ffff:fff2"
    assert "TCA_BPF_ID" not in bpf[0]["TCA_OPTIONS"]

    lab.run("gateway", ["tc", "filter", "del", "dev", lan, "ingress"], check=True)
    attach(ok)  # the same object, a new program id
    assert lab.snapshot("gateway") == first

    attach(shot)
    assert changed_sections(first, lab.snapshot("gateway")) == {"filters"}
    lab.run("gateway", ["tc", "qdisc", "del", "dev", lan, "clsact"], check=True)
    assert lab.snapshot("gateway")["filters"] == []
