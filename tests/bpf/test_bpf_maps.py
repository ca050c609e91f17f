"""BpfMap on real kernel maps: single-element ops, iteration, per-CPU values, bulk loads."""
from __future__ import annotations

import errno
import logging
import struct
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.runtime.bpf import (
    BPF_EXIST,
    BPF_NOEXIST,
    BpfError,
    BpfObject,
    bpf_map_delete_elem,
    bpf_map_get_next_key,
    bpf_map_lookup_elem,
    bpf_map_update_elem,
    libbpf,
    libbpf_num_possible_cpus,
)
from dae_py.runtime.bpf.errors import ENOTSUPP
from tests.bpf.bpftest_util import ip_key, lpm_key, u32

pytestmark = pytest.mark.root
log = logging.getLogger(__name__)

BULK = 100_000
BULK_BUDGET_S = 1.0  # the runtime's requirement: 100k entries well under a second


@pytest.fixture
def classify(bpf_objs: dict[str, Path]) -> Iterator[BpfObject]:
    with BpfObject(bpf_objs["classify"]) as obj:
        obj.set_map_max_entries("dst_verdict", BULK + 10)
        obj.set_map_max_entries("prefix_verdict", BULK + 10)
        obj.load()
        yield obj


def test_hash_update_lookup_delete(classify: BpfObject) -> None:
    m = classify.map("dst_verdict")
    key = ip_key("10.1.2.3")
    assert m.lookup(key) is None
    m.update(key, u32(7))
    assert m.lookup(key) == u32(7)
    m.update(key, u32(8), BPF_EXIST)
    assert m.lookup(key) == u32(8)
    with pytest.raises(BpfError) as info:
        m.update(key, u32(9), BPF_NOEXIST)
    assert info.value.errno == errno.EEXIST and "'dst_verdict'" in str(info.value)
    assert m.delete(key) is True
    assert m.delete(key) is False
    with pytest.raises(BpfError) as info:
        m.update(key, u32(1), BPF_EXIST)
    assert info.value.errno == errno.ENOENT


def test_wrong_sizes_are_refused_before_the_syscall(classify: BpfObject) -> None:
    m = classify.map("dst_verdict")
    with pytest.raises(BpfError, match="key is 3 bytes, expected 4"):
        m.update(b"abc", u32(1))
    with pytest.raises(BpfError, match="value is 8 bytes, expected 4"):
        m.update(u32(1), b"\0" * 8)
    with pytest.raises(BpfError, match="keys buffer is 4 bytes, expected 8"):
        m.update_batch(u32(1), u32(1) * 2, 2)


def test_keys_and_items_iterate_everything(classify: BpfObject) -> None:
    m = classify.map("dst_verdict")
    wanted = {ip_key(f"10.0.0.{i}"): u32(i) for i in range(1, 51)}
    for k, v in wanted.items():
        m.update(k, v)
    assert set(m.keys()) == set(wanted)
    assert dict(m.items()) == wanted
    assert len(m) == 50


def test_array_map_has_every_index_and_refuses_delete(classify: BpfObject) -> None:
    m = classify.map("config")
    assert list(m.keys()) == [u32(i) for i in range(4)]
    assert m.lookup(u32(3)) == u32(0)
    assert m.lookup(u32(4)) is None  # out of range reads as absent
    m.update(u32(2), u32(42))
    assert m.lookup(u32(2)) == u32(42)
    with pytest.raises(BpfError) as info:
        m.delete(u32(2))
    assert info.value.errno == errno.EINVAL


def test_lpm_trie_exact_keys(classify: BpfObject) -> None:
    m = classify.map("prefix_verdict")
    m.update(lpm_key("10.0.0.0/8"), u32(1))
    m.update(lpm_key("10.1.0.0/16"), u32(2))
    assert m.lookup(lpm_key("10.1.0.0/16")) == u32(2)
    # a lookup key with prefixlen 32 finds the longest matching prefix
    assert m.lookup(lpm_key("10.1.9.9/32")) == u32(2)
    assert m.lookup(lpm_key("10.2.9.9/32")) == u32(1)
    assert m.lookup(lpm_key("11.0.0.1/32")) is None
    assert sorted(m.keys()) == sorted([lpm_key("10.0.0.0/8"), lpm_key("10.1.0.0/16")])


