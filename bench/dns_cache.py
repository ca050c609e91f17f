"""Cache-hit queries per second: the runtime's DNS module against dnsmasq as a caching
forwarder, side by side in one lab run, both loaded by dnsperf from the client namespace.

    .venv/bin/python -m bench.dns_cache [--seconds 10] [--clients 100] [--trials 10000]
        [--fixed-qps 20000] [--miss-qps 2000] [--asis] [--prefix daelab]
        [--ab /path/to/base-worktree [--ab-runs 2]]

The zone is served by a dnsmasq in the upstream namespace; the gateway runs `dae-runtime` with
dns.bind on its LAN address (port 53) and a second dnsmasq, a caching forwarder to the same
zone, on the same address at port 5353. dnsperf keeps 100 queries in flight over 20 names
(warmed first, so every timed query is a cache hit). With --trials it also repeats the
first-connection test of tests/dnsmodule (fresh name, then connect at once) that many times.
Latency: dnsperf -v reports each answer's latency; at a fixed --fixed-qps (cache hits) the p50
of ours and dnsmasq's, and the cache-miss p50 (a fresh name each query, --miss-qps) through our
module against asking the zone's dnsmasq directly (the same path through the gateway, minus
the module). Those misses come from dns.bind clients, routed to a named udp:// upstream.

--asis: also the miss p50 of hijacked queries routed `asis` (the hijack default): the client
asks a resolver of its own on port 53 (a dnsmasq of the zone in the upstream namespace, at
ASIS_RESOLVER), the gateway hijacks the query and the module asks that same resolver; against
the client asking the same dnsmasq at DIRECT_RESOLVER, which a must_direct rule leaves alone
(the same path through the gateway, minus the hijack and the module). The rule is in the
config only with --asis.

--ab BASE: before/after in one session: the whole bench alternately with BASE's tree (its own
.venv, e.g. `git worktree add --detach ../base main`) and this one, --ab-runs times each (base
first), then each run's figures and their medians side by side. The bench itself (this file and
tests/) is this tree's on both sides, so both measure the same way; the runtime, compiler and
lab under test are the ones each .venv's editable install maps `dae_py` to.
"""
from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import dns.message
import dns.query

if TYPE_CHECKING:  # main() imports it when it runs
    from dae_py.runtime.lab import Lab


def dnsperf(lab: Lab, server: str, port: int, qfile: Path, seconds: int, clients: int) -> dict[str, float]:
    out = lab.run("client", ["dnsperf", "-s", server, "-p", str(port), "-d", str(qfile), "-l", str(seconds),
                             "-c", "4", "-q", str(clients), "-T", "1"], timeout=seconds + 60).stdout
    qps = re.search(r"Queries per second:\s+([\d.]+)", out)
    lost = re.search(r"Queries lost:\s+(\d+)", out)
    avg = re.search(r"Average Latency \(s\):\s+([\d.]+)", out)
    if qps is None or avg is None:
        raise RuntimeError(f"dnsperf printed no result:\n{out}")
    return {"qps": float(qps.group(1)), "lost": float(lost.group(1)) if lost else 0.0,
            "avg_ms": float(avg.group(1)) * 1000}


def dnsperf_latency(lab: Lab, server: str, port: int, qfile: Path, seconds: int, qps: int) -> dict[str, float]:
    """p50/p90/p99 in microseconds, answered and sent counts, from dnsperf -v at a fixed rate."""
    out = lab.run("client", ["dnsperf", "-s", server, "-p", str(port), "-d", str(qfile), "-l", str(seconds),
                             "-c", "4", "-q", "500", "-Q", str(qps), "-T", "1", "-v"], timeout=seconds + 60).stdout
    lat = sorted(float(m.group(1)) for m in re.finditer(r"^> \S+ \S+ \S+ ([\d.]+)$", out, re.M))
    sent = re.search(r"Queries sent:\s+(\d+)", out)
    if not lat:
        raise RuntimeError(f"dnsperf -v printed no latencies:\n{out[-2000:]}")

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(p * len(lat)))] * 1e6
    return {"p50": pct(0.5), "p90": pct(0.9), "p99": pct(0.99), "answered": float(len(lat)),
            "sent": float(sent.group(1)) if sent else 0.0}


