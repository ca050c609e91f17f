"""`dae-runtime BUILD_DIR`: turn a build into a working gateway, and undo it on exit.

Order matters. Start: load the object and its tables, start the relay listeners (so the
first hijacked packet finds a socket) guarded by the program's tproxy_guard socket filter,
then let the datapath set sysctls, policy routes and finally attach the filters. Any start-up
failure is one error line and exit status 1 (2 for an unreadable build), never a traceback.

Once ready, `dae-runtime reload`, SIGHUP and SIGUSR1 swap it to a new build under its running
flows (runtime/reload.py, docs/reload.md); the stop below then undoes whatever build is live.

Stop (SIGTERM/SIGINT): close the relay first, then release the descriptors reserved at start,
then undo the datapath, retrying what failed: a runtime that ran out of file descriptors must
get them back before it can open the netlink sockets and files the teardown needs. Closing
the relay first means proxied flows find no listener for the moment the filter is still
attached, and go direct (fail-open). If anything is left behind, the runtime says what in an
error line and exits 1, so `dae-runtime cleanup` can finish the job. A crash leaves the state
file behind for `dae-runtime cleanup` too.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

from dae_py.contract.manifest import Attach, ManifestError
from dae_py.contract.maps import OUTBOUND_STATS, U32
from dae_py.runtime import logsetup, reload_signals
from dae_py.runtime.bpf import BpfError, BpfObject
from dae_py.runtime.build import Build, BuildError, load_tables
from dae_py.runtime.datapath import CleanupReport, Datapath, StateBusy, cleanup, linkwatch, localhost, sockmark
from dae_py.runtime.datapath.state import StateCorrupt, default_state_path
from dae_py.runtime.domain_map import DomainBindings
from dae_py.runtime.kernel_router import KernelRouter
from dae_py.runtime.privileges import hint as privileges_hint
from dae_py.runtime.privileges import warn_if_degraded
from dae_py.runtime.sniff.dialmode import relay_settings

log = logging.getLogger("dae.gateway")


#: Descriptors held from the start and released before the teardown: the teardown's netlink
#: sockets, state file writes and /proc/sys files need a few, and a runtime that ran out (a
#: flood of flows, a lowered RLIMIT_NOFILE) must still be able to undo its datapath. Taken
#: first thing, they are the lowest numbers, which stay usable under any lowered limit.
RESERVED_FDS = 16
TEARDOWN_ATTEMPTS = 4


class StartError(RuntimeError):
    """The gateway could not start; the message is the one line the operator sees."""


class FdReserve:
    """A few descriptors (dups of /dev/null) kept for the teardown."""

    def __init__(self, count: int = RESERVED_FDS) -> None:
        self.fds: list[int] = []
        try:
            for _ in range(count):
                self.fds.append(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
        except OSError as exc:
            log.warning("could not reserve %d file descriptors for the teardown: %s", count, exc)

    def release(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds.clear()


def _one_line(exc: BaseException) -> str:
    """An exception as the operator's one line: its message, with its kind when the message
    alone would not say it (a KeyError is just the key)."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    if isinstance(exc, (OSError, ValueError, RuntimeError)) and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _guard_fd(obj: BpfObject, build: Build) -> int | None:
    """The tproxy port protection program (the manifest's socket program); a build from before
    it has none (warned)."""
    try:
        guard = build.manifest.program(Attach.TPROXY_SOCKET).name
    except ManifestError:
        guard = None
    if guard is None or guard not in obj.program_names():
        log.warning("this build has no %s program: the tproxy port takes packets from anyone "
                    "(recompile the config with this version to protect it)", guard or "tproxy guard")
        return None
    return obj.program_fd(guard)


def _stats_line(obj: BpfObject, build: Build) -> str:
    m = obj.map("outbound_stats")
    parts = []
    for o in build.manifest.outbounds:
        vals = [OUTBOUND_STATS.unpack(v) for v in m.percpu_values(U32.pack(o.id)) or []]
        pk = sum(v["packets"] for v in vals)
        by = sum(v["bytes"] for v in vals)
        parts.append(f"{o.name}={pk}p/{by}B")
    return "kernel: " + " ".join(parts)


