"""Loaded by a runtime started with this folder on PYTHONPATH (bench.runtime.idle_flows_rss
--probe): on SIGRTMIN+3 it writes what the process holds, for finding where its memory goes.

DAE_MEMPROBE=PREFIX: each signal writes PREFIX.N.json (modules imported, threads, glibc's
mallinfo2, gc counts, the live objects by type) and, with DAE_MEMPROBE_TRACE=FRAMES set (tracemalloc
started at interpreter start, FRAMES deep), PREFIX.N.tracemalloc (a tracemalloc snapshot, to
compare with `bench.runtime.memprobe_diff`). Nothing of this runs without DAE_MEMPROBE."""
from __future__ import annotations

import os

_PREFIX = os.environ.get("DAE_MEMPROBE")
if _PREFIX:
    import signal

    _TRACE = int(os.environ.get("DAE_MEMPROBE_TRACE") or 0)
    if _TRACE:
        import tracemalloc

        tracemalloc.start(_TRACE)
    _count = [0]

    def _mallinfo() -> dict[str, int]:
        import ctypes

        class MallInfo2(ctypes.Structure):
            _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                       "usmblks", "fsmblks", "uordblks", "fordblks",
                                                       "keepcost")]

        libc = ctypes.CDLL(None)
        libc.mallinfo2.restype = MallInfo2
        mi = libc.mallinfo2()
        return {f[0]: int(getattr(mi, f[0])) for f in MallInfo2._fields_}

    def _dump(signum: int, frame: object) -> None:
        import collections
        import gc
        import json
        import sys
        import threading

        n = _count[0] = _count[0] + 1
        types = collections.Counter(type(o).__name__ for o in gc.get_objects())
        info = {"modules": sorted(sys.modules), "threads": [t.name for t in threading.enumerate()],
                "mallinfo2": _mallinfo(), "gc_count": gc.get_count(), "gc_frozen": gc.get_freeze_count(),
                "objects_by_type": types.most_common(60)}
        if _TRACE:
            import tracemalloc

            tracemalloc.take_snapshot().dump(f"{_PREFIX}.{n}.tracemalloc")
            info["traced"] = tracemalloc.get_traced_memory()
        with open(f"{_PREFIX}.{n}.json", "w") as f:
            json.dump(info, f, indent=1)

    signal.signal(signal.SIGRTMIN + 3, _dump)
