"""What the compiler makes of the `dns` section for the DNS module: dns.bind checked with its
position, rules compiled to structured calls, warnings for what the runtime does not do."""
from __future__ import annotations

from pathlib import Path

import pytest

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.dns_rules import parse_bind
from dae_py.compiler.pipeline import Checked, compile_config

BASE = """\
global:
  lan_interface: [lan0]
dns:
{dns}routing:
  rules:
    - "domain(suffix: proxied.test) -> direct(mark: 1)"
  fallback: direct
"""


def check(dns_text: str) -> Checked:
    return compile_config(None, None, text=BASE.format(dns=dns_text))


def test_bind_accepts_v4_v6_and_default_port_and_rejects_bad_ones() -> None:
    assert parse_bind("10.0.0.1:5353") == ("10.0.0.1", 5353)
    assert parse_bind("[fd00::1]:53") == ("fd00::1", 53)
    assert parse_bind("fd00::1") == ("fd00::1", 53)
    assert parse_bind("10.0.0.1") == ("10.0.0.1", 53)
    for bad in ("10.0.0.300:53", "host.example:53", "10.0.0.1:0", "[fd00::1", "10.0.0.1:99999"):
        with pytest.raises(ValueError):
            parse_bind(bad)
    c = check("  bind: ['10.0.0.1:53', '[fd00::1]:53']\n  upstream: {u: 'udp://10.0.0.2'}\n"
              "  routing: {request: {fallback: u}}\n")
    assert c.dns["bind"] == [{"host": "10.0.0.1", "port": 53}, {"host": "fd00::1", "port": 53}]


def test_bad_bind_is_an_error_at_its_value() -> None:
    with pytest.raises(CompileError) as e:
        check("  bind: 'gateway:53'\n")
    text = str(e.value)
    assert "config.yaml:4:9: invalid dns.bind" in text
    with pytest.raises(CompileError) as e:
        check("  bind: ['10.0.0.1:53', '10.0.0.1:x']\n")
    assert "config.yaml:4:25: invalid dns.bind: dns.bind '10.0.0.1:x': port 'x' is not a number" in str(e.value)


def test_rules_become_structured_calls_sharing_the_routing_matchers() -> None:
    c = check("  bind: '10.0.0.1:53'\n  upstream: {u: 'udp://10.0.0.2', t: 'tls://10.0.0.3'}\n"
              "  routing:\n    request:\n      rules: ['qname(suffix: a.test, keyword: ads) && !qtype(aaaa) -> t']\n"
              "      fallback: u\n    response:\n      rules: ['upstream(t) -> accept', 'ip(10.9.0.0/16) -> t']\n"
              "      fallback: accept\n")
    (rule,) = c.dns["routing"]["request"]["rules"]
    assert rule["target"] == "t" and rule["line"] == 8
    qname, qtype = rule["calls"]
    assert qtype == {"func": "qtype", "negated": True, "qtypes": [28]}
    ds = c.dns["domain_sets"][qname["domain_bit"]]
    assert ds["suffix"] == ["a.test"] and ds["keyword"] == ["ads"]
    resp = c.dns["routing"]["response"]["rules"]
    assert resp[1]["calls"][0]["v4"] == ["10.9.0.0/16"]


def test_unknown_qtype_is_an_error_with_position() -> None:
    with pytest.raises(CompileError) as e:
        check("  upstream: {u: 'udp://10.0.0.2'}\n  routing: {request: {rules: ['qtype(bogus) -> u'], fallback: u}}\n")
    assert "unknown DNS query type 'bogus'" in str(e.value)


def test_warnings_say_what_the_runtime_does_not_do() -> None:
    c = check("  upstream: {q: 'quic://10.0.0.2', n: 'udp://dns.example'}\n  optimistic_cache: true\n"
              "  routing: {request: {fallback: n}}\n")
    msgs = [(d.pos.line, d.message) for d in c.diags.warnings]
    assert not any("not intercepted" in m for _line, m in msgs)  # LAN DNS is hijacked (hijack_port)
    assert not any("quic:// is not supported" in m for line, m in msgs)  # runtime/dns/upstreams/quic.py
    assert any(line == 4 and "resolved once at start" in m for line, m in msgs)
    assert not any("optimistic_cache" in m for line, m in msgs)  # serve-stale is implemented


def test_warnings_for_asis_behind_dns_bind_and_upstreams_routing_would_proxy() -> None:
    text = BASE.format(dns="  bind: '10.0.0.1:53'\n  upstream: {u: 'udp://10.9.9.9'}\n").replace(
        '    - "domain(suffix: proxied.test) -> direct(mark: 1)"', '    - "dip(10.9.9.0/24) -> block"')
    c = compile_config(None, None, text=text)
    msgs = [(d.pos.line, d.message) for d in c.diags.warnings]
    assert any(line == 4 and "'asis'" in m for line, m in msgs)
    assert any(line == 5 and "routing would send 10.9.9.9 to 'block'" in m for line, m in msgs)


def test_a_dns_section_gives_the_hijack_listener_a_port_and_none_gives_none() -> None:
    c = check("  upstream: {u: 'udp://10.0.0.2'}\n")
    assert c.dns["hijack_port"] == 12346  # tproxy_port + 1
    plain = compile_config(None, None, text="global: {lan_interface: [eth0]}\nrouting: {fallback: direct}\n")
    assert plain.dns["hijack_port"] == 0


def test_the_program_hijacks_dns_only_for_a_config_with_a_dns_section(tmp_path: Path) -> None:
    with_dns = BASE.format(dns="  upstream: {u: 'udp://10.0.0.2'}\n")
    compile_config(None, tmp_path / "a", text=with_dns)
    c_text = (tmp_path / "a" / "program.c").read_text()
    assert "#define DAE_DNS_HIJACK_PORT 12346" in c_text and '#include "dns_hijack.h"' in c_text
    compile_config(None, tmp_path / "b", text="global: {lan_interface: [eth0]}\nrouting: {fallback: direct}\n")
    assert "dns_hijack" not in (tmp_path / "b" / "program.c").read_text()
