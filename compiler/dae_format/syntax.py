"""Parse one `.dae` file into sections, declarations, literals and rule lines, with positions.

This is the syntax only (grammar.lark, lark's LALR parser): what a section means is the job of
`sections.py`. Every value keeps where each of its characters came from (`Text.segments`), so a
later stage that finds a problem at offset N of a rule or a link can point at its line and
column even when the rule spans lines or has comments inside.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from ..diagnostics import Diagnostics, SourcePos

MAX_SECTION_DEPTH = 16  # dae's deepest is dns { routing { request { } } }: 3


@dataclass(frozen=True)
class Segment:
    """Characters `offset..offset+len(raw)` of a value come from the source at `pos`, as `raw`."""

    offset: int
    pos: SourcePos
    raw: str


@dataclass(frozen=True)
class Text:
    """A value as the loader hands it on, and where each part of it was written."""

    value: str
    segments: tuple[Segment, ...]
    quoted: bool = False
    start: SourcePos | None = None  # where the value is written, when not at its first character (a quote)

    @property
    def pos(self) -> SourcePos:
        return self.start or self.segments[0].pos

    def at(self, offset: int) -> SourcePos:
        """The source position of character `offset` of `value` (clamped to the value)."""
        starts = [s.offset for s in self.segments]
        i = max(bisect.bisect_right(starts, offset) - 1, 0)
        seg = self.segments[i]
        delta = min(max(offset - seg.offset, 0), len(seg.raw))
        head = seg.raw[:delta]
        nl = head.count("\n")
        if not nl:
            return SourcePos(seg.pos.file, seg.pos.line, seg.pos.col + delta)
        return SourcePos(seg.pos.file, seg.pos.line + nl, delta - head.rfind("\n"))


@dataclass(frozen=True)
class Literal:
    text: Text


@dataclass(frozen=True)
class Declaration:
    """`key: value`; `literals` holds each comma-separated literal (empty for a function value)."""

    key: str
    key_pos: SourcePos
    value: Text
    literals: tuple[Text, ...]
    is_function: bool


@dataclass(frozen=True)
class Rule:
    text: Text


@dataclass(frozen=True)
class Section:
    name: str
    pos: SourcePos
    items: tuple[Item, ...]


Item = Literal | Declaration | Rule | Section

_TOKEN_NAMES = {
    "ID": "a name", "NON_ID": "a value", "QUOTED": "a quoted value", "ARROW": "'->'", "AND": "'&&'",
    "NOT": "'!'", "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "COLON": "':'", "COMMA": "','", "$END": "the end of the file",
}


@lru_cache(maxsize=1)
def parser() -> Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="basic", propagate_positions=True, keep_all_tokens=True)


class DaeSyntaxError(Exception):
    def __init__(self, pos: SourcePos, message: str, hint: str | None = None):
        super().__init__(message)
        self.pos = pos
        self.message = message
        self.hint = hint


def _expected(names: set[str]) -> str:
    shown = sorted({_TOKEN_NAMES.get(n, n) for n in names if not n.startswith("__")})
    return " or ".join(shown[:5])


def _syntax_error(exc: UnexpectedInput, file: str, text: str) -> DaeSyntaxError:
    line, col = max(exc.line, 1), max(exc.column, 1)
    if isinstance(exc, UnexpectedCharacters):
        at: int = getattr(exc, "pos_in_stream", None) or 0
        ch = text[at] if 0 <= at < len(text) else ""
        if ch and ch in "'\"":
            return DaeSyntaxError(SourcePos(file, line, col), f"unterminated quoted value (the {ch} is never closed)")
        hint = None
        if ch == ":":
            hint = "quote values that contain ':' (IPv6 addresses, MACs, URLs), e.g. 'ff00::/8'"
        shown = repr(ch) if ch else "end of file"
        return DaeSyntaxError(SourcePos(file, line, col), f"syntax error: unexpected character {shown}", hint)
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        if tok.type == "$END":
            line, col = _end_pos(text)
            exp = set(getattr(exc, "accepts", None) or exc.expected)
            return DaeSyntaxError(SourcePos(file, line, col),
                                  f"syntax error: unexpected end of file; expected {_expected(exp)}",
                                  "a section's '{' is never closed" if "RBRACE" in exp else None)
        expected = set(getattr(exc, "accepts", None) or exc.expected)
        hint = None
        if tok.type == "COLON":
            hint = "quote values that contain ':' (IPv6 addresses, MACs, URLs), e.g. 'ff00::/8'"
        elif tok.type == "RBRACE":
            hint = "a '}' without its '{'" if "RBRACE" not in expected else None
        what = _TOKEN_NAMES.get(tok.type, tok.type)
        if tok.type in ("ID", "NON_ID", "QUOTED"):
            what += f" {str(tok)[:40]!r}"
        return DaeSyntaxError(SourcePos(file, tok.line or line, tok.column or col),
                              f"syntax error: unexpected {what}; expected {_expected(expected)}", hint)
    if isinstance(exc, UnexpectedEOF):
        line, col = _end_pos(text)
        return DaeSyntaxError(SourcePos(file, line, col), "syntax error: unexpected end of file")
    return DaeSyntaxError(SourcePos(file, line, col), f"syntax error: {exc}")


def _end_pos(text: str) -> tuple[int, int]:
    line = text.count("\n") + 1
    return line, len(text) - (text.rfind("\n") + 1) + 1


class _Builder:
    def __init__(self, file: str, text: str):
        self.file = file
        self.text = text

    def pos(self, tok: Token) -> SourcePos:
        return SourcePos(self.file, tok.line or 1, tok.column or 1)

    def literal(self, tree: Tree[Token]) -> Text:
        tok = _only_token(tree)
        if tok.type == "QUOTED":
            inner = str(tok)[1:-1]
            return Text(inner, (Segment(0, SourcePos(self.file, tok.line or 1, (tok.column or 1) + 1), inner),),
                        quoted=True, start=self.pos(tok))
        return Text(str(tok), (Segment(0, self.pos(tok), str(tok)),))

    def joined(self, tree: Tree[Token]) -> Text:
        """The source text of `tree` as one line: tokens as written, the space between two tokens
        kept when it is blanks on one line, else (a line break, a comment) one space."""
        tokens = [t for t in tree.scan_values(lambda v: isinstance(v, Token))]
        parts: list[str] = []
        segs: list[Segment] = []
        n = 0
        prev: Token | None = None
        for tok in tokens:
            if prev is not None and prev.end_pos is not None and tok.start_pos is not None:
                gap = self.text[prev.end_pos:tok.start_pos]
                if gap and gap.strip(" \t") == "":
                    shown = gap
                elif gap:
                    shown = " "
                else:
                    shown = ""
                if shown:
                    segs.append(Segment(n, SourcePos(self.file, prev.end_line or 1, prev.end_column or 1), shown))
                    parts.append(shown)
                    n += len(shown)
            segs.append(Segment(n, self.pos(tok), str(tok)))
            parts.append(str(tok))
            n += len(str(tok))
            prev = tok
        return Text("".join(parts), tuple(segs))

    def literals(self, tree: Tree[Token]) -> tuple[Text, tuple[Text, ...]]:
        """`a, 'b', c` is one value `a,b,c` (dae joins the list with commas)."""
        items = [self.literal(c) for c in tree.children if isinstance(c, Tree)]
        segs: list[Segment] = []
        parts: list[str] = []
        n = 0
        commas = [c for c in tree.children if isinstance(c, Token)]
        for i, item in enumerate(items):
            if i:
                comma = commas[i - 1]
                segs.append(Segment(n, self.pos(comma), ","))
                parts.append(",")
                n += 1
            for s in item.segments:
                segs.append(Segment(n + s.offset, s.pos, s.raw))
            parts.append(item.value)
            n += len(item.value)
        return Text("".join(parts), tuple(segs), quoted=len(items) == 1 and items[0].quoted,
                    start=items[0].pos), tuple(items)

    def items(self, children: list[Tree[Token] | Token], depth: int) -> tuple[Item, ...]:
        out: list[Item] = []
        for child in children:
            if not isinstance(child, Tree):
                continue
            kind = child.data
            if kind == "section":
                name = _token(child.children[0])
                if depth >= MAX_SECTION_DEPTH:
                    raise DaeSyntaxError(self.pos(name), f"sections nested deeper than {MAX_SECTION_DEPTH} levels")
                out.append(Section(str(name), self.pos(name), self.items(child.children[2:-1], depth + 1)))
            elif kind == "declaration":
                key = _token(child.children[0])
                value_tree = child.children[2]
                assert isinstance(value_tree, Tree)
                if value_tree.data == "literals":
                    value, lits = self.literals(value_tree)
                    if len(child.children) > 3:  # `key: a [x: y]`: keep the annotation in the text
                        value = self.joined(Tree("value", child.children[2:]))
                    out.append(Declaration(str(key), self.pos(key), value, lits, False))
                else:
                    out.append(Declaration(str(key), self.pos(key), self.joined(Tree("value", child.children[2:])),
                                           (), True))
            elif kind == "rule":
                out.append(Rule(self.joined(child)))
            elif kind == "literal":
                out.append(Literal(self.literal(child)))
        return tuple(out)


def _token(child: Tree[Token] | Token) -> Token:
    assert isinstance(child, Token), child
    return child


def _only_token(tree: Tree[Token]) -> Token:
    return _token(tree.children[0])


def parse_dae(text: str, file: str) -> tuple[Item, ...]:
    """The items at the top of `text` (normally sections); DaeSyntaxError on a syntax error."""
    try:
        tree = parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, file, text) from None
    return _Builder(file, text).items(tree.children, 0)


def parse_dae_diags(text: str, file: str, diags: Diagnostics) -> tuple[Item, ...] | None:
    try:
        return parse_dae(text, file)
    except DaeSyntaxError as exc:
        diags.error(exc.pos, exc.message, exc.hint)
        return None
