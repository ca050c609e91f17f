"""Load a `.dae` config (and what it includes) into a `LoadedConfig`, as the YAML loader does."""
from __future__ import annotations

import hashlib
import re

from ..diagnostics import CompileError, Diagnostics
from ..load import LoadedConfig
from .includes import IncludeReader
from .sections import Mapped, Mapper

MAX_BYTES = 64 << 20  # the YAML loader's CONFIG_MAX_BYTES, per file

# The first thing in a `.dae` file that is not a comment is `name {` (YAML: `name:` or `---`).
_DAE_START = re.compile(r"\A(?:\s+|#[^\n]*|/\*.*?\*/)*[A-Za-z_][A-Za-z0-9_]*\s*\{", re.S)
_YAML_SUFFIXES = (".yaml", ".yml", ".json")


def looks_like_dae(text: str, name: str) -> bool:
    """`.dae` files are dae's format; YAML suffixes are YAML; anything else (stdin, `config`)
    is dae's format when it starts like a section."""
    if name.endswith(".dae"):
        return True
    if name.endswith(_YAML_SUFFIXES):
        return False
    return _DAE_START.match(text[:4096]) is not None


def map_dae_text(text: str, name: str) -> tuple[Mapped, dict[str, str]]:
    """The mapped config and the text of every file read (entry first); CompileError on errors."""
    diags = Diagnostics()
    reader = IncludeReader(name, text, diags, MAX_BYTES)
    sections = reader.read()
    mapped = Mapper(name, text, diags).map(sections)
    if diags.errors:
        raise CompileError(diags)
    mapped.warnings = diags.warnings
    return mapped, reader.sources.texts


def load_dae_text(text: str, name: str = "config.dae") -> LoadedConfig:
    mapped, sources = map_dae_text(text, name)
    if len(sources) == 1:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    else:  # every file read counts: a change to an included file is a change to the config
        h = hashlib.sha256()
        for file, body in sources.items():
            h.update(file.encode("utf-8", "surrogateescape") + b"\0" + body.encode("utf-8") + b"\0")
        digest = h.hexdigest()
    return LoadedConfig(file=name, text=text, data=mapped.data, pos=mapped.pos, sha256=digest,
                        load_warnings=tuple(mapped.warnings))
