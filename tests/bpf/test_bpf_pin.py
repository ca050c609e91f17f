"""Pinning on bpffs: what the runtime uses to find and clean up after a crashed instance."""
from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.runtime.bpf import (
    BpfError,
    BpfMap,
    BpfObject,
    MapType,
    bpf_obj_get,
    bpf_obj_pin,
    prog_test_run,
    unpin,
)
from tests.bpf.bpftest_util import TC_ACT_SHOT, ipv4_frame, u32

pytestmark = pytest.mark.root


@pytest.fixture
def classify(bpf_objs: dict[str, Path]) -> Iterator[BpfObject]:
    with BpfObject(bpf_objs["classify"]) as obj:
        obj.load()
        yield obj


def test_pinned_map_is_shared_and_outlives_the_object(classify: BpfObject,
                                                       bpffs_dir: Path) -> None:
    pin = str(bpffs_dir / "config")
    classify.pin_map("config", pin)
    assert os.path.exists(pin)
    with BpfMap.open_pinned(pin) as pinned:
        assert (pinned.name, pinned.type, pinned.key_size, pinned.value_size,
                pinned.max_entries) == ("config", MapType.ARRAY, 4, 4, 4)
        classify.map("config").update(u32(1), u32(11))
        assert pinned.lookup(u32(1)) == u32(11)  # same kernel map
        pinned.update(u32(2), u32(22))
        assert classify.map("config").lookup(u32(2)) == u32(22)
        classify.close()
        assert pinned.lookup(u32(1)) == u32(11)  # the pin keeps the map alive
    with pytest.raises(BpfError, match="after its BPF object/fd was closed"):
        pinned.lookup(u32(1))


def test_unpin_map(classify: BpfObject, bpffs_dir: Path) -> None:
    pin = str(bpffs_dir / "dst")
    classify.pin_map("dst_verdict", pin)
    classify.unpin_map("dst_verdict")
    assert not os.path.exists(pin)
    classify.pin_map("dst_verdict", pin)
    classify.unpin_map("dst_verdict", pin)
    assert not os.path.exists(pin)


def test_pinned_program_runs_from_its_pin(classify: BpfObject, bpffs_dir: Path) -> None:
    pin = str(bpffs_dir / "classify")
    classify.pin_program("classify", pin)
    classify.map("config").update(u32(0), u32(TC_ACT_SHOT))
    fd = bpf_obj_get(pin)
    try:
        assert fd != classify.program_fd("classify")
        assert prog_test_run(fd, ipv4_frame("10.9.9.9")).retval == TC_ACT_SHOT
    finally:
        os.close(fd)
    unpin(pin)
    assert not os.path.exists(pin)


def test_pin_errors_name_the_path(classify: BpfObject, bpffs_dir: Path) -> None:
    pin = str(bpffs_dir / "twice")
    bpf_obj_pin(classify.map("config").fd, pin)
    with pytest.raises(BpfError) as info:
        bpf_obj_pin(classify.map("config").fd, pin)
    assert info.value.errno == errno.EEXIST and pin in str(info.value)
    with pytest.raises(BpfError, match="cannot pin program 'classify'") as info:
        classify.pin_program("classify", pin)
    assert info.value.errno == errno.EEXIST
    with pytest.raises(BpfError) as info:
        bpf_obj_get(str(bpffs_dir / "absent"))
    assert info.value.errno == errno.ENOENT
    with pytest.raises(BpfError, match="cannot unpin") as info:
        unpin(str(bpffs_dir / "absent"))
    assert info.value.errno == errno.ENOENT


def test_open_pinned_refuses_a_program(classify: BpfObject, bpffs_dir: Path) -> None:
    pin = str(bpffs_dir / "prog")
    classify.pin_program("set_tos", pin)
    with pytest.raises(BpfError, match="is not a BPF map"):
        BpfMap.open_pinned(pin)
