"""Load the YAML config with ruamel.yaml, keeping the line and column of every node.

The rest of the pipeline works on plain Python values (dicts, lists, scalars) plus a `PosMap`
that answers "where in the file is the value at this path?", so that any later stage can point
at the exact spot when it reports a problem.
"""
from __future__ import annotations

import hashlib
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq, TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError, ReusedAnchorWarning
from ruamel.yaml.scalarstring import ScalarString
from ruamel.yaml.scanner import RoundTripScanner
from ruamel.yaml.tokens import ScalarToken

from .diagnostics import CompileError, Diagnostic, Diagnostics, SourcePos
from .readfile import read_capped_text

CONFIG_MAX_BYTES = 64 << 20  # a config with 100,000 inline rule values is ~2 MB

JsonPath = tuple[str | int, ...]


@dataclass(frozen=True)
class ScalarPos:
    """Where a scalar's text starts, and how to map an offset inside the string to a column."""

    line: int
    col: int
    quoted: bool  # the text starts one column after `col` when the scalar is quoted
    style: str | None = None  # "'" or '"' for quoted scalars (escapes shift columns)


class PosMap:
    """Positions of keys and values by JSON path (1-based lines and columns)."""

    def __init__(self, file: str, text: str | None = None):
        self.file = file
        self._lines = text.splitlines() if text is not None else []
        self._values: dict[JsonPath, ScalarPos] = {}
        self._keys: dict[JsonPath, ScalarPos] = {}

    def set_value(self, path: JsonPath, pos: ScalarPos) -> None:
        self._values[path] = pos

    def set_key(self, path: JsonPath, pos: ScalarPos) -> None:
        self._keys[path] = pos

    def alias(self, old: JsonPath, new: JsonPath) -> None:
        """`new` is where `old` was written (an option read under another name: dae's `default:`)."""
        n = len(old)
        for table in (self._values, self._keys):
            for p in [p for p in table if p[:n] == old]:
                table[new + p[n:]] = table[p]

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
        if not v.quoted:
            return SourcePos(self.file, v.line, v.col + offset)
        return SourcePos(self.file, v.line, v.col + 1 + self._source_offset(v, offset))

    def _source_offset(self, v: ScalarPos, offset: int) -> int:
        """Columns taken in the source by the first `offset` characters of a quoted scalar.

        Escapes (`\\"` in double quotes, `''` in single quotes) take more columns than the
        characters they stand for; without this, every escape before a token would move the
        caret one column left of it.
        """
        if not 1 <= v.line <= len(self._lines):
            return offset
        src = self._lines[v.line - 1]
        i = v.col  # 0-based index of the first character after the opening quote
        # Nothing to map when the text before the token has no escape and no closing quote (a rule
        # with 100,000 values would otherwise cost a Python loop over 1.8 MB per lookup).
        head = src[i:i + offset]
        if v.style == '"' and "\\" not in head and '"' not in head:
            return offset
        if v.style == "'" and "'" not in head:
            return offset
        n = 0
        while n < offset and i < len(src):
            c = src[i]
            if v.style == "'" and c == "'" and src[i + 1:i + 2] == "'":
                i += 2
            elif v.style == '"' and c == "\\" and i + 1 < len(src):
                e = src[i + 1]
                i += 2 + {"x": 2, "u": 4, "U": 8}.get(e, 0)
            elif c == v.style:  # the closing quote (or a multi-line scalar): stop mapping
                break
            else:
                i += 1
            n += 1
        return i - v.col + (offset - n)


@dataclass(frozen=True)
class LoadedConfig:
    file: str
    text: str
    data: dict[str, Any]
    pos: PosMap
    sha256: str
    # Warnings found while loading (a `.dae` option this project ignores); check_config reports them.
    load_warnings: tuple[Diagnostic, ...] = ()


# Flow scalars that ruamel's scanner reads character by character, but whose value is simply the
# text between the quotes: on one line, no escape, no character that moves ruamel's line/column
# bookkeeping other than by one column each (line breaks, BOM), no NUL (ruamel's end of input).
_SIMPLE_DOUBLE = re.compile('"([^"\\\\\0\r\n\x85\u2028\u2029\ufeff]*)"')
_SIMPLE_SINGLE = re.compile("'([^'\0\r\n\x85\u2028\u2029\ufeff]*)'(?!')")


