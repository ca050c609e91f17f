"""`dae-runtime`: run a build as a gateway, explain a flow, or clean up after a crash."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from dae_py.runtime import logsetup
from dae_py.runtime.logsetup import LEVELS


def _explain(args: argparse.Namespace) -> int:
    from dae_py.contract.values import parse_mac
    from dae_py.runtime.bpf import BpfError
    from dae_py.runtime.build import Build, BuildError
    from dae_py.runtime.explain import explain, make_flow
    from dae_py.runtime.packets import parse_endpoint

    try:
        build = Build.open(args.build)
        logsetup.apply_manifest_level(build.raw)
        src = parse_endpoint(args.src)
        dst = parse_endpoint(args.dst)
        mac = parse_mac(args.mac) if args.mac else None
        if not 0 <= args.dscp <= 63:
            raise ValueError(f"--dscp {args.dscp} is out of range 0-63")
        flow = make_flow(args.proto, src, dst, mac, args.dscp)
        result = explain(build, flow, domain=args.domain, pname=args.pname)
    except (BuildError, ValueError) as exc:
        print(f"dae-runtime explain: {exc}", file=sys.stderr)
        return 2
    except BpfError as exc:
        print(f"dae-runtime explain: cannot run the program: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result.as_json(), sort_keys=True))
    else:
        print(result.text(build.manifest.config_file))
    return 0




COMMANDS = ("explain", "run", "cleanup", "status", "reload")


def _global_options(parser: argparse.ArgumentParser, top: bool) -> None:
    """Options valid before and after the command: on the top parser and on every command's,
    with no default below the top one, so a value given after the command is not overwritten by
    the top parser's default (and vice versa)."""
    parser.add_argument("--log-level", type=str.lower, choices=list(LEVELS),
                        default=None if top else argparse.SUPPRESS,
                        help="error, warn, info, debug or trace (dae's names); default: the config's "
                             "global.log_level, else info")


def _with_command(argv: list[str]) -> list[str]:
    """`dae-runtime [global options] BUILD ...` means `run BUILD ...`: insert `run` before the
    first word that is not a global option or its value, unless it is a command already."""
    i = 0
    while i < len(argv):
        word = argv[i]
        if word == "--log-level":
            i += 2
        elif word.startswith("-"):
            i += 1
        else:
            if word not in COMMANDS:
                return [*argv[:i], "run", *argv[i:]]
            return argv
    return argv


def main(argv: list[str] | None = None) -> int:
    from dae_py.contract.version import COMPILER_VERSION, MANIFEST_FORMAT

    ap = argparse.ArgumentParser(prog="dae-runtime", description=__doc__)
    _global_options(ap, top=True)
    ap.add_argument("--version", action="version",
                    version=f"dae-runtime {COMPILER_VERSION} (reads builds of manifest format {MANIFEST_FORMAT})")
    sub = ap.add_subparsers(dest="command")

    ex = sub.add_parser("explain", help="run one flow through the compiled program and show the deciding rule")
    ex.add_argument("build", type=Path, help="build directory written by dae-compile")
    ex.add_argument("--proto", choices=["tcp", "udp"], required=True)
    ex.add_argument("--src", required=True, help="IP:PORT or [IPv6]:PORT")
    ex.add_argument("--dst", required=True, help="IP:PORT or [IPv6]:PORT")
    ex.add_argument("--mac", help="source MAC of the LAN client")
    ex.add_argument("--dscp", type=int, default=0)
    ex.add_argument("--domain", help="the name DNS resolved to --dst")
    ex.add_argument("--pname", help="name of the local process sending the flow (WAN side)")
    ex.add_argument("--json", action="store_true", help="one JSON object")

    run = sub.add_parser("run", help="run the gateway (the default when given a build directory)")
    run.add_argument("build", type=Path)
    run.add_argument("--state", type=Path, help="state file recording kernel changes (default: $DAE_STATE, "
                     "else $RUNTIME_DIRECTORY/state.json, else /run/dae-py/state.json)")
    run.add_argument("--cgroup", help="attach the pname() hooks to this cgroup v2 directory rather than the root "
                     "of the cgroup2 mount (pname() then sees only its processes; default: $DAE_CGROUP)")
    cl = sub.add_parser("cleanup", help="undo what a crashed runtime left in the kernel")
    cl.add_argument("--state", type=Path, help="state file of the crashed run (default: as for run)")
    st = sub.add_parser("status", help="what the running gateway does: outbounds, nodes, busiest rules, connections")
    st.add_argument("--state", type=Path, help="the running gateway's state file (default: as for run); its "
                    "directory holds the controller socket")
    st.add_argument("--controller", metavar="ADDR:PORT", help="ask this external_controller instead (the secret "
                    "from $DAE_CONTROLLER_SECRET)")
    st.add_argument("--json", action="store_true", help="the summary as one JSON object")

    rl = sub.add_parser("reload", help="swap the running gateway to a new build, keeping every flow (exit 1 "
                        "with the reason when the build is refused: the old one keeps running)")
    rl.add_argument("build", type=Path, nargs="?", help="the new build directory (default: re-read the one running)")
    rl.add_argument("--state", type=Path, help="the running gateway's state file (default: as for run); its "
                    "directory holds the reload socket")
    rl.add_argument("--json", action="store_true", help="the outcome as one JSON object")

    for parser in (ex, run, cl, st, rl):
        _global_options(parser, top=False)

    args = ap.parse_args(_with_command(list(sys.argv[1:] if argv is None else argv)))
    handler = logging.StreamHandler()
    handler.setFormatter(logsetup.LineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logsetup.configure(handler, args.log_level)
    if args.command == "explain":
        return _explain(args)
    if args.command == "status":
        from dae_py.runtime.controller import status

        return status.main(args)
    if args.command == "reload":
        import os

        from dae_py.runtime import reload_client  # the standard library only: ExecReload waits on it

        return reload_client.main(args, Path(args.state or os.environ.get("DAE_STATE")
                                             or reload_client.default_state_path()))
    if args.command in ("run", "cleanup"):
        from dae_py.runtime import gateway

        return gateway.main(args)
    ap.print_help()
    return 2


if __name__ == "__main__":
    sys.exit(main())
