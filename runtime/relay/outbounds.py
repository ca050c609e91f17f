"""The outbound table: id -> Outbound (0 direct, 1 block, groups by their manifest id)."""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from dae_py.contract.manifest import Manifest, nodes_and_groups
from dae_py.runtime import proxy
from dae_py.runtime.groups import Group
from dae_py.runtime.groups.marks import marked_routes
from dae_py.runtime.proxy import (
    BLOCK_ID,
    DIRECT_ID,
    BlockOutbound,
    DialOptions,
    DirectOutbound,
    Node,
    Outbound,
    plugins,
)

if TYPE_CHECKING:
    from .flow import RelayConfig

log = logging.getLogger(__name__)


def mark_plugin_sockets(config: RelayConfig) -> None:
    """The SIP003 plugins this process starts carry the relay's so_mark on their sockets (through
    the build's sockmark.o), as the relay's own sockets do; before `start_nodes`."""
    plugins.mark_sockets(config.so_mark, config.sockmark_object)


class OutboundTable:
    def __init__(self, table: Mapping[int, Outbound]) -> None:
        self.table = dict(table)

    @classmethod
    def from_manifest(cls, manifest: Manifest | Mapping[str, Any], opts: DialOptions = DialOptions(),
                      **group_kwargs: Any) -> OutboundTable:
        """From the manifest's nodes and groups (a typed Manifest, or a partial JSON one)."""
        node_specs, group_specs = nodes_and_groups(manifest)
        nodes: dict[str, Node] = {}
        for spec in node_specs:
            if spec.dialable is False:
                log.warning("node '%s': %s is not supported by the runtime; skipped", spec.name, spec.protocol)
                continue
            node = Node.from_manifest(spec)
            if node.name in nodes:
                raise ValueError(f"duplicate node name {node.name!r}")
            nodes[node.name] = node
        table: dict[int, Outbound] = {DIRECT_ID: DirectOutbound(opts), BLOCK_ID: BlockOutbound()}
        for gspec in group_specs:
            members = tuple(n for n in gspec.nodes if n in nodes)
            waits = "filter" in gspec.extra  # subscriptions may fill it (runtime/subscriptions)
            if not members and not waits:
                # The compiler only lets this through for groups no rule uses.
                log.warning("group '%s' has no node the runtime can dial; flows to it are refused", gspec.name)
                continue
            group = Group.from_manifest(replace(gspec, nodes=members), nodes, opts, allow_empty=waits,
                                        **group_kwargs)
            if group.spec.id in table:
                raise ValueError(f"group '{group.name}': outbound id {group.spec.id} is taken")
            table[group.spec.id] = group
        for (gid, mark), view_id in marked_routes(manifest).items():  # `group(mark: N)`, `direct(mark: N)`
            base = table.get(gid)
            if isinstance(base, Group):
                table[view_id] = base.with_mark(mark)
            elif gid == DIRECT_ID:
                table[view_id] = DirectOutbound(replace(opts, so_mark=mark))
        return cls(table)

    def adopt(self, old: OutboundTable, same: Callable[[Group, Group], bool]) -> list[Group]:
        """Reload: keep the old table's group object wherever the new one is `same` (same id,
        policy, checks and nodes), so its health statistics, node choice and a controller's
        pin carry over; its marked views are rebuilt on it. Returns the groups adopted (the
        caller must neither start nor close them)."""
        adopted: list[Group] = []
        for oid, new in list(self.table.items()):
            prev = old.table.get(oid)
            if (isinstance(new, Group) and isinstance(prev, Group) and new.view_of is None
                    and prev.view_of is None and same(prev, new)):
                self.table[oid] = prev
                adopted.append(prev)
        bases = {g.spec.id: g for g in adopted}
        for oid, out in list(self.table.items()):
            if isinstance(out, Group) and out.view_of is not None and out.view_of.spec.id in bases:
                self.table[oid] = bases[out.view_of.spec.id].with_mark(out.opts.so_mark)
        return adopted

    def get(self, outbound_id: int) -> Outbound | None:
        return self.table.get(outbound_id)

    def choosers(self) -> dict[int, Group]:
        """id -> the outbounds that choose among nodes (the relay's callback dial serves them)."""
        return {i: o for i, o in self.table.items() if isinstance(o, Group)}

    def groups(self) -> list[Group]:
        return [o for o in self.table.values() if isinstance(o, Group) and o.view_of is None]

    async def start(self) -> None:
        for outbound in self.table.values():
            await outbound.start()

    async def close(self) -> None:
        for outbound in self.table.values():
            await outbound.close()

    def nodes(self) -> list[Node]:
        """Every node of the table's groups, once."""
        return list({n.name: n for g in self.groups() for n in g.nodes}.values())

    def start_nodes(self) -> None:
        """What the nodes run beside them (SIP003 plugins) starts; once per table."""
        for node in self.nodes():
            proxy.start_node(node)

    def stop_nodes(self) -> None:
        for node in self.nodes():
            proxy.stop_node(node)
