"""Correctness check of the benchmark baseline (run it before trusting any timing).

    sudo .venv/bin/python -m bench.check_interpreter [--configs 40] [--flows 100] [--seed 1]

Random configs using every matcher (dip/sip v4+v6, dport/sport ranges, l4proto, ipversion, mac,
dscp, pname, domain), negation, multi-parameter OR, `&&`, must_*, must_rules, marks and fallback,
plus the benchmark's own configs; for each, random flows drawn from the values the rules use.
For every flow three answers must agree:
  - the compiled `classify_only` (each strategy this checkout has) -- the rule index;
  - the interpreter's `interp_record` -- rule index, outbound, mark, must;
  - contract.evaluate.classify on the checked IR (the project's Python reference).
Exit status 1 on any disagreement, with the first few listed.
"""
from __future__ import annotations

import argparse
import ipaddress
import random
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dae_py.contract.evaluate import Flow, classify
from dae_py.contract.ir import CidrSet, Field, PortSet, RoutingIR, ValueSet
from dae_py.runtime.packets import DEFAULT_SRC_MAC, IPPROTO_TCP, IPPROTO_UDP, FlowSpec, frame

from . import configs
from .common import Compiled, available_strategies, compile_one, retval
from .interpreter import Interpreter, encode

V4_POOL = ["10.0.0.0/8", "10.1.0.0/16", "10.1.2.0/24", "10.1.2.3/32", "192.168.0.0/16", "0.0.0.0/0", "1.2.3.0/24",
           "172.16.0.0/12", "100.64.0.0/10"]
V6_POOL = ["::/0", "fd00::/8", "fd00:1::/32", "2001:db8::/32", "2001:db8::1/128", "2400:cb00::/32", "::ffff:0:0/96"]
PORT_POOL = ["53", "80", "443", "8080", "1000-2000", "0-1023", "65535", "1-65535", "5353", "10000-10100"]
MAC_POOL = ["02:42:ac:11:00:02", "02:00:00:00:00:01", "aa:bb:cc:dd:ee:ff"]
DSCP_POOL = ["0", "10", "46", "63"]
DOMAIN_POOL = ["suffix: d0.test", "suffix: d1.test", "full: www.d2.test", "keyword: d3", "suffix: d0.test, d1.test",
               "regex: '^x[0-9]+\\.test$'"]
OUTS = ["direct", "block", "proxy", "hk", "must_direct", "direct(mark: 0x10)", "proxy(must)", "must_rules",
        "hk(mark: 0x7)"]
FALLBACKS = ["proxy", "direct", "must_direct", "direct(mark: 0x20)", "block"]


def _q(s: str) -> str:
    return f"'{s}'" if ":" in s else s


def random_function(rng: random.Random) -> str:
    kind = rng.choice(["dip", "dip", "sip", "dport", "dport", "sport", "l4proto", "ipversion", "mac", "dscp",
                       "pname", "domain", "domain"])
    k = rng.choice([1, 1, 2, 3])
    if kind in ("dip", "sip"):
        vals = [_q(rng.choice(V4_POOL + V6_POOL)) for _ in range(k)]
    elif kind in ("dport", "sport"):
        vals = [rng.choice(PORT_POOL) for _ in range(k)]
    elif kind == "l4proto":
        vals = rng.sample(["tcp", "udp"], rng.choice([1, 1, 2]))
    elif kind == "ipversion":
        vals = rng.sample(["4", "6"], rng.choice([1, 1, 2]))
    elif kind == "mac":
        vals = [f"'{rng.choice(MAC_POOL)}'" for _ in range(k)]
    elif kind == "dscp":
        vals = [rng.choice(DSCP_POOL) for _ in range(k)]
    elif kind == "pname":
        vals = [rng.choice(["curl", "wget", "ssh"]) for _ in range(k)]
    else:
        vals = [rng.choice(DOMAIN_POOL)]
    neg = "!" if rng.random() < 0.2 else ""
    return f"{neg}{kind}({', '.join(dict.fromkeys(vals))})"


def random_config(rng: random.Random) -> str:
    rules = []
    for _ in range(rng.randint(1, 30)):
        funcs = [random_function(rng) for _ in range(rng.choice([1, 1, 2, 2, 3]))]
        rules.append(f"{' && '.join(funcs)} -> {rng.choice(OUTS)}")
    return configs.render("random correctness config", rules, fallback=rng.choice(FALLBACKS))


@dataclass
class Values:
    nets4: list[ipaddress.IPv4Network]
    nets6: list[ipaddress.IPv6Network]
    ports: list[int]
    macs: list[int]
    dscps: list[int]


