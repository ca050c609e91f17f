"""Compile time and peak memory of `dae-compile` on a 100k-domain + 10k-CIDR config.

    .venv/bin/python -m bench.compile_time [--runs 5] [--domains 100000] [--cidrs 10000] [--base DIR]

Configs (generated into a temp dir):
  tiny      3 rules, a handful of values (the baseline: interpreter start-up, imports, clang)
  geodata   `domain(geosite:bench)` with N domains + `dip(geoip:bench)` with M CIDRs, from
            geosite.dat/geoip.dat files (how dae users write geosite:cn / geoip:cn)
  inline    the same N domains and M CIDRs written inline in two rule strings
Each is compiled by the real CLI in a subprocess (`.venv/bin/dae-compile CONFIG -o OUT -q`),
`runs` times, interleaved in a shuffled order; wall time is measured around the process and
CPU time and peak RSS come from os.wait4's rusage (ru_maxrss is the largest resident set of the
process or any child it waited for, i.e. python or clang, whichever is larger). Then one
in-process compile of each big config gives a breakdown by stage and tracemalloc's peak of
Python allocations (a separate run: tracemalloc slows Python down).

--base DIR compares this checkout with another source tree (e.g. `git archive BASE | tar -x -C DIR`):
its CLI runs are interleaved with this checkout's in the same shuffled rounds, and a table of
ratios follows. Both trees then run as `python -m dae_py.compiler.cli` with PYTHONPATH set to a
directory of symlinks whose `dae_py` package maps to that tree's folders (the editable install's
finder comes after PYTHONPATH, so the shim wins); the stage breakdown runs in a subprocess per
tree, this bench's stage timer wrapped around that tree's compiler. DIR must have the `dae_py`
layout (commit cdd15ff or later).
"""
from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import configs
from .common import REPO, machine_note, print_machine

DAE_COMPILE = REPO / ".venv" / "bin" / "dae-compile"


PACKAGE_FOLDERS = ("compiler", "contract", "runtime", "templates", "schemas")
SHIMS: dict[Path, Path] = {}


def _remove_shims() -> None:
    for shim in SHIMS.values():
        shutil.rmtree(shim, ignore_errors=True)


def tree_shim(tree: Path) -> Path:
    """A directory whose `dae_py` package is `tree`'s (symlinks to its package-dir folders), next
    to this checkout's `bench`: with it first on PYTHONPATH, a subprocess imports `tree`'s code."""
    tree = tree.resolve()
    if tree in SHIMS:
        return SHIMS[tree]
    if not (tree / "dae_py" / "__init__.py").is_file():
        raise SystemExit(f"--base {tree}: no dae_py/ package (a tree from before commit cdd15ff)")
    shim = Path(tempfile.mkdtemp(prefix="compile-time-shim-"))
    (shim / "dae_py").mkdir()
    (shim / "dae_py" / "__init__.py").symlink_to(tree / "dae_py" / "__init__.py")
    for name in PACKAGE_FOLDERS:
        if (tree / name).is_dir():
            (shim / "dae_py" / name).symlink_to(tree / name)
    (shim / "bench").symlink_to(REPO / "bench")
    SHIMS[tree] = shim
    if len(SHIMS) == 1:
        atexit.register(_remove_shims)
    return shim


def tree_env(tree: Path | None) -> dict[str, str] | None:
    """The environment that makes a subprocess import `dae_py` from `tree` (None: this checkout)."""
    if tree is None:
        return None
    return {**os.environ, "PYTHONPATH": str(tree_shim(tree))}


