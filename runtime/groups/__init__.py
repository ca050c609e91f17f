"""Groups of nodes with dae's selection policies and health checks.

Public API: `Group` (an Outbound: `dial_tcp`, `open_udp`, `select`, `record`, `start`, `close`),
`GroupSpec` / `CheckSpec` / `Policy` (from the manifest), `Check` (tcp, udp, dns_tcp),
`HealthChecker` with the `http_probe` and `dns_probe` probes.
"""
from .group import Group
from .health import CheckFailed, HealthChecker, dns_probe, http_probe
from .spec import CheckSpec, GroupSpec, Policy
from .stats import Check, NodeStats

__all__ = ["Check", "CheckFailed", "CheckSpec", "Group", "GroupSpec", "HealthChecker",
           "NodeStats", "Policy", "dns_probe", "http_probe"]
