"""The datapath's journal: every kernel change is written here *before* it is made.

If the runtime dies without tearing down (SIGKILL, OOM, a power cut of the service manager),
the qdiscs, filters, rules, routes, changed sysctls and BPF pins it left behind would keep
steering traffic into a proxy that no longer exists. `cleanup(state_path)` reads this file
and undoes everything in it, last change first. Writing ahead means the file may name a change
that never happened (crash between write and change); every undo therefore tolerates its
object being absent, and only removes what still carries our mark (filter name, route/rule
protocol tag, a sysctl still holding the value we wrote), so an undo can never hit something
that isn't ours. Entries are dropped from the file as they are undone, so an interrupted
cleanup can simply be run again.

Format (JSON, rewritten atomically: temp file, fsync, rename):

    {"version": 1, "pid": 1234, "started": 1764115200.0, "netns": "gw" | null,
     "seq": 7, "entries": [{"id": 1, "kind": "sysctl", "netns": ..., ...}, ...]}

Entry kinds: "sysctl", "rule", "route", "qdisc", "filter", "pin" (fields: see `record_*` uses
in `Datapath` and `_undo` below).

A `<state>.lock` file held with flock(2) for as long as a `Datapath` is active marks the state
as owned by a live process; the kernel drops the lock when the process dies, which is exactly
when `cleanup` should be allowed to run. `cleanup` refuses to touch a state that is locked.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyroute2.netlink.exceptions import NetlinkError

from . import policy_routing, sysctls, tc
from ._netns import NetnsNotFound, netns_exists, open_iproute

log = logging.getLogger(__name__)

DEFAULT_STATE_PATH = Path("/run/dae-py/state.json")
VERSION = 1
KINDS = ("sysctl", "rule", "route", "qdisc", "filter", "pin")


def default_state_path() -> Path:
    """state.json in the service's runtime directory when systemd made one (RuntimeDirectory=
    sets $RUNTIME_DIRECTORY; the unit's user owns it), else DEFAULT_STATE_PATH (root's)."""
    runtime_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime_dir) / "state.json" if runtime_dir else DEFAULT_STATE_PATH


class StateBusy(RuntimeError):
    """Another live process holds the state (its lock): cleaning up now would pull the
    datapath out from under it."""


class StateCorrupt(RuntimeError):
    """The state file exists but cannot be read as a datapath state."""


class StateFile:
    """One state file plus its lock. Not thread-safe; one owner at a time (the lock)."""

    def __init__(self, path: str | os.PathLike[str] = DEFAULT_STATE_PATH) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self._lock_file: Any = None
        self._data: dict[str, Any] | None = None

    # -- locking --

    def lock(self) -> None:
        """Take the exclusive lock without waiting; StateBusy if another process has it."""
        if self._lock_file is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fh = open(self.lock_path, "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            fh.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise StateBusy(
                    f"{self.path} is in use by a running datapath (lock {self.lock_path} held)"
                ) from None
            raise
        self._lock_file = fh

    def unlock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None

    @property
    def locked(self) -> bool:
        return self._lock_file is not None

    # -- content --

    def load(self) -> dict[str, Any] | None:
        """Read the file (None if there is none). Keeps it as the working copy."""
        try:
            raw = self.path.read_text()
        except FileNotFoundError:
            self._data = None
            return None
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise StateCorrupt(f"{self.path}: not JSON ({exc})") from None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            raise StateCorrupt(f"{self.path}: no 'entries' list")
        if data.get("version") != VERSION:
            raise StateCorrupt(f"{self.path}: version {data.get('version')!r}, expected {VERSION}")
        self._data = data
        return data

    def begin(self, netns: str | None, **meta: Any) -> None:
        """Start a fresh state (the previous one must have been cleaned up)."""
        self._data = {
            "version": VERSION,
            "pid": os.getpid(),
            "started": time.time(),
            "netns": netns,
            "meta": meta,
            "seq": 0,
            "entries": [],
        }
        self._write()

    @property
    def entries(self) -> list[dict[str, Any]]:
        return list(self._data["entries"]) if self._data else []

    def record(self, kind: str, **fields: Any) -> int:
        """Append an entry and put it on disk; returns its id. Call *before* the change."""
        if kind not in KINDS:
            raise ValueError(f"unknown state entry kind {kind!r}")
        if self._data is None:
            raise RuntimeError("state not begun")
        self._data["seq"] += 1
        entry = {"id": self._data["seq"], "kind": kind, "recorded": time.time(), **fields}
        self._data["entries"].append(entry)
        self._write()
        return entry["id"]

    def update(self, entry_id: int, **fields: Any) -> None:
        """Change an entry (e.g. the program id of a filter about to be replaced), on disk."""
        for entry in self._data["entries"] if self._data else ():
            if entry["id"] == entry_id:
                entry.update(fields)
                self._write()
                return
        raise KeyError(entry_id)

    def forget(self, entry_id: int) -> None:
        """Drop an entry (the change was undone, or turned out not to be ours)."""
        if not self._data:
            return
        before = len(self._data["entries"])
        self._data["entries"] = [e for e in self._data["entries"] if e["id"] != entry_id]
        if len(self._data["entries"]) != before:
            self._write()

    def remove(self) -> None:
        """Delete the state file (everything in it is undone)."""
        self._data = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        _fsync_dir(self.path.parent)

    def _write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(prefix=self.path.name + ".", suffix=".tmp",
                                   dir=self.path.parent)
        try:
            with os.fdopen(fd, "w") as fh:
                json.dump(self._data, fh, indent=1, sort_keys=True)
                fh.write("\n")
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.path.parent)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# --- undo -------------------------------------------------------------------------------------


@dataclass
class CleanupReport:
    """What a cleanup/teardown did: one line per entry."""

    undone: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failed


def describe(entry: dict[str, Any]) -> str:
    kind = entry["kind"]
    ns = f" netns={entry['netns']}" if entry.get("netns") else ""
    if kind == "sysctl":
        return f"sysctl {entry['key']}={entry['new']} (was {entry['old']}){ns}"
    if kind == "rule":
        return (f"rule {policy_routing.family_name(entry['family'])} fwmark "
                f"{entry['fwmark']:#x}/{entry['fwmask']:#x} lookup {entry['table']} "
                f"pref {entry['priority']}{ns}")
    if kind == "route":
        return (f"route {policy_routing.family_name(entry['family'])} local default dev lo "
                f"table {entry['table']}{ns}")
    if kind == "qdisc":
        return f"qdisc clsact dev {entry['ifname']}{ns}"
    if kind == "filter":
        return (f"filter {entry['direction']} dev {entry['ifname']} pref {entry['prio']} "
                f"handle {entry['handle']:#x} name {entry['name']}{ns}")
    if kind == "pin":
        return f"pin {entry['path']}"
    return f"{kind} {entry}"


class _Undoer:
    """Undoes entries, with one IPRoute per namespace (opening one in a netns forks)."""

    def __init__(self) -> None:
        self._iprs: dict[str | None, Any] = {}

    def ipr(self, netns: str | None) -> Any:
        if netns not in self._iprs:
            self._iprs[netns] = open_iproute(netns)
        return self._iprs[netns]

    def close(self) -> None:
        for ipr in self._iprs.values():
            with contextlib.suppress(Exception):
                ipr.close()
        self._iprs.clear()

    def _link(self, entry: dict[str, Any]) -> int | None:
        """The entry's interface index if the same interface (name *and* index) still exists.
        A recreated interface of the same name is a different one: our objects died with the
        old one, and what is on the new one isn't ours."""
        found = self.ipr(entry.get("netns")).link_lookup(ifname=entry["ifname"])
        if found and found[0] == entry["ifindex"]:
            return found[0]
        return None

    def undo(self, entry: dict[str, Any]) -> bool:
        """Undo one entry. True if something was removed/restored, False if it was absent."""
        kind = entry["kind"]
        netns = entry.get("netns")
        if kind == "pin":
            try:
                os.unlink(entry["path"])
            except FileNotFoundError:
                return False
            return True
        if not netns_exists(netns):
            return False  # the namespace, and everything in it, is gone
        if kind == "sysctl":
            change = sysctls.SysctlChange.from_dict(entry)
            current = sysctls.read([change.key], netns)[change.key]
            sysctls.restore([change], netns)  # leaves (and logs) a value someone else set
            return current is not None and current == change.new
        if kind == "rule":
            rule = policy_routing.FwmarkRule(entry["family"], entry["fwmark"], entry["fwmask"],
                                             entry["table"], entry["priority"], entry["protocol"])
            return policy_routing.delete_rule(self.ipr(netns), rule)
        if kind == "route":
            route = policy_routing.LocalRoute(entry["family"], entry["table"], entry["protocol"])
            return policy_routing.delete_route(self.ipr(netns), route)
        if kind == "filter":
            ifindex = self._link(entry)
            if ifindex is None:
                return False
            slot = tc.FilterSlot(ifindex, entry["direction"], entry["prio"], entry["handle"],
                                 entry["protocol"], entry["name"])
            return tc.detach(self.ipr(netns), slot)
        if kind == "qdisc":
            ifindex = self._link(entry)
            if ifindex is None:
                return False
            removed = tc.remove_clsact(self.ipr(netns), ifindex, only_if_unused=True)
            if not removed and tc.has_clsact(self.ipr(netns), ifindex):
                log.warning("clsact on %s left in place: other filters are attached to it",
                            entry["ifname"])
            return removed
        raise ValueError(f"unknown state entry kind {kind!r}")


