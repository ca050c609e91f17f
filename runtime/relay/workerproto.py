"""What the main process and its relay workers tell each other (runtime/relay/workers.py).

Two channels per worker:
- control, a SOCK_SEQPACKET socketpair, main -> worker: one JSON object per message, map fds
  attached (SCM_RIGHTS) to `build` messages. Messages: `build` (a build directory and the maps
  its router reads), `groups` (the main process's node selection, see `group_state`), `track`
  (keep a connection list or not), `close` (end one tracked flow, or all), `stop`.
  The same socket carries the worker's DNS questions back (dial_mode domain: did the DNS
  module answer this name with this address?) and the main process's answers.
- reports, the worker's stdout, worker -> main: one JSON line a second with its counters (the
  totals since it started) and, while tracking, its live connections.

Only plain data crosses: the worker rebuilds its router and outbounds from the build itself.
"""
from __future__ import annotations

import array
import json
import socket
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

from dae_py.runtime.groups import Check, Group

from .outbounds import OutboundTable
from .stats import Counters, Guards, RelayStats
from .track import ConnTracker

MAX_MESSAGE = 256 * 1024  # a control message (a groups state of many nodes stays well under)
MAX_FDS = 16


def send(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message, separators=(",", ":")).encode()
    if fds:
        sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
    else:
        sock.send(data)


def receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]] | None:
    """One message and the fds that came with it; None at EOF. Raises BlockingIOError when
    there is nothing to read, ValueError on a message that is not a JSON object."""
    data, fds, _flags, _addr = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    if not data:
        for fd in fds:
            socket.close(fd)
        return None
    message = json.loads(data)
    if not isinstance(message, dict):
        for fd in fds:
            socket.close(fd)
        raise ValueError("a control message is a JSON object")
    return message, list(fds)


# --- group state: the main process checks health, the workers follow ------------------------

def group_state(table: OutboundTable) -> dict[str, Any]:
    """Per group id: the pinned node, and per check kind the selected node and each node's
    liveness and latency figures; enough for a worker's copy of the group to select as the
    main process's does."""
    out: dict[str, Any] = {}
    for group in table.groups():
        kinds: dict[str, Any] = {}
        for kind in Check:
            selected = group.selected(kind)
            kinds[kind.value] = {
                "selected": selected.name if selected is not None else None,
                "nodes": {name: [st.alive, st.checked, st.last, list(st.window), st.moving_avg, st.last_error]
                          for name, st in group.stats[kind].items()}}
        out[str(group.spec.id)] = {"pinned": group.pinned.name if group.pinned is not None else None,
                                   "kinds": kinds}
    return out


def apply_group_state(table: OutboundTable, state: Mapping[str, Any]) -> None:
    """Make the worker's groups hold what the main process's hold (unknown groups or nodes,
    a build the two do not share yet, are skipped)."""
    for group in table.groups():
        entry = state.get(str(group.spec.id))
        if not isinstance(entry, dict):
            continue
        by_name = {n.name: n for n in group.nodes}
        pinned = entry.get("pinned")
        group.pinned = by_name.get(pinned) if isinstance(pinned, str) else None
        for kind in Check:
            _apply_kind(group, kind, by_name, entry.get("kinds", {}).get(kind.value))


def _apply_kind(group: Group, kind: Check, by_name: Mapping[str, Any], entry: Any) -> None:
    if not isinstance(entry, dict):
        return
    stats = group.stats[kind]
    for name, fields in (entry.get("nodes") or {}).items():
        st = stats.get(name)
        if st is None or not isinstance(fields, list) or len(fields) != 6:
            continue
        st.alive, st.checked, st.last, window, st.moving_avg, st.last_error = fields
        st.window.clear()
        st.window.extend(window)
    selected = entry.get("selected")
    group._selected[kind] = by_name.get(selected) if isinstance(selected, str) else None


# --- reports: counters and connections -------------------------------------------------------

