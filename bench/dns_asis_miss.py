"""CPU per hijacked cache miss routed `asis`: the callback path against the general path, in
one process, alternated, against dnsmasq on loopback (the client's 'own resolver').

    .venv/bin/python -m bench.dns_asis_miss [--misses 20000] [--window 100] [--rounds 3]

The module (tests/dnsmodule/harness.py's, real compiler config, request fallback asis) is asked
through harness.HijackTap, the hijack listener's own dispatch, `--window` queries in flight
(each answer sends the next), a fresh name per query. "general" is the same module with the
callback path declined for asis (AsisUpstreams.ready answering None, as before issue 10's asis
slice). The figure is this process's CPU time (user+system: the module, the driver, the
syscalls) per answered miss; dnsmasq's own time is not in it. Prints Markdown.
"""
from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import time
from typing import Any


def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = int(s.getsockname()[1])
    s.close()
    return port


async def one_round(port: int, fast: bool, misses: int, window: int, tag: str) -> dict[str, float]:
    from tests.dnsmodule.harness import HijackTap, config, plain, with_module

    origin = ("127.0.0.1", port)
    wires = [plain(f"{tag}x{i}.asis.test").to_wire() for i in range(misses)]

    async def body(mod: Any, b: Any) -> dict[str, float]:
        if not fast:
            mod.asis.ready = lambda _origin: None  # the general path for every asis miss
        tap = HijackTap(mod, b)
        await tap.warm(origin)
        done = asyncio.get_running_loop().create_future()
        state = {"next": 0, "answered": 0, "servfail": 0}

        def send(dst: Any, client: Any, reply: bytes) -> None:
            state["answered"] += 1
            if reply[3] & 0x0F:
                state["servfail"] += 1
            if state["next"] < misses:
                i = state["next"]
                state["next"] += 1
                tap.dispatch(wires[i], origin, ("127.0.0.2", 40000))
            if state["answered"] == misses and not done.done():
                done.set_result(None)
        tap._send = send  # type: ignore[method-assign]  # count and refill instead of queueing
        taken = mod.fast.taken
        c0, t0 = time.process_time(), time.perf_counter()
        for _ in range(window):
            i = state["next"]
            state["next"] += 1
            tap.dispatch(wires[i], origin, ("127.0.0.2", 40000))
        await asyncio.wait_for(done, 120)
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        await tap.close()
        return {"cpu_us": cpu / misses * 1e6, "qps": misses / wall, "servfail": state["servfail"],
                "fast": mod.fast.taken - taken}
    result: dict[str, float] = await with_module(config({"main": ("udp", port)}, req_fallback="asis"), body)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--misses", type=int, default=20000)
    ap.add_argument("--window", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    port = free_port()
    dnsmasq = shutil.which("dnsmasq") or "dnsmasq"
    proc = subprocess.Popen([dnsmasq, "--keep-in-foreground", "--no-resolv", "--no-hosts", "--bind-interfaces",
                             "--listen-address=127.0.0.1", f"--port={port}", "--conf-file=/dev/null", "--pid-file=",
                             "--address=/asis.test/10.233.0.2", "--cache-size=0", "--log-facility=/dev/null"])
    try:
        time.sleep(0.5)
        rows = []
        for rnd in range(args.rounds):
            for fast in (False, True):  # alternate: neither side always on a warmer machine
                tag = f"r{rnd}{'f' if fast else 'g'}"
                rows.append((rnd, fast, asyncio.run(one_round(port, fast, args.misses, args.window, tag))))
    finally:
        proc.terminate()
        proc.wait(5)
    print(f"# asis cache misses in-process, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n")
    print(f"{args.misses} misses per round, {args.window} in flight, dnsmasq on loopback\n")
    print("| round | path | CPU us per miss | misses/s | SERVFAIL | on the callback path |\n|---|---|---|---|---|---|")
    for rnd, fast, r in rows:
        print(f"| {rnd + 1} | {'callback' if fast else 'general'} | {r['cpu_us']:.1f} | {r['qps']:.0f} | "
              f"{r['servfail']:.0f} | {r['fast']:.0f} |")
    g = statistics.median(r["cpu_us"] for _, f, r in rows if not f)
    c = statistics.median(r["cpu_us"] for _, f, r in rows if f)
    print(f"\nmedian CPU per asis miss: general {g:.1f} us, callback {c:.1f} us, ratio {c / g:.2f}")


if __name__ == "__main__":
    main()
