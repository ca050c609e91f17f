"""Domain fields (domain, and the DNS rules' qname): patterns and geosite tags become one domain
set, a bit of the per-address bitmap the DNS module fills; in C, a test of that bit."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from dae_py.contract.fields import FieldSpec
from dae_py.contract.ir import DomainRef, DomainSet, Match
from dae_py.contract.userregex import compile_user_regex

from ..diagnostics import did_you_mean
from ..rules import Call
from .common import Locate

if TYPE_CHECKING:
    from ..check import RoutingChecker
    from ..emit_linear import LargeSets

DOMAIN_KEYS = ("suffix", "full", "keyword", "regex", "geosite", "ext", "domain", "contains")
# dae's other names for two keys (its AliasOptimizer): `domain:` is `suffix:`, `contains:` is `keyword:`.
KEY_ALIASES = {"domain": "suffix", "contains": "keyword"}
GEOSITE_KINDS = {"plain": "keyword", "regex": "regex", "domain": "suffix", "full": "full"}


def bad_geosite_regex(entries: list[Any]) -> str | None:
    """The first regex entry of a geosite tag that does not compile (RE2), with the reason."""
    for e in entries:
        if e.kind == "regex":
            try:
                compile_user_regex(e.value)
            except ValueError as exc:
                return f"{e.value!r}: {exc}"
    return None


def check_domain(checker: RoutingChecker, spec: FieldSpec, call: Call, locate: Locate) -> DomainRef | None:
    """The call's patterns as one canonical domain set, shared by every call with the same ones."""
    buckets: dict[str, list[str]] = {"full": [], "suffix": [], "keyword": [], "regex": []}
    ok = True
    diags = checker.diags
    for p in call.params:
        key = KEY_ALIASES.get(p.key or "suffix", p.key or "suffix")
        if key not in DOMAIN_KEYS:
            diags.error(locate(p.offset), f"unknown domain key '{key}'", did_you_mean(key, DOMAIN_KEYS))
            ok = False
            continue
        if key in ("geosite", "ext"):
            try:
                if key == "geosite":
                    entries = checker.geo.geosite(p.value)
                else:
                    path, tag = checker.geo.ext(p.value)
                    entries = checker.geo.geosite(tag, path)
                if not entries and "@" in p.value:
                    name, _, attr = p.value.rpartition(":")[2].partition("@")
                    raise ValueError(f"'{key}:{p.value}' selects no domain: no domain of tag '{name}' "
                                     f"has the attribute '@{attr}'")
            except ValueError as exc:  # GeoDataError (a ValueError): missing/damaged file, unknown tag; bad ext
                diags.error(locate(p.offset), str(exc))
                ok = False
                continue
            bad_regex = bad_geosite_regex(entries)
            if bad_regex is not None:
                diags.error(locate(p.offset), f"'{key}:{p.value}' has a regex dae cannot use: {bad_regex}")
                ok = False
                continue
            for e in entries:
                buckets[GEOSITE_KINDS[e.kind]].append(e.value if e.kind == "regex" else e.value.lower())
            continue
        value = p.value.strip()
        if key == "regex":
            try:
                compile_user_regex(value)
            except ValueError as exc:
                diags.error(locate(p.value_offset), f"invalid regex {value!r}: {exc}")
                ok = False
                continue
            buckets["regex"].append(value)
            continue
        value = value.lower().strip(".") if key != "keyword" else value.lower()
        if not value:
            diags.error(locate(p.value_offset), f"empty domain {key}")
            ok = False
            continue
        buckets[key].append(value)
    if not ok:
        return None
    canon = tuple(tuple(sorted(set(buckets[k]))) for k in ("full", "suffix", "keyword", "regex"))
    ds = checker.domain_sets.get(canon)
    if ds is None:
        ds = DomainSet(bit=len(checker.domain_sets), full=canon[0], suffix=canon[1], keyword=canon[2],
                       regex=canon[3])
        checker.domain_sets[canon] = ds
    return DomainRef(ds.bit)


def domain_term(bit: int) -> str:
    """The C test of one domain set's bit in the destination's bitmap."""
    return f"(dom && (dom->w[{bit // 64}] & (1ULL << {bit % 64})))"


def linear_expr(spec: FieldSpec, m: Match, large: LargeSets) -> str:
    v = m.values
    assert isinstance(v, DomainRef)
    return domain_term(v.bit)
