"""The Clash/mihomo-compatible controller API, /metrics and the /ui status page.

Public API: `start_for(build, relay, obj, dns, state_dir, subscriptions)` (the gateway's one call; returns a
`Handle` to close), `socket_path(state_dir)`. In `app`: `Controller` (its `.view` is the one
swappable GatewayView), `parse_address`. Routes per area: `general` (/, /version, /rules,
/configs, /dae/summary), `proxies`, `providers` (subscriptions), `connections`, `streams` (/traffic, /memory, /logs),
`metrics`. docs/operations.md describes it for operators.

Where it listens: always on a unix socket in the runtime's state directory
(`controller.sock`, mode 0600: whoever can open it is the runtime's user or root, so no secret
is asked there; `dae-runtime status` talks to it), and on `global.external_controller` when set
(TCP, the secret required). aiohttp and prometheus-client cost ~0.4 s to import on these
machines: without external_controller they are imported in a thread after the gateway is
ready, so start-up does not wait for them.
"""
from __future__ import annotations

import asyncio
import importlib
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("dae.controller")

SOCKET_NAME = "controller.sock"


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


class Handle:
    """The running controller (or the task still starting it); `close()` stops either."""

    def __init__(self) -> None:
        self.controller: Any = None
        self.task: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self.task is not None and not self.task.done():
            self.task.cancel()
            try:
                await self.task
            except asyncio.CancelledError:
                pass
        if self.controller is not None:
            await self.controller.close()
            self.controller = None


async def _start(handle: Handle, build: Any, relay: Any, obj: Any, dns: Any, state_dir: Path,
                 tcp: tuple[str, int] | None, subscriptions: Any = None) -> None:
    app = importlib.import_module("dae_py.runtime.controller.app")
    view_mod = importlib.import_module("dae_py.runtime.controller.view")
    view = view_mod.GatewayView(build, relay, obj, dns, subscriptions=subscriptions)
    relay.tcp.tracker = relay.udp.tracker = view.tracker
    handle.controller = app.Controller(view, build.manifest.settings.secret)
    await handle.controller.start(tcp, unix=socket_path(state_dir))


async def start_for(build: Any, relay: Any, obj: Any, dns: Any, state_dir: Path,
                    subscriptions: Any = None) -> Handle:
    """Start the controller for a starting gateway. With `global.external_controller` set it
    is listening when this returns (a bad address or a port in use fails the start); without,
    only the unix socket is served, started in the background."""
    handle = Handle()
    address = build.manifest.settings.external_controller
    if address:
        from .app import parse_address

        await _start(handle, build, relay, obj, dns, state_dir, parse_address(address), subscriptions)
        return handle

    async def later() -> None:
        try:
            await asyncio.to_thread(importlib.import_module, "dae_py.runtime.controller.app")
            await _start(handle, build, relay, obj, dns, state_dir, None, subscriptions)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - status is not worth the gateway
            log.warning("no controller socket (dae-runtime status will not work): %s", exc)
    handle.task = asyncio.get_running_loop().create_task(later())
    return handle


__all__ = ["Handle", "socket_path", "start_for"]
