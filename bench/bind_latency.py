"""What binding before answering adds to an answer: the binder's work on a loaded program's
maps per A/AAAA answer, beside the rest of the answer path's own last step (rendering the wire
answer), in one run.

    .venv/bin/python -m bench.bind_latency [--answers 20000] [--json FILE]

Each answer names a fresh address (a first binding: the filter word read and written, the entry
written), as a cache miss does. Shapes: one A record; a CNAME chain (3 names) with two A
records; one AAAA. The domain bits come from the build's DomainMatcher over a handful of sets.
Also timed: a cache hit's `refresh` of bindings already in place (dict look-ups, no map write).
Prints Markdown (and JSON with --json). Target (issue 10): p50 <= 20 us added.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import dns.message
import dns.rrset

CONFIG = """\
global: {lan_interface: [eth0]}
dns: {upstream: {u: 'udp://10.0.0.2:53'}}
routing:
  rules:
    - "domain(suffix: proxied.test, keyword: tracker, full: a.example.com) -> block"
    - "domain(suffix: cdn.test) -> direct(mark: 1)"
  fallback: direct
"""


def answer(name: str, addrs: list[str], cname_chain: tuple[str, ...] = (), rdtype: str = "A") -> dns.message.Message:
    q = dns.message.make_query(name, rdtype)
    r = dns.message.make_response(q)
    owner = name + "."
    for target in cname_chain:
        target += "."
        r.answer.append(dns.rrset.from_text(owner, 60, "IN", "CNAME", target))
        owner = target
    r.answer.append(dns.rrset.from_text(owner, 60, "IN", rdtype, *addrs))
    return r


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--answers", type=int, default=20000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from bench.common import compile_one
    from dae_py.runtime.bpf import BpfObject
    from dae_py.runtime.build import Build, load_tables
    from dae_py.runtime.dns.binder import Binder
    from dae_py.runtime.domain_map import DomainBindings

    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as wd:
        c = compile_one(CONFIG, "bind.yaml", Path(wd) / "b", "linear")
        assert c.error is None, c.error
        build = Build.open(Path(wd) / "b")
        obj = BpfObject(build.object_path)
        obj.load()
        load_tables(obj, build)
        b = DomainBindings.of(obj, build.domain_words)
        assert b is not None
        binder = Binder(b, build.domain_matcher.bits)
        n = args.answers
        shapes = {
            "1 A": [answer(f"h{i}.proxied.test", [str(ipaddress.IPv4Address(0x0A000000 + i))]) for i in range(n)],
            "CNAME x2 + 2 A": [answer(f"w{i}.proxied.test", [str(ipaddress.IPv4Address(0x0B000000 + 2 * i)),
                                                            str(ipaddress.IPv4Address(0x0B000001 + 2 * i))],
                                      (f"m{i}.cdn.test", f"e{i}.cdn.test")) for i in range(n)],
            "1 AAAA": [answer(f"v{i}.proxied.test", [str(ipaddress.IPv6Address((0xFD00 << 112) + i))], rdtype="AAAA")
                       for i in range(n)],
        }
        rows: list[dict[str, float | str]] = []
        for label, msgs in shapes.items():
            bind_us, render_us, refresh_us = [], [], []
            for r in msgs:
                t0 = time.perf_counter_ns()
                addrs, bits = binder.bind_answer(r, 60)
                t1 = time.perf_counter_ns()
                r.to_wire()
                t2 = time.perf_counter_ns()
                binder.refresh(addrs, bits, 60)
                t3 = time.perf_counter_ns()
                bind_us.append((t1 - t0) / 1e3)
                render_us.append((t2 - t1) / 1e3)
                refresh_us.append((t3 - t2) / 1e3)
            rows.append({"shape": label, "bind_p50": pct(bind_us, 0.5), "bind_p90": pct(bind_us, 0.9),
                         "bind_p99": pct(bind_us, 0.99), "render_p50": pct(render_us, 0.5),
                         "refresh_p50": pct(refresh_us, 0.5), "mean_bind": statistics.fmean(bind_us)})
        obj.close()
    print(f"load average {load:.1f}; {n:,} answers per shape, each a fresh address\n")
    print("| answer | bind p50 / p90 / p99 | render to wire p50 | bind / render (p50) | cache-hit refresh p50 |")
    print("|---|---|---|---|---|")
    for row in rows:
        f = {k: float(v) for k, v in row.items() if k != "shape"}
        print(f"| {row['shape']} | {f['bind_p50']:.1f} / {f['bind_p90']:.1f} / {f['bind_p99']:.1f} us | "
              f"{f['render_p50']:.1f} us | {f['bind_p50'] / f['render_p50']:.2f} | {f['refresh_p50']:.2f} us |")
    if args.json:
        args.json.write_text(json.dumps({"load": load, "answers": n, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
