"""A SIP003 plugin's own sockets carry the relay's mark (runtime/datapath/sockmark.py): the runtime
starts it in a cgroup of its own where templates/bpf/sockmark.c marks every socket at creation.
Proven from inside the plugin (a stand-in that reports getsockopt(SO_MARK) of the socket it
connects to its server with) and from outside (Debian's obfs-local: `ss -e` shows the fwmark of
its connection to the server). The cgroup and the link go with the last plugin, also after the
plugin died and was restarted, and `dae-runtime cleanup` removes what a killed runtime left."""
from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.compiler.emit import compile_sockmark
from dae_py.runtime.datapath import sockmark
from dae_py.runtime.datapath.cgroup import CgroupError, cgroup2_mount
from dae_py.runtime.proxy import DialOptions, Node, plugins
from tests.conftest import have_root_bpf

pytestmark = pytest.mark.root

MARK = 0x1e51  # not the default: the mark comes from the config, not from a constant
OPTS = DialOptions(connect_timeout=3, handshake_timeout=3)

# A stand-in plugin: per client, it connects to its server (SS_REMOTE_*) as a plugin does and
# answers with the SO_MARK of that socket and of its listening socket.
STAND_IN = """\
import os, socket
SO_MARK = 36
lst = socket.create_server((os.environ["SS_LOCAL_HOST"], int(os.environ["SS_LOCAL_PORT"])))
while True:
    conn, _ = lst.accept()
    up = socket.create_connection((os.environ["SS_REMOTE_HOST"], int(os.environ["SS_REMOTE_PORT"])))
    marks = (up.getsockopt(socket.SOL_SOCKET, SO_MARK), lst.getsockopt(socket.SOL_SOCKET, SO_MARK))
    up.close()
    conn.sendall(("%d %d\\n" % marks).encode())
    conn.close()
"""


@pytest.fixture(scope="module")
def build(tmp_path_factory: pytest.TempPathFactory) -> Path:
    reason = have_root_bpf()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("sockmark-build")
    compile_sockmark(out)
    return out


@pytest.fixture
def stand_in(tmp_path: Path) -> Path:
    path = tmp_path / "markplugin"
    path.write_text(f"#!{sys.executable}\n{STAND_IN}")
    path.chmod(0o755)
    return path


@pytest.fixture
def server() -> Iterator[tuple[str, int]]:
    """The plugin's server: a loopback listener that accepts and holds connections."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.setblocking(False)
    try:
        yield srv.getsockname()
    finally:
        srv.close()


@pytest.fixture(autouse=True)
def reset_plugins() -> Iterator[None]:
    yield
    plugins.stop_all()
    plugins.mark_sockets(0, None)


def plugin_node(binary: str, server: tuple[str, int], options: str = "") -> Node:
    return Node(name="marked", protocol="ss", host=server[0], port=server[1], password="pw",
                cipher="aes-128-gcm", plugin=binary, plugin_opts=options)


def our_dir() -> Path:
    return cgroup2_mount() / f"{sockmark.PREFIX}{os.getpid()}"


def bpf_links() -> int:
    """Descriptors of BPF links this process holds."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with_target = f"/proc/self/fd/{fd}"
        try:
            count += os.readlink(with_target) == "anon_inode:bpf_link"
        except OSError:
            pass
    return count


async def reported_marks(node: Node) -> tuple[int, int]:
    sock = await plugins.connect(node, OPTS)
    try:
        loop = asyncio.get_running_loop()
        data = b""
        while not data.endswith(b"\n"):
            chunk = await loop.sock_recv(sock, 64)
            assert chunk, "the stand-in closed without answering"
            data += chunk
    finally:
        sock.close()
    up, listener = data.split()
    return int(up), int(listener)


def running_of(node: Node) -> plugins.PluginProcess:
    key = plugins.key_of(node)
    assert key is not None
    return plugins._RUNNING[key]


def test_a_plugins_socket_to_its_server_carries_the_relays_mark(build: Path, stand_in: Path,
                                                               server: tuple[str, int]) -> None:
    links = bpf_links()
    node = plugin_node(str(stand_in), server)

    async def scenario() -> None:
        plugins.mark_sockets(MARK, str(build / sockmark.OBJECT_NAME))
        plugins.acquire(node)
        assert await reported_marks(node) == (MARK, MARK)
        running = running_of(node)
        assert running.proc is not None
        procs = (our_dir() / "cgroup.procs").read_text().split()
        assert str(running.proc.pid) in procs  # the plugin itself, moved before it exec'd
        assert bpf_links() == links + 1
        plugins.release(node)

    asyncio.run(scenario())
    assert not our_dir().exists()
    assert bpf_links() == links


def test_a_restarted_plugin_is_marked_and_the_cgroup_goes_with_the_last_plugin(
        build: Path, stand_in: Path, server: tuple[str, int]) -> None:
    links = bpf_links()
    node = plugin_node(str(stand_in), server)

    async def scenario() -> None:
        plugins.mark_sockets(MARK, str(build / sockmark.OBJECT_NAME))
        plugins.acquire(node)
        assert await reported_marks(node) == (MARK, MARK)
        running = running_of(node)
        assert running.proc is not None
        old = running.proc.pid
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while running.restarts == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert running.restarts == 1 and running.alive and running.proc.pid != old
        assert await reported_marks(node) == (MARK, MARK)
        assert our_dir().is_dir()  # one cgroup all along, while a plugin runs
        assert (our_dir() / "cgroup.procs").read_text().split() == [str(running.proc.pid)]
        plugins.release(node)

    asyncio.run(scenario())
    assert not our_dir().exists()
    assert bpf_links() == links


