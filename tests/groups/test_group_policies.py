"""Group policies checked at compile time against the nodes the filters select and the runtime
can dial; `[add_latency: ...]` in the latency policies; `group(mark: N)` as a marked view of the
group (issue 12). Compile-time parts through the real compiler; runtime parts on the manifest
the compiler wrote."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.pipeline import compile_config
from dae_py.contract.manifest import Manifest
from dae_py.runtime.groups import Check, Group, GroupSpec, Policy
from dae_py.runtime.groups.marks import MARKED_BASE, marked_routes
from dae_py.runtime.proxy import DialOptions, DirectOutbound, Node
from dae_py.runtime.relay.outbounds import OutboundTable

WHY = "(socks5h: no socks5h outbound; socks5:// works: the relay sends addresses, not names)"
UNDIALABLE = "socks5h://192.0.2.99:1080"  # a scheme the runtime has no outbound for (contract/capabilities.py)

HEAD = f"""\
global: {{lan_interface: [eth0]}}
nodes:
  n1: 'socks5://192.0.2.10:1080'
  v1: '{UNDIALABLE}'
  n2: 'socks5://192.0.2.11:1080'
  hk1: 'socks5://192.0.2.12:1080'
  hk2: 'socks5://192.0.2.13:1080'
groups:
"""


def config(groups: str, rules: str = "", fallback: str = "direct") -> str:
    return HEAD + groups + "routing:\n  rules:\n" + (rules or '    - "dport(1) -> direct"\n') + \
        f"  fallback: {fallback}\n"


def messages(text: str, kind: str = "error") -> list[str]:
    """`config.yaml:L:C: kind: message` of each diagnostic of `kind`."""
    try:
        checked = compile_config(None, None, text=text, name="config.yaml")
    except CompileError as exc:
        diags = exc.diagnostics
    else:
        diags = checked.diags
    found = diags.errors if kind == "error" else diags.warnings
    return [f"config.yaml:{d.pos.line}:{d.pos.col}: {kind}: {d.message}" for d in found]


def manifest(tmp_path: Path, text: str) -> Manifest:
    (tmp_path / "config.yaml").write_text(text)
    compile_config(tmp_path / "config.yaml", tmp_path / "build")
    return Manifest.from_json(json.loads((tmp_path / "build" / "manifest.json").read_text()))


# ---- compile time ------------------------------------------------------------------------------
def test_fixed_past_the_dialable_nodes_is_an_error_at_the_policy() -> None:
    # two nodes selected, but only n1 can be dialed: fixed(1) names v1
    errs = messages(config("  g: {policy: 'fixed(1)', filter: ['name(n1, v1)']}\n", fallback="g"))
    assert errs == ["config.yaml:9:15: error: group 'g': fixed(1) selects node v1 " + WHY + ", "
                    "which the runtime cannot dial"]


def test_fixed_past_the_selected_nodes_is_an_error_at_the_policy() -> None:
    errs = messages(config("  g: {policy: 'fixed(1)', filter: ['name(n1)']}\n", fallback="g"))
    assert errs == ["config.yaml:9:15: error: group 'g': fixed(1) but the group has 1 node(s)"]


def test_a_filter_selecting_only_undialable_nodes_is_an_error_at_the_filter_when_routing_uses_it() -> None:
    errs = messages(config("  vm: {policy: random, filter: ['name(v1)']}\n", '    - "dport(443) -> vm"\n'))
    assert errs == ["config.yaml:9:33: error: group 'vm': filter 'name(v1)' selects only nodes the runtime cannot "
                    "dial: v1 " + WHY + "; routing sends flows to the group (line 12)"]


def test_the_same_filter_in_an_unused_group_is_a_warning() -> None:
    text = config("  vm: {policy: random, filter: ['name(v1)']}\n")
    assert messages(text) == []
    assert "config.yaml:9:33: warning: group 'vm': filter 'name(v1)' selects only nodes the runtime cannot dial: " \
           "v1 " + WHY + " (no rule uses the group)" in messages(text, "warning")


def test_filters_that_select_nothing_dialable_beside_ones_that_do_are_warnings_at_them() -> None:
    text = config("  g: {policy: random, filter: ['name(v1)', 'name(n2)', 'name(nothing)']}\n", fallback="g")
    assert messages(text) == []
    warnings = messages(text, "warning")
    assert "config.yaml:9:32: warning: group 'g': filter 'name(v1)' selects only nodes the runtime cannot dial: " \
           "v1 " + WHY in warnings
    assert "config.yaml:9:56: warning: group 'g': filter 'name(nothing)' selects no node" in warnings


def test_fixed_counts_as_dae_does_and_the_runtime_gets_the_same_node(tmp_path: Path) -> None:
    """fixed(2) is the third node the filter selects (n2, after n1 and v1); the manifest lists
    only dialable nodes, with the index moved to match, and the runtime picks n2."""
    m = manifest(tmp_path, config("  g: {policy: 'fixed(2)', filter: ['name(n1, v1, n2)']}\n", fallback="g"))
    (entry,) = m.groups
    assert (entry.nodes, entry.fixed_index) == (("n1", "n2"), 1)
    nodes = {n.name: Node.from_manifest(n) for n in m.nodes if n.dialable}
    group = Group.from_manifest(entry, nodes)
    assert group.select(Check.TCP) is nodes["n2"]


# ---- add_latency ------------------------------------------------------------------------------
def test_add_latency_reaches_the_latency_policies(tmp_path: Path) -> None:
    """hk1 is 300 ms slower than n1, but its filter takes 500 ms off: min selects hk1; n2's
    +200 ms keeps it behind although it is measured fastest."""
    m = manifest(tmp_path, config(
        "  g: {policy: min, filter: ['name(n1)', 'name(keyword: hk) [add_latency: -500ms]', "
        "'name(n2) [add_latency: 200ms]']}\n", fallback="g"))
    (entry,) = m.groups
    assert dict(entry.add_latency_ms) == {"hk1": -500.0, "hk2": -500.0, "n2": 200.0}
    spec = GroupSpec.from_manifest(entry)
    assert spec.policy is Policy.MIN and spec.add_latency == {"hk1": -0.5, "hk2": -0.5, "n2": 0.2}
    nodes = {n.name: Node.from_manifest(n) for n in m.nodes if n.dialable}
    group = Group.from_manifest(entry, nodes)
    by_name = {n.name: n for n in group.nodes}
    for name, ms in (("n1", 100), ("hk1", 400), ("hk2", 900), ("n2", 50)):
        group.record(by_name[name], Check.TCP, ms / 1000)
    assert group.select(Check.TCP) is by_name["hk1"]  # 400 - 500 = -100 ms: the best
    assert group.metric(by_name["n2"], Check.TCP) == pytest.approx(0.25)
    group.record(by_name["hk1"], Check.TCP, None, "down")
    group.record(by_name["hk2"], Check.TCP, None, "down")
    assert group.select(Check.TCP) is by_name["n1"]  # 100 ms beats n2's 50 + 200


def test_without_add_latency_the_fastest_node_wins(tmp_path: Path) -> None:
    m = manifest(tmp_path, config("  g: {policy: min, filter: ['name(n1)', 'name(keyword: hk)']}\n", fallback="g"))
    (entry,) = m.groups
    assert dict(entry.add_latency_ms) == {}
    nodes = {n.name: Node.from_manifest(n) for n in m.nodes if n.dialable}
    group = Group.from_manifest(entry, nodes)
    by_name = {n.name: n for n in group.nodes}
    for name, ms in (("n1", 100), ("hk1", 400), ("hk2", 900)):
        group.record(by_name[name], Check.TCP, ms / 1000)
    assert group.select(Check.TCP) is by_name["n1"]


# ---- group(mark: N) ------------------------------------------------------------------------------
def test_a_marked_group_route_is_a_view_of_the_group_dialing_with_the_mark(tmp_path: Path) -> None:
    m = manifest(tmp_path, config("  g: {policy: random, filter: ['name(n1, n2)']}\n",
                                  '    - "dport(443) -> g(mark: 0x800)"\n    - "dport(444) -> g"\n'
                                  '    - "dport(445) -> direct(mark: 0x900)"\n', fallback="'g(mark: 0x801)'"))
    gid = next(o.id for o in m.outbounds if o.name == "g")
    # the groups' views first, then direct's (the relay dials direct flows it re-routes with the mark)
    assert marked_routes(m) == {(gid, 0x800): MARKED_BASE, (gid, 0x801): MARKED_BASE + 1, (0, 0x900): MARKED_BASE + 2}
    table = OutboundTable.from_manifest(m, DialOptions(so_mark=0x80))
    marked_direct = table.get(MARKED_BASE + 2)
    assert isinstance(marked_direct, DirectOutbound) and marked_direct.opts.so_mark == 0x900
    base, view, fallback_view = table.get(gid), table.get(MARKED_BASE), table.get(MARKED_BASE + 1)
    assert isinstance(base, Group) and isinstance(view, Group) and isinstance(fallback_view, Group)
    assert (base.opts.so_mark, view.opts.so_mark, fallback_view.opts.so_mark) == (0x80, 0x800, 0x801)
    assert view.name == base.name and view.stats is base.stats and view.checker is base.checker
    view.record(view.nodes[0], Check.TCP, None, "down")  # seen through the view, counted for the group
    assert not base.stats[Check.TCP][base.nodes[0].name].alive
    assert table.groups() == [base]  # the views are not groups of their own (metrics, health)
    assert set(table.choosers()) == {gid, MARKED_BASE, MARKED_BASE + 1}
