"""dae's `global` options (config/config.go `Global`), every one recognised: the two that are cheap
and meaningful here take effect (`bpf_conn_state_map_size` sizes the flow table in program.c and
program.o, `mptcp` reaches the relay through the manifest), the rest are accepted with a warning
at their value that says what this project does instead, from contract/capabilities.py. dae's
`default:` (the fallback's other name) is read as `fallback:`.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.pipeline import compile_config
from dae_py.contract import capabilities
from dae_py.contract.manifest import Manifest
from dae_py.runtime.sniff.dialmode import relay_settings

# Every mapstructure key of dae's `Global` (config/config.go at daeuniverse/dae 09c6c8c, July 2026)
# but so_mark_from_dae_set (set by dae itself), with a value from example.dae or its defaults.
DAE_GLOBAL = {
    "tproxy_port": "12345", "tproxy_port_protect": "true", "so_mark_from_dae": "0", "log_level": "info",
    "tcp_check_url": "'http://cp.cloudflare.com,1.1.1.1,2606:4700:4700::1111'", "tcp_check_http_method": "HEAD",
    "udp_check_dns": "'dns.google:53,8.8.8.8,2001:4860:4860::8888'", "check_interval": "30s",
    "check_tolerance": "50ms", "lan_interface": "eth0", "wan_interface": "auto", "allow_insecure": "false",
    "dial_mode": "domain", "disable_waiting_network": "false", "disable_thp": "true",
    "enable_local_tcp_fast_redirect": "false", "auto_config_kernel_parameter": "true",
    "auto_config_firewall_rule": "false", "sniffing_timeout": "30ms", "tls_implementation": "tls",
    "utls_imitate": "chrome_auto", "tls_fragment": "false", "tls_fragment_length": "'50-100'",
    "tls_fragment_interval": "'10-20'", "pprof_port": "0", "mptcp": "false", "bootstrap_resolver": "'9.9.9.9:53'",
    "fallback_resolver": "'8.8.8.8:53'", "bandwidth_max_tx": "'200 mbps'", "bandwidth_max_rx": "'1 gbps'",
    "udphop_interval": "30s", "bpf_conn_state_map_size": "262144",
}


def _config(options: dict[str, str], extra: str = "") -> str:
    lines = "".join(f"  {k}: {v}\n" for k, v in options.items())
    return f"global:\n{lines}{extra}routing:\n  fallback: direct\n"


def _warnings(text: str) -> list[tuple[int, int, str]]:
    checked = compile_config(None, None, text=text, name="config.yaml")
    return [(d.pos.line, d.pos.col, d.message) for d in checked.diags.warnings]


def _errors(text: str) -> list[str]:
    with pytest.raises(CompileError) as info:
        compile_config(None, None, text=text, name="config.yaml")
    return [d.message for d in info.value.diagnostics.errors]


def test_every_dae_global_option_compiles_as_example_dae_writes_it() -> None:
    ws = _warnings(_config(DAE_GLOBAL))
    ignored = {m.split(" ")[0] for _, _, m in ws if " is ignored: " in m}
    # the values example.dae writes that this runtime does not act on, and nothing else
    assert ignored == {"global.disable_waiting_network", "global.disable_thp", "global.utls_imitate",
                       "global.bootstrap_resolver", "global.fallback_resolver", "global.bandwidth_max_tx",
                       "global.bandwidth_max_rx", "global.udphop_interval", "global.tls_fragment_length",
                       "global.tls_fragment_interval"}


def test_every_dae_global_option_has_a_schema_row_and_the_ignored_ones_a_capability_row() -> None:
    schema = json.loads((Path(__file__).parents[2] / "schemas" / "config.schema.json").read_text())
    known = schema["$defs"]["global"]["properties"]
    assert set(DAE_GLOBAL) <= set(known)
    rows = {o.key for o in capabilities.OPTIONS}
    acted_on_elsewhere = {"tproxy_port", "so_mark_from_dae", "log_level", "tcp_check_url", "tcp_check_http_method",
                          "udp_check_dns", "check_interval", "check_tolerance", "lan_interface", "wan_interface",
                          "allow_insecure", "auto_config_kernel_parameter"}  # typed manifest keys / group specs
    assert set(DAE_GLOBAL) - acted_on_elsewhere <= rows
    assert all(o.missing for o in capabilities.OPTIONS if not o.acts)


@pytest.mark.parametrize("option, value, says", [
    ("pprof_port", "6060", "no pprof endpoint"),
    ("disable_thp", "true", "transparent huge pages"),
    ("enable_local_tcp_fast_redirect", "true", "deprecated in dae"),
    ("auto_config_firewall_rule", "true", "deprecated in dae"),
    ("tls_fragment", "true", "in one piece"),
    ("tls_fragment_length", "'50-100'", "does not fragment"),
    ("tls_fragment_interval", "'10-20'", "does not fragment"),
    ("bootstrap_resolver", "'9.9.9.9:53'", "system resolver"),
    ("fallback_resolver", "'[2001:4860:4860::8888]:53'", "system resolver only"),
    ("bandwidth_max_tx", "'200 mbps'", "Hysteria2"),
    ("bandwidth_max_rx", "125000000", "Hysteria2"),
    ("udphop_interval", "30s", "port hopping"),
    ("disable_waiting_network", "false", "does not wait for the network"),
])
def test_an_option_this_runtime_does_not_act_on_warns_at_its_value_with_what_it_does(
        option: str, value: str, says: str) -> None:
    ws = _warnings(_config({"lan_interface": "eth0", option: value}))
    hits = [w for w in ws if w[2].startswith(f"global.{option} is ignored: ")]
    assert [(line, col) for line, col, _ in hits] == [(3, len(f"  {option}: ") + 1)], ws
    assert says in hits[0][2]


@pytest.mark.parametrize("option, value", [
    ("pprof_port", "0"), ("disable_thp", "false"), ("tls_fragment", "false"), ("bandwidth_max_tx", "'0'"),
    ("bandwidth_max_rx", "0"), ("enable_local_tcp_fast_redirect", "false"), ("disable_waiting_network", "true"),
    ("tls_implementation", "tls"), ("mptcp", "true"), ("mptcp", "false"), ("bpf_conn_state_map_size", "131072"),
])
def test_an_option_value_that_needs_nothing_is_not_warned(option: str, value: str) -> None:
    ws = _warnings(_config({"lan_interface": "eth0", option: value}))
    assert not [w for w in ws if w[2].startswith(f"global.{option}")]


@pytest.mark.parametrize("option, value, says", [
    ("bpf_conn_state_map_size", "100", "out of range (1024 to 16777216 entries)"),
    ("bpf_conn_state_map_size", "'big'", "is not of type 'integer'"),
    ("bootstrap_resolver", "'dns.google:53'", "is not 'IPv4:PORT' or '[IPv6]:PORT'"),
    ("fallback_resolver", "'8.8.8.8'", "is not 'IPv4:PORT' or '[IPv6]:PORT'"),
    ("tls_fragment_length", "'100-50'", "100 is more than 50"),
    ("tls_fragment_interval", "'ten'", "is not 'LO-HI'"),
    ("bandwidth_max_tx", "'fast'", "is not a bandwidth"),
    ("udphop_interval", "0s", "out of range"),
    ("pprof_port", "70000", "pprof_port"),
])
def test_a_value_dae_would_reject_is_an_error_at_it(option: str, value: str, says: str) -> None:
    errors = _errors(_config({"lan_interface": "eth0", option: value}))
    assert any(says in e for e in errors), errors


def test_bpf_conn_state_map_size_sizes_the_flow_table_of_the_built_program(tmp_path: Path) -> None:
    from dae_py.runtime.bpf import BpfObject

    compile_config(None, tmp_path / "b", text=_config({"lan_interface": "eth0", "bpf_conn_state_map_size": "131072"}),
                   name="config.yaml")
    compile_config(None, tmp_path / "d", text=_config({"lan_interface": "eth0"}), name="config.yaml")
    assert "#define DAE_FLOW_TABLE_SIZE 131072\n" in (tmp_path / "b" / "program.c").read_text()
    assert "#define DAE_FLOW_TABLE_SIZE 65536\n" in (tmp_path / "d" / "program.c").read_text()
    manifest = Manifest.from_json(json.loads((tmp_path / "b" / "manifest.json").read_text()))
    assert manifest.settings.extra["bpf_conn_state_map_size"] == 131072
    with BpfObject(str(tmp_path / "b" / "program.o")) as obj:
        obj.load()
        assert obj.map("flows").max_entries == 131072


def test_mptcp_reaches_the_relay_config_through_the_manifest(tmp_path: Path) -> None:
    for value, expected in (("true", True), ("false", False), (None, False)):
        opts = {"lan_interface": "eth0", **({"mptcp": value} if value else {})}
        checked = compile_config(None, None, text=_config(opts), name="config.yaml")
        from dae_py.compiler.pipeline import manifest_for

        manifest = Manifest.from_json(manifest_for(checked, "linear").to_json())
        assert relay_settings(manifest.settings)["mptcp"] is expected


def test_dns_optimistic_cache_ttl_is_accepted_with_a_warning() -> None:
    extra = "dns:\n  optimistic_cache_ttl: 60\n  upstream: {up: 'udp://192.0.2.53:53'}\n"
    ws = _warnings(_config({"lan_interface": "eth0"}, extra))
    hits = [w for w in ws if w[2].startswith("dns.optimistic_cache_ttl is ignored: ")]
    assert [(line, col) for line, col, _ in hits] == [(4, 25)], ws
    assert "no optimistic cache" in hits[0][2]


def test_default_is_the_fallbacks_other_name_in_routing_and_dns_routing() -> None:
    text = """\
