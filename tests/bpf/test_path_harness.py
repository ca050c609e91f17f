"""bench/path_harness.py on a real 1-rule build: the programs `bench.lan_ingress_path` times
take the paths its figures are named after (a miss that classifies and inserts on every run, a
hit that never classifies), hijack()'s socket lookups find the runtime's sockets, and the
checks catch a wrong verdict."""
from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench import configs
from bench.common import Compiled, compile_one
from bench.path_harness import (
    Case,
    Expect,
    PathNetns,
    build_probe,
    build_variant,
    check_path,
    check_repeated,
    clear_map,
    path_netns,
    probe,
    time_rounds,
)
from dae_py.contract.evaluate import Flow, classify
from dae_py.runtime.bpf import BpfObject
from dae_py.runtime.build import load_tables
from dae_py.runtime.packets import FlowSpec, frame
from tests.conftest import have_root_bpf

pytestmark = pytest.mark.root

LAST = configs.PACKETS["last"].flow  # TCP SYN that the config's one rule sends to 'proxy'
FALLBACK = configs.PACKETS["fallback"].flow  # UDP, no rule: fallback 'proxy'
EOPNOTSUPP = 95


@dataclass
class Loaded:
    real: Compiled
    new_key: BpfObject
    same_key: BpfObject
    probe: BpfObject
    new: PathNetns
    est: PathNetns

    def expect(self, f: FlowSpec) -> Expect:
        d = classify(self.real.checked.ir_checked, Flow(l4proto=f.l4proto, src=f.src, sport=f.sport, dst=f.dst,
                                                        dport=f.dport))
        assert self.real.build is not None
        rule = len(self.real.checked.ir.rules) if d.rule is None else d.rule
        return Expect(rule, d.outbound_id, self.real.build.manifest.settings.fwmark)


def _variant(real: Compiled, tmp: Path, kind: str) -> BpfObject:
    assert real.build_dir is not None and real.build is not None
    obj = BpfObject(build_variant(real.build_dir, tmp / kind, kind))
    obj.load()
    load_tables(obj, real.build)
    return obj


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Loaded]:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    tmp = tmp_path_factory.mktemp("path")
    real = compile_one(configs.mixed_config(1), "one.yaml", tmp / "real", "auto")
    assert real.error is None, real.error
    real.load()
    objs = [_variant(real, tmp, "new-key"), _variant(real, tmp, "same-key")]
    try:
        assert real.build is not None
        port = real.build.manifest.settings.tproxy_port
        pr = BpfObject(build_probe(tmp / "probe", port))
        objs.append(pr)
        pr.load()
        with path_netns(f"benchpath-t{os.getpid()}", port, (LAST,)) as (new, est):
            yield Loaded(real, objs[0], objs[1], pr, new, est)
    finally:
        for o in objs:
            o.close()
        real.close()


@pytest.mark.parametrize("flow", [LAST, FALLBACK], ids=["tcp", "udp"])
def test_every_timed_program_gives_the_reference_verdict(loaded: Loaded, flow: FlowSpec) -> None:
    want = loaded.expect(flow)
    assert want.outbound >= 2  # a group: apply() goes on to hijack()
    data = frame(flow)
    real = loaded.real.obj
    assert real is not None
    flows = real.map("flows")
    clear_map(flows)
    fd = real.program_fd("lan_ingress")
    assert check_path(loaded.new, fd, flows, flow, data, want, True) == (None, False)
    assert check_path(loaded.est, fd, flows, flow, data, want, False) == (None, False)
    nk, sk = loaded.new_key, loaded.same_key
    clear_map(nk.map("flows"))
    clear_map(sk.map("flows"))
    for _ in range(2):  # the new-key variant misses again; the same-key one first inserts, then replaces
        assert check_path(loaded.new, nk.program_fd("lan_ingress"), nk.map("flows"), flow, data, want, True)[0] is None
    assert check_path(loaded.new, sk.program_fd("lan_ingress"), sk.map("flows"), flow, data, want, True)[0] is None
    assert check_path(loaded.new, sk.program_fd("lan_ingress"), sk.map("flows"), flow, data, want, "replace")[0] is None


def test_a_wrong_verdict_or_path_is_reported(loaded: Loaded) -> None:
    want = loaded.expect(LAST)
    data = frame(LAST)
    real = loaded.real.obj
    assert real is not None
    fd, flows = real.program_fd("lan_ingress"), real.map("flows")
    clear_map(flows)
    wrong = Expect(want.rule + 1, want.outbound, want.fwmark)
    problem, _ = check_path(loaded.new, fd, flows, LAST, data, wrong, True)
    assert problem is not None and "reference says" in problem
    # The entry is there now: the real program hits, so claiming a miss is caught.
    problem, _ = check_path(loaded.new, fd, flows, LAST, data, want, True)
    assert problem is not None and "not missed" in problem
    problem = check_repeated(loaded.est, real, data, want, 200, True, 0)
    assert problem is not None and "ran 0 times" in problem


def test_every_repetition_of_the_new_flow_variant_classifies_and_inserts(loaded: Loaded) -> None:
    want = loaded.expect(LAST)
    data = frame(LAST)
    clear_map(loaded.new_key.map("flows"))
    clear_map(loaded.same_key.map("flows"))
    assert check_repeated(loaded.new, loaded.new_key, data, want, 500, True, 500) is None
    # The first run inserts, the other 499 replace that entry, and every one classifies.
    assert check_repeated(loaded.new, loaded.same_key, data, want, 500, True, 1) is None
    real = loaded.real.obj
    assert real is not None
    assert check_repeated(loaded.est, real, data, want, 500, False, 0) is None
    clear_map(loaded.new_key.map("flows"))


def test_hijack_lookups_find_the_runtime_sockets_and_sk_assign_is_refused_under_test_run(loaded: Loaded) -> None:
    fd = loaded.probe.program_fd("probe")
    got = probe(loaded.new, fd, frame(LAST))
    assert (got.socket, got.assign_errno) == ("listener", EOPNOTSUPP)
    got = probe(loaded.est, fd, frame(LAST))
    assert (got.socket, got.assign_errno) == ("established", EOPNOTSUPP)
    got = probe(loaded.new, fd, frame(FALLBACK))
    assert (got.socket, got.assign_errno) == ("udp", EOPNOTSUPP)


def test_rounds_time_each_case_once_per_round(loaded: Loaded) -> None:
    real = loaded.real.obj
    assert real is not None
    cleared: list[int] = []

    def before() -> None:
        cleared.append(1)
        clear_map(loaded.new_key.map("flows"))

    cases = [Case("new flow", loaded.new_key.program_fd("lan_ingress"), loaded.new, before),
             Case("established", real.program_fd("lan_ingress"), loaded.est)]
    time_rounds(cases, frame(LAST), repeat=1000, runs=3)
    assert [len(c.samples) for c in cases] == [3, 3]
    assert all(s > 0 for c in cases for s in c.samples)
    assert len(cleared) == 4  # warm-up + 3 rounds
    assert len(loaded.new_key.map("flows")) == 1000  # the last round's runs, each a new entry
