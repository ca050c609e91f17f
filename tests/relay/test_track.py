"""The connection tracker: records by UUID-shaped id, bound to the relay's flow object, closed
through it, gone when the flow ends; one table entry per live flow."""
from __future__ import annotations

from dae_py.runtime.relay.track import ConnTracker, Tracked


class FakeFlow:
    def __init__(self, tracker: ConnTracker) -> None:
        self.tracker = tracker
        self.closed = 0

    def close(self) -> None:  # as SplicedFlow.close: its end callback hands it back
        self.closed += 1
        self.tracker.ended_key(self)


def _open(t: ConnTracker, port: int = 40000) -> Tracked:
    return t.open("tcp", ("10.0.0.2", port), ("192.0.2.1", 8081), "proxy", "a", " (fallback)")


def test_records_are_found_by_id_before_and_after_binding() -> None:
    t = ConnTracker(clock=lambda: 5.0)
    rec = _open(t)
    assert t.find(rec.id) is rec and len(t) == 1 and rec.start == 5.0
    flow = FakeFlow(t)
    t.bind(rec, flow)
    assert t.find(rec.id) is rec and list(t) == [rec] and t.conns == {rec.seq: rec}
    assert t.find(rec.id.replace(rec.prefix, "0" * 23)) is None
    assert t.find(f"{rec.prefix}-zz") is None
    assert rec.rule == "fallback"


def test_closing_by_id_closes_the_bound_flow_without_a_closer() -> None:
    t = ConnTracker()
    rec, other = _open(t), _open(t, 40001)
    flow, flow2 = FakeFlow(t), FakeFlow(t)
    t.bind(rec, flow)
    t.bind(other, flow2)
    assert t.close(rec.id) is True
    assert flow.closed == 1 and flow2.closed == 0 and list(t) == [other]
    assert t.close(rec.id) is False  # gone
    assert t.close_all() == 1 and flow2.closed == 1 and len(t) == 0


def test_an_explicit_closer_is_used_and_the_record_itself_can_be_the_key() -> None:
    t = ConnTracker()
    rec = _open(t)
    called: list[int] = []
    t.bind(rec, rec, lambda: called.append(1))
    assert t.close(rec.id) and called == [1] and len(t) == 0


def test_a_flow_ending_by_itself_leaves_the_table_and_counts_stay_on_the_record() -> None:
    t = ConnTracker()
    totals = [0, 0]
    recs = [_open(t, 40000 + i) for i in range(100)]
    flows = [FakeFlow(t) for _ in recs]
    for rec, flow in zip(recs, flows, strict=True):
        t.bind(rec, flow)
    assert len(t._live) == 100  # one entry per live flow, no second index
    up, down = recs[0].counting(lambda n: totals.__setitem__(0, totals[0] + n),
                                lambda n: totals.__setitem__(1, totals[1] + n))
    up(10)
    down(3)
    assert (recs[0].upload, recs[0].download, totals) == (10, 3, [10, 3])
    for flow in flows:
        t.ended_key(flow)
    assert len(t) == 0 and t._live == {} and t.total == 100
    assert all(rec.key is None and rec.closer is None for rec in recs)
    t.ended_key(flows[0])  # late or repeated: nothing
