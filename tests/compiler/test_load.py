"""compiler/load.py's fast scanner for simple quoted scalars against ruamel's own scanner.

`_FastScanner` must produce exactly the tokens ruamel produces (values, styles, start and end marks,
comments attached by the round-trip scanner), so that load_config_text gives the same data, the
same positions and the same YAML errors. Inputs: hand-picked YAML documents full of quoting edge
cases, and random documents built from them.
"""
from __future__ import annotations

import random
from typing import Any

import pytest
from ruamel.yaml import YAML

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.load import _FastScanner, load_config_text

DOCS = [
    'a: "x"\n',
    "a: 'x'\n",
    'a: ""\nb: \'\'\n',
    'a: "dip(1.1.1.1, \'ff00::/8\') -> direct"\n',
    "a: 'it''s'\n",
    "a: 'x''\n",
    'a: "x\\"y"\n',
    'a: "tab\\there"\n',
    'a: "lit\ttab"\n',
    "a: 'lit\ttab'\n",
    'a: "trailing   "\n',
    'a: "  leading"\n',
    'a: "multi\n  line"\n',
    "a: 'multi\n\n  line'\n",
    'a: "x" # comment\nb: 1\n',
    '"quoted key": "v"\n\'k2\': \'v2\'\n',
    'a: ["x", \'y\', "z, w"]\n',
    'a: {k: "v", \'k2\': \'v2\'}\n',
    'l:\n  - "r1"\n  - \'r2\'\n  - "r3 \\u00e9"\n',
    'a: "é 中文 \U0001F600"\n',
    'a: "bom\ufeffinside"\n',
    'a: "nel\x85x"\n',
    'a: "ls\u2028x"\n',
    "a: 'sq \"dq\" \\\\ back'\n",
    'a: "dq \'sq\'"\n',
    'a: "unterminated\n',
    "a: 'unterminated\n",
    'a: "bad \\q escape"\n',
    'a: "x"y\n',
    'a: "x" "y"\n',
    '- "a"\n- "b": c\n',
    '? "complex"\n: "v"\n',
    'a: "x"\n---\nb: "y"\n',
    'a: "--- not a separator"\n',
    'a: "x\n---\ny"\n',
    'a: !tag "x"\n',
    'a: &anc "x"\nb: *anc\n',
    '"' + "k" * 1100 + '": v\n',
    'a: "' + "v, " * 5000 + '"\n',
    "a: '" + "v, " * 5000 + "'\n",
    'a: "x"\r\nb: \'y\'\r\n',
    'global: {lan_interface: [eth0]}\nrouting:\n  rules:\n    - "dip(1.1.1.1) -> direct"\n  fallback: "direct"\n',
]


def tokens(text: str, fast: bool) -> list[tuple]:
    yaml = YAML(typ="rt")
    if fast:
        yaml.Scanner = _FastScanner
    out = []
    for t in yaml.scan(text):
        sm, em = t.start_mark, t.end_mark
        out.append((type(t).__name__, getattr(t, "value", None), getattr(t, "style", None),
                    getattr(t, "plain", None), (sm.index, sm.line, sm.column), (em.index, em.line, em.column),
                    repr(getattr(t, "_comment", None))))
    return out


def outcome_tokens(text: str, fast: bool) -> tuple[object, ...]:
    try:
        return ("ok", tokens(text, fast))
    except Exception as exc:  # noqa: BLE001 - the same error either way
        return ("error", type(exc).__name__, str(exc))


def outcome_load(text: str, fast: bool) -> tuple[object, ...]:
    try:
        cfg = load_config_text(text, fast_scanner=fast)
    except CompileError as exc:
        return ("error", [(str(d.pos), d.message, d.hint) for d in exc.diagnostics.items])
    return ("ok", cfg.data, cfg.pos._values, cfg.pos._keys)


def check(text: str) -> None:
    assert outcome_tokens(text, True) == outcome_tokens(text, False), text[:300]
    assert outcome_load(text, True) == outcome_load(text, False), text[:300]


@pytest.mark.parametrize("text", DOCS, ids=range(len(DOCS)))
def test_documents(text: str) -> None:
    check(text)


PIECES = ['"x"', "'y'", '"a, b"', "'it''s'", '"q\\"q"', '"t\tt"', '""', "''", '"é"', "plain", '"x\n  y"',
          "'p\n q'", '"  sp  "', '"\\u0041"', "'\"'", '"\'"', '"\ufeff"', '"unterminated', "'open"]


def test_random_documents() -> None:
    rng = random.Random(5)
    for _ in range(300):
        lines = []
        for i in range(rng.randint(1, 6)):
            v = rng.choice(PIECES)
            form = rng.random()
            if form < 0.5:
                lines.append(f"k{i}: {v}")
            elif form < 0.7:
                lines.append(f"k{i}: [{v}, {rng.choice(PIECES)}]")
            elif form < 0.85:
                lines.append(f"{rng.choice(PIECES)}: {v}")
            else:
                lines.append(f"k{i}:\n  - {v}\n  - {rng.choice(PIECES)}  # c")
        check("\n".join(lines) + rng.choice(["\n", "", "\n\n", " \n"]))


def test_fast_scanner_is_used() -> None:
    """The big single-line rule string is the case this exists for: it must not fall back."""
    calls: list[object] = []
    base: Any = _FastScanner.__mro__[1]  # ruamel's scanner: untyped
    orig = base.scan_flow_scalar

    def spy(self: object, style: object) -> object:
        calls.append(style)
        return orig(self, style)

    base.scan_flow_scalar = spy
    try:
        load_config_text('a: "' + ", ".join(f"d{i}.com" for i in range(1000)) + '"\nb: \'x\'\n')
    finally:
        base.scan_flow_scalar = orig
    assert calls == []
