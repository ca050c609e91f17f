"""Request routing by geosite (and the other domain matchers) and qtype, response routing by
geoip, through the real compiler with geo files beside the config, as dae users write them."""
from __future__ import annotations

import asyncio
from pathlib import Path

import dns.rcode

from dae_py.compiler.geodata import SiteDomain, write_geoip, write_geosite
from dae_py.compiler.pipeline import compile_config
from dae_py.contract.domains import DomainMatcher
from dae_py.runtime.dns import DnsModule

from .fakes import FakeUpstream, RecordingBindings, Zone
from .harness import addresses, ask

CN = Zone({"www.qq.com.": [("A", 60, "10.9.0.1")], "x.taobao.net.": [("A", 60, "10.9.0.2")],
           "kw.example.": [("A", 60, "10.9.0.3")], "cn-ip.example.": [("A", 60, "1.0.1.7")],
           "other.example.": [("A", 60, "10.9.0.4")]})
WORLD = Zone({"www.qq.com.": [("A", 60, "10.8.0.1")], "x.taobao.net.": [("A", 60, "10.8.0.2")],
              "kw.example.": [("A", 60, "10.8.0.3")], "cn-ip.example.": [("A", 60, "10.8.0.9")],
              "other.example.": [("A", 60, "10.8.0.4"), ("AAAA", 60, "fd00::4")]})


def test_geosite_keyword_qtype_request_rules_and_geoip_response_rules(tmp_path: Path) -> None:
    write_geoip(tmp_path / "geoip.dat", {"cn": ["1.0.1.0/24"]})
    write_geosite(tmp_path / "geosite.dat", {"cn": [SiteDomain("domain", "qq.com"), SiteDomain("plain", "taobao")]})

    async def main() -> None:
        cn, world = await FakeUpstream(CN).start(), await FakeUpstream(WORLD).start()
        try:
            (tmp_path / "config.yaml").write_text(f"""\
global:
  lan_interface: [lo]
dns:
  bind: '127.0.0.1:53'
  upstream:
    cn: 'udp://127.0.0.1:{cn.port}'
    world: 'udp://127.0.0.1:{world.port}'
  routing:
    request:
      rules:
        - "qname(geosite:cn) -> cn"
        - "qname(keyword: kw) -> cn"
        - "qtype(aaaa) -> reject"
        - "qname(full: cn-ip.example) -> world"
      fallback: cn
    response:
      rules:
        - "upstream(world) -> accept"
        - "ip(geoip:cn) -> accept"
        - "qname(suffix: example) && !qname(keyword: kw) -> world"
      fallback: accept
routing:
  rules: []
  fallback: direct
""")
            checked = compile_config(tmp_path / "config.yaml", None)
            mod = DnsModule(checked.dns, RecordingBindings(), DomainMatcher.from_sets(checked.ir.domain_sets).bits,
                            so_mark=0, upstream_timeout=0.5, deadline=1.5)
            await mod.open([("127.0.0.1", 0)])
            try:
                assert addresses(await ask(mod, "www.qq.com")) == ["10.9.0.1"]  # geosite domain
                assert addresses(await ask(mod, "x.taobao.net")) == ["10.9.0.2"]  # geosite plain (keyword)
                assert addresses(await ask(mod, "kw.example")) == ["10.9.0.3"]  # keyword, kept by the response rule
                r = await ask(mod, "other.example", "AAAA")  # qtype -> reject: NOERROR, empty
                assert r.rcode() == dns.rcode.NOERROR and r.answer == []
                # asked cn, answer not in geoip:cn, suffix example: asked again on world
                assert addresses(await ask(mod, "other.example")) == ["10.8.0.4"]
                assert addresses(await ask(mod, "cn-ip.example")) == ["10.8.0.9"]  # request rule -> world
                assert world.udp_queries == 2 and cn.udp_queries == 4
            finally:
                await mod.close()
        finally:
            await cn.close()
            await world.close()
    asyncio.run(main())


def test_geoip_response_rule_accepts_a_cn_answer_that_a_later_rule_would_requery(tmp_path: Path) -> None:
    write_geoip(tmp_path / "geoip.dat", {"cn": ["1.0.1.0/24"]})
    write_geosite(tmp_path / "geosite.dat", {"cn": [SiteDomain("domain", "qq.com")]})

    async def main() -> None:
        cn, world = await FakeUpstream(CN).start(), await FakeUpstream(WORLD).start()
        try:
            (tmp_path / "config.yaml").write_text(f"""\
global:
  lan_interface: [lo]
dns:
  bind: '127.0.0.1:53'
  upstream:
    cn: 'udp://127.0.0.1:{cn.port}'
    world: 'udp://127.0.0.1:{world.port}'
  routing:
    request:
      fallback: cn
    response:
      rules:
        - "ip(geoip:cn) -> accept"
        - "upstream(cn) -> world"
      fallback: accept
routing:
  rules: []
  fallback: direct
""")
            checked = compile_config(tmp_path / "config.yaml", None)
            mod = DnsModule(checked.dns, RecordingBindings(), DomainMatcher.from_sets(checked.ir.domain_sets).bits,
                            so_mark=0, upstream_timeout=0.5, deadline=1.5)
            await mod.open([("127.0.0.1", 0)])
            try:
                assert addresses(await ask(mod, "cn-ip.example")) == ["1.0.1.7"]  # geoip:cn: accepted
                assert addresses(await ask(mod, "www.qq.com")) == ["10.8.0.1"]  # not cn: re-queried
                assert world.udp_queries == 1
            finally:
                await mod.close()
        finally:
            await cn.close()
            await world.close()
    asyncio.run(main())
