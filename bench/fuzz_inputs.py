"""Fuzz inputs for the compiler front end: real configs as seeds, a mutator, and one run.

Shared by tests/compiler/test_fuzz_frontend.py (hypothesis drives `mutate` for a few seconds in
CI) and bench/fuzz_compiler.py (the long campaign). The seeds are examples/config.yaml and every
config written inside the tests (string constants holding a `routing:` section); the mutator
applies a few edits aimed at what broke before: escapes, surrogates, brackets, aliases and merge
keys, regex repeats, numbers and durations at their edges, links with credentials, names that
collide in C, bytes that are not UTF-8.
"""
from __future__ import annotations

import ast
import random
import re
import textwrap
import traceback
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# Fragments that once crashed the compiler or sit on a boundary.
SNIPPETS = [
    "\\x", "\\ud800", "\\U0010ffff", "\\", '"', "'", "''", "{", "}", "[", "]", "(", ")", ",", ":", ": ", "&a ", "*a",
    "<<: *a", "!tag ", "#", "%", "\t", "\n", "\x00", "\ufeff", "\u2028", "->", "&&", "!",
    "a{4294967296}", "a{1001}", "(a+)+$", "(?=x)", "[::1", "[::1]:99999", "socks5://u:pw@[::1", "socks5://u:pw@h:0",
    "vmess://eyJhZGQiOiJ4In0=", "ss://YWVz@h:1", "file:///dev/zero", "file://missing.txt", "h-k", "h_k", "H.K",
    "pname(", "dip(", "domain(regex: '(')", "domain(\"\\x\")", "{not: true}", "{dip: 1.1.1.1, dport: 80}",
    "geoip:cn", "geosite:cn@ads", "ext:\"x.dat:y\"", "mac(02:42:ac:11:00:02)", "dscp(64)", "fixed(99)",
    "must_rules", "direct(mark: 0x1ffffffff)", "[add_latency: -9999h]", "qname(suffix: a)", "upstream(x)",
]
NUMBERS = ["0", "-1", "1", "65535", "65536", "4294967295", "4294967296", "1e400", ".nan", ".inf", "-.inf",
           "0x7fffffff", "9" * 30, "0s", "-1s", "0.000001ns", "99999999h", "1m30s", "true", "null", "~", "[]", "{}"]
_TOKEN = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*|[0-9]+(?:\.[0-9]+)?(?:ns|us|ms|s|m|h)?")


_RULE = re.compile(r"^!?[a-z0-9_]+\(.*\)\s*->\s*\S+$")
BASE = """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'socks5://user:pw@192.0.2.10:1080'
  hk1: 'http://192.0.2.11:3128'
groups:
  proxy: {policy: random}
  hk: {policy: 'fixed(0)', filter: 'name(keyword: hk)'}
routing:
  rules:
    - "RULE"
  fallback: proxy
"""


