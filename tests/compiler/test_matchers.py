"""Every matcher through the REAL compiled program, IPv4 and IPv6.

Each scenario is one config compiled once per strategy; its flows run through `explain` (fresh
object, maps filled as the runtime fills them, BPF_PROG_TEST_RUN on lan_ingress / wan_egress) and
through one long-lived loaded object (which also checks the skb mark the datapath sets, the TC
action and `classify_only`). Expectations are written by hand from dae's semantics
(shared/REFERENCE.md), and the pure-Python matcher must agree with them too.
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from dae_py.compiler.geodata import SiteDomain, write_geoip, write_geosite
from dae_py.contract import evaluate
from dae_py.contract.ir import Field
from dae_py.runtime.explain import explain
from dae_py.runtime.packets import DEFAULT_SRC_MAC, FlowSpec, frame
from tests.compiler.compiler_kit import (
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    Compiled,
    Kernel,
    compile_text,
    endpoint,
    strategy_params,
)

pytestmark = pytest.mark.root

FB = "fallback"
DOMAIN_BRANCHES_BUG = ("the bit-vector classifier tests each domain set with its own branch "
                       "(`if (dom->w[0] & (1ULL << k)) acc &= ...`); the verifier walks every combination and "
                       "rejects the program (E2BIG, 1M insns) from 16 domain rules on, so `auto` (bit-vector above "
                       "24 rules) cannot load a config with many domain rules")


def mac(text: str) -> int:
    return int(text.replace(":", "").replace("-", ""), 16)


@dataclass(frozen=True)
class Case:
    """One flow and what must happen to it. `rule` is an index into routing.rules or FB."""

    flow: str  # "tcp SRC -> DST"
    rule: int | str
    outbound: str | None = None
    mark: int | None = None
    must: bool | None = None
    mac: int | None = None
    dscp: int = 0
    domain: str | None = None
    pname: str | None = None

    def spec(self) -> FlowSpec:
        proto, src, _, dst = self.flow.split()
        (s, sp), (d, dp) = endpoint(src), endpoint(dst)
        return FlowSpec(l4proto={"tcp": 6, "udp": 17}[proto], src=s, sport=sp, dst=d, dport=dp,
                        mac=DEFAULT_SRC_MAC if self.mac is None else self.mac, dscp=self.dscp)

    def __str__(self) -> str:
        extra = [f"{k}={v}" for k, v in (("mac", self.mac and f"{self.mac:012x}"), ("dscp", self.dscp or None),
                                          ("domain", self.domain), ("pname", self.pname)) if v]
        return f"{self.flow} {' '.join(extra)}".strip()


def C(flow: str, rule: int | str, **kw: Any) -> Case:
    return Case(flow, rule, **kw)


@dataclass
class Scenario:
    config: str
    cases: list[Case]
    setup: Callable[[Path], None] | None = None


def run_cases(compiled: Compiled, cases: list[Case], explain_every: int = 3, explain_pname: bool = True) -> list[str]:
    """Run every case through one loaded object, and every `explain_every`-th one also through
    `explain` (a fresh load each time, as users run it); return what went wrong."""
    build = compiled.build
    names = {o.id: o.name for o in build.manifest.outbounds}
    problems = []
    with Kernel(build) as k:
        for i, case in enumerate(cases):
            spec = case.spec()
            bits = build.domain_matcher.bits(case.domain) if case.domain else 0
            kr = k.run_spec(spec, bits, case.pname)
            got = {"rule": FB if kr.rule is None else kr.rule, "outbound": names[kr.outbound_id], "mark": kr.mark,
                   "must": kr.must}
            want: dict[str, Any] = {"rule": case.rule}
            if case.outbound is not None:
                want["outbound"] = case.outbound
            if case.mark is not None:
                want["mark"] = case.mark
            if case.must is not None:
                want["must"] = case.must
            bad: dict[str, tuple[Any, Any]] = {key: (got[key], val) for key, val in want.items() if got[key] != val}
            # The datapath's own reaction: a blocked flow is dropped, others go on with the rule's mark.
            # (a local process's proxied flow is bounced into the WAN ingress: TC_ACT_REDIRECT)
            bounced = bool(case.pname) and kr.outbound_id >= 2
            want_tc = TC_ACT_SHOT if got["outbound"] == "block" else TC_ACT_REDIRECT if bounced else TC_ACT_OK
            if kr.tc_action != want_tc:
                bad["tc action"] = (kr.tc_action, want_tc)
            if got["outbound"] == "direct" and kr.skb_mark != kr.mark:
                bad["skb mark"] = (kr.skb_mark, kr.mark)
            if kr.classify_only is not None and kr.classify_only != (k.n_rules if kr.rule is None else kr.rule):
                bad["classify_only"] = (kr.classify_only, kr.rule)
            if (i % explain_every == 0 and not case.pname) or (case.pname and explain_pname):
                ex = explain(build, spec, domain=case.domain, pname=case.pname).as_json()
                seen = {"rule": ex["rule"], "outbound": ex["outbound"], "mark": ex["mark"], "must": ex["must"]}
                if seen != got:
                    bad["explain"] = (seen, got)
                if ex["tc_action"] != {TC_ACT_SHOT: "TC_ACT_SHOT", TC_ACT_REDIRECT: "TC_ACT_REDIRECT"}.get(want_tc,
                                                                                                   "TC_ACT_OK"):
                    bad["explain tc_action"] = (ex["tc_action"], want_tc)
            # The user-space matcher (on the checked IR) must agree with the hand-written expectation.
            f = evaluate.Flow(l4proto=spec.l4proto, src=spec.src, sport=spec.sport, dst=spec.dst, dport=spec.dport,
                              mac=spec.mac, dscp=spec.dscp, pname=case.pname, domain_bits=bits)
            py = evaluate.classify(compiled.checked.ir_checked, f)
            if (FB if py.rule is None else py.rule) != case.rule:
                bad["evaluate.classify rule"] = (py.rule, case.rule)
            if bad:
                problems.append(f"{case}: " + ", ".join(f"{k_}: got {g!r}, want {w!r}" for k_, (g, w) in bad.items()))
    return problems


# ---- the scenarios ----------------------------------------------------------------------------

HEAD = """
global: {lan_interface: [eth0]}
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  proxy: {policy: min_moving_avg}
routing:
  rules:
