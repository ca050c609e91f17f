"""The generated C reads as if written by hand: no declarations the program does not use, no jump
to the next line, no argument a function ignores, tables wrapped like hand-written ones."""
from __future__ import annotations

from dae_py.compiler.emit import render
from dae_py.compiler.pipeline import compile_config

CONFIG = """\
global:
  lan_interface: [lan0]
routing:
  rules:
{rules}
  fallback: direct
"""


def source(rules: list[str], strategy: str) -> str:
    text = CONFIG.format(rules="\n".join(f'    - "{r}"' for r in rules))
    checked = compile_config(None, None, text=text)
    return render(checked.ir, "config.yaml", "0" * 64, strategy).c_source


def test_small_cidr_sets_declare_no_lpm_key_types() -> None:
    for strategy in ("linear", "bitvector"):
        src = source(["dip(10.0.0.0/8) -> block", "sip(fd00::/8) -> block"], strategy)
        assert "lpm4_key" not in src and "lpm6_key" not in src, strategy


def test_a_large_v4_only_set_declares_only_the_v4_key() -> None:
    nets = ", ".join(f"10.{2 * i}.0.0/16" for i in range(20))  # not adjacent: no two collapse
    src = source([f"dip({nets}) -> block"], "linear")  # more than 8 CIDRs: an LPM set
    assert "struct lpm4_key {" in src and "lpm6_key" not in src
    src = source([f"dip({nets}) -> block"], "bitvector")  # 41 intervals: an inlined tree, no trie
    assert "lpm4_key" not in src and "lpm6_key" not in src


def test_one_word_of_rules_ends_the_search_without_a_goto() -> None:
    src = source(["dport(80) -> block", "l4proto(udp) -> block"], "bitvector")
    assert "goto found;" not in src and "found:" not in src


def test_several_words_jump_past_the_later_words_only() -> None:
    src = source([f"dport({1000 + i}) -> block" for i in range(70)], "bitvector")
    assert src.count("goto found;") == 1  # two words: the first jumps over the second
    assert "found:" in src


def test_the_mac_tree_takes_only_the_address() -> None:
    src = source(["mac('02:42:ac:11:00:02') -> block"], "bitvector")
    assert "static __always_inline __u32 mac_class(__u64 m)\n" in src
    assert "mac_class(p->smac)" in src and "(void)z;\n{" not in src


def test_the_protocol_dscp_class_table_has_sixteen_entries_a_line() -> None:
    src = source(["dscp(46) -> block", "l4proto(udp) -> direct"], "bitvector")
    start = src.index("proto_dscp_class[256] DAE_DATA = {\n") + len("proto_dscp_class[256] DAE_DATA = {\n")
    body = src[start:src.index("};", start)].splitlines()
    assert len(body) == 16
    assert all(line.split("/*")[0].count(",") == 16 for line in body)
    assert body[0].endswith("/* IPv4 TCP, DSCP 0-15 */") and body[-1].endswith("/* IPv6 UDP, DSCP 48-63 */")


def test_no_comment_names_a_file_no_build_has() -> None:
    src = source(["domain(suffix: example.com) -> block"], "linear")
    assert "domain_sets.json" not in src
