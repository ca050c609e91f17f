"""dae's rule language, string by string: rules copied from dae's documentation (routing.md,
dns.md, example.dae) and the forms issue 12 names (`!` and `-` in bare values, the `domain:` and
`contains:` keys, trailing comments, quoted and unquoted values, non-ASCII names), each with the IR
it compiles to or the error it gets.

The IR is written in a compact form (`render`): `[!]field{values}` ANDed with `&&`, then
`-> outbound[(mark: 0x..)][(must)]`; a domain match shows its set's patterns, a CIDR match its
networks, a port match its ranges. geoip.dat / geosite.dat are small files written here with the
tags the documentation names.
"""
from __future__ import annotations

from collections.abc import Callable
from ipaddress import ip_network
from pathlib import Path
from typing import Any

import pytest

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.emit import outbound_macro
from dae_py.compiler.geodata import Attrs, SiteDomain, write_geoip, write_geosite
from dae_py.compiler.pipeline import compile_config
from dae_py.compiler.rules import RuleAst, RuleSyntaxError, parse_rule
from dae_py.compiler.rules.parse import parse_rule_lark
from dae_py.contract.ir import CidrSet, DomainRef, DomainSet, PortSet, RoutingIR, Rule, ValueSet

GEOSITE = {
    "cn": [SiteDomain("domain", "cn"), SiteDomain("full", "baidu.com")],
    "category-ads": [SiteDomain("domain", "ads.example")],
    "category-ads-all": [SiteDomain("domain", "ads.example"), SiteDomain("plain", "adserver")],
    "google-scholar": [SiteDomain("domain", "scholar.google.com")],
    "category-scholar-!cn": [SiteDomain("domain", "jstor.org")],
    "category-scholar-cn": [SiteDomain("domain", "cnki.net")],
    "geolocation-!cn": [SiteDomain("domain", "google.com"), SiteDomain("regex", "^x\\.example$")],
    "category-ai-!cn": [SiteDomain("domain", "openai.com")],
    "disney": [SiteDomain("domain", "disneyplus.com")],
    "google": [SiteDomain("domain", "google.cn", Attrs({"cn": True})), SiteDomain("domain", "google.com")],
}
GEOIP = {"private": ["10.0.0.0/8", "192.168.0.0/16", "fc00::/7"], "cn": ["1.0.1.0/24", "240e::/20"]}
EXT_SITE = {"yourtag": [SiteDomain("full", "ext.example")]}
EXT_IP = {"yourtag": ["203.0.113.0/24"]}

