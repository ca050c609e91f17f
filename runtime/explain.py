"""`dae-runtime explain`: run one flow through the real compiled program and say which rule
decided it.

The object is loaded fresh, its maps are filled the way the runtime fills them (compiler tables;
domain bits for --domain bound to the destination IP as the DNS module does; the process entry
for --pname as the cgroup hooks do), a whole frame is built and the real `lan_ingress` (or
`wan_egress` for local processes) runs under BPF_PROG_TEST_RUN. The decision is read back from
the program's own flow table.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from dae_py.contract import capabilities
from dae_py.contract.manifest import Attach, RuleEntry
from dae_py.runtime.bpf import BpfObject, prog_test_run
from dae_py.runtime.build import Build, load_tables
from dae_py.runtime.domain_map import DomainBindings
from dae_py.runtime.packets import (
    IPPROTO_TCP,
    IPPROTO_UDP,
    FlowSpec,
    KernelDecision,
    flow_key,
    frame,
    parse_flow_value,
    pname_value,
)

TC_ACTIONS = {0: "TC_ACT_OK", 2: "TC_ACT_SHOT", 7: "TC_ACT_REDIRECT", 0xFFFFFFFF: "TC_ACT_UNSPEC"}


def caveats(build: Build, domain: str | None, pname: str | None) -> tuple[str, ...]:
    """What this explanation assumes that the live gateway cannot provide yet, from the capability
    table: explain fills the maps itself (the domain bits for --domain, the process entry for
    --pname), so its answer can differ from what a real flow of that kind gets."""
    out = []
    given = {"domain": domain, "pname": pname}
    for name, value in given.items():
        cap = capabilities.function(name)
        if value is None or cap is None:
            continue
        if not cap.acts:
            out.append(f"--{name} {value}: the live gateway cannot provide this yet ({name}() does not act): "
                       f"{cap.needs}")
        elif name == "domain" and not build.manifest.dns.bind and not build.manifest.dns.hijack_port:
            out.append(f"--{name} {value}: the live gateway cannot provide this: {name}() needs {cap.needs}, "
                       "and this build has no DNS module (no dns section), so no name is ever bound to --dst there")
    return tuple(out)


def udp_caveat(build: Build, flow: FlowSpec, outbound: str) -> tuple[str, ...]:
    """For a UDP flow to a group none of whose nodes carries UDP (e.g. only chains ending in ss):
    the kernel still sends it to the relay, which refuses it; say so, and why."""
    if flow.l4proto != IPPROTO_UDP:
        return ()
    group = next((g for g in build.manifest.groups if g.name == outbound), None)
    if group is None or not group.nodes:
        return ()
    specs = {n.name: n for n in build.manifest.nodes}
    why = {n: capabilities.udp_missing(specs[n].protocol, bool(specs[n].chain))
           for n in group.nodes if n in specs}
    if len(why) != len(group.nodes) or any(w is None for w in why.values()):
        return ()
    listed = "; ".join(f"{n}: {w}" for n, w in list(why.items())[:3])
    return (f"group '{outbound}' has no node that carries UDP ({listed}): the relay refuses this flow",)


@dataclass(frozen=True)
class Explanation:
    flow: FlowSpec
    decision: KernelDecision
    rule: RuleEntry | None  # None for the fallback
    outbound: str
    tc_action: int
    domain: str | None
    domain_bits: int
    pname: str | None
    program: str
    caveats: tuple[str, ...] = ()  # what the live gateway cannot provide (see `caveats`)

    def as_json(self) -> dict[str, Any]:
        return {
            "outbound": self.outbound,
            "outbound_id": self.decision.outbound,
            "rule": self.rule.index if self.rule else "fallback",
            "rule_text": self.rule.text if self.rule else None,
            "line": self.rule.line if self.rule else None,
            "mark": self.decision.mark,
            "must": self.decision.must,
            "tc_action": TC_ACTIONS.get(self.tc_action, self.tc_action),
            "program": self.program,
            "domain": self.domain,
            "domain_bits": self.domain_bits,
            "caveats": list(self.caveats),
        }

    def text(self, config_name: str) -> str:
        f = self.flow
        proto = "tcp" if f.l4proto == IPPROTO_TCP else "udp"

        def ep(a: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int) -> str:
            return f"[{a}]:{port}" if a.version == 6 else f"{a}:{port}"

        head = f"{proto} {ep(f.src, f.sport)} -> {ep(f.dst, f.dport)}"
        if self.domain:
            head += f" ({self.domain})"
        if self.rule:
            why = f"rule {self.rule.index} at {config_name}:{self.rule.line}: {self.rule.text}"
        else:
            why = "no rule matched: routing.fallback"
        extras = []
        if self.decision.mark:
            extras.append(f"mark 0x{self.decision.mark:x}")
        if self.decision.must:
            extras.append("must (DNS not hijacked)")
        tail = f" [{', '.join(extras)}]" if extras else ""
        action = TC_ACTIONS.get(self.tc_action, self.tc_action)
        notes = "".join(f"\n  note: {c}" for c in self.caveats)
        return f"{head}\n  {why}\n  -> outbound '{self.outbound}'{tail} ({action}){notes}"


def explain(build: Build, flow: FlowSpec, domain: str | None = None, pname: str | None = None) -> Explanation:
    program = build.manifest.program(Attach.WAN_EGRESS if pname else Attach.LAN_INGRESS).name
    bits = build.domain_matcher.bits(domain) if domain else 0
    with BpfObject(build.object_path) as obj:
        obj.load()
        load_tables(obj, build)
        if bits:
            DomainBindings(obj, build.domain_words).bind(flow.dst, bits)
        if pname and "pname_probe" in obj.map_names():
            # A test-run skb's dummy socket holds no storage: the program falls back to pname_probe.
            obj.map("pname_probe").update((0).to_bytes(4, "little"), pname_value(pname))
        result = prog_test_run(obj.program_fd(program), frame(flow))
        raw = obj.map("flows").lookup(flow_key(flow))
    if raw is None:
        raise RuntimeError("the program did not record a decision for this flow (it did not parse the packet)")
    decision = parse_flow_value(raw)
    rule = build.rule(decision.rule) if decision.rule < len(build.manifest.rules) else None
    return Explanation(flow=flow, decision=decision, rule=rule, outbound=build.outbound_name(decision.outbound),
                       tc_action=result.retval, domain=domain, domain_bits=bits, pname=pname, program=program,
                       caveats=caveats(build, domain, pname)
                       + udp_caveat(build, flow, build.outbound_name(decision.outbound)))


def make_flow(proto: str, src: tuple[Any, int], dst: tuple[Any, int], mac: int | None, dscp: int) -> FlowSpec:
    l4 = {"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}[proto]
    kw: dict[str, Any] = {"dscp": dscp}
    if mac is not None:
        kw["mac"] = mac
    return FlowSpec(l4proto=l4, src=src[0], sport=src[1], dst=dst[0], dport=dst[1], **kw)