def _relay(router: KernelRouter, build: Build, config: Any) -> Any:
    """The in-process relay, or with `global.relay_workers` above 1 the relay whose TCP flows
    worker processes carry (runtime/relay/workers.py, docs/relay-workers.md)."""
    from dae_py.runtime.relay import Gateway

    setting = build.manifest.settings.extra.get("relay_workers", 1)
    if setting != 1:
        from dae_py.runtime.relay.workers import WorkerGateway, worker_count

        n = worker_count(setting)
        if n > 1 and build.manifest.subscriptions:
            log.warning("global.relay_workers: %d asked, but subscriptions update the groups' nodes in this "
                        "process only; relaying in one process", n)
        elif n > 1:
            return WorkerGateway.from_manifest(router, build.manifest, config, workers=n)
    return Gateway.from_manifest(router, build.manifest, config)


async def serve(build: Build, state_path: Path, stop: asyncio.Event, ready: Any = None,
                reserve: FdReserve | None = None, cgroup: str | None = None) -> bool:
    """Run the gateway until `stop` is set. Start-up failures raise StartError (BpfError for
    the program); returns whether the stop undid everything (False: an error line said what
    was left behind)."""
    from dae_py.runtime.relay import RelayConfig
    from dae_py.runtime.relay.sockmap import DEFAULT_MODE, with_mode

    obj = BpfObject(build.object_path)
    relay = None
    datapath = None
    dns_module = None
    controller = None
    subscriptions: Any = None
    reloader = None
    hooks = None
    watcher: asyncio.Task[None] | None = None
    clean = False
    try:
        try:
            g = build.manifest.settings  # a manifest the runtime cannot read fails here, in one line
            so_mark = g.so_mark
            obj.load()
            load_tables(obj, build)
            router = KernelRouter(build, obj.map("flows"), DomainBindings.of(obj, build.domain_words))
            # global.relay_mode; the build's sockmap.o, and sockmark.o (the plugins' mark), are beside program.o
            marker = str(build.object_path.parent / sockmark.OBJECT_NAME)
            config = with_mode(RelayConfig(so_mark=so_mark, sockmark_object=marker, **relay_settings(g)),
                               str(g.extra.get("relay_mode", DEFAULT_MODE)), build.object_path.parent)
            relay = _relay(router, build, config)
            if build.manifest.subscriptions:  # fetched now (stored copies first), then every refresh
                from dae_py.runtime.subscriptions import SubscriptionManager, subscription_dir

                subscriptions = SubscriptionManager(build.manifest, relay.table.groups(), subscription_dir(),
                                                    so_mark, allow_insecure=g.allow_insecure)
                await subscriptions.start()
            guard_fd = _guard_fd(obj, build)
            port = await relay.start(g.tproxy_port, guard_fd=guard_fd)
            from dae_py.runtime.dns import DnsModule  # answers dns.bind; binds domain bits before answering

            dns_module = await DnsModule.start(build, router.domains, so_mark, guard_fd=guard_fd, relay=relay)
            if relay.tcp.sniffing is not None:  # dial_mode domain checks sniffed names against its answers
                relay.tcp.sniffing.use_dns(dns_module)
            from dae_py.runtime.controller import start_for  # the API, /metrics, /ui; `dae-runtime status`

            controller = await start_for(build, relay, obj, dns_module, state_path.parent, subscriptions)
            lan = list(g.lan_interface)
            wan = list(g.wan_interface)
            datapath = Datapath(lan=lan or None, wan=wan or None, fwmark=g.fwmark,
                                table=g.route_table, state_path=state_path,
                                manage_sysctls=g.auto_config_kernel_parameter)
            # pyroute2's sync API runs its own event loop: keep it off ours.
            programs = build.manifest
            wan_fds = localhost.wan_programs(obj, programs) if wan else {}
            await asyncio.to_thread(datapath.setup, obj.program_fd(programs.program(Attach.LAN_INGRESS).name),
                                    ingress_l3_fd=obj.program_fd(programs.program(Attach.LAN_INGRESS_L3).name),
                                    egress_fd=wan_fds.get("egress_fd"), wan_ingress_fd=wan_fds.get("wan_ingress_fd"))
            hooks = localhost.attach_pname_hooks(obj, programs, cgroup)  # pname(): docs/local-routing.md
            watcher = asyncio.create_task(linkwatch.follow(datapath))  # interfaces that appear later
            from dae_py.runtime.reload import Live, Reloader  # `dae-runtime reload`, SIGHUP, ExecReload

            reloader = Reloader(Live(build, obj, router, relay, datapath, dns_module, controller, so_mark,
                                     subscriptions=subscriptions, hooks=hooks), state_path.parent)
            await reloader.start()
            reload_signals.set_handler(reloader.on_signal)
        except (BpfError, StartError, asyncio.CancelledError):
            raise
        except Exception as exc:  # whatever it is: one line, not a traceback
            log.debug("start-up failed", exc_info=True)
            raise StartError(_one_line(exc)) from exc
        log.info("gateway ready: %d rules (%s), tproxy port %d, lan %s", len(build.manifest.rules),
                 build.manifest.strategy, port,
                 ",".join(i.name + (" (L3)" if i.l3 else "") for i in datapath.lan_interfaces) or "-")
        if ready is not None:
            ready()
        # Everything alive now (modules, the build, pyroute2's objects) lives as long as the
        # process: out of the cyclic GC's sight, so its collections only walk per-flow objects.
        import gc

        gc.collect()
        gc.freeze()
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), timeout=60)
            except TimeoutError:
                assert reloader is not None  # set before ready
                live = reloader.live
                log.info("%s; relay: %s", _stats_line(live.obj, live.build), relay.stats)
    finally:
        if subscriptions is not None:
            await subscriptions.close()
        if reloader is not None:  # a reload under way finishes first; then the parts it swapped in
            reload_signals.set_handler(None)
            await reloader.close()
            live = reloader.live
            obj, build, dns_module, controller = live.obj, live.build, live.dns, live.controller
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if hooks is not None:
            hooks.close()
        if controller is not None:
            try:
                await controller.close()
            except Exception as exc:  # noqa: BLE001 - the datapath must still be undone
                log.error("closing the controller failed: %s", _one_line(exc))
        clean = await _stop(obj, build, relay, dns_module, datapath, state_path, reserve)
    return clean