"""

V4 = "192.168.1.2:40000"
V6 = "[fd00::2]:40000"


def rules(*lines: str, fallback: str = "proxy") -> str:
    return HEAD + "".join(f"    - {line}\n" for line in lines) + f"  fallback: {fallback}\n"


DIP = Scenario(rules(
    '"dip(8.8.8.8) -> direct(mark: 1)"',
    '"ip(10.0.0.0/8, 172.16.0.0/12) -> direct(mark: 2)"',
    "\"dip('2001:db8::1') -> direct(mark: 3)\"",
    '"dip(2001:db8:1::/48, fe80::1) -> direct(mark: 4)"',  # bare IPv6, one of them lexed as 'fe80: :1'
    "\"dip(100.64.0.0/10, 'fd00::/8') -> direct(mark: 5)\"",
), [
    C(f"tcp {V4} -> 8.8.8.8:443", 0, outbound="direct", mark=1),
    C(f"udp {V4} -> 8.8.8.8:53", 0),
    C(f"tcp {V4} -> 8.8.8.9:443", FB, outbound="proxy", mark=0),
    C(f"tcp {V4} -> 8.8.8.7:443", FB),
    C(f"tcp {V4} -> 10.0.0.0:80", 1, mark=2),
    C(f"tcp {V4} -> 10.255.255.255:80", 1),
    C(f"tcp {V4} -> 11.0.0.0:80", FB),
    C(f"tcp {V4} -> 9.255.255.255:80", FB),
    C(f"tcp {V4} -> 172.16.0.1:80", 1),
    C(f"udp {V4} -> 172.31.255.255:80", 1),
    C(f"tcp {V4} -> 172.32.0.0:80", FB),
    C(f"tcp {V6} -> [2001:db8::1]:443", 2, mark=3),
    C(f"tcp {V6} -> [2001:db8::2]:443", FB),
    C(f"tcp {V6} -> [2001:db8:1::]:443", 3, mark=4),
    C(f"udp {V6} -> [2001:db8:1:ffff:ffff:ffff:ffff:ffff]:443", 3),
    C(f"tcp {V6} -> [2001:db8:2::]:443", FB),
    C(f"tcp {V6} -> [2001:db8:0:ffff::1]:443", FB),
    C(f"tcp {V6} -> [fe80::1]:443", 3),
    C(f"tcp {V6} -> [fe80::2]:443", FB),
    C(f"tcp {V4} -> 100.64.0.1:80", 4, mark=5),
    C(f"tcp {V4} -> 100.127.255.255:80", 4),
    C(f"tcp {V4} -> 100.128.0.0:80", FB),
    C(f"tcp {V6} -> [fd12::1]:80", 4),
    C(f"tcp {V6} -> [fe00::1]:80", FB),
    # A v4 CIDR never matches a v6 flow, whatever its low bits.
    C(f"tcp {V6} -> [::ffff:8.8.8.8]:443", FB),
    C(f"tcp {V6} -> [::808:808]:443", FB),
    C(f"tcp {V6} -> [::a00:1]:443", FB),
    C(f"tcp {V6} -> [808:808::]:443", FB),
])

# Large sets go to LPM tries: an address's longest prefix may come from another rule's set,
# whose trie value must still carry every set that holds a shorter prefix of it.
_L1_V4 = ["10.0.0.0/8"] + [f"198.18.{i}.0/24" for i in range(12)]
_L1_V6 = ["2001:db8::/32"] + [f"2001:db8:ff{i:02x}::/48" for i in range(10)]
_L2_V4 = ["10.1.0.0/16", "11.0.0.0/8"] + [f"203.0.{i}.0/25" for i in range(10)]
_L2_V6 = ["2001:db8:5::/48", "2001:db9::/32"] + [f"2001:dba:{i}::/64" for i in range(10)]
DIP_LARGE = Scenario(rules(
    '"dip(' + ", ".join(_L1_V4 + [f"'{n}'" for n in _L1_V6]) + ') -> direct(mark: 1)"',
    '"dip(' + ", ".join(_L2_V4 + [f"'{n}'" for n in _L2_V6]) + ') -> direct(mark: 2)"',
    '"sip(' + ", ".join(_L2_V4 + [f"'{n}'" for n in _L2_V6]) + ') && dport(7) -> direct(mark: 3)"',
), [
    C(f"tcp {V4} -> 10.1.5.5:80", 0, mark=1),  # longest prefix 10.1.0.0/16 is in set 2, 10/8 in set 1
    C(f"tcp {V4} -> 10.2.5.5:80", 0),
    C(f"tcp {V4} -> 11.1.1.1:80", 1, mark=2),
    C(f"tcp {V4} -> 198.18.11.255:80", 0),
    C(f"tcp {V4} -> 198.18.12.0:80", FB),
    C(f"tcp {V4} -> 203.0.9.127:80", 1),
    C(f"tcp {V4} -> 203.0.9.128:80", FB),
    C(f"tcp {V6} -> [2001:db8:5::1]:80", 0),
    C(f"tcp {V6} -> [2001:db9::1]:80", 1),
    C(f"tcp {V6} -> [2001:dba:9::1]:80", 1),
    C(f"tcp {V6} -> [2001:dba:a::1]:80", FB),
    C(f"tcp {V6} -> [2001:db7::1]:80", FB),
    C("tcp 11.2.3.4:5 -> 1.1.1.1:7", 2, mark=3),
    C("tcp 12.2.3.4:5 -> 1.1.1.1:7", FB),
    C("tcp [2001:db9::5]:5 -> [2606:4700::1111]:7", 2),
    C("tcp [2001:db8::5]:5 -> [2606:4700::1111]:7", FB),
])

SIP = Scenario(rules(
    '"sip(192.168.1.5) -> direct(mark: 1)"',
    '"sip(192.168.2.0/24) -> direct(mark: 2)"',
    '"sip(192.168.3.77/24) -> direct(mark: 3)"',  # host bits set: means 192.168.3.0/24 (a warning)
    "\"sip('fd00::/8') -> direct(mark: 4)\"",
    "\"sip(fe80::abcd, '2001:db8::/127') -> direct(mark: 5)\"",
), [
    C("tcp 192.168.1.5:40000 -> 1.1.1.1:443", 0, mark=1),
    C("udp 192.168.1.5:1 -> 1.1.1.1:53", 0),
    C("tcp 192.168.1.6:40000 -> 1.1.1.1:443", FB),
    C("tcp 192.168.2.0:40000 -> 1.1.1.1:443", 1),
    C("tcp 192.168.2.255:40000 -> 1.1.1.1:443", 1),
    C("tcp 192.168.3.1:40000 -> 1.1.1.1:443", 2, mark=3),
    C("tcp 192.168.3.77:40000 -> 1.1.1.1:443", 2),
    C("tcp 192.168.4.1:40000 -> 1.1.1.1:443", FB),
    C("tcp [fd00::5]:40000 -> [2606:4700::1111]:443", 3, mark=4),
    C("tcp [fdff:ffff::1]:40000 -> [2606:4700::1111]:443", 3),
    C("tcp [fc00::1]:40000 -> [2606:4700::1111]:443", FB),
    C("tcp [fe80::abcd]:40000 -> [2606:4700::1111]:443", 4),
    C("tcp [fe80::abce]:40000 -> [2606:4700::1111]:443", FB),
    C("udp [2001:db8::]:40000 -> [2606:4700::1111]:443", 4),
    C("tcp [2001:db8::1]:40000 -> [2606:4700::1111]:443", 4),
    C("tcp [2001:db8::2]:40000 -> [2606:4700::1111]:443", FB),
    C("tcp [::ffff:192.168.1.5]:40000 -> [2606:4700::1111]:443", FB),
])

PORTS = Scenario(rules(
    '"dport(443) -> direct(mark: 1)"',
    '"port(8000-8100) -> direct(mark: 2)"',
    '"dport(1, 22, 60000-65535) -> direct(mark: 3)"',
    '"sport(5353) -> direct(mark: 4)"',
    '"sport(100-200, 300) -> direct(mark: 5)"',
    '"dport(10, 20, 30, 40, 50, 60, 70, 80, 90, 100-110) -> direct(mark: 6)"',  # > 8 ranges: a port bitmap
    '"sport(0-9, 1000-1009, 2000, 3000, 4000, 5000, 6000, 7000, 9999) -> direct(mark: 7)"',
), [
    C(f"tcp {V4} -> 1.1.1.1:443", 0, mark=1),
    C(f"udp {V4} -> 1.1.1.1:443", 0),
    C(f"tcp {V6} -> [2001:db8::1]:443", 0),
    C(f"tcp {V4} -> 1.1.1.1:442", FB),
    C(f"tcp {V4} -> 1.1.1.1:444", FB),
    C(f"tcp {V4} -> 1.1.1.1:8000", 1, mark=2),
    C(f"udp {V6} -> [2001:db8::1]:8100", 1),
    C(f"tcp {V4} -> 1.1.1.1:7999", FB),
    C(f"tcp {V4} -> 1.1.1.1:8101", FB),
    C(f"tcp {V4} -> 1.1.1.1:1", 2, mark=3),
    C(f"tcp {V4} -> 1.1.1.1:22", 2),
    C(f"tcp {V4} -> 1.1.1.1:60000", 2),
    C(f"tcp {V6} -> [2001:db8::1]:65535", 2),
    C(f"tcp {V4} -> 1.1.1.1:59999", FB),
    C(f"tcp {V4} -> 1.1.1.1:0", FB),
    C("tcp 192.168.1.2:5353 -> 1.1.1.1:5000", 3, mark=4),
    C("udp [fd00::2]:5353 -> [2001:db8::1]:5000", 3),
    C("tcp 192.168.1.2:100 -> 1.1.1.1:5000", 4, mark=5),
    C("tcp 192.168.1.2:200 -> 1.1.1.1:5000", 4),
    C("tcp 192.168.1.2:201 -> 1.1.1.1:5000", FB),
    C("tcp 192.168.1.2:300 -> 1.1.1.1:5000", 4),
    C("tcp 192.168.1.2:99 -> 1.1.1.1:5000", FB),
    C(f"tcp {V4} -> 1.1.1.1:10", 5, mark=6),
    C(f"tcp {V4} -> 1.1.1.1:100", 5),
    C(f"udp {V6} -> [2001:db8::1]:105", 5),
    C(f"tcp {V4} -> 1.1.1.1:110", 5),
    C(f"tcp {V4} -> 1.1.1.1:111", FB),
    C(f"tcp {V4} -> 1.1.1.1:15", FB),
    C("tcp 192.168.1.2:0 -> 1.1.1.1:5000", 6, mark=7),
    C("tcp 192.168.1.2:9 -> 1.1.1.1:5000", 6),
    C("tcp 192.168.1.2:10 -> 1.1.1.1:5000", FB),
    C("tcp [fd00::2]:1005 -> [2001:db8::1]:5000", 6),
    C("tcp 192.168.1.2:9999 -> 1.1.1.1:5000", 6),
    C("tcp 192.168.1.2:9998 -> 1.1.1.1:5000", FB),
])

PROTO = Scenario(rules(
    '"ipversion(4) && l4proto(tcp) && dport(25) -> block"',
    '"l4proto(udp) -> direct(mark: 1)"',
    '"ipversion(6) -> direct(mark: 2)"',
    '"l4proto(tcp, udp) && dport(7) -> direct(mark: 3)"',
), [
    C(f"tcp {V4} -> 1.1.1.1:25", 0, outbound="block"),
    C(f"tcp {V6} -> [2001:db8::1]:25", 2, mark=2),
    C(f"udp {V4} -> 1.1.1.1:25", 1, mark=1),
    C(f"udp {V6} -> [2001:db8::1]:80", 1),
    C(f"tcp {V6} -> [2001:db8::1]:80", 2),
    C(f"tcp {V4} -> 1.1.1.1:80", FB),
    C(f"tcp {V4} -> 1.1.1.1:7", 3, mark=3),
])

MAC = Scenario(rules(
    "\"mac('02:42:ac:11:00:02') -> direct(mark: 1)\"",
    '"mac(02:42:ac:11:00:03, aa:bb:cc:dd:ee:ff) -> direct(mark: 2)"',  # bare: 'aa:' lexes as a key
    "'mac(\"02-42-AC-11-00-04\") -> direct(mark: 3)'",
), [
    C(f"tcp {V4} -> 1.1.1.1:443", 0, mark=1, mac=mac("02:42:ac:11:00:02")),
    C(f"udp {V6} -> [2001:db8::1]:443", 0, mac=mac("02:42:ac:11:00:02")),
    C(f"tcp {V4} -> 1.1.1.1:443", 1, mark=2, mac=mac("02:42:ac:11:00:03")),
    C(f"tcp {V6} -> [2001:db8::1]:443", 1, mac=mac("aa:bb:cc:dd:ee:ff")),
    C(f"tcp {V4} -> 1.1.1.1:443", 2, mark=3, mac=mac("02:42:ac:11:00:04")),
    C(f"tcp {V4} -> 1.1.1.1:443", FB, mac=mac("02:42:ac:11:00:05")),
    C(f"tcp {V4} -> 1.1.1.1:443", FB, mac=mac("03:42:ac:11:00:02")),
    C(f"tcp {V6} -> [2001:db8::1]:443", FB),
])

DSCP = Scenario(rules(
    '"dscp(46) -> direct(mark: 1)"',
    '"dscp(0x0a, 63) -> direct(mark: 2)"',
    '"dscp(0) && dport(9) -> direct(mark: 3)"',
    '"dscp(1, 32, 33) -> direct(mark: 4)"',  # IPv6 traffic class straddles two header bytes
), [
    C(f"tcp {V4} -> 1.1.1.1:443", 0, mark=1, dscp=46),
    C(f"udp {V6} -> [2001:db8::1]:443", 0, dscp=46),
    C(f"tcp {V4} -> 1.1.1.1:443", 1, mark=2, dscp=10),
    C(f"tcp {V6} -> [2001:db8::1]:443", 1, dscp=63),
    C(f"tcp {V4} -> 1.1.1.1:443", FB, dscp=45),
    C(f"tcp {V6} -> [2001:db8::1]:443", FB, dscp=47),
    C(f"tcp {V4} -> 1.1.1.1:9", 2, mark=3),
    C(f"tcp {V6} -> [2001:db8::1]:9", 2),
    C(f"tcp {V4} -> 1.1.1.1:9", FB, dscp=2),
    C(f"tcp {V4} -> 1.1.1.1:10", FB),
    C(f"tcp {V6} -> [2001:db8::1]:80", 3, mark=4, dscp=1),
    C(f"tcp {V6} -> [2001:db8::1]:80", 3, dscp=32),
    C(f"tcp {V4} -> 1.1.1.1:80", 3, dscp=33),
    C(f"tcp {V6} -> [2001:db8::1]:80", FB, dscp=16),
    C(f"tcp {V6} -> [2001:db8::1]:80", FB, dscp=31),
])

DOMAIN = Scenario(HEAD + """\
    - "domain(full: exact.example.org) -> direct(mark: 1)"
    - "domain(suffix: example.com) -> direct(mark: 2)"
    - "domain(keyword: google) -> direct(mark: 3)"
    - 'domain(regex: ''^api[0-9]+\\.svc\\.net$'') -> direct(mark: 4)'
    - "domain(shop.test) -> direct(mark: 5)"
    - "domain(full: a.b, suffix: c.d, keyword: zzz, regex: 'q{3}') -> direct(mark: 6)"
  fallback: proxy
