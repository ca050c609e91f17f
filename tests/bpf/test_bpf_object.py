"""BpfObject: open, load, programs, maps, the verifier-log error path, and BpfError itself."""
from __future__ import annotations

import errno
import logging
from pathlib import Path

import pytest

from dae_py.runtime.bpf import BpfError, BpfObject, MapType
from dae_py.runtime.bpf.errors import ENOTSUPP, LOG_TAIL_CHARS

# ---- no kernel needed --------------------------------------------------------------------


def test_open_missing_file_names_path_and_errno(tmp_path: Path) -> None:
    missing = tmp_path / "nope.o"
    with pytest.raises(BpfError) as info:
        BpfObject(missing)
    err = info.value
    assert err.errno == errno.ENOENT
    assert str(missing) in str(err) and "No such file or directory" in str(err)
    assert err.object_path == str(missing)
    assert "failed to open" in err.log  # libbpf's own message, captured via libbpf_set_print


def test_libbpf_messages_reach_logging(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="dae_py.runtime.bpf.libbpf")
    with pytest.raises(BpfError):
        BpfObject(tmp_path / "absent.o")
    assert any(r.name == "dae_py.runtime.bpf.libbpf" and "absent.o" in r.getMessage()
               for r in caplog.records)


def test_error_text_shows_errno_name_and_log_tail() -> None:
    err = BpfError("cannot frob map 'x'", errno=errno.EPERM, log="a" * LOG_TAIL_CHARS + "TAIL")
    text = str(err)
    assert text.startswith("cannot frob map 'x': Operation not permitted (EPERM)")
    assert text.endswith("TAIL") and "log truncated" in text
    assert "kernel ENOTSUPP" in str(BpfError("batch", errno=ENOTSUPP))


# ---- kernel needed -----------------------------------------------------------------------


@pytest.mark.root
def test_lists_programs_and_maps_before_load(bpf_objs: dict[str, Path]) -> None:
    with BpfObject(bpf_objs["classify"]) as obj:
        assert obj.program_names() == ["classify", "set_tos", "bump_mark"]
        assert obj.map_names() == ["dst_verdict", "prefix_verdict", "config", "pkt_count"]
        assert obj.program_section("classify") == "tc"
        assert not obj.loaded


@pytest.mark.root
def test_load_gives_program_fds_and_map_metadata(bpf_objs: dict[str, Path]) -> None:
    with BpfObject(bpf_objs["classify"]) as obj:
        obj.set_map_max_entries("dst_verdict", 5000)
        obj.load()
        fds = {name: obj.program_fd(name) for name in obj.program_names()}
        assert all(fd > 2 for fd in fds.values()) and len(set(fds.values())) == 3
        meta = {n: (m.type, m.key_size, m.value_size, m.max_entries)
                for n in obj.map_names() for m in [obj.map(n)]}
    assert meta == {
        "dst_verdict": (MapType.HASH, 4, 4, 5000),
        "prefix_verdict": (MapType.LPM_TRIE, 8, 4, 1024),
        "config": (MapType.ARRAY, 4, 4, 4),
        "pkt_count": (MapType.PERCPU_ARRAY, 4, 8, 1),
    }


@pytest.mark.root
def test_misuse_is_reported_clearly(bpf_objs: dict[str, Path]) -> None:
    with BpfObject(bpf_objs["classify"]) as obj:
        with pytest.raises(BpfError, match="call load"):
            obj.map("config")
        with pytest.raises(BpfError, match="call load"):
            obj.program_fd("classify")
        obj.load()
        with pytest.raises(BpfError, match=r"no program 'nope' \(it has: classify, set_tos"):
            obj.program_fd("nope")
        with pytest.raises(BpfError, match="no map 'nope'"):
            obj.map("nope")
        with pytest.raises(BpfError, match="only possible before load") as info:
            obj.set_map_max_entries("config", 8)
        assert info.value.errno == errno.EBUSY


@pytest.mark.root
def test_map_handle_refuses_use_after_close(bpf_objs: dict[str, Path]) -> None:
    obj = BpfObject(bpf_objs["classify"])
    obj.load()
    config = obj.map("config")
    assert config.lookup(b"\0" * 4) == b"\0" * 4
    obj.close()
    obj.close()  # idempotent
    assert obj.closed
    with pytest.raises(BpfError, match="after its BPF object"):
        config.lookup(b"\0" * 4)
    with pytest.raises(BpfError, match="is closed"):
        obj.program_fd("classify")


@pytest.mark.root
def test_verifier_rejection_carries_the_verifier_log(bpf_objs: dict[str, Path]) -> None:
    with BpfObject(bpf_objs["rejected"]) as obj, pytest.raises(BpfError) as info:
        obj.load()
    err = info.value
    assert err.errno == errno.EACCES
    assert err.program == "unchecked_lookup"
    assert err.object_path == str(bpf_objs["rejected"])
    text = str(err)
    assert "program 'unchecked_lookup' was rejected" in text
    assert "Permission denied (EACCES)" in text
    assert "invalid mem access 'map_value_or_null'" in text  # the verifier's own complaint
    assert "BEGIN PROG LOAD LOG" in err.log
