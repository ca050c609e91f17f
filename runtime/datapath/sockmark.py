"""A cgroup v2 directory whose processes' sockets carry the relay's mark (templates/bpf/sockmark.c).

Why: the relay marks every socket it opens (so_mark_from_dae), and the datapath lets marked
packets pass untouched (wan_egress with `wan_interface`, the LAN hook). A SIP003 plugin
(runtime/proxy/plugins.py) is another program: its connection to the node's server would go out
unmarked, and wan_egress could route it into the proxy, that is back into the plugin. So the
plugins run in a cgroup of ours where a sock_create program gives each new INET socket the mark.

Where: a child of the cgroup2 mount's root (`cgroup.cgroup2_mount`), named `dae-py-plugins.PID`:
ours at a glance, and one per runtime process (each relay worker runs its own plugins).

How a process gets in before it opens a socket: `command(argv)` runs it as
`/bin/sh -c 'echo 0 >PROCS; shift; exec "$@"' sh PROCS ARGV...`, so the shell moves itself into
the cgroup and then becomes the plugin (same pid). Writing the pid after spawn would race with
the plugin's first sockets (they would stay unmarked: the mark is set at creation only);
`preexec_fn` runs Python between fork and exec, which the subprocess documentation calls unsafe
in a process with threads (the runtime has some). `holds(pid)` says whether the move happened.

Lifetime: the program is attached through a BPF link, which lives as long as its descriptor:
a killed runtime leaves no program attached. The directory stays (with any plugin that outlived
the runtime, since plugins run in their own session): `remove_leftovers()` (`dae-runtime
cleanup`) kills what is left in the directory of a process that no longer exists and removes it.
`close()` closes the link and removes the directory once its processes have exited (rmdir fails
with EBUSY before; stragglers, e.g. a plugin's own children, are killed with cgroup.kill).

Refusals (no cgroup2, a read-only or foreign-owned mount, a kernel that rejects the program) are
CgroupError naming the cause: the caller warns once and runs its processes unmarked.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import struct
import time
from pathlib import Path

from dae_py.contract.manifest import Attach
from dae_py.runtime.bpf import BpfError
from dae_py.runtime.bpf import libbpf as lb
from dae_py.runtime.bpf.bpfobject import BpfObject

from .cgroup import ATTACH_TYPES, CgroupError, cgroup2_mount

log = logging.getLogger(__name__)

OBJECT_NAME = "sockmark.o"  # beside program.o in every build
PROGRAM = "sockmark_create"
PREFIX = "dae-py-plugins."
RODATA = struct.Struct("=I")  # sockmark.c's .rodata: sock_mark
JOIN = 'echo 0 >"$1"; shift; exec "$@"'  # the shell joins the cgroup, then becomes the process
EMPTY_WAIT = 2.0  # seconds for killed processes to leave a cgroup before rmdir gives up


class MarkedCgroup:
    """Our cgroup directory with the sock_create program attached to it (a link)."""

    def __init__(self, path: Path, obj: BpfObject, link: int, mark: int) -> None:
        self.path = path
        self.mark = mark
        self._obj = obj
        self._link = link

    @classmethod
    def create(cls, object_path: str | os.PathLike[str], mark: int,
               parent: str | os.PathLike[str] | None = None) -> MarkedCgroup:
        """Load `object_path` with `mark`, make PARENT/dae-py-plugins.PID and attach the program to
        it; CgroupError (nothing left behind) when the kernel or the mount refuses."""
        path = Path(parent or cgroup2_mount()) / f"{PREFIX}{os.getpid()}"
        obj = _load(object_path, mark)  # first: the tree is not touched when the kernel refuses
        try:
            _make_dir(path)
            try:
                link = _attach(obj.program_fd(PROGRAM), path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.rmdir(path)
                raise
        except BaseException:
            obj.close()
            raise
        log.info("cgroup %s: sockets of its processes carry mark %#x", path, mark)
        return cls(path, obj, link, mark)

    @property
    def procs(self) -> Path:
        return self.path / "cgroup.procs"

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run so that it is in this cgroup before it executes (see the module's doc)."""
        return ["/bin/sh", "-c", JOIN, "sh", str(self.procs), *argv]

    def holds(self, pid: int) -> bool:
        """Whether process `pid` is in this cgroup (False too when it is gone)."""
        try:
            lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
        except OSError:
            return False
        mine = "/" + self.path.name
        return any(line.startswith("0::") and line[3:].endswith(mine) for line in lines)

    def close(self) -> None:
        """Detach (close the link), then remove the directory; idempotent. A directory that
        cannot be removed is logged (cleanup removes it later), never raised."""
        if self._link >= 0:
            os.close(self._link)
            self._link = -1
        self._obj.close()
        if not self.path.exists():
            return
        try:
            remove(self.path)
        except OSError as exc:
            log.warning("cannot remove cgroup %s: %s (`dae-runtime cleanup` removes it later)",
                        self.path, exc.strerror or exc)
            return
        log.info("cgroup %s removed", self.path)


