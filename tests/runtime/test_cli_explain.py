"""`dae-runtime explain` says when its answer depends on something the live gateway cannot
provide yet (issue 12): a --pname while pname() does not act, a --domain in a build with no DNS
module (no dns.bind). The text comes from the capability table, so flipping a row removes it."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from dae_py.contract import capabilities
from dae_py.runtime import cli
from dae_py.runtime.lab.gateway_proc import compile_build

pytestmark = pytest.mark.root

CONFIG = """\
global:
  lan_interface: [lan0]
{dns}nodes:
  n1: 'socks5://192.0.2.1:1080'
groups:
  proxy: {{policy: random}}
routing:
  rules:
    - "pname(curl) -> block"
    - "domain(suffix: example.com) -> proxy"
  fallback: direct
"""
DNS = """\
dns:
  upstream: {up: 'udp://192.0.2.53:53'}
  bind: '127.0.0.1:5353'
  routing: {request: {fallback: up}}
"""
Capsys = pytest.CaptureFixture[str]
FLOW = ["--proto", "tcp", "--src", "10.0.0.2:40000", "--dst", "203.0.113.7:443"]


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = {}
    for name, dns in (("nodns", ""), ("dns", DNS)):
        d = tmp_path_factory.mktemp(f"explain-{name}")
        (d / "config.yaml").write_text(CONFIG.format(dns=dns))
        compile_build(d / "config.yaml", d / "build")
        out[name] = d / "build"
    return out


def explain(build: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    assert cli.main(["explain", str(build), *FLOW, *extra]) == 0
    return capsys.readouterr().out


def test_a_domain_without_the_dns_module_is_a_note(builds: dict[str, Path], capsys: Capsys) -> None:
    out = explain(builds["nodns"], capsys, "--domain", "www.example.com")
    assert "-> outbound 'proxy'" in out  # the answer as if the name were bound...
    domain = capabilities.function("domain")
    assert domain is not None
    assert (f"  note: --domain www.example.com: the live gateway cannot provide this: domain() needs {domain.needs}, "
            "and this build has no DNS module (no dns section), so no name is ever bound to --dst there") \
        in out.splitlines()


def test_a_domain_with_the_dns_module_needs_no_note(builds: dict[str, Path], capsys: Capsys) -> None:
    out = explain(builds["dns"], capsys, "--domain", "www.example.com")
    assert "-> outbound 'proxy'" in out
    assert "note:" not in out


def test_no_note_without_the_inputs(builds: dict[str, Path], capsys: Capsys) -> None:
    out = explain(builds["nodns"], capsys)
    assert "no rule matched: routing.fallback" in out and "note:" not in out


def test_a_pname_now_that_pname_acts_is_no_note(builds: dict[str, Path], capsys: Capsys) -> None:
    pname = capabilities.function("pname")
    assert pname is not None and pname.acts  # issue 13: the cgroup hooks and the WAN programs
    out = explain(builds["dns"], capsys, "--pname", "curl", "--json")
    result = json.loads(out)
    assert result["outbound"] == "block"
    assert result["caveats"] == []


def test_the_note_follows_the_capability_table(builds: dict[str, Path], capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    rows = tuple(dataclasses.replace(f, acts=True) if f.name == "pname" else f for f in capabilities.FUNCTIONS)
    monkeypatch.setattr(capabilities, "FUNCTIONS", rows)
    out = explain(builds["dns"], capsys, "--pname", "curl")
    assert "-> outbound 'block'" in out and "note:" not in out
