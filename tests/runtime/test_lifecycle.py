"""Lifecycle of `dae-runtime` in the gateway namespace: fail-open after SIGKILL, `cleanup`
after a crash, and a teardown that leaves the namespace exactly as it found it.

Snapshots (runtime.lab.netlink_snapshot) cover links, addresses, qdiscs, tc filters, ip rules
and routes of every table (v4 and v6), and every sysctl the datapath may touch or that its
writes propagate to (runtime/datapath/sysctls.py), expanded over all interfaces.
"""
from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from .helpers import Gw, Lab, client_get, gateway, gateway_snapshot, lab_config, proxy_lab, snapshot_diff, udp_exchange

pytestmark = pytest.mark.root

FILTER_NAME = "dae-py:lan-ingress"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from proxy_lab()


def config(lab: Lab) -> str:
    t = lab.topo
    return lab_config(
        t, fallback="direct",
        rules=[f"dip({t.upstream_ip4}, '{t.upstream_ip6}') && dport(8081, 9001) -> proxy"],
        # a WAN interface too, so the IPv6 accept_ra rule of the sysctl plan can apply
        extra_global=f"  wan_interface: [{t.gateway_wan_if}]")


def has_our_filter(snap: dict) -> bool:
    return any(FILTER_NAME in str(f) for f in snap["filters"])


# Non-default kernel settings before the start, so that the runtime has to change (and then
# restore) every setting of its plan: forwarding, send_redirects, accept_local, rp_filter (for
# src_valid_mark + strict rp_filter) and accept_ra on the WAN.
NON_DEFAULT = {
    "net/ipv4/ip_forward": "0",
    "net/ipv6/conf/all/forwarding": "0",
    "net/ipv4/conf/all/src_valid_mark": "1",
    "net/ipv4/conf/all/rp_filter": "1",
    "net/ipv4/conf/lan0/rp_filter": "1",
    "net/ipv6/conf/wan0/accept_ra": "1",
}


@contextmanager
def kernel_settings(lab: Lab, which: str) -> Iterator[None]:
    """`lab`: the lab's own settings; `changed`: NON_DEFAULT, the lab's put back afterwards."""
    if which == "lab":
        yield
        return
    saved = {k: lab.sysctl("gateway", k) for k in NON_DEFAULT}
    try:
        for k, v in NON_DEFAULT.items():
            lab.sysctl("gateway", k, v)
        yield
    finally:
        # forwarding first: writing it resets per-interface values, the others after
        for k in ("net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding"):
            lab.sysctl("gateway", k, saved[k])
        for k, v in saved.items():
            lab.sysctl("gateway", k, v)


@pytest.mark.parametrize("settings", ["lab", "changed"])
@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "SIGKILL+cleanup"])
def test_clean_teardown_restores_the_namespace(lab: Lab, tmp_path: Path, how: str,
                                               settings: str) -> None:
    with kernel_settings(lab, settings):
        before = gateway_snapshot(lab)
        with gateway(lab, config(lab), tmp_path) as gw:
            during = gateway_snapshot(lab)
            # the snapshot does see the runtime's work (else equality would prove nothing)
            assert has_our_filter(during)
            assert any(q.get("TCA_KIND") == "clsact" for q in during["qdiscs"])
            assert len(during["rules"]) == len(before["rules"]) + 2  # fwmark rule, v4 + v6
            assert any(r.get("RTA_TABLE") == 2023 for r in during["routes"])
            changed = {k for k in before["sysctls"] if before["sysctls"][k] != during["sysctls"][k]}
            assert "net/ipv4/conf/lan0/send_redirects" in changed
            if settings == "changed":
                assert {"net/ipv4/ip_forward", "net/ipv6/conf/all/forwarding",
                        "net/ipv4/conf/lan0/accept_local", "net/ipv4/conf/lan0/rp_filter",
                        "net/ipv6/conf/wan0/accept_ra"} <= changed, changed
            assert gw.state_entries()
            if how == "SIGKILL+cleanup":
                gw.kill()
                crashed = gateway_snapshot(lab)
                assert crashed == during, snapshot_diff(during, crashed)  # nothing undone
                result = gw.cleanup()
                assert result.returncode == 0, result.stderr
                assert "dae-runtime cleanup" in result.stdout
            else:
                gw.process.send_signal(signal.SIGTERM if how == "SIGTERM" else signal.SIGINT)
                assert gw.process.wait(15) == 0, gw.log_text()[-3000:]
            after = gateway_snapshot(lab)
            assert after == before, snapshot_diff(before, after)
            assert not gw.state_entries()
        if how != "SIGKILL+cleanup":
            assert "datapath removed" in gw.log_text()


