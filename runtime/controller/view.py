"""What the controller sees of the running gateway, behind one object.

Every route and the metrics read the gateway through a `GatewayView`: the build (manifest: rules,
outbounds, settings), the loaded BPF object (its outbound_stats and rule_hits counters), the
relay (its stats, outbound table, live connections) and the DNS module when there is one. The
controller holds one view at a time (`Controller.view`), so a reload swaps the whole of it in
one assignment and no request sees half of an old build and half of a new one.

Reads only: the view never changes the datapath; pinning a group's node (PUT /proxies) and
closing connections act on the relay's own objects.
"""
from __future__ import annotations

import os
import re
import resource
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from dae_py.contract.maps import OUTBOUND_STATS, RULE_HITS, U32
from dae_py.runtime.groups import Group
from dae_py.runtime.groups.stats import Check
from dae_py.runtime.proxy import Node
from dae_py.runtime.relay.track import ConnTracker

#: Delay results kept per node (mihomo keeps 10 in a proxy's `history`).
HISTORY = 10


@dataclass
class NodeHistory:
    """Delay tests of one node (the /delay endpoint's and the health checks' results)."""

    delays: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=HISTORY))  # (time, ms)

    def add(self, when: float, delay_ms: int) -> None:
        self.delays.append((when, delay_ms))


#: Clash rule types for dae's match functions (what dashboards show and filter on); a rule
#: that combines several functions is `AND`, the fallback `Match`.
CLASH_TYPES = {"dip": "IPCIDR", "sip": "SrcIPCIDR", "dport": "DstPort", "sport": "SrcPort",
               "l4proto": "Network", "pname": "ProcessName", "mac": "SrcMAC", "ipversion": "IPVersion",
               "dscp": "DSCP", "domain": "Domain"}
_DOMAIN_KINDS = {"suffix": "DomainSuffix", "keyword": "DomainKeyword", "full": "Domain", "regex": "DomainRegex",
                 "geosite": "GeoSite"}
_CALL = re.compile(r"(!?)(\w+)\(\s*(?:(\w+)\s*:)?")
_LABEL = re.compile(r"rule (\d+) ")


def clash_type(text: str) -> str:
    """The Clash rule type of a dae rule's text ('dip(10.0.0.0/8) -> proxy' is IPCIDR)."""
    if text == "fallback":
        return "Match"
    calls = _CALL.findall(text.split("->")[0])
    if len(calls) != 1:
        return "AND" if calls else "Match"
    negated, name, key = calls[0]
    kind = _DOMAIN_KINDS.get(key, "DomainSuffix") if name == "domain" else CLASH_TYPES.get(name, name)
    return f"NOT {kind}" if negated else kind


@dataclass(frozen=True)
class RuleRow:
    index: int  # the kernel's rule index; the fallback is len(rules)
    text: str
    outbound: str
    where: str
    hits: int

    @property
    def clash_type(self) -> str:
        return clash_type(self.text)

    @property
    def payload(self) -> str:
        """The rule's conditions (its text without the outbound), as Clash's `payload`."""
        return self.text.rsplit("->", 1)[0].strip()