""", [
    C(f"tcp {V4} -> 93.184.216.34:443", 0, mark=1, domain="exact.example.org"),
    C(f"tcp {V4} -> 93.184.216.34:443", FB, domain="sub.exact.example.org"),
    C(f"tcp {V4} -> 93.184.216.34:443", FB, domain="xexact.example.org"),
    C(f"tcp {V4} -> 93.184.216.34:443", 1, mark=2, domain="example.com"),  # suffix matches the name itself
    C(f"tcp {V4} -> 93.184.216.34:443", 1, domain="www.example.com"),
    C(f"udp {V4} -> 93.184.216.34:443", 1, domain="a.b.example.com"),
    C(f"tcp {V4} -> 93.184.216.34:443", FB, domain="notexample.com"),
    C(f"tcp {V4} -> 93.184.216.34:443", FB, domain="example.com.cn"),
    C(f"tcp {V4} -> 93.184.216.34:443", 1, domain="WWW.Example.COM."),
    C(f"tcp {V6} -> [2606:2800:220:1::1]:443", 1, domain="www.example.com"),
    C(f"tcp {V6} -> [2606:2800:220:1::1]:443", FB, domain="notexample.com"),
    C(f"tcp {V4} -> 142.250.0.1:443", 2, mark=3, domain="www.google.co.jp"),
    C(f"tcp {V4} -> 142.250.0.1:443", 2, domain="googleapis.com"),
    C(f"tcp {V4} -> 142.250.0.1:443", FB, domain="goo.gl"),
    C(f"tcp {V4} -> 10.9.9.9:443", 3, mark=4, domain="api12.svc.net"),
    C(f"tcp {V4} -> 10.9.9.9:443", FB, domain="api.svc.net"),
    C(f"tcp {V4} -> 10.9.9.9:443", FB, domain="xapi1.svc.net"),
    C(f"tcp {V4} -> 10.9.9.9:443", FB, domain="api1.svc.net.evil"),
    C(f"tcp {V4} -> 10.9.9.10:443", 4, mark=5, domain="shop.test"),
    C(f"tcp {V4} -> 10.9.9.10:443", 4, domain="a.shop.test"),
    C(f"tcp {V4} -> 10.9.9.10:443", FB, domain="myshop.test"),
    C(f"tcp {V4} -> 10.9.9.11:443", 5, mark=6, domain="a.b"),
    C(f"tcp {V4} -> 10.9.9.11:443", FB, domain="x.a.b"),
    C(f"tcp {V4} -> 10.9.9.11:443", 5, domain="c.d"),
    C(f"tcp {V6} -> [2001:db8::11]:443", 5, domain="x.c.d"),
    C(f"tcp {V4} -> 10.9.9.11:443", 5, domain="azzzb.org"),
    C(f"tcp {V4} -> 10.9.9.11:443", 5, domain="qqq.net"),
    C(f"tcp {V4} -> 10.9.9.11:443", FB, domain="qq.net"),
    C(f"tcp {V4} -> 93.184.216.34:443", FB),  # no DNS answer seen for this IP
])

# More than 64 domain sets: the per-IP bitmap takes a second word.
DOMAIN_WORDS = Scenario(rules(*[f'"domain(full: d{i}.test) -> direct(mark: {i + 1})"' for i in range(70)]), [
    C(f"tcp {V4} -> 10.0.0.1:443", 0, mark=1, domain="d0.test"),
    C(f"tcp {V4} -> 10.0.0.1:443", 63, mark=64, domain="d63.test"),
    C(f"tcp {V4} -> 10.0.0.1:443", 64, mark=65, domain="d64.test"),
    C(f"tcp {V6} -> [2001:db8::1]:443", 69, mark=70, domain="d69.test"),
    C(f"tcp {V4} -> 10.0.0.1:443", FB, domain="d70.test"),
])


def _geo_files(d: Path) -> None:
    write_geoip(d / "geoip.dat", {
        "cn": ["1.0.1.0/24", "1.0.2.0/23", "2001:250::/35"],
        "private": ["10.0.0.0/8", "192.168.0.0/16", "fc00::/7"],
        "big": [f"20.{i}.0.0/16" for i in range(30)] + [f"2a00:{i}::/32" for i in range(10)],
    })
    (d / "data").mkdir(exist_ok=True)
    write_geosite(d / "data" / "geosite.dat", {
        "cn": [SiteDomain("domain", "qq.com"), SiteDomain("full", "baidu.cn"), SiteDomain("plain", "taobao"),
               SiteDomain("regex", r"^cdn[0-9]+\.example$")],
        "google": [SiteDomain("domain", "google.com"), SiteDomain("full", "ads.google.com", {"ads": True}),
                   SiteDomain("domain", "doubleclick.net", {"ads": True})],
    })
    (d / "assets").mkdir(exist_ok=True)
    write_geosite(d / "assets" / "mysite.dat", {"myset": [SiteDomain("domain", "my.lan"),
                                                          SiteDomain("full", "router.home")]})
    write_geoip(d / "assets" / "myip.dat", {"home": ["192.0.2.0/24", "2001:db8:ee::/48"]})


GEO = Scenario("""
global:
  lan_interface: [eth0]
  geoip_path: geoip.dat
  geosite_path: data/geosite.dat
  asset_dir: assets
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  proxy: {policy: min_moving_avg}
routing:
  rules:
    - "dip(geoip:cn) -> direct(mark: 1)"
    - "sip(geoip:private) && l4proto(udp) -> direct(mark: 2)"
    - "domain(geosite:cn) -> direct(mark: 3)"
    - "domain(geosite:google@ads) -> direct(mark: 4)"
    - 'domain(ext:"mysite.dat:myset") -> direct(mark: 5)'
    - 'dip(ext:"myip.dat:home") -> direct(mark: 6)'
    - "domain(geosite:google) -> direct(mark: 7)"
    - "dip(geoip:big) -> direct(mark: 8)"
  fallback: proxy
