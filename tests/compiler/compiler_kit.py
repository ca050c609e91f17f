"""Helpers shared by the compiler tests: compile a config text, load the real program once, and run
flows through it with BPF_PROG_TEST_RUN (filling the domain and process maps the way the DNS
module and the cgroup hooks will).
"""
from __future__ import annotations

import ipaddress
import os
import shutil
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


COOKIE_PROBE_C = r"""
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct { __uint(type, BPF_MAP_TYPE_ARRAY); __uint(max_entries, 1); __type(key, __u32); __type(value, __u64); }
cookie SEC(".maps");
SEC("tc") int probe(struct __sk_buff *skb)
{
	__u32 k = 0;
	__u64 c = bpf_get_socket_cookie(skb);

	bpf_map_update_elem(&cookie, &k, &c, 0);
	return 0;
}
char _license[] SEC("license") = "GPL";
"""
_COOKIE_PROBE: list[Any] = []


def cookie_probe() -> Any:
    """A tiny program that reports the socket cookie of its test-run skb.

    BPF_PROG_TEST_RUN gives every run's skb a fresh dummy socket whose cookie comes from a per-CPU
    counter, so on one CPU the next run's cookie is the probe's plus one: that is the key under
    which the cgroup hooks would have put the sending process, and where `Kernel` puts it.
    """
    if not _COOKIE_PROBE:
        import subprocess
        import tempfile

        d = Path(tempfile.mkdtemp(prefix="cookie-probe-"))
        (d / "probe.c").write_text(COOKIE_PROBE_C)
        try:
            subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu", "-c", "probe.c",
                            "-o", "probe.o"], cwd=d, check=True, capture_output=True)
            obj = BpfObject(d / "probe.o")
            obj.load()
        finally:
            shutil.rmtree(d, ignore_errors=True)
        _COOKIE_PROBE.append(obj)
    return _COOKIE_PROBE[0]


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
        self.pnames = self.obj.map("sock_pname") if "sock_pname" in names else None
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
        keys = [(0).to_bytes(8, "little")]  # where `explain --pname` puts it
        cpus = os.sched_getaffinity(0)
        try:
            if self.pnames is not None and pname:
                # Stay on one CPU from the probe to the run, so the cookie is the probe's + 1.
                os.sched_setaffinity(0, {min(cpus)})
                probe = cookie_probe()
                prog_test_run(probe.program_fd("probe"), data)
                last = int.from_bytes(probe.map("cookie").lookup(bytes(4)) or bytes(8), "little")
                keys += [(last + d).to_bytes(8, "little") for d in (1, 2)]
                for key in keys:
                    self.pnames.update(key, pname_value(pname))
            res = prog_test_run(self.fds[prog], data, ctx=bytes(SKB_CTX_SIZE), ctx_out_size=SKB_CTX_SIZE)
        finally:
            os.sched_setaffinity(0, cpus)
            if self.pnames is not None and pname:
                for key in keys:
                    self.pnames.delete(key)
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

