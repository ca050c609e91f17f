"""A group of nodes: pick one per flow by policy, fail over on dial errors."""
from __future__ import annotations

import copy
import dataclasses
import errno
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from dae_py.contract.manifest import GroupEntry
from dae_py.runtime import proxy
from dae_py.runtime.proxy import (
    AllNodesDown,
    ConnectionPool,
    Destination,
    Dialed,
    DialError,
    DialOptions,
    Node,
    OutboundError,
    ProxyRefusedError,
    ReplyCallback,
    Stream,
    UdpAssociation,
)

from .health import HealthChecker
from .spec import GroupSpec, Policy
from .stats import Check, NodeStats

log = logging.getLogger(__name__)


#: Socket errors that say the gateway is short of something, not that the node is broken: the
#: flow is refused, no node is marked down and none other is tried (it would fail the same way).
LOCAL_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


def dial_failure(exc: OSError, during: str = "dial") -> str:
    """What a socket error during a dial (connect, handshake) says about the node. Every
    socket error on a dial is a failed dial: a reset after CONNECT is the node's failure as
    much as a refused connect; only the local shortages (LOCAL_ERRNOS) raise a DialError."""
    what = f"{exc.strerror or exc}"
    if exc.errno in LOCAL_ERRNOS:
        raise DialError(f"cannot dial: {what}") from exc
    return f"{during} failed: {what}"


def failure_cause(error: str) -> str:
    """A dial error as a metric label with few values: what kind of failure, not its text."""
    text = error.lower()
    for cause, words in (("timeout", ("timed out", "timeout")), ("refused", ("refused",)),
                         ("reset", ("reset", "broken pipe")), ("unreachable", ("unreachable", "no route")),
                         ("handshake", ("handshake", "reply", "auth", "tls", "ssl"))):
        if any(w in text for w in words):
            return cause
    return "other"


def _ms(seconds: float) -> str:
    return "unknown" if math.isinf(seconds) else f"{seconds * 1000:.0f}ms"


