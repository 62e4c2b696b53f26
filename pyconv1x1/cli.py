"""The `pyconv1x1` command line: run, info, validate, bench and compile a model.

Exit codes: 0 ok, 1 a validation found a mismatch, 2 bad usage or a model or input file
that cannot be loaded or run (one line on stderr, no traceback), 3 an internal error
(set PYCONV1X1_DEBUG=1 to see its traceback). onnx, onnxruntime and torch load only in
the commands that need them.
"""
import argparse
import os
import re
import sys
import time

from ._variants import VARIANTS as _VARIANTS
from .errors import Error, UnsupportedError

PROG = "pyconv1x1"
EXIT_OK, EXIT_MISMATCH, EXIT_USAGE, EXIT_INTERNAL = 0, 1, 2, 3

VARIANT_DESCRIPTIONS = {name: row["description"] for name, row in _VARIANTS.items()}


class CliError(Exception):
    """Bad arguments or input files: reported on one line, exit 2."""


# --------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------
def _one_line(text):
    """A (possibly multi-line) message squeezed onto one line."""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    if not lines:
        return ""
    if len(lines) <= 2:
        return " ".join(lines)
    return f"{lines[0]} {lines[1]} (and {len(lines) - 2} more)"


def _error_line(exc):
    msg = _one_line(exc) or type(exc).__name__
    if isinstance(exc, UnsupportedError) and len(str(exc).splitlines()) > 2:
        msg += "; `pyconv1x1 info MODEL` lists them all"
    return msg


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


_positive_int = _number(int, 1, False, "an integer >= 1")
_non_negative_int = _number(int, 0, False, "an integer >= 0")
_non_negative_float = _number(float, 0.0, False, "a finite number >= 0")
_positive_float = _number(float, 0.0, True, "a finite number > 0")


def _session(model, threads=None):
    from .session import InferenceSession
    return InferenceSession(model, threads=threads)


def _threaded(session):
    from . import _backend
    try:
        return bool(getattr(_backend.kernels(session.kernel_variant), "THREADED", False))
    except Error:
        return False


def _unbuilt_variants():
    """Kernel variants this CPU would run that the installation lacks (the compiler
    rejected their flags at build time, where pip hides the warning)."""
    from . import _backend
    flags = _backend._linux_cpu_flags()
    if flags is None:
        return []
    built = _backend.built_variants()
    return [name for name in _backend._ORDER if name not in built
            and all(f in flags for f in _backend._REQUIRES[name])]


def _kernels_line(session):
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


def _shape_text(shape):
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _concrete_shape(name, shape):
    """A declared shape with named and unknown dims set to 1."""
    if shape is None:
        raise CliError(f"input {name!r} has no declared shape; give one with --input "
                       f"or --shape {name}=AxBxC")
    return tuple(d if isinstance(d, int) and d >= 0 else 1 for d in shape)


def _shape_arg(text):
    """argparse type of --shape NAME=1x64x224x224."""
    name, sep, dims = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        shape = tuple(int(d) for d in dims.lower().split("x"))
        if any(d < 0 for d in shape):
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected INPUT=AxBx... with sizes >= 0 (e.g. input=1x64x224x224), got "
            f"{text!r}") from None
    return name, shape


def _dim_arg(text):
    """argparse type of --dim NAME=N."""
    name, sep, value = text.rpartition("=")
    try:
        if not sep or not name:
            raise ValueError
        size = int(value)
        if size < 0:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected DIM=N with a named dim of the model and N >= 0 (e.g. batch=8), "
            f"got {text!r}") from None
    return name, size


def _input_shapes(session, shape_args, dim_args):
    """({input: concrete shape}, [named or unknown dims that were set to 1]) for random
    inputs: --shape INPUT=... sets a whole input, --dim NAME=N every dim of that name
    (a dim named in an input given by --shape takes its size from there too); any other
    named or unknown dim is 1, and is listed."""
    inputs = session.get_inputs()
    by_name = {a.name: a for a in inputs}
    shapes = {}
    for name, shape in shape_args or ():
        if name not in by_name:
            raise CliError(f"--shape {name}=...: the model has no input {name!r}; its "
                           f"inputs are {list(by_name)}")
        shapes[name] = shape
    named = []
    for a in inputs:
        for d in a.shape or ():
            if isinstance(d, str) and d not in named:
                named.append(d)
    dims = {}
    for name, size in dim_args or ():
        if name not in named:
            raise CliError(f"--dim {name}={size}: no input has a dim named {name!r}; the "
                           f"named dims are {named or 'none (every dim is fixed)'}")
        dims[name] = size
    for name, shape in shapes.items():
        decl = by_name[name].shape
        if decl is None:
            continue
        if len(decl) != len(shape):
            raise CliError(f"--shape {name}={'x'.join(map(str, shape))}: rank "
                           f"{len(shape)}; input {name!r} is declared with rank "
                           f"{len(decl)} {_shape_text(decl)}")
        for axis, (want, got) in enumerate(zip(decl, shape)):
            if isinstance(want, int) and want != got:
                raise CliError(f"--shape {name}={'x'.join(map(str, shape))}: dim {axis} "
                               f"must be {want} (declared {_shape_text(decl)})")
            if isinstance(want, str):
                if want in dims and dims[want] != got:
                    raise CliError(f"--shape {name}=... sets {want!r} to {got}, but "
                                   f"it is {dims[want]} elsewhere (--dim or --shape)")
                dims[want] = got
    out, defaulted = {}, []
    for a in inputs:
        if a.name in shapes:
            out[a.name] = shapes[a.name]
            continue
        if a.shape is None:
            raise CliError(f"input {a.name!r} has no declared shape; give one with "
                           f"--shape {a.name}=AxBx... or --input")
        shape = []
        for axis, d in enumerate(a.shape):
            if isinstance(d, int) and d >= 0:
                shape.append(d)
            elif isinstance(d, str) and d in dims:
                shape.append(dims[d])
            else:
                label = d if isinstance(d, str) else f"{a.name}[{axis}] (unnamed)"
                if label not in defaulted:
                    defaulted.append(label)
                shape.append(1)
        out[a.name] = tuple(shape)
    return out, defaulted


def _defaulted_note(defaulted):
    return (f"dims not given, set to 1: {', '.join(defaulted)} (give them with "
            "--dim NAME=N or --shape INPUT=AxBx...)")


def _fmt_count(value):
    if value is None:
        return "?"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f}{unit}"
    return str(int(value))


