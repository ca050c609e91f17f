"""ctypes binding of libbpf 1.1 (Debian ``libbpf1``) and thin, errno-checked wrappers.

Why ctypes and not a compiled extension: the runtime must stay a pure-Python package that a fresh
machine can run with only ``libbpf1`` installed; libbpf's stable C ABI is enough for what the
runtime does (load an object, find programs and maps, touch map entries, pin, test-run).

Conventions of libbpf 1.x (strict mode is the default there): functions returning ``int``
return ``-errno`` on failure *and* set ``errno``; functions returning a pointer return NULL and
set ``errno``. Every wrapper here turns that into :class:`BpfError` with ``os.strerror`` text.

libbpf reports details (notably the verifier log of a rejected program) only through its print
callback. :func:`install_print_hook` routes those messages to the ``runtime.bpf.libbpf`` logger,
and :func:`capture_log` additionally collects them so that an error raised afterwards can carry
them. The callback receives a C ``va_list``; it is formatted with libc's ``vsnprintf``.
"""
from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import platform
import threading
from collections.abc import Iterator
from ctypes import (
    CFUNCTYPE,
    POINTER,
    Structure,
    c_bool,
    c_char,
    c_char_p,
    c_int,
    c_size_t,
    c_uint32,
    c_uint64,
    c_void_p,
)
from typing import Any

from .errors import BpfError

log = logging.getLogger("dae_py.runtime.bpf")
libbpf_log = logging.getLogger("dae_py.runtime.bpf.libbpf")

LIBBPF_SONAME = "libbpf.so.1"

# Update flags of bpf_map_update_elem (uapi/linux/bpf.h).
BPF_ANY = 0
BPF_NOEXIST = 1
BPF_EXIST = 2
BPF_F_LOCK = 4

# enum libbpf_print_level
LIBBPF_WARN = 0
LIBBPF_INFO = 1
LIBBPF_DEBUG = 2
_PY_LEVEL = {LIBBPF_WARN: logging.WARNING, LIBBPF_INFO: logging.INFO, LIBBPF_DEBUG: logging.DEBUG}

# BPF_OBJ_NAME_LEN: the kernel keeps at most 15 characters of a map/program name.
BPF_OBJ_NAME_LEN = 16


# --------------------------------------------------------------------------------------------
# C structures (layouts copied from /usr/include/bpf/bpf.h of libbpf 1.1 and the UAPI header).
# Every *_opts struct starts with `size_t sz`: libbpf uses it to tell which fields the caller
# knows, so it must be set to ctypes.sizeof(the struct).
# --------------------------------------------------------------------------------------------


class BpfTestRunOpts(Structure):
    """``struct bpf_test_run_opts`` (libbpf 1.1, 80 bytes on x86_64)."""

    _fields_ = [
        ("sz", c_size_t),
        ("data_in", c_void_p),
        ("data_out", c_void_p),
        ("data_size_in", c_uint32),
        ("data_size_out", c_uint32),  # in: capacity of data_out; out: bytes written
        ("ctx_in", c_void_p),
        ("ctx_out", c_void_p),
        ("ctx_size_in", c_uint32),
        ("ctx_size_out", c_uint32),
        ("retval", c_uint32),
        ("repeat", c_int),
        ("duration", c_uint32),  # out: average ns per repetition
        ("flags", c_uint32),
        ("cpu", c_uint32),
        ("batch_size", c_uint32),
    ]


class BpfMapBatchOpts(Structure):
    """``struct bpf_map_batch_opts``."""

    _fields_ = [("sz", c_size_t), ("elem_flags", c_uint64), ("flags", c_uint64)]


class BpfMapInfoHead(Structure):
    """The leading fields of UAPI ``struct bpf_map_info``.

    BPF_OBJ_GET_INFO_BY_FD copies ``min(info_len, kernel's size)`` bytes, so a prefix of the
    struct is a valid, forward-compatible request; these are all the fields the runtime needs.
    """

    _fields_ = [
        ("type", c_uint32),
        ("id", c_uint32),
        ("key_size", c_uint32),
        ("value_size", c_uint32),
        ("max_entries", c_uint32),
        ("map_flags", c_uint32),
        ("name", c_char * BPF_OBJ_NAME_LEN),
    ]


# --------------------------------------------------------------------------------------------
# Library loading and prototypes.
# --------------------------------------------------------------------------------------------

