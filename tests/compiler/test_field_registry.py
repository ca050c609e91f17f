"""The match-field registries: every field is declared by exactly one module, every grammar name
the registry lists is what the checker accepts, and the evaluator, the passes and the emitters
find each field through it (contract/fields/, compiler/fields/, contract/fields/dnsrules/)."""
from __future__ import annotations

import ipaddress
from typing import Any

import pytest

from dae_py.compiler import fields as compiler_fields
from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.pipeline import compile_config
from dae_py.contract import fields
from dae_py.contract.evaluate import Flow, match_one
from dae_py.contract.fields import dnsrules
from dae_py.contract.ir import Field

CONFIG = """\
global:
  lan_interface: [lan0]
routing:
  rules:
    - "{rule} -> direct"
  fallback: direct
"""

# One parameter per field, and a flow it matches and one it does not.
SAMPLES: dict[Field, tuple[str, dict[str, Any], dict[str, Any]]] = {
    Field.L4PROTO: ("udp", {"l4proto": 17}, {"l4proto": 6}),
    Field.IPVERSION: ("6", {"dst": "2001:db8::1", "src": "2001:db8::2"}, {}),
    Field.DIP: ("10.0.0.0/8", {"dst": "10.1.2.3"}, {"dst": "192.0.2.1"}),
    Field.SIP: ("192.168.0.0/16", {"src": "192.168.7.7"}, {"src": "10.0.0.1"}),
    Field.DPORT: ("8000-8100", {"dport": 8080}, {"dport": 443}),
    Field.SPORT: ("5353", {"sport": 5353}, {"sport": 5354}),
    Field.MAC: ("'02:42:ac:11:00:02'", {"mac": 0x0242AC110002}, {"mac": None}),
    Field.DSCP: ("46", {"dscp": 46}, {"dscp": 0}),
    Field.PNAME: ("curl", {"pname": "curl"}, {"pname": None}),
    Field.DOMAIN: ("suffix: example.com", {"domain_bits": 1}, {"domain_bits": 0}),
}


def flow(**kw: Any) -> Flow:
    base: dict[str, Any] = {"l4proto": 6, "src": "10.0.0.1", "sport": 40000, "dst": "192.0.2.1", "dport": 443}
    base.update(kw)
    base["src"] = ipaddress.ip_address(base["src"])
    base["dst"] = ipaddress.ip_address(base["dst"])
    return Flow(**base)


def test_every_ir_field_is_registered_by_exactly_one_module() -> None:
    registered = [s.field for s in fields.FIELDS]
    assert sorted(registered) == sorted(Field)
    assert len(registered) == len(set(registered))
    for s in fields.FIELDS:
        assert s.names[0] == s.field.value
        assert fields.spec(s.field) is s
        assert s.kind in compiler_fields.KINDS  # the compiler can check and emit every kind


def test_grammar_names_are_unique_across_fields() -> None:
    all_names = [n for s in fields.FIELDS for n in s.names]
    assert len(all_names) == len(set(all_names))
    assert set(fields.names()) == set(all_names)
    assert fields.by_name("ip") is fields.spec(Field.DIP)
    assert fields.by_name("port") is fields.spec(Field.DPORT)
    assert fields.by_name("qtype") is None


@pytest.mark.parametrize("spec", fields.FIELDS, ids=lambda s: s.name)
def test_each_registered_name_checks_into_its_value_type_and_the_evaluator_matches_it(spec: fields.FieldSpec) -> None:
    param, hit, miss = SAMPLES[spec.field]
    for name in spec.names:
        checked = compile_config(None, None, text=CONFIG.format(rule=f"{name}({param})"))
        (rule,) = checked.ir_checked.rules
        (m,) = rule.matches
        assert m.field is spec.field
        assert isinstance(m.values, spec.value_type)
        assert match_one(m, flow(**hit))
        assert not match_one(m, flow(**miss))


def test_an_unregistered_name_is_an_unknown_function_with_a_hint_from_the_registry() -> None:
    with pytest.raises(CompileError) as exc:
        compile_config(None, None, text=CONFIG.format(rule="dprt(443)"))
    (err,) = exc.value.diagnostics.errors
    assert err.message == "unknown function 'dprt'"
    assert err.hint == "did you mean 'dport'?"


def test_dns_rule_functions_come_from_their_registry() -> None:
    names = [s.name for s in dnsrules.DNS_FIELDS]
    assert len(names) == len(set(names))
    assert dnsrules.functions("request") == ("qname", "qtype")
    assert dnsrules.functions("response") == ("qname", "qtype", "upstream", "ip")
    qtype = dnsrules.spec("qtype")
    assert qtype is not None
    assert qtype.load({"qtypes": [28, 1]}) == frozenset({1, 28})