def undo_all(state: StateFile) -> CleanupReport:
    """Undo every entry of a loaded state, newest first, dropping each from the file once
    handled. Failures are reported and their entries kept, the rest still undone; the file
    is deleted when nothing is left."""
    report = undo_entries(state)
    if not state.entries:
        state.remove()
    return report


def undo_entries(state: StateFile, select: Callable[[dict[str, Any]], bool] | None = None) -> CleanupReport:
    """Undo the entries `select` picks (all when None), newest first, as undo_all does, but
    leave the file in place: a running datapath undoing what it did on one interface."""
    report = CleanupReport()
    undoer = _Undoer()
    try:
        for entry in reversed(state.entries):
            if select is not None and not select(entry):
                continue
            what = describe(entry)
            try:
                done = undoer.undo(entry)
            except (OSError, NetlinkError, NetnsNotFound, RuntimeError, ValueError,
                    KeyError) as exc:
                log.error("cleanup: %s: %s", what, exc)
                report.failed.append(f"{what}: {exc}")
                continue
            (report.undone if done else report.absent).append(what)
            state.forget(entry["id"])
    finally:
        undoer.close()
    return report


def cleanup(state_path: str | os.PathLike[str] = DEFAULT_STATE_PATH) -> CleanupReport:
    """Undo everything recorded in `state_path` by a datapath that is no longer running.

    Idempotent: a missing file, or entries whose objects are already gone, are fine. Raises
    StateBusy while a live datapath holds the state.
    """
    state = StateFile(state_path)
    if not state.path.exists():
        return CleanupReport()  # nothing recorded: nothing to do (and nothing to create)
    state.lock()
    try:
        if state.load() is None:
            return CleanupReport()
        report = undo_all(state)
        for line in report.undone:
            log.info("cleanup: undid %s", line)
        return report
    finally:
        state.unlock()
