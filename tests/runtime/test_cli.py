"""`dae-runtime`'s command line (issue 12): --version, global options before or after the
command, the config's `global.log_level` when no --log-level is given, and SIGHUP/SIGUSR1
handled (logged, ignored) rather than killing the process."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.contract.version import COMPILER_VERSION
from dae_py.runtime import cli, logsetup, reload_signals
from dae_py.runtime.lab.gateway_proc import compile_build

CONFIG = """\
global:
  lan_interface: [lan0]
  log_level: {level}
nodes:
  n1: 'socks5://192.0.2.1:1080'
groups:
  proxy: {{policy: random}}
routing:
  rules:
    - "dport(443) -> proxy"
  fallback: direct
"""


@pytest.fixture(autouse=True)
def _restore_logging_and_signals() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    saved = {sig: signal.getsignal(sig) for sig in reload_signals.SIGNALS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One build per config log level, compiled by `dae-compile` as an operator does."""
    out = {}
    for level in ("debug", "trace", "warn", "error"):
        d = tmp_path_factory.mktemp(f"cli-{level}")
        (d / "config.yaml").write_text(CONFIG.format(level=level))
        compile_build(d / "config.yaml", d / "build")
        out[level] = d / "build"
    return out


@pytest.mark.parametrize("module, name", [("dae_py.runtime.cli", "dae-runtime"),
                                          ("dae_py.compiler.cli", "dae-compile")])
def test_both_commands_print_their_version(module: str, name: str) -> None:
    out = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.startswith(f"{name} {COMPILER_VERSION}")


def test_the_version_is_the_packages() -> None:
    from importlib.metadata import version

    assert version("dae-py") == COMPILER_VERSION


@pytest.mark.parametrize("argv, expected", [
    (["build"], ["run", "build"]),
    (["--log-level", "debug", "build"], ["--log-level", "debug", "run", "build"]),
    (["--log-level=debug", "build", "--state", "s"], ["--log-level=debug", "run", "build", "--state", "s"]),
    (["build", "--log-level", "debug"], ["run", "build", "--log-level", "debug"]),
    (["explain", "b", "--log-level", "debug"], ["explain", "b", "--log-level", "debug"]),
    (["--log-level", "debug", "cleanup"], ["--log-level", "debug", "cleanup"]),
    (["--version"], ["--version"]),
])
def test_a_bare_build_directory_means_run_wherever_the_global_options_are(argv: list[str],
                                                                          expected: list[str]) -> None:
    assert cli._with_command(argv) == expected


def run_main(argv: list[str]) -> int:
    """cli.main up to the point where the build turns out not to exist (exit 2, nothing attached)."""
    return cli.main(argv)


@pytest.mark.parametrize("argv", [
    ["--log-level", "debug", "explain", "{b}", "--proto", "tcp", "--src", "bad", "--dst", "bad"],
    ["explain", "{b}", "--proto", "tcp", "--src", "bad", "--dst", "bad", "--log-level", "debug"],
    ["--log-level", "debug", "{b}"],
    ["{b}", "--log-level", "debug"],
    ["--log-level", "info", "run", "{b}", "--log-level", "DEBUG"],  # after the command wins
])
def test_log_level_before_or_after_the_command(tmp_path: Path, argv: list[str]) -> None:
    missing = str(tmp_path / "no-build")
    rc = run_main([a.replace("{b}", missing) for a in argv])
    assert rc == 2  # no such build: refused before anything is loaded
    assert logging.getLogger().level == logging.DEBUG


@pytest.mark.parametrize("level, expected", [("debug", logging.DEBUG), ("trace", logsetup.TRACE),
                                             ("warn", logging.WARNING), ("error", logging.ERROR)])
def test_the_configs_log_level_applies_without_log_level(builds: dict[str, Path], level: str,
                                                         expected: int) -> None:
    """explain opens the build (then fails on the bad --src): the build's level is in force."""
    rc = run_main(["explain", str(builds[level]), "--proto", "tcp", "--src", "nonsense", "--dst", "1.2.3.4:1"])
    assert rc == 2
    assert logging.getLogger().level == expected


def test_the_command_line_wins_over_the_config(builds: dict[str, Path]) -> None:
    rc = run_main(["explain", str(builds["debug"]), "--proto", "tcp", "--src", "nonsense", "--dst", "1.2.3.4:1",
                   "--log-level", "error"])
    assert rc == 2
    assert logging.getLogger().level == logging.ERROR


def test_an_unknown_level_in_a_hand_edited_manifest_keeps_info_and_says_so(caplog: pytest.LogCaptureFixture) -> None:
    handler = logging.StreamHandler()
    logsetup.configure(handler, None)
    logging.getLogger().addHandler(caplog.handler)
    logsetup.apply_manifest_level({"global": {"log_level": "chatty"}})
    assert logging.getLogger().level == logging.INFO
    assert "global.log_level 'chatty' is not one of error, warn, warning, info, debug, trace" in caplog.text
    logsetup.apply_manifest_level({"global": "not a mapping"})  # ignored, no exception
    assert logging.getLogger().level == logging.INFO


def test_an_unknown_log_level_on_the_command_line_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(["--log-level", "loud", "build"])
    assert info.value.code == 2
    assert "invalid choice: 'loud'" in capsys.readouterr().err


def test_reload_signals_before_the_loop_are_logged_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dae.gateway")
    reload_signals.install_early()
    os.kill(os.getpid(), signal.SIGHUP)
    os.kill(os.getpid(), signal.SIGUSR1)
    assert "SIGHUP received before the gateway is ready (or while it stops): ignored" in caplog.text
    assert "SIGUSR1 received before the gateway is ready (or while it stops): ignored" in caplog.text
