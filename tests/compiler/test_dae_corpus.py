"""The `.dae` corpus (tests/compiler/dae_corpus/, written from dae's docs and example.dae) compiles,
and its --to-yaml translation compiles to the same build.

"The same build": program.c, manifest.json and ir.json are byte-identical once the provenance
they record is masked -- the config's file name, its sha256, the line/column each rule was
written at (a YAML file cannot put a rule on the same line as the .dae file did) and the
object's hash (program.o carries the C source, names and lines included, as debug info).
Also: a hypothesis fuzz test of the parser (every failure is a diagnostic, never a traceback).
"""
from __future__ import annotations

import json
import re
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dae_py.compiler.dae_format import load_dae_text, to_yaml
from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.geodata import SiteDomain, write_geosite
from dae_py.compiler.load import load_config_text
from dae_py.compiler.pipeline import check_config, compile_config

CORPUS = Path(__file__).parent / "dae_corpus"
CASES = sorted(CORPUS.glob("*.dae")) + [CORPUS / "with_include" / "config.dae"]


def _mask_c(text: str, name: str) -> str:
    names = "|".join(re.escape(n) for n in (name, Path(name).name))
    text = re.sub(rf"from (?:{names}) \(sha256 [0-9a-f]+\)", "from CONFIG (sha256 X)", text)
    return re.sub(rf"(?:{names}):\d+", "CONFIG:LINE", text)


PROVENANCE = ("line", "col", "sha256", "file", "config_file", "config_sha256", "object_sha256")


def _mask_json(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: ("X" if k in PROVENANCE else _mask_json(x)) for k, x in v.items()}
    if isinstance(v, list):
        return [_mask_json(x) for x in v]
    return v


def _build(text: str, name: str, out: Path) -> dict[str, Any]:
    compile_config(None, out, text=text, name=name)
    return {
        "program.c": _mask_c((out / "program.c").read_text(), name),
        "manifest.json": _mask_json(json.loads((out / "manifest.json").read_text())),
        "ir.json": _mask_json(json.loads((out / "ir.json").read_text())),
    }


@pytest.mark.parametrize("case", CASES, ids=[c.parent.name if c.stem == "config" else c.stem for c in CASES])
def test_corpus_config_compiles_and_its_yaml_gives_the_same_build(case: Path, tmp_path: Path) -> None:
    text = case.read_text()
    name = str(case)  # includes are relative to the config's folder
    checked = check_config(load_config_text(text, name))
    assert checked.ir.rules or "routing {\n    fallback" in text
    yaml_text = to_yaml(text, name)
    assert load_config_text(yaml_text, "config.yaml").data == load_dae_text(text, name).data
    dae_build = _build(text, name, tmp_path / "from-dae")
    yaml_build = _build(yaml_text, "config.yaml", tmp_path / "from-yaml")
    for part in dae_build:
        assert dae_build[part] == yaml_build[part], part


def test_the_example_warns_about_each_dae_option_it_ignores() -> None:
    text = (CORPUS / "example.dae").read_text()
    checked = check_config(load_config_text(text, "example.dae"))
    warned = {d.pos.line for d in checked.diags.warnings}
    cfg_global = checked.cfg.data["global"]
    for i, line in enumerate(text.splitlines(), start=1):
        m = re.match(r"\s+(\w+):", line)
        if m and i < 30 and m.group(1) not in cfg_global:  # a global option the schema lacks
            assert i in warned, line


# Rules from dae's documentation the rule stage does not accept yet; branch c12rules extends it.
# Each is compiled in a small .dae config; flip to passing after that merge.
DOC_RULES = [
    ("routing", "domain(geosite:geolocation-!cn) -> direct", "bare values with '!' (c12rules)"),
    ("routing", "!domain(geosite:google-scholar, geosite:category-scholar-!cn) -> direct", "'!' in values (c12rules)"),
    ("request", "sub(my_sub) -> googledns", "DNS request function sub() (c12rules)"),
    ("request", "node(name_keyword: hk) -> googledns", "DNS request function node() (c12rules)"),
    ("request", "subnode(subtag: my_sub, name_keyword: hk) -> googledns", "DNS request function subnode() (c12rules)"),
]


@pytest.mark.parametrize(("where", "rule", "why"), DOC_RULES, ids=[r[1][:40] for r in DOC_RULES])
def test_rules_from_daes_docs_with_bang_values_and_dns_selectors(where: str, rule: str, why: str,
                                                                  tmp_path: Path) -> None:
    sites = ("geolocation-!cn", "google-scholar", "category-scholar-!cn")
    write_geosite(tmp_path / "geosite.dat", {t: [SiteDomain("domain", f"{i}.example")] for i, t in enumerate(sites)})
    if where == "routing":
        text = f"global {{ lan_interface: eth0 }}\nrouting {{\n  {rule}\n  fallback: direct\n}}\n"
    else:
        text = (f"global {{ lan_interface: eth0 }}\nsubscription {{ my_sub: 'file://s.txt' }}\n"
                f"dns {{ upstream {{ googledns: 'udp://8.8.8.8:53' }}\n routing {{ request {{\n  {rule}\n"
                "  fallback: asis\n} } }\nrouting { fallback: direct }\n")
        (tmp_path / "s.txt").write_text("socks5://192.0.2.5:1080#hk1\nsocks5://192.0.2.6:1080#us1\n")
    check_config(load_config_text(text, str(tmp_path / "c.dae")))


FUZZ_BASE = textwrap.dedent("""\
    global { lan_interface: eth0  tproxy_port: 12345 }
    node { n1: 'socks5://192.0.2.10:1080' }
    group { g { filter: name(n1) [add_latency: -5ms]  policy: fixed(0) } }
    dns { upstream { a: 'udp://192.0.2.53:53' } routing { request { qname(suffix: cn) -> a  fallback: asis } } }
    routing {
        dip(10.0.0.0/8) && dport(1-1023) -> g
        fallback: direct
    }
""")
_PIECES = st.sampled_from(list("{}():,![]&->#'\"\n /*") + ["->", "&&", "/*", "*/", "include", "routing", "global",
                                                          "fallback", "default", "x", "1", "::1", "香港"])


def _front_end(text: str) -> None:
    try:
        check_config(load_config_text(text, "fuzz.dae"))
    except CompileError as exc:
        assert exc.diagnostics.errors, "a CompileError carries its errors"
        for d in exc.diagnostics.errors:
            assert d.pos.file == "fuzz.dae" and d.pos.line >= 1 and d.pos.col >= 1
            d.render(text.splitlines())


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(cut=st.integers(0, len(FUZZ_BASE)), drop=st.integers(0, 12), insert=st.lists(_PIECES, max_size=4))
def test_fuzz_mutated_configs_give_diagnostics_not_tracebacks(cut: int, drop: int, insert: list[str]) -> None:
    _front_end(FUZZ_BASE[:cut] + "".join(insert) + FUZZ_BASE[cut + drop:])


@settings(max_examples=100, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(text=st.text(max_size=200))
def test_fuzz_arbitrary_text_gives_diagnostics_not_tracebacks(text: str) -> None:
    _front_end("routing {\n" + text + "\n}\n")
