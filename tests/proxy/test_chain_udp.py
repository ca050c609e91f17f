"""Which chains carry UDP, and how a config, the status page and `explain` say so when a group
has none (no network: the flows themselves are in test_chain_lab.py).

A chain carries UDP when its last hop carries datagrams inside its own stream (trojan, vmess,
vless); the capability table says which, the protocol modules provide `associate_on`, and the
compiler, the groups and the status share one wording for why a node carries none."""
from __future__ import annotations

from pathlib import Path

import pytest

from dae_py.compiler.pipeline import compile_config
from dae_py.contract import capabilities
from dae_py.runtime.build import Build
from dae_py.runtime.controller.general import summary
from dae_py.runtime.controller.status import render
from dae_py.runtime.controller.view import GatewayView
from dae_py.runtime.explain import udp_caveat
from dae_py.runtime.groups.stats import Check
from dae_py.runtime.lab.gateway_proc import compile_build
from dae_py.runtime.packets import IPPROTO_TCP, IPPROTO_UDP, FlowSpec
from dae_py.runtime.proxy import Node, registry
from dae_py.runtime.relay import Gateway, StaticRouter

B64 = "YWVzLTI1Ni1nY206c2VjcmV0"  # aes-256-gcm:secret
NODES = f"""\
nodes:
  ss_chain: 'socks5://192.0.2.9:1080 -> ss://{B64}@192.0.2.1:8388'
  trojan_chain: 'socks5://192.0.2.9:1080 -> trojan://pw@192.0.2.2:443?allowInsecure=1'
"""


def config(groups: str, rules: str, fallback: str = "direct") -> str:
    return (f"global: {{lan_interface: [eth0], tcp_check_url: ['http://192.0.2.1/'], "
            f"udp_check_dns: ['192.0.2.1:53']}}\n{NODES}groups:\n{groups}routing:\n  rules:\n{rules}"
            f"  fallback: {fallback}\n")


ONLY_SS = "  only_ss: {filter: 'name(ss_chain)', policy: fixed(0)}\n"
MIXED = "  mixed: {policy: fixed(0)}\n"


def warnings(text: str) -> list[tuple[int, str]]:
    checked = compile_config(None, None, text=text, name="config.yaml")
    return [(d.pos.line, d.message) for d in checked.diags.warnings]


def test_the_table_lists_exactly_the_protocols_that_ride_a_given_stream() -> None:
    assert set(registry.stream_dialers()) == set(capabilities.CHAIN_HOPS) == set(registry.CHAIN_HOPS)
    assert set(registry.stream_associators()) == set(capabilities.CHAIN_UDP) == set(registry.CHAIN_UDP)
    assert set(capabilities.CHAIN_UDP) <= set(capabilities.UDP_PROTOCOLS) & set(capabilities.CHAIN_HOPS)


@pytest.mark.parametrize("last, udp", [("trojan", True), ("vmess", True), ("vless", True),
                                       ("ss", False), ("socks5", False), ("http", False)])
def test_a_chain_carries_udp_only_when_its_last_hop_carries_it_in_its_stream(last: str, udp: bool) -> None:
    first = {"name": "a", "protocol": "socks5", "host": "192.0.2.9", "port": 1080}
    n = Node.from_manifest({"name": "c", "protocol": last, "host": "192.0.2.1", "port": 443,
                            "username": "6f1d2c4b-8a3e-4f5a-9b7c-2d1e0f9a8b7c", "password": "pw",
                            "chain": [first]})
    assert n.supports_udp is udp
    if not udp:
        assert n.udp_missing is not None and (f"ends in {last}" in n.udp_missing
                                              or f"{last} nodes carry no UDP" in n.udp_missing)
    plain = Node.from_manifest({**first, "name": "p", "protocol": last, "password": "pw",
                                "username": "6f1d2c4b-8a3e-4f5a-9b7c-2d1e0f9a8b7c"})
    assert plain.supports_udp is (last in capabilities.UDP_PROTOCOLS)


