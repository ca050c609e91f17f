"""A long mutation-fuzz campaign on the compiler front end: zero tracebacks, bounded time and memory.

    .venv/bin/python -m bench.fuzz_compiler --inputs 100000 --jobs 2 [--seed 1] [--save-crashes DIR]

Inputs are bench.fuzz_inputs.mutate of real configs (examples/ and the tests). By default each
input runs in a warm worker process (the compiler imported, its caches built) under an interval
timer (--timeout) and an address-space rlimit (--as-limit, a safety net); the max RSS reported is
the workers' peak, so it bounds every input's. With --fork each input runs in a child forked from
the warm worker: the worker kills it at the timeout, and wait4's rusage gives its own peak RSS
(about twice the wall time per input). A crash is
any exception other than a CompileError with diagnostics; a timeout or a killed child counts as
one too. Prints a Markdown summary (inputs, outcomes, crashes, max and p99 time, max RSS).
atheris is not used: this is a seeded mutation campaign (hypothesis drives the same mutator in CI).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import resource
import select
import signal
import sys
import tempfile
import time
from pathlib import Path

from bench.fuzz_inputs import mutate, run_front_end, seeds

SLOW_SECONDS = 2.0  # inputs slower than this are saved with the crashes, to look at


def _child(data: str | bytes, directory: Path, wfd: int, as_limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    try:
        out = run_front_end(data, directory)
        msg = json.dumps({"kind": out.kind, "detail": out.detail[-4000:]})
    except MemoryError:
        msg = json.dumps({"kind": "crash", "detail": "MemoryError (address-space limit)"})
    os.write(wfd, msg.encode())
    os._exit(0)


def _one(data: str | bytes, directory: Path, timeout: float, as_limit: int) -> tuple[str, str, float, int]:
    """(kind, detail, seconds, peak RSS in KiB) of one input in a forked child."""
    rfd, wfd = os.pipe()
    start = time.monotonic()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _child(data, directory, wfd, as_limit)
    os.close(wfd)
    chunks = []
    deadline = start + timeout
    timed_out = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            timed_out = True
            os.kill(pid, signal.SIGKILL)
            break
        ready, _, _ = select.select([rfd], [], [], left)
        if ready:
            chunk = os.read(rfd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    os.close(rfd)
    _, status, usage = os.wait4(pid, 0)
    elapsed = time.monotonic() - start
    if timed_out:
        return "crash", f"timeout after {timeout}s", elapsed, usage.ru_maxrss
    if not chunks:
        return "crash", f"child died (status {status})", elapsed, usage.ru_maxrss
    res = json.loads(b"".join(chunks))
    return res["kind"], res["detail"], elapsed, usage.ru_maxrss


class _Timeout(BaseException):
    """BaseException: no `except Exception` in the compiler may swallow it."""


def _alarm(_sig: int, _frame: object) -> None:
    raise _Timeout()


def _one_in_process(data: str | bytes, directory: Path, timeout: float) -> tuple[str, str, float, int]:
    """(kind, detail, seconds, the worker's peak RSS in KiB so far) of one input run in the worker;
    an interval timer interrupts an input that runs past `timeout`."""
    start = time.monotonic()
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        out = run_front_end(data, directory)
        kind, detail = out.kind, out.detail
    except _Timeout:
        kind, detail = "crash", f"timeout after {timeout}s"
    except MemoryError:
        kind, detail = "crash", "MemoryError (address-space limit)"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
    return kind, detail, time.monotonic() - start, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def _worker(args: tuple[int, int, int, float, int, bool]) -> dict:
    worker_id, count, seed, timeout, as_limit, fork = args
    if not fork:
        signal.signal(signal.SIGALRM, _alarm)
        resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
    rng = random.Random(seed * 1000 + worker_id)
    pool = seeds()
    directory = Path(tempfile.mkdtemp(prefix="dae-fuzz-"))
    # Warm: every child starts with the compiler imported and its caches (schema validator, lark
    # tables, Jinja environment) built, as a long-lived `dae-compile` would have them.
    for text in pool[:20]:
        run_front_end(text, directory)
    kinds: dict[str, int] = {}
    crashes: list[dict] = []
    times: list[float] = []
    max_rss = 0
    for n in range(count):
        if n and n % 5000 == 0:
            print(f"worker {worker_id}: {n}/{count} inputs, {kinds.get('crash', 0)} crashes", file=sys.stderr,
                  flush=True)
        data = mutate(rng.choice(pool), rng)
        kind, detail, elapsed, rss = (_one(data, directory, timeout, as_limit) if fork
                                      else _one_in_process(data, directory, timeout))
        kinds[kind] = kinds.get(kind, 0) + 1
        times.append(elapsed)
        max_rss = max(max_rss, rss)
        if elapsed > SLOW_SECONDS and kind != "crash":
            kind, detail = "slow", f"{elapsed:.2f} s (counted apart: over {SLOW_SECONDS} s)"
            kinds["slow"] = kinds.get("slow", 0) + 1
        if kind in ("crash", "slow") and len(crashes) < 50:
            crashes.append({"input": data if isinstance(data, str) else data.decode("utf-8", "backslashreplace"),
                            "detail": detail})
    return {"kinds": kinds, "crashes": crashes, "times": times, "max_rss_kib": max_rss}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=100_000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds per input before it counts as a crash")
    ap.add_argument("--as-limit", type=int, default=4 << 30, help="address-space rlimit per input (bytes)")
    ap.add_argument("--fork", action="store_true",
                    help="run each input in a forked child (its own RSS and a kill at the timeout); "
                         "default: in the worker, under an interval timer, RSS as the worker's peak")
    ap.add_argument("--save-crashes", type=Path, help="write the crashing inputs and tracebacks here (JSON)")
    args = ap.parse_args(argv)
    per = [args.inputs // args.jobs + (1 if i < args.inputs % args.jobs else 0) for i in range(args.jobs)]
    started = time.time()
    with mp.get_context("fork").Pool(args.jobs) as pool:
        results = pool.map(_worker, [(i, n, args.seed, args.timeout, args.as_limit, args.fork)
                                     for i, n in enumerate(per)])
    wall = time.time() - started
    kinds: dict[str, int] = {}
    for r in results:
        for k, v in r["kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    times = sorted(t for r in results for t in r["times"])
    crashes = [c for r in results for c in r["crashes"]]
    max_rss = max(r["max_rss_kib"] for r in results)
    print(f"command: {' '.join([sys.executable, '-m', 'bench.fuzz_compiler', *(argv or sys.argv[1:])])}")
    print(f"load average at the end: {os.getloadavg()}")
    print()
    print("| inputs | seeds | ok | rejected | crashes | over 2 s | max time | p99 time | median time "
          "| max RSS | wall |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    p99 = times[int(len(times) * 0.99) - 1] if times else 0.0
    med = times[len(times) // 2] if times else 0.0
    print(f"| {len(times)} | {len(seeds())} | {kinds.get('ok', 0)} | {kinds.get('rejected', 0)} | "
          f"{kinds.get('crash', 0)} | {kinds.get('slow', 0)} | {times[-1]:.2f} s | {p99 * 1000:.0f} ms | "
          f"{med * 1000:.0f} ms | "
          f"{max_rss / 1024:.0f} MiB | {wall:.0f} s |")
    if args.save_crashes:
        args.save_crashes.write_text(json.dumps(crashes, indent=1))
    for c in crashes[:5]:
        print("\n--- crash ---\n" + c["input"][:2000] + "\n" + c["detail"][-2000:], file=sys.stderr)
    return 1 if kinds.get("crash") else 0


if __name__ == "__main__":
    sys.exit(main())