CONFIG = """\
global: {{lan_interface: [eth0]}}
nodes:
  n1: 'socks5://192.0.2.1:1080'
  香港-01: 'socks5://192.0.2.2:1080'
groups:
  my_group: {{policy: random}}
  ipv6_group: {{policy: random}}
  香港组: {{filter: 'name(香港-01)', policy: random}}
routing:
  rules:
    - {rule}
  fallback: direct
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("dae-rules")
    write_geosite(d / "geosite.dat", GEOSITE)
    write_geoip(d / "geoip.dat", {k: [ip_network(n) for n in v] for k, v in GEOIP.items()})
    write_geosite(d / "yourdatfile.dat", EXT_SITE)
    write_geoip(d / "yourgeoip.dat", {k: [ip_network(n) for n in v] for k, v in EXT_IP.items()})
    return d


def _values(ir: RoutingIR, v: object) -> str:
    if isinstance(v, PortSet):
        return ",".join(str(lo) if lo == hi else f"{lo}-{hi}" for lo, hi in v.ranges)
    if isinstance(v, CidrSet):
        return ",".join(str(n) for n in (*v.v4, *v.v6))
    if isinstance(v, ValueSet):
        return ",".join(hex(x) if isinstance(x, int) and x > 255 else str(x) for x in v.values)
    assert isinstance(v, DomainRef)
    (ds,) = [d for d in ir.domain_sets if d.bit == v.bit]
    return _domains(ds)


def _domains(ds: DomainSet) -> str:
    parts = [f"{k}:{x}" for k, xs in (("full", ds.full), ("suffix", ds.suffix), ("keyword", ds.keyword),
                                       ("regex", ds.regex)) for x in xs]
    return ",".join(parts)


def render(ir: RoutingIR, rule: Rule) -> str:
    ms = " && ".join(("!" if m.negated else "") + f"{m.field.value}{{{_values(ir, m.values)}}}" for m in rule.matches)
    a = rule.action
    out = "must_rules" if a.must_rules else a.outbound
    out += f"(mark: {a.mark:#x})" if a.mark else ""
    out += "(must)" if a.must and not a.must_rules else ""
    return f"{ms} -> {out}"


def compile_rule(assets: Path, rule: str) -> str:
    """The rule's IR in the compact form, or 'error: MESSAGE' (the first error, at the rule's line)."""
    quoted = "'" + rule.replace("'", "''") + "'"
    text = CONFIG.format(rule=quoted)
    try:
        checked = compile_config(None, None, text=text, name=str(assets / "config.yaml"))
    except CompileError as exc:
        errors = exc.diagnostics.errors
        return "error: " + errors[0].message
    (r,) = checked.ir_checked.rules
    return render(checked.ir_checked, r)


ROUTING_TABLE: list[tuple[str, str]] = [
    # routing.md: domain rules
    ('domain(suffix: v2raya.org) -> my_group',
     'domain{suffix:v2raya.org} -> my_group'),
    ('domain(v2raya.org) -> my_group',
     'domain{suffix:v2raya.org} -> my_group'),
    ('domain(full: dns.google) -> my_group',
     'domain{full:dns.google} -> my_group'),
    ('domain(keyword: facebook) -> my_group',
     'domain{keyword:facebook} -> my_group'),
    ("domain(regex: '\\.goo.*\\.com$') -> my_group",
     'domain{regex:\\.goo.*\\.com$} -> my_group'),
    ('domain(geosite:category-ads) -> block',
     'domain{suffix:ads.example} -> block'),
    ('domain(geosite:cn)->direct',
     'domain{full:baidu.com,suffix:cn} -> direct'),
    # routing.md: IP, port, protocol, MAC, process and DSCP rules
    ('dip(8.8.8.8) -> direct',
     'dip{8.8.8.8/32} -> direct'),
    ('dip(101.97.0.0/16) -> direct',
     'dip{101.97.0.0/16} -> direct'),
    ('dip(geoip:private) -> direct',
     'dip{10.0.0.0/8,192.168.0.0/16,fc00::/7} -> direct'),
    ('sip(192.168.0.0/24) -> my_group',
     'sip{192.168.0.0/24} -> my_group'),
    ('sip(192.168.50.0/24) -> direct',
     'sip{192.168.50.0/24} -> direct'),
    ('dport(80) -> direct',
     'dport{80} -> direct'),
    ('dport(10080-30000) -> direct',
     'dport{10080-30000} -> direct'),
    ('sport(38563) -> direct',
     'sport{38563} -> direct'),
    ('sport(10080-30000) -> direct',
     'sport{10080-30000} -> direct'),
    ('l4proto(tcp) -> my_group',
     'l4proto{6} -> my_group'),
    ('l4proto(udp) -> direct',
     'l4proto{17} -> direct'),
    ('ipversion(4) -> block',
     'ipversion{4} -> block'),
    ('ipversion(6) -> ipv6_group',
     'ipversion{6} -> ipv6_group'),
    ("mac('02:42:ac:11:00:02') -> direct",
     'mac{0x242ac110002} -> direct'),
    ('pname(curl) -> direct',
     'pname{curl} -> direct'),
    ('dscp(0x4) -> direct',
     'dscp{4} -> direct'),
    # routing.md: several values (ORed), 'and' and 'not' rules
    ('domain(keyword: google, suffix: www.twitter.com, suffix: v2raya.org) -> my_group',
     'domain{suffix:v2raya.org,suffix:www.twitter.com,keyword:google} -> my_group'),
    ('dip(geoip:cn, geoip:private) -> direct',
     'dip{1.0.1.0/24,10.0.0.0/8,192.168.0.0/16,240e::/20,fc00::/7} -> direct'),
    ('dip(9.9.9.9, 223.5.5.5) -> direct',
     'dip{9.9.9.9/32,223.5.5.5/32} -> direct'),
    ('sip(192.168.0.6, 192.168.0.10, 192.168.0.15) -> direct',
     'sip{192.168.0.6/32,192.168.0.10/32,192.168.0.15/32} -> direct'),
    ('dip(geoip:cn) && dport(80) -> direct',
     'dip{1.0.1.0/24,240e::/20} && dport{80} -> direct'),
    ('dip(8.8.8.8) && l4proto(tcp) && dport(1-1023, 8443) -> my_group',
     'dip{8.8.8.8/32} && l4proto{6} && dport{1-1023,8443} -> my_group'),
    ('dip(1.1.1.1) && sip(10.0.0.1, 172.20.0.0/16) -> direct',
     'dip{1.1.1.1/32} && sip{10.0.0.1/32,172.20.0.0/16} -> direct'),
    ('!domain(geosite:google-scholar, geosite:category-scholar-!cn, geosite:category-scholar-cn) -> my_group',
     '!domain{suffix:cnki.net,suffix:jstor.org,suffix:scholar.google.com} -> my_group'),
    ('domain(geosite:geolocation-!cn) && !domain(geosite:google-scholar, geosite:category-scholar-!cn, '
     'geosite:category-scholar-cn) -> my_group',
     'domain{suffix:google.com,regex:^x\\.example$} && '
     '!domain{suffix:cnki.net,suffix:jstor.org,suffix:scholar.google.com} -> my_group'),
    # routing.md: ext files, marks, must rules (and the must_X / X(must) forms its comments name)
    ('domain(ext:"yourdatfile.dat:yourtag")->direct',
     'domain{full:ext.example} -> direct'),
    ('dip(ext:"yourgeoip.dat:yourtag")->direct',
     'dip{203.0.113.0/24} -> direct'),
    ('domain(geosite:disney) -> direct(mark: 0x800)',
     'domain{suffix:disneyplus.com} -> direct(mark: 0x800)'),
    ('pname(mosdns) -> must_rules',
     'pname{mosdns} -> must_rules'),
    ('ip(geoip:cn) -> direct',
     'dip{1.0.1.0/24,240e::/20} -> direct'),
    ('domain(geosite:cn) -> direct',
     'domain{full:baidu.com,suffix:cn} -> direct'),
    ('domain(geosite:cn) -> must_direct',
     'domain{full:baidu.com,suffix:cn} -> direct(must)'),
    ('domain(geosite:cn) -> direct(must)',
     'domain{full:baidu.com,suffix:cn} -> direct(must)'),
    ('dport(53) -> must_my_group',
     'dport{53} -> my_group(must)'),
    ('dport(53) -> my_group(must)',
     'dport{53} -> my_group(must)'),
    ('dip(1.1.1.1) -> direct(mark: 0x800)',
     'dip{1.1.1.1/32} -> direct(mark: 0x800)'),
    # example.dae's routing section
    ('pname(NetworkManager) -> direct',
     'pname{NetworkManager} -> direct'),
    ("dip(224.0.0.0/3, 'ff00::/8') -> direct",
     'dip{224.0.0.0/3,ff00::/8} -> direct'),
    ('l4proto(udp) && dport(443) -> block',
     'l4proto{17} && dport{443} -> block'),
    ('dip(geoip:cn) -> direct',
     'dip{1.0.1.0/24,240e::/20} -> direct'),
    # issue 12: '!' and '-' in bare values, dae's other key names, comments
    ('domain(geosite:geolocation-!cn) -> my_group',
     'domain{suffix:google.com,regex:^x\\.example$} -> my_group'),
    ('domain(geosite:category-ai-!cn) -> my_group',
     'domain{suffix:openai.com} -> my_group'),
    ('domain(domain: v2raya.org) -> my_group',
     'domain{suffix:v2raya.org} -> my_group'),
    ('domain(contains: google) -> my_group',
     'domain{keyword:google} -> my_group'),
    ('domain(domain: v2raya.org, contains: google, full: dns.google) -> my_group',
     'domain{full:dns.google,suffix:v2raya.org,keyword:google} -> my_group'),
    ('domain(geosite:cn) -> direct # China mainland',
     'domain{full:baidu.com,suffix:cn} -> direct'),
    ('domain(geosite:cn) -> direct #no space',
     'domain{full:baidu.com,suffix:cn} -> direct'),
    ('sip(192.168.0.0/24) && dport(22) -> direct /* ssh */',
     'sip{192.168.0.0/24} && dport{22} -> direct'),
    ('dip(/* resolver */ 8.8.8.8) -> direct',
     'dip{8.8.8.8/32} -> direct'),
    ('domain(a#b.example) -> direct',
     'domain{suffix:a#b.example} -> direct'),
    # quoted and unquoted forms alike (a quoted 'geosite:cn' is a value, as in dae)
    ('dip("8.8.8.8") -> direct',
     'dip{8.8.8.8/32} -> direct'),
    ("dip('8.8.8.8') -> direct",
     'dip{8.8.8.8/32} -> direct'),
    ("domain(suffix: 'v2raya.org') -> my_group",
     'domain{suffix:v2raya.org} -> my_group'),
    ('domain(suffix: "v2raya.org") -> my_group',
     'domain{suffix:v2raya.org} -> my_group'),
    ("l4proto('tcp') -> my_group",
     'l4proto{6} -> my_group'),
    ("dport('443') -> direct",
     'dport{443} -> direct'),
    ('mac(02:42:ac:11:00:02) -> direct',
     'mac{0x242ac110002} -> direct'),
    ("domain('geosite:cn') -> direct",
     'domain{suffix:geosite:cn} -> direct'),
    # non-ASCII names and values
    ('dip(1.1.1.1) -> 香港组',
     'dip{1.1.1.1/32} -> 香港组'),
    ('domain(keyword: 香港) -> 香港组',
     'domain{keyword:香港} -> 香港组'),
    # more of dae's functions and forms
    ('domain(geosite:google@cn) -> direct',
     'domain{suffix:google.cn} -> direct'),
    ('port(443) -> direct',
     'dport{443} -> direct'),
    ('ip(8.8.8.8) -> direct',
     'dip{8.8.8.8/32} -> direct'),
    ("dip('2001:4860:4860::8888') -> direct",
     'dip{2001:4860:4860::8888/128} -> direct'),
    ('!dip(geoip:private) -> my_group',
     '!dip{10.0.0.0/8,192.168.0.0/16,fc00::/7} -> my_group'),
    ('dport(80) && !l4proto(udp) -> my_group',
     'dport{80} && !l4proto{17} -> my_group'),
    ('domain(full: dns.google) && dport(53) -> my_group',
     'domain{full:dns.google} && dport{53} -> my_group'),
    ('dscp(4) -> direct',
     'dscp{4} -> direct'),
    ('ipversion(4) && dip(geoip:cn) -> direct',
     'ipversion{4} && dip{1.0.1.0/24,240e::/20} -> direct'),
    ('domain(geosite:category-ads-all) -> block',
     'domain{suffix:ads.example,keyword:adserver} -> block'),
    ('sport(0) -> direct',
     'sport{0} -> direct'),
    # errors
    ('domain(geosite:no-such-tag) -> direct',
     "error: {assets}/geosite.dat: geosite tag not found: 'no-such-tag'; the file has 10 tags"),
    ('domain(foo: bar) -> direct',
     "error: unknown domain key 'foo'"),
    ('dip(300.1.1.1) -> direct',
     "error: invalid IP address or CIDR '300.1.1.1'"),
    ('dport(70000) -> direct',
     "error: port '70000' is out of range 0-65535"),
    ('l4proto(icmp) -> direct',
     "error: invalid l4proto 'icmp' (expected tcp or udp)"),
    ('unknownfn(x) -> direct',
     "error: unknown function 'unknownfn'"),
    ('dip(1.1.1.1) -> no_such_group',
     "error: unknown outbound or group 'no_such_group'"),
    ('dip(1.1.1.1)',
     "error: syntax error: rule ends early; expected '->'"),
    ('dip(1.1.1.1) -> direct -> block',
     "error: syntax error: unexpected '->'; expected '('"),
    ("domain(regex: '(') -> direct",
     "error: invalid regex '(': missing ): ("),
    ('dip(1.1.1.1) && -> direct',
     "error: syntax error: unexpected '->'; expected '!' or a function name"),
    ('!!dip(1.1.1.1) -> direct',
     "error: syntax error: unexpected '!'; expected a function name"),
    ('dip(geoip:nowhere) -> direct',
     "error: {assets}/geoip.dat: geoip tag not found: 'nowhere'; the file has 2 tags"),
    ('ipversion(5) -> direct',
     "error: invalid ipversion '5' (expected 4 or 6)"),
    ('dip(1.1.1.1) -> direct(mark: zz)',
     "error: invalid number 'zz'"),
    ('dport(443) -> 香港组x',
     "error: unknown outbound or group '香港组x'"),
    ('domain(!cn) -> direct',
     "error: syntax error: unexpected '!'; expected ')' or a 'key:' or a quoted value or a value"),
    ('dport(80-) -> direct',
     "error: invalid port or port range '80-'"),
]


@pytest.mark.parametrize("rule, expected", ROUTING_TABLE)
def test_a_dae_rule_compiles_to_its_ir_or_its_error(assets: Path, rule: str, expected: str) -> None:
    assert compile_rule(assets, rule) == expected.replace("{assets}", str(assets))


# routing.md writes its 'not' rule over several lines, with comments a user may leave in place.
MULTILINE = """domain(geosite:geolocation-!cn) &&
    !domain(geosite:google-scholar,
            geosite:category-scholar-!cn,  # not in mainland China
            geosite:category-scholar-cn
        ) -> my_group  # the scholar sites stay direct"""


