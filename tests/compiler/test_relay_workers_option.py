"""`global.relay_workers` (docs/relay-workers.md): checked by the schema, carried to the runtime
in the manifest, and a change is a restart, not a reload."""
from __future__ import annotations

import pytest

from dae_py.compiler.diagnostics import CompileError
from dae_py.compiler.pipeline import compile_config, manifest_for
from dae_py.contract.manifest import Manifest
from dae_py.runtime.reload import start_only_changes


def manifest(workers: str | None) -> Manifest:
    extra = f"  relay_workers: {workers}\n" if workers is not None else ""
    text = f"global:\n  lan_interface: eth0\n{extra}routing:\n  fallback: direct\n"
    checked = compile_config(None, None, text=text, name="config.yaml")
    assert not checked.diags.warnings
    return Manifest.from_json(manifest_for(checked, "linear").to_json())


def test_relay_workers_reaches_the_runtime_through_the_manifest() -> None:
    assert manifest("4").settings.extra["relay_workers"] == 4
    assert manifest("0").settings.extra["relay_workers"] == 0  # one per CPU
    assert "relay_workers" not in manifest(None).settings.extra  # the runtime reads 1: in-process


@pytest.mark.parametrize("value", ["-1", "two", "1.5", "1000"])
def test_a_bad_worker_count_is_an_error_at_it(value: str) -> None:
    with pytest.raises(CompileError) as info:
        manifest(value)
    [error] = info.value.diagnostics.errors
    assert error.pos.line == 3 and "relay_workers" in error.message


def test_changing_relay_workers_takes_a_restart() -> None:
    warned = start_only_changes(manifest("1"), manifest("2"))
    assert warned == ["global.relay_workers changed: it takes effect at the next restart"]
    assert start_only_changes(manifest("2"), manifest("2")) == []
