"""The decisions of runtime/reload.py that need no kernel: what needs a restart, which maps a new
object takes over, how decisions and counters follow outbound names when ids change, and the
command's exit codes. The lab tests (test_reload.py) run the whole swap for real."""
from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

from dae_py.contract.manifest import GlobalSettings, Manifest, OutboundEntry, RuleEntry
from dae_py.contract.maps import DECISION, FLOW_VALUE, OUTBOUND_STATS, U32
from dae_py.runtime import reload, reload_client
from dae_py.runtime.bpf import BPF_EXIST, BpfError
from dae_py.runtime.datapath.state import default_state_path

PERCPU = 2  # the fake per-CPU maps' CPUs


def manifest(outbounds: list[str], rules: list[str], **settings: Any) -> Manifest:
    obs = tuple(OutboundEntry(i, n, "group" if i >= 2 else n) for i, n in enumerate(["direct", "block", *outbounds]))
    rs = tuple(RuleEntry.from_json({"index": i, "text": f"r{i} -> {o}", "outbound": o, "line": i + 1})
               for i, o in enumerate(rules))
    return Manifest(config_file="c.yaml", config_sha256="", strategy="linear", outbounds=obs, rules=rs,
                    settings=GlobalSettings(**settings))


class FakeMap:
    """A dict with the BpfMap calls reload.py makes."""

    def __init__(self, value_size: int, percpu: bool = False) -> None:
        self.data: dict[bytes, bytes] = {}
        self.value_size = value_size
        self.value_stride = value_size * (PERCPU if percpu else 1)

    def items(self) -> list[tuple[bytes, bytes]]:
        return list(self.data.items())

    def lookup(self, key: bytes) -> bytes | None:
        return self.data.get(key)

    def update(self, key: bytes, value: bytes, flags: int = 0) -> None:
        if flags == BPF_EXIST and key not in self.data:
            raise BpfError("no such entry")
        assert len(value) == self.value_stride
        self.data[key] = value


class FakeObj:
    def __init__(self, defs: dict[str, tuple[int, int, int, int]]) -> None:
        self.defs = defs

    def map_names(self) -> list[str]:
        return list(self.defs)

    def map_definition(self, name: str) -> tuple[int, int, int, int]:
        return self.defs[name]


class FakeBuild:
    def __init__(self, m: Manifest, path: Path) -> None:
        self.manifest, self.path = m, path


def flow(mark: int, rule: int, outbound: int, seen: int = 1) -> bytes:
    return FLOW_VALUE.pack(mark, rule, outbound, 0, seen)


def test_settings_the_datapath_was_built_from_need_a_restart() -> None:
    old = manifest(["proxy"], ["proxy"])
    assert reload.restart_reasons(old, manifest(["proxy", "other"], ["other"])) == []
    reasons = reload.restart_reasons(old, manifest(["proxy"], ["proxy"], tproxy_port=1, lan_interface=("x",)))
    assert any("global.tproxy_port changed (12345 -> 1)" in r for r in reasons)
    assert any("global.lan_interface changed ([] -> [x])" in r for r in reasons)
    warned = reload.start_only_changes(old, manifest(["proxy"], ["proxy"], secret="hunter2", dial_mode="ip"))
    assert any("global.secret changed (hidden)" in w for w in warned) and not any("hunter2" in w for w in warned)
    assert any("global.dial_mode changed domain -> ip" in w for w in warned)



def test_pname_hooks_that_appear_or_disappear_need_a_restart() -> None:
    """A reload swaps the cgroup hooks program for program (and the WAN pair with the LAN
    programs); attaching or detaching hooks is left to a start (exit 3: the role restarts)."""
    from dataclasses import replace

    from dae_py.contract.manifest import PNAME_PROGRAMS, PROGRAMS

    wan = manifest(["proxy"], ["proxy"], wan_interface=("eth1",))
    assert reload.restart_reasons(wan, wan) == []
    plain = manifest(["proxy"], ["proxy"])
    hooked = replace(plain, programs=PROGRAMS + PNAME_PROGRAMS)
    assert any("pname() rules appear" in r for r in reload.restart_reasons(plain, hooked))
    assert any("pname() rules disappear" in r for r in reload.restart_reasons(hooked, plain))
    assert reload.restart_reasons(hooked, hooked) == []

