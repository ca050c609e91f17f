"""The pname() hooks themselves (templates/bpf/cgroup.h), on real sockets of this process: what they
store in each socket's storage (sock_pname is an SK_STORAGE map, which user space reads with the
socket's fd as the key), for connect4/6 and sendmsg4/6, and that a loopback destination is
skipped (such a socket never leaves through a WAN). The lab tests (test_local_routing) show the
rules acting on what is stored; this shows what is stored, without a lab."""
from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pyroute2 import netns

from dae_py.compiler.pipeline import compile_config
from dae_py.contract.manifest import Manifest
from dae_py.runtime.bpf import BpfObject
from dae_py.runtime.datapath._netns import open_iproute, run_in_netns
from dae_py.runtime.datapath.cgroup import cgroup2_mount
from dae_py.runtime.datapath.localhost import attach_pname_hooks

from .cgroups import attached, child_cgroup

pytestmark = pytest.mark.root
CONFIG = ("global: {lan_interface: [eth0], wan_interface: [eth1]}\n"
          "routing:\n  rules:\n    - \"pname(curl) -> block\"\n  fallback: direct\n")
PEER4, PEER6 = "10.214.9.2", "fd14:9::2"


@pytest.fixture
def routed_ns() -> Iterator[str]:
    """A namespace with a veth whose on-link peers PEER4/PEER6 are routed, not loopback."""
    name = f"h13hk{os.getpid() % 100000}"
    netns.create(name)
    try:
        with open_iproute(name) as ipr:
            ipr.link("add", ifname="hk0", kind="veth", peer="hk1")
            for ifname in ("lo", "hk0", "hk1"):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
            idx = ipr.link_lookup(ifname="hk0")[0]
            ipr.addr("add", index=idx, address="10.214.9.1", prefixlen=24)
            ipr.addr("add", index=idx, address="fd14:9::1", prefixlen=64, flags=0x02)  # IFA_F_NODAD
        yield name
    finally:
        netns.remove(name)


@pytest.fixture
def hooked(tmp_path: Path) -> Iterator[Any]:
    """A pname() build's hooks on a child cgroup that this test process is moved into."""
    compile_config(None, tmp_path / "build", text=CONFIG, name="hooks.yaml")
    manifest = Manifest.from_json(json.loads((tmp_path / "build" / "manifest.json").read_text()))
    with child_cgroup("hooks") as cg, BpfObject(tmp_path / "build" / "program.o") as obj:
        obj.load()
        hooks = attach_pname_hooks(obj, manifest, cg)
        assert hooks is not None
        try:
            (cg / "cgroup.procs").write_text(str(os.getpid()))
            yield obj
        finally:
            (cgroup2_mount() / "cgroup.procs").write_text(str(os.getpid()))
            hooks.close()
        assert attached(cg) == []


def stored(obj: Any, sock: socket.socket) -> tuple[str, int, str] | None:
    """(comm, pid, exe) in the socket's storage, or None."""
    raw = obj.map("sock_pname").lookup(struct.pack("<i", sock.fileno()))
    if raw is None:
        return None
    comm, pid, exe = raw[0:16], struct.unpack_from("<I", raw, 16)[0], raw[24:40]
    return comm.split(b"\0")[0].decode(), pid, exe.split(b"\0")[0].decode()


def me() -> tuple[str, int, str]:
    """What the hooks should store for this process: comm, pid, the executable's basename."""
    comm = Path(f"/proc/{os.getpid()}/comm").read_text().strip()
    return comm, os.getpid(), os.path.basename(os.readlink("/proc/self/exe"))[:15]


def test_routed_sockets_are_recorded_and_loopback_ones_skipped(hooked: Any, routed_ns: str) -> None:
    def sockets() -> dict[str, socket.socket]:
        out = {}
        for key, family, dst in (("v4", socket.AF_INET, PEER4), ("v6", socket.AF_INET6, PEER6),
                                 ("lo4", socket.AF_INET, "127.0.0.1"), ("lo6", socket.AF_INET6, "::1")):
            s = socket.socket(family, socket.SOCK_DGRAM)
            s.connect((dst, 9))
            out[key] = s
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", (PEER4, 9))  # no connect: sendmsg4 records it
        out["sendto4"] = s
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("127.0.0.1", 9))
        out["sendto_lo"] = s
        out["unused"] = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # no hook has run
        return out

    socks = run_in_netns(routed_ns, sockets)  # a new thread: its comm is its creator's
    try:
        who = me()
        for key in ("v4", "v6", "sendto4"):
            assert stored(hooked, socks[key]) == who, key
        for key in ("lo4", "lo6", "sendto_lo", "unused"):
            assert stored(hooked, socks[key]) is None, key
    finally:
        for s in socks.values():
            s.close()
