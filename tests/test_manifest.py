"""The typed manifest (contract/manifest.py): what the compiler writes is what the runtime reads.

- A build's manifest.json read with Manifest.from_json and written back with to_json() is the
  same JSON, for configs using every section (nodes of every protocol, chains, subscriptions,
  groups, DNS upstreams, bind and request/response rules): the on-disk format did not change.
- The programs the manifest names are the ones program.o holds, in the ELF section it says.
- Secrets (passwords, UUIDs, links, DoH URLs) never appear in a repr.
- The runtime's Build reads the typed form; a wrong format, a missing key, a bad value are errors
  naming the key.
"""
from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from dae_py.compiler.pipeline import compile_config
from dae_py.contract.manifest import PROGRAMS, Attach, GroupEntry, Manifest, ManifestError, NodeSpec, TransportSpec
from dae_py.contract.version import MANIFEST_FORMAT
from dae_py.runtime.build import Build, BuildError

REPO = Path(__file__).resolve().parents[1]
SECRET = "hunter2-s3cret"
UUID = "b831381d-6324-4d53-ad4f-8cda48b30811"
VMESS = base64.b64encode(json.dumps({"add": "192.0.2.20", "port": 443, "id": UUID, "aid": 0}).encode()).decode()

EVERYTHING = f"""\
global:
  lan_interface: [eth0]
  wan_interface: [eth1]
  so_mark_from_dae: 0x10
  check_interval: 10s
subscriptions:
  sub: 'file://sub.txt'
nodes:
  s5: 'socks5://alice:{SECRET}@192.0.2.10:1080'
  web: 'https://bob:{SECRET}@192.0.2.11:443?sni=proxy.example'
  ss1: 'ss://aes-256-gcm:{SECRET}@192.0.2.12:8388'
  tj: 'trojan://{SECRET}@192.0.2.13:443?sni=t.example&alpn=h2,http/1.1'
  vm: 'vmess://{VMESS}'
  chained: 'socks5://192.0.2.14:1080 -> socks5://192.0.2.15:1080'
groups:
  proxy: {{policy: min_moving_avg, filter: ['name(s5, web, ss1, tj)'], check_tolerance: 20ms}}
  fixed: {{policy: 'fixed(1)', filter: ['name(s5) [add_latency: 10ms]', 'name(web)']}}
dns:
  upstream:
    plain: 'udp://192.0.2.53:53'
    doh: 'https://dns.example/dns-query?token={SECRET}'
  bind: '127.0.0.1:5353'
  routing:
    request:
      rules:
        - 'qname(suffix: example.org) && qtype(aaaa) -> plain'
      fallback: plain
    response:
      rules:
        - 'upstream(plain) && !ip(10.0.0.0/8) -> accept'
      fallback: accept
routing:
  rules:
    - "domain(suffix: example.com) -> proxy"
    - "dip(192.0.2.0/24) && dport(443) -> fixed"
    - "l4proto(udp) && dport(443) -> block"
  fallback: direct
"""


def _build(tmp_path: Path, text: str) -> Path:
    (tmp_path / "sub.txt").write_text("socks5://192.0.2.30:1080#from-sub\n")
    (tmp_path / "config.yaml").write_text(text)
    compile_config(tmp_path / "config.yaml", tmp_path / "build")
    return tmp_path / "build"


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build(tmp_path_factory.mktemp("everything"), EVERYTHING)


@pytest.mark.parametrize("source", ["everything", "example"])
def test_the_json_round_trips_unchanged(source: str, everything: Path, tmp_path: Path) -> None:
    build = everything if source == "everything" else _build(tmp_path, (REPO / "examples/config.yaml").read_text())
    raw = json.loads((build / "manifest.json").read_text())
    manifest = Manifest.from_json(raw)
    assert manifest.to_json() == raw
    assert not manifest.extra  # every key the compiler writes is a typed one