def _hostile() -> list[str]:
    """The minimal inputs of the resource-exhaustion reports, as seeds to mutate further."""
    bomb = ['x: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        bomb.append(f"x{i}: &{chr(97 + i)} [" + ",".join([f"*{chr(96 + i)}"] * 9) + "]")
    backtrack = BASE.replace("name(keyword: hk)", "name(regex: \"^(a+)+$\")").replace(
        "  hk1:", f"  {'a' * 30}-1:")
    return ["\n".join(bomb) + "\n" + BASE.replace("RULE", "dport(53) -> direct"),
            backtrack.replace("RULE", "dport(1) -> hk"),
            BASE.replace("RULE", "dport(1) -> direct") + "subscriptions:\n  s: 'file:///dev/zero'\n",
            "a: " + "[" * 3000 + "]" * 3000 + "\n"]


def _constants(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"))
    except (SyntaxError, UnicodeDecodeError):
        return []
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


@lru_cache(maxsize=1)
def seeds() -> tuple[str, ...]:
    """examples/config.yaml, the configs the tests write, and each rule string the tests use put
    into a small config; deduplicated, in a stable order."""
    found = [(REPO / "examples" / "config.yaml").read_text(encoding="utf-8"), *_hostile()]
    for p in sorted((REPO / "tests").rglob("*.py")):
        for value in _constants(p):
            text = textwrap.dedent(value).lstrip("\n")
            if "routing:" in text and "fallback" in text and len(text) < 20000:
                found.append(text)
            elif _RULE.match(value) and len(value) < 300 and '"' not in value and "\\" not in value:
                found.append(BASE.replace("RULE", value))
    return tuple(dict.fromkeys(found))


def _edit(text: str, rng: random.Random) -> str:
    n = len(text)
    at = rng.randrange(n + 1)
    op = rng.randrange(10)
    if op == 0 and n:  # delete a span
        return text[:at] + text[at + rng.randint(1, 12):]
    if op == 1:  # insert a snippet
        return text[:at] + rng.choice(SNIPPETS) + text[at:]
    if op == 2 and n:  # duplicate a span
        span = text[at:at + rng.randint(1, 40)]
        return text[:at] + span + text[at:]
    lines = text.split("\n")
    if op == 3 and len(lines) > 1:  # duplicate or move a line
        i, j = rng.randrange(len(lines)), rng.randrange(len(lines))
        lines.insert(j, lines[i] if rng.random() < 0.5 else lines.pop(i))
        return "\n".join(lines)
    tokens = list(_TOKEN.finditer(text))
    if not tokens:
        return text + rng.choice(SNIPPETS)
    m = rng.choice(tokens)
    if op in (4, 5):  # a number or duration at its edge
        new = rng.choice(NUMBERS)
    elif op == 6:  # another token of the same config (names, functions, outbounds swap places)
        new = rng.choice(tokens).group(0)
    elif op == 7:  # a token made longer, or given punctuation that collides in C
        new = m.group(0) + rng.choice(["-x", "_x", ".x", "X", m.group(0)])
    elif op == 8:  # an anchor here, an alias elsewhere
        return text[:m.start()] + "&a " + text[m.start():]
    else:
        new = rng.choice(SNIPPETS)
    return text[:m.start()] + new + text[m.end():]


def mutate(seed: str, rng: random.Random, edits: int | None = None) -> str | bytes:
    """1-3 edits of `seed` (mostly one, so many inputs get past the parser); one input in 50 comes
    back as bytes that are not valid UTF-8."""
    text = seed
    for _ in range(edits if edits is not None else rng.choice((1, 1, 1, 2, 3))):
        text = _edit(text, rng)
    if rng.random() < 0.02:
        raw = text.encode("utf-8", "surrogatepass")
        at = rng.randrange(len(raw) + 1)
        return raw[:at] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80"]) + raw[at:]
    return text


@dataclass(frozen=True)
class Outcome:
    kind: str  # "ok", "rejected" or "crash"
    detail: str = ""


def run_front_end(data: str | bytes, directory: Path) -> Outcome:
    """The front end on one input, as `dae-compile --check` runs it, plus rendering the C: every
    exception other than a CompileError carrying diagnostics is a crash (with its traceback)."""
    from dae_py.compiler.diagnostics import CompileError
    from dae_py.compiler.emit import render
    from dae_py.compiler.load import load_config
    from dae_py.compiler.pipeline import check_config, choose_strategy

    path = directory / "config.yaml"
    path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"))
    try:
        cfg = load_config(path)
        checked = check_config(cfg)
        checked.diags.render(cfg.text)
        render(checked.ir, cfg.file, cfg.sha256, choose_strategy(checked.ir), checked.settings)
        return Outcome("ok")
    except CompileError as exc:
        if not exc.diagnostics.errors:
            return Outcome("crash", "CompileError without an error diagnostic")
        exc.diagnostics.render(data if isinstance(data, str) else None)
        return Outcome("rejected")
    except Exception:  # noqa: BLE001 - the point: anything else is a bug
        return Outcome("crash", traceback.format_exc())

