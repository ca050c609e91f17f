"""The compiled object's tproxy_guard socket filter (docs/hardening.md): a packet reaches the
runtime's listeners only when it carries the fwmark hijack() sets, run through
BPF_PROG_TEST_RUN with the skb mark given in the context."""
from __future__ import annotations

import struct
from pathlib import Path

import pytest

from dae_py.compiler.pipeline import compile_config
from dae_py.runtime.bpf import BpfObject
from dae_py.runtime.bpf.testrun import prog_test_run
from dae_py.runtime.build import Build
from tests.conftest import have_root_bpf

pytestmark = pytest.mark.root

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "config.yaml"
SKB_SIZE = 192  # struct __sk_buff (mark at offset 8)
FRAME = bytes(14 + 20 + 8 + 16)  # the filter looks at nothing but the mark and the length


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Build:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("guard") / "build"
    compile_config(EXAMPLE, out)
    return Build.open(out)


def verdict(obj: BpfObject, mark: int) -> int:
    ctx = bytearray(SKB_SIZE)
    struct.pack_into("<I", ctx, 8, mark)
    return prog_test_run(obj.program_fd("tproxy_guard"), FRAME, ctx=bytes(ctx),
                         ctx_out_size=SKB_SIZE).retval


def test_only_packets_with_the_hijack_mark_pass(build: Build) -> None:
    fwmark = build.manifest.settings.fwmark
    so_mark = build.manifest.settings.so_mark_from_dae or 0x800000
    with BpfObject(build.object_path) as obj:
        obj.load()
        assert obj.program_section("tproxy_guard") == "socket"
        for marked in (fwmark, fwmark | 1):  # as the policy rule fwmark X/X matches
            assert verdict(obj, marked) == len(FRAME) - 14  # kept whole (from the IP header)
        for other in (0, 1, so_mark, fwmark << 1):
            assert verdict(obj, other) == 0, hex(other)  # dropped
