"""The `dae-runtime reload` command: ask the running gateway to swap builds and report.

Apart from runtime/reload.py (which does the swap inside the gateway) so that the command, run by
systemd's ExecReload or a deployment tool, imports nothing but the standard library: its time is
mostly the interpreter starting. The protocol: one JSON line to `reload.sock` in the state
directory (`{"build": PATH or null}`), one JSON line back (`Outcome`).
"""
from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SOCKET_NAME = "reload.sock"
#: How long a request waits for its answer (the reload itself takes well under a second).
CLIENT_TIMEOUT = 60.0
#: The runtime's default state file when none is given (datapath.state.default_state_path,
#: which this module does not import: pyroute2 alone costs ~0.1 s; a test checks they agree).
FALLBACK_STATE_PATH = Path("/run/dae-py/state.json")


def socket_path(state_dir: Path) -> Path:
    return state_dir / SOCKET_NAME


def default_state_path() -> Path:
    runtime_dir = os.environ.get("RUNTIME_DIRECTORY", "").split(":")[0]
    return Path(runtime_dir) / "state.json" if runtime_dir else FALLBACK_STATE_PATH


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str
    build: str = ""
    seconds: float = 0.0  # from the request to the new programs attached everywhere
    warnings: tuple[str, ...] = ()
    needs_restart: bool = False

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "message": self.message, "build": self.build,
                "seconds": round(self.seconds, 6), "warnings": list(self.warnings),
                "needs_restart": self.needs_restart}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Outcome:
        return cls(bool(raw.get("ok")), str(raw.get("message", "")), str(raw.get("build", "")),
                   float(raw.get("seconds", 0.0)), tuple(str(w) for w in raw.get("warnings", ())),
                   bool(raw.get("needs_restart")))



class ReloadUnreachable(Exception):
    """No running gateway answered on the state directory's socket."""


async def request(state_dir: Path, build: Path | None, timeout: float = CLIENT_TIMEOUT) -> Outcome:
    path = socket_path(state_dir)
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(path)), 5)
    except (OSError, TimeoutError) as exc:
        raise ReloadUnreachable(f"no running gateway at {path} ({getattr(exc, 'strerror', None) or exc})") from None
    try:
        writer.write(json.dumps({"build": os.path.abspath(build) if build else None}).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError) as exc:
        raise ReloadUnreachable(f"the gateway did not answer at {path}: {str(exc) or 'timed out'}") from None
    finally:
        writer.close()
    if not line:
        raise ReloadUnreachable(f"the gateway at {path} closed the connection without an answer")
    return Outcome.from_json(json.loads(line))


def main(args: Any, state_path: Path, out: Callable[[str], Any] = print,
         err: Callable[[str], Any] | None = None) -> int:
    """`dae-runtime reload [BUILD_DIR]`: 0 reloaded, 1 refused (the reason printed), 2 no
    gateway to ask, 3 refused because only a restart can apply the build."""
    import sys

    err = err or (lambda text: print(text, file=sys.stderr))
    build = Path(args.build) if getattr(args, "build", None) else None
    try:
        outcome = asyncio.run(request(state_path.parent, build))
    except ReloadUnreachable as exc:
        err(f"dae-runtime reload: {exc}")
        return 2
    for line in outcome.warnings:
        err(f"dae-runtime reload: warning: {line}")
    if getattr(args, "json", False):
        out(json.dumps(outcome.to_json(), sort_keys=True))
    elif outcome.ok:
        out(f"dae-runtime reload: {outcome.build} live in {outcome.seconds * 1e3:.1f} ms")
    if not outcome.ok:
        err(f"dae-runtime reload: refused: {outcome.message}")
        return 3 if outcome.needs_restart else 1
    return 0
