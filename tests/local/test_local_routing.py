"""The gateway's own traffic through a running `dae-runtime` (docs/local-routing.md): programs
started on the gateway are classified at the WAN egress, by pname() among the rest; proxied ones
are bounced into the tproxy listener and arrive at the target from the proxy's address (danted
in upstream), direct ones from the gateway's own. The relay's upstream connections, its health
checks and the DNS module's queries are never captured (the fallback here is the proxy, so a
captured one would loop through the relay and show up in its flow lines). A LAN client is
proxied in the same run. Stopping the runtime leaves no tc filter, no rule, no sysctl and no
cgroup program behind.

The pname() hooks go on a child cgroup the test creates (DAE_CGROUP), and the local programs
run inside it: a root attach would hook the whole machine.
"""
from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import dns.message
import dns.rcode
import pytest

from tests.runtime.helpers import (
    Gw,
    Lab,
    client_get,
    flow_lines,
    gateway,
    gateway_snapshot,
    lab_config,
    runtime_lab,
    snapshot_diff,
    wait_for,
)

from .cgroups import attached, child_cgroup, run_in

pytestmark = pytest.mark.root

LONG_NAME = "dae-test-long-client-name"  # 25 characters: the kernel keeps 15 of its comm
FETCH = textwrap.dedent("""\
    import json, socket, sys
    host, port = sys.argv[1], int(sys.argv[2])
    s = socket.create_connection((host, port), timeout=5)
    s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
    buf = b""
    while chunk := s.recv(65536):
        buf += chunk
    print(buf.partition(b"\\r\\n\\r\\n")[2].decode())
    """)


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    for lab in runtime_lab():
        lab.start_danted(1080)
        for port in (8081, 8083):
            lab.start_http_peer(port)
        yield lab


