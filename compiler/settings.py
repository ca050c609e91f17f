"""`global` and `dns`: dae's defaults applied, values checked, and the manifest's view built."""
from __future__ import annotations

from typing import Any

from dae_py.contract.capabilities import DNS_OPTIONS, ignored_option
from dae_py.contract.fields import dnsrules
from dae_py.contract.manifest import DEFAULT_SO_MARK

from .diagnostics import Diagnostics, did_you_mean
from .dns_rules import INTERNAL_SELECTORS, check_selector_rule
from .load import LoadedConfig
from .options import (
    bounded_duration,
    check_bandwidth,
    check_flow_table_size,
    check_range_text,
    check_resolver,
    check_tcp_check_url,
    check_udp_check_dns,
)
from .rules import RuleSyntaxError, parse_rule
from .urls import split_url

GLOBAL_DEFAULTS: dict[str, Any] = {
    "tproxy_port": 12345,
    "tproxy_port_protect": True,
    "so_mark_from_dae": 0,  # 0: DEFAULT_SO_MARK is used (the relay's sockets must carry a mark)
    "log_level": "info",
    "lan_interface": [],
    "wan_interface": [],
    "auto_config_kernel_parameter": True,
    "tcp_check_url": ["http://cp.cloudflare.com", "1.1.1.1", "2606:4700:4700::1111"],
    "tcp_check_http_method": "HEAD",
    "udp_check_dns": ["dns.google:53", "8.8.8.8", "2001:4860:4860::8888"],
    "check_interval": "30s",
    "check_tolerance": "0ms",
    "dial_mode": "domain",
    "allow_insecure": False,
    "sniffing_timeout": "100ms",
    "geoip_path": None,
    "geosite_path": None,
    "asset_dir": None,
    "fwmark": 0x8000000,
    "route_table": 2023,
    "warm_pool": 4,  # the relay's warm pool (runtime/relay/warmpool.py): connections per node
    "warm_pool_idle_timeout": "10s",
}


DNS_PORTS = {"udp": 53, "tcp": 53, "tcp+udp": 53, "tls": 853, "https": 443, "h3": 443, "http3": 443, "quic": 853}


def global_settings(cfg: LoadedConfig, diags: Diagnostics) -> dict[str, Any]:
    raw = cfg.data.get("global") or {}
    out = {**GLOBAL_DEFAULTS, **raw}
    for key in ("lan_interface", "wan_interface", "tcp_check_url", "udp_check_dns"):
        if isinstance(out[key], str):
            out[key] = [s.strip() for s in out[key].split(",") if s.strip()]
    for key in ("check_interval", "check_tolerance", "sniffing_timeout", "warm_pool_idle_timeout"):
        try:
            out[key + "_s"] = bounded_duration(key, out[key])
        except ValueError as exc:
            diags.error(cfg.pos.value(("global", key)), str(exc))
    for key, check in (("tcp_check_url", check_tcp_check_url), ("udp_check_dns", check_udp_check_dns)):
        try:
            check(out[key])
        except ValueError as exc:
            diags.error(cfg.pos.value(("global", key)), str(exc))
    _check_dae_options(cfg, diags, raw, out)
    for key, value in raw.items():
        ignored = ignored_option(key, value)
        if ignored is not None:
            diags.warning(cfg.pos.value(("global", key)), f"global.{key} is ignored: {ignored.missing}")
    if not out["lan_interface"] and not out["wan_interface"]:
        diags.warning(cfg.pos.key(("global",)) if "global" in cfg.data else cfg.pos.value(()),
                      "neither lan_interface nor wan_interface is set: the gateway will not capture any traffic")
    if not out["so_mark_from_dae"]:
        out["so_mark_from_dae"] = DEFAULT_SO_MARK
    if out["fwmark"] == out["so_mark_from_dae"] and out["fwmark"]:
        diags.error(cfg.pos.value(("global", "fwmark")), "fwmark must differ from so_mark_from_dae")
    return out


def _check_dae_options(cfg: LoadedConfig, diags: Diagnostics, raw: dict[str, Any], out: dict[str, Any]) -> None:
    """dae's other global options: a value dae would reject is an error at it; the ones the
    runtime reads get their parsed form (`bpf_conn_state_map_size` sizes the flow table)."""
    checks: list[tuple[str, Any]] = [
        ("bpf_conn_state_map_size", check_flow_table_size),
        ("bootstrap_resolver", lambda v: check_resolver("bootstrap_resolver", v)),
        ("fallback_resolver", lambda v: check_resolver("fallback_resolver", v)),
        ("tls_fragment_length", lambda v: check_range_text("tls_fragment_length", v)),
        ("tls_fragment_interval", lambda v: check_range_text("tls_fragment_interval", v)),
        ("bandwidth_max_tx", lambda v: check_bandwidth("bandwidth_max_tx", v)),
        ("bandwidth_max_rx", lambda v: check_bandwidth("bandwidth_max_rx", v)),
        ("udphop_interval", lambda v: bounded_duration("udphop_interval", v)),
    ]
    for key, check in checks:
        if key not in raw:
            continue
        try:
            check(raw[key])
        except ValueError as exc:
            diags.error(cfg.pos.value(("global", key)), str(exc))


