"""Structural check of the config against schemas/config.schema.json (JSON Schema 2020-12).

Runs before any semantic check so that later stages may assume the shape is right; every schema
violation becomes a diagnostic at the position of the offending key or value.
"""
from __future__ import annotations

import json
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
    return [err]


def _message(err: ValidationError) -> tuple[str, str | None]:
    path = "/".join(str(p) for p in err.absolute_path) or "config"
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        allowed = err.schema.get("properties", {}).keys()
        names = ", ".join(repr(e) for e in extra)
        hint = did_you_mean(extra[0], allowed) if extra else None
        return f"unknown option {names} in {path}", hint
    if err.validator == "required":
        return f"{path}: {err.message}", None
    if err.validator == "enum":
        allowed = ", ".join(json.dumps(v) for v in err.validator_value)
        return f"{path}: {json.dumps(err.instance)} is not one of {allowed}", did_you_mean(
            str(err.instance), [str(v) for v in err.validator_value]
        )
    if err.validator == "pattern":
        return f"{path}: {json.dumps(err.instance)} is not valid here ({err.schema.get('description') or 'expected ' + err.validator_value})", None
    if err.validator in ("oneOf", "anyOf"):
        return f"{path}: {json.dumps(err.instance)[:80]} has the wrong type or form", None
    return f"{path}: {err.message}", None


def _position_path(err: ValidationError) -> tuple[Any, ...]:
    path = tuple(err.absolute_path)
    if err.validator == "additionalProperties":
        extra = sorted(set(err.instance) - set(err.schema.get("properties", {})))
        if extra:
            return path + (extra[0],)
    return path


def check_schema(cfg: LoadedConfig, diags: Diagnostics) -> bool:
    """Add a diagnostic per schema violation; True when the structure is valid."""
    if not isinstance(cfg.data, dict):
        diags.error(cfg.pos.value(()), "the config must be a mapping with a 'routing' section")
        return False
    ok = True
    for err in sorted(validator().iter_errors(cfg.data), key=lambda e: list(map(str, e.absolute_path))):
        for leaf in _leaf_errors(err):
            ok = False
            msg, hint = _message(leaf)
            path = _position_path(leaf)
            at = cfg.pos.key(path) if leaf.validator == "additionalProperties" else cfg.pos.value(path)
            diags.error(at, msg, hint)
    return ok