def values_of(ir: RoutingIR) -> Values:
    v = Values([], [], [], [], [])
    for r in ir.rules:
        for m in r.matches:
            x = m.values
            if isinstance(x, CidrSet):
                v.nets4 += list(x.v4[:200])
                v.nets6 += list(x.v6[:200])
            elif isinstance(x, PortSet):
                for lo, hi in x.ranges:
                    v.ports += [lo, hi, max(0, lo - 1), min(65535, hi + 1), (lo + hi) // 2]
            elif isinstance(x, ValueSet) and m.field is Field.MAC:
                v.macs += list(x.values)
            elif isinstance(x, ValueSet) and m.field is Field.DSCP:
                v.dscps += list(x.values)
    return v


def _addr_in(rng: random.Random,
             net: ipaddress.IPv4Network | ipaddress.IPv6Network) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    host_bits = net.max_prefixlen - net.prefixlen
    return net.network_address + (rng.getrandbits(host_bits) if host_bits else 0)


def random_flow(rng: random.Random, v: Values) -> FlowSpec:
    fam = 6 if rng.random() < 0.35 else 4
    nets: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = v.nets6 if fam == 6 else v.nets4

    def addr() -> ipaddress.IPv4Address | ipaddress.IPv6Address:
        if nets and rng.random() < 0.7:
            return _addr_in(rng, rng.choice(nets))
        if fam == 4:
            return ipaddress.IPv4Address(rng.getrandbits(32))
        return ipaddress.IPv6Address(rng.choice([0x2001_0db8 << 96, 0xfd00_0001 << 96, 0x2400_cb00 << 96, 0])
                                     | rng.getrandbits(64))

    def port() -> int:
        return rng.choice(v.ports) if v.ports and rng.random() < 0.7 else rng.randrange(65536)

    return FlowSpec(l4proto=rng.choice([IPPROTO_TCP, IPPROTO_UDP]), src=addr(), sport=port(), dst=addr(), dport=port(),
                    mac=rng.choice(v.macs) if v.macs and rng.random() < 0.5 else DEFAULT_SRC_MAC,
                    dscp=rng.choice(v.dscps) if v.dscps and rng.random() < 0.5 else rng.choice([0, 0, 5]))


def check_config(text: str, name: str, tmp: Path, strategies: list[str], flows: int, rng: random.Random,
                 failures: list[str]) -> int:
    compiled: dict[str, Compiled] = {}
    checked = None
    for s in strategies:
        c = compile_one(text, name, tmp / name / s, s)
        if c.error:
            failures.append(f"{name}: {s} did not compile: {c.error}")
            continue
        c.load()
        compiled[s] = c
        checked = c.checked
    if checked is None:
        return 0
    ir = checked.ir
    n_sets = len(ir.domain_sets)
    vals = values_of(ir)
    done = 0
    with Interpreter.open() as interp:
        interp.fill(encode(ir))
        ifd = interp.program_fd("interp_record")
        cfds = {s: c.obj.program_fd("classify_only") for s, c in compiled.items()}  # type: ignore[union-attr]  # c.load() set obj
        for _ in range(flows):
            f = random_flow(rng, vals)
            bits = 0
            for _ in range(rng.choice([0, 0, 1, 2, 3]) if n_sets else 0):
                bits |= 1 << rng.randrange(n_sets)
            if n_sets:
                interp.set_domain_bits(f.dst, bits)
                for c in compiled.values():
                    c.bind_domain(f.dst, bits)  # (nothing when no live rule looks at domains)
            ref = classify(checked.ir_checked, Flow(l4proto=f.l4proto, src=f.src, sport=f.sport, dst=f.dst,
                                                    dport=f.dport, mac=f.mac, dscp=f.dscp, domain_bits=bits))
            want = (len(ir.rules) if ref.rule is None else ref.rule, ref.outbound_id, ref.mark, ref.must)
            data = frame(f)
            got_i = retval(ifd, data)
            dec = interp.last_decision()
            if got_i != want[0] or dec != want:
                failures.append(f"{name}: {f} bits={bits:#x}: interpreter {got_i} {dec}, reference {want}")
            for s, fd in cfds.items():
                got = retval(fd, data)
                if got != want[0]:
                    failures.append(f"{name}: {f} bits={bits:#x}: compiled[{s}] rule {got}, reference {want[0]}"
                                    f" (interpreter {got_i})")
            done += 1
    for c in compiled.values():
        c.close()
    return done


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", type=int, default=40, help="random configs")
    ap.add_argument("--flows", type=int, default=100, help="flows per config")
    ap.add_argument("--bench-flows", type=int, default=250, help="flows per benchmark config (1/10/100/1000 rules)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--strategies", nargs="*", default=None)
    args = ap.parse_args(argv)
    strategies = args.strategies or available_strategies()
    rng = random.Random(args.seed)
    failures: list[str] = []
    total = 0
    with tempfile.TemporaryDirectory(prefix="dae-bench-check-") as td:
        tmp = Path(td)
        for i in range(args.configs):
            total += check_config(random_config(rng), f"random{i}.yaml", tmp, strategies, args.flows, rng, failures)
        for n in (1, 10, 100, 1000):
            # linear cannot build 1,000 rules (see RESULTS.md); check what builds
            total += check_config(configs.mixed_config(n), f"mixed{n}.yaml", tmp,
                                  [s for s in strategies if not (s == "linear" and n > 500)],
                                  args.bench_flows, rng, failures)
        total += check_config(configs.big_cidr_config(tmp / "cidr", 10_000), "cidr10k.yaml", tmp, strategies,
                              args.bench_flows, rng, failures)
    print(f"{total} flows over {args.configs} random + 5 benchmark configs, strategies: {', '.join(strategies)}")
    if failures:
        print(f"{len(failures)} DISAGREEMENTS:")
        for f in failures[:25]:
            print("  " + f)
        return 1
    print("interpreter, compiled program(s) and Python reference agree on every flow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