def apply_aliases(cfg: LoadedConfig, diags: Diagnostics) -> None:
    """dae's other names, read as ours before anything else looks: `default:` is `fallback:` in
    `routing` and in `dns.routing.request/response` (dae: "fallback is also called default")."""
    data: Any = cfg.data  # not yet checked: the schema runs after this
    if not isinstance(data, dict):
        return
    dns = data.get("dns")
    dns_routing = dns.get("routing") if isinstance(dns, dict) else None
    sections: list[tuple[tuple[str, ...], Any]] = [(("routing",), data.get("routing"))]
    if isinstance(dns_routing, dict):
        sections += [(("dns", "routing", s), dns_routing.get(s)) for s in ("request", "response")]
    for path, sec in sections:
        if not isinstance(sec, dict) or "default" not in sec:
            continue
        if "fallback" in sec:
            diags.error(cfg.pos.key(path + ("default",)), f"{'.'.join(path)}: both 'fallback' and 'default' are "
                        "set (dae's two names for one option)", "keep one of them")
            continue
        sec["fallback"] = sec.pop("default")
        cfg.pos.alias(path + ("default",), path + ("fallback",))


def dns_settings(cfg: LoadedConfig, diags: Diagnostics) -> dict[str, Any]:
    raw = cfg.data.get("dns") or {}
    upstreams: dict[str, dict[str, Any]] = {}
    for name, url in (raw.get("upstream") or {}).items():
        try:
            u = split_url(url)
        except ValueError as exc:
            diags.error(cfg.pos.value(("dns", "upstream", name)), f"dns upstream '{name}': {exc} in {url!r}")
            continue
        port = u.port or DNS_PORTS.get(u.scheme)
        if port is None:
            diags.error(cfg.pos.value(("dns", "upstream", name)), f"dns upstream '{name}': no port in {url!r}")
            continue
        if not u.hostname:
            diags.error(cfg.pos.value(("dns", "upstream", name)), f"dns upstream '{name}': no host in {url!r}")
            continue
        url_path = u.path or ("/dns-query" if u.scheme in ("https", "h3", "http3") else "")
        upstreams[name] = {"name": name, "scheme": u.scheme, "host": u.hostname, "port": port, "path": url_path,
                           "url": url}
    routing = raw.get("routing") or {}
    out_routing: dict[str, Any] = {}
    for section, outs in (("request", ("asis", "reject")), ("response", ("accept", "reject"))):
        funcs = dnsrules.functions(section)
        sec = routing.get(section)
        if sec is None:
            continue
        allowed_out = set(upstreams) | set(outs)
        rules = []
        for i, text in enumerate(sec.get("rules") or []):
            path = ("dns", "routing", section, "rules", i)
            try:
                ast = parse_rule(text)
            except RuleSyntaxError as exc:
                diags.error(cfg.pos.in_string(path, exc.offset), f"syntax error: {exc.message}")
                continue
            def report(off: int, msg: str, hint: str | None, p: tuple[Any, ...] = path) -> None:
                diags.error(cfg.pos.in_string(p, off), msg, hint)

            if section == "request" and check_selector_rule(ast, upstreams, report):
                rules.append({"text": text, "line": cfg.pos.value(path).line})
                continue
            for call in ast.calls:
                if section == "request" and call.name in INTERNAL_SELECTORS:
                    continue  # mixed with qname/qtype, or a bad selector: check_selector_rule said so
                if call.name not in funcs:
                    diags.error(cfg.pos.in_string(path, call.offset),
                                f"unknown dns {section} function '{call.name}'", did_you_mean(call.name, funcs))
                elif call.name == "upstream":
                    for p in call.params:
                        if p.value not in upstreams:
                            diags.error(cfg.pos.in_string(path, p.value_offset), f"unknown dns upstream '{p.value}'",
                                        did_you_mean(p.value, upstreams))
            if ast.outbound.name not in allowed_out:
                diags.error(cfg.pos.in_string(path, ast.outbound.offset),
                            f"unknown dns {section} target '{ast.outbound.name}'",
                            did_you_mean(ast.outbound.name, allowed_out))
            rules.append({"text": text, "line": cfg.pos.value(path).line})
        fb = sec["fallback"]
        if fb not in allowed_out:
            diags.error(cfg.pos.value(("dns", "routing", section, "fallback")),
                        f"unknown dns {section} fallback '{fb}'", did_you_mean(fb, allowed_out))
        out_routing[section] = {"rules": rules, "fallback": fb}
    for key, value in raw.items():
        ignored = ignored_option(key, value, DNS_OPTIONS)
        if ignored is not None:
            diags.warning(cfg.pos.value(("dns", key)), f"dns.{key} is ignored: {ignored.missing}")
    return {
        "upstream": upstreams,
        "routing": out_routing,
        "ipversion_prefer": raw.get("ipversion_prefer", 0),
        "fixed_domain_ttl": raw.get("fixed_domain_ttl", {}),
        "optimistic_cache": raw.get("optimistic_cache", True),
        "max_cache_size": raw.get("max_cache_size", 65536),
    }
