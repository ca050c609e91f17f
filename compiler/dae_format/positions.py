"""A `PosMap` for configs read from `.dae` files: the same questions, answered from `Text`s.

The YAML loader records one (line, column) per value and maps an offset inside a one-line string
by adding it to the column. A `.dae` value may come from another (included) file, span lines
(a rule broken after `&&`) or be joined from a list (`a, b`), so each value keeps its `Text`,
which knows the file, line and column of every character.
"""
from __future__ import annotations

from ..diagnostics import SourcePos
from ..load import JsonPath, PosMap
from .syntax import Text


class DaePosMap(PosMap):
    def __init__(self, file: str, text: str):
        super().__init__(file, text)
        self._texts: dict[JsonPath, Text] = {}
        self._at: dict[JsonPath, SourcePos] = {}
        self._key_at: dict[JsonPath, SourcePos] = {}

    def put(self, path: JsonPath, where: Text | SourcePos, key: SourcePos | None = None) -> None:
        if isinstance(where, Text):
            self._texts[path] = where
            self._at[path] = where.pos
        else:
            self._at[path] = where
        if key is not None:
            self._key_at[path] = key

    def text(self, path: JsonPath) -> Text | None:
        return self._texts.get(path)

    def value(self, path: JsonPath) -> SourcePos:
        p = path
        while p:
            if p in self._at:
                return self._at[p]
            p = p[:-1]
        return self._at.get((), SourcePos(self.file, 1, 1))

    def key(self, path: JsonPath) -> SourcePos:
        return self._key_at.get(path) or self.value(path)

    def in_string(self, path: JsonPath, offset: int) -> SourcePos:
        t = self._texts.get(path)
        if t is None:
            return self.value(path)
        return t.at(offset)
