"""The outbound table: id -> Outbound (0 direct, 1 block, groups by their manifest id)."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from dae_py.contract.manifest import Manifest, nodes_and_groups
from dae_py.runtime.groups import Group
from dae_py.runtime.groups.marks import marked_routes
from dae_py.runtime.proxy import BLOCK_ID, DIRECT_ID, BlockOutbound, DialOptions, DirectOutbound, Node, Outbound

log = logging.getLogger(__name__)

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
            if not members:
                # The compiler only lets this through for groups no rule uses.
                log.warning("group '%s' has no node the runtime can dial; flows to it are refused", gspec.name)
                continue
            group = Group.from_manifest(replace(gspec, nodes=members), nodes, opts, **group_kwargs)
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