class GatewayView:
    """One build's gateway as the controller reads it. `obj` may be None (tests without BPF):
    the kernel counters then read as zero."""

    def __init__(self, build: Any, relay: Any, obj: Any = None, dns: Any = None,
                 tracker: ConnTracker | None = None, subscriptions: Any = None) -> None:
        self.build = build
        self.subscriptions = subscriptions  # runtime.subscriptions.SubscriptionManager or None
        self.manifest = build.manifest
        self.relay = relay
        self.obj = obj
        self.dns = dns
        self.tracker = tracker if tracker is not None else ConnTracker()
        self.started = time.time()
        self.history: dict[str, NodeHistory] = {}

    def sync_counts(self) -> None:
        """Before connections or totals are shown: flows whose bytes the kernel moves (sockmap)
        count them now, not at the relay's next sweep (in-process relay; workers report theirs)."""
        sync = getattr(getattr(self.relay, "tcp", None), "sync_counts", None)
        if sync is not None:
            sync()

    # --- outbounds, groups, nodes --------------------------------------------------------
    def groups(self) -> list[Group]:
        return list(self.relay.table.groups())

    def group(self, name: str) -> Group | None:
        for g in self.groups():
            if g.name == name:
                return g
        return None

    def nodes(self) -> dict[str, Node]:
        out: dict[str, Node] = {}
        for g in self.groups():
            for n in g.nodes:
                out.setdefault(n.name, n)
        return out

    def node_state(self, name: str) -> tuple[bool, float | None]:
        """(alive, last health-check latency in seconds) of a node: alive if any group that has
        it holds it alive for TCP; the latency of the first group that measured it."""
        alive_any: bool | None = None
        latency = None
        for g in self.groups():
            stats = g.stats[Check.TCP].get(name)
            if stats is None:
                continue
            alive_any = bool(alive_any) or stats.alive
            if latency is None and stats.last is not None:
                latency = stats.last
        return (alive_any if alive_any is not None else False), latency

    def node_history(self, name: str) -> NodeHistory:
        hist = self.history.get(name)
        if hist is None:
            hist = self.history[name] = NodeHistory()
        return hist

    # --- kernel counters ------------------------------------------------------------------
    def kernel_outbounds(self) -> dict[str, tuple[int, int]]:
        """outbound name -> (packets, bytes) summed over CPUs; zeros without a loaded object."""
        out: dict[str, tuple[int, int]] = {}
        m = self._map("outbound_stats")
        for o in self.manifest.outbounds:
            packets = nbytes = 0
            if m is not None:
                for raw in m.percpu_values(U32.pack(o.id)) or []:
                    v = OUTBOUND_STATS.unpack(raw)
                    packets += v["packets"]
                    nbytes += v["bytes"]
            out[o.name] = (packets, nbytes)
        return out

    def rule_hits(self) -> list[int]:
        """Flows decided per rule index, the fallback last (zeros for a build without rule_hits)."""
        n = len(self.manifest.rules) + 1
        m = self._map("rule_hits")
        if m is None:
            return [0] * n
        return [sum(RULE_HITS.unpack(raw)["flows"] for raw in m.percpu_values(U32.pack(i)) or [])
                for i in range(n)]

    def rules(self) -> list[RuleRow]:
        hits = self.rule_hits()
        cfg = self.manifest.config_file
        rows = [RuleRow(r.index, r.text, r.outbound, r.where(cfg), hits[r.index] if r.index < len(hits) else 0)
                for r in self.manifest.rules]
        fb = self.manifest.fallback
        rows.append(RuleRow(len(self.manifest.rules), "fallback", fb.outbound, cfg, hits[-1]))
        return rows

    def rule_of_label(self, label: str) -> tuple[str, str]:
        """(Clash type, payload) of the rule a flow's label names ('rule 3 (config.yaml:33)',
        'fallback'): what /connections shows in `rule` and `rulePayload`."""
        match = _LABEL.match(label)
        if match is None:
            return "Match", ""
        index = int(match.group(1))
        rules = self.manifest.rules
        if index >= len(rules):
            return "Match", ""
        text = rules[index].text
        return clash_type(text), text.rsplit("->", 1)[0].strip()

    def _map(self, name: str) -> Any:
        obj = self.obj
        if obj is None or not getattr(obj, "loaded", False):
            return None
        try:
            return obj.map(name)
        except (KeyError, LookupError, OSError, ValueError):
            return None
        except Exception:  # noqa: BLE001 - e.g. BpfError for a map an older build lacks
            return None

    # --- relay -----------------------------------------------------------------------------
    def relay_totals(self) -> tuple[int, int]:
        """(bytes up, bytes down) over every outbound the relay carried."""
        self.sync_counts()
        up = down = 0
        for c in self.relay.stats.by_outbound.values():
            up += c.bytes_up
            down += c.bytes_down
        return up, down

    def dial_failures(self) -> Iterable[tuple[str, str, str, int]]:
        """(group, node, cause, count)."""
        for g in self.groups():
            for (node, cause), n in sorted(getattr(g, "dial_failures", {}).items()):
                yield g.name, node, cause, n


def process_rss_bytes() -> int:
    """Resident set size now (from /proc/self/statm), not the peak getrusage gives."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()
    except (OSError, ValueError, IndexError):
        return 0


def open_fds() -> int:
    try:
        return len(os.listdir("/proc/self/fd"))
    except OSError:
        return 0