""", [
    C("tcp 192.168.1.2:1 -> 1.0.1.5:443", 0, mark=1),
    C("tcp 192.168.1.2:1 -> 1.0.3.255:443", 0),
    C("tcp 192.168.1.2:1 -> 1.0.4.0:443", FB),
    C("tcp [fd00::2]:1 -> [2001:250::1]:443", 0),
    C("tcp [fd00::2]:1 -> [2001:250:1fff::1]:443", 0),
    C("tcp [fd00::2]:1 -> [2001:250:2000::1]:443", FB),
    C("udp 10.1.2.3:5 -> 9.9.9.9:443", 1, mark=2),
    C("tcp 10.1.2.3:5 -> 9.9.9.9:443", FB),
    C("udp [fd00::1]:5 -> [2606:4700::1111]:443", 1),
    C("udp 11.1.2.3:5 -> 9.9.9.9:443", FB),
    C("tcp 172.16.0.2:1 -> 9.9.9.1:443", 2, mark=3, domain="www.qq.com"),
    C("tcp 172.16.0.2:1 -> 9.9.9.1:443", 2, domain="qq.com"),
    C("tcp 172.16.0.2:1 -> 9.9.9.1:443", 2, domain="baidu.cn"),
    C("tcp 172.16.0.2:1 -> 9.9.9.1:443", FB, domain="www.baidu.cn"),
    C("tcp 172.16.0.2:1 -> 9.9.9.1:443", 2, domain="item.taobao.com"),
    C("tcp 172.16.0.2:1 -> 9.9.9.1:443", 2, domain="cdn12.example"),
    C("tcp 172.16.0.2:1 -> 9.9.9.1:443", FB, domain="cdn.example"),
    C("tcp 172.16.0.2:1 -> 9.9.9.2:443", 3, mark=4, domain="ads.google.com"),
    C("tcp 172.16.0.2:1 -> 9.9.9.2:443", 3, domain="x.doubleclick.net"),
    C("tcp 172.16.0.2:1 -> 9.9.9.2:443", 6, mark=7, domain="www.google.com"),
    C("tcp [fd00::2]:1 -> [2001:db8:77::1]:443", 6, domain="google.com"),
    C("tcp 172.16.0.2:1 -> 9.9.9.3:443", 4, mark=5, domain="my.lan"),
    C("tcp 172.16.0.2:1 -> 9.9.9.3:443", 4, domain="a.my.lan"),
    C("tcp 172.16.0.2:1 -> 9.9.9.3:443", 4, domain="router.home"),
    C("tcp 172.16.0.2:1 -> 9.9.9.3:443", FB, domain="x.router.home"),
    C("tcp 172.16.0.2:1 -> 192.0.2.7:443", 5, mark=6),
    C("tcp [fd00::2]:1 -> [2001:db8:ee::9]:443", 5),
    C("tcp 172.16.0.2:1 -> 20.5.1.1:443", 7, mark=8),
    C("tcp 172.16.0.2:1 -> 20.29.255.255:443", 7),
    C("tcp 172.16.0.2:1 -> 20.30.0.0:443", FB),
    C("tcp [fd00::2]:1 -> [2a00:3::1]:443", 7),
    C("tcp [fd00::2]:1 -> [2a00:a::1]:443", FB),
], setup=_geo_files)

LOGIC = Scenario(rules(
    '"!dip(10.0.0.0/8) && dport(1000) -> direct(mark: 1)"',
    '"dport(2000, 2001) && l4proto(udp) -> direct(mark: 2)"',
    '"!l4proto(tcp) && !dport(53) && dip(10.1.0.0/16) -> direct(mark: 3)"',
    '"!domain(suffix: example.com, keyword: google) && dport(3000) -> block"',
    '"!mac(02:00:00:00:00:01) && dip(10.2.0.0/16) -> direct(mark: 5)"',
    '"!ipversion(4) && dport(5000) -> direct(mark: 6)"',
    "\"!sip(192.168.0.0/16, 'fd00::/8') && dport(6000) -> direct(mark: 7)\"",
    '"dip(10.3.0.0/16) && sip(192.168.7.0/24) && l4proto(tcp) && dport(80, 443) && sport(1024-65535) '
    '-> direct(mark: 8)"',
), [
    C(f"tcp {V4} -> 1.1.1.1:1000", 0, mark=1),
    C(f"tcp {V6} -> [2001:db8::1]:1000", 0),
    C(f"tcp {V4} -> 10.0.0.1:1000", FB),
    C(f"udp {V4} -> 1.1.1.1:2000", 1, mark=2),
    C(f"udp {V6} -> [2001:db8::1]:2001", 1),
    C(f"tcp {V4} -> 1.1.1.1:2000", FB),
    C(f"udp {V4} -> 1.1.1.1:2002", FB),
    C(f"udp {V4} -> 10.1.0.5:80", 2, mark=3),
    C(f"udp {V4} -> 10.1.0.5:53", FB),
    C(f"tcp {V4} -> 10.1.0.5:80", FB),
    C(f"tcp {V4} -> 1.1.1.1:3000", 3, outbound="block"),
    C(f"tcp {V4} -> 1.1.1.1:3000", FB, domain="www.example.com"),
    C(f"tcp {V6} -> [2001:db8::1]:3000", FB, domain="mail.google.com"),
    C(f"tcp {V4} -> 1.1.1.1:3000", 3, domain="other.org"),
    C(f"tcp {V4} -> 10.2.0.1:80", FB),
    C(f"tcp {V4} -> 10.2.0.1:80", 4, mark=5, mac=mac("02:00:00:00:00:02")),
    C(f"tcp {V6} -> [2001:db8::1]:5000", 5, mark=6),
    C(f"tcp {V4} -> 1.1.1.1:5000", FB),
    C("tcp 192.168.1.1:40000 -> 1.1.1.1:6000", FB),
    C("tcp 172.16.0.1:40000 -> 1.1.1.1:6000", 6, mark=7),
    C("tcp [fd00::1]:40000 -> [2001:db8::1]:6000", FB),
    C("tcp [2001:db8::9]:40000 -> [2001:db8::1]:6000", 6),
    C("tcp 192.168.7.9:1024 -> 10.3.0.1:443", 7, mark=8),
    C("tcp 192.168.7.9:1023 -> 10.3.0.1:443", FB),
    C("udp 192.168.7.9:1024 -> 10.3.0.1:443", FB),
    C("tcp 192.168.7.9:1024 -> 10.3.0.1:8080", FB),
    C("tcp 192.168.8.1:1024 -> 10.3.0.1:80", FB),
])

ACTIONS = Scenario(rules(
    '"dip(10.0.0.1) -> must_direct"',
    '"dip(10.0.0.2) -> direct(must)"',
    '"dip(10.0.0.3) -> proxy(mark: 0x10, must)"',
    '"dip(10.0.0.4) -> must_proxy"',
    '"dport(53) -> must_rules"',  # sets must and goes on matching
    '"dip(10.0.0.5) -> direct(mark: 0x800)"',
    '"dip(10.0.0.6) -> block"',
    '"dip(10.0.0.7) -> proxy"',
    '"dip(10.0.0.8) -> must_direct(mark: 4294967295)"',
    '"dip(\'2001:db8::6\') -> block"',
    fallback="'direct(mark: 0x42)'"), [
    C(f"udp {V4} -> 10.0.0.1:80", 0, outbound="direct", mark=0, must=True),
    C(f"udp {V4} -> 10.0.0.2:80", 1, outbound="direct", must=True),
    C(f"udp {V4} -> 10.0.0.3:80", 2, outbound="proxy", mark=0x10, must=True),
    C(f"tcp {V4} -> 10.0.0.4:80", 3, outbound="proxy", mark=0, must=True),
    C(f"udp {V4} -> 10.0.0.1:53", 0, must=True),
    C(f"udp {V4} -> 10.0.0.5:80", 5, outbound="direct", mark=0x800, must=False),
    C(f"udp {V4} -> 10.0.0.5:53", 5, outbound="direct", mark=0x800, must=True),
    C(f"udp {V4} -> 10.0.0.6:80", 6, outbound="block", must=False),
    C(f"udp {V4} -> 10.0.0.6:53", 6, outbound="block", must=True),
    C(f"tcp {V6} -> [2001:db8::6]:443", 9, outbound="block"),
    C(f"tcp {V4} -> 10.0.0.7:80", 7, outbound="proxy", mark=0, must=False),
    C(f"udp {V4} -> 10.0.0.7:53", 7, outbound="proxy", must=True),
    C(f"tcp {V4} -> 10.0.0.8:80", 8, outbound="direct", mark=0xFFFFFFFF, must=True),
    C(f"tcp {V4} -> 10.0.0.9:80", FB, outbound="direct", mark=0x42, must=False),
    C(f"udp {V6} -> [2001:db8::9]:53", FB, outbound="direct", mark=0x42, must=True),
])

FALLBACK_MUST = Scenario(rules('"dport(1) -> block"', '"dport(2) -> must_rules"', fallback="must_proxy"), [
    C(f"tcp {V4} -> 1.1.1.1:1", 0, outbound="block", must=False),
    C(f"tcp {V4} -> 1.1.1.1:3", FB, outbound="proxy", must=True),
    C(f"tcp {V6} -> [2001:db8::1]:2", FB, outbound="proxy", must=True),
])

STRUCTURED = Scenario(HEAD + """\
    - match:
        - dip: ['10.9.0.0/16', 'fd09::/16']
        - dport: [443, '8000-8100']
      outbound: proxy
      mark: 0x20
    - match:
        - {domain: [{suffix: example.com}, {keyword: google}], not: true}
        - l4proto: udp
      outbound: direct
      must: true
    - match: [{mac: '02:42:ac:11:00:09'}]
      outbound: block
    - "dport(9) -> direct(mark: 9)"
  fallback: proxy
