"""Build examples/*.yaml and the benchmark configs with both strategies, to compare two checkouts'
generated C, objects and maps (issue 9: "byte-identical or differ only by the nits").

Run it once with each checkout's interpreter, into two directories, with the same --assets (the
CIDR-set configs name their geoip.dat by absolute path, which lands in the build):

    OLD/.venv/bin/python bench/identity_builds.py /tmp/old --repo OLD --assets /tmp/assets
    .venv/bin/python bench/identity_builds.py /tmp/new --repo . --assets /tmp/assets

then diff the `program.c` files, `cmp` the `maps/` and the objects (with debug info and BTF
removed, `llvm-objcopy --strip-debug -R .BTF -R .BTF.ext`, since `-g` records source lines).
A build that fails prints FAIL with the reason: both checkouts should fail alike.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EVERY_FIELD = [
    "pname(curl, wget) && l4proto(tcp) -> proxy",
    "!pname(firefox) && dport(80) -> direct",
    "mac('02:42:ac:11:00:02', '02:42:ac:11:00:03') -> hk",
    "dscp(46, 8) && sip(10.0.0.0/8, 'fd00::/8') -> direct",
    "sport(1000-2000, 5353) && ipversion(6) -> block",
    "domain(suffix: example.org, keyword: ads) && !dip(10.1.0.0/16) -> proxy",
    "!domain(full: a.example.com) && dport(443) && l4proto(udp) -> hk",
    "dip(203.0.113.0/24) && l4proto(tcp) && dport(8443) -> proxy",
]
ABLATION_KINDS = ["dip", "domain", "dport", "sip", "mac", "dscp", "udp+dport", "ipv6+dport"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--repo", type=Path, default=Path("."), help="the checkout whose examples/ and bench/ to use")
    ap.add_argument("--assets", type=Path, required=True, help="where the CIDR-set configs write their geoip.dat")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(args.repo.resolve()))
    from bench import configs  # the checkout's own generators
    from dae_py.compiler import pipeline

    cfgs: dict[str, tuple[str | None, Path | None]] = {}
    for y in sorted((args.repo / "examples").glob("*.yaml")):
        cfgs[f"example-{y.stem}"] = (None, y)
    for n in (0, 1, 10, 100, 1000):
        cfgs[f"mixed{n}"] = (configs.mixed_config(n, seed=1), None)
    for kind in ABLATION_KINDS:
        cfgs[f"ablate-{kind}"] = (configs.mixed_config(200, 1, [kind]), None)
    cfgs["tiny"] = (configs.tiny_config(), None)
    cfgs["fields"] = (configs.render("every field", EVERY_FIELD), None)
    for n in (10_000, 100_000):
        assets = args.assets.resolve() / f"cidr{n}"
        cfgs[f"cidr{n}"] = (configs.big_cidr_config(assets, n, n_rules=10, seed=1 + n), None)
    for name, (text, path) in cfgs.items():
        for s in ("linear", "bitvector"):
            dst = args.out / f"{name}-{s}"
            try:
                if path is not None:
                    pipeline.compile_config(path, dst, strategy=s)
                else:
                    pipeline.compile_config(None, dst, text=text, name=f"{name}.yaml", strategy=s)
                print("ok", name, s, flush=True)
            except Exception as exc:  # noqa: BLE001 - a failure is a result to compare too
                print("FAIL", name, s, type(exc).__name__, str(exc).splitlines()[0][:100], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
