"""The Ansible role `dae_py` (ansible/), run for real against two hosts that this test makes.

Each host is a Linux network namespace of this machine with its own interfaces (lan0, wan0),
reached through the repository's `netns` connection plugin (ansible/plugins/connection/netns.py):
every module runs as a real process inside that namespace, exactly as it would over SSH. The hosts
share this machine's file system, so each one gets its own root prefix (`dae_py_root`) under the
test's tmp dir; apt, pip, the virtualenv, the real `dae-compile` and `systemd-analyze` all run for
real. No systemd runs as PID 1 here, so `dae_py_manage_service_state` is false: the unit is still
rendered, verified and enabled offline. See ansible/README.md ("How the role is tested").

Needs root (ip netns), iproute2, the project's venv with ansible-core and ansible-lint, clang for
dae-compile, and `systemd-analyze` (Debian package `systemd`, installed here when missing).
"""
from __future__ import annotations

import grp
import hashlib
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from dae_py.runtime.privileges import LEAST

REPO = Path(__file__).resolve().parents[2]
ANSIBLE_DIR = REPO / "ansible"
VENV_BIN = Path(sys.executable).parent
ANSIBLE_PLAYBOOK = VENV_BIN / "ansible-playbook"
ANSIBLE_LINT = VENV_BIN / "ansible-lint"
ANSIBLE_VAULT = VENV_BIN / "ansible-vault"
# The project's own compiler, as installed in the venv by `pip install -e .`.
DAE_COMPILE = VENV_BIN / "dae-compile"

HOSTS = ("gw1", "gw2")
VAULTED_PASSWORD = "vaulted-s3cret-pw"
PLAIN_PASSWORD = "plain-s3cret-pw"
SECRETS = (VAULTED_PASSWORD, PLAIN_PASSWORD)
DIAGNOSTIC = re.compile(r"config\.yaml:\d+:\d+: error: ")
RECAP = re.compile(
    r"^(?P<host>\S+)\s*:\s*ok=(?P<ok>\d+)\s+changed=(?P<changed>\d+)\s+unreachable=(?P<unreachable>\d+)"
    r"\s+failed=(?P<failed>\d+)",
    re.M,
)

pytestmark = pytest.mark.slow


# --------------------------------------------------------------------------------------------
# helpers


@dataclass
class Run:
    rc: int
    output: str

    def recap(self) -> dict[str, dict[str, int]]:
        return {
            m["host"]: {k: int(m[k]) for k in ("ok", "changed", "unreachable", "failed")}
            for m in RECAP.finditer(self.output)
        }

    def __repr__(self) -> str:
        return f"Run(rc={self.rc})"

    def explain(self) -> str:
        return f"ansible-playbook exited {self.rc}; last output:\n{self.output[-6000:]}"


def _run(cmd: list[str], env: dict[str, str], cwd: Path = ANSIBLE_DIR, timeout: int = 900) -> Run:
    proc = subprocess.run(
        cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True, timeout=timeout, check=False,
    )
    return Run(proc.returncode, proc.stdout)


def _tree_digest(root: Path) -> dict[str, str]:
    """Every path under root with its type, mode and content (or link target)."""
    digest: dict[str, str] = {}
    if not root.exists():
        return digest
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        rel = str(path.relative_to(root))
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            digest[rel] = f"link {os.readlink(path)}"
        elif stat.S_ISDIR(st.st_mode):
            digest[rel] = f"dir {mode:o} {st.st_uid}:{st.st_gid}"
        else:
            digest[rel] = f"file {mode:o} {st.st_uid}:{st.st_gid} {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return digest


def _assert_no_secrets(run: Run) -> None:
    for secret in SECRETS:
        assert secret not in run.output, f"a node credential was printed:\n{run.explain()}"


# --------------------------------------------------------------------------------------------
# the lab: two network-namespace hosts, an inventory per scenario


