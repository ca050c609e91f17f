"""The harness of `lan_ingress_path`: time `lan_ingress`'s whole path (parse, flow table, classify,
insert, hijack) through BPF_PROG_TEST_RUN, and check first that each timed program takes the path
its figure is named after.

- With `repeat` N the kernel runs the program N times on the *same* skb, so from the second run
  on the packet's flow is in the flow table: the established path. Test-run cannot vary the
  packet between repetitions (its context, `struct __sk_buff`, has no field that reaches the
  5-tuple), so the new-flow path is timed on *variants* of the real build (`build_variant`): the
  same generated C with one or two lines patched into handle() (templates/bpf/datapath.h):
  `new-key` salts the flow key with a per-run counter after flow_key_of() (a real miss and a
  real insert of a new entry every run; the packet, and so classification and the socket
  lookups, untouched; cost: a global's load, add and store); `same-key` drops the lookup's
  answer (the lookup still runs), so the insert replaces the one entry, as dae's program does
  on each repeated TCP SYN; `same-key-no-hijack` also returns before hijack(), to show what its
  socket lookups cost.
- Single calls (repeat 1) may use a new frame each call: the real program, unpatched, on a new
  5-tuple every time. The kernel's time for one call includes a fixed timer overhead and cold
  caches (an empty program's single call is the floor); it is the cross-check that the new-key
  variant times what the real program does on a new flow.
- bpf_sk_assign needs a socket: each netns the harness makes (`PathNetns`) has transparent TCP
  and UDP sockets on the tproxy port, as the runtime does (and, for the established path, the
  flow's own accepted TCP socket), and the test runs happen in a thread inside it (test-run's
  skb belongs to the caller's netns, and the socket lookups search it). Under test-run the
  helper itself returns -EOPNOTSUPP (the skb is not at tc ingress: `probe` shows it), so
  hijack() does its lookups, finds the socket, is refused and fails open: the assignment (an
  skb_orphan and two stores) and the fwmark store are the only part of the path not timed.

Verdict checks: `check_path` (one run: TC_ACT_OK, the flow entry written carries the reference's
rule and outbound, the table was missed or hit as claimed), `check_repeated` (N runs: classify()
ran N times, or never, by the rule_hits counter, and the table grew as claimed).
"""
from __future__ import annotations

import random
import shutil
import socket
import statistics
import struct
import subprocess
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute, netns

from dae_py.compiler.emit import CLANG_FLAGS
from dae_py.runtime.bpf import BpfMap, BpfObject, prog_test_run
from dae_py.runtime.lab.nsutil import enter_netns
from dae_py.runtime.packets import FlowSpec, flow_key, parse_flow_value

T = TypeVar("T")

IP_TRANSPARENT = 19
IPV6_TRANSPARENT = 75
SKB_CTX_SIZE = 192  # struct __sk_buff
SKB_MARK_OFFSET = 8
TC_ACT_OK = 0

# The variants patch handle() (templates/bpf/datapath.h) in a copy of the build; each anchor must
# occur exactly once or the variant is not built.
HANDLE_SIGNATURE = "static __always_inline int handle("
KEY_ANCHOR = "\tflow_key_of(&p, &key);\n"
LOOKUP_ANCHOR = "\tflow = bpf_map_lookup_elem(&flows, &key);\n"
HIJACK_ANCHOR = "\t\treturn from_wan ? wan_bounce(skb, p, d, l3) : DAE_HIJACK(skb, p, d);\n"
NEW_KEY = ((HANDLE_SIGNATURE, "static __u32 bench_new_flow_seq;  /* bench only (bench/path_harness.py) */\n\n"
            + HANDLE_SIGNATURE),
           (KEY_ANCHOR, KEY_ANCHOR
            + "\tkey.saddr[3] ^= ++bench_new_flow_seq;  /* bench only: every run is a new flow */\n"))
SAME_KEY = ((LOOKUP_ANCHOR, LOOKUP_ANCHOR + "\tasm volatile(\"\" : \"+r\"(flow));  /* bench only: keep the lookup, */\n"
             "\tflow = 0;  /* then take the miss path */\n"),)
