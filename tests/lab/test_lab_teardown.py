"""Teardown leaves nothing: not on success, not when the body raises, not on SIGTERM; and
`cleanup_stale` removes what a SIGKILLed run left, without touching live runs."""
from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dae_py.runtime.lab import Lab, cleanup_stale, pids_in_netns

pytestmark = pytest.mark.root

ROOT = Path(__file__).resolve().parents[2]

CHILD = r"""
import json, sys, time
from dae_py.runtime.lab import Lab, pids_in_netns
with Lab(prefix=sys.argv[1]) as lab:
    lab.start_http_peer(8080)
    lab.start_udp_echo(9000)
    lab.start_danted(1080, auth=True)
    lab.start_tinyproxy(8888)
    pids = [p for ns in lab.topo.namespaces.values() for p in pids_in_netns(ns)]
    print(json.dumps({"names": list(lab.topo.namespaces.values()), "pids": pids,
                      "dir": str(lab.dir), "users": list(lab.users)}), flush=True)
    time.sleep(60)
"""


def state_of(lab: Lab) -> dict[str, Any]:
    """Everything the lab made, to check it is gone afterwards."""
    return {
        "names": list(lab.topo.namespaces.values()),
        "pids": [p for ns in lab.topo.namespaces.values() for p in pids_in_netns(ns)],
        "dir": str(lab.dir),
        "users": list(lab.users),
    }


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def assert_gone(state: dict[str, Any]) -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True,
                            check=True).stdout
    for name in state["names"]:
        assert name not in listed
        assert not Path("/run/netns", name).exists()
    assert not [p for p in state["pids"] if alive(p)]
    assert not Path(state["dir"]).exists()
    for user in state["users"]:
        with pytest.raises(KeyError):
            pwd.getpwnam(user)


def assert_present(state: dict[str, Any]) -> None:
    listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert all(name in listed for name in state["names"])
    assert Path(state["dir"]).is_dir()


def full_lab(lab: Lab) -> dict[str, Any]:
    lab.start_http_peer(8080)
    lab.start_udp_echo(9000)
    lab.start_danted(1080, auth=True)
    lab.start_tinyproxy(8888)
    lab.start_iperf3()
    lab.popen("client", ["sleep", "60"])
    # An untracked daemon that left our process group: found through its namespace.
    lab.run("client", ["sh", "-c", "setsid sleep 60 >/dev/null 2>&1 &"], check=True)
    state = state_of(lab)
    assert len(state["pids"]) >= 6 and state["users"]
    assert_present(state)
    return state


def test_teardown_removes_everything() -> None:
    with Lab() as lab:
        state = full_lab(lab)
    assert_gone(state)
    assert lab.timings["close"] < 10


def test_teardown_when_body_raises(caplog: pytest.LogCaptureFixture) -> None:
    state: dict[str, Any] = {}
    with pytest.raises(RuntimeError, match="boom"):
        with Lab() as lab:
            state = full_lab(lab)
            raise RuntimeError("boom")
    assert_gone(state)
    # The lab dir is gone, so the servers' logs were copied into the test's log.
    assert "log of danted-1080" in caplog.text and "Dante/server" in caplog.text


def test_close_is_idempotent() -> None:
    lab = Lab().start()
    state = state_of(lab)
    lab.close()
    lab.close()
    assert_gone(state)


def _start_child(prefix: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, prefix], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(10)
        pytest.fail(f"child lab did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc, json.loads(line)


def test_sigterm_tears_down() -> None:
    proc, state = _start_child(f"labterm{os.getpid() % 100000}")
    assert_present(state)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=20) == 128 + signal.SIGTERM
    assert_gone(state)


def test_cleanup_stale_after_sigkill() -> None:
    # A prefix of our own: a parallel session's cleanup must not get to our leftovers first.
    prefix = f"labkill{os.getpid() % 100000}"
    proc, state = _start_child(prefix)
    proc.kill()
    proc.wait(timeout=10)
    # A hard kill leaves everything behind: namespaces, servers, dir, user...
    assert_present(state)
    assert [p for p in state["pids"] if alive(p)]
    assert all(pwd.getpwnam(u) for u in state["users"])
    removed = cleanup_stale(prefix)
    assert any(r.startswith("netns") for r in removed)
    assert any(r.startswith("user") for r in removed)
    # ... which cleanup_stale removes.
    assert_gone(state)


def test_cleanup_stale_spares_live_runs() -> None:
    with Lab(prefix="labalive") as lab:
        lab.start_http_peer(8080)
        assert cleanup_stale("labalive") == []
        assert cleanup_stale("labaliv") == []  # a shorter prefix is another prefix
        assert_present(state_of(lab))
        assert lab.peers[0].running


def test_prefix_is_validated() -> None:
    with pytest.raises(ValueError):
        Lab(prefix="Bad-Prefix")