def test_a_rule_written_over_several_lines_with_comments_parses_as_on_one() -> None:
    one = parse_rule("domain(geosite:geolocation-!cn) && !domain(geosite:google-scholar, "
                     "geosite:category-scholar-!cn, geosite:category-scholar-cn) -> my_group")
    many = parse_rule(MULTILINE)
    shape = [(c.name, c.negated, [(p.key, p.value) for p in c.params]) for c in many.calls]
    assert shape == [(c.name, c.negated, [(p.key, p.value) for p in c.params]) for c in one.calls]
    assert many.outbound.name == "my_group"


@pytest.mark.parametrize("rule", [
    MULTILINE, "dip(/* a */ 1.1.1.1 /* b */, 2.2.2.2) -> direct # c", "domain(a#b, c) -> x#y",
    "domain(geosite:category-ai-!cn) -> 香港-01", "dip(/* x */ , b) -> a", "dip(1.1.1.1) -> a /* open",
    "domain(x) -> direct #", "domain(x!) -> direct", "domain(!x) -> direct",
])
def test_the_fast_scanner_and_lark_agree_on_comments_bangs_and_non_ascii(rule: str) -> None:
    def run(f: Callable[[str], RuleAst]) -> object:
        try:
            return f(rule)
        except RuleSyntaxError as exc:
            return ("error", exc.message, exc.offset)

    assert run(parse_rule) == run(parse_rule_lark)


