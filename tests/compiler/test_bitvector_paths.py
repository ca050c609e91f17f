"""The bit-vector classifier's field paths: decision trees and interval tables against LPM tries
and hash maps.

Addresses (dip/sip, v4 and v6) are cut into intervals of equal rule vector. Up to
`MAX_INLINE_TREE` intervals they become an unrolled binary search over constants; up to
`MAX_TREE_INTERVALS` per family a sorted table in .data with a fixed-depth search; past that an
LPM trie. MACs likewise up to `MAX_TREE_MACS` values, else a hash map. The thresholds are lowered or
raised here to force each path on the same configs, and the real program (BPF_PROG_TEST_RUN) is held against the Python
evaluator. The interval sweep itself is checked against a brute-force longest-prefix match.
"""
from __future__ import annotations

import ipaddress
import itertools
import random
import re
from pathlib import Path
from typing import Any

import pytest

from dae_py.compiler import emit_bitvector as eb
from dae_py.contract import evaluate
from dae_py.contract.domains import DomainMatcher
from tests.compiler import test_differential as td
from tests.compiler.compiler_kit import Kernel, compile_text

# ---- the interval sweep (no root needed) ---------------------------------------------------------


def _lpm_vec(per_net: dict[Any, int], default: int, addr: int, version: int) -> int:
    a = ipaddress.ip_address(addr) if version == 4 else ipaddress.IPv6Address(addr)
    best = None
    for n in per_net:
        if a in n and (best is None or n.prefixlen > best.prefixlen):
            best = n
    return default if best is None else per_net[best]


def _interval_vec(ivs: list[eb.Interval], addr: int) -> int:
    lo, hi = 0, len(ivs) - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if addr < ivs[mid].start:
            hi = mid - 1
        else:
            lo = mid
    return ivs[lo].vec


def _probe_addrs(nets: list[Any], width: int, rng: random.Random) -> list[int]:
    out = [0, (1 << width) - 1]
    for n in nets:
        s, e = int(n.network_address), int(n.broadcast_address)
        out += [s, e, max(0, s - 1), min((1 << width) - 1, e + 1), rng.randint(s, e)]
    out += [rng.randrange(1 << width) for _ in range(50)]
    return out


@pytest.mark.parametrize("seed", range(40))
def test_prefix_intervals_match_longest_prefix(seed: int) -> None:
    rng = random.Random(seed)
    version = 4 if seed % 2 == 0 else 6
    width = 32 if version == 4 else 128
    nets: set[Any] = set()
    for _ in range(rng.randint(0, 25)):
        if version == 4:
            base = rng.choice([0x0A000000, 0x0A010000, 0xC0A80000, 0, 0xFFFFFF00, rng.randrange(1 << 32)])
            plen = rng.choice([0, 1, 8, 16, 23, 24, 25, 31, 32])
            nets.add(ipaddress.IPv4Network((base, plen), strict=False))
        else:
            base = rng.choice([0, 0xFFFF << 32, 0x20010DB8 << 96, (1 << 128) - 1, rng.randrange(1 << 128)])
            plen = rng.choice([0, 1, 32, 48, 63, 64, 65, 96, 127, 128])
            nets.add(ipaddress.IPv6Network((base, plen), strict=False))
    per_net = {n: rng.randrange(8) for n in nets}
    default = rng.randrange(8)
    ivs = eb.prefix_intervals(per_net, default, version)
    assert ivs[0].start == 0
    assert all(a.start < b.start and a.vec != b.vec for a, b in itertools.pairwise(ivs))
    for addr in _probe_addrs(list(nets), width, rng):
        want = _lpm_vec(per_net, default, addr, version)
        assert _interval_vec(ivs, addr) == want, (hex(addr), sorted(map(str, nets)))


def test_value_intervals() -> None:
    vals = {0: 1, 5: 2, 6: 2, 7: 3, (1 << 48) - 1: 4}
    ivs = eb.value_intervals(vals, 9, 48, hex)
    for v in [0, 1, 4, 5, 6, 7, 8, 1 << 40, (1 << 48) - 2, (1 << 48) - 1]:
        assert _interval_vec(ivs, v) == vals.get(v, 9)


# ---- the real program, each path forced -----------------------------------------------------------

