"""`dae-compile --to-yaml config.dae`: the same config in this project's YAML format.

The YAML is written from the mapped config (the structure both loaders produce), so loading it
gives back exactly the same values, and the build is the same as the `.dae` file's (only the
file name, its hash and the source lines the build quotes differ). dae options this project
ignores, and the defaults dae fills in, are kept as comments where they were.
"""
from __future__ import annotations

import re
from typing import Any

from ..load import JsonPath
from .loader import map_dae_text

_PLAIN_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
_YAML_WORDS = {"true", "false", "null", "yes", "no", "on", "off", "y", "n", "~"}
# Characters a single-quoted YAML scalar cannot hold as they are (line breaks fold, controls are
# not allowed, a BOM is dropped): such strings are written double-quoted with escapes.
_NEEDS_ESCAPE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\ufeff\ud800-\udfff]")


def _quote(s: str) -> str:
    if not _NEEDS_ESCAPE.search(s):
        return "'" + s.replace("'", "''") + "'"
    out = []
    for ch in s:
        if ch == "\\":
            out.append("\\\\")
        elif ch == '"':
            out.append('\\"')
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif _NEEDS_ESCAPE.match(ch):
            out.append(f"\\u{ord(ch):04x}" if ord(ch) > 0xFF else f"\\x{ord(ch):02x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _key(k: str) -> str:
    if _PLAIN_KEY.match(k) and k.lower() not in _YAML_WORDS:
        return k
    return _quote(k)


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if v is None:
        return "null"
    return _quote(str(v))


class _Writer:
    def __init__(self, notes: list[tuple[JsonPath, str]]):
        self.lines: list[str] = []
        self.notes: dict[JsonPath, list[str]] = {}
        for path, text in notes:
            self.notes.setdefault(path, []).append(text)

    def mapping(self, m: dict[str, Any], path: JsonPath, indent: int) -> None:
        pad = "  " * indent
        for note in self.notes.get(path, ()):
            # a quoted dae value may span lines: a comment must stay one line
            self.lines.append(f"{pad}# " + _NEEDS_ESCAPE.sub(lambda m: f"\\x{ord(m.group(0)):02x}", note))
        for k, v in m.items():
            self.value(f"{pad}{_key(k)}:", v, path + (k,), indent)

    def value(self, head: str, v: Any, path: JsonPath, indent: int) -> None:
        if isinstance(v, dict):
            if not v:
                self.lines.append(f"{head} {{}}")
                self.mapping(v, path, indent + 1)  # its notes only
                return
            self.lines.append(head)
            self.mapping(v, path, indent + 1)
        elif isinstance(v, list):
            if not v:
                self.lines.append(f"{head} []")
                return
            self.lines.append(head)
            pad = "  " * (indent + 1)
            for i, item in enumerate(v):
                if isinstance(item, (dict, list)):
                    raise TypeError(f"nested collection at {path + (i,)}")  # the mapper makes none
                self.lines.append(f"{pad}- {_scalar(item)}")
        else:
            self.lines.append(f"{head} {_scalar(v)}")


def to_yaml(text: str, name: str) -> str:
    """The YAML equivalent of the `.dae` config `text` (CompileError when it does not load)."""
    mapped, sources = map_dae_text(text, name)
    w = _Writer(mapped.notes)
    w.lines.append(f"# Translated from {name} by dae-compile --to-yaml.")
    if len(sources) > 1:
        w.lines.append("# It includes: " + ", ".join(list(sources)[1:]))
    w.mapping(mapped.data, (), 0)
    return "\n".join(w.lines) + "\n"
