"""The relay in 1 and 2 processes (issue 15, `global.relay_workers`), side by side in one run.

    .venv/bin/python -m bench.runtime.workers [--rounds 3] [--rate 1000] [--count 1000]
        [--seconds 4] [--flows 10000] [--bytes 8192]

One lab; danted, a TCP echo (7002 proxied through danted; 7003 relayed by `direct(mark)`, so the
relay is the only user-space hop) and iperf3 (5203, relayed by `direct(mark)`) in upstream.
Each round starts dae-runtime with relay_workers 1 and 2 in turn (the order alternates) and
measures, for each:
  connect   loadgen.py: `--count` new connections at `--rate`/s through relay -> danted -> echo,
            time to first echoed byte (connect_latency's "relay" mode)
  iperf3    -P 4 for `--seconds` through the relay (direct(mark) -> iperf3)
Then, once per worker count: `--flows` concurrent flows each echoing `--bytes` of its own
payload through the relay, checked by SHA-256 (checksum_flows.py).
The per-worker share of the connect block's flows is read from the workers' log lines.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.runtime.common import HERE, PY, machine_note, median, pct, raise_nofile, start_echo, tree_cpu, tune_lab

PROXY_PORT = 7002
RELAY_PORT = 7003
IPERF_PORT = 5203
MARK = 0x100


def config(topo: Any, workers: int) -> str:
    from dae_py.runtime.lab.gateway_proc import lab_config

    up = topo.upstream_ip4
    rules = [f"dip({up}) && l4proto(tcp) && dport({PROXY_PORT}) -> proxy",
             f"dip({up}) && l4proto(tcp) && dport({RELAY_PORT}, {IPERF_PORT}) -> direct(mark: {MARK:#x})"]
    return lab_config(topo, rules=rules, fallback="direct", extra_global=f"  relay_workers: {workers}")


def connect_block(lab: Any, rate: float, count: int, warmup: int) -> dict[str, Any]:
    up = lab.topo.upstream_ip4
    plan = {"rate": rate, "timeout": 3.0, "payload": 16, "blocks": [
        {"mode": "warm", "host": up, "port": PROXY_PORT, "count": warmup, "record": False},
        {"mode": "relay", "host": up, "port": PROXY_PORT, "count": count}]}
    r = lab.run("client", [PY, str(HERE / "loadgen.py")], input=json.dumps(plan), timeout=count / rate + 120)
    if r.returncode:
        raise RuntimeError(f"loadgen failed: {r.stderr[-2000:]}")
    res = json.loads(r.stdout)
    v = res["ttfb_us"].get("relay", [])
    return {"n": len(v), "p50": pct(v, 50), "p99": pct(v, 99), "errors": res["errors"].get("relay") or {}}


def iperf(lab: Any, seconds: float) -> float:
    r = lab.run("client", ["iperf3", "-c", lab.topo.upstream_ip4, "-p", str(IPERF_PORT), "-P", "4",
                           "-t", str(seconds), "-J"], timeout=seconds + 60)
    data = json.loads(r.stdout)
    if "error" in data:
        raise RuntimeError(f"iperf3 failed: {data['error']}")
    return float(data["end"]["sum_received"]["bits_per_second"]) / 1e9


def checksummed(lab: Any, flows: int, size: int) -> dict[str, Any]:
    r = lab.run("client", [PY, str(HERE / "checksum_flows.py"), lab.topo.upstream_ip4, str(RELAY_PORT),
                           "--flows", str(flows), "--bytes", str(size)], timeout=600)
    if r.returncode:
        raise RuntimeError(f"checksum_flows failed: {r.stderr[-2000:]}")
    return dict(json.loads(r.stdout))


def per_worker(log_text: str, port: int) -> dict[str, int]:
    out: dict[str, int] = {}
    for tag in re.findall(rf"(?:\[w(\d+)\] )?runtime\.relay\.tcp: tcp \S+ -> \S+:{port} ", log_text):
        key = f"w{tag}" if tag else "main"
        out[key] = out.get(key, 0) + 1
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--rate", type=float, default=1000.0)
    ap.add_argument("--count", type=int, default=1000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--flows", type=int, default=10000)
    ap.add_argument("--bytes", type=int, default=8192)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from dae_py.runtime.lab import Lab
    from dae_py.runtime.lab.gateway_proc import GatewayProcess

    raise_nofile()
    note = machine_note()
    results: dict[int, dict[str, list[Any]]] = {w: {"connect": [], "iperf": [], "share": [], "flows": []}
                                                 for w in (1, 2)}
    with Lab("benchwk") as lab, tempfile.TemporaryDirectory(prefix="bench-workers-") as tmp:
        tune_lab(lab)
        t = lab.topo
        lab.start_danted(1080)
        lab.start_http_peer(8080)
        start_echo(lab, [PROXY_PORT, RELAY_PORT])
        lab.start_iperf3(IPERF_PORT)
        for r in range(args.rounds + 1):
            last = r == args.rounds
            for w in ((1, 2) if r % 2 == 0 else (2, 1)):
                work = Path(tmp) / f"r{r}w{w}"
                work.mkdir()
                with GatewayProcess(lab, config(t, w), work) as gw:
                    if last:  # the concurrency check, once per worker count
                        results[w]["flows"].append(checksummed(lab, args.flows, args.bytes))
                        continue
                    assert gw.proc is not None
                    cpu0 = tree_cpu(gw.proc.pid)  # the runtime and its workers
                    block = connect_block(lab, args.rate, args.count, args.warmup)
                    block["cpu_us_per_conn"] = (tree_cpu(gw.proc.pid) - cpu0) / (args.count + args.warmup) * 1e6
                    results[w]["connect"].append(block)
                    results[w]["iperf"].append(iperf(lab, args.seconds))
                results[w]["share"].append(per_worker(gw.log_text(), PROXY_PORT))
                print(f"round {r} workers {w}: " + json.dumps({k: v[-1] for k, v in results[w].items() if v}),
                      flush=True)
    print(note)
    print(f"{args.rounds} interleaved rounds; connect: {args.count} new connections at {args.rate:g}/s through "
          f"relay -> danted -> echo (time to first byte, us); iperf3 -P 4 -t {args.seconds:g} relay -> iperf3")
    for w in (1, 2):
        c = results[w]["connect"]
        print(f"  workers {w}: connect p50 {median([x['p50'] for x in c]):.0f} us, "
              f"p99 {median([x['p99'] for x in c]):.0f} us, errors {[x['errors'] for x in c]}, "
              f"runtime CPU per connection {median([x['cpu_us_per_conn'] for x in c]):.0f} us; "
              f"iperf3 -P 4 {median(results[w]['iperf']):.2f} Gbit/s "
              f"(rounds {[f'{g:.2f}' for g in results[w]['iperf']]}); "
              f"flows per process {results[w]['share'][:args.rounds]}")
    ratios = [b / a for a, b in zip(results[1]["iperf"], results[2]["iperf"], strict=True)]
    print(f"  iperf3 2 workers / 1 worker, per round: {[f'{x:.2f}' for x in ratios]}; median {median(ratios):.2f}")
    for w in (1, 2):
        f = results[w]["flows"][0]
        print(f"  workers {w}: {f['flows']} concurrent flows x {args.bytes} B: {f['ok']} ok, {f['mismatch']} corrupt, "
              f"failed {f['failed'] or '-'}, at most {f['max_open']} open at once, {f['seconds']} s")
    if args.json:
        args.json.write_text(json.dumps({"note": note, "args": vars(args) | {"json": str(args.json)},
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