class Lab:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.tag = f"daeans{os.getpid() % 100000}{uuid.uuid4().hex[:4]}"
        self.netns = {h: f"{self.tag}-{h}" for h in HOSTS}
        # The role creates the service user in this machine's /etc/passwd (the hosts share it):
        # one per host, named after the run, deleted in down().
        self.users = {h: f"{self.tag}{h}" for h in HOSTS}
        self.env = dict(os.environ)
        for name, sub in (("ANSIBLE_HOME", "ansible-home"), ("ANSIBLE_LOCAL_TEMP", "ansible-local"),
                          ("ANSIBLE_REMOTE_TEMP", "ansible-remote"), ("TMPDIR", "scratch")):
            (tmp / sub).mkdir(parents=True, exist_ok=True)
            self.env[name] = str(tmp / sub)
        self.env.update(
            ANSIBLE_CONFIG=str(ANSIBLE_DIR / "ansible.cfg"),
            ANSIBLE_NOCOLOR="1",
            ANSIBLE_FORCE_COLOR="0",
            PATH=f"{VENV_BIN}:{os.environ.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}",
        )
        self.vault_password_file = tmp / "vault-password"
        self.vault_password_file.write_text(uuid.uuid4().hex + "\n")
        self.vault_password_file.chmod(0o600)

    def up(self) -> None:
        for ns in self.netns.values():
            subprocess.run(["ip", "netns", "add", ns], check=True)
            for cmd in (["link", "set", "lo", "up"],
                        ["link", "add", "lan0", "type", "veth", "peer", "name", "lan0-peer"],
                        ["link", "add", "wan0", "type", "veth", "peer", "name", "wan0-peer"],
                        ["link", "set", "lan0", "up"], ["link", "set", "lan0-peer", "up"],
                        ["link", "set", "wan0", "up"], ["link", "set", "wan0-peer", "up"],
                        ["addr", "add", "192.0.2.1/24", "dev", "wan0"]):
                subprocess.run(["ip", "-n", ns, *cmd], check=True)

    def down(self) -> None:
        for ns in self.netns.values():
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
        for user in self.users.values():
            subprocess.run(["userdel", user], check=False, capture_output=True)
            subprocess.run(["groupdel", user], check=False, capture_output=True)

    def root(self, scenario: str, host: str) -> Path:
        return self.tmp / scenario / host

    def vault(self, plaintext: str) -> str:
        out = subprocess.run(
            [str(ANSIBLE_VAULT), "encrypt_string", "--vault-password-file", str(self.vault_password_file),
             plaintext], cwd=self.tmp, env=self.env, capture_output=True, text=True, check=True,
        ).stdout
        return out.strip()

    def inventory(self, scenario: str, *, broken: bool = False, extra: str = "", more_rules: tuple[str, ...] = (),
                  name: str = "", lan: str = "[lan0]") -> Path:
        """An inventory of the two hosts; `broken` adds a rule naming an outbound that doesn't exist."""
        vaulted = self.vault(f"socks5://alice:{VAULTED_PASSWORD}@192.0.2.10:1080")
        rules = ["dip(224.0.0.0/3, 'ff00::/8') -> direct", "dip(198.51.100.0/24) -> proxy"]
        rules.extend(more_rules)
        if broken:
            rules.append("dip(203.0.113.7) -> no_such_group")
        hosts = "\n".join(
            f"        {h}:\n          ansible_host: {self.netns[h]}\n"
            f"          dae_py_root: {self.root(scenario, h)}\n"
            f"          dae_py_service_user: {self.users[h]}\n"
            f"          dae_py_service_group: {self.users[h]}"
            for h in HOSTS
        )
        rule_lines = "\n".join(f'          - "{r}"' for r in rules)
        text = textwrap.dedent("""\
            all:
              children:
                gateways:
                  hosts:
            {hosts}
                  vars:
                    ansible_connection: netns
                    ansible_python_interpreter: {python}
                    dae_py_project_src: {repo}
                    dae_py_controller_compiler: {compiler}
                    dae_py_manage_service_state: false
                    dae_py_apt_update_cache: false
                    dae_py_lan_interface: {lan}
                    dae_py_wan_interface: [wan0]
                    dae_py_check_interval: 30s
                    dae_py_nodes:
                      n1: !vault |
            {vaulted}
                      n2: socks5://bob:{plain}@192.0.2.20:1080
                    dae_py_groups:
                      proxy:
                        policy: min_moving_avg
                    dae_py_routing_rules:
            {rules}
                    dae_py_routing_fallback: proxy
            {extra}""").format(
            hosts=hosts, lan=lan, python=sys.executable, repo=REPO, compiler=DAE_COMPILE, plain=PLAIN_PASSWORD,
            vaulted=textwrap.indent(textwrap.dedent(vaulted.split("\n", 1)[1]).strip("\n"), " " * 12),
            rules=rule_lines, extra=textwrap.indent(textwrap.dedent(extra), " " * 8),
        )
        path = self.tmp / f"inventory-{scenario}{'-broken' if broken else ''}{name}.yml"
        path.write_text(text)
        return path

    def playbook(self, inventory: Path, *args: str) -> Run:
        return _run([str(ANSIBLE_PLAYBOOK), "-v", "-i", str(inventory), "--vault-password-file",
                     str(self.vault_password_file), *args, "site.yml"], self.env)

    def digests(self, scenario: str) -> dict[str, dict[str, str]]:
        return {h: _tree_digest(self.root(scenario, h)) for h in HOSTS}


