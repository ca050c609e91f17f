"""The relay's Router backed by the kernel's own decision.

The tc program classified the flow's first packet and stored the decision in the `flows` map;
the relay reads it by the flow's 5-tuple, so user space never decides differently from the
kernel. If the entry is gone (LRU eviction under pressure), the user-space matcher decides from
the same IR, with the domain bits the kernel holds for the destination.
"""
from __future__ import annotations

import ipaddress
import logging
import struct
from dataclasses import dataclass
from typing import Any

from compiler.evaluate import Flow as IrFlow
from compiler.evaluate import classify
from runtime.build import Build
from runtime.packets import IPPROTO_TCP, IPPROTO_UDP, FlowSpec, domain_key, flow_key, parse_flow_value

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteInfo:
    outbound_id: int
    rule: int | None  # None: fallback
    mark: int
    must: bool
    source: str  # "kernel" or "user-space"


class KernelRouter:
    def __init__(self, build: Build, flows_map: Any, domain_map: Any | None = None):
        self.build = build
        self.flows = flows_map
        self.domains = domain_map
        self.n_rules = len(build.manifest["rules"])
        self._last: tuple[Any, RouteInfo] | None = None  # decide() then describe() of one flow

    @staticmethod
    def _spec(flow: Any) -> FlowSpec:
        src = ipaddress.ip_address(flow.src[0].split("%")[0])
        dst = ipaddress.ip_address(flow.dst[0].split("%")[0])
        if src.version == 6 and src.ipv4_mapped:  # type: ignore[union-attr]
            src = src.ipv4_mapped  # type: ignore[union-attr]
        if dst.version == 6 and dst.ipv4_mapped:  # type: ignore[union-attr]
            dst = dst.ipv4_mapped  # type: ignore[union-attr]
        proto = IPPROTO_TCP if flow.l4proto == "tcp" else IPPROTO_UDP
        return FlowSpec(l4proto=proto, src=src, sport=int(flow.src[1]), dst=dst, dport=int(flow.dst[1]))

    def route(self, flow: Any) -> RouteInfo:
        spec = self._spec(flow)
        raw = self.flows.lookup(flow_key(spec))
        if raw is not None:
            d = parse_flow_value(raw)
            rule = d.rule if d.rule < self.n_rules else None
            return RouteInfo(d.outbound, rule, d.mark, d.must, "kernel")
        bits = 0
        if self.domains is not None:
            v = self.domains.lookup(domain_key(spec.dst))
            if v is not None:
                words = struct.unpack(f"<{len(v) // 8}Q", v)
                bits = sum(w << (64 * i) for i, w in enumerate(words))
        dec = classify(self.build.ir, IrFlow(l4proto=spec.l4proto, src=spec.src, sport=spec.sport, dst=spec.dst,
                                             dport=spec.dport, domain_bits=bits))
        log.debug("no kernel decision for %s; user-space matcher chose %s", flow, dec.outbound)
        return RouteInfo(dec.outbound_id, dec.rule, dec.mark, dec.must, "user-space")

    def decide(self, flow: Any) -> int:
        info = self.route(flow)
        self._last = (flow, info)
        return info.outbound_id

    def describe(self, flow: Any) -> str:
        """'rule 3 (config.yaml:33)' or 'fallback', for the per-flow log line."""
        last = self._last
        info = last[1] if last is not None and last[0] == flow else self.route(flow)
        if info.rule is None:
            return "fallback"
        r = self.build.rule(info.rule)
        return f"rule {info.rule} ({self.build.manifest['config']['file']}:{r['line'] if r else '?'})"
