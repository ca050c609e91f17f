"""The real `dae-runtime` in the lab (issue 12): SIGHUP and SIGUSR1 neither kill it nor stop it
routing (they reload the build: issue 14, tests/runtime/test_reload.py); SIGTERM afterwards still
undoes everything. Started without --log-level, it logs at the
config's global.log_level."""
from __future__ import annotations

import signal
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Gw, Lab, client_get, flow_lines, gateway_snapshot, lab_config, proxy_lab, snapshot_diff, wait_for

pytestmark = pytest.mark.root


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from proxy_lab()


class ConfigLevelGw(Gw):
    """The runtime started with no --log-level: the level is the config's."""

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "dae_py.runtime.cli", *extra]


def _slots(snap: dict) -> dict:
    """A snapshot with each tc filter reduced to its slot (interface, hook, prio, handle, kind):
    a reload swaps the program in the slot and changes nothing else."""
    out = dict(snap)
    out["filters"] = sorted((f.get("ifname"), f.get("parent"), f.get("prio"), f.get("handle"), f.get("kind"))
                            for f in snap["filters"])
    return out


def test_reload_signals_reload_and_sigterm_still_cleans_up(lab: Lab, tmp_path: Path) -> None:
    t = lab.topo
    cfg = lab_config(t, fallback="direct", rules=[f"dip({t.upstream_ip4}) && dport(8081) -> proxy"],
                     extra_global="  log_level: debug")
    before = gateway_snapshot(lab)
    gw = ConfigLevelGw(lab, cfg, tmp_path)
    try:
        gw.start()
        during = gateway_snapshot(lab)
        assert during != before  # the datapath is attached (else the final equality proves nothing)
        assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4  # proxied
        for sig in (signal.SIGHUP, signal.SIGUSR1, signal.SIGHUP):
            since = gw.log_len()
            gw.process.send_signal(sig)
            gw.wait_log(rf"INFO dae\.reload: {sig.name} received: reloading", since=since)
            gw.wait_log(r"INFO dae\.reload: reloaded ", since=since)
            assert gw.alive
            assert _slots(gateway_snapshot(lab)) == _slots(during), "a reload changed more than the programs"
            # still routing: the proxied flow goes through the relay (the peer sees the node's address)
            assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4
        # the relay logs a flow's line when its dial completes, which may trail the client's answer
        wait_for(lambda: len([f for f in flow_lines(gw.log_text()) if f.outbound == "proxy"]) >= 4)
        # debug lines appear although no --log-level was given: global.log_level is in force
        assert " DEBUG " in gw.log_text()
        gw.process.send_signal(signal.SIGTERM)
        assert gw.process.wait(15) == 0, gw.log_text()[-3000:]
        after = gateway_snapshot(lab)
        assert after == before, snapshot_diff(before, after)
        assert not gw.state_entries()
        assert "datapath removed" in gw.log_text()
    finally:
        gw.stop()
        if gw._log is not None:
            gw._log.close()
        if gw.state_entries():
            gw.cleanup()
        if gw.proc is not None:
            lab.procs.forget(gw.proc)
