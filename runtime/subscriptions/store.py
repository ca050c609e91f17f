"""The last good body of each subscription, on disk: readable by the gateway's user only
(directory 0700, files 0600, written whole then renamed, never followed through a symlink),
since a body holds every node's password."""
from __future__ import annotations

import contextlib
import logging
import os
import re
from pathlib import Path

log = logging.getLogger(__name__)


def _file_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name).lstrip(".") + ".sub"


class Store:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, name: str) -> Path:
        return self.directory / _file_name(name)

    def load(self, name: str) -> tuple[bytes, float] | None:
        """(body, when it was saved) or None when there is no copy (or it cannot be read)."""
        path = self.path(name)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            log.warning("subscription '%s': cannot read the stored copy %s: %s", name, path, exc.strerror or exc)
            return None
        with os.fdopen(fd, "rb") as f:
            return f.read(), os.fstat(f.fileno()).st_mtime

    def save(self, name: str, body: bytes) -> None:
        """Raises OSError (the caller logs it; the nodes are used all the same)."""
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.directory, 0o700)
        final = self.path(name)
        tmp = final.with_name(final.name + ".tmp")
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            view = memoryview(body)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, final)
