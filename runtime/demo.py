"""The README's main job: a live demo in the built-in lab.

Builds the three-namespace lab (client, gateway, upstream) with real peers (danted as the proxy
node, small HTTP servers that report the address they see), compiles a config, starts
`dae-runtime` in the gateway namespace, and shows one direct and one proxied request with the
rule that decided each (`dae-runtime explain` on the same build), then tears everything down.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from dae_py.runtime.build import Build
from dae_py.runtime.explain import explain, make_flow
from dae_py.runtime.packets import parse_endpoint
from dae_py.runtime.relay.flow import rule_label


def _say(text: str = "") -> None:
    print(text, flush=True)


def main() -> int:
    from dae_py.runtime.lab import Lab, cleanup_stale
    from dae_py.runtime.lab.gateway_proc import GatewayProcess, lab_config

    cleanup_stale()
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="dae-demo-") as tmp:
        t = lab.topo
        _say(f"lab: client {t.client_ip4} -> gateway {t.gateway_lan_ip4}/{t.gateway_wan_ip4} "
             f"-> upstream {t.upstream_ip4}")
        lab.start_danted(1080)
        lab.start_http_peer(8080)
        lab.start_http_peer(8443)
        rules = [f"dip({t.upstream_ip4}, '{t.upstream_ip6}') && dport(8443) -> proxy",
                 "l4proto(udp) && dport(443) -> block"]
        cfg = lab_config(t, rules=rules, fallback="direct")
        _say("\nconfig.yaml:\n" + "\n".join("  " + line for line in cfg.splitlines()))
        gw = GatewayProcess(lab, cfg, Path(tmp))
        build = Build.open(gw.build_dir)
        _say(f"\ncompiled: {len(build.manifest.rules)} rules, strategy {build.manifest.strategy}, "
             f"object {gw.build_dir / 'program.o'}")
        with gw:
            _say("dae-runtime is running in the gateway namespace\n")
            for port, _what in ((8080, "direct"), (8443, "proxied")):
                url = f"http://{t.upstream_ip4}:{port}/"
                r = lab.run("client", ["curl", "-s", "-m", "5", url])
                seen = json.loads(r.stdout)["peer"] if r.returncode == 0 and r.stdout else f"(failed: {r.stderr})"
                flow = make_flow("tcp", parse_endpoint(f"{t.client_ip4}:40000"),
                                 parse_endpoint(f"{t.upstream_ip4}:{port}"), None, 0)
                ex = explain(build, flow)
                why = (f"{rule_label(ex.rule.index, 'config.yaml', ex.rule.line)}: {ex.rule.text}"
                       if ex.rule else "routing.fallback")
                _say(f"client GET {url}")
                _say(f"  decided by {why} -> {ex.outbound}")
                via = "the client itself: routed by the kernel" if seen == t.client_ip4 else "the proxy node: relayed"
                _say(f"  the server saw the request come from {seen} ({via})")
        _say("\nruntime log:")
        for line in gw.log_text().splitlines():
            if "relay.tcp: tcp" in line or "gateway ready" in line or "kernel:" in line or "datapath removed" in line:
                _say("  " + line.split(" ", 2)[-1][:400])
    _say("\nlab torn down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
