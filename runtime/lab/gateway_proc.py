"""Run `dae-runtime` inside the lab's gateway namespace, as a real separate process.

Shared by the live demo and the runtime tests: compile a config into a build, start the
runtime with nsenter in the gateway namespace, wait for its "gateway ready" line, and stop it
with SIGTERM (or SIGKILL, to test fail-open and cleanup).
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any


class GatewayStartError(RuntimeError):
    pass


def compile_build(config_path: Path, build_dir: Path) -> None:
    """Compile as an operator does, with `dae-compile` in its own process: the runtime package
    never imports the compiler (pyproject.toml's import contracts), its lab included."""
    proc = subprocess.run([sys.executable, "-m", "dae_py.compiler.cli", "-q", "-o", str(build_dir), str(config_path)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise GatewayStartError(f"dae-compile rejected {config_path.name} (exit {proc.returncode}):\n"
                                f"{proc.stdout}{proc.stderr}")


class GatewayProcess:
    def __init__(self, lab: Any, config_text: str, workdir: Path, *, log_level: str = "info",
                 name: str = "config.yaml", state_path: Path | None = None, wrap: Sequence[str] = (),
                 build_group: int | None = None):
        """`wrap`: argv put in front of the runtime's (inside the namespace), e.g. to drop
        privileges before it starts; `state_path`: where it keeps its state (default: workdir);
        `build_group`: a gid given read access to the build (root-owned, 0640/0750, as the
        role deploys it), for a runtime that runs as a service user."""
        self.lab = lab
        self.workdir = workdir
        self.config_path = workdir / name
        self.build_dir = workdir / "build"
        self.state_path = state_path or workdir / "state.json"
        self.wrap = list(wrap)
        self.log_path = workdir / "runtime.log"
        self.config_path.write_text(config_text)
        compile_build(self.config_path, self.build_dir)
        if build_group is not None:
            share_with_group(self.build_dir, build_group)
        self.log_level = log_level
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._pump: Any = None

    def argv(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "dae_py.runtime.cli", "--log-level", self.log_level, *extra]

    def start(self, timeout: float = 20.0) -> GatewayProcess:
        log_file = self._log = open(self.log_path, "ab")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = self.lab.popen("gateway", [*self.wrap, *self.argv("run", str(self.build_dir), "--state",
                                                                       str(self.state_path))],
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        assert self.proc.stdout is not None
        buf = b""
        while time.monotonic() < deadline:
            r, _, _ = select.select([self.proc.stdout], [], [], 0.2)
            if r:
                chunk = os.read(self.proc.stdout.fileno(), 65536)
                if not chunk:
                    break
                buf += chunk
                log_file.write(chunk)
                log_file.flush()
                if b"gateway ready" in buf:
                    self._drain_in_background()
                    return self
            elif self.proc.poll() is not None:
                break
        self.kill()
        self.cleanup()  # it may have got as far as attaching before it died or timed out
        raise GatewayStartError(f"dae-runtime did not become ready:\n{buf.decode(errors='replace')[-4000:]}")

    @property
    def process(self) -> subprocess.Popen[bytes]:
        """The process `start()` launched (for its pid, signals, exit code)."""
        if self.proc is None:
            raise RuntimeError("the gateway process was not started")
        return self.proc

    def _drain_in_background(self) -> None:
        import threading

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None and self._log is not None
            stdout, log_file = self.proc.stdout, self._log
            for chunk in iter(lambda: os.read(stdout.fileno(), 65536), b""):
                log_file.write(chunk)
                log_file.flush()

        self._pump = threading.Thread(target=pump, daemon=True)
        self._pump.start()

    def _join_pump(self) -> None:
        """After the process exited: let the pump copy its last lines (the exit statistics)
        before anyone reads or closes the log."""
        if self._pump is not None:
            self._pump.join(5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._join_pump()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL: no cleanup, as after a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self._join_pump()

    def cleanup(self) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
        return self.lab.run("gateway", self.argv("cleanup", "--state", str(self.state_path)), env=env)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
        if self._log is not None:
            self._log.close()


def share_with_group(root: Path, gid: int) -> None:
    """Make a tree root:gid, directories 0750 and files 0640: readable by that group only."""
    for path in [root, *root.rglob("*")]:
        os.chown(path, 0, gid, follow_symlinks=False)
        if not path.is_symlink():
            path.chmod(0o750 if path.is_dir() else 0o640)


def lab_config(topo: Any, *, rules: list[str], fallback: str = "direct", nodes: dict[str, str] | None = None,
               groups: dict[str, str] | None = None, extra_global: str = "") -> str:
    """A config for the lab's gateway: LAN is the gateway's lan interface, nodes in upstream."""
    nodes = nodes or {"dante": f"socks5://{topo.upstream_ip4}:1080"}
    groups = groups or {"proxy": "{policy: min_moving_avg}"}
    lines = ["global:", f"  lan_interface: [{topo.gateway_lan_if}]", "  tproxy_port: 12345",
             f"  tcp_check_url: ['http://{topo.upstream_ip4}:8080/']", f"  udp_check_dns: ['{topo.upstream_ip4}:53']",
             "  check_interval: 5s"]
    if extra_global:
        lines.append(extra_global.rstrip())
    lines.append("nodes:")
    lines += [f"  {k}: '{v}'" for k, v in nodes.items()]
    lines.append("groups:")
    lines += [f"  {k}: {v}" for k, v in groups.items()]
    lines += ["routing:", "  rules:"]
    lines += [f"    - \"{r}\"" for r in rules]
    lines.append(f"  fallback: {fallback}")
    return "\n".join(lines) + "\n"