global: {lan_interface: [eth0]}
dns:
  upstream: {up: 'udp://192.0.2.53:53'}
  routing:
    request: {rules: ['qname(suffix: a.example) -> up'], default: up}
    response: {default: accept}
routing:
  rules: ['dport(1) -> direct']
  default: block
"""
    checked = compile_config(None, None, text=text, name="config.yaml")
    assert checked.ir.fallback.outbound == "block"
    assert checked.dns["routing"]["request"]["fallback"] == "up"
    assert checked.dns["routing"]["response"]["fallback"] == "accept"


def test_default_is_checked_and_located_as_fallback_would_be() -> None:
    text = "global: {lan_interface: [eth0]}\nrouting:\n  default: nowhere\n"
    with pytest.raises(CompileError) as info:
        compile_config(None, None, text=text, name="config.yaml")
    (err,) = info.value.diagnostics.errors
    assert (err.pos.line, err.pos.col) == (3, 12) and "nowhere" in err.message


def test_fallback_and_default_both_set_is_an_error_at_default() -> None:
    text = "global: {lan_interface: [eth0]}\nrouting:\n  fallback: direct\n  default: block\n"
    errors = _errors(text)
    assert errors == ["routing: both 'fallback' and 'default' are set (dae's two names for one option)"]


@pytest.mark.parametrize("bind, warned", [("'tcp://127.0.0.1:5353'", True), ("'udp://127.0.0.1:5353'", True),
                                          ("'tcp+udp://127.0.0.1:5353'", False), ("'127.0.0.1:5353'", False)])
def test_dns_bind_takes_daes_scheme_forms(bind: str, warned: bool) -> None:
    extra = f"dns:\n  bind: {bind}\n  upstream: {{up: 'udp://192.0.2.53:53'}}\n" \
            "  routing: {request: {fallback: up}}\n"
    checked = compile_config(None, None, text=_config({"lan_interface": "eth0"}, extra), name="config.yaml")
    assert checked.dns["bind"] == [{"host": "127.0.0.1", "port": 5353}]
    hits = [d for d in checked.diags.warnings if d.message.startswith("dns.bind ")]
    assert bool(hits) is warned
    if warned:
        assert "listens on both UDP and TCP" in hits[0].message
