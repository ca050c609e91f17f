"""One diagnostic type and one renderer, used by every compiler stage.

Every stage reports problems as `Diagnostic`s carrying a source position; nothing is printed until
the edge (the CLI) renders them all at once, compiler-style: `file:line:col: error: message`, the
source line, and a caret under the offending token.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum

from .urls import mask_secrets, mask_with_column

SHOW_LINE_CHARS = 160  # source lines longer than this are shown as a window around the caret


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, order=True)
class SourcePos:
    """A 1-based line and column in a config file."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


@dataclass(frozen=True)
class Diagnostic:
    severity: Severity
    pos: SourcePos
    message: str
    hint: str | None = None

    def render(self, source_lines: list[str] | None = None) -> str:
        """Every part shown is masked (mask_secrets): node links carry passwords, and a message
        quoting a link or the echoed source line would otherwise print them."""
        out = [f"{self.pos}: {self.severity.value}: {mask_secrets(self.message)}"]
        if source_lines and 1 <= self.pos.line <= len(source_lines):
            text, caret = mask_with_column(source_lines[self.pos.line - 1].rstrip("\n"), max(self.pos.col - 1, 0))
            if len(text) > SHOW_LINE_CHARS:
                # A rule with thousands of inline values is one line of megabytes: show a window
                # around the caret, marked with '...' where it was cut.
                start = max(0, min(caret - SHOW_LINE_CHARS // 2, len(text) - SHOW_LINE_CHARS))
                stop = start + SHOW_LINE_CHARS
                head, tail = ("..." if start > 0 else ""), ("..." if stop < len(text) else "")
                text = head + text[start:stop] + tail
                caret = caret - start + len(head)
            out.append(f"  {text}")
            out.append("  " + " " * caret + "^")
        if self.hint:
            out.append(f"  hint: {mask_secrets(self.hint)}")
        return "\n".join(out)


@dataclass
class Diagnostics:
    """Collects every problem of a run so the user sees all of them at once."""

    items: list[Diagnostic] = field(default_factory=list)

    def error(self, pos: SourcePos, message: str, hint: str | None = None) -> None:
        self.items.append(Diagnostic(Severity.ERROR, pos, message, hint))

    def warning(self, pos: SourcePos, message: str, hint: str | None = None) -> None:
        self.items.append(Diagnostic(Severity.WARNING, pos, message, hint))

    def extend(self, other: Iterable[Diagnostic]) -> None:
        self.items.extend(other)

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.WARNING]

    def sorted(self) -> list[Diagnostic]:
        # Stable order: by position, errors before warnings at the same spot.
        return sorted(self.items, key=lambda d: (d.pos, d.severity is Severity.WARNING, d.message))

    def render(self, source_text: str | None = None) -> str:
        lines = source_text.splitlines() if source_text is not None else None
        return "\n".join(d.render(lines) for d in self.sorted())


class CompileError(Exception):
    """Raised when a stage found errors; carries all diagnostics collected so far."""

    def __init__(self, diagnostics: Diagnostics):
        self.diagnostics = diagnostics
        first = diagnostics.errors[0] if diagnostics.errors else None
        super().__init__(f"{first.pos}: {mask_secrets(first.message)}" if first else "compile failed")


def did_you_mean(word: str, candidates: Iterable[str]) -> str | None:
    """A 'did you mean' hint for a misspelt name, or None when nothing is close."""
    close = difflib.get_close_matches(word, sorted(set(candidates)), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else None
