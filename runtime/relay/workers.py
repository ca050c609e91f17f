"""`relay_workers: N`: TCP flows carried by N worker processes sharing the tproxy port.

The main process keeps everything else: the datapath, the UDP relay (one worker can hold a
full-cone session only if every datagram of the client reaches it: docs/relay-workers.md), DNS,
the controller, reloads and the groups' health checks. It makes the N listeners of one
SO_REUSEPORT group itself (guarded by the tproxy_guard filter before they are bound, and
listening before any worker runs), keeps a copy of each, and gives worker i listener i. The
kernel spreads new connections over the group by a hash of their 4-tuple (bpf_sk_assign'd
listeners included, since Linux 6.5), so a connection belongs to one worker for its life.

A worker that dies is started again on the same listener: connections the kernel queued on it
meanwhile wait in its accept queue (the main process's copy keeps the socket, and its place
in the group, alive) and flows of the other workers are not touched. Workers die with the main
process (PR_SET_PDEATHSIG) and are stopped (SIGTERM, then SIGKILL) when the gateway closes.

`WorkerGateway` is a relay.Gateway: the gateway, the controller and the reloader use it as
they use the in-process one. Its `stats` fold in the workers' counters, its TCP relay's tracker
mirrors their connections (closing one asks its worker), and `swap` (a reload) sends each
worker the new build and its maps.
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dae_py.contract.manifest import Manifest

from . import Gateway
from . import workerproto as proto
from .flow import RelayConfig, Router
from .listen import bind_pair
from .outbounds import OutboundTable, mark_plugin_sockets

log = logging.getLogger("dae.workers")

STOP_GRACE = 3.0
START_TIMEOUT = 30.0
RESTART_BACKOFF = (0.1, 0.5, 1.0, 2.0, 5.0)  # seconds before the n-th quick restart in a row
STEADY_AFTER = 10.0  # a worker that ran this long before dying restarts at once
STATE_INTERVAL = 1.0  # groups state pushed at most this often (when it changed)
REPORT_LIMIT = 64 * 1024 * 1024  # a report line: the connection list of a busy worker


def worker_count(setting: Any) -> int:
    """`global.relay_workers`: 0 is one per CPU the process may run on."""
    n = int(setting or 0)
    if n <= 0:
        n = len(os.sched_getaffinity(0)) or 1
    return n


def router_maps(router: Any) -> dict[str, int]:
    """The maps a worker's router reads (KernelRouter: `flows` and the domain maps), by name."""
    maps = {"flows": router.flows.fd}
    domains = getattr(router, "domains", None)
    if domains is not None:
        for m in [*domains.routing.values(), domains.filter]:
            if m is not None:
                maps[m.name] = m.fd
    return maps