# --------------------------------------------------------------------------------------
# feeds and npz files
# --------------------------------------------------------------------------------------
def _random_feeds(session, seed, shape_args=None, dim_args=None):
    """(feeds, defaulted dims) of seeded random normal float32 inputs."""
    import numpy as np
    shapes, defaulted = _input_shapes(session, shape_args, dim_args)
    rng = np.random.default_rng(seed)
    return {name: rng.standard_normal(shape, dtype=np.float32)
            for name, shape in shapes.items()}, defaulted


def _read_npz(path, what):
    """{key: array} of an .npz file; CliError when it is missing or malformed."""
    import zipfile

    import numpy as np
    try:
        data = np.load(path, allow_pickle=False)
        if not hasattr(data, "files"):
            raise CliError(f"{what} {path!r} is a single .npy array, not an .npz archive")
        with data:
            return {key: data[key] for key in data.files}
    except CliError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        raise CliError(f"cannot read {what} {path!r}: {_one_line(exc)}") from None


def _file_feeds(session, path):
    import zipfile

    import numpy as np
    names = [arg.name for arg in session.get_inputs()]
    ext = os.path.splitext(path)[1].lower()
    if ext == ".npy":
        if len(names) != 1:
            raise CliError(f"a .npy input feeds a single-input model; this model has "
                           f"{len(names)} inputs {names}: give an .npz keyed by input name")
        try:
            arr = np.load(path, allow_pickle=False)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            raise CliError(f"cannot read input {path!r}: {_one_line(exc)}") from None
        if not isinstance(arr, np.ndarray):
            arr.close()
            raise CliError(f"input {path!r} is an .npz archive, not a .npy array")
        return {names[0]: arr}
    if ext == ".npz":
        feeds = _read_npz(path, "input")
        missing = [n for n in names if n not in feeds]
        extra = [k for k in feeds if k not in names]
        if missing or extra:
            raise CliError(f"input {path!r} has keys {sorted(feeds)}; the model's inputs "
                           f"are {names}")
        return {n: feeds[n] for n in names}
    raise CliError(f"--input must be a .npy or .npz file, got {path!r}")


def _feeds(args, session):
    """(feeds, description of where they came from). Prints which dims of random
    inputs were set to 1 for want of --dim / --shape."""
    if getattr(args, "input", None):
        if getattr(args, "shape", None) or getattr(args, "dim", None):
            raise CliError("--shape and --dim set the shapes of random inputs; with "
                           "--input the shapes are the files' own")
        return _file_feeds(session, args.input), f"from {args.input}"
    feeds, defaulted = _random_feeds(session, args.seed, getattr(args, "shape", None),
                                     getattr(args, "dim", None))
    args.defaulted_dims = defaulted
    return feeds, f"random normal, seed {args.seed}"


def _print_defaulted(args):
    defaulted = getattr(args, "defaulted_dims", None)
    if defaulted:
        print(f"note: {_defaulted_note(defaulted)}")


def _write_npz(path, arrays):
    """Write {name: array} as an .npz at exactly `path` (np.savez would clash with
    output names such as 'file' and append '.npz')."""
    import zipfile

    import numpy as np
    try:
        with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for name, arr in arrays.items():
                with zf.open(name + ".npy", "w", force_zip64=True) as f:
                    np.lib.format.write_array(f, np.asanyarray(arr), allow_pickle=False)
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {_one_line(exc)}") from None


def _stats(arr):
    import numpy as np
    if arr.size == 0:
        return "empty"
    a = np.asarray(arr, dtype=np.float64)
    finite = np.isfinite(a)
    bad = int(a.size - np.count_nonzero(finite))
    if bad:
        a = a[finite]
        if a.size == 0:
            return f"all {bad} values non-finite"
    text = (f"min {a.min():.6g}  max {a.max():.6g}  mean {a.mean():.6g}  "
            f"std {a.std():.6g}")
    if bad:
        text += f"  ({bad} non-finite values left out)"
    return text


# --------------------------------------------------------------------------------------
# run
# --------------------------------------------------------------------------------------
def cmd_run(args):
    session = _session(args.model, args.threads)
    if args.input and os.path.isdir(args.input):
        if args.batch_size is not None:
            raise CliError("--batch-size splits one .npz along its first axis; with an "
                           "input folder every file is one run")
        return _run_many(args, session, _folder_feeds(session, args.input))
    if args.batch_size is not None:
        if not args.input or os.path.splitext(args.input)[1].lower() != ".npz":
            raise CliError("--batch-size splits an .npz given with --input along its "
                           "first axis; give --input FILE.npz")
        return _run_many(args, session, _split_feeds(session, args.input,
                                                     args.batch_size))
    feeds, origin = _feeds(args, session)
    clock = time.perf_counter
    start = clock()
    session.run(None, feeds)  # checks the feed, plans its shape, starts the threads
    first = clock() - start
    flops = session.flops({k: v.shape for k, v in feeds.items()})
    start = clock()
    outputs = session.run(None, feeds)
    elapsed = clock() - start
    print(f"model: {args.model}")
    print(_kernels_line(session))
    for name, arr in feeds.items():
        print(f"input  {name}: {_shape_text(arr.shape)} {arr.dtype} ({origin})")
    _print_defaulted(args)
    for arg, arr in zip(session.get_outputs(), outputs):
        print(f"output {arg.name}: {_shape_text(arr.shape)} {arr.dtype}  {_stats(arr)}")
    rate = f", {flops / elapsed / 1e9:.2f} GF/s" if flops and elapsed > 0 else ""
    print(f"run time: {elapsed * 1e3:.3f} ms ({_fmt_count(flops)} FLOPs{rate}; "
          f"first call {first * 1e3:.3f} ms)")
    if args.output:
        _write_npz(args.output, {arg.name: arr
                                 for arg, arr in zip(session.get_outputs(), outputs)})
        print(f"wrote {args.output}")
    return EXIT_OK