def stats_report(stats: RelayStats) -> dict[str, Any]:
    return {"outbounds": stats.snapshot(), "guards": asdict(stats.guards)}


class StatsFolder:
    """Adds a worker's counters into the main process's RelayStats as they grow: a report holds
    the worker's totals, the folder adds what changed since its last one. `active` is a level:
    when the worker ends, what it held is taken back out (`forget`)."""

    def __init__(self, into: RelayStats) -> None:
        self.into = into
        self.last: dict[str, dict[str, int]] = {}
        self.last_guards: dict[str, int] = {}

    def fold(self, report: Mapping[str, Any]) -> None:
        outbounds = report.get("outbounds") or {}
        for name, now in outbounds.items():
            before = self.last.get(name, {})
            counters = self.into[name]
            for key in _COUNTER_FIELDS:
                delta = int(now.get(key, 0)) - int(before.get(key, 0))
                if delta:
                    setattr(counters, key, getattr(counters, key) + delta)
        self.last = {name: dict(v) for name, v in outbounds.items()}
        guards = report.get("guards") or {}
        for key in _GUARD_FIELDS:
            delta = int(guards.get(key, 0)) - self.last_guards.get(key, 0)
            if delta:
                setattr(self.into.guards, key, getattr(self.into.guards, key) + delta)
        self.last_guards = {k: int(guards.get(k, 0)) for k in _GUARD_FIELDS}

    def forget(self) -> None:
        """The worker is gone: its flows are too (its totals stay counted)."""
        for name, before in self.last.items():
            self.into[name].active -= int(before.get("active", 0))
        self.last = {name: {**v, "active": 0} for name, v in self.last.items()}

    def restarted(self) -> None:
        """A new worker in the same slot counts from zero."""
        self.forget()
        self.last = {}
        self.last_guards = {}


_COUNTER_FIELDS = tuple(Counters.__dataclass_fields__)
_GUARD_FIELDS = tuple(Guards.__dataclass_fields__)


def conns_report(tracker: ConnTracker, limit: int) -> list[list[Any]]:
    """The worker's live connections, at most `limit` (the oldest first)."""
    out: list[list[Any]] = []
    for rec in tracker:
        if len(out) >= limit:
            break
        out.append([rec.seq, rec.network, list(rec.src), list(rec.dst), rec.outbound, rec.node, rec.why,
                    rec.start, rec.upload, rec.download])
    return out


def _addr(value: Iterable[Any]) -> tuple[str, int]:
    host, port = value
    return str(host), int(port)


class ConnMirror:
    """A worker's connections in the main process's tracker (the one the controller lists):
    records appear and leave as the worker's reports say, with their byte counts; closing one
    asks the worker (`close_remote(seq)`)."""

    def __init__(self, close_remote: Any) -> None:
        self.close_remote = close_remote
        self.tracker: ConnTracker | None = None
        self.mirrored: dict[int, Any] = {}  # the worker's seq -> the main tracker's Tracked

    def update(self, tracker: ConnTracker | None, conns: Iterable[list[Any]] | None) -> None:
        if tracker is not self.tracker:
            self.clear()
            self.tracker = tracker
        if tracker is None or conns is None:
            return
        seen = set()
        for row in conns:
            seq, network, src, dst, outbound, node, why, start, up, down = row
            seen.add(seq)
            rec = self.mirrored.get(seq)
            if rec is None:
                rec = tracker.open(str(network), _addr(src), _addr(dst), str(outbound), str(node), str(why))
                rec.start = float(start)
                rec.closer = lambda s=seq: self.close_remote(s)
                self.mirrored[seq] = rec
            rec.upload, rec.download = int(up), int(down)
        for seq in [s for s in self.mirrored if s not in seen]:
            tracker.ended(self.mirrored.pop(seq))

    def clear(self) -> None:
        if self.tracker is not None:
            for rec in self.mirrored.values():
                self.tracker.ended(rec)
        self.mirrored.clear()