# int (*libbpf_print_fn_t)(enum libbpf_print_level, const char *fmt, va_list ap).
# On x86_64 (and aarch64, where the 32-byte struct is passed by reference) a va_list parameter
# arrives as a pointer, so c_void_p carries it through to vsnprintf untouched.
PRINT_FN = CFUNCTYPE(c_int, c_int, c_void_p, c_void_p)

_PROTOTYPES: dict[str, tuple[Any, list[Any]]] = {
    "libbpf_set_print": (c_void_p, [PRINT_FN]),
    "libbpf_num_possible_cpus": (c_int, []),
    "libbpf_strerror": (c_int, [c_int, c_char_p, c_size_t]),
    "bpf_object__open_file": (c_void_p, [c_char_p, c_void_p]),
    "bpf_object__load": (c_int, [c_void_p]),
    "bpf_object__close": (None, [c_void_p]),
    "bpf_object__name": (c_char_p, [c_void_p]),
    "bpf_object__find_program_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_program": (c_void_p, [c_void_p, c_void_p]),
    "bpf_object__find_map_by_name": (c_void_p, [c_void_p, c_char_p]),
    "bpf_object__next_map": (c_void_p, [c_void_p, c_void_p]),
    "bpf_program__fd": (c_int, [c_void_p]),
    "bpf_program__name": (c_char_p, [c_void_p]),
    "bpf_program__section_name": (c_char_p, [c_void_p]),
    "bpf_program__type": (c_int, [c_void_p]),
    "bpf_map__fd": (c_int, [c_void_p]),
    "bpf_map__name": (c_char_p, [c_void_p]),
    "bpf_map__type": (c_int, [c_void_p]),
    "bpf_map__key_size": (c_uint32, [c_void_p]),
    "bpf_map__value_size": (c_uint32, [c_void_p]),
    "bpf_map__max_entries": (c_uint32, [c_void_p]),
    "bpf_map__map_flags": (c_uint32, [c_void_p]),
    "bpf_map__set_max_entries": (c_int, [c_void_p, c_uint32]),
    "bpf_map__reuse_fd": (c_int, [c_void_p, c_int]),
    "bpf_map__set_initial_value": (c_int, [c_void_p, c_void_p, c_size_t]),
    "bpf_map__is_internal": (c_bool, [c_void_p]),
    "bpf_map__pin": (c_int, [c_void_p, c_char_p]),
    "bpf_map__unpin": (c_int, [c_void_p, c_char_p]),
    "bpf_obj_pin": (c_int, [c_int, c_char_p]),
    "bpf_obj_get": (c_int, [c_char_p]),
    "bpf_obj_get_info_by_fd": (c_int, [c_int, c_void_p, POINTER(c_uint32)]),
    "bpf_map_update_elem": (c_int, [c_int, c_void_p, c_void_p, c_uint64]),
    "bpf_map_lookup_elem": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_delete_elem": (c_int, [c_int, c_void_p]),
    "bpf_map_get_next_key": (c_int, [c_int, c_void_p, c_void_p]),
    "bpf_map_update_batch": (
        c_int,
        [c_int, c_void_p, c_void_p, POINTER(c_uint32), POINTER(BpfMapBatchOpts)],
    ),
    "bpf_prog_test_run_opts": (c_int, [c_int, POINTER(BpfTestRunOpts)]),
    # opts NULL: the defaults (a cgroup link with BPF_F_ALLOW_MULTI semantics; no old program)
    "bpf_link_create": (c_int, [c_int, c_int, c_int, c_void_p]),
    "bpf_link_update": (c_int, [c_int, c_int, c_void_p]),
}


def _load_libbpf() -> ctypes.CDLL:
    """Open libbpf and declare every prototype once, so a missing symbol fails at import."""
    try:
        lib = ctypes.CDLL(LIBBPF_SONAME, use_errno=True)
    except OSError as exc:
        raise BpfError(
            f"cannot load {LIBBPF_SONAME} (install Debian package libbpf1): {exc}"
        ) from exc
    for name, (restype, argtypes) in _PROTOTYPES.items():
        fn = getattr(lib, name)
        fn.restype = restype
        fn.argtypes = argtypes
    return lib


def _load_libc() -> ctypes.CDLL:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.vsnprintf.restype = c_int
    libc.vsnprintf.argtypes = [c_void_p, c_size_t, c_void_p, c_void_p]
    return libc


lib = _load_libbpf()
_libc = _load_libc()


# --------------------------------------------------------------------------------------------
# Error helpers.
# --------------------------------------------------------------------------------------------


def check(ret: int, what: str) -> int:
    """Return ``ret`` if it is >= 0, else raise BpfError(what) with the errno it encodes."""
    if ret < 0:
        raise BpfError(what, errno=-ret)
    return ret


