"""Group policies, tolerance, failover and health checks with made-up latencies (no network)."""
from __future__ import annotations

import asyncio
import errno
import random
from typing import Any

import pytest

from dae_py.runtime import proxy
from dae_py.runtime.groups import Check, CheckSpec, Group, GroupSpec, HealthChecker, Policy
from dae_py.runtime.proxy import AllNodesDown, Destination, DialError, Node, ProxyAuthError, ProxyRefusedError


def nodes(*names: str, protocol: str = "socks5") -> list[Node]:
    return [Node(n, protocol, f"192.0.2.{i + 1}", 1080) for i, n in enumerate(names)]


def group(policy: str, names: tuple[str, ...] = ("a", "b", "c"), tolerance_ms: float = 50.0, fixed: int = 0,
          **kwargs: Any) -> Group:
    raw = {"name": "g", "id": 2, "policy": policy, "fixed_index": fixed, "nodes": list(names),
           "check": {"check_interval_s": 30, "check_tolerance_ms": tolerance_ms}}
    return Group.from_manifest(raw, {n.name: n for n in nodes(*names)}, **kwargs)


def feed(g: Group, **latencies_ms: float | None) -> None:
    for node in g.nodes:
        if node.name in latencies_ms:
            ms = latencies_ms[node.name]
            g.record(node, Check.TCP, None if ms is None else ms / 1000, "made-up failure")


def chosen(g: Group, kind: Check = Check.TCP) -> str | None:
    node = g.select(kind)
    return node.name if node else None


class TestSpec:
    def test_manifest_check_lists_give_url_dns_and_their_ips(self) -> None:
        spec = CheckSpec.from_manifest({
            "tcp_check_url": ["http://cp.example:8080/x?y=1", "192.0.2.1", "2001:db8::1"],
            "tcp_check_http_method": "get", "udp_check_dns": ["[2001:db8::53]:5353"],
            "check_interval_s": 5, "check_tolerance_ms": 20})
        assert spec.tcp_check_ips == ("192.0.2.1", "2001:db8::1")
        assert spec.tcp_check_http_method == "GET"
        assert (spec.dns_host, spec.dns_port, spec.dns_ips) == ("2001:db8::53", 5353,
                                                                 ("2001:db8::53",))
        assert (spec.interval, spec.tolerance, spec.timeout) == (5.0, 0.02, 5.0)

    def test_fixed_with_index_in_the_policy_text(self) -> None:
        spec = GroupSpec.from_manifest({"name": "g", "id": 2, "policy": "fixed(1)",
                                        "nodes": ["a", "b"]})
        assert (spec.policy, spec.fixed_index) == (Policy.FIXED, 1)

    @pytest.mark.parametrize("raw,message", [
        ({"policy": "fastest", "nodes": ["a"]}, "unknown policy 'fastest'"),
        ({"policy": "fixed", "fixed_index": 3, "nodes": ["a"]}, "fixed(3) but the group has 1"),
        ({"policy": "min", "nodes": []}, "no nodes"),
    ])
    def test_bad_group_is_a_clear_error(self, raw: dict[str, Any], message: str) -> None:
        with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
            GroupSpec.from_manifest({"name": "g", "id": 2, **raw})

    def test_unknown_node_is_named(self) -> None:
        with pytest.raises(ValueError, match="unknown node.*zz"):
            Group.from_manifest({"name": "g", "id": 2, "policy": "min", "nodes": ["a", "zz"]},
                                {n.name: n for n in nodes("a")})


