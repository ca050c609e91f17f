"""The runtime's log level: `--log-level` when given, else the config's `global.log_level`.

dae's levels are error, warn, info, debug and trace; Python's `warning` is accepted too. The
command line wins; without it the level the config asked for (recorded in the build's manifest)
applies as soon as the build is open, so `log_level: debug` in a config works as it does in dae.
`trace` is a level of its own below debug: everything the runtime logs at debug, plus whatever a
module logs at TRACE.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import Any

TRACE = 5
logging.addLevelName(TRACE, "TRACE")

#: dae's names (and Python's `warning`) -> logging levels.
LEVELS: dict[str, int] = {"error": logging.ERROR, "warn": logging.WARNING, "warning": logging.WARNING,
                          "info": logging.INFO, "debug": logging.DEBUG, "trace": TRACE}
DEFAULT = "info"

log = logging.getLogger(__name__)
_explicit: str | None = None


def configure(handler: logging.Handler, level: str | None) -> None:
    """Install `handler` on the root logger at `level` (from --log-level), or at the default
    until the build's own level is known (`apply_config_level`)."""
    global _explicit
    _explicit = level
    logging.basicConfig(level=LEVELS[level or DEFAULT], handlers=[handler], force=True)


def apply_config_level(level: str) -> None:
    """The config's `global.log_level`, unless --log-level was given (the command line wins).
    A value this runtime does not know (a hand-edited manifest) keeps the default, with a warning."""
    if _explicit is not None:
        return
    value = LEVELS.get(level.lower())
    if value is None:
        log.warning("global.log_level %r is not one of %s; logging at %s", level, ", ".join(LEVELS), DEFAULT)
        return
    logging.getLogger().setLevel(value)
    log.debug("log level %s (global.log_level)", level)


def apply_manifest_level(manifest: Mapping[str, Any]) -> None:
    """`apply_config_level` from a build's raw manifest (read before its typed form, which may
    still fail: that error is reported later, in its own line)."""
    settings = manifest.get("global")
    level = settings.get("log_level") if isinstance(settings, Mapping) else None
    if isinstance(level, str):
        apply_config_level(level)


class LineFormatter(logging.Formatter):
    """The runtime's line format (dae-runtime and its relay workers): logger names without the
    `dae_py.` namespace, and the date and time part formatted once per second rather than once
    per line (the relay logs a line per flow)."""

    _second = -1
    _text = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._text = time.strftime("%Y-%m-%d %H:%M:%S", self.converter(second))
            self._second = second
        return f"{self._text},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        # Loggers are named by module (dae_py.runtime.relay.tcp); the namespace says nothing here.
        name = record.name
        record.name = name.removeprefix("dae_py.")
        try:
            return super().format(record)
        finally:
            record.name = name
