"""The /metrics collector: the gateway in Prometheus' text format (prometheus-client), read at
scrape time. Imported at the first scrape (metrics.py), not at start: a gateway nobody scrapes
does not keep prometheus-client loaded.

One collector walks the current GatewayView on every scrape, so nothing is counted twice and
nothing runs between scrapes: the kernel's per-CPU counters (outbound_stats, rule_hits) summed
over CPUs, the relay's per-outbound counters and live connections, the groups' health checks and
dial failures, the DNS module's counters when it runs, and the process' RSS and descriptors.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric, SummaryMetricFamily
from prometheus_client.registry import Collector

from dae_py.runtime.groups.stats import Check

from .view import GatewayView, open_fds, process_rss_bytes


class GatewayCollector(Collector):
    def __init__(self, current: Callable[[], GatewayView]) -> None:
        self.current = current

    def collect(self) -> Iterator[Metric]:
        v = self.current()
        packets = CounterMetricFamily("dae_outbound_packets", "Packets the kernel program sent to each "
                                      "outbound (outbound_stats)", labels=["outbound"])
        nbytes = CounterMetricFamily("dae_outbound_bytes", "Bytes the kernel program sent to each outbound",
                                     labels=["outbound"])
        for name, (p, b) in v.kernel_outbounds().items():
            packets.add_metric([name], p)
            nbytes.add_metric([name], b)
        yield packets
        yield nbytes

        hits = CounterMetricFamily("dae_rule_hits", "Flows each rule decided in the kernel (rule_hits); "
                                   "the fallback has rule=\"fallback\"", labels=["rule", "outbound", "where"])
        for r in v.rules():
            hits.add_metric(["fallback" if r.text == "fallback" else str(r.index), r.outbound, r.where], r.hits)
        yield hits

        flows = CounterMetricFamily("dae_relay_flows", "Flows the relay carried, per outbound", labels=["outbound"])
        active = GaugeMetricFamily("dae_relay_flows_active", "Flows the relay carries now", labels=["outbound"])
        up = CounterMetricFamily("dae_relay_bytes_up", "Bytes client -> upstream through the relay",
                                 labels=["outbound"])
        down = CounterMetricFamily("dae_relay_bytes_down", "Bytes upstream -> client through the relay",
                                   labels=["outbound"])
        refused = CounterMetricFamily("dae_relay_refused", "Flows the relay refused (dial failed, blocked)",
                                      labels=["outbound"])
        v.sync_counts()
        for name, c in sorted(v.relay.stats.snapshot().items()):
            flows.add_metric([name], c["flows"])
            active.add_metric([name], c["active"])
            up.add_metric([name], c["bytes_up"])
            down.add_metric([name], c["bytes_down"])
            refused.add_metric([name], c["refused"])
        yield from (flows, active, up, down, refused)

        failures = CounterMetricFamily("dae_dial_failures", "Failed dials through a node, by cause",
                                       labels=["group", "node", "cause"])
        for group, node, cause, n in v.dial_failures():
            failures.add_metric([group, node, cause], n)
        yield failures

        alive = GaugeMetricFamily("dae_node_alive", "1 while the group's health checks hold the node alive",
                                  labels=["group", "node", "check"])
        latency = GaugeMetricFamily("dae_node_latency_seconds", "Last successful health-check latency",
                                    labels=["group", "node", "check"])
        for g in v.groups():
            for kind in Check:
                for node, st in g.stats[kind].items():
                    if kind is Check.UDP and not any(n.name == node and n.supports_udp for n in g.nodes):
                        continue
                    alive.add_metric([g.name, node, kind.value], 1 if st.alive else 0)
                    if st.last is not None:
                        latency.add_metric([g.name, node, kind.value], st.last)
        yield alive
        yield latency

        dns = v.dns
        if dns is not None:
            cache = dns.cache
            yield CounterMetricFamily("dae_dns_cache_hits", "DNS answers from the cache", value=cache.hits)
            yield CounterMetricFamily("dae_dns_cache_misses", "DNS queries the cache could not answer",
                                      value=cache.misses)
            answers = CounterMetricFamily("dae_dns_answers", "DNS queries by outcome", labels=["outcome"])
            answers.add_metric(["answered"], dns.answered)
            answers.add_metric(["servfail"], dns.failed)
            answers.add_metric(["rejected"], dns.rejected)
            yield answers
            ups = list(getattr(dns, "upstreams", {}).values())
            latency_s = SummaryMetricFamily("dae_dns_upstream_latency_seconds",
                                            "Time each upstream took to answer (answered queries)", labels=["upstream"])
            failures = CounterMetricFamily("dae_dns_upstream_errors", "Upstream queries that failed or timed out",
                                           labels=["upstream"])
            for up in ups:
                latency_s.add_metric([up.name], count_value=up.answered, sum_value=up.answer_seconds)
                failures.add_metric([up.name], up.errors)
            yield latency_s
            yield failures

        conns = GaugeMetricFamily("dae_connections_tracked", "Live relayed connections (GET /connections)")
        conns.add_metric([], len(v.tracker))
        yield conns
        yield GaugeMetricFamily("dae_process_resident_memory_bytes", "Resident set size", value=process_rss_bytes())
        yield GaugeMetricFamily("dae_process_open_fds", "Open file descriptors", value=open_fds())


def registry_for(current: Callable[[], GatewayView]) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GatewayCollector(current))
    return registry