def unit_directives(text: str) -> dict[str, list[str]]:
    """KEY -> values of a rendered unit (comments and section headers left out)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (ip netns add)"
    if shutil.which("ip") is None:
        return "needs iproute2 (ip)"
    if not ANSIBLE_PLAYBOOK.exists() or not ANSIBLE_LINT.exists():
        return f"needs ansible-core and ansible-lint in {VENV_BIN} (pip install -e '.[test]')"
    return None


def _ensure_systemd_analyze() -> str:
    """systemd-analyze comes with Debian's `systemd` package; install it when missing."""
    found = shutil.which("systemd-analyze")
    if found:
        return found
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-qq"], env=env, check=True)
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "systemd"], env=env, check=True)
    found = shutil.which("systemd-analyze")
    assert found, "apt-get install systemd did not provide systemd-analyze"
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    reason = _why_not_runnable()
    if reason:
        pytest.skip(reason)
    _ensure_systemd_analyze()
    # The role runs the real compiler on the controller: it must work before anything else.
    probe = subprocess.run([str(DAE_COMPILE), "--help"], capture_output=True, text=True, check=False)
    assert probe.returncode == 0, f"{DAE_COMPILE} does not run (pip install -e . refreshes it):\n{probe.stderr}"
    tmp = tmp_path_factory.mktemp("ansible-role")
    lab = Lab(tmp)
    lab.up()
    try:
        yield lab
    finally:
        lab.down()
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def deployed(lab: Lab) -> tuple[Run, Run]:
    """The default mode (compile once on the controller): a first run, then a second, identical one."""
    inventory = lab.inventory("controller")
    first = lab.playbook(inventory)
    second = lab.playbook(inventory) if first.rc == 0 else Run(-1, "(not run: the first run failed)")
    return first, second


# --------------------------------------------------------------------------------------------
# tests


def test_ansible_lint_is_clean() -> None:
    reason = _why_not_runnable()
    if reason:
        pytest.skip(reason)
    env = dict(os.environ, PATH=f"{VENV_BIN}:{os.environ.get('PATH', '')}", NO_COLOR="1")
    result = _run([str(ANSIBLE_LINT), "--offline", "--profile", "production", "--nocolor"], env)
    assert result.rc == 0, result.output[-6000:]


def test_broken_config_on_fresh_hosts_changes_nothing(lab: Lab) -> None:
    run = lab.playbook(lab.inventory("fresh", broken=True))
    assert run.rc != 0, run.explain()
    assert DIAGNOSTIC.search(run.output), f"no 'config.yaml:LINE:COL: error:' in the output:\n{run.explain()}"
    assert "no_such_group" in run.output, run.explain()
    _assert_no_secrets(run)
    assert all(stats["changed"] == 0 for stats in run.recap().values()), run.explain()
    for host, digest in lab.digests("fresh").items():
        assert digest == {}, f"{host} was changed by a run that failed validation: {sorted(digest)[:10]}"


def test_check_mode_on_fresh_hosts_changes_nothing(lab: Lab) -> None:
    run = lab.playbook(lab.inventory("fresh"), "--check")
    assert run.rc == 0, run.explain()
    assert all(run.recap()[h]["changed"] > 0 for h in HOSTS), run.explain()
    _assert_no_secrets(run)
    for host, digest in lab.digests("fresh").items():
        assert digest == {}, f"{host} was changed by a --check run: {sorted(digest)[:10]}"


def test_preflight_accepts_globs_and_auto_and_names_a_missing_interface(lab: Lab) -> None:
    """`auto` and globs are resolved by the runtime on the host (docs/local-routing.md), so the
    preflight checks only the names given plainly."""
    run = lab.playbook(lab.inventory("fresh", lan="['lan*']", name="-glob"), "--check")
    assert run.rc == 0, run.explain()
    missing = lab.playbook(lab.inventory("fresh", lan="[lan0, nosuch9]", name="-missing"), "--check")
    assert missing.rc != 0 and "nosuch9" in missing.output and "do not exist" in missing.output, missing.explain()


