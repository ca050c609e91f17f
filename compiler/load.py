"""Load the YAML config with ruamel.yaml, keeping the line and column of every node.

The rest of the pipeline works on plain Python values (dicts, lists, scalars) plus a `PosMap`
that answers "where in the file is the value at this path?", so that any later stage can point
at the exact spot when it reports a problem.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.scalarstring import ScalarString

from .diagnostics import CompileError, Diagnostics, SourcePos

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ScalarPos:
    """Where a scalar's text starts, and how to map an offset inside the string to a column."""

    line: int
    col: int
    quoted: bool  # the text starts one column after `col` when the scalar is quoted


class PosMap:
    """Positions of keys and values by JSON path (1-based lines and columns)."""

    def __init__(self, file: str):
        self.file = file
        self._values: dict[JsonPath, ScalarPos] = {}
        self._keys: dict[JsonPath, ScalarPos] = {}

    def set_value(self, path: JsonPath, pos: ScalarPos) -> None:
        self._values[path] = pos

    def set_key(self, path: JsonPath, pos: ScalarPos) -> None:
        self._keys[path] = pos

    def value(self, path: JsonPath) -> SourcePos:
        """Position of the value at `path`, or of its nearest ancestor we know."""
        p = path
        while p:
            if p in self._values:
                v = self._values[p]
                return SourcePos(self.file, v.line, v.col)
            p = p[:-1]
        return SourcePos(self.file, 1, 1)

    def key(self, path: JsonPath) -> SourcePos:
        if path in self._keys:
            k = self._keys[path]
            return SourcePos(self.file, k.line, k.col)
        return self.value(path)

    def in_string(self, path: JsonPath, offset: int) -> SourcePos:
        """Position of character `offset` inside the (single-line) string scalar at `path`."""
        v = self._values.get(path)
        if v is None:
            return self.value(path)
        return SourcePos(self.file, v.line, v.col + offset + (1 if v.quoted else 0))


@dataclass(frozen=True)
class LoadedConfig:
    file: str
    text: str
    data: dict[str, Any]
    pos: PosMap
    sha256: str


def _plain(node: Any, path: JsonPath, pos: PosMap) -> Any:
    """Convert ruamel nodes to plain Python values, recording positions on the way."""
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        for k, v in node.items():
            key = str(k)
            child = path + (key,)
            kl, kc = node.lc.key(k)
            pos.set_key(child, ScalarPos(kl + 1, kc + 1, False))
            vl, vc = node.lc.value(k)
            pos.set_value(child, ScalarPos(vl + 1, vc + 1, _is_quoted(v)))
            out[key] = _plain(v, child, pos)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        for i, v in enumerate(node):
            child = path + (i,)
            il, ic = node.lc.item(i)
            pos.set_value(child, ScalarPos(il + 1, ic + 1, _is_quoted(v)))
            items.append(_plain(v, child, pos))
        return items
    if isinstance(node, ScalarString):
        return str(node)
    return node


def _is_quoted(v: Any) -> bool:
    return isinstance(v, ScalarString) and type(v).__name__ in (
        "SingleQuotedScalarString",
        "DoubleQuotedScalarString",
    )


def load_config(path: str | Path) -> LoadedConfig:
    """Read and parse `path`; YAML syntax errors become positioned diagnostics."""
    path = Path(path)
    name = str(path)
    diags = Diagnostics()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        diags.error(SourcePos(name, 1, 1), f"cannot read config: {exc.strerror or exc}")
        raise CompileError(diags) from exc
    except UnicodeDecodeError as exc:
        diags.error(SourcePos(name, 1, 1), f"config is not UTF-8: {exc.reason}")
        raise CompileError(diags) from exc
    return load_config_text(text, name)


def load_config_text(text: str, name: str = "config.yaml") -> LoadedConfig:
    diags = Diagnostics()
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.allow_duplicate_keys = False
    try:
        root = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = exc.problem or exc.context or "invalid YAML"
        diags.error(SourcePos(name, line, col), f"invalid YAML: {msg}")
        raise CompileError(diags) from exc
    except Exception as exc:  # ruamel raises assorted errors for duplicate keys etc.
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        diags.error(SourcePos(name, line, col), f"invalid YAML: {getattr(exc, 'problem', None) or exc}")
        raise CompileError(diags) from exc
    pos = PosMap(name)
    pos.set_value((), ScalarPos(1, 1, False))
    data = _plain(root, (), pos) if root is not None else {}
    return LoadedConfig(
        file=name,
        text=text,
        data=data,
        pos=pos,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
