"""Atomic reload: swap a running gateway to a new build under live flows.

`dae-runtime reload [BUILD_DIR]`, SIGHUP and the unit's ExecReload all end in
`Reloader.reload(path)`, which either swaps everything or changes nothing:

1. check: the build opens, its manifest is readable, and nothing it changes needs a restart
   (`restart_reasons`: tproxy port, marks, route table, interfaces, sysctl management);
2. load: a new BpfObject whose surviving maps (the manifest's `state_maps`: flows, domain
   bindings, process names, counters) are the running object's own maps, passed by fd before
   load (`bpf_map__reuse_fd`), each checked against the new program's definition first (a
   changed type, key or value size is a refusal); then its compiled tables, a new router and a
   new outbound table that adopts every group whose definition did not change (health, node
   choice and a controller's pin carry over);
3. swap: one `NLM_F_REPLACE` per hook and interface (`Datapath.replace`: the kernel swaps the
   cls_bpf program under RCU: a packet runs the old program or the new one, never none and
   never half of each), then the relay's router and outbound table, the DNS module's bindings
   and the controller's view, all in one event-loop step.

A failure in 1 or 2 refuses the build with the reason and the old one keeps running untouched
(nothing in the kernel or the relay was changed yet). A failure in the middle of 3 puts the
old programs back.

Flows keep what they were given. An established flow's packets find their decision in the
reused `flows` map and the relay keeps the sockets and outbound objects it dialed with; new
flows are classified by the new program. When the new build numbers outbounds differently, the
decisions already in `flows` are rewritten to the new ids by name (`remap_flows`), so a flow
whose connection the relay has yet to accept is still dialed through the outbound it was given.

The request channel is `reload.sock` in the state directory (mode 0600, like the controller's
socket): one JSON line in (`{"build": PATH or null}`), one JSON line out (`Outcome`), so the
command can wait for the result and exit non-zero with the reason.
"""
from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dae_py.contract.manifest import CGROUP_ATTACHES, Attach, Manifest, ManifestError
from dae_py.contract.maps import DECISION, OUTBOUND_STATS, STATE_MAPS, U32
from dae_py.runtime.bpf import BPF_EXIST, BpfError, BpfObject
from dae_py.runtime.build import Build, BuildError, load_tables
from dae_py.runtime.domain_map import DomainBindings
from dae_py.runtime.kernel_router import KernelRouter
from dae_py.runtime.reload_client import Outcome, ReloadUnreachable, main, request, socket_path

log = logging.getLogger("dae.reload")

#: The replaced object's descriptors stay open this long: a sniffing flow that took the old
#: router before the swap may still look up through it.
RETIRE_AFTER = 5.0

#: Settings the running datapath and listeners were built from: changing one needs a restart.
RESTART_SETTINGS = ("tproxy_port", "tproxy_port_protect", "so_mark", "fwmark", "route_table",
                    "lan_interface", "wan_interface", "auto_config_kernel_parameter")
#: Settings read once at start that a reload does not apply (warned, not refused).
START_ONLY_SETTINGS = ("external_controller", "secret", "dial_mode", "log_level")
#: Maps whose entries mean something only for one build's domain sets.
DOMAIN_MAPS = ("domain_routing4", "domain_routing6", "domain_filter", "domain_routing")


class ReloadRefused(Exception):
    """The new build was not taken; the message is the reason (the old build keeps running).
    `needs_restart`: the build is fine but changes what only a restart can (the command exits
    3, so a deployment tool knows to restart rather than fail)."""

    def __init__(self, reason: str, needs_restart: bool = False) -> None:
        super().__init__(reason)
        self.needs_restart = needs_restart


@dataclass
class Live:
    """What a running gateway is made of, as far as a reload swaps it."""

    build: Build
    obj: BpfObject
    router: KernelRouter
    relay: Any  # relay.Gateway
    datapath: Any  # datapath.Datapath
    dns: Any = None  # dns.DnsModule or None
    controller: Any = None  # controller.Handle or None
    so_mark: int = 0
    generation: int = 0
    subscriptions: Any = None  # subscriptions.SubscriptionManager or None
    hooks: Any = None  # datapath.cgroup.CgroupHooks of a pname() build, or None


