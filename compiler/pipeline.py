"""The compiler pipeline: load -> schema -> semantic check -> IR -> passes -> emit.

`compile_config` is what the CLI, the tests and the Ansible role's validation all go through.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dae_py.contract.capabilities import function
from dae_py.contract.ir import CidrSet, Field, RoutingIR
from dae_py.contract.ir_json import ir_to_json
from dae_py.contract.manifest import (
    PNAME_PROGRAMS,
    PROGRAMS,
    DnsSettings,
    FallbackEntry,
    GlobalSettings,
    GroupEntry,
    Manifest,
    NodeSpec,
    OutboundEntry,
    RuleEntry,
    SubscriptionSpec,
)
from dae_py.contract.maps import STATE_MAPS

from .check import GeoResolver, RoutingChecker
from .diagnostics import CompileError, Diagnostics, SourcePos
from .dns_rules import compile_dns, hijack_port
from .emit_linear import is_large_cidr
from .load import LoadedConfig, load_config, load_config_text
from .nodes import build_node_pool, resolve_groups
from .passes import optimise
from .schema import check_schema
from .settings import apply_aliases, dns_settings, global_settings

# Above this many live rules the bit-vector classifier beats straight-line compares (bench/RESULTS.md:
# linear stays faster up to 100-200 rules, and cannot build around 1,000: the BPF stack).
LINEAR_MAX_RULES = 96
STRATEGIES = ("auto", "linear", "bitvector")


@dataclass
class Checked:
    cfg: LoadedConfig
    diags: Diagnostics
    ir_checked: RoutingIR
    ir: RoutingIR
    settings: dict[str, Any]
    nodes: dict[str, dict[str, Any]]
    groups: list[dict[str, Any]]
    dns: dict[str, Any]
    subscriptions: tuple[SubscriptionSpec, ...] = ()  # fetched by the runtime


def check_config(cfg: LoadedConfig) -> Checked:
    """Validate everything; raise CompileError carrying every diagnostic when there are errors."""
    diags = Diagnostics()
    diags.extend(cfg.load_warnings)
    apply_aliases(cfg, diags)  # dae's `default:` is `fallback:`
    if not check_schema(cfg, diags) or diags.errors:
        raise CompileError(diags)
    settings = global_settings(cfg, diags)
    pool = build_node_pool(cfg, diags, bool(settings["allow_insecure"]))
    groups = resolve_groups(cfg, diags, pool, settings)
    dns = dns_settings(cfg, diags)
    base = Path(cfg.file).resolve().parent
    asset_dir = Path(settings["asset_dir"]) if settings["asset_dir"] else base
    if not asset_dir.is_absolute():
        asset_dir = base / asset_dir

    def asset(key: str) -> Path | None:
        v = settings[key]
        if not v:
            return None
        p = Path(v)
        return p if p.is_absolute() else base / p

    from .geodata import asset_search_dirs

    geo = GeoResolver(asset("geoip_path"), asset("geosite_path"), asset_dir,
                      search=asset_search_dirs(base, settings["asset_dir"]))
    checker = RoutingChecker(cfg, diags, groups, geo)
    ir = checker.build()
    compile_dns(cfg, diags, dns, geo, ir, pool.nodes)
    dns["hijack_port"] = hijack_port(cfg, int(settings["tproxy_port"]))
    if not diags.errors:  # amid errors they would be noise: the config does not compile anyway
        warn_missing_capabilities(diags, checker.function_uses, dns, settings)
    if ir is None or diags.errors:
        raise CompileError(diags)
    final = optimise(ir, diags)
    return Checked(cfg=cfg, diags=diags, ir_checked=ir, ir=final, settings=settings, nodes=pool.nodes,
                   groups=groups, dns=dns, subscriptions=tuple(pool.subscriptions.specs))


def warn_missing_capabilities(diags: Diagnostics, uses: list[tuple[str, SourcePos]], dns: dict[str, Any],
                              settings: dict[str, Any] | None = None) -> None:
    """A routing function the runtime does not act on (contract/capabilities.py) is a warning at
    each use, naming what is missing: the config compiles, and says honestly what will not match."""
    for name, pos in uses:
        cap = function(name)
        if cap is None:
            continue
        if not cap.acts:
            diags.warning(pos, f"{name}() needs {cap.needs}")
        elif name == "domain" and not dns.get("bind") and not dns.get("hijack_port"):
            diags.warning(pos, f"{name}() needs {cap.needs}; there is no dns section, so this rule never matches",
                          "add a dns section with an upstream: LAN DNS is then hijacked and answers bind names")
        elif name == "pname" and not (settings or {}).get("wan_interface"):
            diags.warning(pos, f"{name}() needs {cap.needs}; no wan_interface is set, so this rule never matches",
                          "set global.wan_interface (a list, or auto)")


def choose_strategy(ir: RoutingIR, requested: str = "auto") -> str:
    """`auto`: straight-line compares for few rules, bit-vectors for many, and bit-vectors too as
    soon as one rule's CIDR set would cost the linear program an LPM trie lookup (the bit-vector
    program searches such sets in .data: 10 rules + a 10k-CIDR set, 1.62x -> 1.25x the 1-rule
    cost in bench/RESULTS.md)."""
    if requested != "auto":
        return requested
    live = ir.live_rules()
    if len(live) > LINEAR_MAX_RULES:
        return "bitvector"
    if any(isinstance(m.values, CidrSet) and is_large_cidr(m.values) for r in live for m in r.matches):
        return "bitvector"
    return "linear"


def manifest_for(c: Checked, strategy: str) -> Manifest:
    """The build's manifest, typed: the runtime reads it back with Manifest.from_json."""
    ir = c.ir
    return Manifest(
        config_file=Path(c.cfg.file).name, config_sha256=c.cfg.sha256, strategy=strategy,
        settings=GlobalSettings.from_json(c.settings),
        outbounds=tuple(OutboundEntry(o.id, o.name, o.kind) for o in ir.outbounds),
        nodes=tuple(NodeSpec.from_json(c.nodes[n]) for n in c.nodes),
        groups=tuple(GroupEntry.from_json(g) for g in c.groups),
        dns=DnsSettings.from_json(c.dns),
        rules=tuple(RuleEntry(index=r.index, line=r.source.line, col=r.source.col, text=r.source.shown,
                              outbound=r.action.outbound, mark=r.action.mark, must=r.action.must,
                              must_rules=r.action.must_rules, emitted=not r.never_matches) for r in ir.rules),
        fallback=FallbackEntry(ir.fallback.outbound, ir.fallback.mark, ir.fallback.must),
        pnames=tuple(ir.pnames),
        programs=PROGRAMS + (PNAME_PROGRAMS if Field.PNAME in ir.fields_used() else ()),
        state_maps=STATE_MAPS,
        subscriptions=c.subscriptions,
    )


def compile_config(path: str | Path | None, out_dir: str | Path | None, *, text: str | None = None,
                   name: str = "config.yaml", strategy: str = "auto") -> Checked:
    """Check, and when `out_dir` is given, emit a build. Raises CompileError on config errors."""
    from .emit import render, write_build

    if text is not None:
        cfg = load_config_text(text, name)
    elif path is not None:
        cfg = load_config(path)
    else:
        raise TypeError("compile_config needs a path or text")
    checked = check_config(cfg)
    if out_dir is not None:
        chosen = choose_strategy(checked.ir, strategy)
        emitted = render(checked.ir, cfg.file, cfg.sha256, chosen,
                         {**checked.settings, "dns_hijack_port": checked.dns.get("hijack_port", 0)})
        manifest = manifest_for(checked, chosen).to_json()
        ir_text = json.dumps(ir_to_json(checked.ir), indent=1, sort_keys=True) + "\n"
        write_build(Path(out_dir), emitted, manifest, {"ir.json": ir_text})
    return checked