EDGE_CONFIG = """
global:
  lan_interface: [eth0]
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  g1: {policy: random}
routing:
  rules:
    - 'dip(10.1.2.3/32) && dport(443) -> g1'
    - 'dip(10.1.0.0/16) && !dip(10.1.2.0/24) -> direct(mark: 0x11)'
    - 'dip(10.0.0.0/8, 192.168.0.0/16) && l4proto(udp) -> block'
    - "dip('::ffff:0:0/96') -> must_g1"
    - "dip('2001:db8::/32') && !dip('2001:db8:1::/48') -> direct(mark: 0x22)"
    - "dip('2001:db8:1::1/128', '2001:db8:1:0:8000::/65') -> g1"
    - "sip('fd00::/8', 10.9.0.0/16) && mac('02:00:00:00:00:01', 'aa:bb:cc:dd:ee:ff') -> block"
    - "mac('02:42:ac:11:00:02') && !sip(10.9.9.0/24) -> direct(mark: 0x33)"
    - "!mac('02:00:00:00:ff:00') && dip(255.255.255.255/32, 0.0.0.0/32) -> g1"
    - "dip('::/0') && sip('::/0') && dport(53) -> must_rules"
    - "dip('ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff/128', '::/128') -> block"
    - "sip(0.0.0.0/0) && dport(8443) -> direct"
    - "dip('::/0') && dscp(46) -> g1"
  fallback: direct
"""

EDGE_ADDRS_V4 = ["10.1.2.3", "10.1.2.4", "10.1.3.1", "10.0.0.0", "10.255.255.255", "11.0.0.0", "9.255.255.255",
                 "192.168.255.255", "192.169.0.0", "0.0.0.0", "255.255.255.255", "10.9.9.9", "10.9.10.1",
                 "8.8.8.8"]
