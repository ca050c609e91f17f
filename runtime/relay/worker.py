"""One relay worker: `python -m dae_py.runtime.relay.worker` (started by runtime/relay/workers.py).

It carries the TCP flows the kernel hands to its own listener of the tproxy port's reuseport
group. It loads nothing into the kernel: its router reads the main process's maps through fds
the main process sends, its outbound table is built from the same build, and its groups
follow the main process's health checks (workerproto.group_state). It dies with the main
process (PR_SET_PDEATHSIG) and ends its flows on SIGTERM or when the control socket closes.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import logging
import os
import signal
import socket
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dae_py.runtime.bpf import libbpf as lb
from dae_py.runtime.bpf.maps import BpfMap
from dae_py.runtime.logsetup import LineFormatter  # importing logsetup also registers TRACE

from . import workerproto as proto
from .flow import RelayConfig
from .stats import RelayStats
from .tcp import TcpRelay
from .track import ConnTracker

log = logging.getLogger("dae.worker")

PR_SET_PDEATHSIG = 1
REPORT_INTERVAL = 0.25  # counters; the connection list goes with every CONNS_EVERY-th report
CONNS_EVERY = 4
MAX_REPORTED_CONNS = 4096  # listed per worker: the list crosses the report pipe every second
DNS_QUESTION_TIMEOUT = 0.05


def die_with_parent(parent: int) -> None:
    """SIGTERM when the main process dies (however it dies); gone already: exit now."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(0)


class FdMaps:
    """The main process's maps by name, from fds it sent (what KernelRouter and
    DomainBindings ask of a BpfObject: map_names() and map(name))."""

    def __init__(self, names: Iterable[str], fds: Iterable[int]) -> None:
        self.maps: dict[str, BpfMap] = {}
        for name, fd in zip(names, fds, strict=True):
            info = lb.bpf_map_info(fd)
            self.maps[name] = BpfMap(fd, name, info.type, info.key_size, info.value_size, info.max_entries,
                                     owns_fd=True)

    def map_names(self) -> list[str]:
        return list(self.maps)

    def map(self, name: str) -> BpfMap:
        return self.maps[name]

    def close(self) -> None:
        for m in self.maps.values():
            m.close()


