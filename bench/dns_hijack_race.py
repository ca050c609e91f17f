"""The first connection after each hijacked DNS answer, routed by its domain: N of N?

    .venv/bin/python -m bench.dns_hijack_race [--trials 10000] [--json FILE]

The lab of tests/dnsmodule/hijack_lab.py: the client asks an arbitrary resolver address on
port 53 (v4 or v6, UDP or every third time TCP; hijacked into the DNS module by the program)
for a fresh name's one address (alternately a proxied and a direct name, each on an address
no other name has), and connects to it at once; the HTTP peer says whether danted (proxied)
or the client itself (direct) reached it. dae sends the answer before its bits are in the
kernel map, so some of its first connections go the wrong way; the module binds first.
Prints Markdown (and JSON with --json).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=10000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    from dae_py.runtime.lab import Lab
    from tests.dnsmodule import hijack_lab as hl
    from tests.runtime.helpers import DnsServer, gateway

    load_before = os.getloadavg()[0]
    with Lab() as lab, DnsServer(lab), tempfile.TemporaryDirectory() as wd:
        lab.start_http_peer(8080)  # the groups' tcp_check_url
        lab.hijack_ca = hl.setup(lab, args.trials // 2 + 1)  # type: ignore[attr-defined]  # as the test's lab
        with gateway(lab, hl.config(lab), Path(wd)) as gw:
            gw.wait_log(r"dns hijack listening")
            n, wrong, secs = hl.first_connection_trials(lab, args.trials)
            alive = gw.alive
    result = {"trials": n, "misrouted": len(wrong), "seconds": round(secs, 1),
              "ms_per_trial": round(1000 * secs / max(n, 1), 2), "load_before": load_before,
              "load_after": os.getloadavg()[0], "gateway_alive": alive, "first_wrong": wrong[:20]}
    print(f"| trials | routed by domain | misrouted | time | per trial (query + connect) | load avg |\n"
          f"|---|---|---|---|---|---|\n"
          f"| {n:,} | {n - len(wrong):,} | {len(wrong)} | {secs:.1f} s | {result['ms_per_trial']} ms | "
          f"{load_before:.1f} -> {result['load_after']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