def test_obfs_locals_connection_to_its_server_carries_the_mark(build: Path) -> None:
    binary = shutil.which("obfs-local")
    if binary is None:
        pytest.fail("obfs-local is not installed (scripts/setup.sh installs simple-obfs)")
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    node = plugin_node("obfs-local", ("127.0.0.1", port), "obfs=http;obfs-host=www.example.com")

    async def scenario() -> str:
        plugins.mark_sockets(MARK, str(build / sockmark.OBJECT_NAME))
        plugins.acquire(node)
        client = await plugins.connect(node, OPTS)
        try:
            await asyncio.get_running_loop().sock_sendall(client, b"x" * 64)  # obfs-local dials now
            srv.settimeout(5)
            accepted, _ = await asyncio.to_thread(srv.accept)
            with accepted:  # open while ss looks: obfs-local's side stays established
                out = subprocess.run(["ss", "-tneH", "state", "established", "dst", f"127.0.0.1:{port}"],
                                     capture_output=True, text=True, check=True).stdout
        finally:
            client.close()
            plugins.release(node)
        return out

    try:
        out = asyncio.run(scenario())
    finally:
        srv.close()
    assert f"fwmark:{MARK:#x}" in out and f"cgroup:/{sockmark.PREFIX}" in out, out


def test_without_sockmark_o_one_warning_and_the_plugin_runs_unmarked(
        stand_in: Path, server: tuple[str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    node = plugin_node(str(stand_in), server)

    async def scenario() -> None:
        plugins.mark_sockets(MARK, str(tmp_path / "no-build" / sockmark.OBJECT_NAME))
        plugins.acquire(node)
        assert await reported_marks(node) == (0, 0)
        running_of(node).restart("was told to")  # a second start warns no more
        assert await reported_marks(node) == (0, 0)
        plugins.release(node)

    with caplog.at_level(logging.WARNING, logger="dae_py.runtime.proxy.plugins"):
        asyncio.run(scenario())
    warnings = [r.getMessage() for r in caplog.records if "carry the relay's mark" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "no sockmark.o" in warnings[0] and "wan_interface" in warnings[0]
    assert not our_dir().exists()


def test_a_cgroup_the_mount_refuses_leaves_nothing_behind(build: Path) -> None:
    links = bpf_links()
    with pytest.raises(CgroupError, match="cannot create cgroup"):
        sockmark.MarkedCgroup.create(build / sockmark.OBJECT_NAME, MARK, parent="/proc")
    assert bpf_links() == links


HOLDER = """\
import asyncio, sys
from dae_py.runtime.proxy import Node, plugins
node = Node(name="orphan", protocol="ss", host="127.0.0.1", port=9, password="pw", cipher="aes-128-gcm",
            plugin=sys.argv[2])
async def main():
    plugins.mark_sockets(0x1e51, sys.argv[1])
    plugins.acquire(node)
    print(plugins._RUNNING[plugins.key_of(node)].proc.pid, flush=True)
    await asyncio.sleep(60)
asyncio.run(main())
"""


def test_cleanup_removes_the_cgroup_of_a_killed_runtime_and_its_orphaned_plugin(
        build: Path, tmp_path: Path) -> None:
    sleeper = tmp_path / "sleeper"
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")
    sleeper.chmod(0o755)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(build / sockmark.OBJECT_NAME), str(sleeper)],
                              stdout=subprocess.PIPE, text=True)
    orphan = 0
    left = cgroup2_mount() / f"{sockmark.PREFIX}{holder.pid}"
    try:
        assert holder.stdout is not None
        orphan = int(holder.stdout.readline())
        deadline = time.monotonic() + 5
        while str(orphan) not in (left / "cgroup.procs").read_text().split():
            assert time.monotonic() < deadline, "the plugin never joined its cgroup"
            time.sleep(0.01)
        holder.kill()  # SIGKILL: no atexit, the plugin (its own session) outlives it
        holder.wait(5)
        assert left.is_dir() and os.path.exists(f"/proc/{orphan}")
        assert left in sockmark.leftovers()
        result = subprocess.run([sys.executable, "-m", "dae_py.runtime.cli", "cleanup", "--state",
                                 str(tmp_path / "state.json")], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert f"cgroup {left}" in result.stdout
        assert not left.exists()
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{orphan}") and "zombie" not in Path(f"/proc/{orphan}/status").read_text():
            assert time.monotonic() < deadline, "the orphaned plugin was not killed"
            time.sleep(0.01)
    finally:
        holder.kill()
        holder.wait(5)
        if orphan:
            try:
                os.kill(orphan, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if left.exists():
            sockmark.remove(left)


def test_the_mark_is_set_in_rodata_before_load_and_only_then(build: Path) -> None:
    from dae_py.runtime.bpf import BpfError, BpfObject

    with BpfObject(build / sockmark.OBJECT_NAME) as obj:
        with pytest.raises(BpfError, match="holds 4 bytes, not 8"):
            obj.set_initial_value(".rodata", bytes(8))  # the layout is sockmark.c's: one __u32
        obj.set_initial_value(".rodata", sockmark.RODATA.pack(MARK))
        obj.load()
        assert obj.program_section(sockmark.PROGRAM) == "cgroup/sock_create"
        with pytest.raises(BpfError, match="before load"):
            obj.set_initial_value(".rodata", sockmark.RODATA.pack(MARK))
