"""The relay's Router backed by the kernel's own decision.

The tc program classified the flow's first packet and stored the decision in the `flows` map;
the relay reads it by the flow's 5-tuple, so user space never decides differently from the
kernel. If the entry is gone (LRU eviction under pressure), the user-space matcher decides from
the same IR, with the domain bits the kernel holds for the destination.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dae_py.contract.maps import DECISION, FLOW_KEY
from dae_py.runtime.domain_map import DomainBindings
from dae_py.runtime.packets import IPPROTO_TCP, IPPROTO_UDP, FlowSpec, flow_key, parse_flow_value

if TYPE_CHECKING:
    from dae_py.runtime.build import Build

_V4_PAD = bytes(12)
# flow_key's tail after the two addresses: sport, dport, proto, IP version, padding (contract/maps.py)
_TAIL = FLOW_KEY.tail("sport").pack
_VALUE = DECISION.struct.unpack_from  # flow_value starts with the decision: mark, rule, outbound, flags
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RouteInfo:
    outbound_id: int
    rule: int | None  # None: fallback
    mark: int
    must: bool
    source: str  # "kernel" or "user-space"


class KernelRouter:
    def __init__(self, build: Build, flows_map: Any, domains: DomainBindings | None = None):
        self.build = build
        self.flows = flows_map
        self.domains = domains
        self.n_rules = len(build.manifest.rules)
        self._last: tuple[Any, RouteInfo] | None = None  # decide() then describe() of one flow
        lookuper = getattr(flows_map, "lookuper", None)
        self._lookup = lookuper() if lookuper is not None else flows_map.lookup
        config_file = build.manifest.config_file
        # what the per-flow log line says, per rule: built once, not per flow
        self._why: dict[int | None, str] = {None: " (fallback)"}
        for r in build.manifest.rules:
            self._why[r.index] = f" (rule {r.index} ({config_file}:{r.line}))"

    def decide_tcp(self, src: tuple[str, int], dst: tuple[str, int]) -> tuple[int, str]:
        """(outbound id, " (rule 3 (config.yaml:33))" or " (fallback)") of a TCP flow, in one
        map lookup; IPv4 keys are built without the ipaddress module."""
        s, d = src[0], dst[0]
        if ":" in s or ":" in d:
            from dae_py.runtime.relay.flow import Flow

            info = self.route(Flow("tcp", src, dst))
        else:
            key = (_inet_pton(_AF_INET, s) + _V4_PAD + _inet_pton(_AF_INET, d) + _V4_PAD
                   + _TAIL(src[1], dst[1], IPPROTO_TCP, 4))
            raw = self._lookup(key)
            if raw is not None:
                _mark, rule, outbound, _flags = _VALUE(raw, 0)
                why = self._why.get(rule if rule < self.n_rules else None)
                if why is None:
                    why = self._describe_rule(rule)
                return outbound, why
            from dae_py.runtime.relay.flow import Flow

            info = self.route(Flow("tcp", src, dst))
        why = self._why.get(info.rule)
        return info.outbound_id, why if why is not None else self._describe_rule(info.rule)

    def _describe_rule(self, rule: int | None) -> str:
        if rule is None:
            return " (fallback)"
        r = self.build.rule(rule)
        return f" (rule {rule} ({self.build.manifest.config_file}:{r.line if r else '?'}))"

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
        from dae_py.contract.evaluate import Flow as IrFlow
        from dae_py.contract.evaluate import classify

        bits = 0
        if self.domains is not None:
            bits = self.domains.lookup(spec.dst) or 0
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
        return f"rule {info.rule} ({self.build.manifest.config_file}:{r.line if r else '?'})"
