"""Where a build may be written: `-o PATH` is replaced whole, so PATH must hold nothing else.

`dae-compile CONFIG -o PATH` swaps a new build directory into PATH. Before this check it renamed
and deleted whatever PATH was: `-o config.yaml` replaced the config, `-o somedir/` deleted the
files in it. Now PATH must be absent, an empty directory, or a previous build: a directory whose
manifest.json is a dae-compile manifest and whose entries are all ones a build writes.
"""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

# Every name write_build puts in a build directory.
BUILD_ENTRIES = frozenset({"include", "program.c", "program.o", "maps", "manifest.json", "ir.json"})
MANIFEST_MAX_BYTES = 256 << 20


class OutputDirError(Exception):
    """PATH is something the build must not replace; nothing was changed."""


def _is_build_manifest(path: Path) -> bool:
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MANIFEST_MAX_BYTES:
            return False
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "format" in data and "compiler_version" in data


def check_output_dir(out_dir: Path) -> None:
    """Raise OutputDirError unless `out_dir` may be replaced by a build."""
    try:
        st = os.lstat(out_dir)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputDirError(f"cannot write the build to {out_dir}: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise OutputDirError(f"refusing to write the build to {out_dir}: it is a symlink "
                             f"(name the directory it points to, or a new path)")
    if not stat.S_ISDIR(st.st_mode):
        raise OutputDirError(f"refusing to write the build to {out_dir}: it exists and is not a directory")
    try:
        entries = set(os.listdir(out_dir))
    except OSError as exc:
        raise OutputDirError(f"cannot write the build to {out_dir}: {exc.strerror or exc}") from None
    if not entries:
        return
    foreign = sorted(entries - BUILD_ENTRIES)
    if "manifest.json" in entries and not foreign and _is_build_manifest(out_dir / "manifest.json"):
        return
    what = (f"it holds files a build does not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
            if foreign else "it is not a previous build (no dae-compile manifest.json)")
    raise OutputDirError(f"refusing to write the build to {out_dir}: {what}; "
                         "use an empty or new directory, or a previous build")