def test_first_run_changes_every_host(lab: Lab, deployed: tuple[Run, Run]) -> None:
    first, _ = deployed
    assert first.rc == 0, first.explain()
    recap = first.recap()
    assert set(recap) == set(HOSTS), first.explain()
    for host in HOSTS:
        assert recap[host]["changed"] > 0 and recap[host]["failed"] == 0, first.explain()
    # A changed build notifies the restart handler (skipped here: no systemd as PID 1).
    assert "RUNNING HANDLER [dae_py : Restart dae-py]" in first.output, first.explain()
    _assert_no_secrets(first)

    for host in HOSTS:
        root = lab.root("controller", host)
        config = root / "etc/dae-py/config.yaml"
        user = pwd.getpwnam(lab.users[host])  # the role created the service user
        assert user.pw_shell == "/usr/sbin/nologin" and user.pw_dir == "/nonexistent"
        assert not Path(user.pw_dir).exists() and user.pw_uid < 1000, user  # a system user, no home
        assert grp.getgrgid(user.pw_gid).gr_name == lab.users[host]
        # root's file, readable by the service group only: the service reads it, never writes it
        assert stat.S_IMODE(config.stat().st_mode) == 0o640
        assert (config.stat().st_uid, config.stat().st_gid) == (0, user.pw_gid)
        text = config.read_text()
        # The vaulted link was decrypted into the file, not written as ciphertext.
        assert f"alice:{VAULTED_PASSWORD}@" in text and "$ANSIBLE_VAULT" not in text
        current = root / "var/lib/dae-py/current"
        assert current.is_symlink() and os.readlink(current).startswith("builds/")
        for name in ("program.c", "program.o", "manifest.json"):
            assert (current / name).is_file(), f"{host}: {name} missing from the build"
        assert (root / "opt/dae-py/venv/bin/dae-runtime").exists()
        assert (root / "etc/systemd/system/multi-user.target.wants/dae-py.service").is_symlink()

    # Identical configuration => byte-identical build: what the hosts got is what dae-compile
    # makes here from the very config.yaml they hold (compiled, as the role does, as ./config.yaml:
    # the build records the path it was given), and both hosts got the same.
    ref = lab.tmp / "reference"
    ref.mkdir()
    shutil.copyfile(lab.root("controller", HOSTS[0]) / "etc/dae-py/config.yaml", ref / "config.yaml")
    subprocess.run([str(DAE_COMPILE), "-q", "config.yaml", "-o", "build"], cwd=ref, check=True, capture_output=True)
    expected = {k: v.split()[-1] for k, v in _tree_digest(ref / "build").items() if v.startswith("file")}
    assert expected
    for host in HOSTS:
        build = (lab.root("controller", host) / "var/lib/dae-py/current").resolve()
        got = {k: v.split()[-1] for k, v in _tree_digest(build).items() if v.startswith("file")}
        assert got == expected, f"{host}: the shipped build differs from a fresh compile"


def directives_reload(text: str) -> str:
    """The unit's ExecReload= command: `systemctl reload` swaps builds under the running flows."""
    return unit_directives(text)["ExecReload"][0]


def test_second_run_changes_nothing(deployed: tuple[Run, Run]) -> None:
    _, second = deployed
    assert second.rc == 0, second.explain()
    recap = second.recap()
    assert set(recap) == set(HOSTS), second.explain()
    for host in HOSTS:
        assert recap[host]["changed"] == 0, f"{host} not idempotent:\n{second.explain()}"
    # Nothing changed, so nothing was notified.
    assert "RUNNING HANDLER" not in second.output, second.explain()
    _assert_no_secrets(second)


def test_systemd_analyze_verifies_the_unit(lab: Lab, deployed: tuple[Run, Run]) -> None:
    assert deployed[0].rc == 0, deployed[0].explain()
    for host in HOSTS:
        unit = lab.root("controller", host) / "etc/systemd/system/dae-py.service"
        text = unit.read_text()
        assert "Restart=on-failure" in text and "ExecStartPre=" in text and "ExecStopPost=" in text
        assert directives_reload(text) == f"{lab.root('controller', host)}/opt/dae-py/venv/bin/dae-runtime reload"
        assert f"dae-runtime {lab.root('controller', host)}/var/lib/dae-py/current" in text
        directives = unit_directives(text)
        least = " ".join(LEAST)
        assert directives["User"] == [lab.users[host]] and directives["Group"] == [lab.users[host]]
        assert directives["AmbientCapabilities"] == [least], directives["AmbientCapabilities"]
        assert directives["CapabilityBoundingSet"] == [least], directives["CapabilityBoundingSet"]
        assert directives["NoNewPrivileges"] == ["yes"] and directives["ProtectSystem"] == ["strict"]
        assert directives["RuntimeDirectory"] == ["dae-py"] and "LimitMEMLOCK" not in directives
        assert "ProtectKernelTunables" not in directives  # the datapath writes /proc/sys/net
        result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, f"{unit}:\n{result.stdout}{result.stderr}"