def test_non_ascii_names_are_printed_as_written_in_diagnostics(assets: Path) -> None:
    text = CONFIG.format(rule="'dport(443) -> 香港组x'").replace("  n1:", "  1香港:")
    with pytest.raises(CompileError) as info:
        compile_config(None, None, text=text, name=str(assets / "config.yaml"))
    shown = info.value.diagnostics.render(text)
    assert "1香港" in shown and "\\u" not in shown


def test_non_ascii_group_names_get_distinct_c_macros(assets: Path, tmp_path: Path) -> None:
    text = CONFIG.format(rule="'dport(443) -> 香港组'").replace(
        "  香港组:", "  台湾组: {policy: random}\n  香港组:").replace("fallback: direct", "fallback: 台湾组")
    compile_config(None, tmp_path / "build", text=text, name=str(assets / "config.yaml"))
    c = (tmp_path / "build" / "program.c").read_text()
    assert outbound_macro("香港组") != outbound_macro("台湾组")
    assert outbound_macro("香港组") in c and outbound_macro("台湾组") in c


# ---- dns.routing: dns.md's and example.dae's request and response rules --------------------------
DNS_CONFIG = """\
global: {{lan_interface: [eth0]}}
nodes:
  hk_home: 'socks5://192.0.2.1:1080'
  香港-01: 'socks5://192.0.2.2:1080'
  us_node: 'socks5://192.0.2.3:1080'
subscriptions:
  my_sub: 'file://my.sub'
dns:
  upstream: {{alidns: 'udp://223.5.5.5:53', googledns: 'tcp+udp://8.8.8.8:53'}}
  routing:
    {section}:
      rules:
        - {rule}
      fallback: {fallback}
routing: {{fallback: direct}}
"""


