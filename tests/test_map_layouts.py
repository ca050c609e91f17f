"""contract/maps.py's layouts match the structs the kernel side uses: for each declared layout,
the BTF of a built program.o (bpftool) has a struct of that name with the same size, the same
members in the same order at the same offsets, each of the declared size, and __be* types exactly
where the layout says network byte order."""
from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

import pytest

from dae_py.compiler.pipeline import compile_config
from dae_py.contract.maps import LAYOUTS, Layout

# Every map the templates can emit: domain() needs the domain maps, pname() the sock_pname map.
CONFIG = """\
global:
  lan_interface: [eth0]
routing:
  rules:
    - "pname(curl) -> block"
    - "domain(suffix: example.com) -> block"
    - "dip(192.0.2.0/24) && dport(443) -> direct"
  fallback: direct
"""

pytestmark = pytest.mark.skipif(shutil.which("bpftool") is None or shutil.which("clang") is None,
                                reason="needs clang and bpftool (scripts/setup.sh installs them)")

@pytest.fixture(scope="module")
def btf(tmp_path_factory: pytest.TempPathFactory) -> dict[int, dict[str, Any]]:
    out = tmp_path_factory.mktemp("layouts")
    compile_config(None, out / "build", text=CONFIG, name="layouts.yaml")
    proc = subprocess.run(["bpftool", "btf", "dump", "file", str(out / "build" / "program.o"), "-j"],
                          check=True, capture_output=True, text=True)
    return {t["id"]: t for t in json.loads(proc.stdout)["types"]}

def _resolve(types: dict[int, dict[str, Any]], type_id: int) -> tuple[int, bool]:
    """(size in bytes, whether a __be* typedef was on the way) of a BTF type."""
    big_endian = False
    while True:
        t = types[type_id]
        kind = t["kind"]
        if kind == "TYPEDEF":
            big_endian |= str(t["name"]).startswith("__be")
            type_id = t["type_id"]
        elif kind in ("VOLATILE", "CONST", "RESTRICT"):
            type_id = t["type_id"]
        elif kind == "ARRAY":
            size, be = _resolve(types, t["type_id"])
            return size * t["nr_elems"], big_endian or be
        else:
            return int(t["size"]), big_endian

@pytest.mark.parametrize("layout", list(LAYOUTS.values()), ids=list(LAYOUTS))
def test_declared_layout_matches_the_btf_of_a_built_program(btf: dict[int, dict[str, Any]], layout: Layout) -> None:
    structs = [t for t in btf.values() if t.get("kind") == "STRUCT" and t.get("name") == layout.c_name]
    assert structs, f"struct {layout.c_name} is not in program.o's BTF"
    s = structs[0]
    assert s["size"] == layout.size, f"struct {layout.c_name}: BTF size {s['size']}, declared {layout.size}"
    btf_members = [(m["name"], m["bits_offset"] // 8) for m in s["members"]]
    declared = [(m.name, m.offset) for m in layout.members]
    assert btf_members == declared, f"struct {layout.c_name}: BTF {btf_members}, declared {declared}"
    for m, bm in zip(layout.members, s["members"], strict=True):
        size, big_endian = _resolve(btf, bm["type_id"])
        assert size == m.size, f"{layout.c_name}.{m.name}: BTF size {size}, declared {m.size}"
        if isinstance(m.fmt, Layout):
            assert btf[bm["type_id"]]["name"] == m.fmt.c_name
        elif not m.name.startswith("_") and m.size in (2, 4, 8) and not m.fmt.endswith("s"):  # byte order matters
            order = "__be" if big_endian else "host order"
            assert big_endian == (layout.byte_order == "!"), \
                f"{layout.c_name}.{m.name}: BTF says {order}, layout {layout.byte_order!r}"
    assert layout.struct.size == layout.size


def test_a_layout_packs_what_the_program_reads() -> None:
    """The struct built from a declaration pads where C pads and keeps the member order."""
    flow_value = LAYOUTS["flow_value"]
    raw = flow_value.pack(0x800, 3, 2, 1, 12345)
    assert len(raw) == 16 and raw[:8] == bytes.fromhex("0008000003000201")
    assert flow_value.unpack(raw) == {"decision.mark": 0x800, "decision.rule": 3, "decision.outbound": 2,
                                      "decision.flags": 1, "last_seen_ns": 12345}
    key = LAYOUTS["flow_key"].pack(bytes(16), bytes(16), 80, 443, 6, 4)
    assert key[32:] == bytes.fromhex("0050" "01bb" "06" "04" "0000")

def test_a_declaration_whose_members_overlap_is_refused() -> None:
    from dae_py.contract.maps import Member

    with pytest.raises(ValueError, match="overlaps"):
        Layout("bad", "<", (Member("a", "I", 0), Member("b", "I", 2)), 8)
