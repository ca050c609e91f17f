"""`dae-compile`: check a config and write a build (generated C, object, maps, manifest)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .diagnostics import CompileError
from .emit import EmitError
from .pipeline import STRATEGIES, compile_config
from .version import COMPILER_VERSION


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dae-compile", description=__doc__)
    ap.add_argument("config", type=Path, help="config.yaml")
    ap.add_argument("-o", "--output", type=Path, default=Path("build"), help="build directory (default: build/)")
    ap.add_argument("--check", action="store_true", help="validate only; write nothing")
    ap.add_argument("--strategy", choices=STRATEGIES, default="auto",
                    help="classifier shape: straight-line compares, bit-vectors, or chosen by rule count")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not print warnings")
    ap.add_argument("--version", action="version", version=f"dae-compile {COMPILER_VERSION}")
    args = ap.parse_args(argv)
    source_text: str | None
    try:
        source_text = args.config.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        source_text = None
    try:
        checked = compile_config(args.config, None if args.check else args.output, strategy=args.strategy)
    except CompileError as exc:
        print(exc.diagnostics.render(source_text), file=sys.stderr)
        n = len(exc.diagnostics.errors)
        print(f"{n} error{'s' if n != 1 else ''} in {args.config}", file=sys.stderr)
        return 1
    except EmitError as exc:
        print(f"dae-compile: internal error: {exc}", file=sys.stderr)
        return 2
    if checked.diags.warnings and not args.quiet:
        print(checked.diags.render(source_text), file=sys.stderr)
    if args.check:
        print(f"{args.config}: ok ({len(checked.ir.rules)} rules)")
    else:
        live = len(checked.ir.live_rules())
        print(f"{args.config}: compiled {live} rules into {args.output}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
