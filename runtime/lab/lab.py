"""`Lab`: client, gateway and upstream namespaces, peers inside them, and a teardown that
leaves nothing behind.

Every name the lab creates (namespaces, temp dir, users' GECOS tag) carries the run id
`PREFIX-PID-HEX`: parallel runs never collide, and `cleanup_stale` can tell a crashed run
(its pid is gone) from a live one it must not touch.
"""
from __future__ import annotations

import atexit
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, TypeVar

from pyroute2 import IPRoute

from . import peers as peer_mod
from . import topology, users
from .nsutil import (
    NETNS_DIR,
    call_in_netns,
    pids_in_netns,
    read_sysctl,
    socket_in_netns,
    write_sysctl,
)
from .peers import Listen, Peer
from .procs import ProcessTracker, kill_pids, pid_alive
from .snapshot import netlink_snapshot
from .topology import Topology

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_PREFIX = "daelab"
PEER_SCRIPT = Path(__file__).with_name("peer_servers.py")
KEEP_ENV = "DAE_LAB_KEEP"


def _run_id_re(prefix: str) -> re.Pattern[str]:
    return re.compile(rf"^{re.escape(prefix)}-(\d+)-([0-9a-f]+)")


class _SignalGuard:
    """Turns SIGTERM/SIGHUP into SystemExit while any lab is open, so `with Lab()` unwinds and
    tears down when a test runner or CI kills the process politely. (SIGKILL can't be caught:
    that is what `cleanup_stale` is for.)"""

    _lock = threading.Lock()
    _count = 0
    _saved: dict[int, Any] = {}
    _owner_pid = 0

    @classmethod
    def _handler(cls, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != cls._owner_pid:
            # A forked child (pyroute2 forks helpers) inherited the handler: die as by default.
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        raise SystemExit(128 + signum)

    @classmethod
    def acquire(cls) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with cls._lock:
            cls._count += 1
            if cls._count == 1:
                cls._owner_pid = os.getpid()
                for sig in (signal.SIGTERM, signal.SIGHUP):
                    if signal.getsignal(sig) is signal.SIG_DFL:
                        cls._saved[sig] = signal.signal(sig, cls._handler)

    @classmethod
    def release(cls) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        with cls._lock:
            cls._count = max(0, cls._count - 1)
            if cls._count == 0:
                for sig, old in cls._saved.items():
                    if signal.getsignal(sig) is cls._handler:
                        signal.signal(sig, old)
                cls._saved.clear()


class Lab:
    """Three namespaces joined by two veth links; peers and processes started in them.

    Use as a context manager; `close()` is idempotent and also runs at interpreter exit.
    `topo` holds every name and address. Namespace arguments accept a role ("client",
    "gateway", "upstream"), one of the lab's namespace names, or None for the root namespace.
    Set DAE_LAB_KEEP=1 (or keep_dir=True) to keep the lab dir with configs and logs.
    """

    def __init__(self, prefix: str = DEFAULT_PREFIX, *, keep_dir: bool | None = None,
                 start_timeout: float = 10.0) -> None:
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", prefix):
            raise ValueError("prefix: 1-12 lower-case letters/digits, starting with a letter")
        self.prefix = prefix
        self.run_id = f"{prefix}-{os.getpid()}-{secrets.token_hex(2)}"
        self.topo = Topology(run_id=self.run_id, client_ns=f"{self.run_id}-client",
                             gateway_ns=f"{self.run_id}-gateway",
                             upstream_ns=f"{self.run_id}-upstream")
        self.keep_dir = keep_dir if keep_dir is not None else bool(os.environ.get(KEEP_ENV))
        self.start_timeout = start_timeout
        self.dir: Path = Path()
        self.procs = ProcessTracker()
        self.peers: list[Peer] = []
        self.users: dict[str, str] = {}
        self.timings: dict[str, float] = {}
        self._started = False
        self._closed = False
        self._owner_pid = os.getpid()

    # --- life cycle ---------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close(failed=exc_type is not None)

    def start(self) -> Lab:
        """Build the topology; on any error (or interrupt) undo what was done and re-raise."""
        if self._started:
            return self
        self._started = True
        self._owner_pid = os.getpid()
        t0 = time.monotonic()
        _SignalGuard.acquire()
        atexit.register(self.close)
        try:
            self.dir = Path(tempfile.mkdtemp(prefix=f"{self.run_id}-"))
            # Peers that drop privileges (tinyproxy runs as nobody) must reach their files.
            self.dir.chmod(0o711)
            topology.build(self.topo)
        except BaseException:
            self.close(failed=True)
            raise
        self.timings["start"] = time.monotonic() - t0
        log.info("lab %s up in %.0f ms (dir %s)", self.run_id, self.timings["start"] * 1000,
                 self.dir)
        return self

    def close(self, failed: bool = False) -> None:
        """Kill every process, delete namespaces, users and the lab dir. Never raises."""
        if self._closed or not self._started:
            return
        if os.getpid() != self._owner_pid:
            # Forked children (pyroute2's netns helpers fork this process) inherit our atexit
            # hook; one of them tearing down the parent's lab would be a disaster.
            return
        self._closed = True
        t0 = time.monotonic()
        steps: list[tuple[str, Callable[[], None]]] = [
            ("stop processes", lambda: self.procs.kill_all(grace=2.0)),
            ("kill namespace stragglers", self._kill_ns_processes),
            ("remove namespaces", self._remove_namespaces),
            ("remove users", self._remove_users),
        ]
        for what, step in steps:
            try:
                step()
            except Exception:  # teardown must go on
                log.exception("lab %s teardown: %s failed", self.run_id, what)
        if failed:
            self._dump_logs()
        if self.dir.parts and self.dir.exists():
            if self.keep_dir:
                log.warning("lab %s: kept %s", self.run_id, self.dir)
            else:
                shutil.rmtree(self.dir, ignore_errors=True)
        atexit.unregister(self.close)
        _SignalGuard.release()
        self.timings["close"] = time.monotonic() - t0
        log.info("lab %s torn down in %.0f ms", self.run_id, self.timings["close"] * 1000)

    def _kill_ns_processes(self) -> None:
        pids = [p for ns in self.topo.namespaces.values() for p in pids_in_netns(ns)]
        if pids:
            log.warning("lab %s: killing untracked processes in its namespaces: %s",
                        self.run_id, pids)
            kill_pids(pids, grace=1.0)

    def _remove_namespaces(self) -> None:
        for ns in self.topo.namespaces.values():
            topology.remove_namespace(ns)

    def _remove_users(self) -> None:
        for name in list(self.users):
            users.remove_user(name)
            del self.users[name]

    def _dump_logs(self) -> None:
        """On failure the lab dir is deleted, so put the servers' log tails into the log."""
        for peer in self.peers:
            log.warning("lab %s: log of %s (%s):\n%s", self.run_id, peer.name, peer.log_path,
                        peer.log_tail(60))

    # --- namespaces and processes -------------------------------------------------------------

    def ns(self, which: str | None) -> str | None:
        """Resolve a role or namespace name of this lab to the namespace name (None: root)."""
        if which is None:
            return None
        names = self.topo.namespaces
        if which in names:
            return names[which]
        if which in names.values():
            return which
        raise ValueError(f"{which!r} is not a namespace of lab {self.run_id}")

    def role(self, ns: str | None) -> str:
        resolved = self.ns(ns)
        for role, name in self.topo.namespaces.items():
            if name == resolved:
                return role
        return "root"

    def popen(self, ns: str | None, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start `argv` inside `ns` via nsenter; tracked and killed (with children) on close."""
        return self.procs.popen(self.ns(ns), argv, **kw)

    def run(
        self, ns: str | None, argv: Sequence[str], **kw: Any
    ) -> subprocess.CompletedProcess[Any]:
        """subprocess.run inside `ns` (captures text output, 60 s timeout unless told)."""
        return self.procs.run(self.ns(ns), argv, **kw)

    def socket(self, ns: str | None, family: int = socket.AF_INET,
               type: int = socket.SOCK_STREAM, proto: int = 0) -> socket.socket:  # noqa: A002 - socket.socket's names
        """A socket created inside `ns`; connect/bind/send from any thread of this process."""
        return socket_in_netns(self.ns(ns), family, type, proto)

    def call_in(self, ns: str | None, fn: Callable[[], T]) -> T:
        """Run `fn()` in a thread that entered `ns` (sockets it creates stay there)."""
        return call_in_netns(self.ns(ns), fn)

    def sysctl(self, ns: str | None, key: str, value: str | int | None = None) -> str:
        """Read (and first write, if value is given) a sysctl inside `ns`."""
        if value is not None:
            write_sysctl(self.ns(ns), key, value)
        return read_sysctl(self.ns(ns), key)

    def iproute(self, ns: str | None) -> IPRoute:
        """A pyroute2 IPRoute bound to `ns`; the caller closes it (use `with`)."""
        name = self.ns(ns)
        return IPRoute(netns=name) if name else IPRoute()

    def snapshot(self, ns: str | None, sysctls: Sequence[str] = ()) -> dict[str, Any]:
        """netlink_snapshot of one of the lab's namespaces."""
        return netlink_snapshot(self.ns(ns), sysctls)

    def addresses(self, ns: str | None) -> tuple[str, str]:
        """(ip4, ip6) a server in `ns` listens on and a client there connects from."""
        t = self.topo
        return {
            "client": (t.client_ip4, t.client_ip6),
            "gateway": (t.gateway_wan_ip4, t.gateway_wan_ip6),
            "upstream": (t.upstream_ip4, t.upstream_ip6),
        }[self.role(ns)]

    # --- peers --------------------------------------------------------------------------------

    def _peer_name(self, kind: str, ns: str, port: int) -> str:
        role = self.role(ns)
        return f"{kind}-{port}" if role == "upstream" else f"{role}-{kind}-{port}"

    def _peer(self, kind: str, ns: str, port: int, argv: list[str], listens: list[Listen],
              **kw: Any) -> Peer:
        name = self._peer_name(kind, ns, port)
        if any(p.name == name for p in self.peers):
            raise ValueError(f"peer {name} already exists in lab {self.run_id}")
        ip4, ip6 = self.addresses(ns)
        peer = Peer(tracker=self.procs, name=name, ns=self.ns(ns) or "", argv=argv,
                    log_path=self.dir / f"{name}.log", listens=listens, port=port, ip4=ip4,
                    ip6=ip6, start_timeout=self.start_timeout, cwd=self.dir, **kw)
        self.peers.append(peer)
        return peer.start()

    def _credentials(self, auth: bool | tuple[str, str] | None, system_user: bool
                     ) -> tuple[str, str] | None:
        if auth is None or auth is False:
            return None
        if auth is True:
            creds = (f"lab{secrets.token_hex(4)}", secrets.token_hex(8))
        else:
            creds = (str(auth[0]), str(auth[1]))
        if system_user:
            if creds[0] in self.users:
                if self.users[creds[0]] != creds[1]:
                    raise ValueError(f"lab user {creds[0]} exists with another password")
            else:
                users.create_user(creds[0], creds[1], owner=self.run_id)
                self.users[creds[0]] = creds[1]
        return creds

    def service_user(self) -> pwd.struct_passwd:
        """A fresh login-less system user without a password, deleted on close: the lab's
        stand-in for the role's dedicated service user."""
        name = f"labsvc{secrets.token_hex(4)}"
        users.create_user(name, None, owner=self.run_id)
        self.users[name] = ""
        return pwd.getpwnam(name)

    def start_danted(self, port: int = 1080, auth: bool | tuple[str, str] | None = None, *,
                     ns: str = "upstream", debug: int = 0) -> Peer:
        """dante SOCKS5 server. auth: None (no auth), True (fresh user) or (user, password):
        the lab creates that system user and deletes it on close. `peer.credentials` tells."""
        creds = self._credentials(auth, system_user=True)
        ip4, ip6 = self.addresses(ns)
        name = self._peer_name("danted", ns, port)
        conf = self.dir / f"{name}.conf"
        conf.write_text(peer_mod.danted_config(port, ip4, ip6, "username" if creds else "none",
                                               debug))
        argv = ["danted", "-f", str(conf), "-p", str(self.dir / f"{name}.pid")]
        return self._peer("danted", ns, port, argv,
                          [Listen("tcp", port, 4), Listen("tcp", port, 6)],
                          config_path=conf, credentials=creds)

    def start_tinyproxy(self, port: int = 8888, auth: bool | tuple[str, str] | None = None, *,
                        ns: str = "upstream") -> Peer:
        """tinyproxy HTTP proxy (CONNECT to any port); auth adds BasicAuth user password."""
        creds = self._credentials(auth, system_user=False)
        name = self._peer_name("tinyproxy", ns, port)
        conf = self.dir / f"{name}.conf"
        conf.write_text(peer_mod.tinyproxy_config(port, self.dir / f"{name}.pid", creds))
        argv = ["tinyproxy", "-d", "-c", str(conf)]
        return self._peer("tinyproxy", ns, port, argv,
                          [Listen("tcp", port, 4), Listen("tcp", port, 6)],
                          config_path=conf, credentials=creds)

    def start_iperf3(self, port: int = 5201, *, ns: str = "upstream") -> Peer:
        """iperf3 server (dual-stack socket), restarted by tests that need a fresh one."""
        argv = ["iperf3", "-s", "-p", str(port), "--forceflush"]
        return self._peer("iperf3", ns, port, argv, [Listen("tcp", port)])

    def start_http_peer(self, port: int = 8080, *, ns: str = "upstream",
                        tls: tuple[Path, Path] | None = None) -> Peer:
        """Our HTTP server: GET answers {"peer": IP the server saw, ...}; /bytes/N streams N.
        `tls`: (certificate, key) files: HTTPS instead."""
        argv = [sys.executable, str(PEER_SCRIPT), "http", "--port", str(port)]
        if tls is not None:
            argv += ["--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
        return self._peer("http", ns, port, argv,
                          [Listen("tcp", port, 4), Listen("tcp", port, 6)])

    def start_ss_server(self, port: int, password: str, cipher: str = "aes-128-gcm", *, plugin: str | None = None,
                        plugin_opts: str = "", ns: str = "upstream") -> Peer:
        """shadowsocks-libev's ss-server (TCP and UDP) on the namespace's IPv4 address, with the
        server side of a SIP003 plugin (`obfs-server`, `ss-v2ray-plugin`) when `plugin` is given."""
        ip4, _ = self.addresses(ns)
        argv = ["ss-server", "-s", ip4, "-p", str(port), "-k", password, "-m", cipher, "-u", "-t", "30"]
        if plugin:
            argv += ["--plugin", plugin, "--plugin-opts", plugin_opts]
        return self._peer("ss-server", ns, port, argv, [Listen("tcp", port, 4)])

    def start_udp_echo(self, port: int = 9000, *, ns: str = "upstream") -> Peer:
        """UDP echo: replies b"<peer ip> <peer port>\\n" + payload, on v4 and v6."""
        argv = [sys.executable, str(PEER_SCRIPT), "udp-echo", "--port", str(port)]
        return self._peer("udp-echo", ns, port, argv,
                          [Listen("udp", port, 4), Listen("udp", port, 6)])


    def start_dnsmasq(self, port: int, hosts: dict[str, list[str]], *, cnames: dict[str, str] | None = None,
                      ttl: int = 2, ns: str = "upstream", listen: Sequence[str] = (),
                      extra: Sequence[str] = ()) -> Peer:
        """dnsmasq serving a test zone on the namespace's addresses: `hosts` name -> addresses
        (A/AAAA), `cnames` alias -> target, every record with `ttl`; nothing is forwarded unless
        `extra` says so. `listen`: addresses (default: the namespace's own pair)."""
        name = self._peer_name("dnsmasq", ns, port)
        hosts_file = self.dir / f"{name}.hosts"
        hosts_file.write_text("".join(f"{a} {n}\n" for n, addrs in hosts.items() for a in addrs))
        hosts_file.chmod(0o644)  # dnsmasq reads it after dropping to nobody
        listen = listen or self.addresses(ns)
        argv = ["dnsmasq", "--keep-in-foreground", "--log-facility=-", "--no-resolv", "--no-hosts",
                "--bind-interfaces", *(f"--listen-address={a}" for a in listen), f"--port={port}",
                f"--addn-hosts={hosts_file}", f"--local-ttl={ttl}", "--pid-file=", "--conf-file=/dev/null",
                *(f"--cname={a},{t}" for a, t in (cnames or {}).items()), *extra]
        return self._peer("dnsmasq", ns, port, argv, [Listen("udp", port, 4), Listen("tcp", port, 4)])

    def start_unbound(self, config: str, port: int, *, ns: str = "upstream") -> Peer:
        """unbound with the `server:` clauses in `config` (the caller's interfaces, TLS files and
        local data); run in the foreground, logging to the lab log."""
        name = self._peer_name("unbound", ns, port)
        conf = self.dir / f"{name}.conf"
        conf.write_text("server:\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  pidfile: \"\"\n"
                        "  use-syslog: no\n  logfile: \"\"\n  directory: \"" + str(self.dir) + "\"\n" + config)
        return self._peer("unbound", ns, port, ["unbound", "-d", "-c", str(conf)], [Listen("tcp", port, 4)],
                          config_path=conf)


def cleanup_stale(prefix: str = DEFAULT_PREFIX, *, force: bool = False) -> list[str]:
    """Remove what crashed runs of labs with `prefix` left: processes in their namespaces, the
    namespaces, temp dirs and users. A run whose pid is still alive is left alone unless
    `force`, so parallel sessions can each call this at start. Returns what was removed.
    """
    pattern = _run_id_re(prefix)
    removed: list[str] = []

    def stale(name: str) -> bool:
        m = pattern.match(name)
        if m is None:
            return False
        return force or not pid_alive(int(m.group(1)))

    names = sorted(n for n in (os.listdir(NETNS_DIR) if NETNS_DIR.exists() else []) if stale(n))
    pids = [p for n in names for p in pids_in_netns(n)]
    if pids:
        kill_pids(pids, grace=1.0)
    for name in names:
        if topology.remove_namespace(name):
            removed.append(f"netns {name}")
    for user, owner in users.users_of(f"{prefix}-"):
        if stale(owner):
            users.remove_user(user)
            removed.append(f"user {user}")
    tmp = Path(tempfile.gettempdir())
    for path in tmp.glob(f"{prefix}-*"):
        if path.is_dir() and stale(path.name):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(f"dir {path}")
    if removed:
        log.warning("cleanup_stale(%s): removed %s", prefix, ", ".join(removed))
    return removed
