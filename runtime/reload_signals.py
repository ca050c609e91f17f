"""What SIGHUP and SIGUSR1 do to a running gateway.

Their default action ends the process at once: no teardown, so the tc filters, policy routes and
sysctls would stay behind (and `systemctl reload`, or a log rotator's HUP, would take the gateway
down). dae reloads its config on them. Until reload exists here, they log one line saying so and
are otherwise ignored: the gateway keeps running the build it has.

The one place to change when reload arrives: `on_signal` (and `SIGNALS`); the gateway calls
`install_early` first thing and `install` once its event loop runs.
"""
from __future__ import annotations

import asyncio
import logging
import signal
from types import FrameType

log = logging.getLogger("dae.gateway")

SIGNALS: tuple[signal.Signals, ...] = (signal.SIGHUP, signal.SIGUSR1)


def on_signal(sig: signal.Signals) -> None:
    """A reload signal arrived."""
    log.warning("%s received: reload is not implemented yet; ignored (the running build stays)", sig.name)


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