def check_ptr(ptr: int | None, what: str) -> int:
    """Return a non-NULL pointer, else raise BpfError(what) with ctypes' saved errno."""
    if not ptr:
        raise BpfError(what, errno=ctypes.get_errno() or errno.ENOENT)
    return ptr


def _decode(raw: bytes | None) -> str:
    return raw.decode("utf-8", "replace") if raw is not None else ""


# --------------------------------------------------------------------------------------------
# The libbpf print callback: va_list formatting, logging, and per-thread capture.
# --------------------------------------------------------------------------------------------

# sizeof(va_list) on the ABIs whose va_list is passed by pointer; va_copy is a plain memcpy there.
_VA_LIST_SIZE = {"x86_64": 24, "amd64": 24, "aarch64": 32, "arm64": 32}.get(
    platform.machine().lower()
)
# Used only if va_list cannot be copied (unknown ABI): longer messages are truncated.
_FALLBACK_FORMAT_BUF = 1 << 20

_capture = threading.local()
_hook_lock = threading.Lock()
_hook_ref: Any = None  # the CFUNCTYPE object: must stay referenced or ctypes frees the thunk


def _vformat(fmt: int, ap: int) -> str:
    """Format a C (fmt, va_list) pair exactly, like vasprintf, with libc's vsnprintf.

    A va_list can be consumed only once, so to learn the length first we size the output with a
    copy (va_copy is a memcpy of the va_list object on x86_64/aarch64), then format for real.
    """
    if _VA_LIST_SIZE is None:
        buf = ctypes.create_string_buffer(_FALLBACK_FORMAT_BUF)
        _libc.vsnprintf(buf, len(buf), fmt, ap)
        return _decode(buf.value)
    ap_copy = ctypes.create_string_buffer(_VA_LIST_SIZE)
    ctypes.memmove(ap_copy, ap, _VA_LIST_SIZE)
    needed = _libc.vsnprintf(None, 0, fmt, ap_copy)
    if needed < 0:
        return "<libbpf message could not be formatted>"
    buf = ctypes.create_string_buffer(needed + 1)
    _libc.vsnprintf(buf, needed + 1, fmt, ap)
    return _decode(buf.value)


def _active_captures() -> list[list[str]]:
    stack = getattr(_capture, "stack", None)
    if stack is None:
        stack = _capture.stack = []
    return stack


def _on_libbpf_print(level: int, fmt: int, ap: int) -> int:
    """libbpf's print callback. It must never raise: ctypes would only print the traceback."""
    try:
        py_level = _PY_LEVEL.get(level, logging.DEBUG)
        captures = _active_captures() if level <= LIBBPF_INFO else []
        if not captures and not libbpf_log.isEnabledFor(py_level):
            return 0
        text = _vformat(fmt, ap)
        for sink in captures:
            sink.append(text)
        libbpf_log.log(py_level, "%s", text.rstrip("\n"))
    except Exception:
        log.exception("libbpf print callback failed")
    return 0


def install_print_hook() -> None:
    """Route libbpf's messages to logging (idempotent, process-wide).

    libbpf's default printer writes WARN/INFO to stderr, where the runtime cannot attach them
    to an exception; ours keeps them. The ctypes thunk is held in a module global for the life
    of the process, since libbpf keeps calling the raw pointer.
    """
    global _hook_ref
    with _hook_lock:
        if _hook_ref is not None:
            return
        _hook_ref = PRINT_FN(_on_libbpf_print)
        lib.libbpf_set_print(_hook_ref)


@contextlib.contextmanager
def capture_log() -> Iterator[list[str]]:
    """Collect libbpf WARN/INFO messages printed by this thread while the block runs.

    Yields the list the messages are appended to; ``"".join(it)`` is the log text. Captures
    nest: an outer capture also sees what an inner one sees.
    """
    install_print_hook()
    sink: list[str] = []
    stack = _active_captures()
    stack.append(sink)
    try:
        yield sink
    finally:
        stack.remove(sink)


# --------------------------------------------------------------------------------------------
# Thin wrappers over libbpf's low-level (fd-based) API.
# --------------------------------------------------------------------------------------------

_ncpus: int | None = None


def libbpf_num_possible_cpus() -> int:
    """Number of possible CPUs (the per-CPU map value multiplier), cached as libbpf does."""
    global _ncpus
    if _ncpus is None:
        _ncpus = check(lib.libbpf_num_possible_cpus(), "libbpf_num_possible_cpus")
    return _ncpus