""", [
    C(f"tcp {V4} -> 10.9.1.1:443", 0, outbound="proxy", mark=0x20),
    C(f"tcp {V6} -> [fd09::1]:8050", 0, mark=0x20),
    C(f"tcp {V4} -> 10.9.1.1:80", FB),
    C(f"udp {V4} -> 1.1.1.1:80", 1, outbound="direct", must=True),
    C(f"udp {V4} -> 1.1.1.1:80", FB, domain="www.example.com"),
    C(f"tcp {V4} -> 1.1.1.1:80", 2, outbound="block", mac=mac("02:42:ac:11:00:09")),
    C(f"tcp {V4} -> 1.1.1.1:9", 3, mark=9),
])

# The example of the issue, verbatim (groups 'hk' selects no node: a warning, since no rule uses it).
ISSUE_EXAMPLE = Scenario("""
nodes:
  n1: 'socks5://192.0.2.10:1080'
groups:
  proxy: {policy: min_moving_avg}          # no filter: all nodes
  hk: {policy: 'fixed(0)', filter: ['name(keyword: hk)']}
routing:
  rules:
    - "dip(224.0.0.0/3, 'ff00::/8') -> direct"
    - "dip(8.8.8.8) && l4proto(tcp) && dport(1-1023, 8443) -> proxy"
    - "!domain(suffix: example.com, keyword: google) -> block"
    - "domain(geosite:cn) -> direct(mark: 0x800)"
  fallback: proxy