def _is_plain_key(key: Any) -> bool:
    return key is None or isinstance(key, (str, int, float, bool))


class _Constructor(RoundTripConstructor):
    """ruamel's constructor, minus two ways an alias makes it expand a shared tree: its
    duplicate-key message formats both values (`x: *bomb` twice took the fuzz campaign's 10 s),
    and a collection used as a key is hashed element by element. Keys here must be scalars."""

    def _plain_key(self, node: Any, key_node: Any, key: Any) -> None:
        if not _is_plain_key(key):
            raise DuplicateKeyError("while constructing a mapping", node.start_mark,
                                    "a key must be a plain value, not a sequence or mapping", key_node.start_mark)

    def check_mapping_key(self, node: Any, key_node: Any, mapping: Any, key: Any, value: Any) -> bool:
        self._plain_key(node, key_node, key)
        if key in mapping:
            old = mapping.get(key)
            values = (f' with value "{value}" (original value: "{old}")'
                      if _is_plain_key(value) and _is_plain_key(old) else "")  # a collection may be a bomb
            raise DuplicateKeyError("while constructing a mapping", node.start_mark,
                                    f'found duplicate key "{str(key)[:80]}"{values}', key_node.start_mark)
        return True

    def check_set_key(self, node: Any, key_node: Any, setting: Any, key: Any) -> None:
        self._plain_key(node, key_node, key)
        if key in setting:
            raise DuplicateKeyError("while constructing a set", node.start_mark,
                                    f'found duplicate key "{str(key)[:80]}"', key_node.start_mark)


class _FastScanner(RoundTripScanner):
    """RoundTripScanner that reads simple quoted scalars with one regex match.

    ruamel's scan_flow_scalar costs ~0.5 us per character (peek/forward per character), 0.7-1.4 s for a
    rule string with 100,000 inline values. For a scalar `_SIMPLE_*` matches, this makes the same
    token (value, start and end marks, style) and moves the reader as `forward()` would; anything
    else (escapes, multi-line scalars, an unterminated quote, input still being read from a
    stream) goes to ruamel's own code. tests/compiler/test_load.py compares both.
    """

    def scan_flow_scalar(self, style: Any) -> Any:
        r = self.reader
        if r.raw_buffer is None:  # the whole input is decoded into r.buffer (it ends with '\0')
            m = (_SIMPLE_DOUBLE if style == '"' else _SIMPLE_SINGLE).match(r.buffer, r.pointer)
            if m is not None:
                start_mark = r.get_mark()
                n = m.end() - m.start()
                r.pointer += n
                r.index += n
                r.column += n
                return ScalarToken(m.group(1), False, start_mark, r.get_mark(), style)
        return super().scan_flow_scalar(style)


# Nodes an alias may add beyond the file's own: YAML aliases share one node, and converting
# the tree expands each use (a 796-byte "billion laughs" took 62 s and 3.9 GiB before this).
# Every node also costs the schema check afterwards, so the allowance is small.
ALIAS_EXPANSION_NODES = 10_000


class _Budget:
    """Counts converted nodes; a file without aliases has at most about one node per byte."""

    def __init__(self, text_len: int):
        self.left = text_len + ALIAS_EXPANSION_NODES

    def take(self) -> bool:
        self.left -= 1
        return self.left >= 0


class _TooLarge(Exception):
    pass