class WorkerSlot:
    """Worker i: its listeners (kept open here), its process, its control socket, its reports."""

    def __init__(self, pool: WorkerGateway, index: int, listeners: list[socket.socket]) -> None:
        self.pool = pool
        self.index = index
        self.listeners = listeners
        self.proc: asyncio.subprocess.Process | None = None
        self.ctl: socket.socket | None = None
        self.started = 0.0
        self.restarts = 0
        self.quick_deaths = 0
        self.folder = proto.StatsFolder(pool.stats)
        self.conns = proto.ConnMirror(self.close_remote)
        self.tracking = False
        self.dns = False
        self.watch: asyncio.Task[None] | None = None
        self.ready = asyncio.Event()
        self.sent_state = ""

    async def spawn(self) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pool = self.pool
        fds = [s.fileno() for s in self.listeners]
        argv = [sys.executable, "-m", "dae_py.runtime.relay.worker", "--index", str(self.index),
                "--ctl", str(theirs.fileno()), "--listeners", ",".join(map(str, fds)),
                "--config", json.dumps(dataclasses.asdict(pool.config)), "--parent", str(os.getpid()),
                "--log-level", logging.getLevelName(logging.getLogger().getEffectiveLevel())]
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, pass_fds=[theirs.fileno(), *fds], stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, limit=REPORT_LIMIT)
        finally:
            theirs.close()
        ours.setblocking(False)
        self.ctl = ours
        self.started = time.monotonic()
        self.tracking = False
        self.dns = False
        self.sent_state = ""
        self.folder.restarted()
        self.conns.clear()
        loop = asyncio.get_running_loop()
        loop.add_reader(ours.fileno(), self._readable)
        self.send_build()
        self.push_state(force=True)
        self.watch = asyncio.create_task(self._watch(self.proc))

    def send(self, message: Mapping[str, Any], fds: list[int] | None = None) -> None:
        if self.ctl is None:
            return
        try:
            proto.send(self.ctl, message, fds or [])
        except OSError as exc:  # the worker is going: its watcher restarts it
            log.debug("worker %d: control send failed: %s", self.index, exc)

    def send_build(self) -> None:
        pool = self.pool
        maps = router_maps(pool.tcp.router)
        self.send({"op": "build", "path": str(pool.build_path(pool.tcp.router)), "maps": list(maps)},
                  list(maps.values()))

    def push_state(self, force: bool = False) -> None:
        state = json.dumps(proto.group_state(self.pool.table), separators=(",", ":"))
        if force or state != self.sent_state:
            self.sent_state = state
            self.send({"op": "groups", "state": json.loads(state)})
        tracking = self.pool.tcp.tracker is not None
        if tracking != self.tracking:
            self.tracking = tracking
            self.send({"op": "track", "on": tracking})
        sniffing = self.pool.tcp.sniffing
        dns = sniffing is not None and sniffing.dns is not None
        if dns != self.dns:  # dial_mode domain: the DNS module is there to ask
            self.dns = dns
            self.send({"op": "dns-check", "on": dns})

    def close_remote(self, seq: int) -> None:
        self.send({"op": "close", "seq": seq})

    def _readable(self) -> None:
        """The worker's DNS questions (dial_mode domain)."""
        while self.ctl is not None:
            try:
                got = proto.receive(self.ctl)
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, ValueError) as exc:
                log.debug("worker %d: control read failed: %s", self.index, exc)
                return
            if got is None:
                self._drop_ctl()
                return
            message, fds = got
            for fd in fds:
                os.close(fd)
            if message.get("op") == "dns":
                self.send({"op": "dns", "seq": message.get("seq"),
                           "addresses": self.pool.dns_answer(message.get("name"), message.get("version"))})
            elif message.get("op") == "failure":
                self.pool.dial_failed(message)

    def _drop_ctl(self) -> None:
        if self.ctl is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.ctl.fileno())
            self.ctl.close()
            self.ctl = None

    async def _watch(self, proc: asyncio.subprocess.Process) -> None:
        """Fold the worker's reports until it exits; then start it again unless stopping."""
        assert proc.stdout is not None
        while True:
            try:
                line = await proc.stdout.readline()
            except (ValueError, asyncio.LimitOverrunError) as exc:
                log.warning("worker %d: report too long: %s", self.index, exc)
                continue
            if not line:
                break
            try:
                report = json.loads(line)
                self.folder.fold(report.get("stats") or {})
                self.conns.update(self.pool.tcp.tracker, report.get("conns"))
            except (ValueError, TypeError, AttributeError) as exc:
                log.warning("worker %d: unreadable report: %s", self.index, exc)
                continue
            if report.get("serving"):
                self.ready.set()
        code = await proc.wait()
        self._drop_ctl()
        self.folder.forget()
        self.conns.clear()
        if self.pool.closing:
            return
        ran = time.monotonic() - self.started
        self.quick_deaths = 0 if ran >= STEADY_AFTER else self.quick_deaths + 1
        wait = RESTART_BACKOFF[min(self.quick_deaths, len(RESTART_BACKOFF)) - 1] if self.quick_deaths else 0.0
        log.error("relay worker %d (pid %d) exited with %s after %.1f s; restarting it%s", self.index, proc.pid,
                  _status(code), ran, f" in {wait:.1f} s" if wait else "")
        await asyncio.sleep(wait)
        if self.pool.closing:
            return
        self.restarts += 1
        try:
            await self.spawn()
        except OSError as exc:
            log.error("relay worker %d could not be started again: %s", self.index, exc)

    async def stop(self) -> None:
        proc = self.proc
        if proc is not None and proc.returncode is None:
            self.send({"op": "stop"})
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                log.warning("relay worker %d (pid %d) did not stop in %.0f s; killing it", self.index, proc.pid,
                            STOP_GRACE)
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
        if self.watch is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self.watch
        self._drop_ctl()
        for sock in self.listeners:
            sock.close()


def _status(code: int) -> str:
    if code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"status {code}"