def _dns_call(dns: dict[str, Any], call: dict[str, Any]) -> str:
    neg = "!" if call["negated"] else ""
    if "domain_bit" in call:
        (d,) = [s for s in dns["domain_sets"] if s["bit"] == call["domain_bit"]]
        vals = ",".join(f"{k}:{x}" for k in ("full", "suffix", "keyword", "regex") for x in d[k])
    elif "qtypes" in call:
        vals = ",".join(str(q) for q in call["qtypes"])
    elif "upstreams" in call:
        vals = ",".join(call["upstreams"])
    else:
        vals = ",".join([*call["v4"], *call["v6"]])
    return f"{neg}{call['func']}{{{vals}}}"


def compile_dns_rule(assets: Path, section: str, rule: str) -> str:
    """A request/response rule in the compact form; a sub()/node()/subnode() rule as the upstream
    each subscription and node gets (`dns.internal`); or 'error: MESSAGE'."""
    (assets / "my.sub").write_text("socks5://192.0.2.7:1080#hk-01\nsocks5://192.0.2.8:1080#us-01\n")
    fallback = "asis" if section == "request" else "accept"
    quoted = "'" + rule.replace("'", "''") + "'"
    text = DNS_CONFIG.format(section=section, rule=quoted, fallback=fallback)
    try:
        checked = compile_config(None, None, text=text, name=str(assets / "config.yaml"))
    except CompileError as exc:
        return "error: " + exc.diagnostics.errors[0].message
    dns = checked.dns
    if "internal" in dns:
        inner = dns["internal"]
        return " ".join([*(f"sub:{k}={v}" for k, v in inner["subscriptions"].items()),
                         *(f"node:{k}={v}" for k, v in inner["nodes"].items())])
    (r,) = dns["routing"][section]["rules"]
    return " && ".join(_dns_call(dns, c) for c in r["calls"]) + f" -> {r['target']}"


