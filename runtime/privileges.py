"""The capabilities the runtime needs, and a start-up failure's hint naming the missing ones.

Found by running the gateway in the lab as an unprivileged user with only ambient capabilities
and dropping each in turn (tests/runtime/test_privileges.py, docs/privileges.md):

  CAP_BPF        bpf(2): maps, BTF, program load. Without it libbpf cannot load even its probe
                 program (EPERM).
  CAP_PERFMON    the verifier's privileged paths: without it the classifier is rejected
                 ("pointer arithmetic ... prohibited for !root", EACCES).
  CAP_NET_ADMIN  loading a tc (SCHED_CLS) program at all (EPERM without it), then the clsact
                 qdisc and filters, the fwmark rule and local route, /proc/sys/net writes,
                 IP_TRANSPARENT on the listeners and SO_MARK on outbound sockets.
  CAP_NET_BIND_SERVICE  replies of proxied UDP flows leave from a transparent socket bound to
                 the remote's address *and port*; for a port below ip_unprivileged_port_start
                 (DNS 53, QUIC 443, NTP 123) bind() fails with EACCES without it, and those
                 replies are dropped. The gateway starts without it (with a warning).

CAP_NET_RAW is not needed: IP_TRANSPARENT and SO_MARK accept CAP_NET_ADMIN too. Neither is
CAP_SYS_ADMIN (no bpffs pins, no BPF_*_GET_FD_BY_ID) nor CAP_SYS_RESOURCE (BPF memory is charged
to the memory cgroup since 5.11, not to RLIMIT_MEMLOCK).
"""
from __future__ import annotations

import errno
import logging
from pathlib import Path

log = logging.getLogger(__name__)

#: name -> bit number (linux/capability.h): what the gateway cannot start without
NEEDED_TO_START = {"CAP_BPF": 39, "CAP_PERFMON": 38, "CAP_NET_ADMIN": 12}
#: the least set for every flow to work: the unit's AmbientCapabilities=/CapabilityBoundingSet=
LEAST = {**NEEDED_TO_START, "CAP_NET_BIND_SERVICE": 10}
UNPRIVILEGED_PORT_START = Path("/proc/sys/net/ipv4/ip_unprivileged_port_start")


def effective_capabilities(status: Path = Path("/proc/self/status")) -> int:
    """CapEff of this process, as a bit mask."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise ValueError(f"no CapEff line in {status}")


def missing(required: dict[str, int] = LEAST) -> list[str]:
    """The capabilities of `required` this process does not hold effectively."""
    eff = effective_capabilities()
    return [name for name, bit in required.items() if not eff >> bit & 1]


def hint(err: int | None) -> str | None:
    """For a start-up failure with errno `err`: a line naming the missing capabilities when
    the failure is a permission error and some are missing, else None."""
    if err not in (errno.EPERM, errno.EACCES):
        return None
    lacking = missing()
    if not lacking:
        return None
    return (f"missing capabilities {' '.join(lacking)}: the gateway needs {' '.join(LEAST)} "
            "(AmbientCapabilities= for a non-root user; see docs/privileges.md)")


def warn_if_degraded() -> None:
    """The start-up warning for a gateway that runs but cannot answer every flow."""
    if "CAP_NET_BIND_SERVICE" not in missing():
        return
    try:
        start = int(UNPRIVILEGED_PORT_START.read_text())
    except (OSError, ValueError):
        start = 1024
    if start > 1:
        log.warning("no CAP_NET_BIND_SERVICE: replies of proxied UDP flows from remote ports below %d "
                    "(DNS, QUIC, NTP) will be dropped", start)