# --- what a new build may change ---------------------------------------------------------


def _setting(manifest: Manifest, name: str) -> Any:
    g = manifest.settings
    return g.so_mark if name == "so_mark" else getattr(g, name)


def restart_reasons(old: Manifest, new: Manifest) -> list[str]:
    """Why `new` cannot replace `old` in a running gateway (empty: it can)."""
    reasons = []
    for name in RESTART_SETTINGS:
        a, b = _setting(old, name), _setting(new, name)
        if a != b:
            reasons.append(f"global.{name} changed ({_show(a)} -> {_show(b)}); restart the service to apply it")
    for attach in (Attach.LAN_INGRESS, Attach.LAN_INGRESS_L3):
        try:
            new.program(attach)
        except ManifestError:
            reasons.append(f"the build has no program for {attach.value}")
    if old.subscriptions != new.subscriptions:
        reasons.append("the subscriptions changed (sources are fetched from the start); restart the service")
    # the cgroup hooks are swapped program for program; attaching or detaching them is a start's job
    if _has_hooks(old) != _has_hooks(new):
        reasons.append("pname() rules " + ("appear" if _has_hooks(new) else "disappear")
                       + " (their cgroup hooks are attached at start); restart the service")
    return reasons


def _wan_fds(obj: Any, m: Manifest) -> dict[str, int]:
    """The WAN egress/ingress pair of a build (Datapath.replace's keywords), {} without one."""
    fds = {}
    for key, attach in (("egress_fd", Attach.WAN_EGRESS), ("wan_ingress_fd", Attach.WAN_INGRESS)):
        try:
            name = m.program(attach).name
        except ManifestError:
            return {}
        if name not in obj.program_names():
            return {}
        fds[key] = obj.program_fd(name)
    return fds


def _has_hooks(m: Manifest) -> bool:
    return any(p.attach in CGROUP_ATTACHES for p in m.programs)


def start_only_changes(old: Manifest, new: Manifest) -> list[str]:
    """Settings that differ but only take effect at the next start (the reload warns)."""
    out = []
    for name in START_ONLY_SETTINGS:
        if _setting(old, name) != _setting(new, name):
            shown = "(hidden)" if name == "secret" else f"{_show(_setting(old, name))} -> {_show(_setting(new, name))}"
            out.append(f"global.{name} changed {shown}: it takes effect at the next restart")
    for key, name in (("sniffing_timeout_s", "sniffing_timeout"), ("warm_pool", "warm_pool"),
                      ("warm_pool_idle_timeout_s", "warm_pool_idle_timeout")):
        if old.settings.extra.get(key) != new.settings.extra.get(key):
            out.append(f"global.{name} changed: it takes effect at the next restart")
    if old.settings.extra.get("relay_workers", 1) != new.settings.extra.get("relay_workers", 1):
        out.append("global.relay_workers changed: it takes effect at the next restart")
    return out


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    if isinstance(value, int) and not isinstance(value, bool) and value > 0xFFFF:
        return hex(value)
    return str(value)


def outbound_translation(old: Manifest, new: Manifest) -> dict[int, int]:
    """Old outbound id -> new id, by name, for every outbound both builds have."""
    by_name = {o.name: o.id for o in new.outbounds}
    return {o.id: by_name[o.name] for o in old.outbounds if o.name in by_name}


def same_outbound_ids(old: Manifest, new: Manifest) -> bool:
    return {(o.id, o.name) for o in old.outbounds} == {(o.id, o.name) for o in new.outbounds}


def domain_sets_of(build: Build) -> Any:
    """The domain sets as ir.json holds them: equal between two builds iff a bound address
    means the same sets in both."""
    try:
        return json.loads((build.path / build.manifest.domain_sets).read_text()).get("domain_sets")
    except (OSError, ValueError, AttributeError):
        return None


# --- the maps -------------------------------------------------------------------------------