class Group:
    """An outbound made of nodes. Implements the relay's Outbound protocol.

    Nodes start alive with unknown latency. A check or dial result goes through `record`; the
    latency policies switch the selected node only when the best beats it by more than the
    tolerance, or when it dies. A dial that fails marks the node down and the flow moves to the
    next alive node; with none alive the flow is refused at once."""

    def __init__(self, spec: GroupSpec, nodes: Sequence[Node], opts: DialOptions = DialOptions(),
                 *, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None) -> None:
        self.spec = spec
        self.name = spec.name
        self.nodes = tuple(nodes)
        self.opts = opts
        self.rng = rng or random.Random()
        self.clock = clock
        timeout = spec.check.timeout
        self.stats: dict[Check, dict[str, NodeStats]] = {
            kind: {n.name: NodeStats(timeout=timeout) for n in self.nodes} for kind in Check}
        self._selected: dict[Check, Node | None] = {kind: None for kind in Check}
        self.checker = HealthChecker(self, clock=clock)
        self.dial_attempts = 0
        self.view_of: Group | None = None  # the group this is a marked view of (with_mark)
        self.pinned: Node | None = None  # the controller's PUT /proxies/{group}: a select policy
        self.dial_failures: dict[tuple[str, str], int] = {}  # (node, cause) -> count, for metrics
        self.views: list[Group] = []  # the marked views (with_mark), which follow set_nodes
        # the relay's warm pools (runtime/relay/warmpool.py): connections opened ahead of flows
        self.pools: ConnectionPool | None = None
        for kind in Check:
            self._reselect(kind)

    @classmethod
    def from_manifest(cls, raw: GroupEntry | Mapping[str, Any], nodes: Mapping[str, Node],
                      opts: DialOptions = DialOptions(), *, allow_empty: bool = False, **kwargs: Any) -> Group:
        spec = GroupSpec.from_manifest(raw, allow_empty=allow_empty)
        missing = [n for n in spec.nodes if n not in nodes]  # (spec: allow_empty for subscription groups)
        if missing:
            raise ValueError(f"group '{spec.name}': unknown node(s) {', '.join(missing)}")
        return cls(spec, [nodes[n] for n in spec.nodes], opts, **kwargs)

    def with_mark(self, mark: int) -> Group:
        """This group, dialing with `mark` as its upstream sockets' SO_MARK (a rule's
        `group(mark: N)`, see marks.py). A view: nodes, statistics, the node selection and the
        health checker are the group's own objects, so a failure seen through either counts
        for both; only the dial options differ."""
        view = copy.copy(self)
        view.opts = dataclasses.replace(self.opts, so_mark=mark)
        view.view_of = self
        self.views.append(view)
        return view

    def set_nodes(self, nodes: Sequence[Node], add_latency: Mapping[str, float] | None = None,
                  fixed_index: int = 0) -> None:
        """Carry flows through `nodes` from now on (a subscription was fetched again: see
        runtime/subscriptions). A node that stays keeps its statistics and, while alive, its
        selection; new nodes start alive with unknown latency and are checked at once.
        `add_latency`: node -> seconds; `fixed_index` counts in `nodes`."""
        old = {n.name: n for n in self.nodes}
        kept = tuple(old[n.name] if old.get(n.name) == n else n for n in nodes)
        names = tuple(n.name for n in kept)
        self.nodes = kept
        self.spec = dataclasses.replace(
            self.spec, nodes=names, fixed_index=min(max(fixed_index, 0), max(len(kept) - 1, 0)),
            add_latency={k: v for k, v in (add_latency or {}).items() if k in names and v})
        timeout = self.spec.check.timeout
        for kind in Check:  # in place: the marked views share these dicts
            per_kind = self.stats[kind]
            fresh = {n: per_kind[n] if n in per_kind and n in old and old[n] is node else NodeStats(timeout=timeout)
                     for n, node in zip(names, kept, strict=True)}
            per_kind.clear()
            per_kind.update(fresh)
            if self._selected[kind] is not None and self._selected[kind] not in kept:
                self._selected[kind] = None
        if self.pinned is not None and self.pinned not in kept:
            self.pinned = None
        for view in self.views:
            view.nodes, view.spec = self.nodes, self.spec
        for kind in Check:
            self._reselect(kind)
        self.checker.poke(min_gap=0.0)

    # --- state -----------------------------------------------------------------------------
    def candidates(self, kind: Check) -> list[Node]:
        return [n for n in self.nodes if kind is not Check.UDP or n.supports_udp]

    def alive(self, kind: Check) -> list[Node]:
        return [n for n in self.candidates(kind) if self.stats[kind][n.name].alive]

    def metric(self, node: Node, kind: Check) -> float:
        """What the latency policies rank by: the node's measured figure plus its add_latency
        (unknown stays unknown)."""
        return self.stats[kind][node.name].metric(self.spec.policy) + self.spec.add_latency.get(node.name, 0.0)

    def record(self, node: Node, kind: Check, latency: float | None,
               error: str | None = None) -> None:
        """A check (or dial) result: latency in seconds, or None with the error."""
        stats = self.stats[kind][node.name]
        was_alive = stats.alive
        stats.record(latency, error)
        if was_alive != stats.alive:
            if stats.alive:
                log.info("group '%s' [%s]: node '%s' is alive again (%s)", self.name, kind.value,
                         node.name, _ms(latency or 0.0))
            else:
                log.warning("group '%s' [%s]: node '%s' is down: %s", self.name, kind.value,
                            node.name, error)
        self._reselect(kind)

    def report_failure(self, node: Node, kind: Check, error: str) -> None:
        key = (node.name, failure_cause(error))
        self.dial_failures[key] = self.dial_failures.get(key, 0) + 1
        self.record(node, kind, None, error)

    def pin(self, name: str | None) -> None:
        """Carry new flows through node `name` while it is alive (a Clash `select` group's
        choice), or back to the policy with None. Raises ValueError for a node not in the group."""
        if name is None:
            self.pinned = None
            return
        for node in self.nodes:
            if node.name == name:
                self.pinned = node
                log.info("group '%s': pinned to node '%s'", self.name, name)
                return
        raise ValueError(f"group '{self.name}' has no node {name!r}")

    def _reselect(self, kind: Check) -> None:
        if not self.spec.policy.by_latency:
            return
        alive = self.alive(kind)
        current = self._selected[kind]
        if not alive:
            if current is not None:
                log.warning("group '%s' [%s]: no node alive", self.name, kind.value)
            self._selected[kind] = None
            return
        best = min(alive, key=lambda n: self.metric(n, kind))  # min() keeps the first on ties
        if current is None or current not in alive:
            chosen = best
        elif best is not current and (self.metric(best, kind)
                                      < self.metric(current, kind) - self.spec.check.tolerance):
            chosen = best
        else:
            chosen = current
        if chosen is not current:
            log.info("group '%s' [%s] %s: selects node '%s' (%s)%s", self.name, kind.value,
                     self.spec.policy.value, chosen.name, _ms(self.metric(chosen, kind)),
                     f", was '{current.name}' ({_ms(self.metric(current, kind))})"
                     if current else "")
        self._selected[kind] = chosen

    def selected(self, kind: Check = Check.TCP) -> Node | None:
        """The node the latency policies currently hold (None for random/fixed or all down)."""
        return self._selected[kind]

    def select(self, kind: Check = Check.TCP, exclude: Iterable[Node] = ()) -> Node | None:
        """The node for the next flow of `kind`, skipping `exclude`; None when none is alive."""
        if not exclude and self.spec.policy.by_latency and (self.view_of or self).pinned is None:
            # a new flow (nothing to skip) under a latency policy: the node it holds, which
            # _reselect keeps alive, without building the alive list once per flow
            current = self._selected[kind]
            if current is not None and self.stats[kind][current.name].alive:
                return current
        skip = set(exclude)
        alive = [n for n in self.alive(kind) if n not in skip]
        if not alive:
            return None
        pinned = (self.view_of or self).pinned  # a marked view follows its group's pin
        if pinned is not None and pinned in alive:  # a pinned node that is down falls back
            return pinned
        policy = self.spec.policy
        if policy is Policy.RANDOM:
            return self.rng.choice(alive)
        if policy is Policy.FIXED:
            order = self.candidates(kind)
            start = self.nodes[self.spec.fixed_index]
            first = order.index(start) if start in order else 0
            for node in order[first:] + order[:first]:
                if node in alive:
                    return node
            return None
        current = self._selected[kind]
        if current in alive:
            return current
        return min(alive, key=lambda n: self.metric(n, kind))

    # --- Outbound protocol -----------------------------------------------------------------
    def all_down(self, kind: Check, errors: list[str]) -> AllNodesDown:
        self.checker.poke()
        if errors:
            return AllNodesDown(f"group '{self.name}': every node failed: {'; '.join(errors)}")
        down = ", ".join(f"{n.name} ({self.stats[kind][n.name].last_error or 'down'})"
                         for n in self.candidates(kind))
        if not self.candidates(kind):
            why = "; ".join(f"{n.name}: {n.udp_missing}" for n in self.nodes[:3] if n.udp_missing)
            more = f" and {len(self.nodes) - 3} more" if len(self.nodes) > 3 else ""
            return AllNodesDown(f"group '{self.name}': no node carries {kind.value}"
                                + (f" ({why}{more})" if why and kind is Check.UDP else ""))
        return AllNodesDown(f"group '{self.name}': all nodes down for {kind.value}: {down}")

    async def dial_tcp(self, dst: Destination, tried: list[Node] | None = None,
                       errors: list[str] | None = None) -> Dialed:
        """A connection through the selected node, failing over to the next alive one.
        `tried`/`errors`: nodes already dialed for this flow and why they failed (the relay's
        callback dial hands its failover over to here)."""
        tried = [] if tried is None else tried
        errors = [] if errors is None else errors
        while (node := self.select(Check.TCP, tried)) is not None:
            tried.append(node)
            self.dial_attempts += 1
            try:
                stream = await self._dial_node(node, dst)
            except ProxyRefusedError:
                raise
            except OutboundError as exc:
                errors.append(f"{node}: {exc.what}")
                self.report_failure(node, Check.TCP, exc.what)
                continue
            except OSError as exc:  # e.g. ECONNRESET after CONNECT: the outbound let it out
                what = dial_failure(exc)
                errors.append(f"{node}: {what}")
                self.report_failure(node, Check.TCP, what)
                continue
            return Dialed(stream, node)
        raise self.all_down(Check.TCP, errors)

    async def _dial_node(self, node: Node, dst: Destination) -> Stream:
        """A connection from the warm pool when one is ready (the request alone goes out on
        it), else a fresh dial; a pooled connection the node had closed is dialed afresh."""
        pools = self.pools
        pooled = pools.take(node, self.opts) if pools is not None else None
        if pooled is not None:
            assert pools is not None
            stream = await proxy.dial_prepared(pooled[0], pooled[1], node, dst, self.opts)
            if stream is not None:
                return stream
            pools.report_dead()
        return await proxy.dial_tcp(node, dst, self.opts)

    async def open_udp(self, family: int, on_reply: ReplyCallback) -> UdpAssociation:
        tried: list[Node] = []
        errors: list[str] = []
        while (node := self.select(Check.UDP, tried)) is not None:
            tried.append(node)
            self.dial_attempts += 1
            try:
                return await proxy.open_udp(node, self.opts, on_reply)
            except OutboundError as exc:
                errors.append(f"{node}: {exc.what}")
                self.report_failure(node, Check.UDP, exc.what)
            except OSError as exc:
                what = dial_failure(exc)
                errors.append(f"{node}: {what}")
                self.report_failure(node, Check.UDP, what)
        raise self.all_down(Check.UDP, errors)

    async def start(self) -> None:
        """Start the periodic health checks."""
        self.checker.start()

    async def close(self) -> None:
        await self.checker.stop()
