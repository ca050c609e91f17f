"""Helpers for the datapath tests: namespaces, veths, BPF programs, and kernel snapshots.

Everything a test builds lives in network namespaces it creates (unique names, removed by the
fixtures even when a test fails); addresses are only ever assigned inside them.
"""
from __future__ import annotations

import ctypes
import itertools
import os
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from pyroute2 import netns

from dae_py.runtime.datapath import sysctls, tc
from dae_py.runtime.datapath._netns import open_iproute

PROGS = Path(__file__).resolve().parent / "progs"
IFA_F_NODAD = 0x02
_counter = itertools.count()


def unique(prefix: str = "dpt") -> str:
    """A netns name no other test run (or concurrent session) will pick."""
    return f"{prefix}{os.getpid() % 100000}x{next(_counter)}{uuid.uuid4().hex[:4]}"


def create_netns(name: str) -> None:
    """A namespace with lo up, and IPv6 DAD off so link-local addresses settle quickly."""
    netns.create(name)
    for key in ("net/ipv6/conf/all/accept_dad", "net/ipv6/conf/default/accept_dad"):
        sysctls.write(key, 0, name)
    with open_iproute(name) as ipr:
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")


def settle(ns: str, timeout: float = 10.0) -> None:
    """Wait until the kernel's own asynchronous work on fresh links is over: every up veth
    has its IPv6 link-local address (added once carrier is seen, via linkwatch, up to ~1 s
    later), none is tentative, and two snapshots in a row agree. Snapshot comparisons are
    meaningless before that."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        with open_iproute(ns) as ipr:
            veths = {link["index"] for link in ipr.get_links()
                     if link.get_attr("IFLA_IFNAME") != "lo" and link.get_attr("IFLA_OPERSTATE") == "UP"}
            ll = {a["index"] for a in ipr.get_addr(family=socket.AF_INET6)
                  if str(a.get_attr("IFA_ADDRESS")).startswith("fe80:")
                  and not (a.get_attr("IFA_FLAGS") or a["flags"]) & 0x40}
        if veths <= ll:
            snap = snapshot(ns)
            if snap == last:
                return
            last = snap
        time.sleep(0.2)
    raise TimeoutError(f"namespace {ns} did not settle")


def remove_netns(name: str) -> None:
    if name in netns.listnetns():
        netns.remove(name)


def add_veth(ns: str, name: str, peer: str, peer_ns: str | None = None) -> None:
    """A veth pair in `ns` (peer moved to `peer_ns` if given); both ends up."""
    with open_iproute(ns) as ipr:
        spec: Any = {"ifname": peer, "net_ns_fd": peer_ns} if peer_ns else peer
        ipr.link("add", ifname=name, kind="veth", peer=spec)
        for ifname in (name,) if peer_ns else (name, peer):
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
    if peer_ns:
        with open_iproute(peer_ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=peer)[0], state="up")


def add_addr(ns: str, ifname: str, addr: str, prefixlen: int) -> None:
    with open_iproute(ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        if ":" in addr:
            ipr.addr("add", index=idx, address=addr, prefixlen=prefixlen, flags=IFA_F_NODAD)
        else:
            ipr.addr("add", index=idx, address=addr, prefixlen=prefixlen)


def ifindex(ns: str, ifname: str) -> int:
    with open_iproute(ns) as ipr:
        return ipr.link_lookup(ifname=ifname)[0]


# --- BPF --------------------------------------------------------------------------------------

_libbpf: ctypes.CDLL | None = None


def libbpf() -> ctypes.CDLL:
    global _libbpf
    if _libbpf is None:
        _libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
        _libbpf.bpf_obj_get.argtypes = [ctypes.c_char_p]
        _libbpf.bpf_obj_get.restype = ctypes.c_int
    return _libbpf


def compile_bpf(src: Path, out: Path, *defines: str) -> Path:
    subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", "-I/usr/include/x86_64-linux-gnu",
         *[f"-D{d}" for d in defines], "-c", str(src), "-o", str(out)],
        check=True, capture_output=True, text=True,
    )
    return out


def bpf_obj_get(path: str) -> int:
    fd = libbpf().bpf_obj_get(path.encode())
    if fd < 0:
        err = ctypes.get_errno() or -fd
        raise OSError(err, f"bpf_obj_get({path}): {os.strerror(err)}")
    return fd


def load_prog(obj: Path, prog: str | None = None) -> int:
    """Load a tc (classifier) object with bpftool, open the pinned program with libbpf's
    bpf_obj_get, and remove the pin: the returned fd keeps the program alive."""
    pin = f"/sys/fs/bpf/{unique('dptprog')}"
    if prog is None:
        subprocess.run(["bpftool", "prog", "load", str(obj), pin, "type", "classifier"],
                       check=True, capture_output=True, text=True)
        try:
            return bpf_obj_get(pin)
        finally:
            os.unlink(pin)
    subprocess.run(["bpftool", "prog", "loadall", str(obj), pin, "type", "classifier"],
                   check=True, capture_output=True, text=True)
    try:
        return bpf_obj_get(f"{pin}/{prog}")
    finally:
        for entry in os.listdir(pin):
            os.unlink(f"{pin}/{entry}")
        os.rmdir(pin)


# --- snapshots -------------------------------------------------------------------------------

_ROUTE_FIELDS = ("family", "dst_len", "src_len", "tos", "table", "proto", "scope", "type",
                 "flags")
_ROUTE_ATTRS = ("RTA_DST", "RTA_SRC", "RTA_OIF", "RTA_GATEWAY", "RTA_PRIORITY", "RTA_PREFSRC",
                "RTA_TABLE", "RTA_PREF")
_RULE_FIELDS = ("family", "dst_len", "src_len", "tos", "table", "action", "flags")
_RULE_ATTRS = ("FRA_PRIORITY", "FRA_TABLE", "FRA_FWMARK", "FRA_FWMASK", "FRA_IIFNAME",
               "FRA_OIFNAME", "FRA_PROTOCOL", "FRA_SRC", "FRA_DST", "FRA_SUPPRESS_PREFIXLEN")
SYSCTL_GLOBS = ("net/ipv4/ip_forward", "net/ipv4/conf/*/*", "net/ipv6/conf/*/*")
# Counters and per-boot identifiers, not settings.
_SYSCTL_SKIP = ("stable_secret",)


def snapshot(ns: str) -> dict[str, Any]:
    """qdiscs, tc filters (both clsact hooks), rules and routes (all tables, v4+v6) and the
    ipv4/ipv6 sysctls of namespace `ns`, in comparable form."""
    snap: dict[str, Any] = {}
    with open_iproute(ns) as ipr:
        links = {link["index"]: link.get_attr("IFLA_IFNAME") for link in ipr.get_links()}
        snap["links"] = sorted(links.values())
        snap["qdiscs"] = sorted(
            (links.get(q["index"]), q.get_attr("TCA_KIND"), q["handle"], q["parent"])
            for q in ipr.get_qdiscs()
        )
        filters = []
        for idx, name in links.items():
            for direction in tc.DIRECTIONS:
                for f in tc.list_filters(ipr, idx, direction):
                    filters.append((name, direction, f.prio, f.handle, f.kind, f.name,
                                    f.prog_id))
        snap["filters"] = sorted(filters, key=repr)
        rules = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_rules(family=family):
                rules.append(tuple(r[k] for k in _RULE_FIELDS)
                             + tuple(r.get_attr(a) for a in _RULE_ATTRS))
        snap["rules"] = sorted(rules, key=repr)
        routes = []
        for family in (socket.AF_INET, socket.AF_INET6):
            for r in ipr.get_routes(family=family):
                routes.append(tuple(r[k] for k in _ROUTE_FIELDS)
                              + tuple(r.get_attr(a) for a in _ROUTE_ATTRS))
        snap["routes"] = sorted(routes, key=repr)
    snap["sysctls"] = {k: v for k, v in sysctls.read_glob(SYSCTL_GLOBS, ns).items()
                       if k.rsplit("/", 1)[-1] not in _SYSCTL_SKIP}
    return snap


def diff(a: dict[str, Any], b: dict[str, Any]) -> str:
    """Readable differences between two snapshots ('' if equal)."""
    out = []
    for key in sorted(set(a) | set(b)):
        x, y = a.get(key), b.get(key)
        if x == y:
            continue
        if isinstance(x, dict) and isinstance(y, dict):
            for k in sorted(set(x) | set(y)):
                if x.get(k) != y.get(k):
                    out.append(f"{key}: {k}: {x.get(k)!r} -> {y.get(k)!r}")
        else:
            xs, ys = set(map(repr, x or [])), set(map(repr, y or []))
            out += [f"{key}: - {e}" for e in sorted(xs - ys)]
            out += [f"{key}: + {e}" for e in sorted(ys - xs)]
    return "\n".join(out)


# --- a gateway namespace for the Datapath tests ------------------------------------------------

GW_LAN = ("lan0", "lan1")
GW_WAN = "wan0"


def make_gateway(ns: str) -> None:
    """Two LAN veths and a WAN veth holding the default routes (peer ends `xl*`/`xw0` stay in
    the same namespace), plus non-default sysctls that make exact restoring non-trivial: an
    interface with its own `forwarding`, strict rp_filter and src_valid_mark on (as wg-quick
    leaves them), router advertisements accepted on the WAN."""
    add_veth(ns, "lan0", "xl0")
    add_veth(ns, "lan1", "xl1")
    add_veth(ns, "wan0", "xw0")
    add_addr(ns, "lan0", "10.98.1.1", 24)
    add_addr(ns, "wan0", "10.98.0.1", 24)
    add_addr(ns, "wan0", "fd98::1", 64)
    with open_iproute(ns) as ipr:
        ipr.route("add", dst="0.0.0.0/0", gateway="10.98.0.254")
        ipr.route("add", family=socket.AF_INET6, dst="::/0", gateway="fd98::fe")
    for key, value in (("net/ipv4/ip_forward", 0), ("net/ipv4/conf/lan1/forwarding", 1),
                       ("net/ipv4/conf/all/rp_filter", 1),
                       ("net/ipv4/conf/all/src_valid_mark", 1),
                       ("net/ipv6/conf/wan0/accept_ra", 1)):
        sysctls.write(key, value, ns)
    settle(ns)


def without_links(snap: dict[str, Any], gone: set[str], gone_indexes: set[int]) -> dict[str, Any]:
    """A snapshot minus everything belonging to interfaces that were deleted."""
    out = dict(snap)
    out["links"] = [n for n in snap["links"] if n not in gone]
    out["qdiscs"] = [q for q in snap["qdiscs"] if q[0] not in gone]
    out["filters"] = [f for f in snap["filters"] if f[0] not in gone]
    oif = len(_ROUTE_FIELDS) + _ROUTE_ATTRS.index("RTA_OIF")
    out["routes"] = [r for r in snap["routes"] if r[oif] not in gone_indexes]
    out["sysctls"] = {k: v for k, v in snap["sysctls"].items() if _conf_iface(k) not in gone}
    return out


def _conf_iface(key: str) -> str | None:
    parts = key.split("/")  # net/ipv4/conf/<ifname>/<setting>
    return parts[3] if len(parts) == 5 and parts[2] == "conf" else None
