"""Run a lab command as an unprivileged user holding exactly the given capabilities, in a
file system it cannot write, the way the systemd unit runs the runtime.

`unprivileged_argv(...)` returns an argv to put in front of a command (inside a namespace, via
`Lab.popen`). It runs, as root: `unshare --mount` (a private mount namespace: nothing below
leaks to the machine), a short shell script that

  * makes the Python interpreter reachable: the lab's Python may live under a directory other
    users cannot enter (pyenv under root's 0700 home). Each blocking directory is covered with
    a tmpfs of mode 0711 into which only the needed child is bind-mounted back, so the user
    reaches the interpreter and nothing else of that directory;
  * keeps `writable` (the state directory, as systemd's RuntimeDirectory=) as its own mount and
    remounts every other mount but /proc, /sys and /dev read-only (as ProtectSystem=strict);

then `prlimit` (a small RLIMIT_MEMLOCK, to show BPF maps do not need it) and `setpriv`: new uid
and gid, no supplementary groups, `no_new_privs`, and the capability set given as the
inheritable, ambient and bounding sets, so the command starts with exactly those capabilities
effective and can never gain another (the same sets as the unit's AmbientCapabilities= and
CapabilityBoundingSet=, with NoNewPrivileges=yes).
"""
from __future__ import annotations

import os
import shlex
import stat
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

#: RLIMIT_MEMLOCK for the command: 64 KiB, far below what the program's maps take. Kernels
#: since 5.11 charge BPF memory to the memory cgroup instead of this limit.
SMALL_MEMLOCK = 64 * 1024


def cap_spec(caps: Iterable[str]) -> str:
    """setpriv's form: ('CAP_BPF', 'CAP_NET_ADMIN') -> '-all,+bpf,+net_admin'."""
    names = []
    for cap in caps:
        if not cap.startswith("CAP_"):
            raise ValueError(f"not a capability name: {cap!r}")
        names.append("+" + cap[4:].lower())
    return ",".join(["-all", *names])


def _blocking(paths: Iterable[Path], uid: int, gid: int) -> dict[Path, set[str]]:
    """For each directory that `uid` may not enter on the way to one of `paths`: the names of
    its children on those ways. Ownership is judged from the mode bits of the real tree."""
    out: dict[Path, set[str]] = {}
    for path in paths:
        path = Path(os.path.realpath(path))
        parts = path.parts
        for depth in range(1, len(parts)):
            parent = Path(*parts[:depth])
            st = parent.stat()
            if st.st_uid == uid:
                ok = bool(st.st_mode & stat.S_IXUSR)
            elif st.st_gid == gid:
                ok = bool(st.st_mode & stat.S_IXGRP)
            else:
                ok = bool(st.st_mode & stat.S_IXOTH)
            if not ok:
                out.setdefault(parent, set()).add(parts[depth])
    return out


def _expose_script(blocking: dict[Path, set[str]]) -> list[str]:
    """Shell lines that cover each blocking directory with a 0711 tmpfs holding only the
    children needed (bind-mounted back), outermost first."""
    lines = []
    for n, (parent, children) in enumerate(sorted(blocking.items(), key=lambda kv: len(kv[0].parts))):
        stage = f'"$stage/{n}"'
        lines.append(f"mkdir {stage}")
        for child in sorted(children):
            lines += [f"mkdir {stage}/{shlex.quote(child)}",
                      f"mount --bind {shlex.quote(str(parent / child))} {stage}/{shlex.quote(child)}"]
        lines.append(f"mount -t tmpfs -o mode=0711,size=1m dae-lab-expose {shlex.quote(str(parent))}")
        for child in sorted(children):
            lines += [f"mkdir {shlex.quote(str(parent / child))}",
                      f"mount --move {stage}/{shlex.quote(child)} {shlex.quote(str(parent / child))}"]
    return lines


READ_ONLY = """\
mount --bind "$writable" "$writable"
findmnt -rno TARGET | sort -u | while read -r target; do
  case "$target" in /proc|/proc/*|/sys|/sys/*|/dev|/dev/*|"$writable") continue ;; esac
  mount -o remount,bind,ro "$target" 2>/dev/null || true
done
"""


def unprivileged_argv(uid: int, gid: int, caps: Sequence[str], writable: Path, *,
                      reach: Iterable[Path] = (), memlock: int = SMALL_MEMLOCK) -> list[str]:
    """The argv prefix (see the module docstring). `reach`: paths the command must be able to
    read besides this Python's interpreter and prefixes (the project checkout, say)."""
    needed = [Path(sys.executable), Path(sys.prefix), Path(sys.base_prefix), *reach]
    # The staging mount points sit in `writable` (in the lab's dir), not in the machine's /tmp.
    script = ["set -e", 'writable="$1"; shift', 'stage="$writable/.expose"', 'mkdir "$stage"',
              *_expose_script(_blocking(needed, uid, gid)), 'rm -r "$stage"', READ_ONLY, 'exec "$@"']
    spec = cap_spec(caps)
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(script), "sh",
            str(writable), "prlimit", f"--memlock={memlock}:{memlock}", "--",
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--no-new-privs",
            f"--inh-caps={spec}", f"--ambient-caps={spec}", f"--bounding-set={spec}", "--"]
