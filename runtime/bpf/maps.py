"""BpfMap: a map fd plus the metadata needed to size buffers safely.

The runtime fills routing tables (hash maps, LPM tries) with up to ~100k entries at start and on
reload, so :meth:`BpfMap.update_batch` uses one BPF_MAP_UPDATE_BATCH syscall and only falls back
to per-element updates for map types whose kernel implementation has no batch operation.
"""
from __future__ import annotations

import ctypes
import errno
import logging
import os
import time
import weakref
from collections.abc import Callable, Iterator
from enum import IntEnum

from . import libbpf as lb
from .errors import ENOTSUPP, BpfError

log = logging.getLogger("dae_py.runtime.bpf")


class MapType(IntEnum):
    """``enum bpf_map_type`` (UAPI); values the kernel may add later stay plain ints."""

    UNSPEC = 0
    HASH = 1
    ARRAY = 2
    PROG_ARRAY = 3
    PERF_EVENT_ARRAY = 4
    PERCPU_HASH = 5
    PERCPU_ARRAY = 6
    STACK_TRACE = 7
    CGROUP_ARRAY = 8
    LRU_HASH = 9
    LRU_PERCPU_HASH = 10
    LPM_TRIE = 11
    ARRAY_OF_MAPS = 12
    HASH_OF_MAPS = 13
    DEVMAP = 14
    SOCKMAP = 15
    CPUMAP = 16
    XSKMAP = 17
    SOCKHASH = 18
    CGROUP_STORAGE = 19
    REUSEPORT_SOCKARRAY = 20
    PERCPU_CGROUP_STORAGE = 21
    QUEUE = 22
    STACK = 23
    SK_STORAGE = 24
    DEVMAP_HASH = 25
    STRUCT_OPS = 26
    RINGBUF = 27
    INODE_STORAGE = 28
    TASK_STORAGE = 29
    BLOOM_FILTER = 30
    USER_RINGBUF = 31
    CGRP_STORAGE = 32


PERCPU_MAP_TYPES = frozenset(
    {MapType.PERCPU_HASH, MapType.PERCPU_ARRAY, MapType.LRU_PERCPU_HASH,
     MapType.PERCPU_CGROUP_STORAGE}
)

# Errors meaning "this map type (or kernel) has no batch update": worth a per-element retry.
_BATCH_UNSUPPORTED = frozenset({ENOTSUPP, errno.EOPNOTSUPP, errno.EINVAL})

Buffer = bytes | bytearray | memoryview


def _map_type(value: int) -> MapType | int:
    try:
        return MapType(value)
    except ValueError:
        return value


def _address(data: Buffer, keepalive: list[object]) -> int:
    """Address of ``data``'s bytes without copying (bytes are immutable, so read-only use is
    safe); ``keepalive`` holds any temporary until the C call returns."""
    if isinstance(data, bytes):
        ptr = ctypes.c_char_p(data)
        keepalive.append(ptr)
        return ctypes.cast(ptr, ctypes.c_void_p).value or 0
    view = memoryview(data).cast("B")
    if view.readonly:
        return _address(view.tobytes(), keepalive)
    arr = (ctypes.c_char * len(view)).from_buffer(view)
    keepalive.append(arr)
    return ctypes.addressof(arr)


def _fd_is_map(fd: int) -> bool:
    """BPF_OBJ_GET_INFO_BY_FD answers for programs too (with a prog_info), so tell the fd kind
    from /proc/self/fdinfo, where only map fds have a ``map_type:`` line."""
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii", errors="replace") as fdinfo:
        return any(line.startswith("map_type:") for line in fdinfo)