def test_surviving_maps_are_reused_only_with_the_same_layout(tmp_path: Path) -> None:
    m = manifest(["proxy"], ["proxy"])
    m = dataclasses.replace(m, state_maps=("flows", "outbound_stats", "sock_pname"))
    old = FakeObj({"flows": (9, 40, 16, 65536), "outbound_stats": (6, 4, 16, 3), "sock_pname": (9, 8, 24, 4096),
                   "rules": (1, 4, 4, 1)})
    new = FakeObj({"flows": (9, 40, 16, 1024), "outbound_stats": (6, 4, 16, 3), "sock_pname": (9, 8, 32, 4096)})
    plan = reload.plan_maps(old, new, FakeBuild(m, tmp_path), FakeBuild(m, tmp_path))  # type: ignore[arg-type]  # fakes
    assert plan.reuse == ["flows", "outbound_stats"]
    assert any("flows: keeps its 65536 entries (the build asks for 1024)" in w for w in plan.warnings)
    assert len(plan.refusals) == 1 and "sock_pname must survive the reload but its layout changed" in plan.refusals[0]


def test_renumbered_outbounds_start_fresh_counters_carried_by_name(tmp_path: Path) -> None:
    old_m = dataclasses.replace(manifest(["proxy"], ["proxy"]), state_maps=("flows", "outbound_stats"))
    new_m = manifest(["aaa", "proxy"], ["aaa", "proxy"])
    defs = {"flows": (9, 40, 16, 65536), "outbound_stats": (6, 4, 16, 3)}
    plan = reload.plan_maps(FakeObj(defs), FakeObj(defs), FakeBuild(old_m, tmp_path),  # type: ignore[arg-type]  # fakes
                            FakeBuild(new_m, tmp_path))  # type: ignore[arg-type]  # fakes
    assert plan.reuse == ["flows"] and plan.fresh == ["outbound_stats"] and plan.copy_counters
    assert reload.outbound_translation(old_m, new_m) == {0: 0, 1: 1, 2: 3}

    old_stats, new_stats = FakeMap(16, percpu=True), FakeMap(16, percpu=True)
    old_stats.data[U32.pack(2)] = OUTBOUND_STATS.pack(5, 500) + OUTBOUND_STATS.pack(7, 700)
    copied = {2: old_stats.data[U32.pack(2)]}
    reload.copy_counters(old_stats, new_stats, {2: 3}, 4)
    old_stats.data[U32.pack(2)] = OUTBOUND_STATS.pack(6, 600) + OUTBOUND_STATS.pack(7, 700)  # one more, on CPU 0
    new_stats.data[U32.pack(3)] = OUTBOUND_STATS.pack(5 + 2, 500 + 200) + OUTBOUND_STATS.pack(7, 700)  # the new program
    reload.add_counter_delta(old_stats, new_stats, {2: 3}, copied, 4)
    cpu0 = OUTBOUND_STATS.unpack(new_stats.data[U32.pack(3)])
    cpu1 = OUTBOUND_STATS.unpack(new_stats.data[U32.pack(3)], 16)
    assert (cpu0["packets"], cpu0["bytes"], cpu1["packets"]) == (8, 800, 7)


def test_decisions_move_to_the_new_id_of_their_outbound() -> None:
    old_m = manifest(["proxy"], ["proxy", "direct"])
    new_m = manifest(["aaa", "proxy"], ["aaa", "proxy", "direct"])
    flows = FakeMap(16)
    held = b"h" * 40  # decided by the old program before the swap: proxy was 2
    raced = b"r" * 40  # made during the swap, by either program: rule 0, id 2
    fresh = b"f" * 40  # made by the new program: rule 0 -> aaa, id 2 (must stay)
    direct = b"d" * 40
    flows.data = {held: flow(0, 0, 2, seen=9), raced: flow(0, 0, 2), fresh: flow(0, 0, 2), direct: flow(0, 1, 0)}
    before = {held: flows.data[held][:DECISION.size]}
    new_value_fresh = flows.data[fresh]
    # the raced entry (not in `before`) reads as the new program's when its rule and outbound
    # agree with the new build: rule 0 -> aaa, and aaa is id 2 now
    assert reload.remap_flows(flows, before, old_m, new_m) == 1
    assert DECISION.unpack(flows.data[held])["outbound"] == 3
    assert FLOW_VALUE.unpack(flows.data[held])["last_seen_ns"] == 9  # the rest of the value kept
    assert flows.data[fresh] == new_value_fresh and DECISION.unpack(flows.data[direct])["outbound"] == 0
    new_m2 = manifest(["aaa", "proxy"], ["aaa", "aaa"])
    assert reload.remap_flows(flows, {}, old_m, new_m2) == 0
    old_m3 = manifest(["proxy"], ["proxy"])
    new_m3 = manifest(["aaa", "proxy"], ["proxy"])  # new rule 0 -> proxy is id 3: id 2 can only be the old proxy
    flows.data = {raced: flow(0, 0, 2)}
    assert reload.remap_flows(flows, {}, old_m3, new_m3) == 1
    assert DECISION.unpack(flows.data[raced])["outbound"] == 3


