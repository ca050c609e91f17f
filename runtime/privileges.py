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

CAP_NET_RAW is not needed: IP_TRANSPARENT and SO_MARK accept CAP_NET_ADMIN too. A tproxy_port
below 1024 (ip_unprivileged_port_start) would also need CAP_NET_BIND_SERVICE.
"""
from __future__ import annotations

import errno
from pathlib import Path

#: name -> bit number (linux/capability.h)
REQUIRED = {"CAP_BPF": 39, "CAP_PERFMON": 38, "CAP_NET_ADMIN": 12}
CAP_NET_BIND_SERVICE = 10


def effective_capabilities(status: Path = Path("/proc/self/status")) -> int:
    """CapEff of this process, as a bit mask."""
    for line in status.read_text().splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise ValueError(f"no CapEff line in {status}")


def missing(required: dict[str, int] = REQUIRED) -> list[str]:
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
    return (f"missing capabilities {' '.join(lacking)}: the gateway needs {' '.join(REQUIRED)} "
            "(AmbientCapabilities= for a non-root user; see docs/privileges.md)")