""", [
    C(f"udp {V4} -> 224.0.0.251:5353", 0, outbound="direct"),
    C(f"udp {V4} -> 239.255.255.250:1900", 0),
    C(f"udp {V6} -> [ff02::fb]:5353", 0),
    C(f"tcp {V4} -> 8.8.8.8:443", 1, outbound="proxy"),
    C(f"tcp {V4} -> 8.8.8.8:8443", 1),
    C(f"tcp {V4} -> 8.8.8.8:1024", 2, outbound="block"),
    C(f"udp {V4} -> 8.8.8.8:443", 2, outbound="block"),
    C(f"tcp {V4} -> 1.1.1.1:443", 2, outbound="block", domain="qq.com"),
    C(f"tcp {V4} -> 93.184.216.34:443", FB, outbound="proxy", domain="www.example.com"),
    C(f"tcp {V4} -> 142.250.0.1:443", 3, outbound="direct", mark=0x800, domain="www.google.cn"),
    C(f"tcp {V6} -> [2001:db8::8]:443", 3, mark=0x800, domain="google.cn"),
], setup=lambda d: write_geosite(d / "geosite.dat", {"cn": [SiteDomain("domain", "google.cn"),
                                                               SiteDomain("domain", "qq.com")]}))

PNAME = Scenario(rules(
    '"pname(curl) -> direct(mark: 1)"',
    '"pname(wget, averyveryverylongname) -> direct(mark: 2)"',  # longer than 15 bytes: truncated (a warning)
    '"pname(ssh) && dport(22) -> must_direct"',
), [
    C(f"tcp {V4} -> 1.1.1.1:443", 0, mark=1, pname="curl"),
    C(f"udp {V6} -> [2001:db8::1]:443", 0, pname="curl"),
    C(f"tcp {V4} -> 1.1.1.1:443", 1, mark=2, pname="wget"),
    C(f"tcp {V4} -> 1.1.1.1:443", 1, pname="averyveryverylongname"),
    C(f"tcp {V4} -> 1.1.1.1:443", 1, pname="averyveryverylo"),
    C(f"tcp {V4} -> 1.1.1.1:443", FB, pname="curl2"),
    C(f"tcp {V4} -> 1.1.1.1:443", FB, pname="cur"),
    C(f"tcp {V4} -> 1.1.1.1:22", 2, must=True, pname="ssh"),
    C(f"tcp {V4} -> 1.1.1.1:23", FB, pname="ssh"),
])

# pname() applies to the gateway's own processes (wan_egress): LAN flows never match it.
PNAME_LAN = Scenario(PNAME.config, [
    C(f"tcp {V4} -> 1.1.1.1:443", FB),
    C(f"tcp {V4} -> 1.1.1.1:22", FB),
    C(f"tcp {V6} -> [2001:db8::1]:443", FB),
    C(f"tcp {V4} -> 1.1.1.1:443", FB, pname="nginx"),  # wan_egress, a process no rule names
])

SCENARIOS: dict[str, Scenario] = {
    "dip": DIP, "dip_large": DIP_LARGE, "sip": SIP, "ports": PORTS, "l4proto_ipversion": PROTO, "mac": MAC,
    "dscp": DSCP, "domain": DOMAIN, "domain_words": DOMAIN_WORDS, "geo": GEO, "logic": LOGIC,
    "actions": ACTIONS, "fallback_must": FALLBACK_MUST, "structured": STRUCTURED, "issue_example": ISSUE_EXAMPLE,
    "pname_lan": PNAME_LAN,
}


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, str], Compiled]:
    """Compile each scenario once per strategy (lazily), for all of this module's tests."""
    cache: dict[tuple[str, str], Compiled] = {}
    all_scenarios = {**SCENARIOS, "pname": PNAME}

    def get(name: str, strategy: str) -> Compiled:
        if (name, strategy) not in cache:
            d = tmp_path_factory.mktemp(f"{name}-{strategy}")
            sc = all_scenarios[name]
            if sc.setup:
                sc.setup(d)
            cache[(name, strategy)] = compile_text(d, sc.config, strategy=strategy)
        return cache[(name, strategy)]

    return get