def test_every_section_arrives_typed(everything: Path) -> None:
    m = Build.open(everything).manifest
    assert m.format == MANIFEST_FORMAT and m.config_file == "config.yaml"
    nodes = {n.name: n for n in m.nodes}
    assert nodes["ss1"].cipher == "aes-256-gcm" and nodes["ss1"].password == SECRET
    assert nodes["tj"].alpn == ("h2", "http/1.1") and nodes["tj"].sni == "t.example"
    assert nodes["vm"].dialable is True and nodes["vm"].username == UUID  # dialable since issue 11
    assert nodes["vm"].cipher == "auto" and nodes["vm"].transport == TransportSpec()
    assert nodes["chained"].chain is not None and nodes["chained"].chain[0].port == 1080
    assert nodes["from-sub"].tag == "sub"
    groups = {g.name: g for g in m.groups}
    assert groups["proxy"].check.check_interval_s == 10.0 and groups["proxy"].check.check_tolerance_ms == 20.0
    assert (groups["fixed"].policy, groups["fixed"].fixed_index) == ("fixed", 1)
    assert groups["fixed"].add_latency_ms == {"s5": 10.0}
    assert m.settings.so_mark == 0x10 and m.settings.lan_interface == ("eth0",)
    assert [(b.host, b.port) for b in m.dns.bind] == [("127.0.0.1", 5353)]
    assert m.dns.request is not None and m.dns.request.rules[0].target == "plain"
    assert [c.func for c in m.dns.request.rules[0].calls] == ["qname", "qtype"]
    assert m.dns.request.rules[0].calls[1].args == {"qtypes": [28]}
    assert m.dns.response is not None and m.dns.response.rules[0].calls[1].negated
    assert m.dns.upstream["doh"].scheme == "https" and m.dns.upstream["doh"].path == "/dns-query"
    rule = m.rules[1]
    assert (rule.text, rule.outbound, rule.where(m.config_file)) == (
        "dip(192.0.2.0/24) && dport(443) -> fixed", "fixed", f"config.yaml:{rule.line}:{rule.col}")
    assert rule.line == EVERYTHING.splitlines().index('    - "dip(192.0.2.0/24) && dport(443) -> fixed"') + 1
    assert "flows" in m.state_maps and "domain_routing4" in m.state_maps


@pytest.mark.skipif(shutil.which("llvm-readelf") is None and shutil.which("readelf") is None,
                    reason="needs readelf")
def test_the_manifest_program_specs_are_the_programs_of_program_o(everything: Path) -> None:
    """Each spec's function is a symbol of program.o, in the section the spec names."""
    readelf = shutil.which("llvm-readelf") or shutil.which("readelf")
    out = subprocess.run([str(readelf), "-s", "-S", "-W", str(everything / "program.o")], check=True,
                         capture_output=True, text=True).stdout
    m = Build.open(everything).manifest
    assert set(m.programs) == set(PROGRAMS)
    sections = {m.group(1) for m in re.finditer(r"^\s*\[\s*\d+\]\s+(\S+)", out, re.MULTILINE)}
    funcs = {line.split()[-1] for line in out.splitlines() if " FUNC " in line}
    for spec in m.programs:
        assert spec.name in funcs, spec
        assert spec.section in sections, spec
    assert m.program(Attach.LAN_INGRESS).name == "lan_ingress"
    assert m.program(Attach.TPROXY_SOCKET).section == "socket"


def test_secrets_never_appear_in_a_repr(everything: Path) -> None:
    m = Build.open(everything).manifest
    text = repr(m) + "".join(repr(n) for n in m.nodes) + repr(m.dns)
    assert SECRET not in text and UUID not in text and VMESS not in text
    node = NodeSpec(name="n", protocol="ss", host="h", port=1, username=UUID, password=SECRET,
                    link=f"ss://x:{SECRET}@h:1", params={"key": SECRET})
    assert SECRET not in repr(node) and UUID not in repr(node) and "'n'" in repr(node)


def test_a_missing_node_key_is_named_without_echoing_the_node() -> None:
    with pytest.raises(ManifestError, match="node 'n': missing key 'host'") as err:
        NodeSpec.from_json({"name": "n", "protocol": "ss", "port": 1, "password": SECRET})
    assert SECRET not in str(err.value)


def test_a_bad_check_value_names_the_group_and_key() -> None:
    with pytest.raises(ManifestError, match="group 'g' check: check_interval_s 'soon' is not a number"):
        GroupEntry.from_json({"name": "g", "id": 2, "check": {"check_interval_s": "soon"}})


def test_build_refuses_another_manifest_format(everything: Path, tmp_path: Path) -> None:
    raw = json.loads((everything / "manifest.json").read_text())
    copy = tmp_path / "old"
    copy.mkdir()
    (copy / "manifest.json").write_text(json.dumps({**raw, "format": MANIFEST_FORMAT + 1}))
    with pytest.raises(BuildError, match=f"manifest format {MANIFEST_FORMAT + 1} is not {MANIFEST_FORMAT}"):
        Build.open(copy)


def test_a_manifest_from_before_program_specs_reads_its_programs() -> None:
    """Format-1 builds written before program specs named programs as {"role": "name"}."""
    old = {"lan_ingress": "lan_ingress", "lan_ingress_l3": "lan_ingress_l3", "wan_egress": "wan_egress",
           "classify_only": "classify_only"}
    m = Manifest.from_json({"format": MANIFEST_FORMAT, "programs": old})
    assert m.program(Attach.LAN_INGRESS_L3).name == "lan_ingress_l3"
    with pytest.raises(ManifestError, match="no program for socket:tproxy"):
        m.program(Attach.TPROXY_SOCKET)
