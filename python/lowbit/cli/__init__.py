"""The ``lowbit`` command line: ``lowbit run | chat | serve | pull | list | info | bench | quantize ...``.

Exit status, the same for every command: 0 on success (also when stdout is a pipe that the
reader closed early, as in ``lowbit list | head -1``: lowbit stops at once, quietly); 2 for usage
and input errors (bad flags, unknown model, missing file, bad value), one line on stderr; 130
after Ctrl+C (SIGINT); 1 for anything unexpected, one line and a hint to rerun with ``--debug``,
which shows the traceback instead. Python warnings are one line each: ``lowbit: warning: ...``.

One module per command (``lowbit.cli.<command>``), each owning its parser (``add_parser``)
and its work (``run``), as mlx-lm's CLI dispatches to ``mlx_lm.<command>``; ``cli.common`` holds
what they share.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings
from typing import List, Optional

from lowbit.errors import LowbitError

# modules in the order of `lowbit --help` (list_models: a module named `list` would shadow the builtin here)
COMMANDS = ("run", "chat", "serve", "bench", "pull", "list_models", "info", "quantize", "perplexity", "imatrix", "compare")
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    import importlib
    p = argparse.ArgumentParser(prog="lowbit", description="Run and quantize GGUF models locally.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMANDS:
        importlib.import_module(f"lowbit.cli.{name}").add_parser(sub)
    return p


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lowbit: warning: {message}", file=sys.stderr, flush=True)


def _quiet_closed_stdout() -> None:
    """The reader of stdout went away: point stdout at /dev/null so that the interpreter's
    final flush cannot raise again (no 'Exception ignored ... BrokenPipeError' noise)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


def _is_closed_pipe(e: BaseException) -> bool:
    return isinstance(e, BrokenPipeError) or (isinstance(e, OSError) and e.errno == 32)


def run_command(args: argparse.Namespace) -> int:
    """Runs ``args.func`` and maps what escapes it to the exit status rule (module docstring)."""
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()               # a closed pipe shows here, not in the interpreter's exit
        return status
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("\nlowbit: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as e:
        if _is_closed_pipe(e):
            _quiet_closed_stdout()
            return EXIT_OK
        if args.debug:
            raise
        if isinstance(e, (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
            where = f": {e.filename}" if e.filename and str(e.filename) not in str(e.strerror or "") else ""
            print(f"lowbit: error: {e.strerror or e}{where}", file=sys.stderr)
            return EXIT_USAGE
        print(f"lowbit: error: {e}", file=sys.stderr)
        return EXIT_FAILURE
    except (LowbitError, ValueError, TypeError) as e:
        if args.debug:
            raise
        print(f"lowbit: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except Exception as e:            # a bug or an environment problem: short, with a way to see more
        if args.debug:
            raise
        print(f"lowbit: error: {type(e).__name__}: {e} (run with --debug for the traceback)", file=sys.stderr)
        return EXIT_FAILURE


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv            # accepted anywhere on the line, not only before COMMAND
    try:
        args = parser.parse_args([a for a in argv if a != "--debug"])
    except BrokenPipeError:              # `lowbit --help | head -1`
        _quiet_closed_stdout()
        return EXIT_OK
    args.debug = args.debug or debug
    with warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _one_line_warning
        return run_command(args)


if __name__ == "__main__":
    sys.exit(main())
