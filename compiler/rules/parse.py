"""Parse rule strings (and the structured mapping form) into `RuleAst`.

The grammar lives in grammar.lark and lark's LALR parser (contextual lexer) is the reference.
`parse_rule` first tries a hand-written scanner built from the grammar's own terminal regexes
(`_fast_rule`): it walks `func(params) && ... -> outbound(params)` with a handful of compiled
regexes, one `match` per parameter, and builds the same AST as the lark path. Lark costs ~35 us
per parameter (token objects, tree nodes, positions), which made a rule with 100,000 inline values
take 3-5 s to parse; the scanner ~2 us (bench/results/compile-time-after-fastparse.md).

The scanner accepts exactly what the grammar accepts for the `start` entry point, and on anything
else it gives up and lark parses the rule, so every syntax error message comes from lark. To keep
that fast for an error at the end of a huge parameter list, the parameter lists the scanner has
already accepted are blanked out (all but their first parameter replaced by spaces, so every offset
stays the same and lark reaches the same parser state) before lark sees the string.
tests/compiler/test_fastparse.py compares both paths over many random and edge-case rules.
"""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .ast import Call, Param, RuleAst


class RuleSyntaxError(Exception):
    """A rule that does not parse; `offset` is where in the string it went wrong."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.message = message
        self.offset = offset


class StructuredRuleError(Exception):
    """A structured rule whose shape the schema cannot rule out; `path` is inside the rule mapping."""

    def __init__(self, message: str, path: tuple[Any, ...], hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.path = path
        self.hint = hint


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = (Path(__file__).parent / "grammar.lark").read_text()
    return Lark(grammar, parser="lalr", lexer="contextual", propagate_positions=True,
                start=["start", "lone_outbound", "filter"])


_TOKEN_NAMES = {
    "_ARROW": "'->'", "_AND": "'&&'", "NOT": "'!'", "NAME": "a function name", "OUTNAME": "an outbound",
    "KEY": "a 'key:'", "STRING": "a quoted value", "BARE": "a value", "LPAR": "'('", "RPAR": "')'",
    "COMMA": "','", "$END": "the end of the rule", "LSQB": "'['", "RSQB": "']'",
}
# The three entry points share one LALR table, so a rule's "expected" set can list tokens that
# only a group filter accepts ('[add_latency: X]'); they are dropped from messages about rules.
_FILTER_ONLY = {"LSQB", "RSQB"}


def _describe(expected: set[str], start: str = "filter") -> str:
    if start != "filter":
        expected = set(expected) - _FILTER_ONLY
    names = sorted({_TOKEN_NAMES.get(e, e) for e in expected})
    return " or ".join(names[:4])


def _token(child: Tree[Token] | Token) -> Token:
    """A child the grammar makes a terminal (a name, a value, a key)."""
    assert isinstance(child, Token), child
    return child


def _tree(child: Tree[Token] | Token) -> Tree[Token]:
    """A child the grammar makes a rule (a term, a call, a param)."""
    assert isinstance(child, Tree), child
    return child


def _param(node: Tree[Token]) -> Param:
    key_tok: Token | None = None
    if len(node.children) == 2:
        key_tok, value_tok = _token(node.children[0]), _token(node.children[1])
    else:
        (only,) = node.children
        value_tok = _token(only)
    raw = str(value_tok)
    quoted = value_tok.type == "STRING"
    value = _unquote(raw, value_tok.start_pos or 0) if quoted else raw
    key = str(key_tok).rstrip(" \t:").strip() if key_tok is not None else None
    start = key_tok.start_pos if key_tok is not None else value_tok.start_pos
    return Param(
        key=key,
        value=value,
        offset=start or 0,
        value_offset=(value_tok.start_pos or 0) + (1 if quoted else 0),
        quoted=quoted,
        raw_key=str(key_tok) if key_tok is not None else None,
    )


# One backslash escape in a double-quoted value, as Python's unicode_escape reads it.
_ESCAPE = re.compile(r"\\(?:x[0-9A-Fa-f]{2}|u[0-9A-Fa-f]{4}|U[0-9A-Fa-f]{8}|N\{[^}]*\}|[0-7]{1,3}|.)", re.S)


def _unescape(m: re.Match[str], offset: int) -> str:
    try:
        out = m.group(0).encode("ascii", "backslashreplace").decode("unicode_escape")
        out.encode("utf-8")
    except (UnicodeDecodeError, UnicodeEncodeError):
        raise RuleSyntaxError(f"invalid escape {m.group(0)!r} in a quoted value", offset + 1 + m.start()) from None
    return out


def _unquote(s: str, offset: int = 0) -> str:
    """The text of a quoted value whose opening quote is at `offset` in the rule; escapes are decoded one by
    one (non-ASCII text stays as written), a bad one (`\\x`, a lone surrogate) is a syntax error."""
    if s.startswith('"'):
        return _ESCAPE.sub(lambda m: _unescape(m, offset), s[1:-1]) if "\\" in s else s[1:-1]
    return s[1:-1]


def _call(node: Tree[Token], negated: bool) -> Call:
    name_tok = _token(node.children[0])
    params = tuple(_param(c) for c in node.children[1:] if isinstance(c, Tree))
    has_parens = bool(params)
    return Call(name=str(name_tok), params=params, offset=name_tok.start_pos or 0, negated=negated,
                has_parens=has_parens)


def _parse(text: str, start: str, lark_text: str | None = None) -> Tree[Token]:
    """Parse with lark; `lark_text` (same length as `text`, same meaning up to the first error)
    is what lark reads when given, `text` is what messages quote."""
    try:
        return _parser().parse(text if lark_text is None else lark_text, start=start)
    except UnexpectedCharacters as exc:
        pos = cast(int, exc.pos_in_stream)  # lark types it None on the base class; this subclass sets an int
        ch = text[pos]
        if ch in "'\"" and ch not in text[pos + 1:]:
            raise RuleSyntaxError(f"unterminated quoted value (no closing {ch})", pos) from None
        raise RuleSyntaxError(f"unexpected character {ch!r}", pos) from None
    except UnexpectedToken as exc:
        if exc.token.type == "$END":
            raise RuleSyntaxError(f"rule ends early; expected {_describe(exc.expected, start)}", len(text)) from None
        pos = exc.token.start_pos or 0
        # '->' where it does not fit lexes as a value '-' followed by '>': show what was written.
        shown = "->" if text.startswith("->", pos) else str(exc.token)
        raise RuleSyntaxError(f"unexpected {shown!r}; expected {_describe(exc.expected, start)}", pos) from None
    except UnexpectedEOF as exc:
        raise RuleSyntaxError(f"rule ends early; expected {_describe(set(exc.expected), start)}", len(text)) from None
    except UnexpectedInput as exc:  # pragma: no cover - lark's other input errors
        raise RuleSyntaxError(str(exc).splitlines()[0], getattr(exc, "pos_in_stream", 0) or 0) from None


def _terms(expr: Tree[Token]) -> tuple[Call, ...]:
    calls = []
    for child in expr.children:
        term = _tree(child)
        negated = len(term.children) == 2
        calls.append(_call(_tree(term.children[-1]), negated))
    return tuple(calls)


# ---- the fast path ---------------------------------------------------------------------------
# The grammar's terminals, as lark compiles them (see grammar.lark). WS is %ignore'd between tokens.
# Comments (`# ...` to the end of the line, `/* ... */`) are %ignore'd like WS; atomic, so the
# regexes never give back part of a comment to read it as a value.
_WS = r"(?>(?:[ \t\f\r\n]+|#[^\n]*|/\*[\s\S]*?\*/)*)"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_OUTNAME = r"[A-Za-z_\u00aa-\uffff][A-Za-z0-9_.\u00aa-\uffff-]*"
_KEY = r"[A-Za-z_][A-Za-z0-9_-]*[ \t]*:"
_STRING = r"""(?:"(?:\\.|[^"\\])*"|'[^']*')"""
_BARE = r"""[^\s,()'"!&>\[\]#][^\s,()'"&>\[\]]*"""

