"""What SIGHUP and SIGUSR1 do to a running gateway.

Their default action ends the process at once: no teardown, so the tc filters, policy routes and
sysctls would stay behind (and `systemctl reload`, or a log rotator's HUP, would take the gateway
down). dae reloads its config on them, and so does this runtime once it is ready: the gateway
hands `set_handler` its reloader's `on_signal` (runtime/reload.py); before that (opening the
build, attaching) a signal is logged and ignored, and the running build stays.

The gateway calls `install_early` first thing and `install` once its event loop runs.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from types import FrameType

log = logging.getLogger("dae.gateway")

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGHUP, signal.SIGUSR1)


_handler: Callable[[signal.Signals], None] | None = None


def set_handler(handler: Callable[[signal.Signals], None] | None) -> None:
    """What a reload signal does from now on (None: ignored again, e.g. while stopping)."""
    global _handler
    _handler = handler


def on_signal(sig: signal.Signals) -> None:
    """A reload signal arrived."""
    if _handler is None:
        log.warning("%s received before the gateway is ready (or while it stops): ignored; the running "
                    "build stays", sig.name)
        return
    _handler(sig)


def _early(signum: int, frame: FrameType | None) -> None:
    on_signal(signal.Signals(signum))


def install_early() -> None:
    """Before the event loop exists (opening the build): a plain handler, so the signal cannot
    kill the process in that window either."""
    for sig in SIGNALS:
        signal.signal(sig, _early)


def install(loop: asyncio.AbstractEventLoop) -> None:
    """On the running loop: the handler runs as a loop callback, never inside a syscall."""
    for sig in SIGNALS:
        loop.add_signal_handler(sig, on_signal, sig)
