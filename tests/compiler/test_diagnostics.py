"""Broken configs and exactly what dae-compile says about them.

Each row is a config and the exact first line the CLI prints (`config.yaml:LINE:COL: error: ...`,
the column of the offending token inside a rule string), run in-process through
compiler.cli.main with --check. Then: every error of a run is reported at once, warnings do not
fail a build, --check writes nothing.
"""
from __future__ import annotations

import textwrap
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import pytest

from dae_py.compiler.cli import main
from dae_py.compiler.diagnostics import SHOW_LINE_CHARS
from dae_py.compiler.geodata import SiteDomain, write_geoip, write_geosite
from dae_py.compiler.urls import mask_secrets

# Line numbers below count from this header: a rule `R` of `rule(R)` is on line 8, its string's
# opening quote in column 7, so the rule text starts in column 8.
HEAD = """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  proxy: {policy: random}
routing:
  rules:
"""


def rule(r: str, fallback: str = "proxy") -> str:
    return HEAD + f'    - "{r}"\n  fallback: {fallback}\n'


@dataclass(frozen=True)
class Broken:
    id: str
    config: str
    first: str | None  # the exact first line printed (None: the test checks it itself)
    hint: str | None = None  # an exact "  hint: ..." line that must follow
    errors: int = 1


GEOSITE = "{dir}/geosite.dat"

# Errors inside long parameter lists, where the rule scanner (compiler/rules/parse.py) does the work
# instead of lark, or hands lark a blanked string: the column must still be the offending token's.
_CIDRS = [f"10.{i // 256}.{i % 256}.0/24" for i in range(600)]
_DOMAINS = [f"d{i}.example.com" for i in range(600)]


def _list(xs: Iterable[str]) -> str:
    return ", ".join(xs)


def long_case(case_id: str, r: str, token: str, message: str, hint: str | None = None, nth: int = 0) -> Broken:
    """`token` is the text the caret must point at (its `nth` occurrence in the rule)."""
    at = -1
    for _ in range(nth + 1):
        at = r.index(token, at + 1)
    return Broken(case_id, rule(r), f"config.yaml:8:{8 + at}: {message}", hint)


LONG_CASES = [
    long_case("long-bad-cidr-in-the-middle",
              f"dip({_list(_CIDRS[:300])}, 10.1.44.0/33, {_list(_CIDRS[300:])}) -> direct", "10.1.44.0/33",
              "error: invalid IP address or CIDR '10.1.44.0/33'"),
    long_case("long-bad-cidr-quoted",
              f"dip({_list(_CIDRS[:300])}, 'ff00::/8', '10.1.44.0/33', {_list(_CIDRS[300:])}) -> direct",
              "10.1.44.0/33'", "error: invalid IP address or CIDR '10.1.44.0/33'"),
    long_case("long-unterminated-quote",
              f"domain({_list(_DOMAINS[:300])}, 'd300.example.com, {_list(_DOMAINS[301:])}) -> direct",
              "'d300", "error: syntax error: unterminated quoted value (no closing ')"),
    long_case("long-stray-paren",
              f"dip({_list(_CIDRS[:300])}), {_list(_CIDRS[300:])}) -> direct", ", 10.1.44.0/24",
              "error: syntax error: unexpected ','; expected '&&' or '->'"),
    long_case("long-open-paren",
              f"dip({_list(_CIDRS[:300])}, ({_list(_CIDRS[300:])}) -> direct", "(10.1.44",
              "error: syntax error: unexpected '('; expected a 'key:' or a quoted value or a value"),
    long_case("long-error-in-second-list",
              f"domain({_list(_DOMAINS)}) && dip({_list(_CIDRS[:300])},, {_list(_CIDRS[300:])}) -> direct",
              ", 10.1.44.0/24",
              "error: syntax error: unexpected ','; expected a 'key:' or a quoted value or a value"),
    long_case("long-bad-key-among-plain",
              f"domain({_list(_DOMAINS[:300])}, suffix: a.com, sufix: b.com, {_list(_DOMAINS[300:])}) -> direct",
              "sufix:", "error: unknown domain key 'sufix'", "did you mean 'suffix'?"),
    long_case("long-key-on-port",
              f"dport({_list(str(p) for p in range(1000, 1400))}, suffix: 1, 2000) -> direct", "suffix",
              "error: 'dport()' does not take key 'suffix'"),
    long_case("long-bad-port-after-keys",
              f"domain({_list(_DOMAINS[:200])}, geosite:cn, full: x.com) && dport({_list(str(p) for p in range(300))},"
              f" 70000, 1) -> direct", "70000", "error: port '70000' is out of range 0-65535"),
    long_case("long-bad-outbound-param",
              f"dip({_list(_CIDRS)}) -> direct(mark: 1, color: red)", "color",
              "error: unknown outbound parameter 'color'", "outbounds take 'mark: N' and 'must'"),
]