@dataclass
class MapPlan:
    reuse: list[str] = field(default_factory=list)
    fresh: list[str] = field(default_factory=list)  # survivors started empty (with a warning)
    copy_counters: bool = False  # outbound_stats fresh, carried over by name
    warnings: list[str] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)


def plan_maps(old_obj: Any, new_obj: Any, old: Build, new: Build) -> MapPlan:
    """Which of the running object's maps the new one takes over, by the manifest's
    `state_maps` (STATE_MAPS for builds that predate the list)."""
    plan = MapPlan()
    wanted = list(old.manifest.state_maps or STATE_MAPS)
    have_old, have_new = set(old_obj.map_names()), set(new_obj.map_names())
    domains_same: bool | None = None
    for name in wanted:
        if name not in have_old or name not in have_new:
            continue  # e.g. domain maps of a build with domain() rules only on one side
        if name == "outbound_stats" and not same_outbound_ids(old.manifest, new.manifest):
            plan.fresh.append(name)
            plan.copy_counters = True
            continue
        if name in DOMAIN_MAPS:
            if domains_same is None:
                domains_same = domain_sets_of(old) == domain_sets_of(new)
            if not domains_same:
                plan.fresh.append(name)
                if name != "domain_filter":
                    plan.warnings.append(f"{name}: the domain sets changed, so addresses bound before the reload "
                                         "no longer say which sets they belong to; it starts empty (names bind "
                                         "again as clients resolve them)")
                continue
        o_type, o_key, o_value, o_max = old_obj.map_definition(name)
        n_type, n_key, n_value, n_max = new_obj.map_definition(name)
        if (o_type, o_key, o_value) != (n_type, n_key, n_value):
            plan.refusals.append(f"map {name} must survive the reload but its layout changed (type {o_type}, "
                                 f"key {o_key} B, value {o_value} B -> type {n_type}, key {n_key} B, value "
                                 f"{n_value} B); restart the service to start it afresh")
            continue
        if o_max != n_max:
            plan.warnings.append(f"map {name}: keeps its {o_max} entries (the build asks for {n_max}) until "
                                 "the next restart")
        plan.reuse.append(name)
    return plan


def copy_counters(old_map: Any, new_map: Any, translation: dict[int, int], n_new: int) -> None:
    """Per-CPU outbound counters of the old build into the new map, under the new ids."""
    for old_id, new_id in translation.items():
        if new_id >= n_new:
            continue
        raw = old_map.lookup(U32.pack(old_id))
        if raw is not None:
            new_map.update(U32.pack(new_id), _percpu_add(new_map.lookup(U32.pack(new_id)), raw, new_map))


def add_counter_delta(old_map: Any, new_map: Any, translation: dict[int, int], copied: dict[int, bytes],
                      n_new: int) -> None:
    """After the swap: what the old program counted between the copy and the swap."""
    for old_id, new_id in translation.items():
        if new_id >= n_new:
            continue
        now = old_map.lookup(U32.pack(old_id))
        if now is None:
            continue
        delta = _percpu_sub(now, copied.get(old_id), old_map)
        new_map.update(U32.pack(new_id), _percpu_add(new_map.lookup(U32.pack(new_id)), delta, new_map))


def _cells(raw: bytes | None, m: Any) -> list[tuple[int, int]]:
    step = (m.value_size + 7) // 8 * 8
    n = m.value_stride // step
    if raw is None:
        return [(0, 0)] * n
    return [(v["packets"], v["bytes"]) for v in (OUTBOUND_STATS.unpack(raw, i * step) for i in range(n))]


def _pack_cells(cells: list[tuple[int, int]], m: Any) -> bytes:
    step = (m.value_size + 7) // 8 * 8
    pad = bytes(step - OUTBOUND_STATS.size)
    return b"".join(OUTBOUND_STATS.pack(p & (2**64 - 1), b & (2**64 - 1)) + pad for p, b in cells)


def _percpu_add(base: bytes | None, extra: bytes, m: Any) -> bytes:
    return _pack_cells([(a + c, b + d) for (a, b), (c, d) in zip(_cells(base, m), _cells(extra, m), strict=True)], m)


