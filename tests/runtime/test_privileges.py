"""The runtime as the systemd unit runs it: a dedicated unprivileged user holding exactly the
least capability set (runtime.privileges.LEAST), really dropped, on a read-only file system
but for its state directory, with a 64 KiB RLIMIT_MEMLOCK and no_new_privs
(runtime/lab/unprivileged.py). It must carry direct and proxied flows and tear down cleanly;
without any one of the capabilities it needs to start it must fail with an error line naming the missing
one, exit 1, print no traceback and leave the namespace untouched; without
CAP_NET_BIND_SERVICE it starts with a warning and only UDP replies from ports below 1024 fail.
docs/privileges.md has the findings these tests keep true.
"""
from __future__ import annotations

import contextlib
import os
import pwd
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dae_py.runtime.datapath.state import DEFAULT_STATE_PATH, default_state_path
from dae_py.runtime.lab.gateway_proc import GatewayStartError
from dae_py.runtime.lab.unprivileged import cap_spec, unprivileged_argv
from dae_py.runtime.privileges import LEAST as LEAST_SET
from dae_py.runtime.privileges import NEEDED_TO_START

from .helpers import (
    Gw,
    Lab,
    client_get,
    flow_lines,
    gateway,
    gateway_snapshot,
    lab_config,
    proxy_lab,
    snapshot_diff,
    udp_exchange,
)

REPO = Path(__file__).resolve().parents[2]
LEAST = tuple(LEAST_SET)
LEAST_MASK = sum(1 << bit for bit in LEAST_SET.values())
PRIVILEGED_UDP = 443  # QUIC's port: below 1024


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    yield from proxy_lab((9001, PRIVILEGED_UDP))


@pytest.fixture(scope="module")
def user(lab: Lab) -> pwd.struct_passwd:
    return lab.service_user()


def config(lab: Lab) -> str:
    t = lab.topo
    return lab_config(t, fallback="direct",
                      rules=[f"dip({t.upstream_ip4}, '{t.upstream_ip6}') "
                             f"&& dport(8081, 9001, {PRIVILEGED_UDP}) -> proxy"])


def workdir(lab: Lab, name: str, user: pwd.struct_passwd, *, state_owner: int | None = None) -> tuple[Path, Path]:
    """A work dir the service user can reach (pytest's tmp_path is root's 0700) and its state
    dir, owned by `state_owner` (the user: systemd's RuntimeDirectory=) with mode 0700."""
    wd = lab.dir / name
    wd.mkdir(mode=0o755)
    state = wd / "run"
    state.mkdir(mode=0o700)
    owner = user.pw_uid if state_owner is None else state_owner
    os.chown(state, owner, user.pw_gid if state_owner is None else 0)
    return wd, state


def _options(lab: Lab, user: pwd.struct_passwd, name: str, caps: tuple[str, ...], state_owner: int | None,
             share_build: bool) -> tuple[Path, dict[str, Any]]:
    wd, state = workdir(lab, name, user, state_owner=state_owner)
    wrap = unprivileged_argv(user.pw_uid, user.pw_gid, caps, state, reach=[REPO])
    return wd, {"state_path": state / "state.json", "wrap": wrap,
                "build_group": user.pw_gid if share_build else None}


@contextlib.contextmanager
def unprivileged(lab: Lab, user: pwd.struct_passwd, name: str, caps: tuple[str, ...]) -> Iterator[Gw]:
    """The runtime as the service user with `caps`, until the block ends."""
    wd, options = _options(lab, user, name, caps, None, True)
    with gateway(lab, config(lab), wd, **options) as gw:
        yield gw


def failed_start(lab: Lab, user: pwd.struct_passwd, name: str, caps: tuple[str, ...], *,
                 state_owner: int | None = None, share_build: bool = True) -> tuple[int, str]:
    """Start the runtime as the service user, expecting it to exit: (exit status, its log)."""
    wd, options = _options(lab, user, name, caps, state_owner, share_build)
    gw = Gw(lab, config(lab), wd, **options)
    try:
        with pytest.raises(GatewayStartError):
            gw.start()
    finally:
        gw.stop()
        if gw._log is not None:
            gw._log.close()
        if gw.proc is not None:
            lab.procs.forget(gw.proc)
    assert gw.proc is not None
    return gw.process.returncode, gw.log_text()