class WorkerGateway(Gateway):
    """A Gateway whose TCP flows are carried by `workers` processes (the UDP relay, the outbound
    table's health checks and everything else stay in this one)."""

    def __init__(self, router: Router, table: OutboundTable, config: RelayConfig = RelayConfig(),
                 workers: int = 2) -> None:
        super().__init__(router, table, config)
        self.config = config
        self.workers = workers
        self.slots: list[WorkerSlot] = []
        self.closing = False
        self._pusher: asyncio.Task[None] | None = None

    @classmethod
    def from_manifest(cls, router: Router, manifest: Manifest | Mapping[str, Any],
                      config: RelayConfig = RelayConfig(), workers: int = 2) -> WorkerGateway:
        return cls(router, OutboundTable.from_manifest(manifest, config.dial_options()), config, workers)

    @staticmethod
    def build_path(router: Any) -> Path:
        return Path(router.build.path)

    def dns_answer(self, name: Any, version: Any) -> list[str] | None:
        sniffing = self.tcp.sniffing
        if sniffing is None or sniffing.dns is None or not isinstance(name, str) or version not in (4, 6):
            return None
        answer = sniffing.dns.addresses(name, version)
        return [str(a) for a in answer] if answer is not None else None

    def dial_failed(self, message: Mapping[str, Any]) -> None:
        """A worker's dial through a node failed: the group here records it as its own (the
        state push then carries it to every worker)."""
        from dae_py.runtime.groups import Check, Group

        gid = message.get("group")
        group = self.table.get(gid) if isinstance(gid, int) else None
        if not isinstance(group, Group):
            return
        node = next((n for n in group.nodes if n.name == message.get("node")), None)
        try:
            kind = Check(message.get("kind"))
        except ValueError:
            return
        if node is not None:
            group.report_failure(node, kind, str(message.get("error", "dial failed")))

    async def start(self, port: int = 0, hosts: tuple[str, ...] = ("0.0.0.0", "::"),
                    health_checks: bool = True, guard_fd: int | None = None) -> int:
        port = await self.udp.start(port, hosts, guard_fd=guard_fd)
        # Any process of our user could join a SO_REUSEPORT group (and take part of its flows):
        # a port someone listens on already is refused, as the in-process listener's bind is.
        for sock in bind_pair(socket.SOCK_STREAM, hosts, port, so_mark=self.config.so_mark):
            sock.close()
        for i in range(self.workers):
            listeners = bind_pair(socket.SOCK_STREAM, hosts, port, so_mark=self.config.so_mark,
                                  guard_fd=guard_fd, reuseport=True)
            for sock in listeners:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.listen(self.config.listen_backlog)  # the kernel queues for it from now on
            self.slots.append(WorkerSlot(self, i, listeners))
        self.tcp.port = port
        mark_plugin_sockets(self.config)
        self.table.start_nodes()
        if health_checks:
            await self.table.start()
        await asyncio.gather(*(slot.spawn() for slot in self.slots))
        try:
            await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in self.slots)), START_TIMEOUT)
        except TimeoutError:
            late = [str(s.index) for s in self.slots if not s.ready.is_set()]
            raise RuntimeError(f"relay worker(s) {', '.join(late)} did not start relaying within "
                               f"{START_TIMEOUT:.0f} s (their log lines say why)") from None
        self._follow_pins(self.table)
        self._pusher = asyncio.create_task(self._push())
        log.info("tcp relay: %d workers on port %d (%s)", self.workers, port, ", ".join(hosts))
        return port

    def _follow_pins(self, table: OutboundTable) -> None:
        """A controller's PUT /proxies/{group} reaches the workers at once, not at the next
        state push: the flow the client opens right after must take the pinned node."""
        for group in table.groups():
            pin = group.pin

            def pinned(name: str | None, pin: Any = pin) -> None:
                pin(name)
                for slot in self.slots:
                    slot.push_state()
            group.pin = pinned  # type: ignore[method-assign]  # this instance only

    async def _push(self) -> None:
        while True:
            await asyncio.sleep(STATE_INTERVAL)
            for slot in self.slots:
                slot.push_state()

    def swap(self, router: Router, table: OutboundTable) -> OutboundTable:
        old = super().swap(router, table)
        self._follow_pins(table)
        for slot in self.slots:
            slot.send_build()
            slot.push_state(force=True)
        return old

    def pids(self) -> list[int]:
        return [s.proc.pid for s in self.slots if s.proc is not None and s.proc.returncode is None]

    async def close(self) -> None:
        self.closing = True
        if self._pusher is not None:
            self._pusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pusher
        await asyncio.gather(*(slot.stop() for slot in self.slots), return_exceptions=True)
        for slot in self.slots:
            slot.conns.clear()
        await super().close()
