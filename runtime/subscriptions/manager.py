"""Keep each subscription's nodes current and hand them to the groups.

At start: the stored copy of each subscription (the last good body, runtime/subscriptions/
store.py) is applied first, so a gateway with no network still has its nodes; then every source
is fetched once (bounded by fetch.TIMEOUT_S) before the gateway says it is ready; then each is
fetched again every `refresh_s`. A body is *good* when it is one of the three forms and gives
at least one node the runtime dials: it replaces the nodes of its tag and is stored. Anything
else (unreachable, HTTP error, not a subscription, nothing usable) is one warning line (the URL
redacted) and the last good copy stays. Each dropped node is logged with its reason.

Nodes reach groups through the group's filter (contract/nodefilter.py, written by the
compiler): the pool is the config's nodes, then each subscription's in manifest order; a
subscription not yet had from anywhere keeps the nodes the compiler read (file:// sources).
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from dae_py.contract.capabilities import RUNTIME_PROTOCOLS
from dae_py.contract.manifest import GroupEntry, Manifest, NodeSpec, SubscriptionSpec
from dae_py.contract.nodefilter import NodeFilter
from dae_py.contract.subformats import Parsed, SubscriptionFormatError, parse_body
from dae_py.contract.urls import redact_url
from dae_py.runtime.groups import Group
from dae_py.runtime.proxy import Node

from .fetch import FetchError, fetch_body
from .store import Store

log = logging.getLogger("dae.subscriptions")

DEFAULT_DIR = Path("/var/lib/dae-py/subscriptions")
DROPPED_LOGGED = 20
Fetcher = Callable[[str, int], Awaitable[bytes]]


def subscription_dir() -> Path:
    """Where the last good copies live: $DAE_SUBSCRIPTION_DIR, else systemd's StateDirectory=
    ($STATE_DIRECTORY/subscriptions: it survives reboots, unlike the runtime directory), else
    /var/lib/dae-py/subscriptions."""
    explicit = os.environ.get("DAE_SUBSCRIPTION_DIR")
    if explicit:
        return Path(explicit)
    state = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
    return Path(state) / "subscriptions" if state else DEFAULT_DIR


async def _default_fetch(url: str, so_mark: int) -> bytes:
    return await fetch_body(url, so_mark)


class SubscriptionManager:
    def __init__(self, manifest: Manifest, groups: list[Group], directory: Path, so_mark: int = 0,
                 fetch: Fetcher = _default_fetch, allow_insecure: bool = False) -> None:
        self.specs = manifest.subscriptions
        self._use(manifest, groups)
        self.store = Store(directory)
        self.so_mark = so_mark
        self.fetch = fetch
        self.allow_insecure = allow_insecure
        self.current: dict[str, list[NodeSpec]] = {}  # tag -> the nodes of its last good body
        self.last_good: dict[str, float] = {}  # tag -> when (wall clock) it was had
        self.failures: dict[str, str] = {}  # tag -> the last fetch's error (for status)
        self._nodes: dict[str, Node] = {}
        self._task: asyncio.Task[None] | None = None
        self._updating = asyncio.Lock()  # one fetch of a source at a time (refresh loop, API update)

    def _use(self, manifest: Manifest, groups: list[Group]) -> None:
        """What a build says about groups, filters and compiled nodes (at start, and at a reload)."""
        self.manifest = manifest
        self.groups = {g.name: g for g in groups}
        self.entries = {e.name: e for e in manifest.groups if "filter" in e.extra}
        self.filters = {name: NodeFilter.from_json(e.extra["filter"]) for name, e in self.entries.items()}
        self.static = [n for n in manifest.nodes if n.dialable is not False and n.tag is None]
        self.compiled = {s.name: [n for n in manifest.nodes if n.tag == s.name and n.dialable is not False]
                         for s in self.specs}

    def follow(self, manifest: Manifest, groups: list[Group]) -> None:
        """A reload swapped in `manifest` (same subscriptions: reload.restart_reasons checks) and
        its outbound table's `groups`: the fetched bodies stay, the new groups get their nodes now
        (an adopted group keeps its node objects: set_nodes keeps the nodes that stay)."""
        self._use(manifest, groups)
        self.apply()

    # --- bodies ---------------------------------------------------------------------------
    def _parse(self, spec: SubscriptionSpec, body: bytes) -> Parsed:
        taken = {n.name for n in self.static}
        for other in self.specs:
            if other.name == spec.name:
                break
            taken.update(n.name for n in self.current.get(other.name, self.compiled.get(other.name, [])))
        return parse_body(spec.name, body, taken=taken, allow_insecure=self.allow_insecure,
                          dialable=frozenset(RUNTIME_PROTOCOLS))

    def _usable(self, spec: SubscriptionSpec, body: bytes, source: str) -> list[NodeSpec] | None:
        """The nodes of a body, or None (logged) when it is not a good one."""
        where = redact_url(spec.url)
        try:
            parsed = self._parse(spec, body)
        except SubscriptionFormatError as exc:
            log.warning("subscription '%s' (%s): %s is not a subscription (%s)%s", spec.name, where, source, exc,
                        self._keeping(spec.name))
            return None
        for line in parsed.dropped[:DROPPED_LOGGED]:
            log.warning("subscription '%s': dropped node %s", spec.name, line)
        if len(parsed.dropped) > DROPPED_LOGGED:
            log.warning("subscription '%s': dropped %d more nodes", spec.name, len(parsed.dropped) - DROPPED_LOGGED)
        nodes = []
        for raw in parsed.nodes:
            try:
                nodes.append(NodeSpec.from_json(raw))
            except ValueError as exc:
                log.warning("subscription '%s': dropped node %s: %s", spec.name, raw.get("name"), exc)
        if not nodes:
            log.warning("subscription '%s' (%s): %s has no node the runtime can dial (%d dropped)%s", spec.name,
                        where, source, len(parsed.dropped), self._keeping(spec.name))
            return None
        log.info("subscription '%s' (%s): %d node(s) from %s (%s), %d dropped", spec.name, where, len(nodes),
                 source, parsed.form, len(parsed.dropped))
        return nodes

    def _keeping(self, tag: str) -> str:
        if tag in self.current:
            age = time.time() - self.last_good[tag]
            return f"; keeping the last good copy ({len(self.current[tag])} nodes, {age:.0f}s old)"
        if self.compiled.get(tag):
            return f"; keeping the {len(self.compiled[tag])} nodes read at compile time"
        return "; its groups have none of its nodes"

    def load_stored(self) -> None:
        for spec in self.specs:
            stored = self.store.load(spec.name)
            if stored is None:
                continue
            body, mtime = stored
            nodes = self._usable(spec, body, "the stored copy")
            if nodes is not None:
                self.current[spec.name] = nodes
                self.last_good[spec.name] = mtime

    async def refresh(self, spec: SubscriptionSpec) -> bool:
        """Fetch one subscription; True when its nodes were replaced."""
        try:
            body = await self.fetch(spec.url, self.so_mark)
        except FetchError as exc:
            self.failures[spec.name] = str(exc)
            log.warning("subscription '%s' (%s): fetch failed: %s%s", spec.name, redact_url(spec.url), exc,
                        self._keeping(spec.name))
            return False
        nodes = self._usable(spec, body, "the fetched body")
        if nodes is None:
            self.failures[spec.name] = "not a good body"
            return False
        self.failures.pop(spec.name, None)
        self.current[spec.name] = nodes
        self.last_good[spec.name] = time.time()
        try:
            self.store.save(spec.name, body)
        except OSError as exc:
            log.warning("subscription '%s': cannot store the copy in %s: %s (a restart without network will "
                        "not have these nodes)", spec.name, self.store.directory, exc.strerror or exc)
        return True

    # --- groups ---------------------------------------------------------------------------
    def pool(self) -> list[NodeSpec]:
        out = list(self.static)
        for spec in self.specs:
            out.extend(self.current.get(spec.name, self.compiled.get(spec.name, [])))
        return out

    def _node(self, spec: NodeSpec) -> Node | None:
        node = self._nodes.get(spec.name)
        fresh = Node.from_manifest(spec)
        if node == fresh:
            return node
        self._nodes[spec.name] = fresh
        return fresh

    def apply(self) -> None:
        """Give every filtered group the nodes its filter selects from the pool now."""
        pool = self.pool()
        by_name: dict[str, Node] = {}
        for spec in pool:
            try:
                node = self._node(spec)
            except ValueError as exc:
                log.warning("node '%s' (subscription '%s'): %s; skipped", spec.name, spec.tag, exc)
                continue
            if node is not None:
                by_name[spec.name] = node
        candidates = [(s.name, s.tag) for s in pool if s.name in by_name]
        for name, entry in self.entries.items():
            group = self.groups.get(name)
            if group is None:
                continue
            selected = self.filters[name].select(candidates)
            nodes = [by_name[n] for n in selected]
            fixed = self._fixed_index(entry, list(selected))
            before = [n.name for n in group.nodes]
            group.set_nodes(nodes, {n: ms / 1000.0 for n, ms in selected.items() if ms}, fixed)
            if before != [n.name for n in nodes]:
                log.info("group '%s': %d node(s)%s", name, len(nodes),
                         f" ({', '.join(list(selected)[:8])}{', ...' if len(selected) > 8 else ''})" if nodes else
                         "; flows to it are refused until a subscription gives it one")

    def _fixed_index(self, entry: GroupEntry, selected: list[str]) -> int:
        n = entry.extra.get("fixed_n")
        if n is None:
            return 0
        if int(n) >= len(selected):
            if selected:
                log.warning("group '%s': fixed(%s) but its filter selects %d node(s) now; using fixed(0)",
                            entry.name, n, len(selected))
            return 0
        return int(n)

    # --- life -----------------------------------------------------------------------------
    async def start(self) -> None:
        """Stored copies, then one fetch of every source, then the refresh loop."""
        self.load_stored()
        await asyncio.gather(*(self.refresh(s) for s in self.specs))
        self.apply()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        due = {s.name: time.monotonic() + s.refresh_s for s in self.specs}
        while True:
            wait = max(0.0, min(due.values()) - time.monotonic()) if due else 3600.0
            await asyncio.sleep(wait)
            changed = False
            for spec in self.specs:
                if due[spec.name] <= time.monotonic():
                    async with self._updating:
                        changed |= await self.refresh(spec)
                    due[spec.name] = time.monotonic() + spec.refresh_s
            if changed:
                self.apply()

    def node_names(self, tag: str) -> list[str]:
        """The names of the nodes subscription `tag` gives the pool now (fetched, else compiled)."""
        return [n.name for n in self.current.get(tag, self.compiled.get(tag, []))]

    def node(self, name: str) -> Node | None:
        """The runtime node object for a pooled node (shared with the groups it is in)."""
        return self._nodes.get(name)

    async def update(self, tag: str) -> bool:
        """Fetch `tag` now (the API's provider update) and re-filter the groups when its nodes
        changed. KeyError for an unknown tag; False when the fetch or body failed (the last good
        copy stays, as on a scheduled refresh)."""
        spec = next((s for s in self.specs if s.name == tag), None)
        if spec is None:
            raise KeyError(tag)
        async with self._updating:
            changed = await self.refresh(spec)
        if changed:
            self.apply()
        return tag not in self.failures

    def status(self) -> dict[str, Any]:
        """Per subscription: nodes in use, when they were had, the last error (no URL), how often
        it is fetched."""
        return {s.name: {"nodes": len(self.node_names(s.name)), "last_good": self.last_good.get(s.name),
                         "error": self.failures.get(s.name), "refresh_s": s.refresh_s}
                for s in self.specs}

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