class RemoteDnsAnswers:
    """dial_mode domain's check, asked of the main process's DNS module (sniff.dialmode's
    DnsAnswers): a blocking question on the control socket, answered from the module's cache in
    microseconds; no answer within DNS_QUESTION_TIMEOUT reads as "not answered" (the flow is
    dialled by address, as without a DNS module)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def addresses(self, name: str, version: int) -> list[str] | None:
        return self.worker.ask_dns(name, version)


@dataclass
class Args:
    index: int
    ctl: int
    listeners: list[int]
    config: RelayConfig
    parent: int


class Worker:
    def __init__(self, args: Args) -> None:
        self.args = args
        self.ctl = socket.socket(fileno=args.ctl)
        self.ctl.setblocking(False)
        self.listeners = [socket.socket(fileno=fd) for fd in args.listeners]
        self.stats = RelayStats()
        self.relay: TcpRelay | None = None
        self.maps: FdMaps | None = None
        self.table: Any = None
        self.stop = asyncio.Event()
        self.closed = asyncio.Event()  # the relay is closed: the final report may go
        self.pending: list[dict[str, Any]] = []  # control messages read while waiting for a DNS answer
        self.dns_seq = 0
        self.failed = False  # the first build could not be used

    # --- control -----------------------------------------------------------------------------
    def _readable(self) -> None:
        while True:
            try:
                got = proto.receive(self.ctl)
            except (BlockingIOError, InterruptedError):
                return
            except (OSError, ValueError) as exc:
                log.error("worker %d: control channel: %s", self.args.index, exc)
                self.stop.set()
                return
            if got is None:  # the main process went away
                self.stop.set()
                return
            self._handle(*got)

    def _handle(self, message: dict[str, Any], fds: list[int]) -> None:
        op = message.get("op")
        try:
            if op == "build":
                first = self.relay is None
                try:
                    self._build(Path(str(message["path"])), message["maps"], fds)
                except Exception:
                    if first:  # nothing to relay with: exit, and the main process says so
                        self.failed = True
                        self.stop.set()
                    raise
                finally:
                    fds = []
            elif op == "groups" and self.table is not None:
                proto.apply_group_state(self.table, message["state"])
            elif op == "track" and self.relay is not None:
                on = bool(message.get("on"))
                if on and self.relay.tracker is None:
                    self.relay.tracker = ConnTracker()
                elif not on:
                    self.relay.tracker = None
            elif op == "close" and self.relay is not None and self.relay.tracker is not None:
                self._close(message.get("seq"))
            elif op == "dns-check" and self.relay is not None and self.relay.sniffing is not None:
                self.relay.sniffing.dns = RemoteDnsAnswers(self) if message.get("on") else None
            elif op == "stop":
                self.stop.set()
            elif op == "dns":  # a late answer (the question timed out): nothing waits for it
                pass
            else:
                log.warning("worker %d: control message %r not understood", self.args.index, op)
        except Exception as exc:  # noqa: BLE001 - a bad message must not end the worker's flows
            log.error("worker %d: control message %r failed: %s", self.args.index, op, exc)
        finally:
            for fd in fds:
                os.close(fd)

    def _close(self, seq: Any) -> None:
        tracker = self.relay.tracker if self.relay is not None else None
        if tracker is None:
            return
        if seq is None:
            tracker.close_all()
            return
        rec = tracker.conns.get(int(seq))
        if rec is not None:
            rec.close()
            tracker.ended(rec)

    def _build(self, path: Path, names: list[str], fds: list[int]) -> None:
        """Route and dial new flows with this build (at start, and on every reload)."""
        from dae_py.runtime.build import Build
        from dae_py.runtime.domain_map import DomainBindings
        from dae_py.runtime.kernel_router import KernelRouter

        from .outbounds import OutboundTable, mark_plugin_sockets

        maps = FdMaps(names, fds)
        try:
            build = Build.open(path)
            router = KernelRouter(build, maps.map("flows"), DomainBindings.of(maps, build.domain_words))
            table = OutboundTable.from_manifest(build.manifest, self.args.config.dial_options())
        except BaseException:
            maps.close()
            raise
        old_maps, old_table = self.maps, self.table
        self.maps, self.table = maps, table
        self._report_failures(table)
        mark_plugin_sockets(self.args.config)
        table.start_nodes()
        if self.relay is None:
            self.relay = TcpRelay(router, table, self.args.config, self.stats)
            self.relay.serve(self.listeners)
            log.info("worker %d (pid %d): relaying tcp on port %d", self.args.index, os.getpid(), self.relay.port)
        else:
            self.relay.swap(router, table)
            log.info("worker %d: now routing with %s", self.args.index, path)
        if old_table is not None:
            old_table.stop_nodes()
        if old_maps is not None:  # flows under way keep their sockets; the router reads the new maps
            old_maps.close()

    def _report_failures(self, table: Any) -> None:
        """A dial that fails marks the node down here, and is told to the main process, whose
        groups (and so every worker's, at the next state push) take it into account as if
        the main process had dialled it."""
        from dae_py.runtime.groups import Group

        for group in table.table.values():
            if isinstance(group, Group):
                group.report_failure = self._failure_reporter(group)  # type: ignore[method-assign]  # this instance only

    def _failure_reporter(self, group: Any) -> Any:
        local = group.report_failure
        base = group.view_of or group

        def report_failure(node: Any, kind: Any, error: str) -> None:
            local(node, kind, error)
            with contextlib.suppress(OSError):
                proto.send(self.ctl, {"op": "failure", "group": base.spec.id, "node": node.name,
                                      "kind": kind.value, "error": error})
        return report_failure

    def ask_dns(self, name: str, version: int) -> list[str] | None:
        """The blocking DNS question (see RemoteDnsAnswers); other messages that arrive before
        the answer are handled afterwards, in order."""
        self.dns_seq += 1
        seq = self.dns_seq
        try:
            proto.send(self.ctl, {"op": "dns", "seq": seq, "name": name, "version": version})
        except OSError:
            return None
        self.ctl.settimeout(DNS_QUESTION_TIMEOUT)
        try:
            while True:
                got = proto.receive(self.ctl)
                if got is None:
                    return None
                message, fds = got
                if message.get("op") == "dns" and message.get("seq") == seq:
                    answer = message.get("addresses")
                    return [str(a) for a in answer] if isinstance(answer, list) else None
                if message.get("op") == "dns":
                    continue
                asyncio.get_running_loop().call_soon(self._handle, message, fds)
        except (OSError, ValueError):  # a timeout is an OSError too
            return None
        finally:
            self.ctl.setblocking(False)

    # --- reports -----------------------------------------------------------------------------
    async def _report(self) -> None:
        """Counters (and the connection list) as JSON lines on stdout, written through the
        loop: a main process slow to read makes the reports wait, never the flows."""
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin, sys.stdout)
        out = asyncio.StreamWriter(transport, protocol, None, loop)
        n = 0
        try:
            while not self.stop.is_set():
                if self.relay is not None:
                    self.relay.sync_counts()  # sockmap flows' kernel-moved bytes, counted now
                report: dict[str, Any] = {"stats": proto.stats_report(self.stats), "serving": self.relay is not None}
                n += 1
                if self.relay is not None and self.relay.tracker is not None and n % CONNS_EVERY == 1:
                    report["conns"] = proto.conns_report(self.relay.tracker, MAX_REPORTED_CONNS)
                try:
                    out.write(json.dumps(report, separators=(",", ":")).encode() + b"\n")
                    await out.drain()
                except (BrokenPipeError, ConnectionResetError):
                    self.stop.set()
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), REPORT_INTERVAL)
            await self.closed.wait()  # the last counters, once the relay is closed
            out.write(json.dumps({"stats": proto.stats_report(self.stats)}, separators=(",", ":")).encode() + b"\n")
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                await out.drain()
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            transport.close()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop.set)
        loop.add_reader(self.ctl.fileno(), self._readable)
        reporter = asyncio.create_task(self._report())
        try:
            await self.stop.wait()
        finally:
            loop.remove_reader(self.ctl.fileno())
            if self.relay is not None:
                await self.relay.close()
            if self.table is not None:
                self.table.stop_nodes()
            self.closed.set()
            await reporter
            if self.maps is not None:
                self.maps.close()
            log.info("worker %d: stopped; relay: %s", self.args.index, self.stats)


def parse(argv: list[str] | None = None) -> Args:
    p = argparse.ArgumentParser(prog="dae-relay-worker")
    p.add_argument("--index", type=int, required=True)
    p.add_argument("--ctl", type=int, required=True)
    p.add_argument("--listeners", required=True, help="comma-separated listening socket fds")
    p.add_argument("--config", required=True, help="RelayConfig as JSON")
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--log-level", default="INFO")
    a = p.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(f"%(asctime)s %(levelname)s [w{a.index}] %(name)s: %(message)s"))
    logging.basicConfig(level=a.log_level, handlers=[handler], force=True)
    return Args(a.index, a.ctl, [int(fd) for fd in a.listeners.split(",")], RelayConfig(**json.loads(a.config)),
                a.parent)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    die_with_parent(args.parent)
    try:
        import uvloop

        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None
    worker = Worker(args)
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(worker.run())
    return 1 if worker.failed else 0


if __name__ == "__main__":
    sys.exit(main())
