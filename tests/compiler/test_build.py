"""What dae-compile writes: byte-identical builds, the manifest, a program holding only what the
config uses, and a large config (10,000 CIDRs, 100,000 domains) that compiles, loads and decides.
"""
from __future__ import annotations

import hashlib
import ipaddress
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.geodata import SiteDomain, write_geoip, write_geosite
from dae_py.compiler.pipeline import compile_config
from dae_py.contract.version import COMPILER_VERSION, MANIFEST_FORMAT
from dae_py.runtime.bpf import BpfObject
from tests.compiler.compiler_kit import Kernel, compile_text, make_flow, strategy_params, write_config

FULL = """
global:
  lan_interface: [br-lan]
  wan_interface: auto
  geoip_path: geoip.dat
  geosite_path: geosite.dat
nodes:
  n1: 'socks5://192.0.2.10:1080'
  hk1: 'http://user:secret@192.0.2.11:3128'
  hk2: 'https://192.0.2.12:443'
groups:
  proxy: {{policy: min_moving_avg}}
  hk: {{policy: 'fixed(1)', filter: ['name(keyword: hk)']}}
dns:
  upstream:
    alidns: 'udp://223.5.5.5:53'
  routing:
    request:
      rules: ['qname(suffix: cn) -> alidns']
      fallback: asis
routing:
  rules:
    - "dip(224.0.0.0/3, 'ff00::/8') -> direct"
    - "dip(geoip:cn) -> direct"
    - "dip({}) -> hk"
    - "dport({}) && l4proto(udp) -> block"
    - "domain(geosite:cn, suffix: example.com) -> hk"
    - "mac('02:42:ac:11:00:02') -> must_direct"
    - "dscp(46) -> direct(mark: 0x800)"
    - "pname(curl) -> proxy"
    - "dport(53) -> must_rules"
  fallback: proxy
""".format(", ".join(f"10.{2 * i}.0.0/16" for i in range(20)), ", ".join(str(p) for p in range(1000, 1040, 2)))


def write_geo(d: Path) -> None:
    write_geoip(d / "geoip.dat", {"cn": ["1.0.1.0/24", "2001:250::/35"]})
    write_geosite(d / "geosite.dat", {"cn": [SiteDomain("domain", "qq.com"), SiteDomain("plain", "taobao")]})