# (anchor, replacement) pairs applied to datapath.h
VARIANTS: dict[str, tuple[tuple[str, str], ...]] = {
    # Every run's flow key is one the table has never seen: a real miss and a real insert.
    "new-key": NEW_KEY,
    # The lookup runs and its answer is dropped; the insert then replaces the same key's entry,
    # as dae's program does for every TCP SYN (the method behind dae's 440 ns).
    "same-key": SAME_KEY,
    # The same, and proxied flows pass without hijack()'s socket lookups: what those cost.
    "same-key-no-hijack": SAME_KEY + ((HIJACK_ANCHOR, "\t\treturn TC_ACT_OK;  /* bench only: no hijack() */\n"),),
}


class HarnessError(Exception):
    """The variant could not be built or a program's verdict is not the real path's."""


def build_variant(build_dir: Path, out_dir: Path, kind: str) -> Path:
    """Copy a finished build, patch its datapath.h as VARIANTS[kind] says; return the object."""
    if out_dir.exists():
        shutil.rmtree(out_dir)
    shutil.copytree(build_dir, out_dir)
    hdr = out_dir / "include" / "datapath.h"
    text = hdr.read_text()
    for anchor, replacement in VARIANTS[kind]:
        if text.count(anchor) != 1:
            raise HarnessError(f"{hdr}: no longer has exactly one {anchor.strip()!r}: update bench/path_harness.py")
        text = text.replace(anchor, replacement)
    hdr.write_text(text)
    proc = subprocess.run(["clang", *CLANG_FLAGS, "-c", "program.c", "-o", "program.o"], cwd=out_dir,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"clang failed on the {kind} variant:\n{proc.stderr.strip()}")
    return out_dir / "program.o"


