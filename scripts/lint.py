"""Lint the tree: ruff, mypy and the rule that every suppression names its code and says why.

    python scripts/lint.py [ruff|mypy|noqa ...] [--summary]

With no check named, all three run. Exit status 1 when any file has a finding. ``--summary`` also
prints the findings per file and the number of ``type: ignore`` comments left.

Why a script and not plain ``mypy .``: the distribution maps ``dae_py.compiler`` to ``compiler/``,
``dae_py.runtime`` to ``runtime/`` and so on (setuptools package-dir), and the editable install
reaches them through an import hook that mypy cannot follow. So mypy runs on a tree of symlinks,
``.mypy_cache/dae_py-src/``, laid out as the installed package is; its paths are mapped back to the
source files before they are reported.
"""
from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import tokenize
import tomllib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINK_TREE = REPO / ".mypy_cache" / "dae_py-src"
# Top-level folders that hold Python the project owns (the package folders come from pyproject).
EXTRA_ROOTS = ("tests", "bench", "scripts")
ANSIBLE_PLUGINS = ("ansible/plugins/connection/netns.py",)
SKIP_DIRS = {".venv", ".mypy_cache", "__pycache__", ".git", "build"}


@dataclass(frozen=True)
class Finding:
    """One complaint of one tool about one line of one file (path relative to the repository)."""

    tool: str
    path: str
    line: int
    code: str
    message: str

    def render(self) -> str:
        return f"{self.path}:{self.line}: [{self.tool} {self.code}] {self.message}"


def pyproject() -> dict[str, object]:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)


def package_dirs() -> dict[str, str]:
    """`dae_py.x` -> source folder, as setuptools' package-dir maps them."""
    tool = pyproject()["tool"]
    assert isinstance(tool, dict)
    dirs = tool["setuptools"]["package-dir"]
    assert isinstance(dirs, dict)
    return {str(k): str(v) for k, v in dirs.items()}


def python_files() -> list[str]:
    """Every Python file the project owns, relative to the repository, sorted."""
    roots = sorted(set(package_dirs().values()) | set(EXTRA_ROOTS))
    out: set[str] = set(ANSIBLE_PLUGINS)
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(REPO / root):
            dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
            for name in filenames:
                if name.endswith(".py"):
                    out.add(str((Path(dirpath) / name).relative_to(REPO)))
    return sorted(out)


# ---- ruff -------------------------------------------------------------------------------------

def run_ruff(paths: list[str] | None = None, cwd: Path = REPO) -> list[Finding]:
    """Ruff's findings; the configuration is pyproject.toml's [tool.ruff]."""
    cmd = [sys.executable, "-m", "ruff", "check", "--output-format", "json", "--no-cache", "--quiet"]
    proc = subprocess.run([*cmd, *(paths or ["."])], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"ruff failed to run:\n{proc.stderr}")
    findings = []
    for item in json.loads(proc.stdout or "[]"):
        path = os.path.relpath(item["filename"], cwd)
        findings.append(Finding("ruff", path, item["location"]["row"], item["code"] or "syntax", item["message"]))
    return findings


# ---- mypy -------------------------------------------------------------------------------------

def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    want = os.path.relpath(target, link.parent)
    if link.is_symlink() and os.readlink(link) == want:
        return
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(want)


def build_link_tree() -> dict[str, str]:
    """Lay out .mypy_cache/dae_py-src as the installed package is; map its top entries back.

    Returns link-tree prefix -> source prefix (both relative), longest first, for mapping paths.
    """
    mapping: dict[str, str] = {}
    for package, folder in package_dirs().items():
        if package == "dae_py":
            _link(REPO / folder / "__init__.py", LINK_TREE / "dae_py" / "__init__.py")
            mapping["dae_py/__init__.py"] = f"{folder}/__init__.py"
            continue
        parts = package.split(".")
        _link(REPO / folder, LINK_TREE.joinpath(*parts))
        mapping["/".join(parts)] = folder
    for root in EXTRA_ROOTS:
        _link(REPO / root, LINK_TREE / root)
        mapping[root] = root
    for plugin in ANSIBLE_PLUGINS:
        # Not under its own path: a folder named `ansible` would shadow the real ansible package.
        name = "ansible_plugin_" + Path(plugin).name
        _link(REPO / plugin, LINK_TREE / name)
        mapping[name] = plugin
    return dict(sorted(mapping.items(), key=lambda kv: -len(kv[0])))


