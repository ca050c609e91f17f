"""`-> my_group(mark: 0x800)`: flows a rule sends to a group with a mark leave through the relay
on upstream sockets carrying that mark (SO_MARK), as in dae, where the mark takes the place of
so_mark_from_dae for that connection (so `ip rule fwmark 0x800 lookup T` can send them over
another interface). For `direct(mark: N)` the datapath itself sets the packet's mark; a proxied
flow's packets are hijacked to the relay (and re-marked for the tproxy route), so for a group the
mark has to be put on the relay's own upstream socket.

The relay chooses its outbound by id, so each (group, mark) pair the rules use gets an outbound
id of its own past the kernel's 8-bit ids, mapped to a view of the group that dials with the mark
(`Group.with_mark`: same nodes, health and failover state). The router translates a kernel
decision (outbound, mark) to that id; nothing else in the relay changes.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from dae_py.contract.manifest import Manifest

#: First id of the marked views: the kernel's outbound ids are 8-bit, so no decision carries one.
MARKED_BASE = 256
FIRST_GROUP = 2  # 0 direct, 1 block
DIRECT = 0


def marked_routes(manifest: Manifest | Mapping[str, Any]) -> dict[tuple[int, int], int]:
    """(group id, mark) -> the outbound id of its marked view, for every rule (and the fallback)
    that sends flows to a group with a mark; in rule order, so the ids are stable per build."""
    if isinstance(manifest, Manifest):
        ids = {o.name: o.id for o in manifest.outbounds}
        actions = [(r.outbound, r.mark) for r in manifest.rules] + [(manifest.fallback.outbound,
                                                                      manifest.fallback.mark)]
    else:  # a partial JSON manifest (tests, tools)
        ids = {str(o["name"]): int(o["id"]) for o in manifest.get("outbounds", ())}
        fb = manifest.get("fallback") or {}
        actions = [(str(r.get("outbound", "")), int(r.get("mark") or 0)) for r in manifest.get("rules", ())]
        actions.append((str(fb.get("outbound", "direct")), int(fb.get("mark") or 0)))
    out: dict[tuple[int, int], int] = {}
    for name, mark in actions:
        oid = ids.get(name)
        if mark and oid is not None and oid >= FIRST_GROUP and (oid, mark) not in out:
            out[(oid, mark)] = MARKED_BASE + len(out)
    # then `direct(mark: N)`: the datapath marks the packets of a direct flow it decides, but a
    # flow the relay carries direct (re-routed by a sniffed name, dial_mode domain++) leaves on
    # the relay's own socket, which must carry the mark too (after the groups' views, so their
    # ids stay what they were)
    direct = ids.get("direct", DIRECT)
    for name, mark in actions:
        if mark and ids.get(name, DIRECT if name == "direct" else None) == direct and (direct, mark) not in out:
            out[(direct, mark)] = MARKED_BASE + len(out)
    return out