def _load(object_path: str | os.PathLike[str], mark: int) -> BpfObject:
    try:
        obj = BpfObject(object_path)
    except BpfError as exc:
        raise CgroupError(f"{object_path} does not open ({exc})") from exc
    try:
        obj.set_initial_value(".rodata", RODATA.pack(mark))
        obj.load()
    except BpfError as exc:
        obj.close()
        raise CgroupError(f"{object_path} does not load ({exc})") from exc
    return obj


def _make_dir(path: Path) -> None:
    try:
        os.mkdir(path, 0o755)
        return
    except FileExistsError:
        pass  # this pid's, from an earlier instance in this process that could not remove it
    except OSError as exc:
        raise CgroupError(f"cannot create cgroup {path}: {exc.strerror}") from exc
    try:
        remove(path)
        os.mkdir(path, 0o755)
    except OSError as exc:
        raise CgroupError(f"cannot replace the stale cgroup {path}: {exc.strerror}") from exc


def _attach(prog_fd: int, path: Path) -> int:
    try:
        cg = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise CgroupError(f"cannot open cgroup {path}: {exc.strerror}") from exc
    try:
        return lb.bpf_link_create(prog_fd, cg, ATTACH_TYPES[Attach.CGROUP_SOCK_CREATE])
    except BpfError as exc:
        raise CgroupError(f"cannot attach the sock_create program to {path}: {exc}") from exc
    finally:
        os.close(cg)


def _pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def remove(path: Path) -> None:
    """Kill whatever still runs in cgroup `path`, wait until it is empty, remove it (OSError if
    it will not go: EBUSY when processes stay)."""
    if _pids(path):
        try:
            (path / "cgroup.kill").write_text("1")  # the whole cgroup at once (kernel >= 5.14)
        except OSError:
            for pid in _pids(path):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + EMPTY_WAIT
    while True:
        try:
            os.rmdir(path)
            return
        except FileNotFoundError:
            return
        except OSError as exc:
            if exc.errno != errno.EBUSY or time.monotonic() > deadline:
                raise
        time.sleep(0.01)  # killed processes leave the cgroup when they have exited


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def leftovers(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Our cgroup directories whose process no longer exists (a runtime that was killed)."""
    try:
        base = Path(root or cgroup2_mount())
        entries = list(base.iterdir())
    except (CgroupError, OSError):
        return []
    found = []
    for entry in entries:
        suffix = entry.name.removeprefix(PREFIX)
        if entry.name.startswith(PREFIX) and suffix.isdigit() and entry.is_dir() and not _alive(int(suffix)):
            found.append(entry)
    return sorted(found)


def remove_leftovers(root: str | os.PathLike[str] | None = None) -> tuple[list[str], list[str]]:
    """Remove `leftovers()` (killing the plugins still in them): (what was removed, what failed)."""
    removed, failed = [], []
    for path in leftovers(root):
        what = f"cgroup {path}"
        try:
            remove(path)
        except OSError as exc:
            log.error("cleanup: %s: %s", what, exc.strerror or exc)
            failed.append(f"{what}: {exc.strerror or exc}")
            continue
        log.info("cleanup: removed %s", what)
        removed.append(what)
    return removed, failed