class Progress:
    """A progress bar on stderr, drawn only when stderr is a terminal."""

    def __init__(self, total, label, stream=None):
        self.stream = sys.stderr if stream is None else stream
        self.total, self.label, self.done = total, label, 0
        self.start = time.perf_counter()
        self.shown = 0.0
        try:
            self.active = self.stream.isatty()
        except (AttributeError, ValueError):
            self.active = False

    def update(self, done=None):
        self.done = self.done + 1 if done is None else done
        if not self.active:
            return
        now = time.perf_counter()
        if now - self.shown < 0.1 and self.done < self.total:
            return
        self.shown = now
        frac = min(1.0, self.done / self.total) if self.total else 1.0
        width = 30
        bar = "#" * int(frac * width) + "." * (width - int(frac * width))
        elapsed = now - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        self.stream.write(f"\r{self.label} [{bar}] {self.done}/{self.total} "
                          f"{rate:.1f}/s ")
        self.stream.flush()

    def close(self):
        if self.active:
            self.stream.write("\r" + " " * 72 + "\r")
            self.stream.flush()


def _folder_feeds(session, folder):
    """(label, feeds) for each .npy / .npz file of `folder`, in name order (files are
    read one at a time, as they run), and the count."""
    names = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith((".npy", ".npz"))
                   and os.path.isfile(os.path.join(folder, f)))
    if not names:
        raise CliError(f"input folder {folder!r} holds no .npy or .npz file")
    stems = [os.path.splitext(n)[0] for n in names]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise CliError(f"input folder {folder!r} has both a .npy and a .npz named "
                       f"{twice}; outputs are named after the input file's stem")

    def feeds():
        for name, stem in zip(names, stems):
            yield stem, _file_feeds(session, os.path.join(folder, name))
    return f"{len(names)} files of {folder}", len(names), feeds()