@pytest.fixture(scope="module")
def tools(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A Python interpreter under a 25-character name (a symlink: comm is the name exec'd, the
    executable is python3.x) and the fetch script it runs."""
    d = tmp_path_factory.mktemp("local-tools")
    os.chmod(d, 0o755)
    (d / LONG_NAME).symlink_to(os.path.realpath(sys.executable))
    (d / "fetch.py").write_text(FETCH)
    return {"long": str(d / LONG_NAME), "fetch": str(d / "fetch.py")}


CONFIG_RULES = [
    "pname(curl) && dport(8081) -> direct",   # curl to :8081 goes direct
    f"pname({LONG_NAME}) && dport(8081) -> proxy",  # the long-named program to :8081 is proxied
]


DNS_PORT = 5353
DNS = """\
dns:
  bind: ['{t.gateway_lan_ip4}:5353']
  upstream:
    lab: 'udp://{t.upstream_ip4}:53'
  routing:
    request:
      fallback: lab
"""


def _dns_query(lab: Lab, host: str, port: int) -> int:
    """A query from the gateway itself to the DNS module (over lo); its rcode."""
    q = dns.message.make_query("local-routing.test", "A")
    with lab.socket("gateway", socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(q.to_wire(), (host, port))
        return int(dns.message.from_wire(s.recv(4096)).rcode())


def _peer(stdout: str) -> str:
    return str(json.loads(stdout)["peer"])


def test_local_programs_are_routed_by_pname_and_nothing_is_captured_twice(
        lab: Lab, tools: dict[str, str], tmp_path: Path) -> None:
    t = lab.topo
    before = gateway_snapshot(lab)
    cfg = lab_config(t, rules=CONFIG_RULES, fallback="proxy", extra_global=f"  wan_interface: [{t.gateway_wan_if}]")
    cfg += DNS.format(t=t)
    with child_cgroup("local") as cg, pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAE_CGROUP", str(cg))
        with gateway(lab, cfg, tmp_path / "gw") as gw:
            assert isinstance(gw, Gw)
            assert len(attached(cg)) == 4, attached(cg)  # connect4/6, sendmsg4/6

            # the long-named program: pname() matched on its (truncated) comm -> proxied
            run = lab.run("gateway", run_in(cg, [tools["long"], tools["fetch"], t.upstream_ip4, "8081"]))
            assert run.returncode == 0, run.stderr
            assert _peer(run.stdout) == t.upstream_ip4  # danted's address: it came through the proxy

            # curl to the same port: the direct rule -> the gateway's own WAN address
            run = lab.run("gateway", run_in(cg, ["curl", "-s", "--max-time", "5", f"http://{t.upstream_ip4}:8081/"]))
            assert run.returncode == 0, run.stderr
            assert _peer(run.stdout) == t.gateway_wan_ip4

            # curl to a destination no rule names: the fallback proxy -> from the proxy's address
            run = lab.run("gateway", run_in(cg, ["curl", "-s", "--max-time", "5", f"http://{t.upstream_ip4}:8083/"]))
            assert run.returncode == 0, run.stderr
            assert _peer(run.stdout) == t.upstream_ip4

            # IPv6: the same three
            run = lab.run("gateway", run_in(cg, [tools["long"], tools["fetch"], t.upstream_ip6, "8081"]))
            assert run.returncode == 0, run.stderr
            assert _peer(run.stdout) == t.upstream_ip6
            run = lab.run("gateway", run_in(cg, ["curl", "-s", "--max-time", "5", f"http://[{t.upstream_ip6}]:8081/"]))
            assert run.returncode == 0, run.stderr
            assert _peer(run.stdout) == t.gateway_wan_ip6
            run = lab.run("gateway", run_in(cg, ["curl", "-s", "--max-time", "5", f"http://[{t.upstream_ip6}]:8083/"]))
            assert run.returncode == 0, run.stderr
            assert _peer(run.stdout) == t.upstream_ip6

            # the DNS module's own upstream query (so_mark) leaves directly, though the fallback is the proxy
            assert _dns_query(lab, t.gateway_lan_ip4, DNS_PORT) == dns.rcode.NOERROR

            # a LAN client in the same run: proxied at LAN ingress as always
            assert client_get(lab, t.upstream_ip4, 8083)["peer"] == t.upstream_ip4

            flows = flow_lines(gw.log_text())
        # the relay saw exactly the three proxied flows: not its own dials to danted (:1080),
        # its health checks (:8080, :53), nor a second copy of any flow
        dsts = sorted(f.dst for f in flows)
        assert dsts == sorted([f"{t.upstream_ip4}:8081", f"{t.upstream_ip4}:8083", f"{t.upstream_ip4}:8083",
                               f"[{t.upstream_ip6}]:8081", f"[{t.upstream_ip6}]:8083"]), flows
        assert {f.src.rsplit(":", 1)[0].strip("[]") for f in flows} == {t.gateway_wan_ip4, t.gateway_wan_ip6,
                                                                         t.client_ip4}
        assert attached(cg) == []
    diff = snapshot_diff(before, gateway_snapshot(lab))
    assert not diff, diff


def _bridge(lab: Lab, name: str) -> int:
    ipr = lab.iproute("gateway")
    ipr.link("add", ifname=name, kind="bridge")
    idx = int(ipr.link_lookup(ifname=name)[0])
    ipr.link("set", index=idx, state="up")
    return idx


def _ingress_filters(lab: Lab, index: int) -> list[object]:
    return list(lab.iproute("gateway").get_filters(index=index, parent=0xFFFFFFF2))


def test_a_bridge_created_after_start_is_attached_and_detached(lab: Lab, tmp_path: Path) -> None:
    """lan_interface: [lan0, br-dae*] with br-dae0 there at start and br-dae1 created while the
    runtime runs: br-dae1 gets the LAN ingress filter on the link event (the poll is only a 30 s
    safety net), and loses it at the stop."""
    t = lab.topo
    first = _bridge(lab, "br-dae0")
    try:
        before = gateway_snapshot(lab)
        cfg = lab_config(t, rules=["dport(9) -> block"], fallback="direct").replace(
            f"lan_interface: [{t.gateway_lan_if}]", f"lan_interface: [{t.gateway_lan_if}, 'br-dae*']")
        with gateway(lab, cfg, tmp_path / "gw") as gw:
            assert _ingress_filters(lab, first)
            late = _bridge(lab, "br-dae1")
            wait_for(lambda: _ingress_filters(lab, late), timeout=10)
            gw.wait_log(r"interfaces attached since start: br-dae1")
        assert not _ingress_filters(lab, late)
        lab.iproute("gateway").link("del", index=late)
        assert not snapshot_diff(before, gateway_snapshot(lab))
    finally:
        for name in ("br-dae0", "br-dae1"):
            ipr = lab.iproute("gateway")
            for idx in ipr.link_lookup(ifname=name):
                ipr.link("del", index=idx)


def _egress_filters(lab: Lab, index: int) -> list[object]:
    return list(lab.iproute("gateway").get_filters(index=index, parent=0xFFFFFFF3))


def test_wan_auto_follows_the_default_route(lab: Lab, tmp_path: Path) -> None:
    """wan_interface: auto with the default route on wan0 at start; then the default route moves
    to a new link (dwan0, a veth): dwan0 gets the WAN programs on the route event, and loses them at the stop."""
    t = lab.topo
    ipr = lab.iproute("gateway")
    wan = int(ipr.link_lookup(ifname=t.gateway_wan_if)[0])
    ipr.route("add", dst="default", gateway=t.upstream_ip4)
    try:
        before = gateway_snapshot(lab)
        cfg = lab_config(t, rules=["dport(9) -> block"], fallback="direct", extra_global="  wan_interface: auto")
        with gateway(lab, cfg, tmp_path / "gw") as gw:
            assert _egress_filters(lab, wan)
            ipr.link("add", ifname="dwan0", kind="veth", peer="dwan0p")  # (no dummy module here)
            new = int(ipr.link_lookup(ifname="dwan0")[0])
            ipr.link("set", index=new, state="up")
            ipr.addr("add", index=new, address="10.231.99.1", prefixlen=24)
            ipr.route("del", dst="default", gateway=t.upstream_ip4)
            ipr.route("add", dst="default", gateway="10.231.99.2", oif=new)
            wait_for(lambda: _egress_filters(lab, new), timeout=10)
            gw.wait_log(r"interfaces attached since start: dwan0")
        assert not _egress_filters(lab, new) and not _egress_filters(lab, wan)
        ipr.link("del", index=new)
        ipr.route("add", dst="default", gateway=t.upstream_ip4)
        assert not snapshot_diff(before, gateway_snapshot(lab))
    finally:
        for idx in ipr.link_lookup(ifname="dwan0"):
            ipr.link("del", index=idx)
        for _ in range(2):
            try:
                ipr.route("del", dst="default")
            except Exception:  # noqa: BLE001 - no default route left: done
                break


def test_a_reload_swaps_the_wan_programs_and_the_pname_hooks(
        lab: Lab, tools: dict[str, str], tmp_path: Path) -> None:
    """With wan_interface and pname() rules, `dae-runtime reload` swaps the WAN pair and each
    cgroup hook with the LAN programs: a local curl that went direct by pname() is proxied by
    the new build's rule, the hooks stay four, and the stop leaves nothing behind."""
    from tests.runtime.test_reload import build, reload_cmd

    t = lab.topo
    before = gateway_snapshot(lab)
    wan = f"  wan_interface: [{t.gateway_wan_if}]"
    first = lab_config(t, rules=CONFIG_RULES, fallback="proxy", extra_global=wan)
    flipped = lab_config(t, rules=["pname(curl) && dport(8081) -> proxy", *CONFIG_RULES[1:]],
                         fallback="proxy", extra_global=wan)
    new = build(tmp_path, "flipped", flipped)
    curl = ["curl", "-s", "--max-time", "5", f"http://{t.upstream_ip4}:8081/"]
    with child_cgroup("reload") as cg, pytest.MonkeyPatch.context() as mp:
        mp.setenv("DAE_CGROUP", str(cg))
        with gateway(lab, first, tmp_path / "gw") as gw:
            assert isinstance(gw, Gw)
            hooks = attached(cg)
            assert len(hooks) == 4, hooks
            run = lab.run("gateway", run_in(cg, curl))
            assert run.returncode == 0 and _peer(run.stdout) == t.gateway_wan_ip4  # direct by pname
            out = reload_cmd(gw, new)
            assert out.returncode == 0, out.stderr + gw.log_text()[-2000:]
            run = lab.run("gateway", run_in(cg, curl))
            assert run.returncode == 0 and _peer(run.stdout) == t.upstream_ip4  # the new rule: proxied
            assert len(attached(cg)) == 4 and attached(cg) != hooks  # the same hooks, new programs
            run = lab.run("gateway", run_in(cg, [tools["long"], tools["fetch"], t.upstream_ip4, "8081"]))
            assert run.returncode == 0 and _peer(run.stdout) == t.upstream_ip4  # unchanged rule still acts
        assert attached(cg) == []
    diff = snapshot_diff(before, gateway_snapshot(lab))
    assert not diff, diff
