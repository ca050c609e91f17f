"""Helpers shared by the compiler tests: compile a config text, load the real program once, and run
flows through it with BPF_PROG_TEST_RUN (filling the domain and process maps the way the DNS
module and the cgroup hooks will).
"""
from __future__ import annotations

import ipaddress
import struct
import textwrap
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from dae_py.compiler.pipeline import Checked, compile_config
from dae_py.contract import evaluate
from dae_py.runtime.bpf import BpfObject, prog_test_run
from dae_py.runtime.build import Build, load_tables
from dae_py.runtime.domain_map import DomainBindings
from dae_py.runtime.packets import (
    DEFAULT_SRC_MAC,
    IPPROTO_TCP,
    IPPROTO_UDP,
    FlowSpec,
    flow_key,
    frame,
    parse_flow_value,
    pname_value,
)

TC_ACT_OK = 0
TC_ACT_SHOT = 2
TC_ACT_REDIRECT = 7  # bpf_redirect(): wan_egress bounces a local process's proxied flow
SKB_MARK_OFFSET = 8  # struct __sk_buff: len, pkt_type, mark
SKB_CTX_SIZE = 192

STRATEGIES = ["linear", "bitvector"]


def strategy_params() -> list[str]:
    """Both classifier strategies: straight-line compares and per-field bit-vectors."""
    return list(STRATEGIES)


def write_config(directory: Path, text: str, name: str = "config.yaml") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    p = directory / name
    p.write_text(textwrap.dedent(text).lstrip("\n"))
    return p


@dataclass
class Compiled:
    config: Path
    out: Path
    checked: Checked
    strategy: str

    @cached_property
    def build(self) -> Build:
        return Build.open(self.out)

    def rule_index(self, line_text: str) -> int:
        """Index of the rule whose text contains `line_text` (for readable expectations)."""
        hits = [r.index for r in self.build.manifest.rules if line_text in r.text]
        assert len(hits) == 1, (line_text, hits)
        return hits[0]


def compile_text(directory: Path, text: str, strategy: str = "linear", out_name: str = "build") -> Compiled:
    cfg = write_config(directory, text)
    out = directory / out_name
    checked = compile_config(cfg, out, strategy=strategy)
    return Compiled(config=cfg, out=out, checked=checked, strategy=strategy)


def ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def endpoint(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
    else:
        host, _, port = text.rpartition(":")
    return ip(host), int(port)


@dataclass(frozen=True)
class KernelResult:
    rule: int | None  # None: the fallback
    outbound_id: int
    mark: int
    must: bool
    tc_action: int
    skb_mark: int
    classify_only: int | None  # classify_only's return value (LAN flows only)


class Kernel:
    """One loaded build; `run` classifies a flow through lan_ingress (or wan_egress when the flow
    has a process name), then forgets the flow so the next run classifies afresh."""

    def __init__(self, build: Build):
        self.build = build
        self.obj = BpfObject(build.object_path)
        self.obj.load()
        load_tables(self.obj, build)
        names = set(self.obj.map_names())
        self.flows = self.obj.map("flows")
        self.domains = DomainBindings.of(self.obj, build.domain_words)
        # a test-run skb's dummy socket holds no storage: wan_egress falls back to pname_probe
        self.pnames = self.obj.map("pname_probe") if "pname_probe" in names else None
        self.n_rules = len(build.manifest.rules)
        self.fds = {p: self.obj.program_fd(p) for p in ("lan_ingress", "wan_egress", "classify_only")}

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> Kernel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bind_domain(self, dst: Any, bits: int) -> None:
        assert self.domains is not None
        if bits:
            self.domains.bind(dst, bits)
        else:
            self.domains.unbind(dst)

    def run_spec(self, spec: FlowSpec, bits: int = 0, pname: str | None = None,
                 raw_frame: bytes | None = None, leave_domains: bool = False) -> KernelResult:
        """Bind `bits` to the destination (or unbind it) unless `leave_domains`, run the packet
        through lan_ingress (wan_egress with a pname) and classify_only, return the decision."""
        if self.domains is not None and not leave_domains:  # (no map when no live rule looks at domains)
            self.bind_domain(spec.dst, bits)
        prog = "wan_egress" if pname else "lan_ingress"
        data = raw_frame if raw_frame is not None else frame(spec)
        key0 = bytes(4)  # where `explain --pname` puts it too
        try:
            if self.pnames is not None and pname:
                self.pnames.update(key0, pname_value(pname))
            res = prog_test_run(self.fds[prog], data, ctx=bytes(SKB_CTX_SIZE), ctx_out_size=SKB_CTX_SIZE)
        finally:
            if self.pnames is not None and pname:
                self.pnames.delete(key0)
        key = flow_key(spec)
        raw = self.flows.lookup(key)
        assert raw is not None, f"the program recorded no decision for {spec}"
        self.flows.delete(key)
        d = parse_flow_value(raw)
        only = None
        if not pname:
            only = prog_test_run(self.fds["classify_only"], data).retval
        skb_mark = struct.unpack_from("<I", res.ctx_out, SKB_MARK_OFFSET)[0]
        return KernelResult(rule=None if d.rule == self.n_rules else d.rule, outbound_id=d.outbound, mark=d.mark,
                            must=d.must, tc_action=res.retval, skb_mark=skb_mark, classify_only=only)

    def run(self, f: evaluate.Flow) -> KernelResult:
        return self.run_spec(flowspec(f), f.domain_bits, f.pname)


def flowspec(f: evaluate.Flow) -> FlowSpec:
    return FlowSpec(l4proto=f.l4proto, src=f.src, sport=f.sport, dst=f.dst, dport=f.dport,
                    mac=DEFAULT_SRC_MAC if f.mac is None else f.mac, dscp=f.dscp)


def make_flow(proto: str, src: str, dst: str, *, mac: int | None = None, dscp: int = 0, pname: str | None = None,
              domain_bits: int = 0) -> evaluate.Flow:
    (s, sp), (d, dp) = endpoint(src), endpoint(dst)
    return evaluate.Flow(l4proto={"tcp": IPPROTO_TCP, "udp": IPPROTO_UDP}[proto], src=s, sport=sp, dst=d,
                         dport=dp, mac=DEFAULT_SRC_MAC if mac is None else mac, dscp=dscp, pname=pname,
                         domain_bits=domain_bits)