def _percpu_sub(now: bytes, before: bytes | None, m: Any) -> bytes:
    return _pack_cells([(max(a - c, 0), max(b - d, 0))
                        for (a, b), (c, d) in zip(_cells(now, m), _cells(before, m), strict=True)], m)


def decisions(flows: Any) -> dict[bytes, bytes]:
    """key -> the decision part of each `flows` value (last_seen_ns changes with every packet)."""
    size = DECISION.size
    return {k: v[:size] for k, v in flows.items()}


def remap_flows(flows: Any, before: dict[bytes, bytes], old: Manifest, new: Manifest) -> int:
    """Rewrite the outbound id of every decision the old program took to the new build's id
    for the same outbound name. `before`: the decisions read just before the swap (surely the
    old program's); an entry made during the swap itself is taken as old when its rule and
    outbound agree with the old build and not with the new one. Returns how many changed."""
    translation = outbound_translation(old, new)
    old_names = {o.id: o.name for o in old.outbounds}
    new_names = {o.id: o.name for o in new.outbounds}
    changed = 0
    for key, value in list(flows.items()):
        head = value[:DECISION.size]
        d = DECISION.unpack(head)
        oid = d["outbound"]
        target = translation.get(oid)
        if target is None or target == oid:
            continue
        if before.get(key) != head and not _looks_old(d["rule"], oid, old, new, old_names, new_names):
            continue
        fresh = DECISION.pack(d["mark"], d["rule"], target, d["flags"]) + value[DECISION.size:]
        try:
            flows.update(key, fresh, BPF_EXIST)
        except BpfError:  # evicted or expired meanwhile
            continue
        changed += 1
    return changed


def _rule_outbound(m: Manifest, rule: int) -> str | None:
    r = m.rule(rule)
    if r is not None:
        return r.outbound.split("(")[0].strip()
    return m.fallback.outbound if rule == len(m.rules) else None


def _looks_old(rule: int, oid: int, old: Manifest, new: Manifest, old_names: dict[int, str],
               new_names: dict[int, str]) -> bool:
    return (_rule_outbound(new, rule) != new_names.get(oid)
            and _rule_outbound(old, rule) == old_names.get(oid))


def same_group(old: Manifest, new: Manifest) -> Callable[[Any, Any], bool]:
    """Whether a running group may serve as the new build's group of the same id: the same
    entry (name, policy, checks, nodes) and the same node definitions."""
    old_nodes = {n.name: n for n in old.nodes}
    new_nodes = {n.name: n for n in new.nodes}
    old_groups = {g.id: g for g in old.groups}
    new_groups = {g.id: g for g in new.groups}

    def same(prev: Any, cur: Any) -> bool:
        a, b = old_groups.get(prev.spec.id), new_groups.get(cur.spec.id)
        return (a is not None and a == b
                and all(old_nodes.get(n) == new_nodes.get(n) for n in a.nodes))
    return same


# --- the reload -----------------------------------------------------------------------------


@dataclass
class _Prepared:
    build: Build
    obj: BpfObject
    router: KernelRouter
    table: Any
    adopted: list[Any]
    plan: MapPlan
    ingress_fd: int
    ingress_l3_fd: int
    warnings: list[str]
    wan_fds: dict[str, int] = dataclasses.field(default_factory=dict)  # Datapath.replace's WAN pair
    hook_fds: list[tuple[Attach, int]] = dataclasses.field(default_factory=list)  # the cgroup programs


