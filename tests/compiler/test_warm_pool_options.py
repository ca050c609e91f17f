"""`global.warm_pool` and `global.warm_pool_idle_timeout` (this project's options, not dae's):
checked by the schema and the compiler, carried by the manifest to the relay's config, with
the defaults when absent (docs/warm-pool.md)."""
from __future__ import annotations

import pytest

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.pipeline import compile_config, manifest_for
from dae_py.contract.manifest import Manifest
from dae_py.runtime.relay import RelayConfig
from dae_py.runtime.sniff.dialmode import relay_settings


def _relay_config(global_lines: str) -> RelayConfig:
    text = f"global:\n  lan_interface: eth0\n{global_lines}routing:\n  fallback: direct\n"
    checked = compile_config(None, None, text=text, name="config.yaml")
    manifest = Manifest.from_json(manifest_for(checked, "linear").to_json())
    return RelayConfig(**relay_settings(manifest.settings))


def test_the_warm_pool_options_reach_the_relay_config() -> None:
    config = _relay_config("  warm_pool: 4\n  warm_pool_idle_timeout: 3s\n")
    assert (config.warm_pool, config.warm_pool_idle_timeout) == (4, 3.0)
    off = _relay_config("  warm_pool: 0\n")
    assert off.warm_pool == 0


def test_the_defaults_apply_when_absent() -> None:
    config = _relay_config("")
    assert (config.warm_pool, config.warm_pool_idle_timeout) == (4, 10.0)


@pytest.mark.parametrize("lines,word", [
    ("  warm_pool: 17\n", "warm_pool"),
    ("  warm_pool: -1\n", "warm_pool"),
    ("  warm_pool: many\n", "warm_pool"),
    ("  warm_pool_idle_timeout: 100ms\n", "warm_pool_idle_timeout"),
    ("  warm_pool_idle_timeout: 1h\n", "warm_pool_idle_timeout"),
])
def test_out_of_range_values_are_errors(lines: str, word: str) -> None:
    text = f"global:\n  lan_interface: eth0\n{lines}routing:\n  fallback: direct\n"
    with pytest.raises(CompileError) as info:
        compile_config(None, None, text=text, name="config.yaml")
    errors = info.value.diagnostics.errors
    assert [d.pos.line for d in errors] == [3] and word in errors[0].message