def test_percpu_array_values_are_per_cpu(classify: BpfObject) -> None:
    m = classify.map("pkt_count")
    ncpus = libbpf_num_possible_cpus()
    assert m.percpu and m.value_stride == 8 * ncpus
    assert m.lookup(u32(0)) == b"\0" * 8 * ncpus
    per_cpu = [struct.pack("<Q", 100 + cpu) for cpu in range(ncpus)]
    m.update(u32(0), b"".join(per_cpu))
    assert m.percpu_values(u32(0)) == per_cpu
    with pytest.raises(BpfError, match=f"expected {8 * ncpus}"):
        m.update(u32(0), struct.pack("<Q", 1))


def test_low_level_wrappers(classify: BpfObject) -> None:
    fd = classify.map("dst_verdict").fd
    bpf_map_update_elem(fd, ip_key("1.2.3.4"), u32(5))
    assert bpf_map_lookup_elem(fd, ip_key("1.2.3.4"), 4) == u32(5)
    assert bpf_map_get_next_key(fd, None, 4) == ip_key("1.2.3.4")
    assert bpf_map_get_next_key(fd, ip_key("1.2.3.4"), 4) is None
    assert bpf_map_delete_elem(fd, ip_key("1.2.3.4")) is True
    assert bpf_map_lookup_elem(fd, ip_key("1.2.3.4"), 4) is None


def bulk_hash_entries(count: int) -> tuple[bytes, bytes]:
    keys = struct.pack(f"!{count}I", *range(0x0B000000, 0x0B000000 + count))
    values = struct.pack(f"<{count}I", *(i % 8 for i in range(count)))
    return keys, values


def bulk_lpm_entries(count: int) -> tuple[bytes, bytes]:
    """``count`` distinct /32 prefixes in 11.0.0.0/8."""
    addrs = struct.pack(f"!{count}I", *range(0x0B000000, 0x0B000000 + count))
    keys = b"".join(u32(32) + addrs[i:i + 4] for i in range(0, len(addrs), 4))
    values = struct.pack(f"<{count}I", *(i % 8 for i in range(count)))
    return keys, values


def test_bulk_load_100k_into_hash(classify: BpfObject) -> None:
    m = classify.map("dst_verdict")
    keys, values = bulk_hash_entries(BULK)
    started = time.perf_counter()
    m.update_batch(keys, values, BULK)
    elapsed = time.perf_counter() - started
    log.info("hash: %d entries in %.1f ms", BULK, elapsed * 1e3)
    assert elapsed < BULK_BUDGET_S
    assert len(m) == BULK
    for i in (0, 1, BULK // 2, BULK - 1):
        assert m.lookup(keys[4 * i:4 * i + 4]) == values[4 * i:4 * i + 4]


def test_bulk_load_100k_into_lpm_trie(classify: BpfObject) -> None:
    m = classify.map("prefix_verdict")
    keys, values = bulk_lpm_entries(BULK)
    started = time.perf_counter()
    m.update_batch(bytearray(keys), memoryview(values), BULK)  # any buffer type is accepted
    elapsed = time.perf_counter() - started
    log.info("lpm: %d entries in %.1f ms (batch=%s)", BULK, elapsed * 1e3, m._batch_supported)
    assert elapsed < BULK_BUDGET_S
    for i in (0, BULK - 1):
        assert m.lookup(keys[8 * i:8 * i + 8]) == values[4 * i:4 * i + 4]


def test_batch_into_full_map_reports_progress(classify: BpfObject) -> None:
    m = classify.map("dst_verdict")  # max_entries is BULK + 10
    count = BULK + 20
    keys, values = bulk_hash_entries(count)
    with pytest.raises(BpfError) as info:
        m.update_batch(keys, values, count)
    assert info.value.errno == errno.E2BIG
    assert f"stopped after {BULK + 10} of {count}" in str(info.value)


def test_batch_falls_back_to_single_updates_when_kernel_refuses(
        classify: BpfObject, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kernels answer ENOTSUPP for map types without batch ops; the loop must take over and
    the decision must stick for that map."""
    calls: list[int] = []

    def refuse(fd: int, keys: int, values: int, count: int, flags: int = 0) -> tuple[int, int]:
        calls.append(count)
        return -ENOTSUPP, 0

    monkeypatch.setattr(libbpf, "bpf_map_update_batch", refuse)  # the module maps.py calls it through
    m = classify.map("prefix_verdict")
    keys, values = bulk_lpm_entries(1000)
    m.update_batch(keys, values, 1000)
    m.update_batch(keys[:80], values[:40], 10)
    assert calls == [1000]
    assert len(m) == 1000 and m.lookup(keys[:8]) == values[:4]