# One parameter and the ',' or ')' after it. Where a parameter starts, lark's lexer tries KEY first
# (priority 2) and keeps it when it matches, so KEY sits in an atomic group: no backtracking to read
# 'a:' as a BARE value when no value follows the key (lark reports an error there).
_PARAM = re.compile(rf"{_WS}(?>(?P<key>{_KEY}){_WS}|)(?P<val>(?>{_STRING}|{_BARE})){_WS}(?P<sep>[,)])")
_EMPTY = re.compile(rf"{_WS}\)")
_TERM = re.compile(rf"{_WS}(?P<not>!{_WS})?(?P<name>{_NAME}){_WS}\(")
_AND_OR_ARROW = re.compile(rf"{_WS}(?:(?P<and>&&)|->)")
_OUTBOUND = re.compile(rf"{_WS}(?P<name>{_OUTNAME}){_WS}(?P<lpar>\()?")
_END = re.compile(rf"{_WS}\Z")


class _GiveUp(Exception):
    """The fast path does not accept the rule; `blanked` is the text for lark (see module doc)."""

    def __init__(self, blanked: str):
        self.blanked = blanked


def _fast_params(text: str, pos: int, spans: list[tuple[int, int]]) -> tuple[tuple[Param, ...], int]:
    """Parameters from just after '(' to just after ')'. Appends to `spans` the region that can be
    blanked for lark: from the end of the first parameter to the last ',' read (exclusive)."""
    m = _EMPTY.match(text, pos)
    if m is not None:
        return (), m.end()
    params: list[Param] = []
    append = params.append
    match = _PARAM.match
    new = tuple.__new__
    first_end = -1
    last_comma = -1
    while True:
        m = match(text, pos)
        if m is None:
            if last_comma > first_end:
                spans.append((first_end, last_comma))
            raise _GiveUp(text)
        key, val, sep = m.groups()
        vstart = m.start(2)
        c = val[0]
        if c == "'" or c == '"':
            param = (None if key is None else key.rstrip(" \t:").strip(), _unquote(val, vstart),
                     vstart if key is None else m.start(1), vstart + 1, True, key)
        elif key is None:
            param = (None, val, vstart, vstart, False, None)
        else:
            param = (key.rstrip(" \t:").strip(), val, m.start(1), vstart, False, key)
        append(new(Param, param))
        pos = m.end()
        if first_end < 0:
            first_end = vstart + len(val)
        if sep == ")":
            if len(params) > 1:
                spans.append((first_end, pos - 1))
            return tuple(params), pos
        last_comma = pos - 1