class BpfMap:
    """A BPF map: an fd plus type, key/value sizes and capacity.

    Obtained from :meth:`BpfObject.map` (the object owns the fd and the map becomes unusable
    once the object is closed) or from :meth:`BpfMap.open_pinned` (the BpfMap owns the fd;
    close it with :meth:`close` or a ``with`` block).

    Per-CPU maps: :meth:`lookup` returns, and :meth:`update` expects, the concatenation of one
    value per possible CPU, each padded to a multiple of 8 bytes, i.e. :attr:`value_stride`
    = ``round_up(value_size, 8) * libbpf_num_possible_cpus()`` bytes (the kernel's ABI).
    """

    def __init__(self, fd: int, name: str, map_type: int, key_size: int, value_size: int,
                 max_entries: int, *, alive: Callable[[], bool] | None = None,
                 owns_fd: bool = False) -> None:
        self._fd = fd
        self.name = name
        self.type: MapType | int = _map_type(map_type)
        self.key_size = key_size
        self.value_size = value_size
        self.max_entries = max_entries
        self._alive = alive or (lambda: True)
        self._batch_supported = True
        self._closer = weakref.finalize(self, os.close, fd) if owns_fd else None

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def open_pinned(cls, path: str) -> BpfMap:
        """Open a map pinned on bpffs (e.g. left by a previous runtime for crash cleanup).

        The name is the kernel's copy, truncated to 15 characters.
        """
        fd = lb.bpf_obj_get(path)
        try:
            if not _fd_is_map(fd):
                raise BpfError(f"pinned object {path!r} is not a BPF map", errno=errno.EINVAL)
            info = lb.bpf_map_info(fd)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, info.name.decode(errors="replace"), info.type, info.key_size,
                   info.value_size, info.max_entries, owns_fd=True)

    def close(self) -> None:
        """Close the fd if this BpfMap owns it (pinned-map handles); no-op otherwise."""
        if self._closer is not None:
            self._closer()

    def __enter__(self) -> BpfMap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        kind = self.type.name if isinstance(self.type, MapType) else self.type
        return (f"BpfMap({self.name!r}, type={kind}, key_size={self.key_size}, "
                f"value_size={self.value_size}, max_entries={self.max_entries})")

    # ---- metadata -----------------------------------------------------------------------

    @property
    def fd(self) -> int:
        """The map fd. Raises once the owner is closed: fd numbers are reused by the kernel,
        and writing through a stale number could hit an unrelated map or file."""
        if not self._alive() or (self._closer is not None and not self._closer.alive):
            raise BpfError(f"map {self.name!r} used after its BPF object/fd was closed")
        return self._fd

    @property
    def percpu(self) -> bool:
        return self.type in PERCPU_MAP_TYPES

    @property
    def value_stride(self) -> int:
        """Bytes of one element's value buffer as user space sees it (per-CPU expanded)."""
        if not self.percpu:
            return self.value_size
        return ((self.value_size + 7) // 8 * 8) * lb.libbpf_num_possible_cpus()

    def _check_len(self, what: str, data: Buffer, expected: int) -> None:
        size = memoryview(data).nbytes
        if size != expected:
            raise BpfError(f"map {self.name!r}: {what} is {size} bytes, expected {expected}",
                           errno=errno.EINVAL)

    # ---- single elements ----------------------------------------------------------------

    def update(self, key: bytes, value: bytes, flags: int = lb.BPF_ANY) -> None:
        """Insert or replace ``key`` (``flags``: BPF_ANY, BPF_NOEXIST, BPF_EXIST)."""
        self._check_len("key", key, self.key_size)
        self._check_len("value", value, self.value_stride)
        ret = lb.lib.bpf_map_update_elem(self.fd, bytes(key), bytes(value), flags)
        lb.check(ret, f"cannot update map {self.name!r}")

    def lookup(self, key: bytes) -> bytes | None:
        """The value of ``key`` or None; per-CPU maps return :attr:`value_stride` bytes."""
        self._check_len("key", key, self.key_size)
        buf = ctypes.create_string_buffer(self.value_stride)
        ret = lb.lib.bpf_map_lookup_elem(self.fd, bytes(key), buf)
        if ret == -errno.ENOENT:
            return None
        lb.check(ret, f"cannot look up in map {self.name!r}")
        return buf.raw

    def lookuper(self) -> Callable[[bytes], bytes | None]:
        """`lookup` for a hot path (the relay asks once per flow): one value buffer reused, the
        function and fd bound once. Keys must be `key_size` bytes (not checked); not for use
        from several threads at once."""
        fn = lb.lib.bpf_map_lookup_elem
        fd = self.fd
        buf = ctypes.create_string_buffer(self.value_stride)
        enoent = -errno.ENOENT
        name = self.name

        def lookup(key: bytes) -> bytes | None:
            ret = fn(fd, key, buf)
            if ret == 0:
                return buf.raw
            if ret == enoent:
                return None
            lb.check(ret, f"cannot look up in map {name!r}")
            return None

        return lookup

    def delete(self, key: bytes) -> bool:
        """Delete ``key``; False if absent. Array maps refuse deletion (EINVAL -> BpfError)."""
        self._check_len("key", key, self.key_size)
        ret = lb.lib.bpf_map_delete_elem(self.fd, bytes(key))
        if ret == -errno.ENOENT:
            return False
        lb.check(ret, f"cannot delete from map {self.name!r}")
        return True

    def percpu_values(self, key: bytes) -> list[bytes] | None:
        """A per-CPU map's value split into one ``value_size`` slice per possible CPU."""
        raw = self.lookup(key)
        if raw is None:
            return None
        step = (self.value_size + 7) // 8 * 8
        return [raw[i:i + self.value_size] for i in range(0, len(raw), step)]

    # ---- iteration ----------------------------------------------------------------------

    def keys(self) -> Iterator[bytes]:
        """All keys, via BPF_MAP_GET_NEXT_KEY. Deleting keys while iterating a hash map makes
        the kernel restart from the first key: collect the keys first if you delete."""
        fd, get_next = self.fd, lb.lib.bpf_map_get_next_key
        prev, nxt = ctypes.create_string_buffer(self.key_size), ctypes.create_string_buffer(
            self.key_size)
        ret = get_next(fd, None, nxt)
        while ret == 0:
            yield nxt.raw
            prev, nxt = nxt, prev
            ret = get_next(fd, prev, nxt)
        if ret != -errno.ENOENT:
            lb.check(ret, f"cannot iterate keys of map {self.name!r}")

    def items(self) -> Iterator[tuple[bytes, bytes]]:
        """(key, value) pairs; keys that vanish between listing and lookup are skipped."""
        for key in self.keys():
            value = self.lookup(key)
            if value is not None:
                yield key, value

    def __len__(self) -> int:
        """Number of keys (walks the map: O(n) syscalls)."""
        return sum(1 for _ in self.keys())

    # ---- bulk ---------------------------------------------------------------------------

    def update_batch(self, keys: Buffer, values: Buffer, count: int,
                     flags: int = lb.BPF_ANY) -> None:
        """Write ``count`` elements packed back to back in ``keys`` (count * key_size bytes)
        and ``values`` (count * value_stride bytes) in one BPF_MAP_UPDATE_BATCH call.

        Map types the kernel gives no batch operation (it answers ENOTSUPP, e.g. LPM tries)
        are filled with a tight loop of bpf_map_update_elem instead; the choice is remembered
        per map. Raises BpfError naming how many elements were written if the kernel stops
        part way (e.g. E2BIG when a hash map is full).
        """
        if count <= 0:
            return
        self._check_len("keys buffer", keys, count * self.key_size)
        self._check_len("values buffer", values, count * self.value_stride)
        keepalive: list[object] = []
        kaddr, vaddr = _address(keys, keepalive), _address(values, keepalive)
        started = time.perf_counter()
        done = self._batch_then_loop(kaddr, vaddr, count, flags)
        log.debug("map %s: %d elements written in %.1f ms (%s)", self.name, done,
                  (time.perf_counter() - started) * 1e3,
                  "batch" if self._batch_supported else "per-element")

    def _batch_then_loop(self, kaddr: int, vaddr: int, count: int, flags: int) -> int:
        if self._batch_supported:
            ret, processed = lb.bpf_map_update_batch(self.fd, kaddr, vaddr, count, flags)
            if ret == 0:
                return count
            if -ret not in _BATCH_UNSUPPORTED or processed:
                raise BpfError(f"batch update of map {self.name!r} stopped after "
                               f"{processed} of {count} elements", errno=-ret)
            # EINVAL may also be a genuine error (bad flags): the loop then fails on the first
            # element with a precise message, and batch stays enabled for the next call.
            done = self._update_loop(kaddr, vaddr, count, flags)
            log.info("map %s (%s): kernel refused batch update (errno %d); per-element "
                     "updates from now on", self.name, self.type, -ret)
            self._batch_supported = False
            return done
        return self._update_loop(kaddr, vaddr, count, flags)

    def _update_loop(self, kaddr: int, vaddr: int, count: int, flags: int) -> int:
        fd, ks, vs = self.fd, self.key_size, self.value_stride
        update = lb.lib.bpf_map_update_elem
        for i in range(count):
            ret = update(fd, kaddr + i * ks, vaddr + i * vs, flags)
            if ret < 0:
                raise BpfError(f"update of map {self.name!r} stopped after {i} of {count} "
                               "elements", errno=-ret)
        return count
