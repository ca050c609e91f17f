"""Read a user-named file as UTF-8 text with a size cap.

The compiler reads the config and file:// subscriptions; either may name a device or a huge file
(`file:///dev/zero` read 3.7 GiB before this). Reading stops one byte past the cap, so memory is
bounded whatever the path is; a pipe (`-`, /dev/stdin) is read once.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import BinaryIO


def read_capped(stream: BinaryIO, limit: int, what: str) -> bytes:
    data = stream.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} is larger than {limit >> 20} MiB")
    return data


def decode_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{what} is not UTF-8 ({exc.reason} at byte {exc.start})") from None


def read_capped_text(path: Path, limit: int, what: str, regular_only: bool = False) -> str:
    """UTF-8 text of `path`; ValueError when too large, not UTF-8, or (with `regular_only`) not a
    regular file; OSError when it cannot be opened. Opening does not block on a FIFO."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        if regular_only and not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ValueError(f"{what} is not a regular file")
        os.set_blocking(fd, True)  # O_NONBLOCK was for open() only
        return decode_utf8(read_capped(fh, limit, what), what)