class TestPolicies:
    def test_before_any_check_every_node_is_alive_and_the_first_is_used(self) -> None:
        for policy in ("min", "min_avg10", "min_moving_avg", "fixed"):
            assert chosen(group(policy)) == "a"

    def test_min_takes_the_lowest_last_latency(self) -> None:
        g = group("min")
        feed(g, a=300, b=120, c=200)
        assert chosen(g) == "b"
        feed(g, c=20)
        assert chosen(g) == "c"

    def test_min_switches_only_beyond_the_tolerance(self) -> None:
        g = group("min", tolerance_ms=50)
        feed(g, a=100, b=300, c=300)
        assert chosen(g) == "a"
        feed(g, b=60)        # better by 40 ms: within tolerance, stay
        assert chosen(g) == "a"
        feed(g, b=50)        # better by exactly 50 ms: not *more* than the tolerance
        assert chosen(g) == "a"
        feed(g, b=49)        # better by 51 ms: switch
        assert chosen(g) == "b"
        feed(g, a=10)        # and back only when a beats b by more than 50 ms
        assert chosen(g) == "b"
        feed(g, b=200)
        assert chosen(g) == "a"

    def test_min_avg10_ranks_by_the_average_of_the_last_ten(self) -> None:
        g = group("min_avg10", tolerance_ms=0)
        for _ in range(9):
            feed(g, a=100, b=50)
        feed(g, a=100, b=1000)  # b: one spike. last 10 of b average (9*50+1000)/10 = 145
        assert chosen(g) == "a"
        assert g.metric(g.nodes[1], Check.TCP) == pytest.approx(0.145)
        for _ in range(10):     # the spike leaves the window
            feed(g, b=50)
        assert chosen(g) == "b"

    def test_min_avg10_counts_a_failure_as_the_check_timeout(self) -> None:
        g = group("min_avg10", tolerance_ms=0)
        feed(g, a=100, b=None)
        feed(g, a=100, b=10)  # b alive again; its average carries the 10 s failure
        assert chosen(g) == "a"

    def test_min_moving_avg_halves_towards_each_new_latency(self) -> None:
        g = group("min_moving_avg", tolerance_ms=0)
        feed(g, a=100, b=400)
        feed(g, a=100, b=0)     # b: (400 + 0) / 2 = 200
        assert chosen(g) == "a"
        feed(g, a=100, b=0)     # b: 100, not better than a
        assert chosen(g) == "a"
        feed(g, a=100, b=0)     # b: 50
        assert chosen(g) == "b"
        assert g.metric(g.nodes[1], Check.TCP) == pytest.approx(0.05)

    def test_a_dead_selected_node_is_replaced_at_once_whatever_the_tolerance(self) -> None:
        g = group("min", tolerance_ms=10_000)
        feed(g, a=10, b=500, c=900)
        feed(g, a=None)
        assert chosen(g) == "b"

    def test_random_picks_only_alive_nodes_and_all_of_them(self) -> None:
        g = group("random", rng=random.Random(7))
        feed(g, b=None)
        picks = {chosen(g) for _ in range(200)}
        assert picks == {"a", "c"}

    def test_fixed_uses_its_node_and_falls_to_the_next_alive_while_it_is_down(self) -> None:
        g = group("fixed", fixed=1)
        assert chosen(g) == "b"
        feed(g, b=None)
        assert chosen(g) == "c"
        feed(g, c=None)
        assert chosen(g) == "a"
        feed(g, b=80)
        assert chosen(g) == "b"

    def test_all_down_selects_nothing(self) -> None:
        g = group("min")
        feed(g, a=None, b=None, c=None)
        assert chosen(g) is None

    def test_udp_uses_only_nodes_that_carry_udp(self) -> None:
        mixed = nodes("h") + [Node("s", "socks5", "192.0.2.9", 1080)]
        mixed[0] = Node("h", "http", "192.0.2.8", 8080)
        g = Group(GroupSpec("g", 2, Policy.MIN, ("h", "s")), mixed)
        assert chosen(g, Check.UDP) == "s"
        assert chosen(g, Check.TCP) == "h"


class FakeStream:
    def close(self) -> None:
        pass


