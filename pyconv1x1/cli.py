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


def _kernels_line(session):
    variant = session.kernel_variant
    desc = VARIANT_DESCRIPTIONS.get(variant, "")
    threads = f"{session.threads} thread{'s' if session.threads != 1 else ''}"
    if not _threaded(session) and session.threads > 1:
        threads += " requested (no thread pool in this build: kernels run on 1)"
    return f"kernels: {variant}" + (f" ({desc})" if desc else "") + f", {threads}"


def _shape_text(shape):
    if shape is None:
        return "[?]"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _concrete_shape(name, shape):
    """A declared shape with named and unknown dims set to 1."""
    if shape is None:
        raise CliError(f"input {name!r} has no declared shape; give one with --input")
    return tuple(d if isinstance(d, int) and d >= 0 else 1 for d in shape)


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
def _random_feeds(session, seed):
    import numpy as np
    rng = np.random.default_rng(seed)
    return {arg.name: rng.standard_normal(_concrete_shape(arg.name, arg.shape),
                                          dtype=np.float32)
            for arg in session.get_inputs()}


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
    """(feeds, description of where they came from)."""
    if getattr(args, "input", None):
        return _file_feeds(session, args.input), f"from {args.input}"
    return _random_feeds(session, args.seed), f"random normal, seed {args.seed}"


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
                n = x[0]
                h, w = (1, x[2]) if first.spatial_rank == 1 else (x[2], x[3])
                ho, wo, _, _ = first.out_hw(h, w)
                geometry = (n, ho, wo)
            kind = f"chain[{len(step.layers)}]" if len(step.layers) > 1 else "conv"
            out_shape = None
            for j, layer in enumerate(step.layers):
                params = layer.cout * layer.k + layer.bias.size
                total_params += params
                if geometry is not None:
                    n, ho, wo = geometry
                    spatial = (ho, wo) if layer.spatial_rank == 2 else (wo,)
                    out_shape = (n, layer.cout) + spatial
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
        else:  # pragma: no cover - a step type this CLI does not know yet
            params = 0
            what = (type(step).__name__, "-", getattr(step, "name", "?"), "", "", "",
                    "", "-", "-")
            shapes[getattr(step, "output", "")] = None
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


def cmd_validate(args):
    session = _session(args.model, args.threads)
    if args.against == "recorded":
        if args.input:
            raise CliError("--input cannot be used with --against recorded: the recorded "
                           "outputs belong to the recorded inputs")
        stem = _stem(args.model)
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
                   "torch": "PyTorch"}[args.against]
    outputs = session.run(None, feeds)
    if reference is None:
        if args.against == "onnxruntime":
            reference = _reference_onnxruntime(args.model, feeds, session.threads)
        elif args.against == "reference":
            reference = _reference_evaluator(args.model, feeds)
        else:
            reference = _reference_torch(args.model, feeds)

    print(f"model: {args.model}")
    print(f"against: {against}; input {origin}; rtol {args.rtol:g}, atol {args.atol:g}")
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


def cmd_bench(args):
    import numpy as np
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
    start = time.perf_counter()
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
            if all(len(t) >= args.repeat for t in times.values()):
                break
        elif (time.perf_counter() - start >= seconds * len(engines)
              and all(len(t) >= 3 for t in times.values())):
            break

    print(f"model: {args.model}")
    print(_kernels_line(session))
    shapes = ", ".join(f"{k}={_shape_text(v.shape)}" for k, v in feeds.items())
    print(f"input: {shapes} ({origin}); {_fmt_count(flops)} FLOPs per run; "
          f"warm-up {args.warmup}, interleaved blocks of {block}")
    rows = [("engine", "runs", "median ms", "p90 ms", "min ms", "GF/s")]
    medians = {}
    for name, t in times.items():
        arr = np.asarray(t)
        med = float(np.median(arr))
        medians[name] = med
        rate = f"{flops / med / 1e9:.2f}" if flops and med > 0 else "-"
        rows.append((name, len(t), f"{med * 1e3:.4f}", f"{np.percentile(arr, 90) * 1e3:.4f}",
                     f"{arr.min() * 1e3:.4f}", rate))
    _table(rows)
    pairs = [a / b for a, b in zip(rounds.get("onnxruntime", []), rounds["pyconv1x1"])
             if b > 0]
    if pairs:
        # blocks timed next to each other: the host's drift cancels out of each ratio
        ratio = float(np.median(pairs))
        print(f"ratio onnxruntime/pyconv1x1 (median over {len(pairs)} rounds of the two "
              f"engines' blocks): {ratio:.2f}x "
              f"({'faster' if ratio >= 1 else 'slower'} than onnxruntime)")
    return EXIT_OK


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
        p.add_argument("model", metavar="MODEL", help="path to an .onnx model")

    def threads_arg(p):
        p.add_argument("--threads", type=_positive_int, default=None, metavar="N",
                       help="kernel threads (default: OMP_NUM_THREADS or every core)")

    def input_args(p):
        p.add_argument("--input", metavar="FILE",
                       help="x.npy (single-input models) or x.npz keyed by input name; "
                            "default: random normal float32 of the declared shape, "
                            "named dims = 1")
        p.add_argument("--seed", type=int, default=0,
                       help="seed of the random input (default 0)")

    p = sub.add_parser("run", help="run a model once and print its outputs' statistics",
                       description="Run a model once; print each output's shape and "
                                   "statistics and the run time.")
    model_arg(p)
    input_args(p)
    p.add_argument("--output", metavar="Y.npz", help="write the outputs to an .npz "
                                                     "keyed by output name")
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

    p = sub.add_parser("validate", help="compare outputs with a reference",
                       description="Compare the model's outputs with a reference. "
                                   "recorded: <stem>.inputs.npz / <stem>.outputs.npz "
                                   "beside the model. A value passes when |a - b| <= "
                                   "atol + rtol * max|reference|. Exit 1 on mismatch.")
    model_arg(p)
    p.add_argument("--against", required=True,
                   choices=["recorded", "onnxruntime", "reference", "torch"])
    input_args(p)
    p.add_argument("--rtol", type=_non_negative_float, default=1e-5,
                   help="relative tolerance, times max|reference| (default 1e-5)")
    p.add_argument("--atol", type=_non_negative_float, default=0.0,
                   help="absolute tolerance (default 0)")
    threads_arg(p)
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser("bench", help="time session.run after a warm-up",
                       description="Time session.run after a warm-up: median, p90, min "
                                   "and GF/s; optionally beside onnxruntime with the same "
                                   "thread count, runs interleaved in blocks.")
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
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("compile", help="write a compiled plan (.pc1)",
                       description="Check, fold and pack MODEL once and write a compiled "
                                   "plan that InferenceSession loads with numpy alone, "
                                   "memory-mapping the packed weights (docs/PLAN_FORMAT.md).")
    model_arg(p)
    p.add_argument("-o", "--output", required=True, metavar="MODEL.pc1",
                   help="where to write the plan")
    p.set_defaults(func=cmd_compile)
    return parser


def cmd_compile(args):
    from . import planfile
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
