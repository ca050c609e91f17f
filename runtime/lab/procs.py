"""Starting processes inside a namespace and making sure they all die.

Why `nsenter --net=/run/netns/NAME` and not `ip netns exec`: the latter also unshares the mount
namespace and remounts /sys, which hides /sys/fs/bpf (pinned maps and programs) and the cgroup2
mount from the child. nsenter only switches the network namespace and then execs, so the pid we
get from Popen is the real server's pid.

Every process is started in its own session (process group) so a kill reaches the children a
server forks (danted forks its negotiate/request/io children), and descendants that left the
group are found through /proc before the kill.
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .nsutil import netns_path

log = logging.getLogger(__name__)


def nsenter_argv(ns: str | None, argv: Sequence[str]) -> list[str]:
    """argv that runs `argv` in network namespace `ns` (None: the current namespace)."""
    argv = [str(a) for a in argv]
    if ns is None:
        return argv
    return ["nsenter", f"--net={netns_path(ns)}", "--", *argv]


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces: split after the last ')'.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry))
    return children


def descendants(pid: int) -> list[int]:
    """All live descendants of `pid` (children first), from a /proc walk."""
    children = _children_map()
    out: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop(0)
        out.append(child)
        todo.extend(children.get(child, []))
    return out


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a process we may not signal counts; a zombie does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie is dead for our purposes; its parent (maybe us) reaps it.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def kill_pids(pids: Sequence[int], grace: float = 3.0) -> None:
    """SIGTERM `pids`, wait up to `grace` seconds, then SIGKILL what is left."""
    pids = [p for p in pids if p > 1 and p != os.getpid()]
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 2.0)
        while time.monotonic() < deadline:
            pids = [p for p in pids if pid_alive(p)]
            if not pids:
                return
            time.sleep(0.02)
    if pids:
        log.error("processes survived SIGKILL: %s", pids)


def kill_tree(proc: subprocess.Popen[Any], grace: float = 3.0) -> int | None:
    """Stop `proc`, its process group and every descendant; reap it; return its exit code."""
    if proc.poll() is None:
        pids = [proc.pid, *descendants(proc.pid)]
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        kill_pids(pids, grace)
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        log.error("pid %d did not exit after SIGKILL", proc.pid)
        return None


class ProcessTracker:
    """Keeps every process the lab started so teardown can kill them all."""

    def __init__(self) -> None:
        self._procs: list[subprocess.Popen[Any]] = []
        self._lock = threading.Lock()

    def popen(self, ns: str | None, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` in namespace `ns` in a new session; Popen keywords pass through."""
        kw.setdefault("start_new_session", True)
        kw.setdefault("stdin", subprocess.DEVNULL)
        full = nsenter_argv(ns, argv)
        proc = subprocess.Popen(full, **kw)
        log.debug("started pid %d in %s: %s", proc.pid, ns or "<root ns>", " ".join(full))
        with self._lock:
            self._procs.append(proc)
        return proc

    def run(
        self,
        ns: str | None,
        argv: Sequence[str],
        *,
        timeout: float | None = 60.0,
        check: bool = False,
        input: str | bytes | None = None,  # noqa: A002 - mirrors subprocess.run
        capture_output: bool = True,
        text: bool = True,
        **kw: Any,
    ) -> subprocess.CompletedProcess[Any]:
        """Like subprocess.run, inside `ns`, with a default timeout so a test never hangs."""
        if capture_output:
            kw.setdefault("stdout", subprocess.PIPE)
            kw.setdefault("stderr", subprocess.PIPE)
        if input is not None:
            kw["stdin"] = subprocess.PIPE
        proc = self.popen(ns, argv, text=text, **kw)
        try:
            out, err = proc.communicate(input, timeout=timeout)
        except BaseException:
            kill_tree(proc)
            raise
        finally:
            self.forget(proc)
        result = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
        if check:
            result.check_returncode()
        return result

    def forget(self, proc: subprocess.Popen[Any]) -> None:
        with self._lock:
            if proc in self._procs:
                self._procs.remove(proc)

    def kill(self, proc: subprocess.Popen[Any], grace: float = 3.0) -> int | None:
        """Kill one tracked process tree and stop tracking it."""
        code = kill_tree(proc, grace)
        self.forget(proc)
        return code

    def kill_all(self, grace: float = 3.0) -> None:
        """Kill every tracked process tree, newest first (clients before servers)."""
        with self._lock:
            procs = list(reversed(self._procs))
            self._procs.clear()
        # Signal all trees at once so the grace periods overlap instead of adding up.
        pids: list[int] = []
        for proc in procs:
            if proc.poll() is None:
                pids += [proc.pid, *descendants(proc.pid)]
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except (ProcessLookupError, PermissionError):
                    pass
        kill_pids(pids, grace)
        for proc in procs:
            kill_tree(proc, grace)

    @property
    def pids(self) -> list[int]:
        with self._lock:
            return [p.pid for p in self._procs]
