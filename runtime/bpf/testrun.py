"""BPF_PROG_TEST_RUN: run a loaded program on a crafted packet, without attaching it.

The compiler's tests and the benchmarks use it to check a specialised program's verdicts and
to time it (``repeat`` large, the kernel reports the mean ns per run).
"""
from __future__ import annotations

import ctypes
import errno
from dataclasses import dataclass

from . import libbpf as lb
from .errors import BpfError

ETH_HLEN = 14
# Extra room in the default output buffer for programs that grow the packet (encapsulation,
# bpf_skb_change_tail); the kernel fails with ENOSPC when the output does not fit.
DEFAULT_DATA_OUT_HEADROOM = 256


@dataclass(frozen=True)
class TestRunResult:
    """What one BPF_PROG_TEST_RUN returned.

    retval: the program's return code (a TC_ACT_* for tc programs).
    duration_ns: mean run time per repetition as measured by the kernel.
    data_out: the packet after the program ran (possibly rewritten or resized).
    ctx_out: the context (e.g. ``struct __sk_buff``) after the run, if one was requested.
    """

    __test__ = False  # not a pytest test class, despite the name

    retval: int
    duration_ns: int
    data_out: bytes
    ctx_out: bytes = b""


def _explain(exc: BpfError, data: bytes, out_size: int) -> BpfError:
    hint = ""
    if exc.errno == errno.ENOSPC:
        hint = f" (output does not fit data_out_size={out_size}; pass a larger one)"
    elif exc.errno == errno.EINVAL and len(data) < ETH_HLEN:
        hint = f" (input is {len(data)} bytes: tc/XDP programs need a whole Ethernet frame)"
    return BpfError(exc.message + hint, errno=exc.errno)


def prog_test_run(prog_fd: int, data: bytes, repeat: int = 1,
                  data_out_size: int | None = None, ctx: bytes | None = None,
                  ctx_out_size: int | None = None) -> TestRunResult:
    """Run the program ``prog_fd`` ``repeat`` times on ``data`` via ``bpf_prog_test_run_opts``.

    ``data`` must be a whole frame as the hook sees it: for tc and XDP programs an Ethernet
    frame (14-byte header first). ``data_out_size`` is the output buffer's capacity (default
    ``len(data) + 256``; 0 asks for no output). ``ctx`` optionally supplies the program
    context (for tc, a ``struct __sk_buff`` prefix, e.g. to set ``mark``); pass
    ``ctx_out_size`` >= the kernel's context size (192 for ``__sk_buff``) to read it back,
    since the kernel fails with ENOSPC rather than truncate it.

    ``retval`` is the kernel's ``__u32``: a program returning -1 (TC_ACT_UNSPEC) reads
    0xffffffff.
    """
    out_size = len(data) + DEFAULT_DATA_OUT_HEADROOM if data_out_size is None else data_out_size
    data_out = ctypes.create_string_buffer(max(out_size, 1))
    ctx_size = ctx_out_size or 0
    ctx_out = ctypes.create_string_buffer(max(ctx_size, 1))
    opts = lb.BpfTestRunOpts(
        data_in=ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p),
        data_size_in=len(data),
        # NULL when no output is wanted: the kernel writes the whole packet to a non-NULL
        # data_out whose size is 0.
        data_out=ctypes.addressof(data_out) if out_size else None,
        data_size_out=out_size,
        ctx_in=ctypes.cast(ctypes.c_char_p(ctx), ctypes.c_void_p) if ctx else None,
        ctx_size_in=len(ctx) if ctx else 0,
        ctx_out=ctypes.addressof(ctx_out) if ctx_size else None,
        ctx_size_out=ctx_size,
        repeat=repeat,
    )
    try:
        lb.bpf_prog_test_run_opts(prog_fd, opts)
    except BpfError as exc:
        raise _explain(exc, data, out_size) from exc
    return TestRunResult(
        retval=opts.retval,
        duration_ns=opts.duration,
        data_out=data_out.raw[:opts.data_size_out] if out_size else b"",
        ctx_out=ctx_out.raw[:opts.ctx_size_out] if ctx_size else b"",
    )