async def _stop(obj: BpfObject, build: Build, relay: Any, dns_module: Any,
                datapath: Datapath | None, state_path: Path, reserve: FdReserve | None) -> bool:
    """Free descriptors (the DNS module's and the relay's, then the reserve), then undo the
    datapath."""
    if dns_module is not None:
        try:
            await dns_module.close()
        except Exception as exc:  # noqa: BLE001 - the datapath must still be undone
            log.error("closing the DNS module failed: %s", _one_line(exc))
    if relay is not None:
        try:
            await relay.close()
        except Exception as exc:  # noqa: BLE001 - the datapath must still be undone
            log.error("closing the relay failed: %s", _one_line(exc))
    if reserve is not None:
        reserve.release()
    clean = True
    if datapath is not None and datapath.active:
        clean = await asyncio.to_thread(_teardown, datapath, state_path)
    if obj.loaded:
        # The kernel's per-outbound counters next to the relay's own: direct flows show up
        # in the first and never in the second (the periodic line only comes every 60 s).
        try:
            log.info("%s; relay: %s", _stats_line(obj, build), relay.stats if relay is not None else "-")
        except Exception as exc:  # noqa: BLE001 - statistics are not worth a failed exit
            log.warning("no exit statistics: %s", _one_line(exc))
    obj.close()
    return clean


