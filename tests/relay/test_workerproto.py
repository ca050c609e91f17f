"""What the main process and its relay workers exchange (runtime/relay/workerproto.py), without
processes: a worker's groups select as the main process's do, counters fold in once each, the
connection mirror follows the reports, and fds cross the control socket."""
from __future__ import annotations

import os
import socket

from dae_py.runtime.groups import Check, Group
from dae_py.runtime.proxy import Node
from dae_py.runtime.relay import OutboundTable, RelayStats
from dae_py.runtime.relay import workerproto as proto
from dae_py.runtime.relay.track import ConnTracker
from dae_py.runtime.relay.workers import worker_count


def table() -> OutboundTable:
    nodes = {n: Node(n, "socks5", f"192.0.2.{i + 1}", 1080) for i, n in enumerate(("a", "b", "c"))}
    raw = {"name": "g", "id": 2, "policy": "min", "nodes": list(nodes),
           "check": {"check_interval_s": 30, "check_tolerance_ms": 50.0}}
    return OutboundTable({2: Group.from_manifest(raw, nodes)})


def group_of(t: OutboundTable) -> Group:
    return t.groups()[0]


def selected(g: Group) -> str | None:
    node = g.select(Check.TCP)
    return node.name if node is not None else None


def test_a_worker_group_selects_and_pins_as_the_main_process_group() -> None:
    main, worker = table(), table()
    g = group_of(main)
    for name, ms in (("a", 300.0), ("b", 20.0), ("c", None)):
        node = next(n for n in g.nodes if n.name == name)
        g.record(node, Check.TCP, ms / 1000 if ms is not None else None, None if ms is not None else "refused")
    proto.apply_group_state(worker, proto.group_state(main))
    w = group_of(worker)
    assert selected(w) == "b"
    assert [n.name for n in w.alive(Check.TCP)] == ["a", "b"]
    assert w.stats[Check.TCP]["c"].last_error == "refused"
    g.pin("a")
    proto.apply_group_state(worker, proto.group_state(main))
    assert selected(w) == "a"
    g.pin(None)
    proto.apply_group_state(worker, proto.group_state(main))
    assert w.pinned is None and selected(w) == "b"


def test_a_state_for_other_groups_or_nodes_is_skipped() -> None:
    worker = table()
    proto.apply_group_state(worker, {"7": {"pinned": "a"}, "2": {"pinned": "zz", "kinds": {"tcp": {
        "selected": "zz", "nodes": {"zz": [False, True, None, [], None, "x"], "a": "junk"}}}}})
    w = group_of(worker)
    assert w.pinned is None and all(st.alive for st in w.stats[Check.TCP].values())


def test_counters_fold_in_once_and_active_flows_leave_with_the_worker() -> None:
    into = RelayStats()
    into["proxy"].flows = 5  # the main process's own
    folder = proto.StatsFolder(into)
    worker = RelayStats()
    worker["proxy"].flows, worker["proxy"].active, worker["proxy"].bytes_up = 3, 2, 100
    worker.guards.self_addressed = 1
    folder.fold(proto.stats_report(worker))
    folder.fold(proto.stats_report(worker))  # the same totals again: nothing new
    assert (into["proxy"].flows, into["proxy"].active, into["proxy"].bytes_up) == (8, 2, 100)
    worker["proxy"].flows, worker["proxy"].active, worker["proxy"].bytes_up = 4, 1, 150
    folder.fold(proto.stats_report(worker))
    assert (into["proxy"].flows, into["proxy"].active, into["proxy"].bytes_up) == (9, 1, 150)
    assert into.guards.self_addressed == 1
    folder.forget()  # the worker died: its one active flow is gone, its totals stay
    assert (into["proxy"].flows, into["proxy"].active) == (9, 0)
    folder.restarted()
    fresh = RelayStats()
    fresh["proxy"].flows = 1
    folder.fold(proto.stats_report(fresh))
    assert (into["proxy"].flows, into["proxy"].active) == (10, 0)


def test_the_connection_mirror_follows_the_reports_and_closes_through_the_worker() -> None:
    closed: list[int] = []
    mirror = proto.ConnMirror(closed.append)
    worker, main = ConnTracker(), ConnTracker()
    recs = [worker.open("tcp", ("10.0.0.2", 4000 + i), ("10.1.0.1", 80), "proxy", "a", " (rule 0)") for i in range(3)]
    recs[0].upload = 7
    mirror.update(main, proto.conns_report(worker, 100))
    listed = {r.src[1]: r for r in main}
    assert sorted(listed) == [4000, 4001, 4002] and listed[4000].upload == 7 and listed[4000].rule == "rule 0"
    assert main.close(listed[4001].id)
    assert closed == [recs[1].seq]
    worker.ended(recs[1])
    worker.ended(recs[2])
    mirror.update(main, proto.conns_report(worker, 100))
    assert [r.src[1] for r in main] == [4000]
    mirror.update(None, None)  # the controller went away
    assert len(main) == 0


def test_map_fds_cross_the_control_socket() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    r, w = os.pipe()
    try:
        proto.send(a, {"op": "build", "path": "/x", "maps": ["flows"]}, [r])
        message, fds = proto.receive(b) or ({}, [])
        assert message == {"op": "build", "path": "/x", "maps": ["flows"]} and len(fds) == 1
        os.write(w, b"!")
        assert os.read(fds[0], 1) == b"!"  # the same pipe, through another fd
        os.close(fds[0])
        a.close()
        assert proto.receive(b) is None
    finally:
        for fd in (r, w):
            os.close(fd)
        b.close()


def test_zero_workers_is_one_per_cpu() -> None:
    assert worker_count(0) == len(os.sched_getaffinity(0))
    assert worker_count(3) == 3
