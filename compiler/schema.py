"""Structural check of the config against schemas/config.schema.json (JSON Schema 2020-12).

Runs before any semantic check so that later stages may assume the shape is right; every schema
violation becomes a diagnostic at the position of the offending key or value.
"""
from __future__ import annotations

import json
import re
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .diagnostics import Diagnostics, did_you_mean
from .load import LoadedConfig

SCHEMA_PATH = Path(__file__).resolve().parent.parent / "schemas" / "config.schema.json"


@lru_cache(maxsize=1)
def validator() -> Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema)


def _leaf_errors(err: ValidationError) -> list[ValidationError]:
    """oneOf/anyOf errors are unhelpful on their own: report the branch that got furthest."""
    if err.validator in ("oneOf", "anyOf") and err.context:
        best = max(err.context, key=lambda e: (len(e.absolute_path), -len(e.context or [])))
        deeper = [e for e in err.context if len(e.absolute_path) == len(best.absolute_path)]
        # When every branch fails at the same depth, the plain type message is clearer.
        if len(best.absolute_path) > len(err.absolute_path):
            return _leaf_errors(best)
        _ = deeper
        # Same depth: when only one branch accepted the value's type (a mapping where a rule
        # may be a string or a mapping), its own complaint is the useful one.
        if _unquoted_rule(err):
            return [err]
        typed = [e for e in err.context if e.validator != "type"]
        branches = {e.relative_schema_path[0] for e in typed if e.relative_schema_path}
        if typed and len(branches) == 1:
            return [leaf for e in typed for leaf in _leaf_errors(e)]
    return [err]


def _unquoted_rule(err: ValidationError) -> bool:
    """`- domain(suffix: a.com) -> x` unquoted: YAML made a one-key mapping of the rule."""
    inst = err.instance
    return (isinstance(inst, dict) and len(inst) == 1 and "(" in str(next(iter(inst)))
            and tuple(err.absolute_path)[:2] == ("routing", "rules"))


def _subschema(err: ValidationError) -> Mapping[str, Any]:
    """The schema object whose keyword failed. A mapping for every keyword handled here: only a
    boolean schema (`false`) is not, and its errors take the generic message."""
    schema = err.schema
    assert isinstance(schema, Mapping), schema
    return schema


def _keyword_value(err: ValidationError) -> Any:
    """The failed keyword's value (`required`'s names, `enum`'s values, `pattern`'s regex): always
    set on the errors `iter_errors` yields, though the stubs allow an `Unset` sentinel."""
    value: Any = err.validator_value
    return value


def _instance(err: ValidationError) -> Any:
    """The config value that failed: always set on the errors `iter_errors` yields (as above)."""
    value: Any = err.instance
    return value


def _message(err: ValidationError) -> tuple[str, str | None]:
    path = "/".join(str(p) for p in err.absolute_path) or "config"
    if err.validator == "additionalProperties":
        extra = sorted(_extra_keys(err))
        allowed = list(_subschema(err).get("properties", {}).keys())
        for pattern in _subschema(err).get("patternProperties", {}):
            # '^(dip|ip|...)$': the names a structured match item may use.
            m = re.fullmatch(r"\^\(([\w|]+)\)\$", pattern)
            if m:
                allowed += m.group(1).split("|")
        names = ", ".join(repr(e) for e in extra)
        hint = did_you_mean(extra[0], allowed) if extra else None
        return f"unknown option {names} in {path}", hint
    if err.validator == "required":
        missing = [k for k in _keyword_value(err) if k not in _instance(err)]
        what = ", ".join(repr(k) for k in missing) or err.message
        return f"{path}: missing required option {what}", None
    if err.validator == "enum":
        values = ", ".join(json.dumps(v, ensure_ascii=False) for v in _keyword_value(err))
        return f"{path}: {json.dumps(err.instance, ensure_ascii=False)} is not one of {values}", did_you_mean(
            str(err.instance), [str(v) for v in _keyword_value(err)]
        )
    if err.validator == "pattern":
        expected = _subschema(err).get("description") or f"expected {_keyword_value(err)}"
        return f"{path}: {json.dumps(err.instance, ensure_ascii=False)} is not valid here ({expected})", None
    if err.validator in ("oneOf", "anyOf"):
        hint = None
        inst = err.instance
        if _unquoted_rule(err):
            # `- domain(suffix: a.com) -> x` unquoted: YAML reads 'key: value' inside it as a mapping.
            hint = "quote the rule: unquoted, YAML reads the ': ' inside it as a mapping"
        ap = tuple(err.absolute_path)
        if len(ap) == 3 and ap[:2] == ("routing", "rules") and not hint:
            shown = json.dumps(inst, default=str, ensure_ascii=False)[:80]
            return (f"{path}: {shown} is neither a rule string nor a rule mapping "
                    "(match: [...], outbound: ...)"), None
        return f"{path}: {json.dumps(inst, default=str, ensure_ascii=False)[:80]} has the wrong type or form", hint
    return f"{path}: {err.message}", None


def _extra_keys(err: ValidationError) -> set[str]:
    """The keys additionalProperties rejected (neither a property nor matching a pattern)."""
    props = set(_subschema(err).get("properties", {}))
    patterns = [re.compile(p) for p in _subschema(err).get("patternProperties", {})]
    return {k for k in _instance(err) if k not in props and not any(p.search(k) for p in patterns)}


def _position_path(err: ValidationError) -> tuple[Any, ...]:
    path = tuple(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(_extra_keys(err))
        if extra:
            return path + (extra[0],)
    return path


def check_schema(cfg: LoadedConfig, diags: Diagnostics) -> bool:
    """Add a diagnostic per schema violation; True when the structure is valid."""
    if not isinstance(cfg.data, dict):
        diags.error(cfg.pos.value(()), "the config must be a mapping with a 'routing' section")
        return False
    ok = True
    seen: set[tuple[Any, ...]] = set()
    for err in sorted(validator().iter_errors(cfg.data), key=lambda e: list(map(str, e.absolute_path))):
        for leaf in _leaf_errors(err):
            ok = False
            msg, hint = _message(leaf)
            path = _position_path(leaf)
            # A missing option: point at the key of the section that lacks it (at the value, the
            # caret would land on whatever option happens to come first in that section).
            at = cfg.pos.key(path) if leaf.validator in ("additionalProperties", "required") else cfg.pos.value(path)
            if (at, msg) in seen:
                continue
            seen.add((at, msg))
            diags.error(at, msg, hint)
    return ok
