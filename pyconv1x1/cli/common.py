"""What every command shares: exit codes and the one-line error, argparse types and
arguments (--threads, --input/--seed/--shape/--dim), opening a session, and the
text of reports (shapes, tables, counts, the kernels line)."""
import argparse

from .._variants import VARIANTS as _VARIANTS
from ..errors import Error, UnsupportedError, one_line

PROG = "pyconv1x1"
EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

VARIANT_DESCRIPTIONS = {name: row["description"] for name, row in _VARIANTS.items()}


class CliError(Exception):
    """Bad arguments or input files: reported on one line, exit 2."""


def error_line(exc):
    msg = one_line(exc) or type(exc).__name__
    if isinstance(exc, UnsupportedError) and len(str(exc).splitlines()) > 2:
        msg += "; `pyconv1x1 info MODEL` lists them all"
    return msg


# --------------------------------------------------------------------------------------
# argparse types and arguments
# --------------------------------------------------------------------------------------
def _number(convert, minimum, strict, what):
    """An argparse type: `convert(text)` that must be >= (or >, if strict) minimum."""
    def parse(text):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not (value > minimum if strict else value >= minimum) or value == float("inf"):
            raise argparse.ArgumentTypeError(f"expected {what}, got {text}")
        return value
    return parse


positive_int = _number(int, 1, False, "an integer >= 1")
non_negative_int = _number(int, 0, False, "an integer >= 0")
non_negative_float = _number(float, 0.0, False, "a finite number >= 0")
positive_float = _number(float, 0.0, True, "a finite number > 0")


def _named_value(text, parse, expected):
    """NAME=VALUE -> (NAME, parse(VALUE)); parse raises ValueError on a bad value."""
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        return name, parse(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _sizes(text):
    shape = tuple(int(d) for d in text.lower().split("x"))
    if any(d < 0 for d in shape):
        raise ValueError
    return shape


def _size(text):
    size = int(text)
    if size < 0:
        raise ValueError
    return size


def shape_arg(text):
    """argparse type of --shape NAME=1x64x224x224."""
    return _named_value(text, _sizes, "INPUT=AxBx... with sizes >= 0 (e.g. "
                                      "input=1x64x224x224)")


def dim_arg(text):
    """argparse type of --dim NAME=N."""
    return _named_value(text, _size, "DIM=N with a named dim of the model and N >= 0 "
                                     "(e.g. batch=8)")


def add_command(sub, name, help, description, **kwargs):
    """The subcommand `name` (its description: the command module's docstring) and its
    MODEL argument."""
    p = sub.add_parser(name, help=help, description=description, **kwargs)
    p.add_argument("model", metavar="MODEL",
                   help="path to an .onnx model or a compiled .pc1 plan")
    return p


def add_threads_arg(p):
    p.add_argument("--threads", type=positive_int, default=None, metavar="N",
                   help="kernel threads (default: OMP_NUM_THREADS or every core)")


def add_input_args(p, many=False):
    p.add_argument("--input", metavar="FILE" if not many else "FILE|FOLDER",
                   help="x.npy (single-input models) or x.npz keyed by input name"
                        + ("; a folder: one run per .npy / .npz file in it"
                           if many else "")
                        + "; default: random normal float32 of the declared shape "
                          "(see --shape, --dim)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random input (default 0)")
    p.add_argument("--shape", type=shape_arg, action="append", metavar="INPUT=AxBx..",
                   help="shape of a random input, e.g. input=1x64x224x224 "
                        "(repeatable)")
    p.add_argument("--dim", type=dim_arg, action="append", metavar="NAME=N",
                   help="size of a named dim of random inputs, e.g. batch=8 "
                        "(repeatable); named dims given neither way are 1, and the "
                        "output says which")


# --------------------------------------------------------------------------------------
# sessions and the kernels line
# --------------------------------------------------------------------------------------
def open_session(model, threads=None):
    from ..session import InferenceSession
    return InferenceSession(model, threads=threads)


def _threaded(session):
    from .. import _backend
    try:
        return bool(getattr(_backend.kernels(session.kernel_variant), "THREADED", False))
    except Error:
        return False


def _unbuilt_variants():
    """Kernel variants this CPU would run that the installation lacks (the compiler
    rejected their flags at build time, where pip hides the warning)."""
    from .. import _backend
    flags = _backend._linux_cpu_flags()
    if flags is None:
        return []
    built = _backend.built_variants()
    return [name for name in _backend._ORDER if name not in built
            and all(f in flags for f in _backend._REQUIRES[name])]


def kernels_line(session):
    variant = session.kernel_variant
    desc = VARIANT_DESCRIPTIONS.get(variant, "")
    threads = f"{session.threads} thread{'s' if session.threads != 1 else ''}"
    if not _threaded(session) and session.threads > 1:
        threads += " requested (no thread pool in this build: kernels run on 1)"
    line = f"kernels: {variant}" + (f" ({desc})" if desc else "") + f", {threads}"
    missing = _unbuilt_variants()
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        line += (f"; {', '.join(missing)} would run on this CPU but {verb} not built (the "
                 "compiler rejected its flags at install; `pip install -v .` shows the "
                 "warning)")
    return line


# --------------------------------------------------------------------------------------
# report text
# --------------------------------------------------------------------------------------
def shape_text(shape):
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def fmt_count(value):
    if value is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


def print_table(rows, indent="  "):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [str(c).ljust(w) for c, w in zip(r, widths)]
        print((indent + "  ".join(cells)).rstrip())


def print_header(args, session):
    """The first lines of a report on a run: the model and its kernels."""
    print(f"model: {args.model}")
    print(kernels_line(session))