def _blank(text: str, spans: list[tuple[int, int]]) -> str:
    if not spans:
        return text
    parts = []
    at = 0
    for a, b in spans:
        parts.append(text[at:a])
        parts.append(" " * (b - a))
        at = b
    parts.append(text[at:])
    return "".join(parts)


def _fast_rule(text: str) -> RuleAst:
    """The scanner described in the module docstring; raises _GiveUp when lark must decide."""
    spans: list[tuple[int, int]] = []
    try:
        calls = []
        pos = 0
        while True:
            m = _TERM.match(text, pos)
            if m is None:
                raise _GiveUp(text)
            params, pos = _fast_params(text, m.end(), spans)
            calls.append(Call(m.group("name"), params, m.start("name"), m.group("not") is not None, bool(params)))
            m = _AND_OR_ARROW.match(text, pos)
            if m is None:
                raise _GiveUp(text)
            pos = m.end()
            if m.group("and") is None:
                break
        m = _OUTBOUND.match(text, pos)
        if m is None:
            raise _GiveUp(text)
        params = ()
        pos = m.end()
        if m.group("lpar") is not None:
            params, pos = _fast_params(text, pos, spans)
        if _END.match(text, pos) is None:
            raise _GiveUp(text)
        return RuleAst(calls=tuple(calls), outbound=Call(m.group("name"), params, m.start("name"), False,
                                                         bool(params)), text=text)
    except _GiveUp:
        raise _GiveUp(_blank(text, spans)) from None


def parse_rule(text: str) -> RuleAst:
    """Parse one rule string; raises RuleSyntaxError with the offset of the bad token."""
    try:
        return _fast_rule(text)
    except _GiveUp as give_up:
        lark_text = give_up.blanked
    tree = _parse(text, "start", lark_text)
    if lark_text is not text:  # lark accepted what the scanner gave up on: parse the real text
        tree = _parse(text, "start")
    return _lark_rule(text, tree)


def parse_rule_lark(text: str) -> RuleAst:
    """The reference path (lark only); the tests compare `parse_rule` against it."""
    return _lark_rule(text, _parse(text, "start"))


def _lark_rule(text: str, tree: Tree[Token]) -> RuleAst:
    expr, outbound = tree.children
    return RuleAst(calls=_terms(_tree(expr)), outbound=_call(_tree(outbound), False), text=text)


def parse_outbound(text: str) -> Call:
    """Parse a lone outbound such as `proxy`, `must_direct` or `direct(mark: 0x800)`."""
    tree = _parse(text, "lone_outbound")
    return _call(_tree(tree.children[0]), False)


def parse_filter(text: str) -> tuple[tuple[Call, ...], Param | None]:
    """Parse a group filter: `name(keyword: hk) && !subtag(x) [add_latency: -500ms]`."""
    tree = _parse(text, "filter")
    expr = _tree(tree.children[0])
    extra = tree.children[1] if len(tree.children) > 1 and isinstance(tree.children[1], Tree) else None
    return _terms(expr), (_param(extra) if extra is not None else None)