def tree(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("strategy", strategy_params())
def test_deterministic(strategy: str, tmp_path: Path) -> None:
    """The same config compiled twice into two different build dirs: every file identical."""
    write_geo(tmp_path)
    cfg = write_config(tmp_path, FULL)
    compile_config(cfg, tmp_path / "one" / "build", strategy=strategy)
    compile_config(cfg, tmp_path / "two" / "deeper" / "out", strategy=strategy)
    a, b = tree(tmp_path / "one" / "build"), tree(tmp_path / "two" / "deeper" / "out")
    assert sorted(a) == sorted(b)
    assert {"program.c", "program.o", "manifest.json", "ir.json", "include/common.h"} <= set(a)
    assert any(name.startswith("maps/") for name in a)
    for name in a:
        assert a[name] == b[name], f"{name} differs between two builds of the same config"
    # And again into the same directory (an existing build is replaced by an identical one).
    compile_config(cfg, tmp_path / "one" / "build", strategy=strategy)
    assert tree(tmp_path / "one" / "build") == a
    # No path of the build directories leaks into the files.
    for name, data in a.items():
        assert b"/one/build" not in data and b"/deeper/out" not in data, f"{name} holds a build path"


def test_deterministic_wherever_the_config_lives(tmp_path: Path) -> None:
    builds = []
    for where in ("a/src", "b/elsewhere/src"):
        d = tmp_path / where
        d.mkdir(parents=True)
        write_geo(d)
        write_config(d, FULL)
        out = tmp_path / where.replace("src", "out")
        compile_config(d / "config.yaml", out, strategy="linear")
        builds.append(tree(out))
    assert builds[0] == builds[1]


def test_manifest(tmp_path: Path) -> None:
    write_geo(tmp_path)
    c = compile_text(tmp_path, FULL)
    m = json.loads((c.out / "manifest.json").read_text())
    text = (tmp_path / "config.yaml").read_text()
    assert m["format"] == MANIFEST_FORMAT
    assert m["compiler_version"] == COMPILER_VERSION
    assert m["config"] == {"file": "config.yaml", "sha256": hashlib.sha256(text.encode()).hexdigest()}
    assert m["strategy"] in ("linear", "bitvector")
    assert m["outbounds"] == [{"id": 0, "name": "direct", "kind": "direct"},
                              {"id": 1, "name": "block", "kind": "block"},
                              {"id": 2, "name": "proxy", "kind": "group"}, {"id": 3, "name": "hk", "kind": "group"}]
    groups = {g["name"]: g for g in m["groups"]}
    assert groups["proxy"]["nodes"] == ["n1", "hk1", "hk2"]
    assert groups["proxy"]["policy"] == "min_moving_avg" and groups["proxy"]["id"] == 2
    assert groups["hk"]["nodes"] == ["hk1", "hk2"]
    assert (groups["hk"]["policy"], groups["hk"]["fixed_index"]) == ("fixed", 1)
    assert groups["hk"]["check"]["check_interval_s"] == 30.0
    nodes = {n["name"]: n for n in m["nodes"]}
    assert (nodes["hk1"]["protocol"], nodes["hk1"]["host"], nodes["hk1"]["port"]) == ("http", "192.0.2.11", 3128)
    assert (nodes["hk1"]["username"], nodes["hk1"]["password"]) == ("user", "secret")
    assert m["dns"]["upstream"]["alidns"]["port"] == 53
    lines = text.splitlines()
    assert len(m["rules"]) == 9
    for i, r in enumerate(m["rules"]):
        assert r["index"] == i
        assert lines[r["line"] - 1].strip() == f'- "{r["text"]}"'
        assert r["emitted"] is True
    by_text = {r["text"]: r for r in m["rules"]}
    assert by_text["dscp(46) -> direct(mark: 0x800)"]["mark"] == 0x800
    r = by_text["mac('02:42:ac:11:00:02') -> must_direct"]
    assert (r["outbound"], r["must"], r["must_rules"]) == ("direct", True, False)
    assert by_text["dport(53) -> must_rules"]["must_rules"] is True
    assert m["fallback"] == {"outbound": "proxy", "mark": 0, "must": False}
    assert m["pnames"] == ["curl"]
    assert m["global"]["lan_interface"] == ["br-lan"] and m["global"]["tproxy_port"] == 12345
    # Map data files are named with their sizes and hashes, and the object's hash is right.
    for meta in m["maps"]:
        data = (c.out / meta["data"]).read_bytes()
        assert hashlib.sha256(data).hexdigest() == meta["sha256"]
        assert len(data) == meta["entries"] * (meta["key_size"] + meta["value_size"])
    assert hashlib.sha256((c.out / "program.o").read_bytes()).hexdigest() == m["object_sha256"]
    # Each rule's block in the C source names its config line.
    src = (c.out / "program.c").read_text()
    for r in m["rules"]:
        assert f"config.yaml:{r['line']}" in src


MINIMAL = """
global: {lan_interface: [eth0]}
routing:
  rules:
    - "%s -> block"
  fallback: direct
"""


@pytest.mark.root
@pytest.mark.parametrize("strategy", strategy_params())
def test_only_what_the_config_uses(strategy: str, tmp_path: Path) -> None:
    """No MAC parsing without mac(), no domain map without domain(), no process map without pname()."""
    n = iter(range(100))

    DOMAIN_MAPS = {"domain_routing4", "domain_routing6", "domain_filter"}

    def build(cond: str) -> tuple[str, set[str]]:
        c = compile_text(tmp_path / f"c{next(n)}", MINIMAL % cond, strategy=strategy)
        src = (c.out / "program.c").read_text()
        with BpfObject(c.build.object_path) as obj:  # opened, not loaded: the ELF's maps
            maps = set(obj.map_names())
        return src, maps

    src, maps = build("dport(443)")
    assert "#define DAE_NEED_MAC 0" in src and "#define DAE_NEED_DSCP 0" in src
    assert "smac" not in src
    assert "domain_routing" not in src and not maps & DOMAIN_MAPS
    assert "sock_pname" not in src and "sock_pname" not in maps
    assert "bpf_get_socket_cookie" not in src
    src, maps = build("mac(02:42:ac:11:00:02)")
    assert "#define DAE_NEED_MAC 1" in src and "smac" in src
    assert not maps & DOMAIN_MAPS and "sock_pname" not in maps
    src, maps = build("domain(example.com)")
    assert "domain_routing" in src and DOMAIN_MAPS <= maps and "#define DAE_NEED_MAC 0" in src
    src, maps = build("pname(curl)")
    assert "sock_pname" in maps and not maps & DOMAIN_MAPS
    src, maps = build("dscp(46)")
    assert "#define DAE_NEED_DSCP 1" in src and "#define DAE_NEED_MAC 0" in src
    # A rule that can never match is not in the program, nor is what only it used.
    src, maps = build("mac(02:42:ac:11:00:02) && !mac(02:42:ac:11:00:02)")
    assert "#define DAE_NEED_MAC 0" in src and "smac" not in src


@pytest.mark.root
@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["linear", "auto"])
def test_large_config(strategy: str, tmp_path: Path) -> None:
    """10,000 CIDRs and 100,000 domains: compiles, loads, and decides through the program. The
    linear program keeps every big set in an LPM trie; `auto` picks the bit-vector program for
    big sets, which keeps the 9,000 v4 destinations in a trie (past the interval-table limit)
    and searches the 8,000 v4 sources and 1,000 v6 destinations in sorted tables."""
    # Non-adjacent networks, so the passes cannot collapse them: 10,000 prefixes reach the tries.
    v4 = [ipaddress.IPv4Network(((20 << 24) + (i << 13), 20)) for i in range(8000)]
    v6 = [ipaddress.IPv6Network(((0x2A00 << 112) + (i << 81), 48)) for i in range(1000)]
    inline = [ipaddress.IPv4Network(((100 << 24) + (i << 9), 24)) for i in range(1000)]
    domains = [SiteDomain("domain", f"site{i}.example{i % 97}.com") for i in range(80000)]
    domains += [SiteDomain("full", f"host{i}.full.test") for i in range(19990)]
    domains += [SiteDomain("plain", f"kw{i}zz") for i in range(10)]
    assert len(v4) + len(v6) + len(inline) == 10_000 and len(domains) == 100_000
    write_geoip(tmp_path / "geoip.dat", {"big": [*v4, *v6]})
    write_geosite(tmp_path / "geosite.dat", {"big": domains})
    config = f"""
global: {{lan_interface: [eth0], geoip_path: geoip.dat, geosite_path: geosite.dat}}
routing:
  rules:
    - "dport(22) -> block"
    - "dip(geoip:big) -> direct(mark: 1)"
    - "dip({', '.join(map(str, inline))}) -> direct(mark: 2)"
    - "domain(geosite:big) -> direct(mark: 3)"
    - "sip(geoip:big) && l4proto(udp) -> direct(mark: 4)"
  fallback: block
"""
    c = compile_text(tmp_path, config, strategy=strategy)
    m = c.build.manifest
    trie_entries = sum(meta.entries for meta in m.maps if meta.kind == "lpm_trie")
    if strategy == "linear":
        assert trie_entries >= 10_000
    else:
        assert m.strategy == "bitvector"
        src = (c.out / "program.c").read_text()
        assert "dip4_vecs SEC" in src and "sip4_intervals[" in src and "dip6_intervals[" in src
        assert trie_entries == 9_000
    matcher = c.build.domain_matcher
    with Kernel(c.build) as k:
        def after(net: Any) -> str:
            return str(net.broadcast_address + 1)

        cases = [
            (make_flow("tcp", "192.168.1.2:1", f"{v4[0].network_address}:443"), 1),
            (make_flow("tcp", "192.168.1.2:1", f"{v4[4321].network_address + 77}:443"), 1),
            (make_flow("tcp", "192.168.1.2:1", f"{v4[-1].broadcast_address}:443"), 1),
            (make_flow("tcp", "192.168.1.2:1", f"{after(v4[4321])}:443"), None),
            (make_flow("tcp", "[fd00::1]:1", f"[{v6[999].network_address + 5}]:443"), 1),
            (make_flow("tcp", "[fd00::1]:1", f"[{after(v6[999])}]:443"), None),
            (make_flow("tcp", "192.168.1.2:1", f"{inline[0].network_address}:443"), 2),
            (make_flow("tcp", "192.168.1.2:1", f"{inline[-1].broadcast_address}:443"), 2),
            (make_flow("tcp", "192.168.1.2:1", f"{after(inline[500])}:443"), None),
            (make_flow("tcp", "192.168.1.2:1", f"{v4[7].network_address}:22"), 0),
            (make_flow("udp", f"{v4[99].network_address + 3}:1", "9.9.9.9:443"), 4),
            (make_flow("tcp", f"{v4[99].network_address + 3}:1", "9.9.9.9:443"), None),
        ]
        for name, want in [(f"a.site79999.example{79999 % 97}.com", 3), ("site5.example5.com", 3),
                           ("site5.example6.com", None), ("host19989.full.test", 3), ("x.host1.full.test", None),
                           ("akw7zzb.org", 3)]:
            cases.append((make_flow("tcp", "192.168.1.2:1", "9.9.9.9:443", domain_bits=matcher.bits(name)), want))
        for f, want in cases:
            got = k.run(f)
            assert got.rule == want, (f, got)


