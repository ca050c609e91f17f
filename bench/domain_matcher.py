"""The domain matcher's cost per name at dae-scale rule sets: DomainMatcher (dicts, Aho-Corasick,
an RE2 set) beside ReferenceDomainMatcher (every pattern in turn), same rules, same names, one run.

    .venv/bin/python -m bench.domain_matcher [--rules 100000] [--regexes 1000] [--names 5000] [--seed 1]

Rules: `--rules` split 40 % suffix, 40 % full, 20 % keyword over 16 domain sets (a geosite-sized
config), plus `--regexes` geosite-style regexes. Names: a third under a suffix rule, a tenth a
full rule, a tenth holding a keyword, the rest random (most real lookups miss). Each name is timed
alone (perf_counter_ns around one `bits` call, the timer's own cost subtracted), the two
matchers in alternating rounds; both must give the same bits for every name. Prints p50/p90/p99
in microseconds per name, build times, and the ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import string
import time
from collections.abc import Callable

from dae_py.contract.domains import DomainMatcher, ReferenceDomainMatcher
from dae_py.contract.ir import DomainSet

TLDS = ("com", "net", "org", "cn", "io", "test", "co.uk", "de", "jp")
SETS = 16


def label(rng: random.Random, lo: int = 3, hi: int = 12) -> str:
    return "".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(lo, hi)))


def domain(rng: random.Random) -> str:
    return f"{label(rng)}.{rng.choice(TLDS)}"


def regex(rng: random.Random, i: int) -> str:
    kinds = (lambda: rf"^{label(rng, 2, 4)}[0-9]+\.{label(rng, 3, 8)}\.com$",
             lambda: rf"(^|\.){label(rng, 4, 8)}(-[a-z]+)?\.(com|net)$",
             lambda: rf"^(www\.)?{label(rng, 3, 6)}\d{{2,4}}\.",
             lambda: rf"{label(rng, 4, 7)}.*\.{rng.choice(TLDS)}$")
    return kinds[i % len(kinds)]()


def make_rules(rng: random.Random, n: int, n_regex: int) -> tuple[tuple[DomainSet, ...], dict[str, list[str]]]:
    per: list[dict[str, list[str]]] = [{"full": [], "suffix": [], "keyword": [], "regex": []} for _ in range(SETS)]
    pools: dict[str, list[str]] = {"full": [], "suffix": [], "keyword": []}
    for i in range(n):
        r = i % 10
        kind = "suffix" if r < 4 else "full" if r < 8 else "keyword"
        pattern = label(rng, 5, 10) if kind == "keyword" else domain(rng)
        per[rng.randrange(SETS)][kind].append(pattern)
        pools[kind].append(pattern)
    for i in range(n_regex):
        per[rng.randrange(SETS)]["regex"].append(regex(rng, i))
    sets = tuple(DomainSet(bit=b, full=tuple(p["full"]), suffix=tuple(p["suffix"]), keyword=tuple(p["keyword"]),
                           regex=tuple(p["regex"])) for b, p in enumerate(per))
    return sets, pools


def make_names(rng: random.Random, n: int, pools: dict[str, list[str]]) -> list[str]:
    names = []
    for _ in range(n):
        x = rng.random()
        if x < 0.33:
            names.append(f"{label(rng)}.{label(rng)}.{rng.choice(pools['suffix'])}")
        elif x < 0.43:
            names.append(rng.choice(pools["full"]))
        elif x < 0.53:
            names.append(f"x{rng.choice(pools['keyword'])}y.{domain(rng)}")
        else:
            names.append(f"{label(rng)}.{label(rng)}.{domain(rng)}")
    return names


def timer_cost() -> int:
    clock = time.perf_counter_ns
    samples = []
    for _ in range(20000):
        t0 = clock()
        samples.append(clock() - t0)
    return int(statistics.median(samples))


def time_each(fn: Callable[[str], int], names: list[str], overhead: int) -> list[float]:
    clock = time.perf_counter_ns
    out = []
    for name in names:
        t0 = clock()
        fn(name)
        out.append(max(0, clock() - t0 - overhead) / 1000)
    return out


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(p * len(s)))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--regexes", type=int, default=1000)
    ap.add_argument("--names", type=int, default=5000)
    ap.add_argument("--reference-names", type=int, default=600, help="the reference is ~1000x slower")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    sets, pools = make_rules(rng, args.rules, args.regexes)
    names = make_names(rng, args.names, pools)
    t0 = time.perf_counter()
    fast = DomainMatcher.from_sets(sets)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = ReferenceDomainMatcher.from_sets(sets)
    t_ref = time.perf_counter() - t0
    ref_names = names[:args.reference_names]
    mismatches = [n for n in ref_names if fast.bits(n) != ref.bits(n)]
    assert not mismatches, f"the matchers disagree on {len(mismatches)} names, e.g. {mismatches[:3]}"
    hits = sum(1 for n in names if fast.bits(n))
    overhead = timer_cost()
    for n in names[:500]:  # warm both
        fast.bits(n)
    times: dict[str, list[float]] = {"new": [], "reference": []}
    for _ in range(args.rounds):
        times["new"] += time_each(fast.bits, names, overhead)
        times["reference"] += time_each(ref.bits, ref_names, overhead)
    out = {
        "rules": args.rules, "regexes": args.regexes, "names": len(names), "names_matching": hits,
        "regex_set": fast.regexes.uses_set, "timer_overhead_ns": overhead, "load": os.getloadavg(),
        "build_s": {"new": round(t_fast, 2), "reference": round(t_ref, 2)},
    }
    for k, xs in times.items():
        out[k] = {"p50_us": round(pct(xs, 0.5), 2), "p90_us": round(pct(xs, 0.9), 2),
                  "p99_us": round(pct(xs, 0.99), 2), "mean_us": round(statistics.fmean(xs), 2), "n": len(xs)}
    out["reference_over_new_p50"] = round(out["reference"]["p50_us"] / max(out["new"]["p50_us"], 1e-3), 1)
    print(json.dumps(out, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