CASES = [
    # ---- outbounds and groups ----
    Broken("unknown-outbound", rule("dip(8.8.8.8) -> proxxy"),
           "config.yaml:8:24: error: unknown outbound or group 'proxxy'", "did you mean 'proxy'?"),
    Broken("unknown-must-outbound", rule("dip(8.8.8.8) -> must_proxxy"),
           "config.yaml:8:24: error: unknown outbound or group 'must_proxxy'", "did you mean 'must_proxy'?"),
    Broken("unknown-fallback", rule("dip(8.8.8.8) -> direct", fallback="proxi"),
           "config.yaml:9:13: error: unknown outbound or group 'proxi'", "did you mean 'proxy'?"),
    Broken("fallback-must-rules", rule("dip(8.8.8.8) -> direct", fallback="must_rules"),
           "config.yaml:9:13: error: 'must_rules' cannot be the fallback (it goes on matching)"),
    Broken("must-rules-params", rule("dip(8.8.8.8) -> must_rules(mark: 1)"),
           "config.yaml:8:35: error: 'must_rules' takes no parameters"),
    Broken("unknown-outbound-param", rule("dip(8.8.8.8) -> direct(foo: 1)"),
           "config.yaml:8:31: error: unknown outbound parameter 'foo'", "outbounds take 'mark: N' and 'must'"),
    Broken("bad-mark", rule("dip(8.8.8.8) -> direct(mark: 0x1ffffffff)"),
           "config.yaml:8:37: error: mark '0x1ffffffff' does not fit in 32 bits"),
    Broken("bad-mark-number", rule("dip(8.8.8.8) -> direct(mark: high)"),
           "config.yaml:8:37: error: invalid number 'high'"),
    # ---- values ----
    Broken("bad-cidr-prefix", rule("dip(10.0.0.0/33) -> direct"),
           "config.yaml:8:12: error: invalid IP address or CIDR '10.0.0.0/33'"),
    Broken("bad-ip", rule("sip(192.168.1) -> direct"),
           "config.yaml:8:12: error: invalid IP address or CIDR '192.168.1'"),
    Broken("bad-ipv6-quoted", rule("dip('2001:db8::g') -> direct"),
           "config.yaml:8:13: error: invalid IP address or CIDR '2001:db8::g'"),
    Broken("bad-ipv6-bare", rule("dip(1.1.1.1, fe80::zz) -> direct"),
           "config.yaml:8:21: error: invalid IP address or CIDR 'fe80::zz'"),
    Broken("bad-cidr-second-param", rule("dip(10.0.0.0/8, 300.1.1.1) -> direct"),
           "config.yaml:8:24: error: invalid IP address or CIDR '300.1.1.1'"),
    Broken("port-out-of-range", rule("dport(70000) -> direct"),
           "config.yaml:8:14: error: port '70000' is out of range 0-65535"),
    Broken("port-not-a-number", rule("dport(443, https) -> direct"),
           "config.yaml:8:19: error: invalid port or port range 'https'"),
    Broken("empty-port-range", rule("sport(500-100) -> direct"),
           "config.yaml:8:14: error: port range '500-100' is empty (500 > 100)"),
    Broken("bad-port-range", rule("sport(1-2-3) -> direct"),
           "config.yaml:8:14: error: invalid port or port range '1-2-3'"),
    Broken("bad-mac-quoted", rule("mac('02:42:ac:11:00') -> direct"),
           "config.yaml:8:13: error: invalid MAC address '02:42:ac:11:00' "
           "(expected six hex octets like '02:42:ac:11:00:02')"),
    Broken("bad-mac-bare", rule("mac(02:42:ac:11:00:zz) -> direct"),
           "config.yaml:8:12: error: invalid MAC address '02:42:ac:11:00:zz' "
           "(expected six hex octets like '02:42:ac:11:00:02')"),
    Broken("bad-regex", rule("domain(regex: '(ab') -> direct"),
           "config.yaml:8:23: error: invalid regex '(ab': missing ): (ab"),
    Broken("dscp-out-of-range", rule("dscp(64) -> direct"),
           "config.yaml:8:13: error: dscp '64' is out of range 0-63 (DSCP is 6 bits)"),
    Broken("dscp-not-a-number", rule("dscp(ef) -> direct"),
           "config.yaml:8:13: error: invalid number 'ef'"),
    Broken("bad-l4proto", rule("l4proto(icmp) -> direct"),
           "config.yaml:8:16: error: invalid l4proto 'icmp' (expected tcp or udp)"),
    Broken("bad-ipversion", rule("ipversion(5) -> direct"),
           "config.yaml:8:18: error: invalid ipversion '5' (expected 4 or 6)"),
    Broken("empty-domain", rule("domain(full: '') -> direct"),
           "config.yaml:8:22: error: empty domain full"),
    Broken("unknown-domain-key", rule("domain(sufix: a.com) -> direct"),
           "config.yaml:8:15: error: unknown domain key 'sufix'", "did you mean 'suffix'?"),
    Broken("key-on-port", rule("dport(80, suffix: 1) -> direct"),
           "config.yaml:8:18: error: 'dport()' does not take key 'suffix'"),
    Broken("no-params", rule("dip() -> direct"),
           "config.yaml:8:8: error: 'dip()' needs at least one parameter"),
    # ---- geodata ----
    Broken("unknown-geosite-tag", rule("domain(geosite:nope) -> direct"),
           "config.yaml:8:15: error: {dir}/geosite.dat: geosite tag not found: 'nope'; the file has 2 tags"),
    Broken("geosite-attr-selects-nothing", rule("domain(geosite:google@nope) -> direct"),
           "config.yaml:8:15: error: 'geosite:google@nope' selects no domain: no domain of tag 'google' has the "
           "attribute '@nope'"),
    Broken("unknown-geoip-tag", rule("dip(geoip:zz) -> direct"),
           "config.yaml:8:12: error: {dir}/geoip.dat: geoip tag not found: 'zz'; the file has 1 tags"),
    Broken("missing-ext-file", rule('domain(ext:\\"other.dat:cn\\") -> direct'),
           # then the data folders dae and v2ray search (compiler/geodata.asset_search_dirs)
           "config.yaml:8:15: error: ext file 'other.dat' not found; looked in: {dir}, ..."),
    # ---- the rule language ----
    Broken("unknown-function", rule("dipp(1.1.1.1) -> direct"),
           "config.yaml:8:8: error: unknown function 'dipp'", "did you mean 'dip'?"),
    Broken("syntax-missing-arrow", rule("dip(1.1.1.1) direct"),
           "config.yaml:8:21: error: syntax error: unexpected 'direct'; expected '&&' or '->'"),
    Broken("syntax-dangling-and", rule("dip(1.1.1.1) && -> direct"),
           "config.yaml:8:24: error: syntax error: unexpected '->'; expected '!' or a function name"),
    Broken("syntax-double-and", rule("dip(1.1.1.1) && && dport(1) -> direct"),
           "config.yaml:8:24: error: syntax error: unexpected '&&'; expected '!' or a function name"),
    Broken("syntax-unclosed-paren", rule("dip(1.1.1.1 -> direct"),
           "config.yaml:8:20: error: syntax error: unexpected '->'; expected ')' or ','"),
    Broken("syntax-unterminated-quote", rule("dip('1.1.1.1) -> direct"),
           "config.yaml:8:12: error: syntax error: unterminated quoted value (no closing ')"),
    Broken("syntax-no-outbound", rule("dip(1.1.1.1) ->"),
           "config.yaml:8:23: error: syntax error: rule ends early; expected an outbound"),
    Broken("syntax-no-condition", rule("-> direct"),
           "config.yaml:8:8: error: syntax error: unexpected '->'; expected '!' or a function name"),
    Broken("syntax-after-escapes",
           HEAD + '    - "domain(ext:\\"geosite.dat:cn\\") && dip(1.1.1.1)) -> direct"\n  fallback: proxy\n',
           "config.yaml:8:54: error: syntax error: unexpected ')'; expected '&&' or '->'"),
    Broken("syntax-single-quoted-escapes",
           HEAD + "    - 'domain(full: ''a.b'') && dip(1.1.1.1)) -> direct'\n  fallback: proxy\n",
           "config.yaml:8:45: error: syntax error: unexpected ')'; expected '&&' or '->'"),
    Broken("unquoted-leading-bang", HEAD + "    - !domain(a.com) -> direct\n  fallback: proxy\n",
           "config.yaml:8:7: error: invalid YAML: '!domain(a.com)' is read as a YAML tag",
           'quote the value: "!domain(a.com) -> direct"'),
    Broken("unquoted-key-value", HEAD + "    - domain(suffix: a.com) -> direct\n  fallback: proxy\n",
           'config.yaml:8:7: error: routing/rules/0: {"domain(suffix": "a.com) -> direct"} has the wrong type or form',
           "quote the rule: unquoted, YAML reads the ': ' inside it as a mapping"),
    Broken("unquoted-fallback-params", HEAD + '    - "dport(1) -> direct"\n  fallback: direct(mark: 1)\n',
           "config.yaml:9:24: error: invalid YAML: mapping values are not allowed here",
           "quote values that contain ': ', such as rules or outbounds with 'key: value' params"),
    # ---- structured rules: positions point into the mapping ----
    Broken("structured-bad-cidr", HEAD + """\
    - match:
        - dip: ['1.1.1.1', '300.1.1.1']
      outbound: direct
  fallback: proxy
""", "config.yaml:9:28: error: invalid IP address or CIDR '300.1.1.1'"),
    Broken("structured-bad-regex", HEAD + """\
    - match:
        - domain: [{suffix: a.com}, {regex: '(x'}]
      outbound: direct
  fallback: proxy
""", "config.yaml:9:45: error: invalid regex '(x': missing ): (x"),
    Broken("structured-unknown-outbound", HEAD + """\
    - match: [{dport: 443}]
      outbound: proxxy
  fallback: proxy
""", "config.yaml:9:17: error: unknown outbound or group 'proxxy'", "did you mean 'proxy'?"),
    Broken("structured-unknown-function", HEAD + """\
    - match: [{dipp: 1.1.1.1}]
      outbound: direct
  fallback: proxy
""", "config.yaml:8:16: error: unknown option 'dipp' in routing/rules/0/match/0", "did you mean 'dip'?"),
    Broken("structured-no-outbound", HEAD + """\
    - match: [{dport: 443}]
  fallback: proxy
""", "config.yaml:8:7: error: routing/rules/0: missing required option 'outbound'"),
    # ---- schema ----
    Broken("missing-fallback", HEAD + '    - "dport(1) -> direct"\n',
           "config.yaml:6:1: error: routing: missing required option 'fallback'"),
    Broken("missing-routing", "global: {lan_interface: [eth0]}\n",
           "config.yaml:1:1: error: config: missing required option 'routing'"),
    Broken("unknown-key", """\
global:
  lan_interface: [eth0]
  tproxy_prot: 12345
routing:
  fallback: direct
""", "config.yaml:3:3: error: unknown option 'tproxy_prot' in global", "did you mean 'tproxy_port'?"),
    Broken("unknown-section", """\
global: {lan_interface: [eth0]}
routng:
  fallback: direct
""", "config.yaml:1:1: error: config: missing required option 'routing'", errors=2),
    Broken("unknown-section-hint", """\
global: {lan_interface: [eth0]}
routng:
  fallback: direct
routing:
  fallback: direct
""", "config.yaml:2:1: error: unknown option 'routng' in config", "did you mean 'routing'?"),
    Broken("wrong-type", """\
global:
  lan_interface: [eth0]
  tproxy_port: "12345x"
routing:
  fallback: direct
""", "config.yaml:3:16: error: global/tproxy_port: '12345x' is not of type 'integer'"),
    Broken("bad-enum", """\
global:
  lan_interface: [eth0]
  dial_mode: domain+++
routing:
  fallback: direct
""", 'config.yaml:3:14: error: global/dial_mode: "domain+++" is not one of "ip", "domain", "domain+", "domain++"',
        "did you mean 'domain++'?"),
    Broken("bad-policy", """\
global: {lan_interface: [eth0]}
nodes: {n1: 'socks5://192.0.2.10:1080'}
groups:
  g: {policy: fastest}
routing:
  fallback: g
""", None),  # checked below: the message names the accepted policies
    Broken("not-a-mapping", "- a\n- b\n",
           "config.yaml:1:1: error: the config must be a mapping with a 'routing' section"),
    # ---- YAML ----
    Broken("yaml-unclosed-flow", """\
global:
  lan_interface: [eth0
routing:
  fallback: direct
""", "config.yaml:3:8: error: invalid YAML: expected ',' or ']', but got ':' "
        "(while parsing a flow sequence started at line 2, column 18)"),
    Broken("yaml-bad-indent", """\
routing:
  fallback: direct
  rules:
    - "dport(1) -> direct"
   - "dport(2) -> direct"
""", "config.yaml:5:4: error: invalid YAML: expected <block end>, but found '<block sequence start>' "
        "(while parsing a block mapping started at line 2, column 3)"),
    Broken("yaml-tab", "routing:\n\tfallback: direct\n",
           "config.yaml:2:1: error: invalid YAML: found character '\\t' that cannot start any token"),
    Broken("yaml-duplicate-key", """\
global: {lan_interface: [eth0]}
routing:
  fallback: direct
  fallback: block
""", 'config.yaml:4:3: error: invalid YAML: found duplicate key "fallback" with value "block" '
        '(original value: "direct") (while constructing a mapping started at line 3, column 3)'),
    # ---- nodes and groups ----
    Broken("group-selects-no-node", """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  hk: {policy: random, filter: ['name(keyword: hk)']}
routing:
  rules:
    - "dport(443) -> hk"
  fallback: direct
""", "config.yaml:5:3: error: group 'hk' selects no node, but routing sends flows to it (line 8)",
        "check its filter against the names in 'nodes'"),
    Broken("group-without-nodes", """\
global: {lan_interface: [eth0]}
groups:
  proxy: {policy: random}
routing:
  fallback: proxy
""", "config.yaml:3:3: error: group 'proxy' selects no node, but routing sends flows to it (line 5)",
        "define some nodes"),
    Broken("fixed-out-of-range", """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'socks5://192.0.2.10:1080'
  n2: 'socks5://192.0.2.11:1080'
groups:
  g: {policy: 'fixed(2)'}
routing:
  fallback: g
""", "config.yaml:6:15: error: group 'g': fixed(2) but the group has 2 node(s)"),
    Broken("unknown-filter-function", """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  g: {policy: random, filter: ['nam(keyword: n)']}
routing:
  fallback: g
""", "config.yaml:5:33: error: unknown filter function 'nam'", "did you mean 'name'?"),
    Broken("bad-link-protocol", """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'sock5://192.0.2.10:1080'
routing:
  fallback: direct
""", "config.yaml:3:7: error: node 'n1': unknown protocol 'sock5' (did you mean 'socks5'?)"),
    Broken("bad-link-port", """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'socks5://192.0.2.10:99999'
routing:
  fallback: direct
""", "config.yaml:3:28: error: node 'n1': invalid port in 'socks5://192.0.2.10:99999'"),
    Broken("bad-link-no-scheme", """\
global: {lan_interface: [eth0]}
nodes:
  n1: '192.0.2.10:1080'
routing:
  fallback: direct
""", "config.yaml:3:7: error: node 'n1': link '192.0.2.10:1080' has no scheme (expected e.g. 'socks5://host:port')"),
    Broken("bad-link-no-host", """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'socks5://:1080'
routing:
  fallback: direct
""", "config.yaml:3:7: error: node 'n1': link 'socks5://:1080' has no host"),
    Broken("bad-vmess", """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'vmess://bm90LWpzb24='
routing:
  fallback: direct
""", None),  # checked below
    Broken("bad-duration", """\
global:
  lan_interface: [eth0]
  check_interval: 30 seconds
routing:
  fallback: direct
""", None),  # the schema's pattern or the duration parser: either way line 3
]


