"""Attach the pname() cgroup hooks (templates/bpf/cgroup.h) to a cgroup v2 directory.

The runtime attaches them at the root of the cgroup2 mount, so every process of the machine is
seen (`cgroup2_mount()` reads where that is from /proc/self/mountinfo: it is not always
/sys/fs/cgroup; here it is /sys/fs/cgroup/unified). Tests attach to a child cgroup they create.

Each program is attached through a BPF link (BPF_LINK_CREATE) rather than BPF_PROG_ATTACH: the
attachment lives as long as the link's file descriptor, which only this process holds. A clean
stop closes the links; a runtime that is killed has its descriptors closed by the kernel, so no
hook outlives it and there is nothing for the state file to journal or `cleanup` to undo. A
reload swaps each link's program in place (BPF_LINK_UPDATE), with no moment without a hook.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from pathlib import Path

from dae_py.contract.manifest import Attach
from dae_py.runtime.bpf import BpfError
from dae_py.runtime.bpf import libbpf as lb

log = logging.getLogger(__name__)

#: enum bpf_attach_type (uapi/linux/bpf.h) of each cgroup hook.
ATTACH_TYPES: dict[Attach, int] = {
    Attach.CGROUP_SOCK_CREATE: 2,  # BPF_CGROUP_INET_SOCK_CREATE
    Attach.CGROUP_CONNECT4: 10,  # BPF_CGROUP_INET4_CONNECT
    Attach.CGROUP_CONNECT6: 11,  # BPF_CGROUP_INET6_CONNECT
    Attach.CGROUP_SENDMSG4: 14,  # BPF_CGROUP_UDP4_SENDMSG
    Attach.CGROUP_SENDMSG6: 15,  # BPF_CGROUP_UDP6_SENDMSG
    Attach.CGROUP_SOCK_RELEASE: 34,  # BPF_CGROUP_INET_SOCK_RELEASE
}


class CgroupError(RuntimeError):
    """No cgroup2 mount, or the hooks could not be attached (the message says which)."""


def cgroup2_mount(mountinfo: str | os.PathLike[str] = "/proc/self/mountinfo") -> Path:
    """The mount point of the (first) cgroup2 filesystem in this mount namespace."""
    try:
        text = Path(mountinfo).read_text()
    except OSError as exc:
        raise CgroupError(f"cannot read {mountinfo}: {exc.strerror}") from exc
    for line in text.splitlines():
        # ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        left, sep, right = line.partition(" - ")
        if not sep or not right.split() or right.split()[0] != "cgroup2":
            continue
        fields = left.split()
        if len(fields) >= 5:
            return Path(_unescape(fields[4]))
    raise CgroupError("no cgroup2 filesystem is mounted (pname() needs cgroup v2: "
                      "mount -t cgroup2 none /sys/fs/cgroup)")


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and code.isdigit():
            out.append(chr(int(field[i + 1:i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


class CgroupHooks:
    """The links of one set of hooks on one cgroup directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._links: dict[Attach, int] = {}

    @property
    def attached(self) -> tuple[Attach, ...]:
        return tuple(self._links)

    def attach(self, programs: Iterable[tuple[Attach, int]]) -> None:
        """Attach each (attach point, program fd); all or nothing."""
        try:
            cg = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise CgroupError(f"cannot open cgroup {self.path}: {exc.strerror}") from exc
        try:
            for attach, fd in programs:
                if attach in self._links:
                    lb.bpf_link_update(self._links[attach], fd)
                    continue
                try:
                    self._links[attach] = lb.bpf_link_create(fd, cg, ATTACH_TYPES[attach])
                except BpfError as exc:
                    self.close()
                    raise CgroupError(f"cannot attach the {attach.value} hook to {self.path}: {exc}") from exc
        finally:
            os.close(cg)
        log.info("pname hooks attached to cgroup %s (%d programs)", self.path, len(self._links))

    def replace(self, programs: Iterable[tuple[Attach, int]]) -> None:
        """Swap in new programs (reload): each existing link gets its new program atomically."""
        self.attach(programs)

    def close(self) -> None:
        """Detach: close every link (idempotent)."""
        links, self._links = self._links, {}
        for fd in links.values():
            try:
                os.close(fd)
            except OSError as exc:  # an fd already closed is the only case; say so, go on
                log.warning("closing a cgroup link of %s failed: %s", self.path, exc.strerror)
        if links:
            log.info("pname hooks detached from cgroup %s", self.path)

    def __enter__(self) -> CgroupHooks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
