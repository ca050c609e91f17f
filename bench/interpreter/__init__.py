"""The dae-style rule interpreter used as the benchmarks' baseline (see interp.bpf.c).

    interp = Interpreter.open()          # compiles interp.bpf.c if needed, loads it
    interp.fill(encode(checked.ir))      # rule entries + LPM tries
    fd = interp.program_fd("interp_classify")
"""
from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import struct
import subprocess
from pathlib import Path

from dae_py.runtime.bpf import BpfError, BpfMap, BpfObject
from dae_py.runtime.packets import domain_key

from .encoder import DOMAIN_WORDS, LPM_KEY_SIZE, LPM_VALUE, Encoded, encode

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "interp.bpf.c"
BUILD_DIR = HERE / "build"
OBJECT = BUILD_DIR / "interp.bpf.o"
CLANG = ["clang", "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", "-I/usr/include/x86_64-linux-gnu"]

BPF_MAP_TYPE_LPM_TRIE = 11
BPF_F_NO_PREALLOC = 1

__all__ = ["Interpreter", "build_object", "encode", "Encoded"]


class _MapCreateOpts(ctypes.Structure):
    """struct bpf_map_create_opts of libbpf 1.1."""

    _fields_ = [
        ("sz", ctypes.c_size_t),
        ("btf_fd", ctypes.c_uint32),
        ("btf_key_type_id", ctypes.c_uint32),
        ("btf_value_type_id", ctypes.c_uint32),
        ("btf_vmlinux_value_type_id", ctypes.c_uint32),
        ("inner_map_fd", ctypes.c_uint32),
        ("map_flags", ctypes.c_uint32),
        ("map_extra", ctypes.c_uint64),
        ("numa_node", ctypes.c_uint32),
        ("map_ifindex", ctypes.c_uint32),
    ]


_libbpf = ctypes.CDLL("libbpf.so.1", use_errno=True)
_map_create = _libbpf.bpf_map_create
_map_create.restype = ctypes.c_int
_map_create.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_uint32,
                        ctypes.POINTER(_MapCreateOpts)]


def build_object(force: bool = False) -> Path:
    """Compile interp.bpf.c into bench/interpreter/build/ when the object is missing or stale."""
    if force or not OBJECT.exists() or OBJECT.stat().st_mtime < SOURCE.stat().st_mtime:
        BUILD_DIR.mkdir(exist_ok=True)
        subprocess.run([*CLANG, "-c", str(SOURCE), "-o", str(OBJECT)], check=True)
    return OBJECT


def _new_lpm(name: str, entries: int) -> BpfMap:
    opts = _MapCreateOpts(sz=ctypes.sizeof(_MapCreateOpts), map_flags=BPF_F_NO_PREALLOC)
    fd = _map_create(BPF_MAP_TYPE_LPM_TRIE, name.encode(), LPM_KEY_SIZE, 4, max(entries, 1), ctypes.byref(opts))
    if fd < 0:
        e = -fd if fd != -1 else ctypes.get_errno()
        raise BpfError(f"cannot create LPM trie {name}: {os.strerror(e)}", errno=e or errno.EINVAL)
    return BpfMap(fd, name, BPF_MAP_TYPE_LPM_TRIE, LPM_KEY_SIZE, 4, max(entries, 1), owns_fd=True)


class Interpreter:
    """A loaded interpreter object with its rule table filled."""

    def __init__(self, obj: BpfObject):
        self.obj = obj
        self.encoded: Encoded | None = None

    @classmethod
    def open(cls) -> Interpreter:
        obj = BpfObject(build_object())
        try:
            obj.load()
        except BaseException:
            obj.close()
            raise
        return cls(obj)

    def close(self) -> None:
        self.obj.close()

    def __enter__(self) -> Interpreter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def fill(self, enc: Encoded) -> None:
        """Write the rule entries and create/fill one LPM trie per CIDR set (once per object)."""
        if self.encoded is not None:
            raise RuntimeError("an Interpreter is filled once; open a new one for other rules")
        outer = self.obj.map("lpm_sets")
        for slot, set_keys in enumerate(enc.lpm_sets):
            trie = _new_lpm(f"interp_lpm{slot}", len(set_keys))
            try:
                if set_keys:
                    trie.update_batch(b"".join(set_keys), LPM_VALUE * len(set_keys), len(set_keys))
                outer.update(struct.pack("<I", slot), struct.pack("<I", trie.fd))
            finally:
                trie.close()  # the outer map keeps the trie alive
        keys, values, n = enc.routing_payload()
        self.obj.map("routing").update_batch(keys, values, n)
        self.encoded = enc

    def program_fd(self, name: str = "interp_classify") -> int:
        return self.obj.program_fd(name)

    def set_domain_bits(self, dst: ipaddress.IPv4Address | ipaddress.IPv6Address, bits: int) -> None:
        value = b"".join(struct.pack("<Q", (bits >> (64 * i)) & (2**64 - 1)) for i in range(DOMAIN_WORDS))
        self.obj.map("interp_domain").update(domain_key(dst), value)

    def last_decision(self) -> tuple[int, int, int, bool]:
        """(rule, outbound, mark, must) written by interp_record."""
        raw = self.obj.map("last_decision").lookup(struct.pack("<I", 0))
        assert raw is not None
        mark, rule, outbound, flags = struct.unpack("<IHBB", raw)
        return rule, outbound, mark, bool(flags & 1)
