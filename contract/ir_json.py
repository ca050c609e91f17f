"""The IR as JSON, so the runtime's user-space matcher reads the build, never the YAML."""
from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

from .ir import (
    Action,
    CidrSet,
    DomainRef,
    DomainSet,
    Field,
    Match,
    Outbound,
    PortSet,
    RoutingIR,
    Rule,
    SourceRef,
    ValueSet,
)


def _values_to_json(v: Any) -> dict[str, Any]:
    if isinstance(v, PortSet):
        return {"ports": [list(r) for r in v.ranges]}
    if isinstance(v, CidrSet):
        return {"v4": [str(n) for n in v.v4], "v6": [str(n) for n in v.v6]}
    if isinstance(v, ValueSet):
        return {"values": list(v.values)}
    if isinstance(v, DomainRef):
        return {"domain_bit": v.bit}
    raise TypeError(v)


def _values_from_json(d: dict[str, Any]) -> Any:
    if "ports" in d:
        return PortSet(tuple((lo, hi) for lo, hi in d["ports"]))
    if "v4" in d:
        return CidrSet(tuple(ipaddress.IPv4Network(n) for n in d["v4"]),
                       tuple(ipaddress.IPv6Network(n) for n in d["v6"]))
    if "values" in d:
        return ValueSet(tuple(d["values"]))
    return DomainRef(d["domain_bit"])


def _action(a: Action) -> dict[str, Any]:
    return {"outbound": a.outbound, "outbound_id": a.outbound_id, "mark": a.mark, "must": a.must,
            "must_rules": a.must_rules}


def ir_to_json(ir: RoutingIR) -> dict[str, Any]:
    return {
        "rules": [{
            "index": r.index, "never_matches": r.never_matches, "action": _action(r.action),
            "source": {"file": Path(r.source.file).name, "line": r.source.line, "col": r.source.col,
                       "text": r.source.text},
            "matches": [{"field": m.field.value, "negated": m.negated, **_values_to_json(m.values)} for m in r.matches],
        } for r in ir.rules],
        "fallback": _action(ir.fallback),
        "outbounds": [{"id": o.id, "name": o.name, "kind": o.kind} for o in ir.outbounds],
        "domain_sets": [{"bit": d.bit, "full": list(d.full), "suffix": list(d.suffix), "keyword": list(d.keyword),
                         "regex": list(d.regex)} for d in ir.domain_sets],
        "pnames": list(ir.pnames),
    }


def ir_from_json(d: dict[str, Any]) -> RoutingIR:
    rules = []
    for r in d["rules"]:
        matches = tuple(Match(Field(m["field"]), _values_from_json(m), m["negated"]) for m in r["matches"])
        rules.append(Rule(index=r["index"], matches=matches, action=Action(**r["action"]),
                          source=SourceRef(**r["source"]), never_matches=r["never_matches"]))
    return RoutingIR(
        rules=tuple(rules), fallback=Action(**d["fallback"]),
        outbounds=tuple(Outbound(**o) for o in d["outbounds"]),
        domain_sets=tuple(DomainSet(bit=s["bit"], full=tuple(s["full"]), suffix=tuple(s["suffix"]),
                                    keyword=tuple(s["keyword"]), regex=tuple(s["regex"])) for s in d["domain_sets"]),
        pnames=tuple(d["pnames"]),
    )
