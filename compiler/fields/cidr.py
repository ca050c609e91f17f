"""CIDR fields (dip, sip): networks, geoip tags and ext files; in C, inline compares or an LPM set."""
from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any

from dae_py.contract.fields import FieldSpec
from dae_py.contract.ir import CidrSet, Match

from .. import cexpr
from ..rules import Call
from ..values import parse_network
from .common import Locate

if TYPE_CHECKING:
    from ..check import RoutingChecker
    from ..emit_linear import LargeSets

IP_KEYS = ("geoip", "ext")
SMALL_CIDRS = 8  # per family; more than this and the set goes into an LPM trie


def check_cidrs(checker: RoutingChecker, spec: FieldSpec, call: Call, locate: Locate) -> CidrSet | None:
    v4: list[ipaddress.IPv4Network] = []
    v6: list[ipaddress.IPv6Network] = []
    ok = True
    for p in call.params:
        key, value = p.key, p.value
        at = p.value_offset
        if key is not None and key not in IP_KEYS:
            # Bare IPv6 addresses contain ':' and lex as 'key: value'; put them back together
            # (and point at the start of the address, not at what followed its first ':').
            key, value, at = None, f"{p.raw_key}{p.value}", p.offset
        try:
            if key is None:
                net, host_bits = parse_network(value)
                if host_bits:
                    checker.diags.warning(locate(at), f"{value!r} has host bits set; it means {net}")
                nets: tuple[Any, ...] = (net,)
            elif key == "geoip":
                nets = checker.geo.geoip(value)
            else:
                path, tag = checker.geo.ext(value)
                nets = checker.geo.geoip(tag, path)
        except ValueError as exc:  # a bad CIDR or ext spec, or GeoDataError (a ValueError): missing file, tag
            checker.diags.error(locate(at if key is None else p.offset), str(exc))
            ok = False
            continue
        for n in nets:
            (v4 if n.version == 4 else v6).append(n)
    return CidrSet(tuple(v4), tuple(v6)) if ok else None


def is_large_cidr(s: CidrSet) -> bool:
    return len(s.v4) > SMALL_CIDRS or len(s.v6) > SMALL_CIDRS


def linear_expr(spec: FieldSpec, m: Match, large: LargeSets) -> str:
    v = m.values
    assert isinstance(v, CidrSet)
    if is_large_cidr(v):
        i = large.cidr_index(spec.name, v)
        return f"({spec.name}_sets && ({spec.name}_sets->w[{i // 64}] & (1ULL << {i % 64})))"
    return cexpr.cidrs(f"p->{spec.operand}", v.v4, v.v6)