def run_cli(config: Path, out: Path, strategy: str, tree: Path | None = None) -> dict[str, float]:
    if out.exists():
        shutil.rmtree(out)
    head = [str(DAE_COMPILE)] if tree is None else [sys.executable, "-m", "dae_py.compiler.cli"]
    cmd = [*head, str(config), "-o", str(out), "-q", "--strategy", strategy]
    t0 = time.perf_counter()
    # From the shim: `python -m` puts the working directory first on sys.path, before PYTHONPATH.
    cwd = None if tree is None else tree_shim(tree)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=tree_env(tree), cwd=cwd)
    _, status, ru = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode() if proc.stderr else ""
    proc.stdout and proc.stdout.close()
    proc.stderr and proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"dae-compile {config.name} failed ({proc.returncode}):\n{err[-2000:]}")
    return {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_mb": ru.ru_maxrss / 1024}


@contextlib.contextmanager
def stage_timer() -> Iterator[dict[str, float]]:
    """Patch the pipeline's stage functions to accumulate their wall time by name."""
    import dae_py.compiler.check as check
    import dae_py.compiler.emit as emit
    import dae_py.compiler.geodata as geodata
    import dae_py.compiler.pipeline as pl

    acc: dict[str, float] = {}
    patched: list[tuple[Any, str, Any]] = []

    def wrap(owner: Any, attr: str, label: str) -> None:
        fn: Callable[..., Any] = getattr(owner, attr)

        def timed(*a: Any, **kw: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                acc[label] += time.perf_counter() - t0

        patched.append((owner, attr, fn))
        setattr(owner, attr, timed)
        acc[label] = 0.0  # wrap order = print order

    wrap(pl, "load_config", "load YAML (ruamel)")
    wrap(pl, "check_schema", "schema (jsonschema)")
    wrap(check.RoutingChecker, "build", "rules -> IR (parse, check, geodata)")
    wrap(check, "parse_rule", "  of which: parse of rule strings")
    wrap(geodata, "read_geosite", "  of which: read geosite.dat")
    wrap(geodata, "read_geoip", "  of which: read geoip.dat")
    wrap(pl, "optimise", "passes")
    wrap(emit, "render", "render C (jinja)")
    wrap(pl, "ir_to_json", "ir.json")
    wrap(emit, "write_build", "write build (incl. clang, map files)")
    wrap(emit, "compile_c", "  of which: clang")
    try:
        yield acc
    finally:
        for owner, attr, fn in reversed(patched):
            setattr(owner, attr, fn)


def in_process(config: Path, out: Path, strategy: str) -> dict[str, Any]:
    from dae_py.compiler.pipeline import compile_config

    if out.exists():
        shutil.rmtree(out)
    with stage_timer() as acc:
        t0 = time.perf_counter()
        compile_config(config, out, strategy=strategy)
        total = time.perf_counter() - t0
    if out.exists():
        shutil.rmtree(out)
    tracemalloc.start()
    compile_config(config, out, strategy=strategy)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    sizes = {p.relative_to(out).as_posix(): p.stat().st_size for p in out.rglob("*") if p.is_file()}
    return {"total": total, "stages": dict(acc), "py_peak_mb": peak / 2**20, "sizes": sizes}


def in_process_elsewhere(config: Path, out: Path, strategy: str, tree: Path) -> dict[str, Any]:
    """in_process() in a subprocess whose `dae_py` comes from `tree` (see tree_shim)."""
    shim = tree_shim(tree)
    code = ("import json, sys; from pathlib import Path; from bench.compile_time import in_process; "
            "print(json.dumps(in_process(Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3])))")
    proc = subprocess.run([sys.executable, "-c", code, str(config), str(out), strategy], cwd=shim,
                          env={**os.environ, "PYTHONPATH": str(shim)}, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def load_time(out: Path) -> float:
    from dae_py.runtime.bpf import BpfObject
    from dae_py.runtime.build import Build, load_tables

    t0 = time.perf_counter()
    b = Build.open(out)
    with BpfObject(b.object_path) as obj:
        obj.load()
        load_tables(obj, b)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--domains", type=int, default=100_000)
    ap.add_argument("--cidrs", type=int, default=10_000)
    ap.add_argument("--strategies", nargs="*", default=["auto"],
                    help="strategies to compile the big configs with (default: auto)")
    ap.add_argument("--no-breakdown", action="store_true", help="skip the in-process stage breakdown")
    ap.add_argument("--no-load", action="store_true", help="skip loading the big build into the kernel")
    ap.add_argument("--base", type=Path, default=None,
                    help="another source tree to compare with, interleaved (see the module doc)")
    args = ap.parse_args(argv)
    base = args.base.resolve() if args.base else None
    note = machine_note()
    cmd = ".venv/bin/python -m bench.compile_time " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="dae-bench-ct-") as td:
        tmp = Path(td)
        cfgs: dict[str, Path] = {}
        t0 = time.perf_counter()
        (tmp / "tiny.yaml").write_text(configs.tiny_config())
        cfgs["tiny"] = tmp / "tiny.yaml"
        (tmp / "geodata.yaml").write_text(
            configs.big_compile_config(tmp / "geo", args.domains, args.cidrs, inline=False))
        cfgs["geodata"] = tmp / "geodata.yaml"
        (tmp / "inline.yaml").write_text(configs.big_compile_config(tmp / "inl", args.domains, args.cidrs, inline=True))
        cfgs["inline"] = tmp / "inline.yaml"
        print(f"generated configs in {time.perf_counter() - t0:.1f}s: "
              + ", ".join(f"{k} {p.stat().st_size / 1e6:.2f} MB" for k, p in cfgs.items())
              + f"; geosite.dat {(tmp / 'geo' / 'geosite.dat').stat().st_size / 1e6:.2f} MB, "
              f"geoip.dat {(tmp / 'geo' / 'geoip.dat').stat().st_size / 1e6:.2f} MB", file=sys.stderr)
        jobs = [("tiny", "auto")] + [(k, s) for k in ("geodata", "inline") for s in args.strategies]
        # With --base, this checkout goes through a shim too, so both start alike.
        trees: dict[str, Path | None] = {"this": REPO, "base": base} if base else {"this": None}
        runs = [(j, t) for j in jobs for t in trees]
        samples: dict[tuple[tuple[str, str], str], list[dict[str, float]]] = {r: [] for r in runs}
        failed: dict[tuple[tuple[str, str], str], str] = {}
        rng = random.Random(0)
        for r in range(args.runs):
            order = runs[:]
            rng.shuffle(order)
            for j, t in order:
                if (j, t) in failed:
                    continue
                try:
                    samples[(j, t)].append(run_cli(cfgs[j[0]], tmp / f"out-{t}-{j[0]}-{j[1]}", j[1], trees[t]))
                except RuntimeError as exc:
                    failed[(j, t)] = str(exc).strip().splitlines()[-1][:160]
            print(f"run {r + 1}/{args.runs} done", file=sys.stderr, flush=True)
        breakdown: dict[tuple[tuple[str, str], str], dict[str, Any]] = {}
        if not args.no_breakdown:
            for j in jobs[1:]:
                for t, tree in trees.items():
                    if (j, t) in failed:
                        continue
                    out = tmp / f"bd-{t}-{j[0]}-{j[1]}"
                    # With --base, both trees run in a fresh subprocess each, alike.
                    breakdown[(j, t)] = (in_process(cfgs[j[0]], out, j[1]) if base is None
                                         else in_process_elsewhere(cfgs[j[0]], out, j[1], tree or REPO))
        loads = {}
        if not args.no_load:
            for j in jobs:
                if (j, "this") not in failed:
                    loads[j] = load_time(tmp / f"out-this-{j[0]}-{j[1]}")

    print_machine(note)
    print(f"# command (as root, from the checkout): {cmd.strip()}")
    print(f"# {args.runs} interleaved runs per config; median (min-max)\n")
    for t in trees:
        if base:
            print(f"\n## {'this checkout' if t == 'this' else f'base tree {base}'}\n")
        print("| config | strategy | wall s | CPU s | peak RSS MB | wall - tiny | load into kernel s |")
        print("|---|---|---|---|---|---|---|")
        tiny = samples[(("tiny", "auto"), t)]
        tiny_wall = statistics.median(s["wall"] for s in tiny) if tiny else 0.0
        for j in jobs:
            if (j, t) in failed:
                print(f"| {j[0]} | {j[1]} | FAILED: {failed[(j, t)]} | | | | |")
                continue
            ss = samples[(j, t)]

            def col(k: str, nd: int = 2, ss: list[dict[str, float]] = ss) -> str:
                v = [s[k] for s in ss]
                return f"{statistics.median(v):.{nd}f} ({min(v):.{nd}f}-{max(v):.{nd}f})"

            extra = statistics.median(s["wall"] for s in ss) - tiny_wall
            load = f"{loads[j]:.2f}" if t == "this" and j in loads else "-"
            print(f"| {j[0]} | {j[1]} | {col('wall')} | {col('cpu')} | {col('maxrss_mb', 0)} | +{extra:.2f} | {load} |")
    if base:
        print("\n## base / this (medians; >1 means this checkout is faster or smaller)\n")
        print("| config | strategy | wall s base -> this | ratio | CPU s base -> this | ratio "
              "| peak RSS MB base -> this |")
        print("|---|---|---|---|---|---|---|")
        for j in jobs:
            if (j, "this") in failed or (j, "base") in failed:
                continue
            m = {t: {k: statistics.median(s[k] for s in samples[(j, t)]) for k in ("wall", "cpu", "maxrss_mb")}
                 for t in trees}
            b, h = m["base"], m["this"]
            print(f"| {j[0]} | {j[1]} | {b['wall']:.2f} -> {h['wall']:.2f} | {b['wall'] / h['wall']:.2f}x | "
                  f"{b['cpu']:.2f} -> {h['cpu']:.2f} | {b['cpu'] / h['cpu']:.2f}x | "
                  f"{b['maxrss_mb']:.0f} -> {h['maxrss_mb']:.0f} |")
    for (j, t), bd in breakdown.items():
        who = f" [{t}]" if base else ""
        print(f"\nStage breakdown{who}, in-process compile of `{j[0]}` ({j[1]}): total {bd['total']:.2f} s; "
              f"tracemalloc peak of Python allocations {bd['py_peak_mb']:.0f} MB")
        for k, v in bd["stages"].items():
            if v:
                sub = k.startswith("  ")
                print(f"{'    ' if sub else '  '}- {k.strip()}: {v:.2f} s")
        big = sorted(bd["sizes"].items(), key=lambda kv: -kv[1])[:5]
        print("  - largest outputs: " + ", ".join(f"{k} {v / 1e6:.2f} MB" for k, v in big))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