def test_broken_config_leaves_deployed_hosts_untouched(lab: Lab, deployed: tuple[Run, Run]) -> None:
    assert deployed[0].rc == 0, deployed[0].explain()
    before = lab.digests("controller")
    assert all(before.values())
    run = lab.playbook(lab.inventory("controller", broken=True))
    assert run.rc != 0, run.explain()
    assert DIAGNOSTIC.search(run.output), f"no 'config.yaml:LINE:COL: error:' in the output:\n{run.explain()}"
    assert "no_such_group" in run.output, run.explain()
    _assert_no_secrets(run)
    assert lab.digests("controller") == before, "a failed validation changed a deployed host"


def test_config_change_switches_the_build_and_notifies(lab: Lab, deployed: tuple[Run, Run]) -> None:
    assert deployed[0].rc == 0, deployed[0].explain()
    state = {h: lab.root("controller", h) / "var/lib/dae-py" for h in HOSTS}
    old = {h: os.readlink(state[h] / "current") for h in HOSTS}
    run = lab.playbook(lab.inventory("controller", more_rules=("dip(192.0.2.0/24) -> direct",), name="-changed"))
    assert run.rc == 0, run.explain()
    assert all(run.recap()[h]["changed"] > 0 for h in HOSTS), run.explain()
    # only the build changed: the gateway is reloaded, not restarted (its flows stay up)
    assert "RUNNING HANDLER [dae_py : Reload dae-py]" in run.output, run.explain()
    assert "RUNNING HANDLER [dae_py : Restart dae-py]" not in run.output, run.explain()
    for host in HOSTS:
        new = os.readlink(state[host] / "current")
        assert new != old[host] and (state[host] / new / "program.o").is_file()
        assert (state[host] / old[host]).is_dir(), "the previous build is kept for a rollback"
        assert "dip(192.0.2.0/24) -> direct" in (lab.root("controller", host) / "etc/dae-py/config.yaml").read_text()


def test_compile_on_each_host_is_idempotent(lab: Lab) -> None:
    """Also the opt-out: run as root (no ambient set, the same bounding set)."""
    inventory = lab.inventory("perhost", extra="dae_py_compile_on: host\ndae_py_service_run_as_root: true\n")
    first = lab.playbook(inventory)
    assert first.rc == 0, first.explain()
    assert all(first.recap()[h]["changed"] > 0 for h in HOSTS), first.explain()
    second = lab.playbook(inventory)
    assert second.rc == 0, second.explain()
    assert all(second.recap()[h]["changed"] == 0 for h in HOSTS), second.explain()
    _assert_no_secrets(first)
    _assert_no_secrets(second)
    builds = {h: sorted(p.name for p in (lab.root("perhost", h) / "var/lib/dae-py/current").iterdir()) for h in HOSTS}
    assert "program.o" in builds[HOSTS[0]] and builds[HOSTS[0]] == builds[HOSTS[1]]
    for host in HOSTS:
        root = lab.root("perhost", host)
        unit = root / "etc/systemd/system/dae-py.service"
        directives = unit_directives(unit.read_text())
        assert directives["User"] == ["root"] and directives["Group"] == ["root"]
        assert "AmbientCapabilities" not in directives
        assert directives["CapabilityBoundingSet"] == [" ".join(LEAST)]
        assert (root / "etc/dae-py/config.yaml").stat().st_gid == 0
        result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True,
                                check=False)
        assert result.returncode == 0, f"{unit}:\n{result.stdout}{result.stderr}"


def test_role_defaults_to_the_dedicated_user_and_the_least_capabilities() -> None:
    """The set the runtime's lab test proves (runtime.privileges.LEAST) is the role's default."""
    role = ANSIBLE_DIR / "roles/dae_py"
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    assert defaults["dae_py_service_user"] == defaults["dae_py_service_group"] == "dae-py"
    assert defaults["dae_py_service_capabilities"] == list(LEAST)
    assert defaults["dae_py_service_run_as_root"] is False
    spec = yaml.safe_load((role / "meta/argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    for name in ("dae_py_service_user", "dae_py_service_group", "dae_py_service_capabilities",
                 "dae_py_service_run_as_root"):
        assert spec[name]["default"] == defaults[name], name
