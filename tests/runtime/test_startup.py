"""What the running gateway imports, and how its log lines look."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def test_running_gateway_does_not_import_the_compiler_front_end() -> None:
    """The runtime process needs neither the rule parser (lark), the YAML loader nor the
    compiler's settings: megabytes of RSS it would keep for nothing."""
    code = ("import sys, runtime.cli, runtime.gateway, runtime.relay, runtime.kernel_router\n"
            "bad = [m for m in ('lark', 'ruamel', 'ruamel.yaml', 'dae_py.compiler.settings', 'dae_py.compiler.rules',"
            " 'dae_py.contract.evaluate', 'jinja2') if m in sys.modules]\n"
            "print(bad)\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_log_time_stamps_match_the_default_format() -> None:
    import logging

    from dae_py.runtime.logsetup import LineFormatter

    fmt = "%(asctime)s %(levelname)s %(name)s: %(message)s"
    ours, default = LineFormatter(fmt), logging.Formatter(fmt)
    for created in (1_700_000_000.0, 1_700_000_000.0005, 1_700_000_000.999, 1_700_000_001.25):
        record = logging.LogRecord("runtime.relay.tcp", logging.INFO, __file__, 1, "tcp %s", ("x",), None)
        record.created = created
        record.msecs = (created - int(created)) * 1000
        assert ours.format(record) == default.format(record)


def test_log_lines_name_the_module_without_the_package_namespace() -> None:
    import logging

    from dae_py.runtime.logsetup import LineFormatter

    record = logging.LogRecord("dae_py.runtime.relay.tcp", logging.INFO, __file__, 1, "tcp %s", ("x",), None)
    line = LineFormatter("%(name)s: %(message)s").format(record)
    assert line == "runtime.relay.tcp: tcp x"
    assert record.name == "dae_py.runtime.relay.tcp", "the record itself is left as it was"