def _teardown(datapath: Datapath, state_path: Path) -> bool:
    """Datapath.teardown, then `cleanup` of what it left, a few times: a failure for want of a
    resource (a descriptor, memory) may pass once the relay's are gone. True when nothing is
    left; else one error line naming what is."""
    try:
        report = datapath.teardown()
    except Exception as exc:  # noqa: BLE001 - e.g. the state file could not be rewritten
        report = CleanupReport(failed=[f"teardown: {_one_line(exc)}"])
    first = report
    for attempt in range(1, TEARDOWN_ATTEMPTS):
        if report.ok:
            break
        log.warning("datapath teardown incomplete (%s); retrying", "; ".join(report.failed))
        time.sleep(0.2 * attempt)
        try:
            report = cleanup(state_path)
        except Exception as exc:  # noqa: BLE001 - as the first attempt: the report says what failed
            report = CleanupReport(failed=[f"cleanup: {_one_line(exc)}"])
    if report.ok:
        log.info("datapath removed: %s", first if first.ok else report)
        return True
    left = report.failed if report is first or report.undone or report.absent else \
        first.failed + [f"then {line}" for line in report.failed]  # the retry could not even look
    log.error("datapath teardown left behind: %s; run `dae-runtime cleanup --state %s`",
              "; ".join(left), state_path)
    return False


def _log_privileges_hint(err: int | None) -> None:
    line = privileges_hint(err)
    if line:
        log.error("%s", line)


def main(args: argparse.Namespace) -> int:
    state_path = Path(getattr(args, "state", None) or os.environ.get("DAE_STATE") or default_state_path())
    if args.command == "cleanup":
        # the plugins' cgroup of a killed runtime (and plugins that outlived it): by its pid, whatever the state
        removed, failed = sockmark.remove_leftovers()
        try:
            report = cleanup(state_path)
        except (StateBusy, StateCorrupt) as exc:  # a live runtime owns it, or it is unreadable
            log.error("cleanup refused: %s", exc)
            return 1
        report.undone += removed
        report.failed += failed
        print(f"dae-runtime cleanup: {report}")
        return 0 if report.ok else 1
    # The per-flow log line needs none of these, and LogRecord would pay a getpid(2) and the
    # thread and process lookups on every line.
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logThreads = False
    logging._srcfile = None  # no stack walk for the caller's file and line (not in the format)
    reserve = FdReserve()  # first: the lowest descriptor numbers
    reload_signals.install_early()
    try:
        build = Build.open(args.build)
    except BuildError as exc:
        log.error("%s", exc)
        return 2
    logsetup.apply_manifest_level(build.raw)
    warn_if_degraded()
    try:
        import uvloop

        # Only our loop is uvloop: pyroute2 runs plain asyncio loops in its own threads, and
        # uvloop cannot open netlink sockets (so no uvloop.install()).
        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None

    async def run() -> bool:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        reload_signals.install(loop)
        return await serve(build, state_path, stop, reserve=reserve, cgroup=getattr(args, "cgroup", None))

    sys.unraisablehook = _unraisable
    runner = asyncio.Runner(loop_factory=loop_factory)
    clean = False
    try:
        clean = runner.run(run())
    except BpfError as exc:
        log.error("cannot load the program: %s", exc)
        _log_privileges_hint(exc.errno)
        return 1
    except StartError as exc:
        # Configuration or environment problems: one line naming the cause, not a traceback.
        log.error("cannot start the gateway: %s", exc)
        _log_privileges_hint(getattr(exc.__cause__, "errno", None))  # what StartError wraps
        return 1
    finally:
        try:
            runner.close()
        except (OSError, RuntimeError) as exc:  # out of descriptors, closing needs one (then
            # uvloop also finds itself still running): the exit status still tells
            log.error("closing the event loop failed: %s", _one_line(exc.__context__ or exc))
            clean = False
    return 0 if clean else 1


def _unraisable(info: Any) -> None:
    """Exceptions Python can only ignore (in __del__: pyroute2's loops that could not open
    their sockets when out of descriptors) as one line each, not a traceback."""
    log.warning("ignored in %r: %s", info.object, _one_line(info.exc_value)
                if info.exc_value is not None else info.exc_type)
