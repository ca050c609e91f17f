"""global.relay_mode (sockmap | splice | copy) reaches the relay's config through the manifest; a
value the schema does not know is an error at it; every build holds sockmap.o (and sockmark.o, the
plugins' mark: tests/proxy/test_plugin_mark.py) beside program.o."""
from __future__ import annotations

from pathlib import Path

import pytest

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.pipeline import compile_config, manifest_for
from dae_py.contract.manifest import Manifest
from dae_py.runtime.relay import RelayConfig
from dae_py.runtime.relay.sockmap import DEFAULT_MODE, with_mode


def _text(mode: str | None) -> str:
    line = f"  relay_mode: {mode}\n" if mode else ""
    return f"global:\n  lan_interface: eth0\n{line}routing:\n  fallback: direct\n"


@pytest.mark.parametrize("mode,splice,sockmap", [("copy", False, False), ("splice", True, False),
                                                 ("sockmap", True, True), (None, True, DEFAULT_MODE == "sockmap")])
def test_relay_mode_reaches_the_relay_config(mode: str | None, splice: bool, sockmap: bool) -> None:
    checked = compile_config(None, None, text=_text(mode), name="config.yaml")
    settings = Manifest.from_json(manifest_for(checked, "linear").to_json()).settings
    config = with_mode(RelayConfig(), str(settings.extra.get("relay_mode", DEFAULT_MODE)), "/build")
    assert (config.splice, config.sockmap, config.sockmap_object) == (splice, sockmap, "/build/sockmap.o")


def test_an_unknown_relay_mode_is_an_error() -> None:
    with pytest.raises(CompileError) as info:
        compile_config(None, None, text=_text("turbo"), name="config.yaml")
    assert any("relay_mode" in d.message or "turbo" in d.message for d in info.value.diagnostics.errors)


def test_a_build_holds_sockmap_o_and_sockmark_o(tmp_path: Path) -> None:
    from dae_py.compiler.cli import main

    config = tmp_path / "config.yaml"
    config.write_text(_text(None))
    assert main([str(config), "-o", str(tmp_path / "b")]) == 0
    assert (tmp_path / "b" / "sockmap.o").stat().st_size > 0
    assert (tmp_path / "b" / "sockmark.o").stat().st_size > 0
    assert main([str(config), "-o", str(tmp_path / "b")]) == 0  # a build may replace a build
