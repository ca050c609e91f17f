"""`dae-runtime BUILD_DIR`: turn a build into a working gateway, and undo it on exit.

Order matters. Start: load the object and its tables, start the relay listeners (so the
first hijacked packet finds a socket), then let the datapath set sysctls, policy routes and
finally attach the filters. Stop (SIGTERM/SIGINT): detach first, then close the relay and the
object. A crash leaves the state file behind for `dae-runtime cleanup`; while the filter is
still attached, proxied flows find no listener and go direct (fail-open).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
from pathlib import Path
from typing import Any

from runtime.bpf import BpfError, BpfObject
from runtime.build import Build, BuildError, load_tables
from runtime.datapath import Datapath, InterfaceResolutionError, StateBusy, TcError, cleanup
from runtime.datapath.state import StateCorrupt, default_state_path
from runtime.domain_map import DomainBindings
from runtime.kernel_router import KernelRouter
from runtime.privileges import hint as privileges_hint, warn_if_degraded

log = logging.getLogger("dae.gateway")

# compiler.settings' DEFAULT_SO_MARK, not imported from there: that module pulls in the rule
# parser (lark) and the YAML loader, megabytes the running gateway never needs (test-checked).
DEFAULT_SO_MARK = 0x800000  # older builds may carry 0


def _stats_line(obj: BpfObject, build: Build) -> str:
    import struct

    m = obj.map("outbound_stats")
    parts = []
    for o in build.manifest["outbounds"]:
        vals = m.percpu_values(struct.pack("<I", o["id"])) or []
        pk = sum(struct.unpack_from("<QQ", v)[0] for v in vals)
        by = sum(struct.unpack_from("<QQ", v)[1] for v in vals)
        parts.append(f"{o['name']}={pk}p/{by}B")
    return "kernel: " + " ".join(parts)


async def serve(build: Build, state_path: Path, stop: asyncio.Event, ready: Any = None) -> None:
    from runtime.relay import Gateway, RelayConfig

    g = build.manifest["global"]
    so_mark = int(g.get("so_mark_from_dae") or DEFAULT_SO_MARK)
    obj = BpfObject(build.object_path)
    relay = None
    datapath = None
    try:
        obj.load()
        load_tables(obj, build)
        router = KernelRouter(build, obj.map("flows"), DomainBindings.of(obj, build.domain_words))
        relay = Gateway.from_manifest(router, build.manifest, RelayConfig(so_mark=so_mark))
        port = await relay.start(int(g["tproxy_port"]))
        lan = g.get("lan_interface") or []
        wan = g.get("wan_interface") or []
        datapath = Datapath(lan=lan or None, wan=wan or None, fwmark=int(g["fwmark"]), table=int(g["route_table"]),
                            state_path=state_path, manage_sysctls=bool(g.get("auto_config_kernel_parameter", True)))
        # pyroute2's sync API runs its own event loop: keep it off ours.
        await asyncio.to_thread(datapath.setup, obj.program_fd("lan_ingress"),
                                ingress_l3_fd=obj.program_fd("lan_ingress_l3"))
        log.info("gateway ready: %d rules (%s), tproxy port %d, lan %s", len(build.manifest["rules"]),
                 build.manifest["strategy"], port,
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
            except asyncio.TimeoutError:
                log.info("%s; relay: %s", _stats_line(obj, build), relay.stats)
    finally:
        if datapath is not None and datapath.active:
            report = await asyncio.to_thread(datapath.teardown)
            log.info("datapath removed: %s", report)
        if relay is not None:
            await relay.close()
        if obj.loaded:
            # The kernel's per-outbound counters next to the relay's own: direct flows show up
            # in the first and never in the second (the periodic line only comes every 60 s).
            log.info("%s; relay: %s", _stats_line(obj, build), relay.stats if relay is not None else "-")
        obj.close()


def _log_privileges_hint(err: int | None) -> None:
    line = privileges_hint(err)
    if line:
        log.error("%s", line)


def main(args: argparse.Namespace) -> int:
    state_path = Path(getattr(args, "state", None) or os.environ.get("DAE_STATE") or default_state_path())
    if args.command == "cleanup":
        try:
            report = cleanup(state_path)
        except (StateBusy, StateCorrupt) as exc:  # a live runtime owns it, or it is unreadable
            log.error("cleanup refused: %s", exc)
            return 1
        print(f"dae-runtime cleanup: {report}")
        return 0 if report.ok else 1
    # The per-flow log line needs none of these, and LogRecord would pay a getpid(2) and the
    # thread and process lookups on every line.
    logging.logProcesses = False
    logging.logMultiprocessing = False
    logging.logThreads = False
    logging._srcfile = None  # no stack walk for the caller's file and line (not in the format)
    try:
        build = Build.open(args.build)
    except BuildError as exc:
        log.error("%s", exc)
        return 2
    warn_if_degraded()
    try:
        import uvloop

        # Only our loop is uvloop: pyroute2 runs plain asyncio loops in its own threads, and
        # uvloop cannot open netlink sockets (so no uvloop.install()).
        loop_factory: Any = uvloop.new_event_loop
    except ImportError:  # pragma: no cover
        loop_factory = None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(build, state_path, stop)

    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            runner.run(run())
    except BpfError as exc:
        log.error("cannot load the program: %s", exc)
        _log_privileges_hint(exc.errno)
        return 1
    except (OSError, InterfaceResolutionError, StateBusy, StateCorrupt, TcError) as exc:
        # Configuration or environment problems: one line naming the cause, not a traceback.
        log.error("cannot start the gateway: %s", exc)
        _log_privileges_hint(getattr(exc, "errno", None))
        return 1
    return 0