@pytest.mark.parametrize("strategy", strategy_params())
@pytest.mark.parametrize("name", list(SCENARIOS))
def test_scenario(name: str, strategy: str, compiled: Callable[[str, str], Compiled],
                  request: pytest.FixtureRequest) -> None:
    problems = run_cases(compiled(name, strategy), SCENARIOS[name].cases)
    assert not problems, f"{len(problems)} flow(s) decided wrongly:\n" + "\n".join(problems)


@pytest.mark.parametrize("strategy", strategy_params())
def test_pname(strategy: str, compiled: Callable[[str, str], Compiled]) -> None:
    """pname() in the program, with the process entry in pname_probe: a test-run skb's dummy
    socket holds no storage, so that is where wan_egress looks (the hooks themselves are tested
    on real sockets in tests/local)."""
    problems = run_cases(compiled("pname", strategy), PNAME.cases, explain_pname=False)
    assert not problems, f"{len(problems)} flow(s) decided wrongly:\n" + "\n".join(problems)


@pytest.mark.parametrize("strategy", strategy_params())
def test_explain_pname(strategy: str, compiled: Callable[[str, str], Compiled]) -> None:
    """`explain --pname` shows what pname() rules do."""
    problems = run_cases(compiled("pname", strategy), PNAME.cases)
    assert not problems, f"{len(problems)} flow(s) decided wrongly:\n" + "\n".join(problems)


# ---- what the front end made of the configs -----------------------------------------------------

@pytest.mark.parametrize("strategy", ["linear"])
def test_front_end_views(strategy: str, compiled: Callable[[str, str], Compiled]) -> None:
    """Warnings the scenarios should raise, and the shape of what they compile to."""
    sip = compiled("sip", strategy)
    assert any("'192.168.3.77/24' has host bits set; it means 192.168.3.0/24" in d.message
               for d in sip.checked.diags.warnings)
    pn = compiled("pname_lan", strategy)
    assert any("longer than 15 bytes" in d.message and "'averyveryverylo'" in d.message
               for d in pn.checked.diags.warnings)
    assert "averyveryverylo" in pn.checked.ir.pnames
    issue = compiled("issue_example", strategy)
    groups = {g.name: g for g in issue.build.manifest.groups}
    assert groups["proxy"].nodes == ("n1",) and groups["hk"].nodes == ()
    assert any("group 'hk' selects no node" in d.message for d in issue.checked.diags.warnings)
    assert not issue.checked.diags.errors
    big = compiled("dip_large", strategy)
    assert {m.name for m in big.build.manifest.maps} >= {"dip4_sets", "dip6_sets", "sip4_sets", "sip6_sets"}
    ports = compiled("ports", strategy)
    assert "port_sets" in {m.name for m in ports.build.manifest.maps}
    words = compiled("domain_words", strategy)
    assert words.build.domain_words == 2


def test_structured_rule_is_the_string_rule(tmp_path: Path) -> None:
    """The structured mapping form compiles to the same IR as the equivalent rule strings."""
    strings = rules(
        "\"dip('10.9.0.0/16', 'fd09::/16') && dport(443, 8000-8100) -> proxy(mark: 0x20)\"",
        '"!domain(suffix: example.com, keyword: google) && l4proto(udp) -> direct(must)"',
        "\"mac('02:42:ac:11:00:09') -> block\"",
        '"dport(9) -> direct(mark: 9)"')
    a = compile_text(tmp_path / "s", STRUCTURED.config, out_name="b").checked.ir_checked
    b = compile_text(tmp_path / "t", strings, out_name="b").checked.ir_checked
    assert [(r.matches, r.action) for r in a.rules] == [(r.matches, r.action) for r in b.rules]
    assert a.domain_sets == b.domain_sets and a.fallback == b.fallback


# ---- the CLI users debug with -------------------------------------------------------------------

def test_explain_cli_json(compiled: Callable[[str, str], Compiled], capsys: pytest.CaptureFixture[str]) -> None:
    from dae_py.runtime.cli import main

    c = compiled("logic", "linear")
    out = c.out

    def run(*args: str) -> dict[str, Any]:
        assert main(["explain", str(out), *args, "--json"]) == 0
        return json.loads(capsys.readouterr().out)

    r = run("--proto", "tcp", "--src", "[2001:db8::9]:40000", "--dst", "[2001:db8::1]:6000")
    assert (r["rule"], r["outbound"], r["mark"]) == (6, "direct", 7)
    assert r["line"] == 14 and r["rule_text"].startswith("!sip(")
    r = run("--proto", "tcp", "--src", "192.168.1.2:1", "--dst", "10.2.0.1:80", "--mac", "02:00:00:00:00:02")
    assert (r["rule"], r["outbound"]) == (4, "direct")
    r = run("--proto", "tcp", "--src", "192.168.1.2:1", "--dst", "1.1.1.1:3000", "--domain", "other.org")
    assert (r["rule"], r["outbound"], r["tc_action"]) == (3, "block", "TC_ACT_SHOT")
    r = run("--proto", "tcp", "--src", "192.168.1.2:1", "--dst", "1.1.1.1:3000", "--domain", "www.example.com")
    assert (r["rule"], r["outbound"]) == ("fallback", "proxy")
    r = run("--proto", "udp", "--src", "192.168.1.2:1", "--dst", "1.1.1.1:9", "--dscp", "0")
    assert r["rule"] == "fallback"
    # The human-readable form names the rule and its line.
    assert main(["explain", str(out), "--proto", "udp", "--src", "192.168.1.2:1", "--dst", "10.1.0.5:80"]) == 0
    text = capsys.readouterr().out
    assert "rule 2 at config.yaml:10" in text and "mark 0x3" in text