def _unlink_path(path: str, mapping: dict[str, str]) -> str:
    rel = os.path.relpath(os.path.join(LINK_TREE, path) if not os.path.isabs(path) else path, LINK_TREE)
    for prefix, source in mapping.items():
        if rel == prefix or rel.startswith(prefix + "/"):
            return source + rel[len(prefix):]
    return os.path.relpath(os.path.join(LINK_TREE, rel), REPO)


_MYPY_LINE = re.compile(r"^(?P<path>[^:\n]+\.py):(?P<line>\d+):(?:\d+:)? (?P<kind>error|note): (?P<msg>.*?)"
                        r"(?:  \[(?P<code>[a-z0-9-]+)\])?$")


def run_mypy() -> list[Finding]:
    """Mypy's findings over the whole tree; pyproject.toml's [tool.mypy] says how strict, per module."""
    mapping = build_link_tree()
    targets = sorted(mapping)
    env = {**os.environ, "MYPYPATH": str(LINK_TREE)}
    cmd = [sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
           "--cache-dir", str(REPO / ".mypy_cache"), "--no-error-summary", "--show-column-numbers",
           "--no-pretty", *targets]
    proc = subprocess.run(cmd, cwd=LINK_TREE, env=env, capture_output=True, text=True, check=False)
    if proc.returncode not in (0, 1):
        raise SystemExit(f"mypy failed to run:\n{proc.stdout}{proc.stderr}")
    findings = []
    for line in proc.stdout.splitlines():
        m = _MYPY_LINE.match(line)
        if not m or m["kind"] != "error":
            continue
        path = _unlink_path(m["path"], mapping)
        findings.append(Finding("mypy", path, int(m["line"]), m["code"] or "error", m["msg"]))
    return findings


# ---- suppressions -----------------------------------------------------------------------------

# A suppression reads: the marker, its code(s), then a separator ("-", "#", ":") and the reason.
_NOQA = re.compile(r"#\s*noqa\b(?P<codes>:\s*[A-Z]+[0-9]+(?:\s*,\s*[A-Z]+[0-9]+)*)?(?P<rest>.*)$")
_IGNORE = re.compile(r"#\s*type:\s*ignore(?P<codes>\[[a-z0-9_,\s-]+\])?(?P<rest>.*)$")
_REASON = re.compile(r"^\s*(?:-+|—|#|:)\s*\S")


def _comments(text: str) -> Iterator[tuple[int, str]]:
    try:
        for tok in tokenize.generate_tokens(io.StringIO(text).readline):
            if tok.type == tokenize.COMMENT:
                yield tok.start[0], tok.string
    except (tokenize.TokenError, SyntaxError):
        return  # ruff reports the syntax error


def suppression_findings(path: str, text: str) -> list[Finding]:
    """A suppression without a code silences more than meant; one without a reason can't be reviewed."""
    out = []
    for line, comment in _comments(text):
        for kind, pattern in (("noqa", _NOQA), ("type-ignore", _IGNORE)):
            m = pattern.search(comment)
            if not m:
                continue
            if not m["codes"]:
                out.append(Finding("noqa", path, line, f"{kind}-without-code", comment.strip()))
            elif not _REASON.match(m["rest"]):
                out.append(Finding("noqa", path, line, f"{kind}-without-reason", comment.strip()))
    return out


def run_noqa() -> list[Finding]:
    findings = []
    for path in python_files():
        text = (REPO / path).read_text(encoding="utf-8")
        if "noqa" in text or "type:" in text:  # tokenizing is the slow part: only where it can matter
            findings.extend(suppression_findings(path, text))
    return findings


def count_type_ignores() -> int:
    n = 0
    for path in python_files():
        text = (REPO / path).read_text(encoding="utf-8")
        if "type:" in text:
            n += sum(bool(_IGNORE.search(comment)) for _line, comment in _comments(text))
    return n


# ---- the command ------------------------------------------------------------------------------

CHECKS = {"ruff": run_ruff, "mypy": run_mypy, "noqa": run_noqa}


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    summary = "--summary" in args
    names = [a for a in args if a != "--summary"] or list(CHECKS)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        print(f"usage: {Path(__file__).name} [ruff|mypy|noqa ...] [--summary]", file=sys.stderr)
        return 2
    findings = [f for name in names for f in CHECKS[name]()]
    for f in findings:
        print(f.render())
    if summary:
        per_file = Counter((f.path, f.tool) for f in findings)
        if per_file:
            print("\nfindings per file:")
        for (path, tool), n in sorted(per_file.items()):
            print(f"  {n:5d}  {tool:5s} {path}")
        print(f"total: {len(findings)} findings; type: ignore comments: {count_type_ignores()}")
    return 1 if findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