def test_a_group_of_only_tcp_chains_that_routing_sends_udp_to_is_warned_at_the_group() -> None:
    ws = warnings(config(ONLY_SS, "    - \"dport(53) -> only_ss\"\n"))
    hits = [w for w in ws if "none of its nodes carries UDP" in w[1]]
    assert len(hits) == 1, ws
    line, message = hits[0]
    assert line == 6  # the group's key
    assert "ss_chain: a chain carries UDP only when its last hop is trojan, vmess, vless" in message
    assert "(line 9)" in message and "refuses" in message


@pytest.mark.parametrize("groups, rules, fallback", [
    (ONLY_SS, "    - \"l4proto(tcp) && dport(443) -> only_ss\"\n", "direct"),  # TCP only
    (ONLY_SS, "    - \"!l4proto(udp) -> only_ss\"\n", "direct"),
    (MIXED, "    - \"dport(53) -> mixed\"\n", "mixed"),  # the trojan chain carries UDP
])
def test_no_warning_when_udp_cannot_reach_the_group_or_a_node_carries_it(groups: str, rules: str,
                                                                         fallback: str) -> None:
    ws = warnings(config(groups, rules, fallback))
    assert not [w for w in ws if "carries UDP" in w[1]], ws


def test_the_fallback_counts_as_sending_udp() -> None:
    ws = warnings(config(ONLY_SS, "    - \"dport(1) -> direct\"\n", "only_ss"))
    assert [w for w in ws if "none of its nodes carries UDP" in w[1] and "(line 10)" in w[1]], ws


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    root = tmp_path_factory.mktemp("chainudp")
    (root / "config.yaml").write_text(config(ONLY_SS + MIXED, "    - \"dport(53) -> only_ss\"\n"
                                             "    - \"dport(54) -> mixed\"\n"))
    compile_build(root / "config.yaml", root / "build")
    return Build.open(root / "build")


def test_status_says_which_nodes_carry_udp_and_why_not(build: Build) -> None:
    view = GatewayView(build, Gateway.from_manifest(StaticRouter(0), build.manifest))
    s = summary(view)
    groups = {g["name"]: g for g in s["groups"]}
    assert groups["only_ss"]["udp_now"] is None
    assert groups["mixed"]["udp_now"] == "trojan_chain"
    nodes = {n["name"]: n for n in groups["mixed"]["nodes"]}
    assert nodes["trojan_chain"]["udp"] is True and nodes["ss_chain"]["udp"] is False
    assert nodes["ss_chain"]["chain"] == ["socks5"]
    text = render(s)
    assert "only_ss (fixed): new flows via ss_chain; UDP refused: no node carries UDP" in text, text
    assert "mixed (fixed): new flows via ss_chain; UDP via trojan_chain" in text, text
    assert "ss_chain carries no UDP: a chain carries UDP only when its last hop is trojan" in text
    assert "socks5 -> ss" in text
    group = view.group("only_ss")
    assert group is not None and group.candidates(Check.UDP) == []
    refusal = str(group.all_down(Check.UDP, []))
    assert "no node carries udp (ss_chain: a chain carries UDP only" in refusal, refusal


def test_explain_notes_that_a_udp_flow_to_such_a_group_is_refused(build: Build) -> None:
    import ipaddress

    def flow(proto: int) -> FlowSpec:
        return FlowSpec(l4proto=proto, src=ipaddress.ip_address("10.0.0.2"), sport=5000,
                        dst=ipaddress.ip_address("192.0.2.7"), dport=53)

    notes = udp_caveat(build, flow(IPPROTO_UDP), "only_ss")
    assert len(notes) == 1 and "group 'only_ss' has no node that carries UDP" in notes[0]
    assert "the relay refuses this flow" in notes[0]
    assert udp_caveat(build, flow(IPPROTO_TCP), "only_ss") == ()
    assert udp_caveat(build, flow(IPPROTO_UDP), "mixed") == ()
    assert udp_caveat(build, flow(IPPROTO_UDP), "direct") == ()


def test_the_docs_table_lists_the_chain_udp_protocols() -> None:
    doc = (Path(__file__).parents[2] / "docs" / "shadowsocks.md").read_text()
    row = next(line for line in doc.splitlines() if line.startswith("| chains"))
    assert all(p in row for p in capabilities.CHAIN_UDP), row
