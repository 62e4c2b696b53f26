"""The `pyconv1x1` command line: run, info, validate, bench and compile a model, one
module per command (cli/run.py ...: its argparse subcommand and its cmd_ function),
what they share in cli/common.py (arguments, messages) and cli/data.py (inputs,
outputs, progress bar).

Exit codes: 0 ok, 1 a validation found a mismatch, 2 bad usage or a model or input file
that cannot be loaded or run (one line on stderr, no traceback), 3 an internal error
(set PYCONV1X1_DEBUG=1 to see its traceback). onnx, onnxruntime and torch load only in
the commands that need them.
"""
import argparse
import os
import sys

from ..errors import Error, one_line
from . import bench, compile, info, run, validate
from .bench import _plot, cmd_bench
from .common import (EXIT_INTERNAL, EXIT_MISMATCH, EXIT_OK, EXIT_USAGE, PROG, CliError,
                     error_line)
from .common import kernels_line as _kernels_line
from .compile import cmd_compile
from .data import Progress
from .info import cmd_info
from .run import cmd_run
from .validate import cmd_validate

__all__ = ["main", "build_parser", "CliError", "Progress", "compare", "PROG", "EXIT_OK",
           "EXIT_MISMATCH", "EXIT_USAGE", "EXIT_INTERNAL"]


def __getattr__(name):  # cli.compare, loaded (with numpy) on first use
    if name == "compare":
        from ..testing.compare import compare
        return compare
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run, inspect, validate and time ONNX models built from 1x1 "
                    "convolutions.",
        epilog="Exit codes: 0 ok, 1 validation mismatch, 2 bad usage or a model or "
               "file that cannot be loaded or run, 3 internal error.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    # the cmd_ functions are read from this module when the parser is built
    for module, func in ((run, cmd_run), (info, cmd_info), (validate, cmd_validate),
                         (bench, cmd_bench), (compile, cmd_compile)):
        module.add_parser(sub).set_defaults(func=func)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: message and exit 2 (argparse)
    try:
        return args.func(args)
    except (Error, CliError) as exc:
        sys.stdout.flush()
        print(f"{PROG}: error: {error_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (e.g. `| head`): stop quietly
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return EXIT_OK
    except Exception as exc:
        if os.environ.get("PYCONV1X1_DEBUG"):
            import traceback
            traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {one_line(exc)} "
              "(set PYCONV1X1_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_INTERNAL
