"""Servers that run in a lab namespace: a restartable handle plus waiting until they listen.

A peer counts as started only when one of *its own* processes holds a listening socket on each
expected port (matched by socket inode through /proc/PID/fd against /proc/PID/net/*), so a test
never races a server that is still starting, and never mistakes a stray listener for it.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .nsutil import netns_inode, pid_netns
from .procs import ProcessTracker, descendants

log = logging.getLogger(__name__)

TCP_LISTEN = "0A"
UDP_UNCONNECTED = "07"


class PeerStartError(RuntimeError):
    """A peer exited or did not listen in time; the message carries its log's tail."""


@dataclass(frozen=True)
class Listen:
    """A socket a peer must hold before it counts as up. family: 4, 6 or None (either)."""

    proto: str
    port: int
    family: int | None = None


def _listening_inodes(pid: int, spec: Listen) -> set[str]:
    families = [spec.family] if spec.family else [4, 6]
    want_state = TCP_LISTEN if spec.proto == "tcp" else UDP_UNCONNECTED
    inodes: set[str] = set()
    for fam in families:
        table = f"/proc/{pid}/net/{spec.proto}{'6' if fam == 6 else ''}"
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) < 10:
                continue
            port = int(cols[1].rsplit(":", 1)[1], 16)
            if port == spec.port and cols[3] == want_state:
                inodes.add(cols[9])
    return inodes


def _socket_inodes(pids: Sequence[int]) -> set[str]:
    inodes: set[str] = set()
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    return inodes


def is_listening(pid: int, ns: str | None, specs: Sequence[Listen]) -> bool:
    """True when process `pid` (or a descendant) holds a socket for every spec, inside `ns`."""
    if ns is not None and pid_netns(pid) != netns_inode(ns):
        return False  # nsenter has not switched namespaces yet
    owned = _socket_inodes([pid, *descendants(pid)])
    return all(_listening_inodes(pid, spec) & owned for spec in specs)


@dataclass
class Peer:
    """One server process in a namespace; `stop()`/`restart()` let tests fail a proxy over.

    `ip4`/`ip6` are the addresses a client should dial, `credentials` the (user, password) the
    server demands, if any.
    """

    tracker: ProcessTracker
    name: str
    ns: str
    argv: list[str]
    log_path: Path
    listens: list[Listen]
    port: int
    ip4: str | None = None
    ip6: str | None = None
    config_path: Path | None = None
    credentials: tuple[str, str] | None = None
    start_timeout: float = 10.0
    cwd: Path | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> Peer:
        """Start the server and return once it listens; raise PeerStartError otherwise."""
        if self.running:
            return self
        with open(self.log_path, "ab") as logf:
            logf.write(f"=== {time.strftime('%H:%M:%S')} start: {' '.join(self.argv)}\n".encode())
            logf.flush()
            self.proc = self.tracker.popen(self.ns, self.argv, stdout=logf,
                                           stderr=subprocess.STDOUT, cwd=self.cwd)
        t0 = time.monotonic()
        deadline = t0 + self.start_timeout
        delay = 0.005
        while True:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                self.tracker.forget(self.proc)
                raise PeerStartError(f"{self.name} exited with {code} while starting\n"
                                     f"{self.log_tail()}")
            if is_listening(self.proc.pid, self.ns, self.listens):
                break
            if time.monotonic() > deadline:
                self.stop()
                raise PeerStartError(f"{self.name} did not listen on {self.listens} within "
                                     f"{self.start_timeout}s\n{self.log_tail()}")
            time.sleep(delay)
            delay = min(delay * 2, 0.1)
        log.info("%s up in %s (pid %d) after %.0f ms", self.name, self.ns, self.proc.pid,
                 (time.monotonic() - t0) * 1000)
        return self

    def stop(self, grace: float = 3.0) -> int | None:
        """Kill the server with all its children; return its exit code (None if not running)."""
        if self.proc is None:
            return None
        code = self.tracker.kill(self.proc, grace)
        log.info("%s stopped (exit %s)", self.name, code)
        self.proc = None
        return code

    def restart(self) -> Peer:
        self.stop()
        return self.start()

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return f"(no log at {self.log_path})"
        return "\n".join(f"  {self.name}| {line}" for line in text[-lines:])


# --- config files -------------------------------------------------------------------------------

def danted_config(port: int, ip4: str, ip6: str, method: str, debug: int = 0) -> str:
    """danted.conf: SOCKS5 on both addresses, leaving from the same addresses.

    `user.privileged: root` because the username method reads /etc/shadow; `logoutput: stderr`
    because the lab sends stderr to the peer's log file, startup errors included.
    """
    return f"""\
# written by runtime.lab
logoutput: stderr
debug: {debug}
internal: {ip4} port = {port}
internal: {ip6} port = {port}
external: {ip4}
external: {ip6}
clientmethod: none
socksmethod: {method}
user.privileged: root
user.unprivileged: nobody
client pass {{
    from: 0/0 to: 0/0
    log: error connect disconnect
}}
socks pass {{
    from: 0/0 to: 0/0
    command: bind connect udpassociate bindreply udpreply
    log: error connect disconnect
}}
"""


def tinyproxy_config(port: int, pidfile: Path, auth: tuple[str, str] | None) -> str:
    """tinyproxy.conf: CONNECT to any port from anyone, on every address of the namespace.

    No Allow/ConnectPort lines means no restriction; no LogFile means stderr, i.e. the lab log.
    """
    lines = [
        "# written by runtime.lab",
        "User nobody",
        "Group nogroup",
        f"Port {port}",
        "Timeout 600",
        "LogLevel Info",
        f'PidFile "{pidfile}"',
        "MaxClients 256",
        "DisableViaHeader Yes",
    ]
    if auth:
        lines.append(f"BasicAuth {auth[0]} {auth[1]}")
    return "\n".join(lines) + "\n"
