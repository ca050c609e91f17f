"""A child cgroup for a test: the runtime's pname() hooks go there (a root attach would hook the
whole machine), and the test's local programs run inside it. Removed at the end, whatever
happened; `attached` says which BPF programs a cgroup holds (bpftool), for the teardown check."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from dae_py.runtime.datapath.cgroup import cgroup2_mount


@contextlib.contextmanager
def child_cgroup(tag: str) -> Iterator[Path]:
    root = cgroup2_mount()
    path = root / f"dae-py-test-{tag}-{os.getpid()}"
    path.mkdir()
    try:
        yield path
    finally:
        procs = path / "cgroup.procs"
        for _ in range(50):  # processes still inside go back to the root, then the directory goes
            left = procs.read_text().split()
            for pid in left:
                with contextlib.suppress(OSError):
                    (root / "cgroup.procs").write_text(pid)
            try:
                path.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def attached(path: Path) -> list[dict[str, object]]:
    """The programs attached to `path` itself (bpftool cgroup show)."""
    out = subprocess.run(["bpftool", "cgroup", "show", str(path), "-j"], check=True, capture_output=True,
                         text=True).stdout.strip()
    return list(json.loads(out)) if out else []


def run_in(cgroup: Path, argv: list[str]) -> list[str]:
    """`sh -c` that moves itself into `cgroup`, then execs argv (argv[0] names the process)."""
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in argv)
    return ["sh", "-c", f"echo $$ > {cgroup}/cgroup.procs && exec {quoted}"]