class PathNetns:
    """A network namespace with the runtime's transparent sockets on the tproxy port, and a
    worker thread inside it that runs the test runs (see the module docstring).

    `established` also makes a real TCP connection for each of those flows (both ends local on
    lo), so that
    hijack()'s first lookup, by the packet's own 4-tuple, finds an accepted socket as it does for
    every later packet of a proxied flow; the TCP tproxy listener is then left out, so a
    successful bpf_sk_assign proves that socket was found."""

    def __init__(self, name: str, tproxy_port: int, established: tuple[FlowSpec, ...] | None = None) -> None:
        self.name = name
        self.tproxy_port = tproxy_port
        self.established = established
        self.sockets: list[socket.socket] = []
        self._pool: ThreadPoolExecutor | None = None

    def __enter__(self) -> PathNetns:
        netns.create(self.name)
        try:
            with IPRoute(netns=self.name) as ipr:
                lo = ipr.link_lookup(ifname="lo")[0]
                ipr.link("set", index=lo, state="up")
                for f in self.established or ():
                    for a in (f.src, f.dst):
                        ipr.addr("add", index=lo, address=str(a), prefixlen=a.max_prefixlen,
                                 flags=0x02 if a.version == 6 else 0)  # IFA_F_NODAD
            self._pool = ThreadPoolExecutor(max_workers=1, initializer=enter_netns, initargs=(self.name,))
            self.call(self._open_sockets)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.sockets:
            s.close()
        self.sockets.clear()
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
        try:
            netns.remove(self.name)
        except OSError:
            pass

    def call(self, fn: Callable[[], T]) -> T:
        """Run fn() in the worker thread inside the namespace."""
        assert self._pool is not None
        return self._pool.submit(fn).result()

    def _transparent(self, family: int, kind: int) -> socket.socket:
        s = socket.socket(family, kind)
        self.sockets.append(s)
        if family == socket.AF_INET:
            s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        else:
            s.setsockopt(socket.IPPROTO_IPV6, IPV6_TRANSPARENT, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        return s

    def _open_sockets(self) -> None:
        for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            if self.established is None:
                t = self._transparent(family, socket.SOCK_STREAM)
                t.bind((any_addr, self.tproxy_port))
                t.listen(64)
            u = self._transparent(family, socket.SOCK_DGRAM)
            u.bind((any_addr, self.tproxy_port))
        for f in self.established or ():
            fam = socket.AF_INET if f.dst.version == 4 else socket.AF_INET6
            srv = socket.socket(fam, socket.SOCK_STREAM)
            self.sockets.append(srv)
            srv.bind((str(f.dst), f.dport))
            srv.listen(1)
            cli = socket.socket(fam, socket.SOCK_STREAM)
            self.sockets.append(cli)
            cli.bind((str(f.src), f.sport))
            cli.connect((str(f.dst), f.dport))
            acc, _ = srv.accept()
            self.sockets.append(acc)
            srv.close()  # only the accepted socket should answer the first lookup


def clear_map(m: BpfMap) -> None:
    for k in list(m.keys()):
        m.delete(k)


@dataclass(frozen=True)
class Expect:
    """What the real path does with the packet: the rule and outbound the reference picks, and
    the fwmark hijack() sets once bpf_sk_assign succeeded."""

    rule: int
    outbound: int
    fwmark: int


def run_once(fd: int, data: bytes) -> tuple[int, int]:
    """One run with the context read back: (retval, skb mark)."""
    r = prog_test_run(fd, data, ctx=bytes(SKB_CTX_SIZE), ctx_out_size=SKB_CTX_SIZE, data_out_size=0)
    return r.retval, struct.unpack_from("<I", r.ctx_out, SKB_MARK_OFFSET)[0]


def check_path(ns: PathNetns, fd: int, flows: BpfMap, flow: FlowSpec, data: bytes, expect: Expect,
               new_flow: bool | str) -> tuple[str | None, bool]:
    """Run the program once in `ns`; say what is wrong with its verdict (None: the real path) and
    whether bpf_sk_assign took the packet (the skb carries the fwmark). Under test-run it cannot:
    the skb is not at tc ingress, and the helper returns -EOPNOTSUPP (see `probe`), so hijack()
    fails open after its socket lookups and the mark stays unset.

    new_flow: True, the run must add one flow entry (the real key for the real program when the
    table was cleared, a salted key for the new-key variant); "replace", the real key's entry must
    be the only one after the run (the same-key variant); False, it must be there already and no
    other be added (the established path)."""
    real = flow_key(flow)
    before = set(flows.keys())
    ret, mark = ns.call(partial(run_once, fd, data))
    after = set(flows.keys())
    assigned = mark == expect.fwmark
    if ret != TC_ACT_OK:
        return f"returned {ret}, not TC_ACT_OK", assigned
    if mark not in (0, expect.fwmark):
        return f"skb mark 0x{mark:x}, neither unset nor the fwmark", assigned
    added = after - before
    if new_flow == "replace":
        if added or len(after) != 1:
            return f"{len(after)} flow entries after the run, not the one replaced", assigned
        key = real
    elif new_flow:
        if len(added) != 1:
            return f"added {len(added)} flow entries, not 1: the flow table was not missed", assigned
        key = next(iter(added))
    else:
        if added or real not in after:
            return "the flow table was not hit", assigned
        key = real
    raw = flows.lookup(key)
    if raw is None:
        return "its flow entry vanished", assigned
    d = parse_flow_value(raw)
    if (d.rule, d.outbound) != (expect.rule, expect.outbound):
        return (f"wrote rule {d.rule} outbound {d.outbound}, the reference says rule {expect.rule} "
                f"outbound {expect.outbound}"), assigned
    return None, assigned


@dataclass
class Case:
    """One program timed in one netns; `before` runs (untimed) before each timed run."""

    label: str
    fd: int
    ns: PathNetns
    before: Callable[[], object] = lambda: None
    frame_of_call: Callable[[int], bytes] | None = None  # single calls only: call i's own frame
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.median


def duration(fd: int, data: bytes, repeat: int) -> float:
    """The kernel's mean ns per repetition of `repeat` runs."""
    return float(prog_test_run(fd, data, repeat=repeat, data_out_size=0).duration_ns)


def time_rounds(cases: list[Case], data: bytes, repeat: int, runs: int, seed: int = 0) -> None:
    """`runs` rounds; each round runs every case once (`repeat` x) in a shuffled order."""
    rng = random.Random(seed)
    for c in cases:  # warm-up
        c.before()
        c.ns.call(partial(duration, c.fd, data, max(1, repeat // 10)))
    for _ in range(runs):
        order = cases[:]
        rng.shuffle(order)
        for c in order:
            c.before()
            c.samples.append(c.ns.call(partial(duration, c.fd, data, repeat)))


def time_single_calls(cases: list[Case], data: bytes, calls: int, seed: int = 0) -> None:
    """`calls` rounds of one call (repeat 1) per case, shuffled per round; each sample is the
    kernel's duration of that one call. A case with `frame_of_call` runs its own frame each call
    (a new 5-tuple: the one way to give test-run a new flow every time)."""
    rng = random.Random(seed)
    for i in range(calls):
        order = cases[:]
        rng.shuffle(order)
        for c in order:
            c.before()
            pkt = data if c.frame_of_call is None else c.frame_of_call(i)
            c.samples.append(c.ns.call(partial(duration, c.fd, pkt, 1)))


@contextmanager
def path_netns(prefix: str, tproxy_port: int,
               established: tuple[FlowSpec, ...]) -> Iterator[tuple[PathNetns, PathNetns]]:
    """The two namespaces of a run: `new` (tproxy listeners) and `est` (the flow's own socket)."""
    with PathNetns(f"{prefix}-new", tproxy_port) as new, PathNetns(f"{prefix}-est", tproxy_port, established) as est:
        yield new, est


PROBE_SOURCE = Path(__file__).resolve().parent / "pathprobe" / "probe.bpf.c"
TCP_STATES = {1: "established", 10: "listener", 0xFF: "udp"}


@dataclass(frozen=True)
class ProbeResult:
    """What hijack()'s lookups find for a packet in a netns, and what bpf_sk_assign returns."""

    socket: str | None  # "established", "listener", "udp" or None (nothing found)
    assign_errno: int

    def describe(self) -> str:
        if self.socket is None:
            return "no socket found"
        err = f"-{self.assign_errno}" if self.assign_errno else "0"
        return f"{self.socket} socket found, bpf_sk_assign -> {err}"


def build_probe(out_dir: Path, tproxy_port: int) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    obj = out_dir / "probe.o"
    proc = subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror",
                           "-I/usr/include/x86_64-linux-gnu", f"-DPROBE_PORT={tproxy_port}",
                           "-c", str(PROBE_SOURCE), "-o", str(obj)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise HarnessError(f"clang failed on {PROBE_SOURCE}:\n{proc.stderr.strip()}")
    return obj


def probe(ns: PathNetns, probe_fd: int, data: bytes) -> ProbeResult:
    r = ns.call(partial(prog_test_run, probe_fd, data, data_out_size=0)).retval
    if r >= 1 << 31:
        r -= 1 << 32
    if r < 0:
        if r == -2:
            raise HarnessError("the probe handles IPv4 frames without options only")
        return ProbeResult(None, 0)
    return ProbeResult(TCP_STATES.get(r >> 8, f"state {r >> 8}"), r & 0xFF)


def classified(obj: BpfObject, rule: int) -> int:
    """Flows the program has decided by `rule` (rule_hits, summed over CPUs): classify() ran
    that many times for it."""
    vals = obj.map("rule_hits").percpu_values(struct.pack("<I", rule)) or []
    return sum(struct.unpack_from("<Q", v)[0] for v in vals)


def check_repeated(ns: PathNetns, obj: BpfObject, data: bytes, expect: Expect, repeat: int,
                   classifies: bool, entries_added: int) -> str | None:
    """Run `repeat` times at once and check that every run took the path its figure is for:
    classify() ran `repeat` times (a new-flow figure) or never (established), and the flow table
    grew by `entries_added` (`repeat` for the new-key variant, 0 otherwise)."""
    flows = obj.map("flows")
    before, n_before = classified(obj, expect.rule), len(flows)
    ns.call(partial(duration, obj.program_fd("lan_ingress"), data, repeat))
    runs, added = classified(obj, expect.rule) - before, len(flows) - n_before
    want = repeat if classifies else 0
    if runs != want:
        return f"classify() ran {runs} times in {repeat} runs, not {want}"
    if added != entries_added:
        return f"{added} flow entries added in {repeat} runs, not {entries_added}"
    return None
