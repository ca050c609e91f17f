"""Follow the interfaces while the gateway runs: a `br-*` created after start, a WAN that gains
the default route (`wan_interface: auto`), get their programs (Datapath.refresh).

A poll (one link dump and one route dump every `interval` seconds, in a thread: pyroute2's sync
API runs its own event loop) rather than a netlink subscription: it also catches what happened
while the runtime was busy, and costs a few hundred microseconds a poll. A new interface is
attached within `interval`.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

log = logging.getLogger(__name__)

DEFAULT_INTERVAL = 2.0


async def follow(datapath: Any, interval: float = DEFAULT_INTERVAL) -> None:
    """Refresh until cancelled; a failed refresh is logged and retried at the next poll."""
    while True:
        await asyncio.sleep(interval)
        if not datapath.active:
            return
        # shielded: a stop that cancels us mid-refresh waits for the thread, so the teardown
        # never runs beside a refresh that is still attaching
        refresh = asyncio.ensure_future(asyncio.to_thread(datapath.refresh))
        try:
            await asyncio.shield(refresh)
        except asyncio.CancelledError:
            with contextlib.suppress(Exception):
                await refresh
            raise
        except Exception as exc:  # noqa: BLE001 - the gateway keeps running on the interfaces it has
            log.warning("following the interfaces failed (retrying in %.0f s): %s", interval, exc)
