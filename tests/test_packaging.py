"""The distribution installs one namespace, `dae_py`, and the sources import only through it."""
from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
SETUPTOOLS = PYPROJECT["tool"]["setuptools"]


def _source_dir(package: str) -> Path:
    """Where package-dir puts a package's sources: the longest mapped prefix wins."""
    mapping: dict[str, str] = SETUPTOOLS["package-dir"]
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return ROOT / mapping[prefix] / Path(*parts[cut:])
    raise AssertionError(f"{package} is not under any package-dir entry")


def test_every_package_folder_is_listed() -> None:
    listed = set(SETUPTOOLS["packages"])
    found: set[str] = set()
    for top in SETUPTOOLS["package-dir"]:
        base = _source_dir(top)
        for init in base.rglob("__init__.py"):
            rel = init.parent.relative_to(base)
            found.add(".".join([top, *rel.parts]))
    assert found - listed == set(), "package folders pyproject.toml does not install"
    assert {p for p in listed if not (_source_dir(p) / "__init__.py").exists()} == set()


def test_nothing_imports_the_short_names() -> None:
    """`import compiler` works from the repo root only by accident (the cwd is on sys.path); an
    installed gateway has no such module, so every import goes through dae_py."""
    bad = re.compile(r"^\s*(from|import)\s+(compiler|runtime|contract|templates|schemas)\b", re.M)
    offenders = []
    for folder in ("compiler", "runtime", "contract", "tests", "bench", "scripts"):
        for path in (ROOT / folder).rglob("*.py"):
            for m in bad.finditer(path.read_text()):
                line = path.read_text().count("\n", 0, m.start()) + 1
                offenders.append(f"{path.relative_to(ROOT)}:{line}")
    assert offenders == []