def _has_surrogate(s: str) -> bool:
    if s.isascii():
        return False
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _plain(node: Any, path: JsonPath, pos: PosMap, diags: Diagnostics, budget: _Budget) -> Any:
    """Convert ruamel nodes to plain Python values, recording positions on the way."""
    if not budget.take():
        raise _TooLarge()
    tag = getattr(getattr(node, "tag", None), "value", None)
    if tag and isinstance(node, (CommentedMap, CommentedSeq)):
        diags.error(pos.value(path), f"invalid YAML: '{tag}' is read as a YAML tag", "remove it, or quote the value")
    if isinstance(node, CommentedMap):
        out: dict[str, Any] = {}
        here = pos.value(path)
        for k, v in node.items():
            key = str(k)
            child = path + (key,)
            # Keys brought in by a merge key (`<<: *base`) have no position of their own in this
            # mapping: they are reported at the mapping.
            kl, kc = node.lc.key(k) or (here.line - 1, here.col - 1)
            pos.set_key(child, ScalarPos(kl + 1, kc + 1, False))
            vl, vc = node.lc.value(k) or (here.line - 1, here.col - 1)
            pos.set_value(child, ScalarPos(vl + 1, vc + 1, _is_quoted(v), _style(v)))
            if _has_surrogate(key):
                diags.error(pos.key(child), "invalid YAML: a key contains a lone surrogate escape (no UTF-8 form)")
            out[key] = _plain(v, child, pos, diags, budget)
        return out
    if isinstance(node, CommentedSeq):
        items = []
        here = pos.value(path)
        for i, v in enumerate(node):
            child = path + (i,)
            il, ic = node.lc.item(i) or (here.line - 1, here.col - 1)  # none in a tagged sequence
            pos.set_value(child, ScalarPos(il + 1, ic + 1, _is_quoted(v), _style(v)))
            items.append(_plain(v, child, pos, diags, budget))
        return items
    if isinstance(node, TaggedScalar):
        # `- !domain(x) -> direct` unquoted: YAML reads the leading '!' as a tag.
        tag = str(node.tag.value if hasattr(node.tag, "value") else node.tag)
        text = f"{tag} {node.value}".strip() if tag.startswith("!") else str(node.value)
        diags.error(pos.value(path), f"invalid YAML: '{tag}' is read as a YAML tag",
                    f"quote the value: \"{text}\"" if tag.startswith("!") else None)
        return text
    if isinstance(node, str):
        if _has_surrogate(node):
            # "\ud800" in double quotes: a string no file, manifest or process name can hold.
            diags.error(pos.value(path), "invalid YAML: the value contains a lone surrogate escape (no UTF-8 form)")
        return str(node)
    if isinstance(node, (dict, list, set)):  # a mapping or sequence type ruamel made that is not round-trip
        diags.error(pos.value(path), f"invalid YAML: unsupported {type(node).__name__} here")
        return None
    return node


def _is_quoted(v: Any) -> bool:
    return isinstance(v, ScalarString) and type(v).__name__ in (
        "SingleQuotedScalarString",
        "DoubleQuotedScalarString",
    )


def _style(v: Any) -> str | None:
    name = type(v).__name__
    return "'" if name == "SingleQuotedScalarString" else '"' if name == "DoubleQuotedScalarString" else None


def load_config(path: str | Path) -> LoadedConfig:
    """Read and parse `path`; YAML syntax errors become positioned diagnostics."""
    path = Path(path)
    name = str(path)
    diags = Diagnostics()
    try:
        text = read_capped_text(path, CONFIG_MAX_BYTES, "config")
    except OSError as exc:
        diags.error(SourcePos(name, 1, 1), f"cannot read config: {exc.strerror or exc}")
        raise CompileError(diags) from exc
    except ValueError as exc:
        diags.error(SourcePos(name, 1, 1), f"cannot read config: {exc}")
        raise CompileError(diags) from exc
    return load_config_text(text, name)


# Nesting deeper than this is refused before ruamel reads it: ruamel recurses per level, and its
# cost grows faster than the depth (3,000 '[' took 62 s before it hit Python's recursion limit).
MAX_FLOW_DEPTH = 100
MAX_INDENT_COLUMNS = 200  # block nesting: each level takes at least one column ('- - x' two)
# What can hold a bracket that is not one: quoted scalars (a quote that starts a token) and comments
# (a '#' at a line start or after a space). Quoted scalars are skipped with one match each, so a
# 2 MB rule string costs one step.
_SPECIAL = re.compile(r"""[\[\]{}"'#]""")
_QUOTED = {'"': re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"'), "'": re.compile(r"'[^']*(?:''[^']*)*'")}
_DEEP_INDENT = re.compile(rf"^[ \t?:-]{{{MAX_INDENT_COLUMNS},}}", re.M)