def test_fail_open_after_sigkill_then_cleanup(lab: Lab, tmp_path: Path) -> None:
    """SIGKILL the runtime: the filter stays attached and still classifies, but the listener
    is gone, so flows the config sends to the proxy reach the server directly (from the
    client's address), TCP and UDP, v4 and v6. `dae-runtime cleanup` then removes everything."""
    t = lab.topo
    before = gateway_snapshot(lab)
    with gateway(lab, config(lab), tmp_path) as gw:
        for dst in (t.upstream_ip4, t.upstream_ip6):
            assert client_get(lab, dst, 8081)["peer"] == dst  # proxied while alive
        gw.kill()
        assert gw.process.returncode == -signal.SIGKILL
        left = gateway_snapshot(lab)
        assert has_our_filter(left), "the filter should still be attached after SIGKILL"
        for dst, client in ((t.upstream_ip4, t.client_ip4), (t.upstream_ip6, t.client_ip6)):
            assert client_get(lab, dst, 8081)["peer"] == client
            peer, _, payload, reply_src, _ = udp_exchange(lab, dst, 9001, b"fail-open")
            assert (peer, payload, reply_src) == (client, b"fail-open", (dst, 9001))
        result = gw.cleanup()
        assert result.returncode == 0, result.stderr
        after = gateway_snapshot(lab)
        assert after == before, snapshot_diff(before, after)
        assert not has_our_filter(after)
        assert not gw.state_entries()
        # and a second cleanup finds nothing to do and does not fail
        again = gw.cleanup()
        assert again.returncode == 0, again.stderr
    for dst, client in ((t.upstream_ip4, t.client_ip4), (t.upstream_ip6, t.client_ip6)):
        assert client_get(lab, dst, 8081)["peer"] == client


def test_start_failure_leaves_nothing(lab: Lab, tmp_path: Path) -> None:
    """A runtime that cannot start (its LAN interface does not exist) exits non-zero and
    leaves the namespace untouched."""
    t = lab.topo
    before = gateway_snapshot(lab)
    cfg = config(lab).replace(f"lan_interface: [{t.gateway_lan_if}]", "lan_interface: [nosuch0]")
    gw = Gw(lab, cfg, tmp_path)
    with pytest.raises(Exception, match="did not become ready"):
        gw.start(timeout=20)
    assert gw.proc is not None and gw.process.returncode == 1
    if gw._log is not None:
        gw._log.close()
    log = gw.log_text()
    assert "cannot start the gateway: lan_interface: 'nosuch0' matched no interface" in log, log
    assert "Traceback" not in log, log
    after = gateway_snapshot(lab)
    assert after == before, snapshot_diff(before, after)
    assert not gw.state_entries()


def test_cleanup_refuses_while_the_runtime_runs(lab: Lab, tmp_path: Path) -> None:
    """`dae-runtime cleanup` on the state of a live runtime must not pull its datapath away:
    it fails with a message, and the gateway keeps proxying."""
    t = lab.topo
    with gateway(lab, config(lab), tmp_path) as gw:
        during = gateway_snapshot(lab)
        result = gw.cleanup()
        assert result.returncode != 0
        assert "cleanup refused" in result.stderr and "Traceback" not in result.stderr, \
            result.stderr
        assert gateway_snapshot(lab) == during
        assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4
        assert gw.alive