# ---- the packet parser in front of the matchers ------------------------------------------------

def _ipv6_with_ext_headers(spec: FlowSpec) -> bytes:
    """The frame of `spec` with a hop-by-hop and a destination-options header before TCP."""
    f = frame(spec)
    eth, l4 = f[:14], f[54:]
    ip6 = bytearray(f[14:54])
    hbh = bytes([60, 0]) + bytes([1, 4, 0, 0, 0, 0])  # next: dest opts; PadN
    dst = bytes([6, 1]) + bytes([1, 12]) + bytes(12)  # next: TCP; 16 bytes
    ip6[4:6] = (len(hbh) + len(dst) + len(l4)).to_bytes(2, "big")
    ip6[6] = 0  # next header: hop-by-hop
    return eth + bytes(ip6) + hbh + dst + l4


def _ipv4_with_options(spec: FlowSpec) -> bytes:
    f = frame(spec)
    eth, ip, l4 = f[:14], bytearray(f[14:34]), f[34:]
    ip[0] = 0x46  # IHL 6: one word of options (NOP x4)
    ip[2:4] = (24 + len(l4)).to_bytes(2, "big")
    ip[10:12] = b"\0\0"
    hdr = bytes(ip) + b"\x01\x01\x01\x01"
    s = sum(int.from_bytes(hdr[i:i + 2], "big") for i in range(0, len(hdr), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    hdr = hdr[:10] + (~s & 0xFFFF).to_bytes(2, "big") + hdr[12:]
    return eth + hdr + l4


@pytest.mark.parametrize("strategy", strategy_params())
def test_parser_variants(strategy: str, compiled: Callable[[str, str], Compiled]) -> None:
    """802.1Q/802.1ad tags, IPv6 extension headers and IPv4 options do not hide what rules look at."""
    c = compiled("mac", strategy)
    with Kernel(c.build) as k:
        m = mac("02:42:ac:11:00:02")
        for vlan in (None, 7):
            spec = FlowSpec(6, ipaddress.ip_address("192.168.1.2"), 1, ipaddress.ip_address("1.1.1.1"), 443, mac=m,
                            vlan=vlan)
            assert k.run_spec(spec).rule == 0
        # QinQ: an 802.1ad tag then an 802.1Q tag.
        spec = FlowSpec(6, ipaddress.ip_address("192.168.1.2"), 1, ipaddress.ip_address("1.1.1.1"), 443, mac=m)
        f = frame(spec)
        qinq = f[:12] + b"\x88\xa8\x00\x05" + b"\x81\x00\x00\x07" + f[12:]
        assert k.run_spec(spec, raw_frame=qinq).rule == 0
    c = compiled("ports", strategy)
    with Kernel(c.build) as k:
        spec6 = FlowSpec(6, ipaddress.ip_address("fd00::2"), 40000, ipaddress.ip_address("2001:db8::1"), 443)
        assert k.run_spec(spec6, raw_frame=_ipv6_with_ext_headers(spec6)).rule == 0
        spec6b = dataclasses.replace(spec6, dport=8050)
        assert k.run_spec(spec6b, raw_frame=_ipv6_with_ext_headers(spec6b)).rule == 1
        spec4 = FlowSpec(17, ipaddress.ip_address("192.168.1.2"), 5353, ipaddress.ip_address("1.1.1.1"), 5000)
        assert k.run_spec(spec4, raw_frame=_ipv4_with_options(spec4)).rule == 3


@pytest.mark.parametrize("strategy", strategy_params())
def test_domain_bits_belong_to_one_address(strategy: str, compiled: Callable[[str, str], Compiled]) -> None:
    """The bits DNS bound to one destination IP do not leak to another."""
    c = compiled("domain", strategy)
    bits = c.build.domain_matcher.bits("www.example.com")
    assert bits
    with Kernel(c.build) as k:
        a = FlowSpec(6, ipaddress.ip_address("192.168.1.2"), 1, ipaddress.ip_address("93.184.216.34"), 443)
        k.bind_domain(a.dst, bits)
        assert k.run_spec(a, bits).rule == 1
        # Other addresses (the next one; the same low 32 bits as a v6 address) see no bits.
        for src, dst in (("192.168.1.2", "93.184.216.35"), ("fd00::2", "2001:db8::5db8:d822")):
            other = FlowSpec(6, ipaddress.ip_address(src), 1, ipaddress.ip_address(dst), 443)
            assert k.run_spec(other).rule is None, dst
        assert k.domains is not None and k.domains.lookup(a.dst) == bits


@pytest.mark.parametrize("strategy", strategy_params())
def test_domain_filter_guards_the_lookup(strategy: str, compiled: Callable[[str, str], Compiled]) -> None:
    """The domain_filter bit array in front of domain_routing (runtime.domain_map): bits bound
    through DomainBindings at random v4 and v6 addresses are found (the Python and C filter
    hashes agree), and an entry written to domain_routing alone, with its filter bit clear, is
    not looked up: the bit is what lets flows to unresolved addresses skip the hash lookup."""
    c = compiled("domain", strategy)
    bits = c.build.domain_matcher.bits("www.example.com")
    rng = random.Random(11)
    with Kernel(c.build) as k:
        assert k.domains is not None
        for i in range(120):
            dst: Any = (ipaddress.IPv4Address(rng.getrandbits(32)) if i % 2
                        else ipaddress.IPv6Address(rng.getrandbits(128)))
            spec = FlowSpec(6, ipaddress.ip_address("192.168.1.2" if dst.version == 4 else "fd00::2"), 1, dst, 443)
            assert k.run_spec(spec, bits).rule == 1, dst  # bound through DomainBindings
            assert k.run_spec(spec).rule is None, dst  # unbound: the filter bit alone decides nothing
        for _ in range(1000):  # an address whose filter bit nobody set
            dst = ipaddress.IPv4Address(rng.getrandbits(32))
            if not k.domains.filter_bit_set(dst):
                break
        spec = FlowSpec(6, ipaddress.ip_address("192.168.1.2"), 1, dst, 443)
        k.domains.write_entry_only(dst, bits)
        assert k.run_spec(spec, leave_domains=True).rule is None
        k.domains.bind(dst, bits)
        assert k.run_spec(spec, leave_domains=True).rule == 1


def test_field_coverage() -> None:
    """Every matcher the IR knows appears in some scenario (so a new matcher needs a test here)."""
    used = set()
    for sc in [*SCENARIOS.values(), PNAME]:
        for f in Field:
            if f"{f.value}(" in sc.config or f"- {f.value}:" in sc.config or f"{{{f.value}:" in sc.config:
                used.add(f)
    assert used == set(Field)
