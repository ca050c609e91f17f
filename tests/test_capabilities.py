"""The capability table (contract/capabilities.py) is the one list of what the runtime acts on:
the runtime's protocols are its rows, the compiler's dialable set is derived from it, and every
config item the runtime does not act on gets a warning at its file:line:col saying what is missing."""
from __future__ import annotations

import pytest

from dae_py.compiler import nodes
from dae_py.compiler.pipeline import compile_config
from dae_py.contract import capabilities
from dae_py.runtime.proxy import registry


def test_the_runtime_protocols_are_the_tables() -> None:
    assert capabilities.RUNTIME_PROTOCOLS == registry.PROTOCOLS
    assert capabilities.UDP_PROTOCOLS == registry.UDP_PROTOCOLS
    for scheme in registry.UDP_PROTOCOLS:  # what the table promises, the module provides
        assert callable(registry.load(scheme).associate), scheme


def test_the_compiler_dials_what_the_table_says() -> None:
    assert nodes.DIALABLE == frozenset(capabilities.RUNTIME_PROTOCOLS)
    assert nodes.KNOWN == capabilities.KNOWN_PROTOCOLS
    assert all(p.missing for p in capabilities.PROTOCOLS if not p.dialable)


def _warnings(text: str) -> list[tuple[int, int, str]]:
    checked = compile_config(None, None, text=text, name="config.yaml")
    return [(d.pos.line, d.pos.col, d.message) for d in checked.diags.warnings]


def test_pname_warns_at_the_call_when_no_wan_interface_is_set() -> None:
    text = """\
global: {{lan_interface: [eth0]{wan}}}
routing:
  rules:
    - "dport(80) && pname(curl) -> block"
  fallback: direct
"""
    hits = [w for w in _warnings(text.format(wan="")) if w[2].startswith("pname() needs local-host routing")]
    assert [(line, col) for line, col, _ in hits] == [(4, 21)]
    assert "no wan_interface is set" in hits[0][2] and "never matches" in hits[0][2]
    assert not [w for w in _warnings(text.format(wan=", wan_interface: auto")) if w[2].startswith("pname()")]


DOMAIN_RULES = """\
global: {{lan_interface: [eth0]}}
{dns}routing:
  rules:
    - "domain(suffix: example.com) -> block"
  fallback: direct
"""


def test_domain_without_dns_bind_warns_at_the_rule_that_it_never_matches() -> None:
    ws = _warnings(DOMAIN_RULES.format(dns=""))
    hits = [w for w in ws if w[2].startswith("domain() needs the DNS module")]
    assert [(line, col) for line, col, _ in hits] == [(4, 8)]
    assert "there is no dns section, so this rule never matches" in hits[0][2]


def test_domain_with_dns_bind_needs_no_warning_at_the_rule() -> None:
    dns = """\
dns:
  upstream: {up: 'udp://192.0.2.53:53'}
  bind: '127.0.0.1:5353'
  routing: {request: {fallback: up}}
"""
    ws = _warnings(DOMAIN_RULES.format(dns=dns))
    assert not [w for w in ws if w[2].startswith("domain() needs")]


@pytest.mark.parametrize("option, value, says", [
    ("tproxy_port_protect", "false", "always protects the tproxy port"),
    ("tls_implementation", "utls", "Python's ssl module"),
])
def test_an_option_the_runtime_ignores_warns_at_its_value(option: str, value: str, says: str) -> None:
    first = f"global: {{lan_interface: [eth0], {option}: {value}}}"
    ws = _warnings(first + "\nrouting:\n  fallback: direct\n")
    hits = [w for w in ws if w[2].startswith(f"global.{option} is ignored")]
    assert [(line, c) for line, c, _ in hits] == [(1, first.index(f": {value}") + 3)], ws
    assert says in hits[0][2]


@pytest.mark.parametrize("option, value", [("dial_mode", "ip"), ("tproxy_port_protect", "true"),
                                           ("dial_mode", "domain"), ("dial_mode", "domain+"),
                                           ("dial_mode", "domain++"), ("sniffing_timeout", "100ms")])
def test_an_option_value_the_runtime_already_has_is_not_warned(option: str, value: str) -> None:
    ws = _warnings(f"global: {{lan_interface: [eth0], {option}: {value}}}\nrouting:\n  fallback: direct\n")
    assert not [w for w in ws if w[2].startswith(f"global.{option}")]


def test_a_protocol_without_an_outbound_names_what_is_missing_at_the_node() -> None:
    link = "socks5h://192.0.2.1:1080"  # vmess was the example until the runtime dialed it
    ws = _warnings(f"global: {{lan_interface: [eth0]}}\nnodes:\n  v: '{link}'\nrouting:\n  fallback: direct\n")
    hits = [w for w in ws if "cannot dial socks5h" in w[2]]
    assert [(line, col) for line, col, _ in hits] == [(3, 6)]
    assert "(no socks5h outbound;" in hits[0][2]
