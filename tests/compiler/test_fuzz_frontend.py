"""Property: whatever the config, the front end answers with diagnostics, never a traceback.

Hypothesis drives the mutator of bench/fuzz_inputs.py over real configs (examples/ and the tests'
own), and puts arbitrary text where rules, links, filters, durations and names go. A small budget
(a few seconds) runs in CI; bench/fuzz_compiler.py runs the long campaign (bench/RESULTS.md).
"""
from __future__ import annotations

import random
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.fuzz_inputs import BASE, mutate, run_front_end, seeds  # noqa: E402 - bench/ imports once REPO is on sys.path, above

SEEDS = seeds()
CI_SETTINGS = settings(max_examples=80, deadline=None, database=None, derandomize=True,
                       suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

# Where arbitrary text goes: each slot of BASE a user fills in.
SLOTS = {
    "rule": lambda t: BASE.replace("RULE", t.replace("\\", "\\\\").replace('"', '\\"')),
    "link": lambda t: BASE.replace("RULE", "dport(1) -> proxy").replace("http://192.0.2.11:3128", t.replace("'", "''")),
    "filter": lambda t: BASE.replace("RULE", "dport(1) -> hk").replace("name(keyword: hk)", t.replace("'", "''")),
    "duration": lambda t: BASE.replace("RULE", "dport(1) -> proxy").replace(
        "{lan_interface: [eth0]}", "{lan_interface: [eth0], check_interval: '" + t.replace("'", "''") + "'}"),
    "group name": lambda t: BASE.replace("RULE", "dport(1) -> proxy").replace(
        "  hk:", "  '" + t.replace("'", "''") + "':"),
}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz")


def assert_no_crash(data: str | bytes, workdir: Path) -> None:
    out = run_front_end(data, workdir)
    assert out.kind != "crash", f"input:\n{data!r}\n{out.detail}"


@CI_SETTINGS
@given(index=st.integers(0, len(SEEDS) - 1), rng=st.randoms(use_true_random=False))
def test_mutated_real_configs_get_diagnostics_not_tracebacks(index: int, rng: random.Random, workdir: Path) -> None:
    assert_no_crash(mutate(SEEDS[index], rng), workdir)


@CI_SETTINGS
@given(slot=st.sampled_from(sorted(SLOTS)), text=st.text(max_size=60))
def test_arbitrary_text_in_each_user_slot_gets_diagnostics_not_tracebacks(slot: str, text: str, workdir: Path) -> None:
    assert_no_crash(SLOTS[slot](text), workdir)
