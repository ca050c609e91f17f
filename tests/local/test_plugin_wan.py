"""With `wan_interface` and the fallback through a Shadowsocks node with a SIP003 plugin
(obfs-local -> ss-server with obfs-server), the plugin's own connection to its server is not
routed back into the relay: the plugin runs in the runtime's marking cgroup, so its socket
carries so_mark_from_dae and wan_egress lets it pass (runtime/datapath/sockmark.py). Unmarked,
wan_egress would bounce it into the tproxy listener, the relay would send it through the
fallback, that is through the plugin again, and the local program's flow would never arrive.

A local program's flow (curl on the gateway) arrives from ss-server's address, the relay's
flow lines hold exactly that flow (none to the server's port), and the stop leaves no cgroup."""
from __future__ import annotations

import base64
import json
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from dae_py.runtime.datapath import sockmark
from tests.runtime.helpers import Gw, Lab, flow_lines, gateway, gateway_snapshot, lab_config, runtime_lab, snapshot_diff

pytestmark = pytest.mark.root

SS_PORT = 8390
CIPHER, PASSWORD = "aes-128-gcm", "plugin-wan-pw"


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    missing = [b for b in ("ss-server", "obfs-server", "obfs-local") if not shutil.which(b)]
    if missing:
        pytest.fail(f"not installed: {', '.join(missing)} (scripts/setup.sh installs them)")
    for lab in runtime_lab():
        lab.start_http_peer(8081)
        lab.start_ss_server(SS_PORT, PASSWORD, CIPHER, plugin="obfs-server", plugin_opts="obfs=http")
        yield lab


def test_a_plugins_connection_to_its_server_is_not_routed_back_into_the_relay(lab: Lab, tmp_path: Path) -> None:
    t = lab.topo
    user = base64.urlsafe_b64encode(f"{CIPHER}:{PASSWORD}".encode()).decode().rstrip("=")
    link = (f"ss://{user}@{t.upstream_ip4}:{SS_PORT}/"
            "?plugin=obfs-local%3Bobfs%3Dhttp%3Bobfs-host%3Dwww.example.com#obfs")
    before = gateway_snapshot(lab)
    cfg = lab_config(t, rules=["dport(9) -> block"], fallback="proxy", nodes={"obfs": link},
                     groups={"proxy": "{policy: 'fixed(0)'}"}, extra_global=f"  wan_interface: [{t.gateway_wan_if}]")
    with gateway(lab, cfg, tmp_path / "gw") as gw:
        assert isinstance(gw, Gw)
        made = gw.wait_log(r"cgroup (\S+): sockets of its processes carry mark (0x[0-9a-f]+)", timeout=10)
        cgroup = Path(made.group(1))
        assert cgroup.name.startswith(sockmark.PREFIX) and cgroup.is_dir()
        run = lab.run("gateway", ["curl", "-s", "--max-time", "8", f"http://{t.upstream_ip4}:8081/"])
        assert run.returncode == 0, run.stderr + gw.log_text()[-3000:]
        assert json.loads(run.stdout)["peer"] == t.upstream_ip4  # through ss-server, not from the gateway
        flows = flow_lines(gw.log_text())
        log_text = gw.log_text()
    assert [f.dst for f in flows] == [f"{t.upstream_ip4}:8081"], flows  # nothing to :8390: no loop
    assert not re.search(r"will not carry the relay's mark|did not join cgroup", log_text), log_text
    assert not cgroup.exists()
    diff = snapshot_diff(before, gateway_snapshot(lab))
    assert not diff, diff