def proc_status(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {k: v.strip() for k, _, v in (line.partition(":") for line in lines)}


def root_mount_options(pid: int) -> list[str]:
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[4] == "/":
            return fields[5].split(",")
    raise AssertionError(f"no / in /proc/{pid}/mountinfo")


@pytest.mark.root
def test_runs_as_a_service_user_with_exactly_the_least_capabilities(lab: Lab, user: pwd.struct_passwd) -> None:
    t = lab.topo
    before = gateway_snapshot(lab)
    with unprivileged(lab, user, "least", LEAST) as gw:
        status = proc_status(gw.process.pid)
        assert status["Uid"].split() == [str(user.pw_uid)] * 4 and user.pw_uid != 0, status["Uid"]
        assert status["Gid"].split() == [str(user.pw_gid)] * 4, status["Gid"]
        assert status["Groups"] == "", status["Groups"]
        for key in ("CapEff", "CapPrm", "CapBnd", "CapAmb", "CapInh"):
            assert int(status[key], 16) == LEAST_MASK, f"{key}: {status[key]}, want {LEAST_MASK:016x}"
        assert status["NoNewPrivs"] == "1"
        assert "ro" in root_mount_options(gw.process.pid)  # it writes nothing but its state dir
        limits = Path(f"/proc/{gw.process.pid}/limits").read_text()
        assert re.search(r"Max locked memory\s+65536\s+65536", limits), limits
        assert gw.state_path.stat().st_uid == user.pw_uid and gw.state_entries()

        for dst, client in ((t.upstream_ip4, t.client_ip4), (t.upstream_ip6, t.client_ip6)):
            assert client_get(lab, dst, 8080)["peer"] == client  # direct: the kernel forwards it
            assert client_get(lab, dst, 8081)["peer"] == dst  # proxied: from danted's address
            for port in (9001, PRIVILEGED_UDP):  # the reply to 443 leaves a socket bound to dst:443
                peer, _, payload, reply_src, _ = udp_exchange(lab, dst, port, b"unprivileged")
                assert (peer, payload, reply_src) == (dst, b"unprivileged", (dst, port))
        proxied = [f for f in flow_lines(gw.log_text()) if f.outbound == "proxy"]
        assert {f.proto for f in proxied} == {"tcp", "udp"}, gw.log_text()[-3000:]

        assert gw.stop() == 0, gw.log_text()[-3000:]
        after = gateway_snapshot(lab)
        assert after == before, snapshot_diff(before, after)
        assert not gw.state_entries()
    log = gw.log_text()
    assert "datapath removed" in log
    # BPF memory is charged to the memory cgroup: libbpf never needed to raise the 64 KiB limit.
    assert "RLIMIT_MEMLOCK" not in log, log[-3000:]
    assert "Traceback" not in log


@pytest.mark.root
def test_cleanup_after_a_crash_works_as_the_service_user(lab: Lab, user: pwd.struct_passwd) -> None:
    """The unit's ExecStopPost=dae-runtime cleanup runs as the same user with the same set."""
    before = gateway_snapshot(lab)
    with unprivileged(lab, user, "crash", LEAST) as gw:
        gw.kill()
        assert gateway_snapshot(lab) != before and gw.state_entries()  # left behind: a crash
        result = lab.run("gateway", [*gw.wrap, *gw.argv("cleanup", "--state", str(gw.state_path))],
                         env={**os.environ, "PYTHONPATH": str(REPO)})
        assert result.returncode == 0, result.stdout + result.stderr
        assert "dae-runtime cleanup" in result.stdout and "Traceback" not in result.stderr
        after = gateway_snapshot(lab)
        assert after == before, snapshot_diff(before, after)
        assert not gw.state_entries()


@pytest.mark.root
@pytest.mark.parametrize("dropped", list(NEEDED_TO_START))
def test_without_a_needed_capability_it_fails_clearly(lab: Lab, user: pwd.struct_passwd, dropped: str) -> None:
    before = gateway_snapshot(lab)
    caps = tuple(c for c in LEAST if c != dropped)
    status, log = failed_start(lab, user, f"without-{dropped}", caps)
    assert status == 1, log[-3000:]
    assert re.search(r"ERROR dae\.gateway: cannot load the program: .*"
                     r"(Operation not permitted \(EPERM\)|Permission denied \(EACCES\))", log), log[-3000:]
    assert f"ERROR dae.gateway: missing capabilities {dropped}: the gateway needs {' '.join(LEAST)}" in log, \
        log[-3000:]
    assert "Traceback" not in log, log
    after = gateway_snapshot(lab)
    assert after == before, snapshot_diff(before, after)


@pytest.mark.root
def test_without_net_bind_service_only_replies_from_low_ports_fail(lab: Lab, user: pwd.struct_passwd) -> None:
    """It starts, warns, relays TCP and UDP, but a proxied UDP flow to port 443 gets no reply:
    the transparent reply socket cannot be bound to the remote's port 443."""
    t = lab.topo
    caps = tuple(c for c in LEAST if c != "CAP_NET_BIND_SERVICE")
    with unprivileged(lab, user, "without-bind-service", caps) as gw:
        gw.wait_log(r"WARNING runtime\.privileges: no CAP_NET_BIND_SERVICE: replies of proxied UDP flows "
                    r"from remote ports below 1024")
        assert client_get(lab, t.upstream_ip4, 8081)["peer"] == t.upstream_ip4
        assert udp_exchange(lab, t.upstream_ip4, 9001, b"high")[0] == t.upstream_ip4
        with pytest.raises(TimeoutError):
            udp_exchange(lab, t.upstream_ip4, PRIVILEGED_UDP, b"low")
        gw.wait_log(r"udp reply from .* dropped.*Permission denied")
        assert gw.alive


@pytest.mark.root
def test_a_state_dir_it_cannot_write_fails_clearly(lab: Lab, user: pwd.struct_passwd) -> None:
    """What a unit without RuntimeDirectory= would meet: the state dir is root's."""
    before = gateway_snapshot(lab)
    status, log = failed_start(lab, user, "root-state", LEAST, state_owner=0)
    assert status == 1, log[-3000:]
    assert re.search(r"ERROR dae\.gateway: cannot start the gateway: .*Permission denied", log), log[-3000:]
    assert "missing capabilities" not in log and "Traceback" not in log, log
    after = gateway_snapshot(lab)
    assert after == before, snapshot_diff(before, after)


@pytest.mark.root
def test_a_build_it_cannot_read_fails_clearly(lab: Lab, user: pwd.struct_passwd) -> None:
    """What a user outside the build's group meets: dae-compile writes the manifest 0600."""
    status, log = failed_start(lab, user, "unshared-build", LEAST, share_build=False)
    assert status == 2, log[-3000:]
    assert re.search(r"ERROR dae\.gateway: cannot read .*/manifest\.json: Permission denied$", log, re.M), log
    assert "Traceback" not in log, log


def test_state_path_defaults_to_the_units_runtime_directory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RUNTIME_DIRECTORY", "/run/dae-py-lab:/run/other")
    assert default_state_path() == Path("/run/dae-py-lab/state.json")
    monkeypatch.delenv("RUNTIME_DIRECTORY")
    assert default_state_path() == DEFAULT_STATE_PATH


def test_cap_spec_is_setprivs_form() -> None:
    assert cap_spec(LEAST) == "-all,+bpf,+perfmon,+net_admin,+net_bind_service"
    assert cap_spec(()) == "-all"
    with pytest.raises(ValueError):
        cap_spec(["NET_ADMIN"])
