"""The import contracts of pyproject.toml ([tool.importlinter]) hold: the runtime never imports the
compiler, the compiler never imports the runtime, the contract imports neither.

lint-imports (grimp) finds a package's modules by walking its folder, and dae_py's subpackages
live in other folders (setuptools package-dir), so the check runs on a copy of the sources laid
out as installed: dae_py/{contract,compiler,runtime,...}.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("contract", "compiler", "runtime", "schemas", "templates")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _installed_layout(tmp: Path) -> Path:
    root = tmp / "src"
    shutil.copytree(REPO / "dae_py", root / "dae_py", ignore=shutil.ignore_patterns("__pycache__"))
    for name in PACKAGES:
        shutil.copytree(REPO / name, root / "dae_py" / name, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def _lint(root: Path) -> subprocess.CompletedProcess[str]:
    if not LINT_IMPORTS.exists():
        pytest.fail(f"{LINT_IMPORTS} is missing: scripts/setup.sh installs import-linter (the test extra)")
    env = {**os.environ, "PYTHONPATH": str(root), "PYTHONDONTWRITEBYTECODE": "1"}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", str(REPO / "pyproject.toml")],
                          check=False, cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_import_contracts_hold(tmp_path: Path) -> None:
    proc = _lint(_installed_layout(tmp_path))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 kept, 0 broken" in proc.stdout


def test_a_runtime_module_importing_the_compiler_breaks_the_contract(tmp_path: Path) -> None:
    """The check is not vacuous: one deliberate violation fails it, naming the import."""
    root = _installed_layout(tmp_path)
    (root / "dae_py" / "runtime" / "violation.py").write_text(
        "from dae_py.compiler.values import parse_duration  # deliberate: the runtime may not do this\n")
    proc = _lint(root)
    assert proc.returncode != 0
    assert "The runtime does not import the compiler BROKEN" in proc.stdout
    assert "dae_py.runtime.violation -> dae_py.compiler.values" in proc.stdout


# What a gateway with a plain config (socks5/http nodes, the controller, the DNS module; no
# vmess/ss/trojan, no ws/h2/grpc transport, no QUIC sniffing, nobody scraping /metrics) loads at
# start. Each module on the list costs RSS for the process' whole life (cryptography ~7 MB,
# prometheus-client ~1 MB, h2 ~1.3 MB); tests/runtime/test_flows.py checks a running one too.
PLAIN_START = ("dae_py.runtime.cli", "dae_py.runtime.gateway", "dae_py.runtime.relay",
               "dae_py.runtime.kernel_router", "dae_py.runtime.controller.app", "dae_py.runtime.dns.module",
               "dae_py.runtime.groups", "dae_py.runtime.reload")
HEAVY_OPTIONAL = ("cryptography", "h2", "hpack", "websockets", "blake3", "aioquic", "prometheus_client",
                  "lark", "ruamel", "jsonschema", "jinja2", "yaml", "dae_py.compiler",
                  "pyroute2.ndb", "pyroute2.ipdb", "sqlite3")


def _loaded_after(code: str) -> list[str]:
    probe = (f"import importlib, sys\n{code}\n"
             f"print([m for m in {HEAVY_OPTIONAL!r} if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO,
                         check=True, timeout=120)
    return eval(out.stdout.strip())  # our own subprocess printing a list of names


def test_a_plain_gateway_imports_no_optional_heavy_module() -> None:
    code = (f"for m in {PLAIN_START!r}: importlib.import_module(m)\n"
            "from dae_py.runtime.proxy import registry\n"
            "registry.load('socks5'); registry.load('http')\n")
    assert _loaded_after(code) == []


def test_a_vmess_node_loads_cryptography_when_first_used() -> None:
    """The check is not vacuous: the protocol module of a node in use brings its libraries."""
    code = "from dae_py.runtime.proxy import registry\nregistry.load('vmess')\n"
    assert "cryptography" in _loaded_after(code)


def test_the_lean_pyroute2_package_still_gives_every_name_of_the_real_one() -> None:
    """runtime/datapath/_pyroute2.lean skips pyroute2's __init__; a name only it defines
    (NDB) runs it on first use, and IPRoute is the same class either way."""
    code = ("import dae_py.runtime.datapath\n"
            "from pyroute2.iproute import IPRoute as lean\n"
            "assert 'pyroute2.ndb' not in sys.modules\n"
            "from pyroute2 import NDB, IPRoute\n"
            "assert IPRoute is lean and 'pyroute2.ndb' in sys.modules\n")
    assert _loaded_after(code) == ["pyroute2.ndb", "pyroute2.ipdb", "sqlite3"]
