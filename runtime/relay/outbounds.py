"""The outbound table: id -> Outbound (0 direct, 1 block, groups by their manifest id)."""
from __future__ import annotations

from typing import Any, Mapping

from runtime.groups import Group
from runtime.outbound import (BLOCK_ID, DIRECT_ID, BlockOutbound, DialOptions, DirectOutbound,
                              Node, Outbound)


class OutboundTable:
    def __init__(self, table: Mapping[int, Outbound]) -> None:
        self.table = dict(table)

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any], opts: DialOptions = DialOptions(),
                      **group_kwargs: Any) -> OutboundTable:
        """From the manifest's "nodes" and "groups" lists."""
        nodes: dict[str, Node] = {}
        for raw in manifest.get("nodes", ()):
            node = Node.from_manifest(raw)
            if node.name in nodes:
                raise ValueError(f"duplicate node name {node.name!r}")
            nodes[node.name] = node
        table: dict[int, Outbound] = {DIRECT_ID: DirectOutbound(opts), BLOCK_ID: BlockOutbound()}
        for raw in manifest.get("groups", ()):
            group = Group.from_manifest(raw, nodes, opts, **group_kwargs)
            if group.spec.id in table:
                raise ValueError(f"group '{group.name}': outbound id {group.spec.id} is taken")
            table[group.spec.id] = group
        return cls(table)

    def get(self, outbound_id: int) -> Outbound | None:
        return self.table.get(outbound_id)

    def groups(self) -> list[Group]:
        return [o for o in self.table.values() if isinstance(o, Group)]

    async def start(self) -> None:
        for outbound in self.table.values():
            await outbound.start()

    async def close(self) -> None:
        for outbound in self.table.values():
            await outbound.close()
