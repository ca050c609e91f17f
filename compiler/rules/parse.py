"""Parse rule strings (and the structured mapping form) into `RuleAst`.

The grammar lives in grammar.lark; lark's LALR parser with its contextual lexer is fast enough for
configs with tens of thousands of rule parameters.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .ast import Call, Param, RuleAst


class RuleSyntaxError(Exception):
    """A rule that does not parse; `offset` is where in the string it went wrong."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.message = message
        self.offset = offset


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


def _param(node: Tree) -> Param:
    key_tok: Token | None = None
    value_tok: Token
    if len(node.children) == 2:
        key_tok, value_tok = node.children  # type: ignore[assignment]
    else:
        (value_tok,) = node.children  # type: ignore[assignment]
    raw = str(value_tok)
    quoted = value_tok.type == "STRING"
    value = _unquote(raw) if quoted else raw
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


def _unquote(s: str) -> str:
    if s.startswith('"'):
        return bytes(s[1:-1], "utf-8").decode("unicode_escape") if "\\" in s else s[1:-1]
    return s[1:-1]


def _call(node: Tree, negated: bool) -> Call:
    name_tok: Token = node.children[0]  # type: ignore[assignment]
    params = tuple(_param(c) for c in node.children[1:] if isinstance(c, Tree))
    has_parens = bool(params)
    return Call(name=str(name_tok), params=params, offset=name_tok.start_pos or 0, negated=negated,
                has_parens=has_parens)


def _parse(text: str, start: str) -> Tree:
    try:
        return _parser().parse(text, start=start)
    except UnexpectedCharacters as exc:
        pos = exc.pos_in_stream
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


def _terms(expr: Tree) -> tuple[Call, ...]:
    calls = []
    for term in expr.children:
        negated = len(term.children) == 2  # type: ignore[union-attr]
        calls.append(_call(term.children[-1], negated))  # type: ignore[union-attr,arg-type]
    return tuple(calls)


def parse_rule(text: str) -> RuleAst:
    """Parse one rule string; raises RuleSyntaxError with the offset of the bad token."""
    tree = _parse(text, "start")
    expr, outbound = tree.children
    return RuleAst(calls=_terms(expr), outbound=_call(outbound, False), text=text)  # type: ignore[arg-type]


def parse_outbound(text: str) -> Call:
    """Parse a lone outbound such as `proxy`, `must_direct` or `direct(mark: 0x800)`."""
    tree = _parse(text, "lone_outbound")
    return _call(tree.children[0], False)  # type: ignore[arg-type]


def parse_filter(text: str) -> tuple[tuple[Call, ...], Param | None]:
    """Parse a group filter: `name(keyword: hk) && !subtag(x) [add_latency: -500ms]`."""
    tree = _parse(text, "filter")
    expr = tree.children[0]
    extra = tree.children[1] if len(tree.children) > 1 and isinstance(tree.children[1], Tree) else None
    return _terms(expr), (_param(extra) if extra is not None else None)  # type: ignore[arg-type]


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
        (fname,) = [k for k in item if k != "not"]
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
    text = " && ".join(
        ("!" if c.negated else "") + f"{c.name}(" + ", ".join(
            (f"{p.key}: " if p.key else "") + f"'{p.value}'" for p in c.params) + ")" for c in calls
    ) + f" -> {rule['outbound']}"
    return RuleAst(calls=tuple(calls), outbound=outbound, text=text), paths


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
