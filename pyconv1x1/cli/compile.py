"""Check, fold and pack MODEL once and write a compiled plan that InferenceSession
loads with numpy alone, its weights already packed (docs/PLAN_FORMAT.md). Refuses to
overwrite the model or its external data."""
import os
import time

from .common import EXIT_OK, CliError, add_command


def add_parser(sub):
    p = add_command(sub, "compile", "write a compiled plan (.pc1)", __doc__)
    p.add_argument("-o", "--output", required=True, metavar="MODEL.pc1",
                   help="where to write the plan (not the model itself)")
    return p


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)


def cmd_compile(args):
    from .. import planfile
    if isinstance(args.model, str):
        for path, what in ((args.model, "the model"),
                           (args.model + ".data", "the model's external data")):
            same = os.path.realpath(path) == os.path.realpath(args.output) or (
                os.path.exists(path) and os.path.exists(args.output)
                and _same_file(path, args.output))  # (a hard link too)
            if same:
                raise CliError(f"-o {args.output!r} is {what} {path!r}; refusing to "
                               "overwrite it: give another output path")
    t0 = time.perf_counter()
    try:
        size = planfile.compile_model(args.model, args.output)
    except OSError as exc:
        raise CliError(f"cannot write {args.output!r}: {exc.strerror or exc}") from None
    src = os.path.getsize(args.model) if os.path.isfile(args.model) else 0
    data = args.model + ".data" if os.path.isfile(args.model + ".data") else None
    if data:
        src += os.path.getsize(data)
    print(f"wrote {args.output}: {size} bytes (model {src} bytes) in "
          f"{(time.perf_counter() - t0) * 1e3:.1f} ms")
    return EXIT_OK
