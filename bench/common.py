"""Shared pieces of the benchmarks: which strategies exist, compiling into a work dir, loading a
compiled build, interleaved BPF_PROG_TEST_RUN timing, and a note about the machine."""
from __future__ import annotations

import os
import platform
import random
import statistics
import subprocess
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from dae_py.compiler import pipeline
from dae_py.runtime.bpf import BpfError, BpfObject, prog_test_run
from dae_py.runtime.build import Build, load_tables
from dae_py.runtime.domain_map import DomainBindings

REPO = Path(__file__).resolve().parent.parent


def available_strategies() -> list[str]:
    """The concrete strategies this checkout can emit ('auto' only picks among them)."""
    out = []
    if (REPO / "compiler" / "emit_linear.py").exists():
        out.append("linear")
    if (REPO / "compiler" / "emit_bitvector.py").exists():
        out.append("bitvector")
    return out


def short_error(exc: BaseException) -> str:
    text = str(exc)
    for line in text.splitlines():
        if "error:" in line:
            return line.split("error:", 1)[1].strip()[:120]
    return text.splitlines()[0][:120] if text else type(exc).__name__


@dataclass
class Compiled:
    strategy: str
    build_dir: Path | None = None
    seconds: float = 0.0
    error: str | None = None
    checked: Any = None
    obj: BpfObject | None = None
    build: Build | None = None

    def load(self) -> None:
        assert self.build_dir is not None
        self.build = Build.open(self.build_dir)
        obj = BpfObject(self.build.object_path)
        try:
            obj.load()
            load_tables(obj, self.build)
        except BaseException:
            obj.close()
            raise
        self.obj = obj

    def bind_domain(self, dst: Any, bits: int | None) -> None:
        """Bind `bits` to `dst` in the loaded program's domain maps (None: remove the entry), as
        the DNS module would; nothing for a program without domain() rules."""
        assert self.obj is not None and self.build is not None
        b = DomainBindings.of(self.obj, self.build.domain_words)
        if b is None:
            return
        if bits is None:
            b.unbind(dst)
        else:
            b.bind(dst, bits)

    def close(self) -> None:
        if self.obj is not None:
            self.obj.close()
            self.obj = None


def compile_one(text: str, name: str, out_dir: Path, strategy: str) -> Compiled:
    c = Compiled(strategy=strategy)
    t0 = time.perf_counter()
    try:
        c.checked = pipeline.compile_config(None, out_dir, text=text, name=name, strategy=strategy)
        c.build_dir = out_dir
    except Exception as exc:  # noqa: BLE001 - any failure, CompileError or not, is a result here
        c.error = short_error(exc)
    c.seconds = time.perf_counter() - t0
    return c


def check_only(text: str, name: str) -> Any:
    return pipeline.compile_config(None, None, text=text, name=name)


@dataclass
class Timed:
    label: str
    fd: int
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples) if self.samples else float("nan")

    @property
    def spread(self) -> float:
        """(max - min) / median of the runs, as a noise indicator."""
        if len(self.samples) < 2:
            return 0.0
        return (max(self.samples) - min(self.samples)) / self.median


def time_interleaved(progs: list[Timed], data: bytes, repeat: int, runs: int, seed: int = 0) -> None:
    """`runs` rounds; in each round every program runs once (repeat x) in a shuffled order, so
    slow drifts of the shared machine hit all programs alike."""
    rng = random.Random(seed)
    for p in progs:  # warm-up (JIT'd code and map data into cache)
        prog_test_run(p.fd, data, repeat=max(1, repeat // 10), data_out_size=0)
    for _ in range(runs):
        order = progs[:]
        rng.shuffle(order)
        for p in order:
            r = prog_test_run(p.fd, data, repeat=repeat, data_out_size=0)
            p.samples.append(float(r.duration_ns))


def retval(fd: int, data: bytes) -> int:
    r = prog_test_run(fd, data, repeat=1, data_out_size=0).retval
    return r - (1 << 32) if r >= 1 << 31 else r


def machine_note() -> dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass

    def run(cmd: list[str]) -> str:
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO).stdout.strip().splitlines()[0]
        except Exception:  # noqa: BLE001 - whatever the tool did, the note says "?"
            return "?"

    try:
        load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        load = "?"
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "kernel": platform.release(),
        "cpu": f"{cpu} x {os.cpu_count()}",
        "loadavg": load,
        "python": platform.python_version(),
        "clang": run(["clang", "--version"]),
        "git": run(["git", "rev-parse", "--short", "HEAD"]) + (" (+uncommitted changes)" if run(
            ["git", "status", "--porcelain", "--untracked-files=no"]) not in ("", "?") else ""),
        "strategies": ", ".join(available_strategies()),
    }


def print_machine(note: dict[str, str]) -> None:
    for k, v in note.items():
        print(f"# {k}: {v}")


__all__ = ["BpfError", "Compiled", "Timed", "available_strategies", "check_only", "compile_one",
           "machine_note", "print_machine", "retval", "time_interleaved"]