def _too_deep(text: str) -> tuple[int, int] | None:
    """(0-based offset, limit) where nesting passes a limit, or None."""
    depth = 0
    pos = 0
    search = _SPECIAL.search
    while (m := search(text, pos)) is not None:
        c, at = m.group(0), m.start()
        pos = at + 1
        before = text[at - 1] if at else "\n"
        if c in "\"'":
            if before in " \t\r\n[{,:-?":
                q = _QUOTED[c].match(text, at)
                pos = q.end() if q else len(text)  # unterminated: ruamel reports it
        elif c == "#":
            if before in " \t\r\n":
                nl = text.find("\n", at)
                pos = len(text) if nl < 0 else nl
        elif c in "[{":
            depth += 1
            if depth > MAX_FLOW_DEPTH:
                return at, MAX_FLOW_DEPTH
        else:
            depth = max(depth - 1, 0)
    m = _DEEP_INDENT.search(text)
    return (m.start() + MAX_INDENT_COLUMNS - 1, MAX_INDENT_COLUMNS) if m else None


def load_config_text(text: str, name: str = "config.yaml", fast_scanner: bool = True) -> LoadedConfig:
    """`fast_scanner=False` is ruamel's own scanner (the reference the tests compare with).

    dae's own format (a `.dae` file, or text that starts like `global {`) goes to dae_format."""
    from .dae_format import load_dae_text, looks_like_dae  # it imports this module

    if looks_like_dae(text, name):
        return load_dae_text(text, name)
    diags = Diagnostics()
    deep = _too_deep(text)
    if deep is not None:
        offset, limit = deep
        line = text.count("\n", 0, offset) + 1
        col = offset - (text.rfind("\n", 0, offset) + 1) + 1
        what = f"{limit} levels of [ ] or {{ }}" if limit == MAX_FLOW_DEPTH else f"{limit} columns of indentation"
        diags.error(SourcePos(name, line, col), f"invalid YAML: nested deeper than {what}")
        raise CompileError(diags)
    yaml = YAML(typ="rt")
    yaml.Constructor = _Constructor
    if fast_scanner:
        yaml.Scanner = _FastScanner
    yaml.preserve_quotes = True
    yaml.allow_duplicate_keys = False
    try:
        with warnings.catch_warnings():
            # ruamel warns (on stderr) about an anchor defined twice; here it is an error.
            warnings.simplefilter("error", ReusedAnchorWarning)
            root = yaml.load(text)
    except ReusedAnchorWarning as exc:
        where = re.search(r"second occurrence.*?line (\d+), column (\d+)", str(exc), re.S)
        line, col = (int(where.group(1)), int(where.group(2))) if where else (1, 1)
        diags.error(SourcePos(name, line, col), "invalid YAML: an anchor is defined twice",
                    "give each anchor ('&name') its own name")
        raise CompileError(diags) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        msg = exc.problem or exc.context or "invalid YAML"
        ctx = exc.context_mark
        if exc.problem and exc.context and ctx is not None and (ctx.line, ctx.column) != (line - 1, col - 1):
            # e.g. "expected ',' or ']'" is found lines after the '[' that was never closed.
            msg += f" ({exc.context} started at line {ctx.line + 1}, column {ctx.column + 1})"
        hint = None
        if exc.problem == "mapping values are not allowed here":
            hint = "quote values that contain ': ', such as rules or outbounds with 'key: value' params"
        diags.error(SourcePos(name, line, col), f"invalid YAML: {msg}", hint)
        raise CompileError(diags) from exc
    except Exception as exc:  # ruamel raises assorted errors for duplicate keys etc.
        mark = getattr(exc, "problem_mark", None)
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        diags.error(SourcePos(name, line, col), f"invalid YAML: {getattr(exc, 'problem', None) or exc}")
        raise CompileError(diags) from exc
    pos = PosMap(name, text)
    pos.set_value((), ScalarPos(1, 1, False))
    try:
        data = _plain(root, (), pos, diags, _Budget(len(text))) if root is not None else {}
    except _TooLarge:
        diags.error(SourcePos(name, 1, 1), f"invalid YAML: aliases expand the config to more than "
                    f"{len(text) + ALIAS_EXPANSION_NODES} nodes", "write the repeated parts out, or use fewer aliases")
        raise CompileError(diags) from None
    except RecursionError:
        diags.error(SourcePos(name, 1, 1), "invalid YAML: nested too deeply (or a recursive alias)")
        raise CompileError(diags) from None
    if diags.errors:
        raise CompileError(diags)
    return LoadedConfig(
        file=name,
        text=text,
        data=data,
        pos=pos,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
    )
