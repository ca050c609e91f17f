"""The relay's Router backed by the kernel's own decision.

The tc program classified the flow's first packet and stored the decision in the `flows` map;
the relay reads it by the flow's 5-tuple, so user space never decides differently from the
kernel. If the entry is gone (LRU eviction under pressure), the user-space matcher decides from
the same IR, with the domain bits the kernel holds for the destination.
"""
from __future__ import annotations

import dataclasses
import logging
import socket
from typing import TYPE_CHECKING, Any

from dae_py.contract.maps import DECISION, FLOW_KEY
from dae_py.runtime.domain_map import DomainBindings
from dae_py.runtime.groups.marks import marked_routes
from dae_py.runtime.packets import IPPROTO_TCP, IPPROTO_UDP, flow_key, parse_flow_value
from dae_py.runtime.relay.flow import Flow, Route, rule_label

if TYPE_CHECKING:
    from dae_py.runtime.build import Build

_V4_PAD = bytes(12)
# flow_key's tail after the two addresses: sport, dport, proto, IP version, padding (contract/maps.py)
_TAIL = FLOW_KEY.tail("sport").pack
_VALUE = DECISION.struct.unpack_from  # flow_value starts with the decision: mark, rule, outbound, flags
_inet_pton = socket.inet_pton
_AF_INET = socket.AF_INET

log = logging.getLogger(__name__)


class KernelRouter:
    """The relay's Router: `route(flow)` in one flow-table lookup (IPv4 keys built without the
    ipaddress module), the user-space matcher when the entry is gone."""

    def __init__(self, build: Build, flows_map: Any, domains: DomainBindings | None = None):
        self.build = build
        self.flows = flows_map
        self.domains = domains
        self.n_rules = len(build.manifest.rules)
        lookuper = getattr(flows_map, "lookuper", None)
        self._lookup = lookuper() if lookuper is not None else flows_map.lookup
        self._config_file = build.manifest.config_file
        self._marked = marked_routes(build.manifest)  # (group, mark) -> its marked view's id
        self._routes: dict[int, Route] = {}  # rule << 8 | outbound -> its Route, made once
        # what the per-flow log line says, per rule: built once, not per flow
        self._why: dict[int | None, str] = {None: f" ({rule_label(None, self._config_file, None)})"}
        for r in build.manifest.rules:
            self._why[r.index] = f" ({rule_label(r.index, self._config_file, r.line)})"

    def route(self, flow: Flow) -> Route:
        """Which outbound carries `flow`, the rule that chose it and the log line's reason.
        A flow carrying a sniffed `domain` (dial_mode domain++) is routed again by that name."""
        if flow.domain is not None:
            return self.route_by_name(flow, flow.domain)
        src, dst = flow.src, flow.dst
        s, d = src[0], dst[0]
        if ":" not in s and ":" not in d:
            key = (_inet_pton(_AF_INET, s) + _V4_PAD + _inet_pton(_AF_INET, d) + _V4_PAD
                   + _TAIL(src[1], dst[1], IPPROTO_TCP if flow.l4proto == "tcp" else IPPROTO_UDP, 4))
            raw = self._lookup(key)
            if raw is not None:
                mark, rule, outbound, _flags = _VALUE(raw, 0)
                known = self._routes.get(rule << 8 | outbound)  # one Route per (rule, outbound)
                if known is not None:
                    return known
                route = self._route(outbound, rule if rule < self.n_rules else None, mark)
                if len(self._routes) < 4096:
                    self._routes[rule << 8 | outbound] = route
                return route
        return self._route_slow(flow)

    def _route(self, outbound: int, rule: int | None, mark: int = 0) -> Route:
        if mark:  # a rule's `group(mark: N)`: the group's view that dials with the mark
            outbound = self._marked.get((outbound, mark), outbound)
        why = self._why.get(rule)
        if why is None:  # an index the manifest does not list
            r = self.build.rule(rule) if rule is not None else None  # (None is in _why)
            why = f" ({rule_label(rule, self._config_file, r.line if r else '?')})"
        return Route(outbound, rule, why)

    def route_by_name(self, flow: Flow, name: str) -> Route:
        """The user-space matcher over the same IR, with the domain bits of `name` (a sniffed
        name) in place of what DNS bound to the address: dial_mode domain++. Fields the relay
        does not see (mac, dscp, pname) read as absent, as in `_route_slow`."""
        from dae_py.contract.evaluate import classify

        evaluated = flow.evaluated(domain_bits=self.build.domain_matcher.bits(name))
        dec = classify(self.build.ir, evaluated)
        return self._route(dec.outbound_id, dec.rule, dec.mark)

    def _route_slow(self, flow: Flow) -> Route:
        """IPv6, IPv4-mapped or scoped addresses, and flows the kernel has no entry for (LRU
        eviction under pressure): the user-space matcher decides from the same IR, with the
        domain bits the kernel holds for the destination."""
        evaluated = flow.evaluated()
        raw = self.flows.lookup(flow_key(evaluated))
        if raw is not None:
            d = parse_flow_value(raw)
            return self._route(d.outbound, d.rule if d.rule < self.n_rules else None, d.mark)
        from dae_py.contract.evaluate import classify

        if self.domains is not None:
            bits = self.domains.lookup(evaluated.dst) or 0
            if bits:
                evaluated = dataclasses.replace(evaluated, domain_bits=bits)
        dec = classify(self.build.ir, evaluated)
        log.debug("no kernel decision for %s; user-space matcher chose %s", flow, dec.outbound)
        return self._route(dec.outbound_id, dec.rule, dec.mark)
