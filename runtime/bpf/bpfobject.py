"""BpfObject: one compiled ``.o`` opened, loaded and owned through libbpf.

The offline compiler emits a specialised object; the runtime opens it, may resize maps to the
rule set (before load), loads it (where the verifier runs), then takes program fds to attach and
map handles to fill. Pinning lets a restarted runtime find and remove what a crashed one left.
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import weakref
from collections.abc import Iterator

from . import libbpf as lb
from .errors import BpfError
from .maps import BpfMap

log = logging.getLogger("dae_py.runtime.bpf")

# libbpf 1.1 names the program the kernel rejected in these WARN lines.
_FAILED_PROG_RE = re.compile(
    r"prog '([^']+)': BPF program load failed|failed to load program '([^']+)'"
)


def _failed_program(log_text: str) -> str | None:
    match = _FAILED_PROG_RE.search(log_text)
    return (match.group(1) or match.group(2)) if match else None


class BpfObject:
    """A BPF object file opened with ``bpf_object__open_file``; use it as a context manager.

    Lifecycle: ``BpfObject(path)`` (parse ELF/BTF, nothing in the kernel yet) ->
    optional :meth:`set_map_max_entries` -> :meth:`load` (maps created, programs verified) ->
    :meth:`program_fd` / :meth:`map` -> :meth:`close`. Closing releases every program and map
    fd of the object; whatever must survive (attached tc filters keep their own reference,
    pinned objects are referenced by bpffs) keeps working.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._loaded = False
        self._maps: dict[str, BpfMap] = {}
        with lb.capture_log() as messages:
            ptr = lb.lib.bpf_object__open_file(self.path.encode(), None)
        if not ptr:
            raise BpfError(f"cannot open BPF object {self.path!r}",
                           errno=ctypes.get_errno() or None, log="".join(messages),
                           object_path=self.path)
        self._ptr: int = ptr
        self._closer = weakref.finalize(self, lb.lib.bpf_object__close, ptr)

    # ---- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> BpfObject:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("loaded" if self._loaded else "opened")
        return f"BpfObject({self.path!r}, {state})"

    @property
    def closed(self) -> bool:
        return not self._closer.alive

    @property
    def loaded(self) -> bool:
        return self._loaded and not self.closed

    def close(self) -> None:
        """``bpf_object__close``: frees libbpf state and closes all fds. Idempotent."""
        self._closer()

    def _obj(self) -> int:
        if self.closed:
            raise BpfError(f"BPF object {self.path!r} is closed", object_path=self.path)
        return self._ptr

    def load(self) -> None:
        """Create the maps and load every program into the kernel (the verifier runs here).

        On failure the BpfError carries the captured libbpf output, which includes the
        verifier log of the rejected program, and names that program.
        """
        obj = self._obj()
        with lb.capture_log() as messages:
            ret = lb.lib.bpf_object__load(obj)
        if ret < 0:
            text = "".join(messages)
            prog = _failed_program(text)
            what = f"cannot load BPF object {self.path!r}"
            if prog:
                what += f": program {prog!r} was rejected"
            raise BpfError(what, errno=-ret, log=text, object_path=self.path, program=prog)
        self._loaded = True
        log.debug("loaded %s: programs %s, maps %s", self.path, self.program_names(),
                  self.map_names())

    # ---- programs -----------------------------------------------------------------------

    def program_names(self) -> list[str]:
        """Names (C function names) of the object's programs, in ELF order."""
        return [name for name, _ in self._iter_programs()]

    def _iter_programs(self) -> Iterator[tuple[str, int]]:
        obj, prog = self._obj(), None
        while prog := lb.lib.bpf_object__next_program(obj, prog):
            yield lb.lib.bpf_program__name(prog).decode(), prog

    def _program(self, name: str) -> int:
        prog: int | None = lb.lib.bpf_object__find_program_by_name(self._obj(), name.encode())
        if not prog:
            raise BpfError(f"BPF object {self.path!r} has no program {name!r} "
                           f"(it has: {', '.join(self.program_names()) or 'none'})",
                           object_path=self.path, program=name)
        return prog

    def program_fd(self, name: str) -> int:
        """The loaded program's fd, owned by this object (valid until :meth:`close`; pin it
        or ``os.dup`` it to keep it longer)."""
        fd: int = lb.lib.bpf_program__fd(self._program(name))
        if fd < 0:
            raise BpfError(f"program {name!r} of {self.path!r} has no fd: call load() first",
                           errno=-fd, object_path=self.path, program=name)
        return fd

    def program_section(self, name: str) -> str:
        """ELF section (e.g. ``tc``, ``cgroup/connect4``): tells the runtime how to attach."""
        section: bytes = lb.lib.bpf_program__section_name(self._program(name))
        return section.decode()

    def pin_program(self, name: str, path: str) -> None:
        """Pin the loaded program at ``path`` on bpffs (``bpf_obj_pin``) for crash cleanup."""
        try:
            lb.bpf_obj_pin(self.program_fd(name), path)
        except BpfError as exc:
            raise BpfError(f"cannot pin program {name!r} of {self.path!r} at {path!r}",
                           errno=exc.errno, object_path=self.path, program=name) from exc

    # ---- maps ---------------------------------------------------------------------------

    def map_names(self, internal: bool = False) -> list[str]:
        """Names of the object's maps; ``internal`` adds libbpf's .data/.rodata/.bss maps."""
        obj, m, names = self._obj(), None, []
        while m := lb.lib.bpf_object__next_map(obj, m):
            if internal or not lb.lib.bpf_map__is_internal(m):
                names.append(lb.lib.bpf_map__name(m).decode())
        return names

    def _map_ptr(self, name: str) -> int:
        m: int | None = lb.lib.bpf_object__find_map_by_name(self._obj(), name.encode())
        if not m:
            raise BpfError(f"BPF object {self.path!r} has no map {name!r} "
                           f"(it has: {', '.join(self.map_names(internal=True)) or 'none'})",
                           object_path=self.path)
        return m

    def set_map_max_entries(self, name: str, max_entries: int) -> None:
        """Resize a map before :meth:`load`, e.g. to the number of rules the compiler emitted."""
        ret = lb.lib.bpf_map__set_max_entries(self._map_ptr(name), max_entries)
        if ret < 0:
            hint = " (only possible before load())" if self._loaded else ""
            raise BpfError(f"cannot set max_entries={max_entries} on map {name!r} of "
                           f"{self.path!r}{hint}", errno=-ret, object_path=self.path)

    def map_definition(self, name: str) -> tuple[int, int, int, int]:
        """(type, key size, value size, max entries) of a map as the object declares it (before
        load) or as it was created (after): what a reload compares with the map it would reuse."""
        m = self._map_ptr(name)
        return (lb.lib.bpf_map__type(m), lb.lib.bpf_map__key_size(m), lb.lib.bpf_map__value_size(m),
                lb.lib.bpf_map__max_entries(m))

    def reuse_map(self, name: str, fd: int) -> None:
        """Before :meth:`load`: make the object use the existing map behind ``fd`` (another
        object's, or a pinned one) instead of creating its own (``bpf_map__reuse_fd``; libbpf
        dups the fd, so the caller keeps its own). The programs then read and write the same
        kernel map: a reload keeps flow state and counters this way. libbpf takes the map's
        type, sizes and max_entries from the kernel; the caller checks they fit the program."""
        if self._loaded:
            raise BpfError(f"map {name!r} of {self.path!r}: reuse_map() must come before load()",
                           object_path=self.path)
        ret = lb.lib.bpf_map__reuse_fd(self._map_ptr(name), fd)
        if ret < 0:
            raise BpfError(f"cannot reuse map fd {fd} as {name!r} of {self.path!r}",
                           errno=-ret, object_path=self.path)

    def set_initial_value(self, name: str, data: bytes) -> None:
        """Before :meth:`load`: the whole initial contents of an internal map, e.g. ``.rodata``
        (a program's ``const volatile`` settings, which the verifier then knows as constants;
        libbpf freezes .rodata at load). ``data`` must be exactly the section's size: the layout
        of its variables is the contract with the C source."""
        if self._loaded:
            raise BpfError(f"map {name!r} of {self.path!r}: set_initial_value() must come before load()",
                           object_path=self.path)
        m = self._map_ptr(name)
        size = lb.lib.bpf_map__value_size(m)
        if size != len(data):
            raise BpfError(f"map {name!r} of {self.path!r} holds {size} bytes, not {len(data)}",
                           object_path=self.path)
        buf = ctypes.create_string_buffer(data, len(data))
        ret = lb.lib.bpf_map__set_initial_value(m, buf, len(data))
        if ret < 0:
            raise BpfError(f"cannot set the initial value of map {name!r} of {self.path!r}",
                           errno=-ret, object_path=self.path)

    def map(self, name: str) -> BpfMap:
        """A handle on a loaded map; it turns unusable (BpfError) once the object is closed."""
        if name in self._maps:
            return self._maps[name]
        m = self._map_ptr(name)
        if not self._loaded:
            raise BpfError(f"map {name!r} of {self.path!r} has no fd: call load() first",
                           object_path=self.path)
        closer = self._closer
        handle = BpfMap(
            lb.lib.bpf_map__fd(m), name, lb.lib.bpf_map__type(m), lb.lib.bpf_map__key_size(m),
            lb.lib.bpf_map__value_size(m), lb.lib.bpf_map__max_entries(m),
            alive=lambda: closer.alive,
        )
        self._maps[name] = handle
        return handle

    def pin_map(self, name: str, path: str) -> None:
        """Pin a loaded map at ``path`` on bpffs (``bpf_map__pin``)."""
        ret = lb.lib.bpf_map__pin(self._map_ptr(name), path.encode())
        if ret < 0:
            raise BpfError(f"cannot pin map {name!r} of {self.path!r} at {path!r}",
                           errno=-ret, object_path=self.path)

    def unpin_map(self, name: str, path: str | None = None) -> None:
        """Remove the map's pin (``bpf_map__unpin``); ``path`` defaults to where it was pinned."""
        ret = lb.lib.bpf_map__unpin(self._map_ptr(name), path.encode() if path else None)
        if ret < 0:
            raise BpfError(f"cannot unpin map {name!r} of {self.path!r}"
                           + (f" from {path!r}" if path else ""),
                           errno=-ret, object_path=self.path)


def unpin(path: str) -> None:
    """Remove any pinned BPF object (program or map) from bpffs; the kernel frees it once
    nothing else (an attachment, an open fd) references it."""
    try:
        os.unlink(path)
    except OSError as exc:
        raise BpfError(f"cannot unpin {path!r}", errno=exc.errno) from exc
