"""Log records for /logs subscribers: a logging.Handler that fans lines out to queues.

Installed on the root logger while the controller runs. A slow subscriber loses lines (its
queue is bounded, as mihomo's channel of 1024) rather than holding up the logging caller, which
may be the relay's per-flow path. Nothing here formats a secret: the controller never logs it
and aiohttp's access log (which would carry `?token=`) is off.
"""
from __future__ import annotations

import asyncio
import logging

QUEUE = 1024

#: mihomo's level names (the `type` of a log line, the `level` query parameter).
LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR, "silent": logging.CRITICAL + 10}


def level_name(levelno: int) -> str:
    if levelno >= logging.ERROR:
        return "error"
    if levelno >= logging.WARNING:
        return "warning"
    if levelno >= logging.INFO:
        return "info"
    return "debug"


class LogBus(logging.Handler):
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.DEBUG)
        self.loop = loop
        self.subscribers: set[tuple[asyncio.Queue[tuple[int, str]], int]] = set()

    def subscribe(self, level: int) -> asyncio.Queue[tuple[int, str]]:
        queue: asyncio.Queue[tuple[int, str]] = asyncio.Queue(QUEUE)
        self.subscribers.add((queue, level))
        return queue

    def unsubscribe(self, queue: asyncio.Queue[tuple[int, str]]) -> None:
        self.subscribers = {s for s in self.subscribers if s[0] is not queue}

    def emit(self, record: logging.LogRecord) -> None:
        if not self.subscribers:
            return
        try:
            text = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format string must not break logging
            return
        item = (record.levelno, f"[{record.name.removeprefix('dae_py.')}] {text}")
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self.loop:
            self._deliver(item)
        else:  # a record from another thread (pyroute2's): hand it to the loop
            try:
                self.loop.call_soon_threadsafe(self._deliver, item)
            except RuntimeError:  # the loop is closed
                pass

    def _deliver(self, item: tuple[int, str]) -> None:
        for queue, level in list(self.subscribers):
            if item[0] >= level:
                try:
                    queue.put_nowait(item)
                except asyncio.QueueFull:
                    pass
