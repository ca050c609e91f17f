"""libbpf through ctypes: load compiled BPF objects, fill maps, pin, test-run programs.

The offline compiler produces the ``.o``; this package is all the runtime needs to put it in
the kernel. See :mod:`runtime.bpf.libbpf` for the binding and its conventions.
"""
from __future__ import annotations

from .bpfobject import BpfObject, unpin
from .errors import BpfError
from .libbpf import (
    BPF_ANY,
    BPF_EXIST,
    BPF_F_LOCK,
    BPF_NOEXIST,
    bpf_map_delete_elem,
    bpf_map_get_next_key,
    bpf_map_lookup_elem,
    bpf_map_update_elem,
    bpf_obj_get,
    bpf_obj_pin,
    capture_log,
    install_print_hook,
    libbpf_num_possible_cpus,
)
from .maps import BpfMap, MapType
from .testrun import TestRunResult, prog_test_run

__all__ = [
    "BPF_ANY",
    "BPF_EXIST",
    "BPF_F_LOCK",
    "BPF_NOEXIST",
    "BpfError",
    "BpfMap",
    "BpfObject",
    "MapType",
    "TestRunResult",
    "bpf_map_delete_elem",
    "bpf_map_get_next_key",
    "bpf_map_lookup_elem",
    "bpf_map_update_elem",
    "bpf_obj_get",
    "bpf_obj_pin",
    "capture_log",
    "install_print_hook",
    "libbpf_num_possible_cpus",
    "prog_test_run",
    "unpin",
]