def bpf_obj_pin(fd: int, path: str) -> None:
    """Pin a map or program fd at ``path`` on a bpffs mount, so it outlives this process."""
    check(lib.bpf_obj_pin(fd, path.encode()), f"cannot pin fd {fd} at {path!r}")


def bpf_obj_get(path: str) -> int:
    """Open a pinned map or program; returns a new fd the caller must ``os.close``."""
    return check(lib.bpf_obj_get(path.encode()), f"cannot open pinned BPF object {path!r}")


def bpf_map_info(fd: int) -> BpfMapInfoHead:
    """Kernel's description of a map fd (type, sizes, name) via BPF_OBJ_GET_INFO_BY_FD."""
    info = BpfMapInfoHead()
    size = c_uint32(ctypes.sizeof(info))
    check(lib.bpf_obj_get_info_by_fd(fd, ctypes.byref(info), ctypes.byref(size)),
          f"cannot get info of map fd {fd}")
    return info


def bpf_map_update_elem(fd: int, key: bytes, value: bytes, flags: int = BPF_ANY) -> None:
    """Insert or replace one element; sizes are the caller's responsibility at this level."""
    check(lib.bpf_map_update_elem(fd, key, value, flags), f"cannot update element of map fd {fd}")


def bpf_map_lookup_elem(fd: int, key: bytes, value_size: int) -> bytes | None:
    """Value bytes for ``key`` (``value_size`` must be the whole buffer, per-CPU included),
    or None if the key is absent."""
    buf = ctypes.create_string_buffer(value_size)
    ret = lib.bpf_map_lookup_elem(fd, key, buf)
    if ret == -errno.ENOENT:
        return None
    check(ret, f"cannot look up element of map fd {fd}")
    return buf.raw


def bpf_map_delete_elem(fd: int, key: bytes) -> bool:
    """Delete ``key``; False if it was absent."""
    ret = lib.bpf_map_delete_elem(fd, key)
    if ret == -errno.ENOENT:
        return False
    check(ret, f"cannot delete element of map fd {fd}")
    return True


def bpf_map_get_next_key(fd: int, key: bytes | None, key_size: int) -> bytes | None:
    """The key after ``key`` (the first key when ``key`` is None), or None at the end."""
    out = ctypes.create_string_buffer(key_size)
    ret = lib.bpf_map_get_next_key(fd, key, out)
    if ret == -errno.ENOENT:
        return None
    check(ret, f"cannot iterate keys of map fd {fd}")
    return out.raw


def bpf_map_update_batch(fd: int, keys: int, values: int, count: int,
                         elem_flags: int = BPF_ANY) -> tuple[int, int]:
    """Raw BPF_MAP_UPDATE_BATCH over ``count`` packed elements at addresses ``keys``/``values``.

    Returns ``(ret, processed)``: libbpf's return (0 or -errno) and how many elements the kernel
    wrote before stopping. It does not raise, because callers decide whether an error means
    "fall back to single updates" or "fail".
    """
    opts = BpfMapBatchOpts(sz=ctypes.sizeof(BpfMapBatchOpts), elem_flags=elem_flags, flags=0)
    n = c_uint32(count)
    ret = lib.bpf_map_update_batch(fd, keys, values, ctypes.byref(n), ctypes.byref(opts))
    return ret, n.value


def bpf_prog_test_run_opts(prog_fd: int, opts: BpfTestRunOpts) -> None:
    """BPF_PROG_TEST_RUN; ``opts.sz`` is filled in here."""
    opts.sz = ctypes.sizeof(BpfTestRunOpts)
    check(lib.bpf_prog_test_run_opts(prog_fd, ctypes.byref(opts)),
          f"BPF_PROG_TEST_RUN failed on program fd {prog_fd}")


def bpf_link_create(prog_fd: int, target_fd: int, attach_type: int) -> int:
    """Attach a program through a BPF link (``BPF_LINK_CREATE``); returns the link fd. The
    attachment lives exactly as long as the link fd (nothing pins it), so a runtime that dies
    leaves no cgroup program behind."""
    return check(lib.bpf_link_create(prog_fd, target_fd, attach_type, None),
                 f"cannot attach program fd {prog_fd} (attach type {attach_type}) to fd {target_fd}")


def bpf_link_update(link_fd: int, prog_fd: int) -> None:
    """Swap the program behind a link in one step (``BPF_LINK_UPDATE``): reload without a gap."""
    check(lib.bpf_link_update(link_fd, prog_fd, None), f"cannot update link fd {link_fd}")
