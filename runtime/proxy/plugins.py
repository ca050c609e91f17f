"""SIP003 plugins: the subprocess a Shadowsocks node's `plugin=` names, run as the spec says.

SIP003 (shadowsocks.org, "SIP003 plugin"): the client starts the plugin with four environment
variables, SS_REMOTE_HOST / SS_REMOTE_PORT (the node's server, where the plugin connects) and
SS_LOCAL_HOST / SS_LOCAL_PORT (where the plugin listens for the client's Shadowsocks stream),
plus SS_PLUGIN_OPTIONS (the `;`-separated options after the plugin's name in the link). The
client then speaks plain Shadowsocks to the local port; the plugin carries it (obfuscated, over
WebSocket, ...) to the server-side plugin. Plugins carry TCP only: UDP goes straight to the
server, as shadowsocks-libev's clients send it.

Lifetime: one process per distinct (plugin, options, server), shared by every group that holds
the node (reference-counted). `acquire` starts it (when a group starts, so the first flow does
not wait), a watcher restarts it when it dies (with a back-off, one log line each time), and
`release` by the last holder stops it (SIGTERM, then SIGKILL). `local_address` is what the
dialer connects to; it restarts a dead plugin on the spot rather than dialling a closed port.

The plugin's own sockets carry the relay's SO_MARK, as the relay's do, so the datapath lets its
connection to the server pass (with `wan_interface`, wan_egress would otherwise route it into
the proxy, that is back into the plugin): `mark_sockets` names the mark and the build's
sockmark.o, and the plugins run in a cgroup of this process where a sock_create program marks
every socket they create (runtime/datapath/sockmark.py), made with the first plugin and removed
with the last. Where the kernel or the cgroup mount refuses, one warning says the plugins'
sockets go unmarked, and they run anyway.
"""
from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dae_py.runtime.net.sockets import connect_tcp

from .base import DialError, DialOptions, Node

if TYPE_CHECKING:
    from dae_py.runtime.datapath.sockmark import MarkedCgroup

log = logging.getLogger(__name__)

LOCAL_HOST = "127.0.0.1"
#: Names links use for plugins that Debian installs under another name.
ALIASES: dict[str, tuple[str, ...]] = {
    "v2ray-plugin": ("ss-v2ray-plugin",),
    "v2ray": ("ss-v2ray-plugin", "v2ray-plugin"),
    "simple-obfs": ("obfs-local",),
    "obfs": ("obfs-local",),
}
READY_TIMEOUT = 5.0  # seconds for a fresh plugin to listen on its local port
WATCH_INTERVAL = 0.5
MAX_BACKOFF = 10.0


@dataclass(frozen=True)
class PluginKey:
    plugin: str
    options: str
    host: str
    port: int


def find_binary(plugin: str) -> str | None:
    """The plugin's executable: the name itself (a path or on PATH), else a known alias."""
    if os.sep in plugin:
        return plugin if os.access(plugin, os.X_OK) else None
    for name in (plugin, *ALIASES.get(plugin, ())):
        path = shutil.which(name)
        if path:
            return path
    return None


