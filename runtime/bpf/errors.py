"""The one exception type of the BPF layer.

Every libbpf failure (negative errno return, NULL pointer with errno set) and every misuse the
layer detects itself (wrong key size, object not loaded) becomes a :class:`BpfError`, so the
runtime has a single thing to catch and a message that names the object, program or map and the
errno text, plus whatever libbpf printed meanwhile (which, for a rejected program, is the
verifier log).
"""
from __future__ import annotations

import errno as errno_mod
import os

# Kernel-internal errno values that leak to user space through bpf(2) and that libc does not
# name. ENOTSUPP is what the kernel returns for a map type without batch operations.
ENOTSUPP = 524
_KERNEL_ERRNO_TEXT = {
    ENOTSUPP: "Operation not supported (kernel ENOTSUPP)",
    525: "Buffer too small (kernel ETOOSMALL)",
}

# str(BpfError) shows at most this much of the libbpf log: the verifier states its complaint
# at the end of its log, so the tail is what matters; the full text stays in `.log`.
LOG_TAIL_CHARS = 16 * 1024


def errno_text(err: int) -> str:
    """`strerror` text plus the symbolic name, e.g. ``Permission denied (EACCES)``."""
    if err in _KERNEL_ERRNO_TEXT:
        return _KERNEL_ERRNO_TEXT[err]
    name = errno_mod.errorcode.get(err, f"errno {err}")
    return f"{os.strerror(err)} ({name})"


class BpfError(Exception):
    """A BPF operation failed.

    Attributes:
        message: what was being done, naming the object/program/map involved.
        errno: the positive errno, or None when the failure was detected in Python.
        log: libbpf's output captured while the operation ran (the verifier log on a load
            failure); empty when libbpf printed nothing.
        object_path: the BPF object file involved, if any.
        program: the program libbpf reported as failing, if any.
    """

    def __init__(
        self,
        message: str,
        *,
        errno: int | None = None,
        log: str = "",
        object_path: str | None = None,
        program: str | None = None,
    ) -> None:
        self.message = message
        self.errno = errno
        self.log = log
        self.object_path = object_path
        self.program = program
        super().__init__(self._render())

    def _render(self) -> str:
        text = self.message
        if self.errno is not None:
            text = f"{text}: {errno_text(self.errno)}"
        if self.log:
            tail = self.log[-LOG_TAIL_CHARS:]
            cut = "[... log truncated ...]\n" if len(tail) < len(self.log) else ""
            text = f"{text}\n--- libbpf log ---\n{cut}{tail.rstrip()}"
        return text
