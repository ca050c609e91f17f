"""prog_test_run on the tc classifier: verdicts follow the maps, packets and contexts flow."""
from __future__ import annotations

import ctypes
import errno
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.runtime.bpf import BpfError, BpfObject, TestRunResult, prog_test_run
from dae_py.runtime.bpf.libbpf import BpfTestRunOpts
from tests.bpf.bpftest_util import (
    TC_ACT_OK,
    TC_ACT_REDIRECT,
    TC_ACT_SHOT,
    TC_ACT_STOLEN,
    TC_ACT_UNSPEC_U32,
    ip_key,
    ipv4_frame,
    lpm_key,
    u32,
)

SKB_MARK_OFFSET = 8  # struct __sk_buff { __u32 len, pkt_type, mark; ... }
SKB_CTX_MAX = 256  # >= sizeof(struct __sk_buff) (192 on 6.x)


@pytest.fixture
def classify(bpf_objs: dict[str, Path]) -> Iterator[BpfObject]:
    with BpfObject(bpf_objs["classify"]) as obj:
        obj.load()
        yield obj


def verdict(obj: BpfObject, dst: str, proto: int = socket.IPPROTO_TCP) -> int:
    return prog_test_run(obj.program_fd("classify"), ipv4_frame(dst, proto=proto)).retval


def test_opts_struct_matches_libbpf_1_1_layout() -> None:
    """``sz`` first, 80 bytes; offsets as in /usr/include/bpf/bpf.h of libbpf 1.1."""
    offsets = {name: getattr(BpfTestRunOpts, name).offset for name, *_ in BpfTestRunOpts._fields_}
    assert offsets == {"sz": 0, "data_in": 8, "data_out": 16, "data_size_in": 24,
                       "data_size_out": 28, "ctx_in": 32, "ctx_out": 40, "ctx_size_in": 48,
                       "ctx_size_out": 52, "retval": 56, "repeat": 60, "duration": 64,
                       "flags": 68, "cpu": 72, "batch_size": 76}
    assert ctypes.sizeof(BpfTestRunOpts) == 80
    assert TestRunResult.__test__ is False


@pytest.mark.root
def test_verdict_follows_map_contents(classify: BpfObject) -> None:
    dst = "10.1.2.3"
    assert verdict(classify, dst) == TC_ACT_OK  # empty maps, config[0] == 0
    classify.map("config").update(u32(0), u32(TC_ACT_SHOT))
    assert verdict(classify, dst) == TC_ACT_SHOT  # default from the array
    classify.map("prefix_verdict").update(lpm_key("10.0.0.0/8"), u32(TC_ACT_REDIRECT))
    assert verdict(classify, dst) == TC_ACT_REDIRECT  # LPM beats the default
    assert verdict(classify, "192.168.0.1") == TC_ACT_SHOT  # outside the prefix
    classify.map("dst_verdict").update(ip_key(dst), u32(TC_ACT_STOLEN))
    assert verdict(classify, dst) == TC_ACT_STOLEN  # exact match beats LPM
    classify.map("dst_verdict").delete(ip_key(dst))
    assert verdict(classify, dst) == TC_ACT_REDIRECT
    assert verdict(classify, dst, proto=socket.IPPROTO_UDP) == TC_ACT_UNSPEC_U32  # not TCP


@pytest.mark.root
def test_verdicts_after_bulk_load(bpf_objs: dict[str, Path]) -> None:
    with BpfObject(bpf_objs["classify"]) as obj:
        obj.set_map_max_entries("dst_verdict", 20_000)
        obj.load()
        count = 20_000
        keys = struct.pack(f"!{count}I", *range(0x0A000000, 0x0A000000 + count))
        obj.map("dst_verdict").update_batch(keys, u32(TC_ACT_SHOT) * count, count)
        assert verdict(obj, "10.0.78.31") == TC_ACT_SHOT  # 0x0A004E1F < 0x0A000000 + 20000
        assert verdict(obj, "10.0.78.32") == TC_ACT_OK  # first address past the loaded range


@pytest.mark.root
def test_repeat_counts_in_percpu_map_and_reports_duration(classify: BpfObject) -> None:
    stats = classify.map("pkt_count")
    before = sum(struct.unpack("<Q", v)[0] for v in stats.percpu_values(u32(0)) or [])
    result = prog_test_run(classify.program_fd("classify"), ipv4_frame("10.0.0.1"), repeat=1000)
    after = sum(struct.unpack("<Q", v)[0] for v in stats.percpu_values(u32(0)) or [])
    assert after - before == 1000
    assert result.duration_ns > 0


@pytest.mark.root
def test_data_out_holds_the_rewritten_packet(classify: BpfObject) -> None:
    frame = ipv4_frame("10.0.0.1")
    fd = classify.program_fd("set_tos")
    result = prog_test_run(fd, frame)
    assert result.retval == TC_ACT_OK
    assert len(result.data_out) == len(frame)
    assert result.data_out[15] == 0x10 and frame[15] == 0
    assert result.data_out[:15] == frame[:15] and result.data_out[16:] == frame[16:]
    assert prog_test_run(fd, frame, data_out_size=0).data_out == b""


@pytest.mark.root
def test_context_in_and_out(classify: BpfObject) -> None:
    ctx = struct.pack("<III", 0, 0, 41)  # only mark set: the kernel wants len/pkt_type zero
    result = prog_test_run(classify.program_fd("bump_mark"), ipv4_frame("10.0.0.1"), ctx=ctx,
                           ctx_out_size=SKB_CTX_MAX)
    assert result.retval == 41
    assert struct.unpack_from("<I", result.ctx_out, SKB_MARK_OFFSET)[0] == 42


@pytest.mark.root
def test_bad_inputs_get_explained(classify: BpfObject) -> None:
    fd = classify.program_fd("classify")
    with pytest.raises(BpfError, match="whole Ethernet frame") as info:
        prog_test_run(fd, b"\x00" * 10)
    assert info.value.errno == errno.EINVAL
    with pytest.raises(BpfError, match="data_out_size=16") as info:
        prog_test_run(fd, ipv4_frame("10.0.0.1"), data_out_size=16)
    assert info.value.errno == errno.ENOSPC