class TestDialFailover:
    def test_a_failed_dial_marks_the_node_down_and_the_next_alive_node_carries_the_flow(
            self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = group("min")
        feed(g, a=10, b=20, c=30)
        calls = []

        async def dial(node, dst, opts):
            calls.append(node.name)
            if node.name == "a":
                raise DialError("connect to 192.0.2.1:1080 failed: Connection refused", node)
            if node.name == "b":
                raise ProxyAuthError("SOCKS5 username/password rejected", node)
            return FakeStream()

        monkeypatch.setattr(proxy, "dial_tcp", dial)
        dialed = asyncio.run(g.dial_tcp(Destination("198.51.100.1", 80)))
        assert dialed.node is not None and dialed.node.name == "c" and calls == ["a", "b", "c"]
        assert not g.stats[Check.TCP]["a"].alive and not g.stats[Check.TCP]["b"].alive
        assert chosen(g) == "c"

    def test_all_down_refuses_at_once_without_dialing(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = group("min")
        feed(g, a=None, b=None, c=None)

        async def dial(node, dst, opts):
            raise AssertionError("must not dial")

        monkeypatch.setattr(proxy, "dial_tcp", dial)
        with pytest.raises(AllNodesDown, match="group 'g': all nodes down for tcp: a \\(made-up"):
            asyncio.run(g.dial_tcp(Destination("198.51.100.1", 80)))
        assert g.dial_attempts == 0

    def test_a_target_refused_by_a_working_node_is_not_the_node_s_fault(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = group("min")

        async def dial(node, dst, opts):
            raise ProxyRefusedError("SOCKS5 CONNECT 198.51.100.1:80: host unreachable", node)

        monkeypatch.setattr(proxy, "dial_tcp", dial)
        with pytest.raises(ProxyRefusedError):
            asyncio.run(g.dial_tcp(Destination("198.51.100.1", 80)))
        assert g.dial_attempts == 1 and g.stats[Check.TCP]["a"].alive


    def test_a_socket_error_during_the_dial_is_a_failed_dial(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """ECONNRESET after CONNECT (an OSError the outbound let out): node down, next node."""
        g = group("min")
        feed(g, a=10, b=20, c=30)

        async def dial(node, dst, opts):
            if node.name == "a":
                raise ConnectionResetError(errno.ECONNRESET, "Connection reset by peer")
            return FakeStream()

        monkeypatch.setattr(proxy, "dial_tcp", dial)
        dialed = asyncio.run(g.dial_tcp(Destination("198.51.100.1", 80)))
        assert dialed.node is not None and dialed.node.name == "b"
        assert not g.stats[Check.TCP]["a"].alive
        assert "Connection reset by peer" in str(g.stats[Check.TCP]["a"].last_error)

    def test_running_out_of_fds_refuses_the_flow_and_blames_no_node(self, monkeypatch: pytest.MonkeyPatch) -> None:
        g = group("min")
        feed(g, a=10, b=20, c=30)

        async def dial(node, dst, opts):
            raise OSError(errno.EMFILE, "Too many open files")

        monkeypatch.setattr(proxy, "dial_tcp", dial)
        with pytest.raises(DialError, match="cannot dial: Too many open files"):
            asyncio.run(g.dial_tcp(Destination("198.51.100.1", 80)))
        assert g.dial_attempts == 1 and all(s.alive for s in g.stats[Check.TCP].values())


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class TestHealthChecker:
    def checker(self, g: Group, clock: FakeClock, tcp_ms: dict, dns_ms: dict) -> HealthChecker:
        """Probes that 'take' the given time on the injected clock (None: fail)."""
        def probe(table):
            async def run(node, spec, opts):
                ms = table[node.name]
                if ms is None:
                    raise DialError("connect to x failed: Connection refused", node)
                clock.now += ms / 1000
            return run
        return HealthChecker(g, clock=clock, tcp_probe=probe(tcp_ms), dns_probe=probe(dns_ms))

    def test_latencies_come_from_the_injected_clock(self) -> None:
        clock = FakeClock()
        g = group("min", clock=clock)
        checker = self.checker(g, clock, {"a": 250, "b": 40, "c": None},
                               {"a": 200, "b": 90, "c": 10})

        async def one_by_one() -> None:  # check_all overlaps them on the one fake clock
            for node in g.nodes:
                await checker.check_node(node)

        asyncio.run(one_by_one())
        tcp, udp = g.stats[Check.TCP], g.stats[Check.UDP]
        assert tcp["a"].last == pytest.approx(0.25) and tcp["b"].last == pytest.approx(0.04)
        assert not tcp["c"].alive and "Connection refused" in str(tcp["c"].last_error)
        assert udp["c"].last == pytest.approx(0.01)
        assert [n.name if n else None for n in (g.selected(Check.TCP), g.selected(Check.UDP))] == ["b", "c"]

    def test_a_node_comes_back_after_a_passing_check(self) -> None:
        clock = FakeClock()
        g = group("min", clock=clock)
        table: dict[str, float | None] = {"a": None, "b": None, "c": None}
        checker = self.checker(g, clock, table, dict(table))
        asyncio.run(checker.check_all())
        assert chosen(g) is None
        table["c"] = 70
        asyncio.run(checker.check_all())
        assert chosen(g) == "c" and checker.rounds == 2

    def test_a_down_node_is_checked_again_soon_with_backoff(self) -> None:
        g = group("min")  # check_interval 30 s
        checker = g.checker
        assert checker.next_wait() == 30
        feed(g, a=None)
        assert [checker.next_wait() for _ in range(7)] == [1, 2, 4, 8, 16, 30, 30]
        feed(g, a=20)
        assert checker.next_wait() == 30
        feed(g, b=None)
        assert checker.next_wait() == 1  # the backoff starts over for the next outage

    def test_a_hanging_probe_is_a_timeout_not_a_hang(self) -> None:
        g = group("min")

        async def hang(node, spec, opts):
            await asyncio.Event().wait()

        async def ok(node, spec, opts):
            pass

        g.spec = GroupSpec(g.spec.name, 2, Policy.MIN, g.spec.nodes,
                           check=CheckSpec(timeout=0.01))
        checker = HealthChecker(g, tcp_probe=hang, dns_probe=ok)
        asyncio.run(checker.check_all())
        assert all(not g.stats[Check.TCP][n].alive for n in "abc")
        assert "tcp check timed out after 0.01s" == g.stats[Check.TCP]["a"].last_error
