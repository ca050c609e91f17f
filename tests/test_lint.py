"""Lint is part of the suite: ruff, mypy (strict on the contract and the compiler) and the rule that
every suppression names its code and says why, all through scripts/lint.py.

`python scripts/lint.py --summary` lists what is left per file. The last tests prove the checks
bite: a deliberate violation in a scratch file is caught.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts import lint

REPO = Path(__file__).resolve().parent.parent


def _rendered(findings: list[lint.Finding]) -> list[str]:
    return [f.render() for f in findings]


def test_ruff_finds_nothing() -> None:
    assert _rendered(lint.run_ruff()) == []


def test_mypy_finds_nothing() -> None:
    assert _rendered(lint.run_mypy()) == []


def test_every_suppression_names_its_code_and_a_reason() -> None:
    assert _rendered(lint.run_noqa()) == []


def test_ruff_catches_a_deliberate_violation(tmp_path: Path) -> None:
    """Run with the project's configuration on a scratch file: an unused import and a bare except."""
    (tmp_path / "pyproject.toml").write_text((REPO / "pyproject.toml").read_text())
    (tmp_path / "bad.py").write_text("import os\n\ntry:\n    pass\nexcept Exception:\n    pass\n")
    codes = {f.code for f in lint.run_ruff(["bad.py"], cwd=tmp_path)}
    assert {"F401", "BLE001"} <= codes


def test_mypy_strict_catches_an_untyped_compiler_function(tmp_path: Path) -> None:
    """The strict override applies to dae_py.compiler.*: an unannotated def there is an error."""
    pkg = tmp_path / "dae_py" / "compiler"
    pkg.mkdir(parents=True)
    (tmp_path / "dae_py" / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "scratch.py").write_text("def f(x):\n    return x\n\n\ny: int = 'not an int'\n")
    proc = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
                           "--cache-dir", str(tmp_path / ".cache"), "--no-error-summary", "-p", "dae_py.compiler"],
                          cwd=tmp_path, capture_output=True, text=True, check=False)
    assert "[no-untyped-def]" in proc.stdout and "[assignment]" in proc.stdout, proc.stdout + proc.stderr


@pytest.mark.parametrize(("line", "code"), [
    ("x = 1  # noqa\n", "noqa-without-code"),
    ("x = 1  # noqa: E501\n", "noqa-without-reason"),
    ("x = 1  # type: ignore\n", "type-ignore-without-code"),
    ("x = 1  # type: ignore[assignment]\n", "type-ignore-without-reason"),
])
def test_a_suppression_without_code_or_reason_is_caught(line: str, code: str) -> None:
    assert [f.code for f in lint.suppression_findings("scratch.py", line)] == [code]


@pytest.mark.parametrize("line", [
    "x = 1  # noqa: E501 - a URL\n",
    "x = 1  # type: ignore[assignment]  # the stub is wrong\n",
    "s = '# noqa'\n",  # in a string, not a comment
])
def test_a_suppression_with_code_and_reason_passes(line: str) -> None:
    assert lint.suppression_findings("scratch.py", line) == []
