"""Where a build may be written: `-o PATH` is replaced whole, so PATH must hold nothing else.

`dae-compile CONFIG -o PATH` swaps a new build directory into PATH. Before this check it renamed
and deleted whatever PATH was: `-o config.yaml` replaced the config, `-o somedir/` deleted the
files in it. Now PATH must be absent, an empty directory, or a previous build: a directory whose
manifest.json is a dae-compile manifest and whose entries, down to the files in `include/` and
`maps/`, are all ones a build writes. Anything else is refused with the path named, before
anything is written.

A symlink is refused unless it points at a previous build: then the build it points at is
replaced and the link is kept (the usual `current -> builds/N` layout). A link to anything else
(an empty directory, a file, nothing) is refused, since following it would write somewhere the
user did not name.

The new build is written next to PATH and swapped in with one `renameat2(RENAME_EXCHANGE)`, so a
reader sees the old build or the new one and never no build; PATH is checked again right before
the swap, because compiling takes seconds and the directory may have changed meanwhile.
"""
from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

# Every name write_build puts at the top of a build directory, and what kind of entry it is.
BUILD_FILES = frozenset({"program.c", "program.o", "sockmap.c", "sockmap.o", "sockmark.c", "sockmark.o",
                         "manifest.json", "ir.json"})
BUILD_DIRS = {"include": ".h", "maps": ".bin"}  # each holds only regular files with this suffix
BUILD_ENTRIES = BUILD_FILES | frozenset(BUILD_DIRS)
MANIFEST_MAX_BYTES = 256 << 20
_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100


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


def _foreign_entries(out_dir: Path, entries: set[str]) -> list[str]:
    """Entries (relative paths) a build does not write: unknown names, a known name of the wrong
    kind (a directory called program.c, a symlink anywhere), unknown files in include/ or maps/."""
    foreign = sorted(entries - BUILD_ENTRIES)
    for name in sorted(entries & BUILD_ENTRIES):
        st = os.lstat(out_dir / name)
        if name in BUILD_FILES:
            if not stat.S_ISREG(st.st_mode):
                foreign.append(name)
            continue
        if not stat.S_ISDIR(st.st_mode):
            foreign.append(name)
            continue
        suffix = BUILD_DIRS[name]
        for inner in sorted(os.listdir(out_dir / name)):
            if not inner.endswith(suffix) or not stat.S_ISREG(os.lstat(out_dir / name / inner).st_mode):
                foreign.append(f"{name}/{inner}")
    return foreign


def _check_directory(out_dir: Path, shown: Path) -> None:
    """`out_dir` (no symlink) is an empty directory or a previous build; `shown` names it in errors."""
    st = os.lstat(out_dir)
    if not stat.S_ISDIR(st.st_mode):
        raise OutputDirError(f"refusing to write the build to {shown}: it exists and is not a directory")
    entries = set(os.listdir(out_dir))
    if not entries:
        return
    foreign = _foreign_entries(out_dir, entries)
    if "manifest.json" in entries and not foreign and _is_build_manifest(out_dir / "manifest.json"):
        return
    what = (f"it holds files a build does not write ({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})"
            if foreign else "it is not a previous build (no dae-compile manifest.json)")
    raise OutputDirError(f"refusing to write the build to {shown}: {what}; "
                         "use an empty or new directory, or a previous build")


def check_output_dir(out_dir: Path) -> Path:
    """Raise OutputDirError unless `out_dir` may be replaced by a build; return the directory to
    replace (`out_dir` itself, or the previous build a symlink points at)."""
    try:
        try:
            st = os.lstat(out_dir)
        except FileNotFoundError:
            return out_dir
        if not stat.S_ISLNK(st.st_mode):
            _check_directory(out_dir, out_dir)
            return out_dir
        target = out_dir.resolve()
        try:
            _check_directory(target, out_dir)
            empty = not os.listdir(target)
        except (OutputDirError, OSError):
            empty = True  # reported below as a link to something that is not a build
        if empty:
            raise OutputDirError(f"refusing to write the build to {out_dir}: it is a symlink to {target}, which "
                                 f"is not a previous build (name a new path, or the directory itself)")
        return target
    except OSError as exc:
        raise OutputDirError(f"cannot write the build to {out_dir}: {exc.strerror or exc}") from None


def staging_dir(target: Path) -> Path:
    """A new empty directory beside `target` (same filesystem, so the swap is a rename)."""
    parent = target.absolute().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=".dae-build-", dir=parent))
    except OSError as exc:
        raise OutputDirError(f"cannot write the build next to {target}: "
                             f"{exc.strerror or exc} ({exc.filename or parent})") from None


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False when the kernel or filesystem cannot (then the caller
    falls back to two renames)."""
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is None:
        return False
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(tmp: Path, out_dir: Path) -> None:
    """Put the finished build `tmp` at `out_dir` (checked again first), removing the previous
    build it replaces; on any refusal `tmp` is removed and `out_dir` is left as it was."""
    try:
        target = check_output_dir(out_dir)
        target = target.absolute()
        try:
            if not target.exists():
                tmp.rename(target)
                return
            if _exchange(tmp, target):
                shutil.rmtree(tmp, ignore_errors=True)  # it now holds the previous build
                return
            old = target.with_name(target.name + ".old-" + tmp.name[-8:])
            target.rename(old)
            tmp.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        except OSError as exc:
            raise OutputDirError(f"cannot write the build to {out_dir}: {exc.strerror or exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