class Reloader:
    """Owns the running gateway's `Live` parts and swaps them on request."""

    def __init__(self, live: Live, state_dir: Path) -> None:
        self.live = live
        self.state_dir = state_dir
        self._lock = asyncio.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._retired: list[BpfObject] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.reloads = self.refused = 0

    # --- requests ---

    async def start(self) -> None:
        """Listen on the state directory's reload.sock (a failure is a warning: the gateway
        runs, and SIGHUP still reloads)."""
        path = socket_path(self.state_dir)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a crashed runtime's
        old = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._serve, path=str(path))
            path.chmod(0o600)
        except OSError as exc:  # e.g. a state directory path too long for a unix socket
            log.warning("no reload socket at %s (%s): `dae-runtime reload` cannot reach this gateway; "
                        "SIGHUP still reloads", path, exc.strerror or exc)
        finally:
            os.umask(old)

    async def close(self) -> None:
        """Stop taking requests (a reload under way finishes first); close retired objects."""
        if self._server is not None:
            self._server.close()
            socket_path(self.state_dir).unlink(missing_ok=True)
            self._server = None
        async with self._lock:
            for task in list(self._tasks):
                task.cancel()
            for obj in self._retired:
                obj.close()
            self._retired.clear()

    def on_signal(self, sig: signal.Signals) -> None:
        """SIGHUP / SIGUSR1: reload the build directory the gateway runs (re-read)."""
        log.info("%s received: reloading %s", sig.name, self.live.build.path)
        task = asyncio.get_running_loop().create_task(self.reload(None))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:  # a line past the reader's limit (64 KiB) raises ValueError too
                request = json.loads(await asyncio.wait_for(reader.readline(), 10) or b"{}")
                build = request.get("build") if isinstance(request, dict) else None
                if build is not None and not isinstance(build, str):
                    raise ValueError("build is not a path")
            except ValueError:
                outcome = Outcome(False, "unreadable reload request")
            else:
                outcome = await self.reload(Path(build) if build else None)
            writer.write(json.dumps(outcome.to_json()).encode() + b"\n")
            await writer.drain()
        except (OSError, TimeoutError) as exc:
            log.debug("reload request: %s", exc)
        finally:
            writer.close()

    # --- the swap ---

    async def reload(self, path: Path | None) -> Outcome:
        """Swap to the build at `path` (None: the running build's directory, re-read)."""
        async with self._lock:
            t0 = time.perf_counter()
            target = path or self.live.build.path
            try:
                prepared = await self._prepare(Path(target))
            except ReloadRefused as exc:
                self.refused += 1
                log.error("reload of %s refused: %s; still running %s", target, exc, self.live.build.path)
                return Outcome(False, str(exc), str(target), time.perf_counter() - t0,
                               needs_restart=exc.needs_restart)
            try:
                seconds = await self._swap(prepared, t0)
            except ReloadRefused as exc:
                self.refused += 1
                prepared.obj.close()
                log.error("reload of %s failed while swapping: %s; still running %s", target, exc,
                          self.live.build.path)
                return Outcome(False, str(exc), str(target), time.perf_counter() - t0)
            self.reloads += 1
            m = prepared.build.manifest
            empty = [n for n in prepared.plan.fresh if not (n == "outbound_stats" and prepared.plan.copy_counters)]
            log.info("reloaded %s in %.1f ms: %d rules (%s); maps kept: %s%s%s", target, seconds * 1e3,
                     len(m.rules), m.strategy, ", ".join(prepared.plan.reuse) or "none",
                     "; outbound counters carried over by name" if prepared.plan.copy_counters else "",
                     f"; started empty: {', '.join(empty)}" if empty else "")
            return Outcome(True, "reloaded", str(target), seconds, tuple(prepared.warnings))

    async def _prepare(self, path: Path) -> _Prepared:
        """Everything that may fail, before anything running is touched."""
        live = self.live
        try:
            build = Build.open(path)
            manifest = build.manifest
        except (BuildError, ManifestError) as exc:
            raise ReloadRefused(str(exc)) from None
        reasons = restart_reasons(live.build.manifest, manifest)
        if reasons:
            raise ReloadRefused("; ".join(reasons), needs_restart=True)
        warnings = start_only_changes(live.build.manifest, manifest)
        try:
            obj = BpfObject(build.object_path)
        except BpfError as exc:
            raise ReloadRefused(f"cannot open the program: {exc}") from None
        try:
            plan = plan_maps(live.obj, obj, live.build, build)
            if plan.refusals:
                raise ReloadRefused("; ".join(plan.refusals), needs_restart=True)
            warnings += plan.warnings
            for name in plan.reuse:
                obj.reuse_map(name, live.obj.map(name).fd)
            try:
                await asyncio.to_thread(obj.load)  # the verifier may take a while: not on the loop
            except BpfError as exc:
                raise ReloadRefused(f"the program does not load: {exc}") from None
            load_tables(obj, build)
            ingress_fd = obj.program_fd(manifest.program(Attach.LAN_INGRESS).name)
            ingress_l3_fd = obj.program_fd(manifest.program(Attach.LAN_INGRESS_L3).name)
            wan_fds = _wan_fds(obj, manifest) if manifest.settings.wan_interface else {}
            if manifest.settings.wan_interface and _wan_fds(live.obj, live.build.manifest) and not wan_fds:
                raise ReloadRefused("the build has no WAN programs for the gateway's own traffic", needs_restart=True)
            hook_fds = [(spec.attach, obj.program_fd(spec.name)) for spec in manifest.cgroup_programs()]
            _ = build.ir  # read now: a corrupt ir.json is a refusal, not a failure later
            router = KernelRouter(build, obj.map("flows"), DomainBindings.of(obj, build.domain_words))
            from dae_py.runtime.relay import OutboundTable

            table = OutboundTable.from_manifest(manifest, live.relay.tcp.config.dial_options())
            adopted = table.adopt(live.relay.table, same_group(live.build.manifest, manifest))
        except ReloadRefused:
            obj.close()
            raise
        except Exception as exc:  # whatever it is, the old build keeps running
            obj.close()
            log.debug("reload preparation failed", exc_info=True)
            raise ReloadRefused(_one_line(exc)) from None
        return _Prepared(build, obj, router, table, adopted, plan, ingress_fd, ingress_l3_fd, warnings,
                         wan_fds, hook_fds)

    async def _swap(self, p: _Prepared, t0: float) -> float:
        live = self.live
        old_build, old_obj = live.build, live.obj
        old_m, new_m = old_build.manifest, p.build.manifest
        copied: dict[int, bytes] = {}
        translation = outbound_translation(old_m, new_m)
        if p.plan.copy_counters:
            old_stats, new_stats = old_obj.map("outbound_stats"), p.obj.map("outbound_stats")
            copied = {oid: raw for oid in translation if (raw := old_stats.lookup(U32.pack(oid))) is not None}
            copy_counters(old_stats, new_stats, translation, len(new_m.outbounds))
        remap = not same_outbound_ids(old_m, new_m)
        before = decisions(old_obj.map("flows")) if remap else {}
        old_ingress = old_obj.program_fd(old_m.program(Attach.LAN_INGRESS).name)
        old_l3 = old_obj.program_fd(old_m.program(Attach.LAN_INGRESS_L3).name)
        old_wan = _wan_fds(old_obj, old_m) if p.wan_fds else {}
        old_hooks = [(spec.attach, old_obj.program_fd(spec.name)) for spec in old_m.cgroup_programs()]
        try:
            await asyncio.to_thread(live.datapath.replace, ingress_fd=p.ingress_fd, ingress_l3_fd=p.ingress_l3_fd,
                                    **p.wan_fds)
            if live.hooks is not None and p.hook_fds:
                live.hooks.replace(p.hook_fds)  # BPF link updates: one atomic swap per hook
        except Exception as exc:  # noqa: BLE001 - put the old programs back, whatever failed
            try:
                await asyncio.to_thread(live.datapath.replace, ingress_fd=old_ingress, ingress_l3_fd=old_l3,
                                        **old_wan)
                if live.hooks is not None and old_hooks:
                    live.hooks.replace(old_hooks)
            except Exception as again:  # noqa: BLE001 - reported with the first failure
                log.error("putting the old programs back failed too: %s", _one_line(again))
            raise ReloadRefused(f"attaching the new program failed: {_one_line(exc)}") from None
        seconds = time.perf_counter() - t0
        # From here on in one loop step (no await): the relay, the DNS bindings and the
        # controller follow the kernel together.
        old_table = live.relay.swap(p.router, p.table)
        if remap:
            n = remap_flows(p.obj.map("flows"), before, old_m, new_m)
            log.info("reload: %d flow decision(s) moved to the new outbound ids", n)
        if p.plan.copy_counters:
            add_counter_delta(old_obj.map("outbound_stats"), p.obj.map("outbound_stats"), translation, copied,
                              len(new_m.outbounds))
        if live.subscriptions is not None:  # the new groups get the fetched nodes their filters select
            live.subscriptions.follow(new_m, p.table.groups())
        dns_restart = self._swap_dns(p)
        self.live = dataclasses.replace(live, build=p.build, obj=p.obj, router=p.router,
                                        generation=live.generation + 1)
        self._swap_controller()
        # what runs from here may wait
        adopted = {id(g) for g in p.adopted}
        for out in p.table.table.values():
            if id(out) not in adopted and getattr(out, "view_of", None) is None:
                await out.start()
        for out in old_table.table.values():
            if id(out) not in adopted and getattr(out, "view_of", None) is None:
                await out.close()
        if dns_restart:
            await self._restart_dns(p)
        self._retire(old_obj)
        return seconds

    def _swap_dns(self, p: _Prepared) -> bool:
        """Point the DNS module at the new maps; True when it must be restarted instead (its
        settings changed, or the domain maps started empty)."""
        dns = self.live.dns
        old_m, new_m = self.live.build.manifest, p.build.manifest
        if dns is None:
            return bool(new_m.dns.bind)
        if old_m.dns != new_m.dns or any(n in p.plan.fresh for n in DOMAIN_MAPS):
            return True
        dns.binder.bindings = p.router.domains
        if p.router.domains is not None:
            dns.binder.bits_of = p.build.domain_matcher.bits
        return False

    async def _restart_dns(self, p: _Prepared) -> None:
        from dae_py.runtime.dns import DnsModule

        live = self.live
        if live.dns is not None:
            await live.dns.close()
            self.live = dataclasses.replace(self.live, dns=None)
        guard = None  # the new build's tproxy guard, on the hijack listener's sockets too
        try:
            name = p.build.manifest.program(Attach.TPROXY_SOCKET).name
            guard = p.obj.program_fd(name) if name in p.obj.program_names() else None
        except ManifestError:
            pass
        try:
            dns = await DnsModule.start(p.build, p.router.domains, live.so_mark, guard_fd=guard, relay=live.relay)
        except Exception as exc:  # noqa: BLE001 - the gateway goes on without it, said loudly
            log.error("reload: the DNS module did not start with the new settings: %s", _one_line(exc))
            return
        self.live = dataclasses.replace(self.live, dns=dns)
        sniffing = live.relay.tcp.sniffing
        if sniffing is not None and dns is not None:
            sniffing.use_dns(dns)
        self._swap_controller()
        log.info("reload: DNS module restarted with the new build's settings")

    def _swap_controller(self) -> None:
        handle = self.live.controller
        ctrl = getattr(handle, "controller", None)
        if ctrl is None:
            if handle is not None and getattr(handle, "task", None) is not None:
                # still starting in the background with the old build: have it start again
                # once it is up (rare: a reload in the first second)
                handle.task.add_done_callback(lambda _t: self._swap_controller())
            return
        old = ctrl.view
        view = type(old)(self.live.build, self.live.relay, self.live.obj, self.live.dns, tracker=old.tracker,
                        subscriptions=old.subscriptions)
        view.started, view.history = old.started, old.history
        ctrl.view = view

    def _retire(self, obj: BpfObject) -> None:
        self._retired.append(obj)

        def close() -> None:
            if obj in self._retired:
                self._retired.remove(obj)
                obj.close()
        asyncio.get_running_loop().call_later(RETIRE_AFTER, close)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return text or type(exc).__name__


__all__ = ["Live", "MapPlan", "Outcome", "ReloadRefused", "ReloadUnreachable", "Reloader", "main", "plan_maps",
           "remap_flows", "request", "restart_reasons", "socket_path", "start_only_changes"]

