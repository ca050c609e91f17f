"""`dae-compile`: check a config and write a build (generated C, object, maps, manifest)."""
from __future__ import annotations

import argparse
import logging
import sys
import traceback
from pathlib import Path

from dae_py.contract.version import COMPILER_VERSION

from .dae_format import looks_like_dae, to_yaml
from .diagnostics import CompileError, Diagnostics, SourcePos
from .emit import EmitError
from .load import CONFIG_MAX_BYTES
from .outdir import OutputDirError
from .pipeline import STRATEGIES, compile_config
from .readfile import decode_utf8, read_capped, read_capped_text
from .urls import mask_secrets

EXIT_OK, EXIT_REJECTED, EXIT_INTERNAL = 0, 1, 2
STDIN_NAME = "<stdin>"

EPILOG = f"""\
CONFIG '-' reads the config from standard input (read once; relative paths in it are relative
to the current directory).

exit status:
  {EXIT_OK}  the config is valid (and the build was written)
  {EXIT_REJECTED}  the config was rejected (the errors are printed as FILE:LINE:COL), or it cannot be
     read, or -o names something a build must not replace (nothing is changed)
  {EXIT_INTERNAL}  an internal error (a compiler bug or a missing tool such as clang)
"""

log = logging.getLogger(__name__)


def _read_config(arg: str) -> tuple[str, str]:
    """(name, text) of the config, read once: `-` and /dev/stdin are pipes (one read only)."""
    if arg == "-":
        return STDIN_NAME, decode_utf8(read_capped(sys.stdin.buffer, CONFIG_MAX_BYTES, "config"), "config")
    return str(Path(arg)), read_capped_text(Path(arg), CONFIG_MAX_BYTES, "config")


def _unreadable(name: str, reason: str) -> int:
    diags = Diagnostics()
    diags.error(SourcePos(name, 1, 1), f"cannot read config: {reason}")
    print(diags.render(None), file=sys.stderr)
    return EXIT_REJECTED


def _render(diags: Diagnostics, name: str, source_text: str) -> str:
    """Each diagnostic with its own file's line: a `.dae` config's includes are other files."""
    texts: dict[str, list[str] | None] = {name: source_text.splitlines()}
    out = []
    for d in diags.sorted():
        if d.pos.file not in texts:
            try:
                texts[d.pos.file] = read_capped_text(Path(d.pos.file), CONFIG_MAX_BYTES, "config").splitlines()
            except (OSError, ValueError):
                texts[d.pos.file] = None
        out.append(d.render(texts[d.pos.file]))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="dae-compile", description=__doc__, epilog=EPILOG,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="config.yaml or dae's config.dae, or '-' for standard input")
    ap.add_argument("-o", "--output", type=Path, default=Path("build"),
                    help="build directory (default: build/); must be absent, empty, or a previous build")
    ap.add_argument("--check", action="store_true", help="validate only; write nothing")
    ap.add_argument("--strategy", choices=STRATEGIES, default="auto",
                    help="classifier shape: straight-line compares, bit-vectors, or chosen by rule count")
    ap.add_argument("--to-yaml", action="store_true",
                    help="print a .dae config as this project's YAML (the same build) and exit; writes nothing")
    ap.add_argument("-q", "--quiet", action="store_true", help="do not print warnings")
    ap.add_argument("--version", action="version", version=f"dae-compile {COMPILER_VERSION}")
    args = ap.parse_args(argv)
    try:
        name, source_text = _read_config(args.config)
    except OSError as exc:
        return _unreadable(str(Path(args.config)), exc.strerror or str(exc))
    except ValueError as exc:
        return _unreadable(str(Path(args.config)), str(exc))
    if args.to_yaml:
        return _print_yaml(name, source_text)
    try:
        checked = compile_config(None, None if args.check else args.output, text=source_text, name=name,
                                 strategy=args.strategy)
    except CompileError as exc:
        print(_render(exc.diagnostics, name, source_text), file=sys.stderr)
        n = len(exc.diagnostics.errors)
        print(f"{n} error{'s' if n != 1 else ''} in {name}", file=sys.stderr)
        return EXIT_REJECTED
    except OutputDirError as exc:
        print(f"dae-compile: error: {exc}", file=sys.stderr)
        return EXIT_REJECTED
    except EmitError as exc:
        print(f"dae-compile: internal error: {mask_secrets(str(exc))}", file=sys.stderr)
        return EXIT_INTERNAL
    except Exception as exc:  # a compiler bug: one line (masked), the traceback only at debug level
        log.debug("internal error", exc_info=True)
        where = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
        at = f" at {Path(where.filename).name}:{where.lineno}" if where else ""
        print(f"dae-compile: internal error: {type(exc).__name__}{at}: {mask_secrets(str(exc))[:500]} "
              "(a compiler bug; please report it with the config)", file=sys.stderr)
        return EXIT_INTERNAL
    if checked.diags.warnings and not args.quiet:
        print(_render(checked.diags, name, source_text), file=sys.stderr)
    if args.check:
        print(f"{name}: ok ({len(checked.ir.rules)} rules)")
    else:
        live = len(checked.ir.live_rules())
        print(f"{name}: compiled {live} rules into {args.output}/")
    return EXIT_OK


def _print_yaml(name: str, source_text: str) -> int:
    if not looks_like_dae(source_text, name):
        print(f"dae-compile: error: {name} is not in dae's format (it is read as YAML already)", file=sys.stderr)
        return EXIT_REJECTED
    try:
        text = to_yaml(source_text, name)
    except CompileError as exc:
        print(_render(exc.diagnostics, name, source_text), file=sys.stderr)
        n = len(exc.diagnostics.errors)
        print(f"{n} error{'s' if n != 1 else ''} in {name}", file=sys.stderr)
        return EXIT_REJECTED
    sys.stdout.write(text)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