def write_geodata(d: Path) -> None:
    write_geosite(d / "geosite.dat", {"cn": [SiteDomain("domain", "qq.com")],
                                      "google": [SiteDomain("domain", "google.com", {"ads": True})]})
    write_geoip(d / "geoip.dat", {"cn": ["1.0.1.0/24"]})


def run_check(d: Path, text: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
              *args: str) -> tuple[int, str, str]:
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.yaml").write_text(text)
    write_geodata(d)
    monkeypatch.chdir(d)
    rc = main(["config.yaml", *args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize("case", CASES + LONG_CASES, ids=[c.id for c in CASES + LONG_CASES])
def test_broken_config(case: Broken, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                       monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, err = run_check(tmp_path, case.config, capsys, monkeypatch, "--check")
    assert rc == 1, err
    assert out == ""
    lines = err.splitlines()
    if case.first is not None:
        first = case.first.replace("{dir}", str(tmp_path.resolve()))
        if first.endswith(", ..."):  # the rest depends on the environment ($HOME, $XDG_DATA_DIRS)
            assert lines[0].startswith(first[:-3]), lines[0]
        else:
            assert lines[0] == first
    else:
        assert lines[0].startswith("config.yaml:") and ": error: " in lines[0]
    # The source line and a caret under the column follow every message that has a position.
    col = int(lines[0].split(":")[2])
    line = int(lines[0].split(":")[1])
    src = case.config.splitlines()
    if line <= len(src) and len(src[line - 1]) <= SHOW_LINE_CHARS:
        assert lines[1] == "  " + mask_secrets(src[line - 1])  # node credentials are never echoed
        assert lines[2] == "  " + " " * (col - 1) + "^"
    elif line <= len(src):  # a long line: a window of it, the caret under the same character
        shown, caret = lines[1][2:], lines[2].index("^") - 2
        assert len(shown) <= SHOW_LINE_CHARS + 6 and lines[2].strip() == "^"
        assert shown[caret] == src[line - 1][col - 1]
        assert shown.strip(".") in src[line - 1]
        cut = shown.startswith("...")
        assert src[line - 1][col - 1 - (caret - 3 * cut):].startswith(shown[3 * cut:caret + 1])
    if case.hint is not None:
        assert f"  hint: {case.hint}" in lines[1:4]
    assert lines[-1] == (f"{case.errors} errors in config.yaml" if case.errors > 1 else "1 error in config.yaml")


def test_other_messages(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    by_id = {c.id: c for c in CASES}
    _, _, err = run_check(tmp_path / "a", by_id["bad-policy"].config, capsys, monkeypatch, "--check")
    first = err.splitlines()[0]
    assert first.startswith("config.yaml:4:15: error: groups/g/policy: \"fastest\" is not valid here")
    _, _, err = run_check(tmp_path / "b", by_id["bad-vmess"].config, capsys, monkeypatch, "--check")
    assert err.splitlines()[0].startswith(
        "config.yaml:3:7: error: node 'n1': vmess link is not v2rayN base64 JSON with add/port/id")
    _, _, err = run_check(tmp_path / "c", by_id["bad-duration"].config, capsys, monkeypatch, "--check")
    assert err.splitlines()[0].startswith("config.yaml:3:19: error: ")
    assert "30 seconds" in err.splitlines()[0]


def test_all_errors_in_one_run(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    text = textwrap.dedent("""\
        global: {lan_interface: [eth0]}
        nodes:
          n1: 'socks5://192.0.2.10:1080'
          n2: 'sockz://192.0.2.11:1'
        groups:
          proxy: {policy: random}
          hk: {policy: random, filter: ['nam(keyword: hk)']}
        routing:
          rules:
            - "dip(1.1.1.1/40) -> proxy"
            - "dport(1-2-3) && sport(99999) -> direct"
            - "dip(1.1.1.1) -> prox"
            - "bogus(1) -> direct"
            - "dip(1.1.1.1) direct"
            - "dport(80) -> direct"
            - "dport(80) -> block"
          fallback: proxyy
        """)
    rc, out, err = run_check(tmp_path, text, capsys, monkeypatch, "--check")
    assert rc == 1
    firsts = [ln for ln in err.splitlines() if ln.startswith("config.yaml:")]
    assert firsts == [
        "config.yaml:4:7: error: node 'n2': unknown protocol 'sockz' (did you mean 'socks5'?)",
        "config.yaml:7:34: error: unknown filter function 'nam'",
        "config.yaml:10:12: error: invalid IP address or CIDR '1.1.1.1/40'",
        "config.yaml:11:14: error: invalid port or port range '1-2-3'",
        "config.yaml:11:30: error: port '99999' is out of range 0-65535",
        "config.yaml:12:24: error: unknown outbound or group 'prox'",
        "config.yaml:13:8: error: unknown function 'bogus'",
        "config.yaml:14:21: error: syntax error: unexpected 'direct'; expected '&&' or '->'",
        "config.yaml:17:13: error: unknown outbound or group 'proxyy'",
    ]
    assert err.splitlines()[-1] == "9 errors in config.yaml"
    # The schema stage reports all of its problems at once too.
    text = textwrap.dedent("""\
        global:
          lan_interface: [eth0]
          tproxy_port: x
          bogus: 1
        groups:
          g: {filter: 'name(a)'}
        routing:
          rules: [5]
        """)
    rc, out, err = run_check(tmp_path / "s", text, capsys, monkeypatch, "--check")
    firsts = [ln for ln in err.splitlines() if ln.startswith("config.yaml:")]
    assert firsts == [
        "config.yaml:3:16: error: global/tproxy_port: 'x' is not of type 'integer'",
        "config.yaml:4:3: error: unknown option 'bogus' in global",
        "config.yaml:6:3: error: groups/g: missing required option 'policy'",
        "config.yaml:7:1: error: routing: missing required option 'fallback'",
        "config.yaml:8:11: error: routing/rules/0: 5 is neither a rule string nor a rule mapping "
        "(match: [...], outbound: ...)",
    ]
    assert rc == 1 and err.splitlines()[-1] == "5 errors in config.yaml"


WARN_CONFIG = """\
global: {lan_interface: [eth0]}
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  proxy: {policy: random}
  unused: {policy: random, filter: ['name(keyword: hk)']}
routing:
  rules:
    - "dip(1.1.1.1) && dip(2.2.2.2) -> direct"
    - "dip(1.1.1.1) && ipversion(6) -> direct"
    - "l4proto(tcp) && !l4proto(tcp) -> direct"
    - "!l4proto(tcp, udp) -> direct"
    - "dport(80) -> direct"
    - "dport(80) -> block"
    - "dip(1.2.3.4/24) -> direct"
    - "pname(averyveryverylongname) -> direct"
    - "l4proto(udp, tcp) -> proxy"
    - "dport(443) -> direct"
  fallback: proxy
"""

WARNINGS = [
    "config.yaml:6:3: warning: group 'unused' selects no node (no rule uses it)",
    "config.yaml:9:7: warning: this rule can never match: its dip() conditions have nothing in common",
    "config.yaml:10:7: warning: this rule can never match: its address families contradict "
    "(an IPv4 CIDR never matches an IPv6 flow)",
    "config.yaml:11:7: warning: this rule can never match: it requires both l4proto() and !l4proto() "
    "of the same values",
    "config.yaml:12:7: warning: this rule can never match: !l4proto() excludes every packet",
    "config.yaml:14:7: warning: this rule can never match: rule 4 (line 13) has the same conditions and comes first",
    "config.yaml:15:12: warning: '1.2.3.4/24' has host bits set; it means 1.2.3.0/24",
    # pname() acts on the gateway's own traffic only where it leaves wan_interface, which this config lacks.
    "config.yaml:16:8: warning: pname() needs local-host routing: the gateway's own traffic is classified where it "
    "leaves wan_interface, named by cgroup v2 hooks (docs/local-routing.md); no wan_interface is set, so this rule "
    "never matches",
    "config.yaml:16:14: warning: process name 'averyveryverylongname' is longer than 15 bytes; the kernel truncates "
    "names, so this matches 'averyveryverylo'",
    "config.yaml:18:7: warning: this rule can never match: rule 8 (line 17) matches every flow before it",
]


def test_warnings_do_not_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, err = run_check(tmp_path, WARN_CONFIG, capsys, monkeypatch, "--check")
    assert rc == 0
    assert out == "config.yaml: ok (10 rules)\n"
    assert [ln for ln in err.splitlines() if ln.startswith("config.yaml:")] == WARNINGS
    # A real build too: the rules that cannot match are left out of the program.
    rc, out, err = run_check(tmp_path, WARN_CONFIG, capsys, monkeypatch, "-o", "build")
    assert rc == 0 and out == "config.yaml: compiled 4 rules into build/\n"
    emitted = [r["index"] for r in __import__("json").loads((tmp_path / "build/manifest.json").read_text())["rules"]
               if r["emitted"]]
    assert emitted == [4, 6, 7, 8]
    # -q silences warnings.
    rc, out, err = run_check(tmp_path, WARN_CONFIG, capsys, monkeypatch, "--check", "-q")
    assert rc == 0 and err == ""


def test_check_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch) -> None:
    rc, out, err = run_check(tmp_path, rule("dport(1) -> direct"), capsys, monkeypatch, "--check", "-o", "out")
    assert rc == 0 and out == "config.yaml: ok (1 rules)\n"
    assert not (tmp_path / "out").exists() and not (tmp_path / "build").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml", "geoip.dat", "geosite.dat"]
    # A broken config with --check writes nothing either, and a failed build leaves an old build alone.
    rc, out, err = run_check(tmp_path, rule("dport(1) -> direct"), capsys, monkeypatch, "-o", "out")
    assert rc == 0
    before = {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()}
    rc, out, err = run_check(tmp_path, rule("dport(99999) -> direct"), capsys, monkeypatch, "-o", "out")
    assert rc == 1
    assert {p: p.read_bytes() for p in (tmp_path / "out").rglob("*") if p.is_file()} == before


def test_unreadable_config(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert main(["missing.yaml", "--check"]) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "missing.yaml:1:1: error: cannot read config: No such file or directory"