def free_port() -> int:
    """A loopback port nothing listens on now (the kernel's pick), for the plugin to bind."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOCAL_HOST, 0))
        return int(probe.getsockname()[1])


class PluginCgroup:
    """The cgroup this process's plugins run in, so their sockets carry the relay's mark: made
    when the first plugin starts, removed when the last stops. A refusal is warned about once
    per such lifetime; the plugins then run unmarked."""

    def __init__(self) -> None:
        self.mark = 0
        self.object_path: str | None = None
        self.cgroup: MarkedCgroup | None = None
        self.refused = False

    def configure(self, mark: int, object_path: str | None) -> None:
        """For the cgroup made next; one that exists stays as it is while plugins run in it
        (a changed mark takes a restart, as it does for the relay's own sockets)."""
        self.mark, self.object_path = mark, object_path

    def command(self, argv: list[str]) -> list[str]:
        """`argv`, run so that the process starts in the cgroup (made now if need be)."""
        if not self.mark:  # the relay marks nothing either (a test's config)
            return argv
        if self.cgroup is None and not self.refused:
            self.cgroup = self._create()
        return self.cgroup.command(argv) if self.cgroup is not None else argv

    def _create(self) -> MarkedCgroup | None:
        from dae_py.runtime.bpf import BpfError
        from dae_py.runtime.datapath.cgroup import CgroupError
        from dae_py.runtime.datapath.sockmark import OBJECT_NAME, MarkedCgroup

        try:
            if not self.object_path or not os.path.isfile(self.object_path):
                raise CgroupError(f"no {OBJECT_NAME} ({self.object_path or 'none given'}; a build of an older "
                                  "dae-compile?)")
            return MarkedCgroup.create(self.object_path, self.mark)
        except (CgroupError, BpfError, OSError) as exc:  # whatever refuses: never the gateway
            self.refused = True
            log.warning("SIP003 plugins: their sockets will not carry the relay's mark %#x, so with "
                        "wan_interface their connections to the servers may be routed into the proxy: %s",
                        self.mark, exc)
            return None

    def holds(self, pid: int) -> bool:
        return self.cgroup is None or self.cgroup.holds(pid)

    def close(self) -> None:
        cgroup, self.cgroup = self.cgroup, None
        self.refused = False
        if cgroup is not None:
            cgroup.close()


_CGROUP = PluginCgroup()


def mark_sockets(mark: int, object_path: str | None) -> None:
    """The plugins started from now on carry `mark` on their sockets (the relay's so_mark),
    through `object_path`, the build's sockmark.o."""
    _CGROUP.configure(mark, object_path)


def plugin_env(key: PluginKey, local_port: int) -> dict[str, str]:
    """The SIP003 environment (on top of ours: the plugin may need PATH, HOME)."""
    return {**os.environ, "SS_REMOTE_HOST": key.host, "SS_REMOTE_PORT": str(key.port),
            "SS_LOCAL_HOST": LOCAL_HOST, "SS_LOCAL_PORT": str(local_port),
            "SS_PLUGIN_OPTIONS": key.options}


@dataclass
class PluginProcess:
    """One running plugin; `holders` the groups that use it; `restarts` how often it died."""

    key: PluginKey
    node_name: str
    binary: str
    proc: subprocess.Popen[bytes] | None = None
    port: int = 0
    holders: int = 0
    restarts: int = 0
    started_at: float = 0.0
    checked: bool = False  # whether this process's cgroup was checked (at its first dial)
    watcher: asyncio.Task[None] | None = field(default=None, repr=False)

    def spawn(self) -> None:
        self.port = free_port()
        # stdout/stderr to DEVNULL: a plugin's chatter is not ours to log line by line, and a
        # full pipe nobody reads would stall it. A new session: its children die with it.
        self.checked = False
        self.proc = subprocess.Popen(_CGROUP.command([self.binary]), env=plugin_env(self.key, self.port),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        self.started_at = time.monotonic()
        log.info("node '%s': SIP003 plugin %s started (pid %d, local port %d)", self.node_name,
                 self.key.plugin, self.proc.pid, self.port)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def check_marked(self) -> None:
        """Once per process, when it first answers (it has exec'd by then): warn if it is not in
        the marking cgroup (the shell could not move it), as its sockets then carry no mark."""
        if self.checked or self.proc is None:
            return
        self.checked = True
        if not _CGROUP.holds(self.proc.pid):
            log.warning("node '%s': SIP003 plugin %s (pid %d) did not join cgroup %s: its sockets do not "
                        "carry the relay's mark", self.node_name, self.key.plugin, self.proc.pid,
                        _CGROUP.cgroup.path if _CGROUP.cgroup else "?")

    def restart(self, why: str) -> None:
        code = None if self.proc is None else self.proc.poll()
        self.restarts += 1
        log.warning("node '%s': SIP003 plugin %s %s (exit status %s); restarting it", self.node_name,
                    self.key.plugin, why, code)
        self.kill()
        self.spawn()

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(2)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(2)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # what it forked, same session


_RUNNING: dict[PluginKey, PluginProcess] = {}


def key_of(node: Node) -> PluginKey | None:
    if not node.plugin:
        return None
    return PluginKey(node.plugin, node.plugin_opts or "", node.host, node.port)


def _process(node: Node, key: PluginKey) -> PluginProcess:
    running = _RUNNING.get(key)
    if running is None:
        binary = find_binary(key.plugin)
        if binary is None:
            raise DialError(f"SIP003 plugin {key.plugin!r} is not installed (not on PATH)", node)
        running = _RUNNING[key] = PluginProcess(key, node.name, binary)
    if not running.alive:
        if running.proc is None:
            running.spawn()
        else:
            running.restart("had exited")
    return running


async def _watch(running: PluginProcess) -> None:
    """Restart the plugin whenever it dies, waiting longer each time it dies young."""
    backoff = WATCH_INTERVAL
    while True:
        await asyncio.sleep(backoff)
        if running.alive or running.holders == 0:
            if time.monotonic() - running.started_at > MAX_BACKOFF:
                backoff = WATCH_INTERVAL
            continue
        running.restart("died")
        backoff = min(MAX_BACKOFF, backoff * 2)


def acquire(node: Node) -> None:
    """A group holding `node` started: its plugin runs (started now if it was not)."""
    key = key_of(node)
    if key is None:
        return
    try:
        running = _process(node, key)
    except DialError as exc:  # the dial will say so too, per flow; the group starts anyway
        log.error("%s", exc)
        return
    running.holders += 1
    if running.watcher is None or running.watcher.done():
        running.watcher = asyncio.get_running_loop().create_task(_watch(running))


def release(node: Node) -> None:
    """A group holding `node` stopped: the last holder stops the plugin."""
    key = key_of(node)
    running = None if key is None else _RUNNING.get(key)
    if running is None:
        return
    running.holders = max(0, running.holders - 1)
    if running.holders == 0:
        stop(running)


def stop(running: PluginProcess) -> None:
    _RUNNING.pop(running.key, None)
    if running.watcher is not None:
        running.watcher.cancel()
    running.kill()
    log.info("node '%s': SIP003 plugin %s stopped", running.node_name, running.key.plugin)
    if not _RUNNING:  # the last one: its processes have exited, the cgroup can go
        _CGROUP.close()


def stop_all() -> None:
    """Every plugin, whoever holds it (the runtime is stopping)."""
    for running in list(_RUNNING.values()):
        stop(running)
    _CGROUP.close()


atexit.register(stop_all)  # a plugin never outlives the runtime, however it ends


async def connect(node: Node, opts: DialOptions) -> socket.socket:
    """A TCP connection to the node's plugin (started or restarted if need be), once it listens."""
    key = key_of(node)
    assert key is not None
    running = _process(node, key)
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            sock = await connect_tcp(LOCAL_HOST, running.port, opts, node)
            running.check_marked()
            return sock
        except DialError as exc:
            if not running.alive:
                raise DialError(f"SIP003 plugin {key.plugin!r} exited at start (status "
                                f"{running.proc.poll() if running.proc else '?'}; its options?)",
                                node) from None
            if time.monotonic() > deadline:
                raise DialError(f"SIP003 plugin {key.plugin!r} is not listening on "
                                f"{LOCAL_HOST}:{running.port}: {exc.what}", node) from None
            await asyncio.sleep(0.02)