def test_the_command_exits_by_outcome(tmp_path: Path, monkeypatch: Any) -> None:
    outcomes = iter([reload.Outcome(True, "reloaded", "b", 0.012),
                     reload.Outcome(False, "the program does not load: x", "b"),
                     reload.Outcome(False, "global.fwmark changed", "b", needs_restart=True)])

    async def fake_request(state_dir: Path, build: Path | None, timeout: float = 0) -> reload.Outcome:
        return next(outcomes)

    monkeypatch.setattr(reload_client, "request", fake_request)
    out: list[str] = []
    err: list[str] = []
    args = argparse.Namespace(build=None, json=False)
    assert reload_client.main(args, tmp_path / "state.json", out.append, err.append) == 0
    assert out == ["dae-runtime reload: b live in 12.0 ms"]
    assert reload_client.main(args, tmp_path / "state.json", out.append, err.append) == 1
    assert reload_client.main(args, tmp_path / "state.json", out.append, err.append) == 3
    assert err == ["dae-runtime reload: refused: the program does not load: x",
                   "dae-runtime reload: refused: global.fwmark changed"]


def test_requests_travel_over_the_state_directory_socket(tmp_path: Path) -> None:
    """The socket's protocol end to end, with a stand-in for the reload itself."""

    class Stub(reload.Reloader):
        async def reload(self, path: Path | None) -> reload.Outcome:
            return reload.Outcome(path is not None, f"asked for {path}", str(path))

    async def run() -> tuple[reload.Outcome, reload.Outcome, int]:
        r = Stub.__new__(Stub)
        reload.Reloader.__init__(r, None, tmp_path)  # type: ignore[arg-type]  # no gateway behind it
        await r.start()
        mode = reload.socket_path(tmp_path).stat().st_mode & 0o777
        try:
            return (await reload.request(tmp_path, Path("rel/build")), await reload.request(tmp_path, None), mode)
        finally:
            await r.close()

    given, default, mode = asyncio.run(run())
    assert given.ok and given.build == str(Path("rel/build").absolute())
    assert not default.ok and default.message == "asked for None"
    assert mode == 0o600
    assert not reload.socket_path(tmp_path).exists()


def test_garbage_on_the_reload_socket_is_refused_and_the_socket_keeps_serving(tmp_path: Path) -> None:
    """Bytes that are not a request (not JSON, not UTF-8, a non-string build, a line past the
    reader's limit, a client that closes at once) each get 'unreadable reload request' or a
    closed connection, reload nothing, and the next well-formed request is served."""
    asked: list[Path | None] = []

    class Stub(reload.Reloader):
        async def reload(self, path: Path | None) -> reload.Outcome:
            asked.append(path)
            return reload.Outcome(True, "ok", str(path))

    async def send(raw: bytes) -> bytes:
        r, w = await asyncio.open_unix_connection(str(reload.socket_path(tmp_path)))
        try:
            w.write(raw)
            await w.drain()
            w.write_eof()
            return await asyncio.wait_for(r.read(), 5)
        finally:
            w.close()

    async def run() -> tuple[list[bytes], reload.Outcome]:
        r = Stub.__new__(Stub)
        reload.Reloader.__init__(r, None, tmp_path)  # type: ignore[arg-type]  # no gateway behind it
        await r.start()
        try:
            answers = [await send(raw) for raw in (b"{not json\n", b"\xff\xfe\x00\n", b'{"build": 5}\n',
                                                    b'{"build": ["a"]}\n', b"x" * 100_000 + b"\n")]
            answers.append(await send(b""))  # connects and closes: an empty request is "reload as is"
            return answers, await reload.request(tmp_path, Path("b"))
        finally:
            await r.close()

    answers, last = asyncio.run(run())
    for raw in answers[:4]:
        assert json.loads(raw)["message"] == "unreadable reload request", raw[:80]
    # past the limit: answered, or closed if the server's answer met our unread bytes
    assert answers[4] == b"" or json.loads(answers[4])["message"] == "unreadable reload request"
    assert asked == [None, Path("b").absolute()] and last.ok


def test_the_command_finds_the_state_file_where_the_runtime_keeps_it(monkeypatch: Any) -> None:
    for env in ("", "/run/dae-py-x"):
        monkeypatch.setenv("RUNTIME_DIRECTORY", env)
        assert reload_client.default_state_path() == default_state_path()


def test_a_socket_path_too_long_is_a_warning_not_a_failed_start(tmp_path: Path, caplog: Any) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()

    async def run() -> None:
        r = reload.Reloader(None, deep)  # type: ignore[arg-type]  # no gateway behind it
        await r.start()
        await r.close()

    asyncio.run(run())
    assert "no reload socket at" in caplog.text and "SIGHUP still reloads" in caplog.text