def test_build_replaces_atomically(tmp_path: Path) -> None:
    """A failed compile leaves no half-written build and no temporary directories behind."""
    c = compile_text(tmp_path, MINIMAL % "dport(443)")
    before = tree(c.out)
    write_config(tmp_path, MINIMAL % "dport(99999)")
    with pytest.raises(CompileError, match="out of range"):
        compile_config(tmp_path / "config.yaml", c.out)
    assert tree(c.out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["build", "config.yaml"]
    shutil.rmtree(c.out)


def test_long_rules_are_abbreviated(tmp_path: Path) -> None:
    """A rule with thousands of inline values is shortened in program.c's comments and in
    manifest.json (ir.json keeps it whole); the build stays deterministic."""
    domains = [f"d{i}.example.com" for i in range(3000)]
    nets = [f"10.{i // 256}.{i % 256}.0/24" for i in range(2000)]
    text = f"""
global: {{lan_interface: [br-lan]}}
routing:
  rules:
    - "domain({', '.join(domains)}) -> direct"
    - "dport(53) && !dip({', '.join(nets)}, 'ff00::/8') -> block(mark: 0x1)"
    - "dip(1.1.1.1) -> direct"
  fallback: direct
"""
    write_config(tmp_path, text)
    compile_config(tmp_path / "config.yaml", tmp_path / "a", strategy="bitvector")
    compile_config(tmp_path / "config.yaml", tmp_path / "b", strategy="bitvector")
    assert tree(tmp_path / "a") == tree(tmp_path / "b")
    m = json.loads((tmp_path / "a" / "manifest.json").read_text())
    texts = [r["text"] for r in m["rules"]]
    head = ", ".join(domains[:10])
    assert texts[0].startswith(f"domain({head}, ")
    assert texts[0].endswith(" more parameters)) -> direct") and len(texts[0]) < 400
    n_shown = texts[0].count(", ")  # the separators after the values shown
    assert texts[0].endswith(f", ... ({3000 - n_shown} more parameters)) -> direct")
    assert texts[1].startswith("dport(53) && !dip(10.0.0.0/24, 10.0.1.0/24, ")
    assert texts[1].endswith(" more parameters)) -> block(mark: 0x1)")
    assert texts[2] == "dip(1.1.1.1) -> direct"
    program = (tmp_path / "a" / "program.c").read_text()
    assert texts[0] in program and texts[1] in program and "d2999.example.com" not in program
    assert (tmp_path / "a" / "manifest.json").stat().st_size < 20_000
    ir = json.loads((tmp_path / "a" / "ir.json").read_text())
    assert ir["rules"][0]["source"]["text"].count(",") == 2999
