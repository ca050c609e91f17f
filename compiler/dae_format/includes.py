"""`include { ... }`: read the files a `.dae` config pulls in, the way dae merges them.

dae's rules (config/config_merger.go): a pattern is a path or a glob, relative to the folder of
the *entry* file (whichever file the include is written in) or absolute; only `.dae` files are
read, and they must lie under the entry file's folder; a file read twice is a circular include;
sections of the same name merge, the including file's items first, then each included file's
(recursively) in the order the patterns and the sorted glob matches give.

Where dae says nothing, this says something: a pattern that is a plain path and does not exist
is an error, a glob that matches no `.dae` file is a warning.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..diagnostics import Diagnostics, SourcePos
from ..readfile import read_capped_text
from .syntax import Declaration, Item, Literal, Section, Text, parse_dae_diags

MAX_INCLUDED_FILES = 256
_GLOB_CHARS = set("*?[")


@dataclass
class Sources:
    """Every file read for one config, in reading order (the entry first), and its text."""

    texts: dict[str, str] = field(default_factory=dict)


def _under(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
    except ValueError:
        return False
    return True


class IncludeReader:
    def __init__(self, entry: str, entry_text: str, diags: Diagnostics, max_bytes: int):
        self.entry = entry
        self.entry_dir = Path(entry).parent if entry != "<stdin>" else Path(".")
        self.diags = diags
        self.max_bytes = max_bytes
        self.sources = Sources({entry: entry_text})
        self._seen: dict[str, str] = {}  # resolved path -> the name it was read as

    def read(self) -> list[Section]:
        """The merged top-level sections of the entry file and everything it includes."""
        items = parse_dae_diags(self.sources.texts[self.entry], self.entry, self.diags)
        if items is None:
            return []
        if self.entry != "<stdin>":
            self._seen[str(Path(self.entry).resolve())] = self.entry
        return self._merge(self._file_sections(items, [self.entry]))

    def _file_sections(self, items: tuple[Item, ...], chain: list[str]) -> list[Section]:
        """This file's sections followed by those of the files it includes (depth first)."""
        own: list[Section] = []
        children: list[Section] = []
        for item in items:
            if not isinstance(item, Section):
                what = "a rule" if not isinstance(item, (Literal, Declaration)) else "a value"
                pos = item.key_pos if isinstance(item, Declaration) else item.text.pos
                self.diags.error(pos, f"{what} outside any section",
                                 "put it inside a section such as 'global { }' or 'routing { }'")
                continue
            if item.name != "include":
                own.append(item)
                continue
            for entry in item.items:
                if not isinstance(entry, Literal):
                    pos = entry.key_pos if isinstance(entry, Declaration) else (
                        entry.pos if isinstance(entry, Section) else entry.text.pos)
                    self.diags.error(pos, "include takes file names or globs, one per line",
                                     "e.g. include { config.d/*.dae }")
                    continue
                children.extend(self._include(entry.text, chain))
        return own + children

    def _include(self, pattern: Text, chain: list[str]) -> list[Section]:
        raw = pattern.value
        target = raw if os.path.isabs(raw) else str(self.entry_dir / raw)
        if _GLOB_CHARS & set(raw):
            found = sorted(p for p in glob.glob(target) if p.endswith(".dae") and not os.path.isdir(p))
            if not found:
                self.diags.warning(pattern.pos, f"include '{raw}' matches no .dae file")
                return []
        else:
            if not raw.endswith(".dae"):
                self.diags.error(pattern.pos, f"include '{raw}': an included file's name must end in .dae")
                return []
            if not os.path.exists(target):
                self.diags.error(pattern.pos, f"include '{raw}': no such file ({target})")
                return []
            if os.path.isdir(target):
                self.diags.error(pattern.pos, f"include '{raw}' is a directory", f"include '{raw}/*.dae' instead")
                return []
            found = [target]
        out: list[Section] = []
        for path in found:
            out.extend(self._read_one(path, pattern.pos, chain))
        return out

    def _read_one(self, path: str, at: SourcePos, chain: list[str]) -> list[Section]:
        real = str(Path(path).resolve())
        if real in self._seen:
            earlier = self._seen[real]
            if earlier in chain:
                cycle = " -> ".join(chain[chain.index(earlier):] + [path])
                self.diags.error(at, f"circular include: {cycle}")
            else:
                self.diags.error(at, f"'{path}' is included twice (first by way of {earlier})",
                                 "dae reads each file once: remove one of the includes")
            return []
        if not _under(Path(path), self.entry_dir):
            self.diags.error(at, f"include '{path}' is outside the config's folder ({self.entry_dir}/)",
                             "dae only includes files under the entry config's folder")
            return []
        if len(self._seen) >= MAX_INCLUDED_FILES:
            self.diags.error(at, f"more than {MAX_INCLUDED_FILES} included files")
            return []
        try:
            text = read_capped_text(Path(path), self.max_bytes, "included config", regular_only=True)
        except OSError as exc:
            self.diags.error(at, f"cannot read included config '{path}': {exc.strerror or exc}")
            return []
        except ValueError as exc:
            self.diags.error(at, f"cannot read included config '{path}': {exc}")
            return []
        self._seen[real] = path
        self.sources.texts[path] = text
        items = parse_dae_diags(text, path, self.diags)
        if items is None:
            return []
        return self._file_sections(items, chain + [path])

    @staticmethod
    def _merge(sections: list[Section]) -> list[Section]:
        """Sections of one name become one, their items in order (dae: mergeItems)."""
        merged: dict[str, Section] = {}
        for s in sections:
            if s.name in merged:
                first = merged[s.name]
                merged[s.name] = Section(first.name, first.pos, first.items + s.items)
            else:
                merged[s.name] = s
        return list(merged.values())