AB_FIGURES = {"hit qps ratio (ours / dnsmasq)": r"ratio dae-py / dnsmasq \(mean qps\): ([\d.]+)",
              "fixed-rate p50 ratio (ours / dnsmasq)": r"ratio p50 dae-py / dnsmasq \(mean of rounds\): ([\d.]+)",
              "miss p50 added, us (mean of rounds)": r"added p50 of a miss \(per round\): (.+)",
              "asis miss p50 added, us (mean of rounds)": r"added p50 of an asis miss \(per round\): (.+)"}
ASIS_NET = "10.234.0.0/24"  # routed to the upstream namespace with --asis
ASIS_RESOLVER = "10.234.0.53"  # the hijacked clients' resolver
DIRECT_RESOLVER = "10.234.0.54"  # the same dnsmasq behind a must_direct rule


def ab(base: str, runs: int, passed: list[str]) -> None:
    """Run this bench from `base` and from this tree alternately; print every run and the medians."""
    here = str(Path(__file__).resolve().parent.parent)
    got: dict[str, dict[str, list[float]]] = {"base": {}, "this": {}}
    for i in range(runs):
        for side, tree in (("base", base), ("this", here)):
            head = subprocess.run(["git", "-C", tree, "rev-parse", "--short", "HEAD"], capture_output=True,
                                  text=True).stdout.strip()
            load = Path("/proc/loadavg").read_text().split()[:3]
            out = subprocess.run([f"{tree}/.venv/bin/python", "-m", "bench.dns_cache", *passed], cwd=here,
                                 capture_output=True, text=True, timeout=1800).stdout
            print(f"<!-- run {i + 1} {side} ({head}), load before {' '.join(load)} -->\n{out}", flush=True)
            for fig, rx in AB_FIGURES.items():
                m = re.search(rx, out)
                if m is None:
                    continue
                vals = [float(x) for x in re.findall(r"-?[\d.]+", m.group(1))]
                got[side].setdefault(fig, []).append(sum(vals) / len(vals))
    print("| figure | base runs | this runs | base median | this median |\n|---|---|---|---|---|")
    for fig in AB_FIGURES:
        b, t = got["base"].get(fig, []), got["this"].get(fig, [])
        if b and t:
            print(f"| {fig} | {', '.join(f'{x:g}' for x in b)} | {', '.join(f'{x:g}' for x in t)} | "
                  f"{statistics.median(b):g} | {statistics.median(t):g} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--trials", type=int, default=0)
    ap.add_argument("--fixed-qps", type=int, default=20000)
    ap.add_argument("--miss-qps", type=int, default=2000)
    ap.add_argument("--latency-seconds", type=int, default=5)
    ap.add_argument("--ab", metavar="BASE_TREE", help="before/after: alternate runs from this other worktree")
    ap.add_argument("--ab-runs", type=int, default=2)
    ap.add_argument("--asis", action="store_true", help="also the miss p50 of hijacked queries routed asis")
    ap.add_argument("--prefix", default="daelab", help="the lab's namespace prefix (one of your own)")
    args = ap.parse_args()
    if args.ab:
        passed = [a for a in sys.argv[1:]]
        for opt in ("--ab", "--ab-runs"):
            while opt in passed:
                j = passed.index(opt)
                del passed[j:j + 2]
        ab(args.ab, args.ab_runs, passed)
        return
    from dae_py.runtime.lab import Lab
    from tests.runtime.helpers import DnsServer, client_get, gateway, lab_config

    n_names = max(20, args.trials)
    with Lab(args.prefix) as lab, tempfile.TemporaryDirectory() as wd:
        t = lab.topo
        lab.start_http_peer(8080)
        lab.start_http_peer(8081)
        lab.start_danted(1080)
        lab.run("upstream", ["ip", "route", "add", "local", "10.232.0.0/16", "dev", "lo"], check=True)
        lab.run("gateway", ["ip", "route", "add", "10.232.0.0/16", "via", t.upstream_ip4], check=True)
        hosts = {f"n{i}.proxied.test": [f"10.232.{1 + i // 250}.{1 + i % 250}"] for i in range(n_names)}
        hosts |= {f"h{i}.bench.test": [f"10.231.2.{10 + i}"] for i in range(20)}
        lab.start_dnsmasq(5300, hosts, ttl=3600, extra=["--address=/miss.test/10.233.0.1"])
        # the baseline: dnsmasq as a caching forwarder in the gateway namespace
        lab.start_dnsmasq(5353, {}, ns="gateway", listen=[t.gateway_lan_ip4],
                          extra=[f"--server={t.upstream_ip4}#5300", "--cache-size=10000"])
        if args.asis:  # the clients' own resolver: the zone on port 53 at two addresses
            for addr in (ASIS_RESOLVER, DIRECT_RESOLVER):  # on lo: dnsmasq binds interface addresses
                lab.run("upstream", ["ip", "addr", "add", addr + "/32", "dev", "lo"], check=True)
            lab.run("gateway", ["ip", "route", "add", ASIS_NET, "via", t.upstream_ip4], check=True)
            lab.start_dnsmasq(53, {}, ttl=3600, listen=[ASIS_RESOLVER, DIRECT_RESOLVER],
                              extra=["--address=/asis.test/10.233.0.2"])
        qfile = Path(wd) / "queries"
        qfile.write_text("".join(f"h{i}.bench.test A\n" for i in range(20)))
        qfile.chmod(0o644)
        n_miss = args.miss_qps * args.latency_seconds + 1000
        mfiles = []
        for side in range(4):  # fresh names for each run: every query through the module is a miss
            f = Path(wd) / f"miss{side}"
            f.write_text("".join(f"m{side}x{i}.miss.test A\n" for i in range(n_miss)))
            f.chmod(0o644)
            mfiles.append(f)
        afiles = []
        for side in range(4 if args.asis else 0):
            f = Path(wd) / f"asis{side}"
            f.write_text("".join(f"a{side}x{i}.asis.test A\n" for i in range(n_miss)))
            f.chmod(0o644)
            afiles.append(f)
        rules = [f"dip({DIRECT_RESOLVER}) -> must_direct"] if args.asis else []
        rules.append("domain(suffix: proxied.test) -> proxy")
        asis_rule = '      rules:\n        - "qname(suffix: asis.test) -> asis"\n' if args.asis else ""
        cfg = lab_config(t, rules=rules) + f"""\
dns:
  bind: '{t.gateway_lan_ip4}:53'
  upstream:
    zone: 'udp://{t.upstream_ip4}:5300'
  routing:
    request:
{asis_rule}      fallback: zone
"""
        with DnsServer(lab), gateway(lab, cfg, Path(wd) / "gw") as gw:
            for i in range(20):  # warm both caches
                for port in (53, 5353):
                    q = dns.message.make_query(f"h{i}.bench.test", "A")
                    with lab.socket("client", type=2) as s:
                        dns.query.udp(q, t.gateway_lan_ip4, port=port, timeout=3, sock=s)
            rows = []
            for rnd in range(2):  # alternate, so neither side always runs on a warmer machine
                for name, port in (("dae-py DNS module", 53), ("dnsmasq (caching forwarder)", 5353)):
                    r = dnsperf(lab, t.gateway_lan_ip4, port, qfile, args.seconds, args.clients)
                    rows.append((rnd, name, r))
            print(f"# DNS cache hits, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
            print(f"dnsperf -l {args.seconds} -c 4 -q {args.clients} -T 1, 20 names, all cache hits\n")
            print("| round | server | qps | lost | avg latency ms |\n|---|---|---|---|---|")
            for rnd, name, r in rows:
                print(f"| {rnd + 1} | {name} | {r['qps']:.0f} | {r['lost']:.0f} | {r['avg_ms']:.3f} |")
            ours = sum(r["qps"] for _, n, r in rows if n.startswith("dae")) / 2
            base = sum(r["qps"] for _, n, r in rows if n.startswith("dnsmasq")) / 2
            print(f"\nratio dae-py / dnsmasq (mean qps): {ours / base:.2f}\n")
            ls = args.latency_seconds
            lat_rows = []
            for rnd in range(2):
                for name, port in (("dae-py DNS module", 53), ("dnsmasq (caching forwarder)", 5353)):
                    lat_rows.append((rnd, name, dnsperf_latency(lab, t.gateway_lan_ip4, port, qfile, ls,
                                                                args.fixed_qps)))
            print(f"cache hits at a fixed {args.fixed_qps} qps (dnsperf -Q {args.fixed_qps} -q 500 -v, {ls} s), "
                  "latency in us\n")
            print("| round | server | p50 | p90 | p99 | answered / sent |\n|---|---|---|---|---|---|")
            for rnd, name, r in lat_rows:
                print(f"| {rnd + 1} | {name} | {r['p50']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | "
                      f"{r['answered']:.0f} / {r['sent']:.0f} |")
            o50 = sorted(r["p50"] for _, n, r in lat_rows if n.startswith("dae"))
            b50 = sorted(r["p50"] for _, n, r in lat_rows if n.startswith("dnsmasq"))
            print(f"\nratio p50 dae-py / dnsmasq (mean of rounds): {sum(o50) / sum(b50):.2f}\n")
            miss_rows = []
            for rnd in range(2):
                for name, server, port in (("via the DNS module (miss)", t.gateway_lan_ip4, 53),
                                           ("the zone's dnsmasq directly", t.upstream_ip4, 5300)):
                    miss_rows.append((rnd, name, dnsperf_latency(lab, server, port, mfiles[2 * rnd + (port != 53)],
                                                                 ls, args.miss_qps)))
            print(f"cache misses at {args.miss_qps} qps, a fresh name per query, latency in us\n")
            print("| round | path | p50 | p90 | p99 | answered / sent |\n|---|---|---|---|---|---|")
            for rnd, name, r in miss_rows:
                print(f"| {rnd + 1} | {name} | {r['p50']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | "
                      f"{r['answered']:.0f} / {r['sent']:.0f} |")
            added = [a[2]["p50"] - b[2]["p50"] for a, b in zip(miss_rows[::2], miss_rows[1::2], strict=True)]
            print(f"\nadded p50 of a miss (per round): {', '.join(f'{x:.0f} us' for x in added)}\n")
            if args.asis:
                asis_rows = []
                for rnd in range(2):
                    for name, server in (("hijacked, asis (miss)", ASIS_RESOLVER),
                                         ("the same dnsmasq, must_direct", DIRECT_RESOLVER)):
                        asis_rows.append((rnd, name, dnsperf_latency(
                            lab, server, 53, afiles[2 * rnd + (server == DIRECT_RESOLVER)], ls, args.miss_qps)))
                print(f"hijacked cache misses routed asis at {args.miss_qps} qps, a fresh name per query, "
                      "latency in us\n")
                print("| round | path | p50 | p90 | p99 | answered / sent |\n|---|---|---|---|---|---|")
                for rnd, name, r in asis_rows:
                    print(f"| {rnd + 1} | {name} | {r['p50']:.0f} | {r['p90']:.0f} | {r['p99']:.0f} | "
                          f"{r['answered']:.0f} / {r['sent']:.0f} |")
                added = [a[2]["p50"] - b[2]["p50"] for a, b in zip(asis_rows[::2], asis_rows[1::2], strict=True)]
                print(f"\nadded p50 of an asis miss (per round): {', '.join(f'{x:.0f} us' for x in added)}\n")
            if args.trials:
                wrong = 0
                for i in range(args.trials):
                    q = dns.message.make_query(f"n{i}.proxied.test", "A")
                    with lab.socket("client", type=2) as s:
                        reply = dns.query.udp(q, t.gateway_lan_ip4, timeout=5, sock=s)
                    ip = reply.answer[0][0].address
                    if client_get(lab, ip, 8081)["peer"] != t.upstream_ip4:
                        wrong += 1
                print(f"first connection after a fresh answer routed by domain: {args.trials - wrong} of {args.trials}")
            print(f"\ngateway alive: {gw.alive}", file=sys.stderr)


if __name__ == "__main__":
    main()