EDGE_ADDRS_V6 = ["::", "::1", "::ffff:0:0", "::ffff:ffff:ffff", "::1:0:0:0", "::fffe:ffff:ffff", "2001:db8::",
                 "2001:db8::1", "2001:db8:1::1", "2001:db8:1::2", "2001:db8:1:0:8000::", "2001:db8:1:0:7fff::",
                 "2001:db8:1:0:ffff:ffff:ffff:ffff", "2001:db8:2::", "2001:db9::", "2001:db7:ffff::", "fd00::5",
                 "fe00::", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe"]
EDGE_MACS = [0x020000000001, 0xAABBCCDDEEFF, 0x0242AC110002, 0x02000000FF00, 0, (1 << 48) - 1, 0x020000000002]


def _edge_flows(rng: random.Random, n: int) -> list[evaluate.Flow]:
    out = []
    for _ in range(n):
        v6 = rng.random() < 0.5
        pool = EDGE_ADDRS_V6 if v6 else EDGE_ADDRS_V4
        out.append(evaluate.Flow(
            l4proto=rng.choice([6, 17]), src=ipaddress.ip_address(rng.choice(pool)), sport=rng.choice([1, 53, 40000]),
            dst=ipaddress.ip_address(rng.choice(pool)), dport=rng.choice([53, 443, 8443, 80]),
            mac=rng.choice(EDGE_MACS), dscp=rng.choice([0, 46, 10])))
    return out


FORCINGS = {
    "trees": {"MAX_TREE_INTERVALS": 1 << 20, "MAX_TREE_MACS": 1 << 20, "MAX_TREE_TOTAL": 1 << 20},
    "maps": {"MAX_TREE_INTERVALS": 0, "MAX_TREE_MACS": 0},
    "mixed": {"MAX_TREE_INTERVALS": 9, "MAX_TREE_MACS": 2},
    # every family a sorted interval table (the form big trees take), then trees and tables mixed
    "tables": {"MAX_TREE_INTERVALS": 1 << 20, "MAX_TREE_MACS": 1 << 20, "MAX_TREE_TOTAL": 1 << 20,
               "MAX_INLINE_TREE": 0},
    "trees-and-tables": {"MAX_TREE_INTERVALS": 1 << 20, "MAX_TREE_MACS": 1 << 20,
                         "MAX_TREE_TOTAL": 1 << 20, "MAX_INLINE_TREE": 6, "MAX_INLINE_TOTAL": 8},
}


TREE_LEAF = re.compile(r"\treturn \d+;  /\* ")  # a leaf of an unrolled tree of constants


def _check(k: Kernel, ir: Any, flows: list[evaluate.Flow], label: str) -> int:
    problems = []
    for f in flows:
        want = evaluate.classify(ir, f)
        got = k.run(f)
        if (got.rule, got.outbound_id, got.mark, got.must) != (want.rule, want.outbound_id, want.mark, want.must):
            problems.append(f"{label}: {f}\n  python: {want}\n  kernel: {got}")
        if got.classify_only is not None and got.classify_only != (k.n_rules if want.rule is None else want.rule):
            problems.append(f"{label}: classify_only {got.classify_only} for {f}, python {want}")
    assert not problems, "\n".join(problems[:5])
    return len(flows)


@pytest.mark.root
@pytest.mark.parametrize("forcing", sorted(FORCINGS))
def test_edge_config_each_path(forcing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in FORCINGS[forcing].items():
        monkeypatch.setattr(eb, name, value)
    c = compile_text(tmp_path, EDGE_CONFIG, strategy="bitvector")
    src = (c.out / "program.c").read_text()
    lpm = "BPF_MAP_TYPE_LPM_TRIE" in src
    tree = "dip4_class(" in src
    if forcing == "trees":
        assert tree and not lpm and "mac_class(" in src
        assert "static __always_inline __u32 dip4_class(" in src
    elif forcing == "tables":
        assert tree and not lpm and not TREE_LEAF.search(src)
        for name in ("dip4", "dip6", "sip4", "sip6", "mac"):
            assert f"{name}_intervals[" in src
    elif forcing == "trees-and-tables":
        assert not lpm and "_intervals[" in src and TREE_LEAF.search(src)
    elif forcing == "maps":
        assert lpm and not tree and "mac_vecs SEC" in src
    else:
        assert lpm and "_class(__u" in src  # some families as trees, some as tries
    rng = random.Random(hash(forcing) & 0xFFFF)
    flows = _edge_flows(rng, 250)
    # every address of the edge lists as destination once, v4 and v6
    for a in EDGE_ADDRS_V4 + EDGE_ADDRS_V6:
        src_a = "10.9.9.9" if ":" not in a else "fd00::5"
        flows.append(evaluate.Flow(l4proto=6, src=ipaddress.ip_address(src_a), sport=1000,
                                   dst=ipaddress.ip_address(a), dport=53, mac=0x020000000001, dscp=46))
    with Kernel(c.build) as k:
        _check(k, c.checked.ir_checked, flows, forcing)


@pytest.mark.root
@pytest.mark.parametrize("forcing", ["trees", "maps", "mixed", "tables", "trees-and-tables"])
def test_random_configs_each_path(forcing: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The differential generator's configs (big ones included), each address and MAC field
    forced through trees, through maps, or split between them."""
    for name, value in FORCINGS[forcing].items():
        monkeypatch.setattr(eb, name, value)
    base = 777_000 + 100 * sorted(FORCINGS).index(forcing)
    compared = 0
    for seed in [base + i for i in range(6)] + [base + 7, base + 15]:  # seeds % 8 == 7 are big
        text, consts, uses_pname = td.gen_config(seed, allow_big=True)
        c = compile_text(tmp_path / f"cfg{seed}", text, strategy="bitvector")
        ir = c.checked.ir_checked
        matcher = DomainMatcher.from_sets(ir.domain_sets)
        rng = random.Random(seed)
        flows = []
        for _ in range(60):
            f, _name = td.gen_flow(rng, consts, matcher, uses_pname)
            flows.append(f)
        with Kernel(c.build) as k:
            compared += _check(k, ir, flows, f"{forcing} seed {seed}")
    assert compared >= 8 * 60


@pytest.mark.root
def test_cidr_set_size_picks_tree_table_or_trie(tmp_path: Path) -> None:
    """With the default thresholds: a dip() set cut into more than MAX_TREE_INTERVALS intervals
    goes to an LPM trie, a few hundred prefixes to a sorted table, a few to an inlined tree; all
    three classify like the evaluator."""
    rng = random.Random(5)
    n_big = eb.MAX_TREE_INTERVALS // 2 + 500  # disjoint /24s: about two intervals each
    nets = sorted({ipaddress.IPv4Network((rng.randrange(1 << 24) << 8, 24)) for _ in range(n_big)},
                  key=lambda n: int(n.network_address))
    big = ", ".join(str(n) for n in nets)
    mid = ", ".join(f"'2001:db8:{i:x}::/48'" for i in range(0, 600, 2))
    text = f"""
global:
  lan_interface: [eth0]
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  g1: {{policy: random}}
routing:
  rules:
    - 'sip(10.0.0.0/8) && dport(22) -> block'
    - 'dip({big}) -> g1'
    - "dip({mid}) -> direct(mark: 7)"
  fallback: direct
"""
    c = compile_text(tmp_path, text, strategy="bitvector")
    src = (c.out / "program.c").read_text()
    assert "dip4_vecs SEC" in src and "dip6_intervals[" in src and "sip4_class(__u32 a)" in src
    flows = []
    for _ in range(200):
        n = rng.choice(nets)
        dst = ipaddress.IPv4Address(rng.randint(int(n.network_address) - 1, int(n.broadcast_address) + 1) % (1 << 32))
        flows.append(evaluate.Flow(l4proto=6, src=ipaddress.ip_address(rng.choice(["10.0.0.1", "11.0.0.1"])),
                                   sport=1, dst=dst, dport=rng.choice([22, 80]), mac=1, dscp=0))
    flows += [evaluate.Flow(l4proto=17, src=ipaddress.ip_address("fd00::1"), sport=1,
                            dst=ipaddress.ip_address(f"2001:db8:{i:x}::{j}"), dport=9, mac=1)
              for i in range(0, 602, 7) for j in (0, 1)]
    flows += [evaluate.Flow(l4proto=17, src=ipaddress.ip_address("fd00::1"), sport=1,
                            dst=ipaddress.ip_address(a), dport=9, mac=1) for a in ["::", "2001:db9::", "ffff::1"]]
    with Kernel(c.build) as k:
        _check(k, c.checked.ir_checked, flows, "big, mid and small sets")


@pytest.mark.root
def test_big_trees_are_tables_and_classify_right(tmp_path: Path) -> None:
    """Two big trees in one function sent clang's CodeGenPrepare into minutes (600 v4 + 300 v6
    rules: 41 s), so families above MAX_INLINE_TREE intervals are sorted tables with a
    fixed-depth search, small ones stay trees; the program agrees with the evaluator on both
    families."""
    rules = [f"    - \"dip(10.{i // 250}.{i % 250}.{i % 250 + 1}/32) -> {'g1' if i % 2 else 'direct'}\""
             for i in range(600)]
    rules += [f"    - \"dip('2001:db8:{i:x}::1/128') && dport({1000 + i}) -> g1\"" for i in range(300)]
    rules += ["    - \"sip(10.0.0.0/8, 'fd00::/8') -> block\""]
    text = ("nodes:\n  n1: 'socks5://192.0.2.10:1080'\ngroups:\n  g1: {policy: random}\n"
            "routing:\n  rules:\n" + "\n".join(rules) + "\n  fallback: direct\n")
    c = compile_text(tmp_path, text, strategy="bitvector")
    src = (c.out / "program.c").read_text()
    assert "static __always_inline __u32 dip4_class(__u32 a, __u32 z)" in src
    assert "static __always_inline __u32 dip6_class(__u64 hi, __u64 lo, __u32 z)" in src
    assert "static __always_inline __u32 sip4_class(__u32 a)" in src
    ir = c.checked.ir_checked
    flows = [evaluate.Flow(l4proto=6, src=ipaddress.ip_address("192.168.1.1"), sport=1,
                           dst=ipaddress.ip_address(f"10.{i // 250}.{i % 250}.{i % 250 + 1}"), dport=80,
                           mac=0x020000000001, dscp=0) for i in range(0, 600, 7)]
    flows += [evaluate.Flow(l4proto=6, src=ipaddress.ip_address("2001:db8:ffff::1"), sport=1,
                            dst=ipaddress.ip_address(f"2001:db8:{i:x}::1"), dport=1000 + i + (i % 2),
                            mac=0x020000000001, dscp=0) for i in range(0, 300, 5)]
    with Kernel(c.build) as k:
        assert _check(k, ir, flows, "big trees") == len(flows)