def _split_feeds(session, path, batch):
    """(label, feeds) for each slice of `batch` samples along the first axis of the
    arrays of an .npz keyed by input name."""
    arrays = _file_feeds(session, path)
    sizes = {name: (arr.shape[0] if arr.ndim else None) for name, arr in arrays.items()}
    if None in sizes.values() or len(set(sizes.values())) != 1:
        raise CliError(f"--batch-size: the arrays of {path!r} must share their first "
                       f"(batch) axis; their sizes are {sizes}")
    total = next(iter(sizes.values()))
    if total == 0:
        raise CliError(f"--batch-size: the arrays of {path!r} hold no sample (first "
                       "axis 0)")
    count = -(-total // batch)

    def feeds():
        for i in range(count):
            yield i, {name: arr[i * batch:(i + 1) * batch] for name, arr in arrays.items()}
    return (f"{total} samples of {path} in {count} batch(es) of up to {batch}", count,
            feeds())


def _output_target(path, count_label):
    """'folder' or 'npz' for --output of a run over many inputs."""
    if path is None:
        return None
    if path.lower().endswith(".npz"):
        return "npz"
    if os.path.exists(path) and not os.path.isdir(path):
        raise CliError(f"--output {path!r} exists and is not a folder; for {count_label} "
                       "give a folder or an .npz file")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise CliError(f"cannot create output folder {path!r}: "
                       f"{exc.strerror or exc}") from None
    return "folder"


def _run_many(args, session, source):
    """Run every feed of `source` ((description, count, iterator of (label, feeds)));
    outputs to a folder (one file per input) or an .npz; a summary at the end."""
    import numpy as np
    what, count, items = source
    target = _output_target(args.output, what)
    split = args.batch_size is not None
    out_names = [o.name for o in session.get_outputs()]
    collected = {name: [] for name in out_names}
    single = len(out_names) == 1
    progress = Progress(count, "run")
    runs = samples = 0
    clock = time.perf_counter
    busy = 0.0
    start = clock()
    try:
        for label, feeds in items:
            t0 = clock()
            try:
                outputs = session.run(None, feeds)
            except Error as exc:
                raise CliError(f"input {label!r}: {_one_line(exc)}") from None
            busy += clock() - t0
            runs += 1
            first = next(iter(feeds.values()))
            samples += first.shape[0] if first.ndim else 1
            if target == "folder":
                stem = f"{label:06d}" if split else label
                if single:
                    dest = os.path.join(args.output, f"{stem}.npy")
                    try:
                        np.save(dest, outputs[0], allow_pickle=False)
                    except OSError as exc:
                        raise CliError(f"cannot write {dest!r}: {_one_line(exc)}") \
                            from None
                else:
                    _write_npz(os.path.join(args.output, f"{stem}.npz"),
                               dict(zip(out_names, outputs)))
            elif target == "npz":
                for name, arr in zip(out_names, outputs):
                    collected[name].append((label, arr))
            progress.update()
    finally:
        progress.close()
    elapsed = clock() - start
    if target == "npz":
        if split:  # one array per output: the batches joined again
            arrays = {name: np.concatenate([a for _, a in parts])
                      for name, parts in collected.items()}
        else:
            arrays = {f"{label}/{name}" if not single else label: arr
                      for name, parts in collected.items() for label, arr in parts}
        _write_npz(args.output, arrays)
    print(f"model: {args.model}")
    print(_kernels_line(session))
    print(f"inputs: {what}")
    rate = runs / elapsed if elapsed > 0 else float("inf")
    srate = samples / elapsed if elapsed > 0 else float("inf")
    print(f"ran {runs} input(s), {samples} sample(s) in {elapsed:.3f} s "
          f"({busy:.3f} s in run()): {rate:.1f} runs/s, {srate:.1f} samples/s")
    if target == "folder":
        print(f"wrote {runs} file(s) to {args.output}"
              + (" (one .npy per input)" if single else " (one .npz per input, keyed by "
                 "output name)"))
    elif target == "npz":
        layout = ("one array per output, batches joined on axis 0" if split else
                  "one array per input file" + ("" if single else ", keyed FILE/OUTPUT"))
        print(f"wrote {args.output} ({layout})")
    return EXIT_OK


# --------------------------------------------------------------------------------------
# info
# --------------------------------------------------------------------------------------
def _op_types_by_name(model):
    """{node name: op type} from the ONNX file, or {} when it cannot be read again."""
    try:
        from . import onnx_reader
        return {n.name: n.op_type for n in onnx_reader.load(model).nodes}
    except Exception:
        return {}


def _table(rows, indent="  "):
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        cells = [str(c).ljust(w) for c, w in zip(r, widths)]
        print((indent + "  ".join(cells)).rstrip())


def _layer_rows(program, shapes, op_types):
    """Table rows for every step (a chain gives one row per conv), the parameter total
    and the FLOPs total at `shapes` ({tensor: concrete shape}, None when unknown)."""
    from .program import AddStep, AffineStep, ChainStep, CopyStep
    rows = [("#", "step", "ops", "nodes", "cin->cout", "group", "strides", "pads",
             "act", "residual", "output", "params", "FLOPs")]
    total_params = total_flops = 0
    flops_known = True

    def ops_of(names):
        if not op_types:
            return "-"
        return "+".join(op_types.get(n, "?") for n in names)
    for index, step in enumerate(program.steps, 1):
        if isinstance(step, ChainStep):
            x = shapes.get(step.input)
            first = step.layers[0]
            geometry = None
            if x is not None and len(x) == first.spatial_rank + 2:
                n, _, _, ho, wo, _, _ = step.geometry(x)  # (any layout)
                geometry = (n, ho, wo)
            kind = f"chain[{len(step.layers)}]" if len(step.layers) > 1 else "conv"
            out_shape = None
            for j, layer in enumerate(step.layers):
                params = layer.cout * layer.k + layer.bias.size
                total_params += params
                if geometry is not None:
                    n, ho, wo = geometry
                    out_shape = step.laid_out(layer.out_shape(n, ho, wo))
                    flops = layer.flops(n, ho, wo)
                    total_flops += flops
                else:
                    out_shape, flops = None, None
                    flops_known = False
                ops = ops_of(layer.names)
                pads = (layer.auto_pad if layer.auto_pad not in ("NOTSET", "")
                        else ",".join(str(p) for p in layer.pads))
                residual = "-"
                if layer.residual:
                    when = {1: "before act", 2: "after act"}.get(layer.res_mode, "")
                    residual = f"+{layer.residual}" + (f" ({when})" if when else "")
                rows.append((f"{index}" if j == 0 else "",
                             kind if j == 0 else "",
                             ops, "+".join(layer.names), f"{layer.cin}->{layer.cout}",
                             layer.group, "x".join(str(s) for s in layer.strides), pads,
                             layer.act.describe() or "-", residual,
                             _shape_text(out_shape) if out_shape else "?",
                             params, "?" if flops is None else flops))
            shapes[step.output] = out_shape
            continue
        if isinstance(step, AffineStep):
            params = sum(v.size for v in (step.scale, step.shift) if v is not None)
            total_params += params
            what = ("affine", ops_of(step.name.split("+")),
                    step.name, "", "", "", "", step.act.describe() or "-", "-")
            shapes[step.output] = shapes.get(step.input)
        elif isinstance(step, AddStep):
            params = 0
            what = ("add", ops_of(step.name.split("+")), step.name,
                    "", "", "", "", step.act.describe() or "-", f"{step.a} + {step.b}")
            shapes[step.output] = shapes.get(step.a)
        elif isinstance(step, CopyStep):
            params = 0
            what = ("copy", ops_of(step.name.split("+")),
                    step.name, "", "", "", "", "-", "-")
            shapes[step.output] = shapes.get(step.input)
        else:  # transpose, mean, scale, sigmoid, ...: its kind and what it reads
            params = 0
            what = (step.kind, ops_of(step.label.split("+")), step.label, "", "", "",
                    "", "-", " ".join(step.reads[1:]) or "-")
            try:
                shapes[step.output] = step.out_shape(shapes)
            except Exception:  # (a shape this step refuses: shown as unknown)
                shapes[step.output] = None
        out = shapes.get(getattr(step, "output", ""))
        rows.append((str(index),) + what + (_shape_text(out) if out else "?", params,
                                            "-"))
    return rows, total_params, (total_flops if flops_known else None)


def cmd_info(args):
    try:
        session = _session(args.model)
    except UnsupportedError as exc:
        return _info_unsupported(args.model, exc, args.all_problems)
    program = session.program
    print(f"model: {args.model}")
    print(f"producer: {program.producer or '?'}, opset {program.opset}")
    print(_kernels_line(session))
    print("inputs:")
    _table([(a.name, _shape_text(a.shape), a.type) for a in session.get_inputs()])
    print("outputs:")
    _table([(a.name, _shape_text(a.shape), a.type) for a in session.get_outputs()])

    shapes, known = {}, True
    for arg in session.get_inputs():
        if arg.shape is None:
            known = False
            shapes[arg.name] = None
        else:
            shapes[arg.name] = _concrete_shape(arg.name, arg.shape)
    at = ", ".join(f"{k}={_shape_text(v)}" for k, v in shapes.items())
    op_types = _op_types_by_name(args.model) if isinstance(args.model, str) else {}
    rows, params, flops = _layer_rows(program, dict(shapes), op_types)
    print(f"layers after fusion ({len(program.steps)} steps, "
          f"{sum(1 for _ in program.layers())} convs; shapes and FLOPs at {at}, "
          "named dims = 1):")
    _table(rows)
    if known:
        try:
            flops = session.flops(shapes)
        except Error as exc:
            print(f"(cannot plan the declared shape: {_one_line(exc)})")
    rate = "?" if flops is None else (
        f"{flops} ({_fmt_count(flops)})" if flops >= 1000 else str(flops))
    print(f"total: {params} parameters (after folding), {rate} FLOPs per run")
    if program.notes:
        print("rewrite notes:")
        for note in program.notes:
            print(f"  {note}")
    else:
        print("rewrite notes: none")
    return EXIT_OK


def _conv_kernel_shapes(graph):
    """Kernel shape of every Conv node (None when it cannot be known statically): from
    the kernel_shape attribute, the constant weight, or the shape a ConstantOfShape
    weight is built from (as in the onnx package's 'light' test models)."""
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    out = []
    for node in graph.nodes:
        if node.op_type != "Conv":
            continue
        kernel = None
        attr = node.attrs.get("kernel_shape")
        try:
            if attr is not None:
                kernel = tuple(int(k) for k in attr)
        except (TypeError, ValueError):
            kernel = None
        if kernel is None and len(node.inputs) > 1:
            w = node.inputs[1]
            if w in graph.constants:
                kernel = tuple(int(d) for d in graph.constants[w].shape[2:])
            elif w in producers and producers[w].op_type == "ConstantOfShape":
                src = producers[w].inputs[0] if producers[w].inputs else ""
                if src in graph.constants:
                    kernel = tuple(int(d) for d in graph.constants[src].reshape(-1)[2:])
        out.append(kernel)
    return out


_ONNX_TYPE_NAMES = {"float32": "float", "float64": "double"}


def _onnx_type(elem_type):
    return f"tensor({_ONNX_TYPE_NAMES.get(elem_type, elem_type)})"


_PROBLEM = re.compile(r"^(\S+) '(.*)': (.*)$", re.S)


def _group_problems(problems, shown=6):
    """Problems with the same op and reason on one line, naming the first nodes."""
    groups, order = {}, []
    for p in problems:
        m = _PROBLEM.match(p)
        key = (m.group(1), m.group(3)) if m else (None, p)
        if key not in groups:
            groups[key] = []
            order.append(key)
        if m:
            groups[key].append(m.group(2))
    lines = []
    for key in order:
        op, reason = key
        names = groups[key]
        if op is None:
            lines.append(reason)
        elif len(names) == 1:
            lines.append(f"{op} '{names[0]}': {reason}")
        else:
            listed = ", ".join(f"'{n}'" for n in names[:shown])
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            lines.append(f"{op} {listed}{more} ({len(names)} nodes): {reason}")
    return lines


def _info_unsupported(model, exc, verbose=False):
    """What `info` can tell about a model that does not run here; exit 2."""
    import collections

    from . import check, onnx_reader
    try:
        graph = onnx_reader.load(model)
    except UnsupportedError:  # refused while parsing (e.g. sparse initializers)
        raise exc from None
    problems, n_conv, n_ones = check.unsupported_report(graph)
    if not problems:
        problems = [line.strip() for line in str(exc).splitlines()[1:]] or [str(exc)]
    print(f"model: {model}")
    print(f"producer: {graph.producer or '?'}, opset {graph.opset}")
    print("inputs:")
    rows = [(v.name, _shape_text(v.shape), _onnx_type(v.elem_type)) for v in graph.inputs]
    _table(rows or [("(none)",)])
    print("outputs:")
    rows = [(v.name, _shape_text(v.shape), _onnx_type(v.elem_type)) for v in graph.outputs]
    _table(rows or [("(none)",)])
    counts = collections.Counter(n.op_type for n in graph.nodes)
    print(f"ops ({len(graph.nodes)} nodes): "
          + ", ".join(f"{op} {c}" for op, c in counts.most_common()))
    kernels = _conv_kernel_shapes(graph)
    by_kernel = collections.Counter("x".join(map(str, k)) if k is not None else "unknown"
                                    for k in kernels)
    ones = sum(1 for k in kernels if k is not None and all(d == 1 for d in k))
    ones = max(ones, n_ones)
    detail = ", ".join(f"{k}: {c}" for k, c in sorted(by_kernel.items(),
                                                      key=lambda kv: -kv[1]))
    print(f"Conv nodes: {max(n_conv, len(kernels))}, of which 1x1: {ones}"
          + (f" (kernels {detail})" if detail else ""))
    print(f"cannot run this model: {len(problems)} problem(s):")
    for line in (problems if verbose else _group_problems(problems)):
        print(f"  {line}")
    sys.stdout.flush()
    print(f"{PROG}: error: {model} cannot run here: {len(problems)} problem(s), listed "
          "above", file=sys.stderr)
    return EXIT_USAGE


# --------------------------------------------------------------------------------------
# validate
# --------------------------------------------------------------------------------------
def _stem(model):
    """Where recorded files sit: the model path without its .onnx (or .pc1) suffix."""
    root, ext = os.path.splitext(model)
    return root if ext.lower() in (".onnx", ".pc1") else model


def _reference_onnxruntime(model, feeds, threads):
    sess = _ort_session(model, threads, "--against")
    try:
        results = sess.run(None, feeds)
    except Exception as exc:
        raise CliError(f"onnxruntime cannot run {model!r}: {_one_line(exc)}") from None
    return {o.name: r for o, r in zip(sess.get_outputs(), results)}


def _reference_evaluator(model, feeds):
    try:
        from onnx.reference import ReferenceEvaluator
    except ImportError as exc:
        import importlib.util
        if importlib.util.find_spec("onnx") is None:
            from .errors import onnx_missing
            raise onnx_missing("--against reference (onnx's ReferenceEvaluator)") \
                from None
        raise CliError(f"--against reference needs onnx.reference: {exc}") from None
    try:
        evaluator = ReferenceEvaluator(model)
        results = evaluator.run(None, feeds)
    except Exception as exc:
        raise CliError(f"onnx's ReferenceEvaluator cannot run {model!r}: "
                       f"{_one_line(exc)}") from None
    return dict(zip(evaluator.output_names, results))


def _reference_torch(model, feeds):
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        raise CliError("--against torch needs PyTorch, which is not installed")
    try:
        from .testing import run_torch_reference
    except ImportError as exc:
        raise CliError(f"--against torch is unavailable: {_one_line(exc)}") from None
    try:
        return dict(run_torch_reference(model, feeds))
    except Error:
        raise
    except Exception as exc:
        raise CliError(f"the PyTorch reference cannot run {model!r}: "
                       f"{type(exc).__name__}: {_one_line(exc)}") from None


def compare(actual, expected, rtol, atol):
    """(max abs error, relative error, passed) of one output against its reference.
    A value passes when |a - b| <= atol + rtol * max|reference|; NaNs must sit in the
    same places, infinities must be equal."""
    import numpy as np
    a = np.asarray(actual, dtype=np.float64)
    b = np.asarray(expected, dtype=np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if (nan_a != nan_b).any():
        return float("nan"), float("nan"), False
    both = ~nan_a
    a, b = a[both], b[both]
    if a.size == 0:
        return 0.0, 0.0, True
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.where(a == b, 0.0, np.abs(a - b))
    err = float(diff.max())
    finite = np.abs(b[np.isfinite(b)])
    scale = float(finite.max()) if finite.size else 0.0
    rel = err / scale if scale > 0 else (0.0 if err == 0 else float("inf"))
    return err, rel, bool(err <= atol + rtol * scale)


def _is_plan(path):
    from . import planfile
    return planfile.is_plan(path)


def _reference_model(args):
    """The ONNX file the reference runs: MODEL, or --source for a compiled plan."""
    plan = _is_plan(args.model)
    if args.source is not None:
        if not plan:
            raise CliError(f"--source names the .onnx a compiled plan was made from; "
                           f"{args.model!r} is not a .pc1 plan")
        if _is_plan(args.source):
            raise CliError(f"--source {args.source!r} is a compiled plan; give the .onnx "
                           "the plan was compiled from")
        return args.source
    if plan and args.against not in ("recorded",):
        raise CliError(f"{args.model!r} is a compiled plan: --against {args.against} "
                       "runs the ONNX model, so give the .onnx it was compiled from with "
                       "--source MODEL.onnx")
    return args.model


def _recorded_stem(args):
    """Where the recorded inputs/outputs are: beside MODEL, else (for a plan) beside
    its --source."""
    stem = _stem(args.model)
    if not os.path.isfile(stem + ".inputs.npz") and args.source is not None:
        other = _stem(args.source)
        if os.path.isfile(other + ".inputs.npz"):
            return other
    return stem


def _reference_source(model, feeds, threads):
    """pyconv1x1 itself on the source .onnx of a compiled plan."""
    sess = _session(model, threads)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


def cmd_validate(args):
    session = _session(args.model, args.threads)
    if args.against == "source" and args.source is None:
        raise CliError("--against source compares a compiled plan with the .onnx it was "
                       "compiled from: give it with --source MODEL.onnx")
    ref_model = _reference_model(args)
    if args.against == "recorded":
        if args.input or args.shape or args.dim:
            raise CliError("--input, --shape and --dim cannot be used with --against "
                           "recorded: the recorded outputs belong to the recorded inputs")
        stem = _recorded_stem(args)
        in_path, out_path = stem + ".inputs.npz", stem + ".outputs.npz"
        feeds = _read_npz(in_path, "recorded inputs")
        names = [a.name for a in session.get_inputs()]
        if sorted(feeds) != sorted(names):
            raise CliError(f"recorded inputs {in_path!r} have keys {sorted(feeds)}; the "
                           f"model's inputs are {names}")
        origin = f"recorded, {in_path}"
        reference = _read_npz(out_path, "recorded outputs")
        against = f"recorded outputs {out_path}"
    else:
        feeds, origin = _feeds(args, session)
        reference = None
        against = {"onnxruntime": "onnxruntime", "reference": "onnx ReferenceEvaluator",
                   "torch": "PyTorch (the ONNX graph rebuilt with torch ops; for your "
                            "own module: pyconv1x1.testing.assert_matches_torch)",
                   "source": "pyconv1x1 on the source model"}[args.against]
        if ref_model != args.model:
            against += f" ({ref_model})"
    try:
        outputs = session.run(None, feeds)
    except Error as exc:
        raise CliError(f"{args.model!r} cannot run input {origin}: {_one_line(exc)}") \
            from None
    if reference is None:
        if args.against == "onnxruntime":
            reference = _reference_onnxruntime(ref_model, feeds, session.threads)
        elif args.against == "reference":
            reference = _reference_evaluator(ref_model, feeds)
        elif args.against == "source":
            reference = _reference_source(ref_model, feeds, session.threads)
        else:
            reference = _reference_torch(ref_model, feeds)

    print(f"model: {args.model}")
    print(f"against: {against}; input {origin}; rtol {args.rtol:g}, atol {args.atol:g}")
    _print_defaulted(args)
    rows = [("output", "shape", "max abs err", "rel err", "result")]
    failed = 0
    for arg, arr in zip(session.get_outputs(), outputs):
        ref = reference.get(arg.name)
        if ref is None:
            rows.append((arg.name, _shape_text(arr.shape), "-", "-",
                         "FAIL (no reference value)"))
            failed += 1
            continue
        if tuple(ref.shape) != tuple(arr.shape):
            rows.append((arg.name, _shape_text(arr.shape), "-", "-",
                         f"FAIL (reference shape {_shape_text(ref.shape)})"))
            failed += 1
            continue
        err, rel, ok = compare(arr, ref, args.rtol, args.atol)
        failed += not ok
        rows.append((arg.name, _shape_text(arr.shape), f"{err:.3g}", f"{rel:.3g}",
                     "ok" if ok else "FAIL"))
    _table(rows)
    total = len(outputs)
    if failed:
        print(f"MISMATCH: {failed} of {total} output(s) outside tolerance")
        return EXIT_MISMATCH
    print(f"ok: all {total} output(s) within tolerance")
    return EXIT_OK


# --------------------------------------------------------------------------------------
# bench
# --------------------------------------------------------------------------------------
def _ort_session(model, threads, option="--compare"):
    """An onnxruntime session with the same thread count (one-line errors)."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise CliError(f"{option} onnxruntime needs onnxruntime, which is not installed "
                       "(pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise CliError(f"onnxruntime cannot load {model!r}: {_one_line(exc)}") from None


def timed(fn, count, into):
    """Call fn count times, appending each call's seconds to into."""
    clock = time.perf_counter
    for _ in range(count):
        start = clock()
        fn()
        into.append(clock() - start)


def settle(max_s=0.2, window_s=0.005):
    """Wait (up to max_s) until no thread of this process burns CPU while it sleeps:
    threads an engine left spinning (OpenBLAS ~0.1 s, onnxruntime and OpenMP a few ms)
    must not steal cycles from the next engine's timed block. Also used by
    tools/bench.py."""
    end = time.perf_counter() + max_s
    while time.perf_counter() < end:
        c0 = time.process_time()
        time.sleep(window_s)
        if time.process_time() - c0 < 0.1 * window_s:
            return


def _peak_rss():
    """The process's peak resident memory in bytes, or None where unknown."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; Linux: KiB


def _check_plot_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise CliError(f"--plot needs matplotlib, which cannot be imported ({exc}): "
                       "pip install 'pyconv1x1[plot]'") from None


def _plot(path, model, stats, target_ms, target_label):
    """Median per call of each engine, with error bars from p10 to p90, and the target
    line. Returns the legend's labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(stats)
    p50 = [stats[n]["p50_ms"] for n in names]
    lower = [stats[n]["p50_ms"] - stats[n]["p10_ms"] for n in names]
    upper = [stats[n]["p90_ms"] - stats[n]["p50_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, p50, yerr=[lower, upper], capsize=8, color="#4c72b0",
                  ecolor="black", label="median per call (error bars: p10 to p90)")
    for bar, name in zip(bars, names):
        ax.annotate(f"{stats[name]['p50_ms']:.4g} ms", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    if target_ms is not None:
        ax.axhline(target_ms, color="#c44e52", linestyle="--",
                   label=f"target: {target_label} ({target_ms:.4g} ms)")
    ax.set_ylabel("time per run (ms)")
    ax.set_title(f"{os.path.basename(model)}: time per run", fontsize=10)
    ax.set_ylim(bottom=0)
    legend = ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot write the plot {path!r}: {_one_line(exc)}") from None
    finally:
        plt.close(fig)
    return [t.get_text() for t in legend.get_texts()]


def _write_json(path, data):
    import json
    try:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def cmd_bench(args):
    import numpy as np
    if args.plot:
        _check_plot_available()  # before minutes of timing, not after
    rss_start = _peak_rss()
    session = _session(args.model, args.threads)
    feeds, origin = _feeds(args, session)
    session.run(None, feeds)  # checks the feed before anything is timed
    flops = session.flops({k: v.shape for k, v in feeds.items()})
    engines = [("pyconv1x1", lambda: session.run(None, feeds))]
    if args.compare == "onnxruntime":
        ort_sess = _ort_session(args.model, session.threads)

        def run_ort():
            ort_sess.run(None, feeds)
        try:
            run_ort()
        except Exception as exc:
            raise CliError(f"onnxruntime cannot run {args.model!r}: "
                           f"{_one_line(exc)}") from None
        engines.append(("onnxruntime", run_ort))

    warm = {}
    for name, fn in engines:
        times = []
        timed(fn, max(1, args.warmup), times)
        warm[name] = min(times)
    # interleave: alternate blocks of about 50 ms so drift and noise hit both engines,
    # each started once the other engine's threads have gone idle
    slowest = max(warm.values())
    block = int(min(20, max(1, 0.05 / max(slowest, 1e-9))))
    if args.repeat is not None:
        block = min(block, max(1, args.repeat // 4))
    seconds = args.seconds if args.repeat is None else None
    times = {name: [] for name, _ in engines}
    rounds = {name: [] for name, _ in engines}  # per round: the block's median
    # progress: by runs with --repeat, else by tenths of a second of the planned time
    if args.repeat is not None:
        progress = Progress(args.repeat * len(engines), "bench runs")
    else:
        progress = Progress(int(seconds * len(engines) * 10), "bench (0.1 s)")
    start = time.perf_counter()
    try:
        _bench_loop(engines, block, args, seconds, times, rounds, progress, start)
    finally:
        progress.close()
    _bench_report(args, session, feeds, origin, flops, block, times, rounds, rss_start)
    return EXIT_OK


def _bench_loop(engines, block, args, seconds, times, rounds, progress, start):
    import numpy as np
    while True:
        for name, fn in engines:
            count = block
            if args.repeat is not None:
                count = min(block, args.repeat - len(times[name]))
            if count > 0:
                mine = []
                if len(engines) > 1:
                    settle()
                timed(fn, count, mine)
                times[name].extend(mine)
                rounds[name].append(float(np.median(mine)))
        if args.repeat is not None:
            progress.update(sum(len(t) for t in times.values()))
            if all(len(t) >= args.repeat for t in times.values()):
                break
        else:
            elapsed = time.perf_counter() - start
            progress.update(min(progress.total, int(elapsed * 10)))
            if (elapsed >= seconds * len(engines)
                    and all(len(t) >= 3 for t in times.values())):
                break


def _bench_report(args, session, feeds, origin, flops, block, times, rounds, rss_start):
    import numpy as np
    print(f"model: {args.model}")
    print(_kernels_line(session))
    shapes = ", ".join(f"{k}={_shape_text(v.shape)}" for k, v in feeds.items())
    print(f"input: {shapes} ({origin}); {_fmt_count(flops)} FLOPs per run; "
          f"warm-up {args.warmup}, interleaved blocks of {block}")
    _print_defaulted(args)
    rows = [("engine", "runs", "p50 ms", "p90 ms", "p99 ms", "min ms", "mean ms", "GF/s")]
    stats = {}
    for name, t in times.items():
        arr = np.asarray(t) * 1e3
        p10, p50, p90, p99 = (float(v) for v in np.percentile(arr, [10, 50, 90, 99]))
        rate = flops / p50 / 1e6 if flops and p50 > 0 else None
        stats[name] = {"runs": len(t), "p10_ms": p10, "p50_ms": p50, "p90_ms": p90,
                       "p99_ms": p99, "min_ms": float(arr.min()),
                       "mean_ms": float(arr.mean()), "gflops": rate}
        rows.append((name, len(t), f"{p50:.4f}", f"{p90:.4f}", f"{p99:.4f}",
                     f"{arr.min():.4f}", f"{arr.mean():.4f}",
                     "-" if rate is None else f"{rate:.2f}"))
    _table(rows)
    ratio = None
    pairs = [a / b for a, b in zip(rounds.get("onnxruntime", []), rounds["pyconv1x1"])
             if b > 0]
    if pairs:
        # blocks timed next to each other: the host's drift cancels out of each ratio
        ratio = float(np.median(pairs))
        print(f"ratio onnxruntime/pyconv1x1 (median over {len(pairs)} rounds of the two "
              f"engines' blocks): {ratio:.2f}x "
              f"({'faster' if ratio >= 1 else 'slower'} than onnxruntime)")
    peak = _peak_rss()
    if peak is not None:
        before = f" ({rss_start / 2**20:.1f} MiB before the session)" if rss_start else ""
        print(f"peak memory (RSS of this process): {peak / 2**20:.1f} MiB{before}")
    target_ms, target_label = args.target_ms, "--target-ms"
    if target_ms is None and "onnxruntime" in stats:
        target_ms, target_label = stats["onnxruntime"]["p50_ms"], "onnxruntime median"
    if args.json:
        _write_json(args.json, {
            "model": args.model, "kernel_variant": session.kernel_variant,
            "threads": session.threads,
            "inputs": {k: list(v.shape) for k, v in feeds.items()}, "input_origin": origin,
            "defaulted_dims": list(getattr(args, "defaulted_dims", None) or []),
            "flops_per_run": flops, "warmup": args.warmup, "block": block,
            "engines": stats,
            "times_ms": {n: [x * 1e3 for x in t] for n, t in times.items()},
            "ratio_onnxruntime_over_pyconv1x1": ratio,
            "peak_rss_bytes": peak, "rss_before_session_bytes": rss_start,
            "target_ms": target_ms})
        print(f"wrote {args.json}")
    if args.plot:
        _plot(args.plot, args.model, stats, target_ms, target_label)
        print(f"wrote {args.plot}")


# --------------------------------------------------------------------------------------
# parser and entry point
# --------------------------------------------------------------------------------------
def build_parser():
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Run, inspect, validate and time ONNX models built from 1x1 "
                    "convolutions.",
        epilog="Exit codes: 0 ok, 1 validation mismatch, 2 bad usage or a model or "
               "file that cannot be loaded or run, 3 internal error.")
    from . import __version__
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def model_arg(p):
        p.add_argument("model", metavar="MODEL",
                       help="path to an .onnx model or a compiled .pc1 plan")

    def threads_arg(p):
        p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="kernel threads (default: OMP_NUM_THREADS or every core)")

    def input_args(p, many=False):
        p.add_argument("--input", metavar="FILE" if not many else "FILE|FOLDER",
                       help="x.npy (single-input models) or x.npz keyed by input name"
                            + ("; a folder: one run per .npy / .npz file in it"
                               if many else "")
                            + "; default: random normal float32 of the declared shape "
                              "(see --shape, --dim)")
        p.add_argument("--seed", type=int, default=0,
                       help="seed of the random input (default 0)")
        p.add_argument("--shape", type=_shape_arg, action="append", metavar="INPUT=AxBx..",
                       help="shape of a random input, e.g. input=1x64x224x224 "
                            "(repeatable)")
        p.add_argument("--dim", type=_dim_arg, action="append", metavar="NAME=N",
                       help="size of a named dim of random inputs, e.g. batch=8 "
                            "(repeatable); named dims given neither way are 1, and the "
                            "output says which")

    p = sub.add_parser("run", help="run a model once, or over many inputs",
                       description="Run a model once; print each output's shape and "
                                   "statistics and the run time. Over many inputs (--input "
                                   "FOLDER, or --input X.npz --batch-size N): one run per "
                                   "file or batch, a progress bar on stderr when it is a "
                                   "terminal, and a summary (count, throughput).")
    model_arg(p)
    input_args(p, many=True)
    p.add_argument("--batch-size", type=_positive_int, default=None, metavar="N",
                   help="run the samples of the --input .npz (its arrays' first axis) N "
                        "at a time")
    p.add_argument("--output", metavar="Y.npz|FOLDER",
                   help="write the outputs to an .npz keyed by output name; over many "
                        "inputs, a folder (one .npy or .npz per input) or an .npz (with "
                        "--batch-size: the batches joined again)")
    threads_arg(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("info", help="inputs, outputs, fused layers, parameters, FLOPs",
                       description="Describe a model: inputs, outputs, each layer after "
                                   "fusion with its shape, parameters and FLOPs; for a "
                                   "model that cannot run, what keeps it from running "
                                   "(exit 2).")
    model_arg(p)
    p.add_argument("--all-problems", action="store_true",
                   help="for a model that cannot run, one line per offending node "
                        "(default: nodes with the same op and reason share a line)")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser(
        "validate", help="compare outputs with a reference",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Compare the model's outputs with a reference (exit 1 on mismatch):\n"
                    "  recorded     <stem>.inputs.npz / <stem>.outputs.npz beside the model\n"
                    "  onnxruntime  onnxruntime on the same input\n"
                    "  reference    onnx's ReferenceEvaluator (needs the onnx package)\n"
                    "  torch        the ONNX graph REBUILT WITH TORCH OPS (conv2d, relu,\n"
                    "               ...), node by node: it checks pyconv1x1 against\n"
                    "               PyTorch's kernels, not against your own nn.Module. For\n"
                    "               that, export and compare in Python with\n"
                    "               pyconv1x1.testing.assert_matches_torch(module, x)\n"
                    "  source       (a .pc1 plan) pyconv1x1 on the --source .onnx\n"
                    "A compiled .pc1 plan is checked against its recorded outputs, or,\n"
                    "with --source MODEL.onnx, against any reference run on that model.\n"
                    "A value passes when |a - b| <= atol + rtol * max|reference|.")
    model_arg(p)
    p.add_argument("--against", required=True,
                   choices=["recorded", "onnxruntime", "reference", "torch", "source"])
    p.add_argument("--source", metavar="MODEL.onnx", default=None,
                   help="for a .pc1 plan: the .onnx it was compiled from, which the "
                        "reference runs")
    input_args(p)
    p.add_argument("--rtol", type=_non_negative_float, default=1e-5,
                   help="relative tolerance, times max|reference| (default 1e-5)")
    p.add_argument("--atol", type=_non_negative_float, default=0.0,
                   help="absolute tolerance (default 0)")
    threads_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("bench", help="time session.run after a warm-up",
                       description="Time session.run after a warm-up: p50, p90, p99, min, "
                                   "mean, GF/s and the process's peak memory (RSS); "
                                   "optionally beside onnxruntime with the same thread "
                                   "count, runs interleaved in blocks. A progress bar on "
                                   "stderr when it is a terminal.")
    model_arg(p)
    input_args(p)
    threads_arg(p)
    p.add_argument("--warmup", type=_non_negative_int, default=3, metavar="K",
                   help="untimed runs first (default 3)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--repeat", type=_positive_int, default=None, metavar="R",
                     help="timed runs per engine")
    how.add_argument("--seconds", type=_positive_float, default=1.0, metavar="S",
                     help="measure for about S seconds per engine (default 1)")
    p.add_argument("--compare", choices=["onnxruntime"], default=None,
                   help="also time onnxruntime with the same intra_op_num_threads")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the statistics and every timing to FILE (JSON)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="plot the median per run with p10-p90 error bars and the target "
                        "line (needs matplotlib: pip install 'pyconv1x1[plot]')")
    p.add_argument("--target-ms", type=_positive_float, default=None, metavar="MS",
                   help="the target line of --plot (default: onnxruntime's median with "
                        "--compare onnxruntime, else none)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compile", help="write a compiled plan (.pc1)",
                       description="Check, fold and pack MODEL once and write a compiled "
                                   "plan that InferenceSession loads with numpy alone, "
                                   "its weights already packed (docs/PLAN_FORMAT.md). "
                                   "Refuses to overwrite the model or its external data.")
    model_arg(p)
    p.add_argument("-o", "--output", required=True, metavar="MODEL.pc1",
                   help="where to write the plan (not the model itself)")
    p.set_defaults(func=cmd_compile)
    return parser


def _same_file(a, b):
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return os.path.realpath(a) == os.path.realpath(b)


def cmd_compile(args):
    from . import planfile
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


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)  # usage errors: message and exit 2 (argparse)
    try:
        return args.func(args)
    except (Error, CliError) as exc:
        sys.stdout.flush()
        print(f"{PROG}: error: {_error_line(exc)}", file=sys.stderr)
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
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)} "
              "(set PYCONV1X1_DEBUG=1 for a traceback)", file=sys.stderr)
        return EXIT_INTERNAL