DNS_TABLE: list[tuple[str, str, str]] = [
    # dns.md's request rules
    ("request", "qname(geosite:category-ads-all) -> reject", "qname{suffix:ads.example,keyword:adserver} -> reject"),
    ("request", "qname(geosite:google@cn) -> alidns", "qname{suffix:google.cn} -> alidns"),
    ("request", "qname(suffix: abc.com, keyword: google) -> googledns",
     "qname{suffix:abc.com,keyword:google} -> googledns"),
    ("request", "qname(full: ok.com, regex: '^yes') -> googledns", "qname{full:ok.com,regex:^yes} -> googledns"),
    ("request", "qtype(a, aaaa) -> alidns", "qtype{1,28} -> alidns"),
    ("request", "qtype(cname) -> googledns", "qtype{5} -> googledns"),
    ("request", "qtype(https) -> reject", "qtype{65} -> reject"),
    ("request", "qname(geosite:cn) -> alidns", "qname{full:baidu.com,suffix:cn} -> alidns"),
    # dns.md's response rules
    ("response", "upstream(googledns) -> accept", "upstream{googledns} -> accept"),
    ("response", "ip(geoip:private) && !qname(geosite:cn) -> googledns",
     "ip{10.0.0.0/8,192.168.0.0/16,fc00::/7} && !qname{full:baidu.com,suffix:cn} -> googledns"),
    # dae's internal selectors (dns.md and example.dae): which upstream resolves each host
    ("request", "sub(my_sub) -> googledns", "sub:my_sub=googledns"),
    ("request", "sub() -> googledns", "sub:my_sub=googledns"),
    ("request", "sub(tag_regex: '^my_') -> alidns", "sub:my_sub=alidns"),
    ("request", "sub(link_keyword: my.sub) -> alidns", "sub:my_sub=alidns"),
    ("request", "node(name_keyword: hk) -> googledns", "node:hk_home=googledns node:hk-01=googledns"),
    ("request", "node() -> googledns",
     "node:hk_home=googledns node:香港-01=googledns node:us_node=googledns node:hk-01=googledns "
     "node:us-01=googledns"),
    ("request", "node(香港-01, us_node) -> alidns", "node:香港-01=alidns node:us_node=alidns"),
    ("request", "!node(name_regex: '^(hk|us)') -> alidns", "node:香港-01=alidns"),
    ("request", "subnode() -> alidns", "node:hk-01=alidns node:us-01=alidns"),
    ("request", "subnode(subtag: my_sub) -> alidns", "node:hk-01=alidns node:us-01=alidns"),
    # dae ORs a call's keys (router.go wrapNotPredicate): subtag my_sub OR a name with 'hk'
    ("request", "subnode(subtag: my_sub, name_keyword: hk) -> alidns", "node:hk-01=alidns node:us-01=alidns"),
    ("request", "subnode(name_keyword: hk) && subnode(subtag: my_sub) -> alidns", "node:hk-01=alidns"),
    # errors
    ("request", "node(n2) && qname(x.example) -> googledns",
     "error: cannot mix 'qname' with dae's internal DNS selectors (node) in one rule"),
    ("request", "sub(my_sub) && node(x) -> googledns",
     "error: cannot mix internal DNS selectors (node, sub) in one rule"),
    ("request", "sub(my_sub) -> asis", "error: sub() rules choose a dns upstream: 'asis' is not one"),
    ("request", "node(bad: 1) -> googledns", "error: unknown node() key 'bad'"),
    ("request", "node(name_regex: '(') -> googledns",
     "error: invalid regex '(': missing ), unterminated subpattern at position 0"),
    ("response", "sub(my_sub) -> googledns", "error: unknown dns response function 'sub'"),
    ("request", "qtype(nosuchtype) -> alidns", "error: unknown DNS query type 'nosuchtype'"),
    ("request", "qname(geosite:cn) -> nowhere", "error: unknown dns request target 'nowhere'"),
]


@pytest.mark.parametrize("section, rule, expected", DNS_TABLE)
def test_a_dae_dns_rule_compiles_to_its_meaning_or_its_error(assets: Path, section: str, rule: str,
                                                            expected: str) -> None:
    assert compile_dns_rule(assets, section, rule) == expected


def test_the_table_holds_at_least_80_rules_from_daes_syntax() -> None:
    assert len(ROUTING_TABLE) + len(DNS_TABLE) >= 80 and len(ROUTING_TABLE) >= 80