def parse_structured_rule(rule: dict[str, Any]) -> tuple[RuleAst, list[tuple[Any, ...]]]:
    """Turn the structured mapping form into the same AST.

    Returns the AST and, per call, the sub-path (inside the rule mapping) of that call's node, so
    positions can point into the YAML instead of into a rule string. There is no string to index
    into, so offsets mean something else here: a call's offset is -1 and a param's offset (and
    value_offset) is its index in the call; `structured_param_path` turns one into a sub-path.
    """
    calls: list[Call] = []
    paths: list[tuple[Any, ...]] = []
    for i, item in enumerate(rule["match"]):
        negated = bool(item.get("not", False))
        names = [k for k in item if k != "not"]
        if len(names) != 1:
            raise StructuredRuleError(
                "a match item needs exactly one function" + (f", not {len(names)} ({', '.join(names)})" if names else
                                                             " besides 'not'"),
                ("match", i), "write one item per function: they are ANDed")
        (fname,) = names
        raw = item[fname]
        values = raw if isinstance(raw, list) else [raw]
        params = []
        for j, v in enumerate(values):
            if isinstance(v, dict):
                ((k, val),) = v.items()
                params.append(Param(key=str(k), value=str(val), offset=j, value_offset=j, quoted=True))
            else:
                params.append(Param(key=None, value=str(v), offset=j, value_offset=j, quoted=True))
        calls.append(Call(name=fname, params=tuple(params), offset=-1, negated=negated))
        paths.append(("match", i, fname))
    out_params: list[Param] = []
    if "mark" in rule:
        out_params.append(Param(key="mark", value=str(rule["mark"]), offset=0, value_offset=0, quoted=False))
    if rule.get("must"):
        out_params.append(Param(key=None, value="must", offset=0, value_offset=0, quoted=False))
    outbound = Call(name=str(rule["outbound"]), params=tuple(out_params), offset=0, has_parens=bool(out_params))
    return RuleAst(calls=tuple(calls), outbound=outbound, text=_structured_text(calls, outbound.name)), paths


def _structured_text(calls: list[Call] | tuple[Call, ...], outbound: str, per_call: int | None = None) -> str:
    """The rule-string form of a structured rule; with `per_call`, each call keeps the parameters
    that start within `per_call` characters of its first and says how many it leaves out."""
    parts = []
    for c in calls:
        shown: list[str] = []
        width = 0
        for p in c.params:
            s = (f"{p.key}: " if p.key else "") + f"'{p.value}'"
            if per_call is not None and shown and width > per_call:
                shown.append(f"... ({len(c.params) - len(shown)} more parameters)")
                break
            shown.append(s)
            width += len(s) + 2
        parts.append(("!" if c.negated else "") + f"{c.name}(" + ", ".join(shown) + ")")
    return " && ".join(parts) + f" -> {outbound}"


ABBREV_CHARS = 1000  # rules up to this long are shown as written
ABBREV_CALL_CHARS = 200  # longer ones keep the parameters that start this close to their call's first


def abbreviate(ast: RuleAst, limit: int = ABBREV_CHARS, per_call: int = ABBREV_CALL_CHARS) -> str | None:
    """A short form of a long rule for program.c comments and manifest.json, or None when the rule
    is short enough to show as written. Each call's parameter list is cut after the parameters that
    start within `per_call` characters of its first one, e.g.
    `domain(a.com, b.com, ... (99998 more parameters)) -> direct`; everything else is kept verbatim.
    Deterministic: it depends on the rule text only."""
    text = ast.text
    if len(text) <= limit:
        return None
    if any(c.offset < 0 for c in ast.calls):  # the structured form: offsets are indexes
        short = _structured_text(ast.calls, ast.outbound.name, per_call)
        return short if short != text else None
    calls = ast.calls + (ast.outbound,)
    out = []
    at = 0
    for i, call in enumerate(calls):
        ps = call.params
        first = ps[0].offset if ps else 0
        k = 1
        while k < len(ps) and ps[k].offset - first <= per_call:
            k += 1
        if k >= len(ps):
            continue
        end = calls[i + 1].offset if i + 1 < len(calls) else len(text)
        close = text.rfind(")", ps[-1].offset, end)  # this call's ')': the last one before the next call
        if close < 0:  # cannot happen for a parsed rule string; keep the text as written
            continue
        head = text[at:ps[k].offset].rstrip()
        out.append((head[:-1] if head.endswith(",") else head) + f", ... ({len(ps) - k} more parameters)")
        at = close
    if not out:
        return None
    out.append(text[at:])
    return "".join(out)


def structured_param_path(rule: dict[str, Any], call_path: tuple[Any, ...], offset: int) -> tuple[Any, ...]:
    """Sub-path of param `offset` (see parse_structured_rule) of the call at `call_path`."""
    if offset < 0:
        return call_path
    _, i, fname = call_path
    raw = rule["match"][i][fname]
    if not isinstance(raw, list):
        return call_path
    item = raw[offset] if offset < len(raw) else None
    if isinstance(item, dict) and len(item) == 1:
        return call_path + (offset, next(iter(item)))
    return call_path + (offset,)
