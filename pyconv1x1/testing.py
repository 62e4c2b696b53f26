"""Validation helpers against PyTorch: export a torch module and check that pyconv1x1
runs it to PyTorch's own output (`assert_matches_torch`), rebuild an ONNX graph with
torch ops as an independent reference (`run_torch_reference`), and compare output sets
with a readable report (`compare_outputs`).

Importing this module needs neither torch nor onnx: both load inside the functions.
"""
import contextlib
import io
import logging
import math
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import numpy as np

from .errors import Error, InputError, ModelError, UnsupportedError

EXPORTERS = ("dynamo", "torchscript")

__all__ = ["assert_matches_torch", "run_torch_reference", "compare_outputs",
           "OutputError", "MatchReport", "ExportFailed", "EXPORTERS"]


# --------------------------------------------------------------------------------------
# comparing output sets
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class OutputError:
    """How far one output is from its reference.

    rel_err is max_abs_err / max|reference| (max_abs_err itself when the reference is
    all zeros); worst is the index of the element with the largest absolute error."""
    name: str
    shape: Tuple[int, ...]
    expected_shape: Tuple[int, ...]
    max_abs_err: float
    max_abs_ref: float
    rel_err: float
    worst: Optional[Tuple[int, ...]] = None
    got_value: Optional[float] = None
    expected_value: Optional[float] = None
    ok: bool = True
    problem: str = ""          # shape, NaN or dtype mismatch, said in words

    def describe(self):
        status = "ok" if self.ok else "MISMATCH"
        head = f"output {self.name!r} shape {list(self.shape)}"
        if self.problem:
            return f"{head}: {self.problem}  {status}"
        text = (f"{head}: max abs err {self.max_abs_err:.3g}, max |ref| "
                f"{self.max_abs_ref:.3g}, rel err {self.rel_err:.3g}")
        if self.worst is not None and self.max_abs_err > 0:
            text += (f", worst at {tuple(self.worst)} (got {self.got_value:.9g}, "
                     f"expected {self.expected_value:.9g})")
        return f"{text}  {status}"


@dataclass
class MatchReport:
    """What a comparison found: one OutputError per output, and how it was run."""
    outputs: List[OutputError]
    rtol: float
    atol: float
    exporter: Optional[str] = None
    threads: Optional[int] = None
    op_types: Tuple[str, ...] = ()     # ops of the exported graph, in file order
    runs: int = 1                      # input sets compared (several for dynamic shapes)

    @property
    def ok(self):
        return all(o.ok for o in self.outputs)

    @property
    def max_rel_err(self):
        return max((o.rel_err for o in self.outputs), default=0.0)

    @property
    def max_abs_err(self):
        return max((o.max_abs_err for o in self.outputs), default=0.0)

    def errors(self):
        """{output name: rel err} (the worst over every run)."""
        out = {}
        for o in self.outputs:
            out[o.name] = max(out.get(o.name, 0.0), o.rel_err)
        return out

    def format(self, title=None):
        where = []
        if self.exporter:
            where.append(f"exporter={self.exporter}")
        if self.threads is not None:
            where.append(f"threads={self.threads}")
        where.append(f"rtol={self.rtol:g}, atol={self.atol:g}")
        title = title or ("outputs match" if self.ok else "outputs do not match")
        lines = [f"{title} ({', '.join(where)}):"]
        lines += ["  " + o.describe() for o in self.outputs]
        if self.op_types:
            lines.append(f"  exported graph ops: {' '.join(self.op_types)}")
        return "\n".join(lines)

    __str__ = format


def _output_error(name, got, expected, rtol, atol):
    got = np.asarray(got)
    expected = np.asarray(expected)
    base = dict(name=name, shape=tuple(got.shape), expected_shape=tuple(expected.shape))
    if got.shape != expected.shape:
        return OutputError(**base, max_abs_err=math.inf, max_abs_ref=math.nan,
                           rel_err=math.inf, ok=False,
                           problem=f"shape {list(got.shape)}, expected "
                                   f"{list(expected.shape)}")
    if got.size == 0:
        return OutputError(**base, max_abs_err=0.0, max_abs_ref=0.0, rel_err=0.0)
    g = got.astype(np.float64)
    e = expected.astype(np.float64)
    nan_g, nan_e = np.isnan(g), np.isnan(e)
    if not np.array_equal(nan_g, nan_e):
        where = tuple(int(i) for i in np.argwhere(nan_g != nan_e)[0])
        return OutputError(**base, max_abs_err=math.inf, max_abs_ref=math.nan,
                           rel_err=math.inf, worst=where, ok=False,
                           problem=f"NaN in one but not the other, first at {where} "
                                   f"(got {g[where]!r}, expected {e[where]!r})")
    inf_g, inf_e = np.isinf(g), np.isinf(e)
    if not np.array_equal(inf_g & (g > 0), inf_e & (e > 0)) or \
            not np.array_equal(inf_g & (g < 0), inf_e & (e < 0)):
        where = tuple(int(i) for i in np.argwhere((g != e) & (inf_g | inf_e))[0])
        return OutputError(**base, max_abs_err=math.inf, max_abs_ref=math.nan,
                           rel_err=math.inf, worst=where, ok=False,
                           problem=f"Inf in one but not the other, first at {where} "
                                   f"(got {g[where]!r}, expected {e[where]!r})")
    finite = np.isfinite(e)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both are inf
        diff = np.where(finite, np.abs(g - e), 0.0)
    flat = int(np.argmax(diff))
    worst = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    max_abs = float(diff[worst])
    max_ref = float(np.max(np.abs(e[finite]))) if finite.any() else 0.0
    rel = max_abs / max_ref if max_ref > 0 else max_abs
    # the bound scales with the output's magnitude: a relative error per tensor, as
    # the project's "rel err <= 1e-5" means (not per element, which near-zero values
    # would make meaningless)
    ok = max_abs <= atol + rtol * max_ref
    return OutputError(**base, max_abs_err=max_abs, max_abs_ref=max_ref, rel_err=rel,
                       worst=worst, got_value=float(g[worst]),
                       expected_value=float(e[worst]), ok=bool(ok))


def compare_outputs(got, expected, rtol=1e-5, atol=None, names=None):
    """Compare two output sets; returns a MatchReport (see its `.ok` and `.format()`).

    got, expected: dicts name -> array, or sequences of arrays in the same order
    (names then labels them). An output passes when
    max|got - expected| <= atol + rtol * max|expected| over the whole tensor, NaN and
    Inf in the same places. atol=None means 0, except for an all-zero reference, where
    it is rtol (so an exact 0 still compares sensibly).
    """
    if isinstance(got, dict) != isinstance(expected, dict):
        raise TypeError("got and expected must both be dicts or both be sequences")
    if isinstance(expected, dict):
        missing = [k for k in expected if k not in got]
        if missing:
            raise AssertionError(f"outputs {missing} are missing; got {list(got)}")
        pairs = [(k, got[k], expected[k]) for k in expected]
    else:
        got, expected = list(got), list(expected)
        if len(got) != len(expected):
            raise AssertionError(f"{len(got)} outputs, expected {len(expected)}")
        names = list(names) if names is not None else [f"#{i}" for i in range(len(got))]
        pairs = list(zip(names, got, expected))
    outputs = []
    for name, g, e in pairs:
        tol = atol
        if tol is None:
            e_arr = np.asarray(e)
            all_zero = e_arr.size and not np.any(e_arr[np.isfinite(e_arr)])
            tol = rtol if all_zero else 0.0
        outputs.append(_output_error(name, g, e, rtol, tol))
    return MatchReport(outputs=outputs, rtol=rtol, atol=0.0 if atol is None else atol)


# --------------------------------------------------------------------------------------
# exporting torch modules
# --------------------------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class ExportFailed(RuntimeError):
    """torch.onnx.export itself failed: a limitation of the exporter, not of pyconv1x1.
    `.exporter` names it; `.cause` is the exporter's exception; `.log` what it printed."""

    def __init__(self, exporter, cause, log=""):
        self.exporter = exporter
        self.cause = cause
        self.log = log
        parts, seen, exc = [], set(), cause
        while exc is not None and id(exc) not in seen and len(parts) < 4:
            seen.add(id(exc))
            lines = _ANSI.sub("", str(exc)).strip().splitlines()
            parts.append(f"{type(exc).__name__}: {lines[0] if lines else ''}")
            exc = exc.__cause__ or exc.__context__
        super().__init__(f"torch.onnx.export (exporter={exporter}) failed: "
                         + "; caused by ".join(parts))


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporters' progress prints, warnings and log lines; yields the
    captured text so that a failure can show it."""
    buf = io.StringIO()
    loggers = [logging.getLogger(n) for n in ("torch.onnx", "torch.export", "onnxscript",
                                              "onnx_ir", "torch._dynamo",
                                              "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(buf), \
                contextlib.redirect_stderr(buf):
            warnings.simplefilter("ignore")
            yield buf
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _as_tuple(example_input):
    if isinstance(example_input, (tuple, list)):
        return tuple(example_input)
    return (example_input,)


def _to_tensor(torch, x):
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.array(x, dtype=np.float32, copy=True))
    if isinstance(x, torch.Tensor):
        return x.detach()
    raise TypeError(f"example inputs must be torch tensors or numpy arrays, got "
                    f"{type(x).__name__}")


def _flatten_outputs(torch, out):
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        flat = []
        for o in out:
            flat.extend(_flatten_outputs(torch, o))
        return flat
    if isinstance(out, dict):
        flat = []
        for o in out.values():
            flat.extend(_flatten_outputs(torch, o))
        return flat
    raise TypeError(f"the module returned {type(out).__name__}; expected tensors, or "
                    "tuples, lists or dicts of them")


def _names(prefix, count):
    return [prefix] if count == 1 else [f"{prefix}_{i}" for i in range(count)]


def _dynamic_axes_from_shapes(dynamic_shapes, input_names):
    """A torch.export dynamic_shapes spec -> the TorchScript exporter's dynamic_axes."""
    if dynamic_shapes is None:
        return None
    if isinstance(dynamic_shapes, dict):
        specs = list(dynamic_shapes.values())
    else:
        specs = list(dynamic_shapes)
    axes = {}
    for name, spec in zip(input_names, specs):
        if not spec:
            continue
        items = spec.items() if isinstance(spec, dict) else enumerate(spec)
        dims = {}
        for axis, dim in items:
            if dim is None:
                continue
            label = getattr(dim, "__name__", None)
            dims[int(axis)] = label if isinstance(label, str) and label != "DYNAMIC" \
                else f"{name}_dim{axis}"
        if dims:
            axes[name] = dims
    return axes or None


def _export(torch, module, args, path, exporter, input_names, output_names,
            dynamic_axes, dynamic_shapes, opset_version):
    kwargs = dict(input_names=input_names, output_names=output_names)
    if opset_version is not None:
        kwargs["opset_version"] = opset_version
    if exporter == "dynamo":
        if dynamic_shapes is not None:
            kwargs["dynamic_shapes"] = dynamic_shapes
        elif dynamic_axes is not None:
            kwargs["dynamic_axes"] = dynamic_axes
        kwargs.update(dynamo=True, external_data=True)
    else:
        if dynamic_axes is None and dynamic_shapes is not None:
            dynamic_axes = _dynamic_axes_from_shapes(dynamic_shapes, input_names)
        if dynamic_axes is not None:
            kwargs["dynamic_axes"] = dynamic_axes
        kwargs["dynamo"] = False
    import importlib.util
    if importlib.util.find_spec("onnx") is None:  # torch.onnx.export writes with it
        from .errors import onnx_missing
        raise onnx_missing("exporting with torch.onnx.export")
    with _quiet_exporter() as log:
        try:
            torch.onnx.export(module, args, path, **kwargs)
        except Exception as exc:  # the exporter's own failure, not ours
            raise ExportFailed(exporter, exc, log.getvalue()) from exc
    if not os.path.isfile(path):
        raise ExportFailed(exporter, RuntimeError(f"no file written at {path}"),
                           log.getvalue())


def _graph_op_types(path):
    try:
        from . import onnx_reader
        graph = onnx_reader.load(path)
    except Exception:  # the session reports loading problems itself
        return ()
    return tuple(n.op_type for n in graph.nodes)


def assert_matches_torch(module, example_input, exporter="dynamo", *, rtol=1e-5,
                         atol=None, threads=None, dynamic_shapes=None, dynamic_axes=None,
                         check_inputs=(), opset_version=None, input_names=None,
                         output_names=None, save_dir=None):
    """Export `module` with torch.onnx.export, run it with pyconv1x1 and compare with
    the module's own output. Raises AssertionError with a per-output report on a
    mismatch; returns a MatchReport (a dict exporter -> MatchReport for
    exporter="both").

    module: a torch.nn.Module, put in eval mode for the duration (its training flags
        are restored afterwards) and run under torch.no_grad().
    example_input: a tensor or numpy array, or a tuple of them (one per forward arg).
    exporter: "dynamo", "torchscript" or "both".
    rtol, atol: pass when max|ours - torch| <= atol + rtol * max|torch| per output.
    threads: pyconv1x1.InferenceSession threads (None: all cores).
    dynamic_axes: {input/output name: {axis: dim name}} for both exporters;
    dynamic_shapes: torch.export's spec for the dynamo exporter (converted to
        dynamic_axes for the TorchScript one when dynamic_axes is not given).
    check_inputs: more example inputs run through the SAME session after the first
        (e.g. other batch sizes for a model exported with a dynamic batch).
    input_names / output_names: graph names (default "input"/"output", or
        "input_0", "input_1"... when there are several).
    save_dir: export into this folder and keep the files (default: a temporary one).

    torch.onnx.export's own failures raise ExportFailed (a RuntimeError), so that
    callers can tell an exporter limitation from a pyconv1x1 mismatch; a model that
    pyconv1x1 refuses raises its pyconv1x1.Error.
    """
    if exporter == "both":
        return {name: assert_matches_torch(
                    module, example_input, name, rtol=rtol, atol=atol, threads=threads,
                    dynamic_shapes=dynamic_shapes, dynamic_axes=dynamic_axes,
                    check_inputs=check_inputs, opset_version=opset_version,
                    input_names=input_names, output_names=output_names,
                    save_dir=None if save_dir is None else os.path.join(save_dir, name))
                for name in EXPORTERS}
    if exporter not in EXPORTERS:
        raise ValueError(f"exporter must be one of {EXPORTERS + ('both',)}, got "
                         f"{exporter!r}")
    import torch

    from .session import InferenceSession

    input_sets = [_as_tuple(example_input)] + [_as_tuple(x) for x in check_inputs]
    input_sets = [tuple(_to_tensor(torch, x) for x in s) for s in input_sets]
    n_in = len(input_sets[0])
    if any(len(s) != n_in for s in input_sets):
        raise ValueError("every entry of check_inputs must have as many tensors as "
                         "example_input")

    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        with torch.no_grad():
            references = [[t.detach().cpu().numpy().astype(np.float32, copy=True)
                           for t in _flatten_outputs(torch, module(*s))]
                          for s in input_sets]
            n_out = len(references[0])
            input_names = list(input_names or _names("input", n_in))
            output_names = list(output_names or _names("output", n_out))
            if len(input_names) != n_in or len(output_names) != n_out:
                raise ValueError(f"{len(input_names)} input names for {n_in} inputs, "
                                 f"{len(output_names)} output names for {n_out} outputs")
            with contextlib.ExitStack() as stack:
                if save_dir is None:
                    folder = stack.enter_context(
                        tempfile.TemporaryDirectory(prefix="pyconv1x1-"))
                else:
                    folder = os.fspath(save_dir)
                    os.makedirs(folder, exist_ok=True)
                path = os.path.join(folder, f"model_{exporter}.onnx")
                _export(torch, module, input_sets[0], path, exporter, input_names,
                        output_names, dynamic_axes, dynamic_shapes, opset_version)
                op_types = _graph_op_types(path)
                session = InferenceSession(path, threads=threads)
                graph_in = [a.name for a in session.get_inputs()]
                graph_out = [a.name for a in session.get_outputs()]
                reports = []
                for inputs, ref in zip(input_sets, references):
                    feed = {name: np.ascontiguousarray(t.cpu().numpy(), np.float32)
                            for name, t in zip(graph_in, inputs)}
                    if len(graph_in) != len(inputs):
                        raise AssertionError(
                            f"the exported graph has inputs {graph_in}; the module takes "
                            f"{len(inputs)} tensor(s)")
                    got = session.run(None, feed)
                    reports.append(compare_outputs(got, ref, rtol=rtol, atol=atol,
                                                   names=graph_out))
    finally:
        for m, mode in modes:
            m.training = mode

    outputs = []
    for i, rep in enumerate(reports):
        for o in rep.outputs:
            if len(reports) > 1:
                o = _relabel(o, f"{o.name} [input set {i}: "
                                f"{[list(t.shape) for t in input_sets[i]]}]")
            outputs.append(o)
    report = MatchReport(outputs=outputs, rtol=rtol, atol=reports[0].atol,
                         exporter=exporter, threads=session.threads, op_types=op_types,
                         runs=len(reports))
    if not report.ok:
        raise AssertionError("pyconv1x1 does not match PyTorch: " + report.format(
            title=f"{type(module).__name__} exported with torch.onnx.export"))
    return report


def _relabel(o, name):
    return replace(o, name=name)


# --------------------------------------------------------------------------------------
# the ONNX graph rebuilt with torch ops
# --------------------------------------------------------------------------------------
def _conv_pads(node, x_shape, w_shape, attrs):
    """Explicit (begin..., end...) pads of a Conv, auto_pad resolved."""
    spatial = len(w_shape) - 2
    kernel = tuple(w_shape[2:])
    strides = tuple(attrs.get("strides") or (1,) * spatial)
    dil = tuple(attrs.get("dilations") or (1,) * spatial)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(x_shape[2:], kernel, strides, dil):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                begin.append(small)
                end.append(big)
            else:
                begin.append(big)
                end.append(small)
        return strides, dil, tuple(begin) + tuple(end)
    if auto_pad == "VALID":
        return strides, dil, (0,) * (2 * spatial)
    if auto_pad not in ("NOTSET", ""):
        raise ModelError(f"{node.label()}: auto_pad {auto_pad!r} is not an ONNX value")
    pads = tuple(attrs.get("pads") or (0,) * (2 * spatial))
    if len(pads) != 2 * spatial or len(strides) != spatial or len(dil) != spatial:
        raise ModelError(f"{node.label()}: strides {list(strides)}, dilations "
                         f"{list(dil)} and pads {list(pads)} do not fit a {spatial}-D "
                         "kernel")
    return strides, dil, pads


def _ref_conv(torch, F, node, args):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    if w.dim() not in (3, 4):
        raise UnsupportedError(f"{node.label()}: {w.dim() - 2}-D convolution; the torch "
                               "reference runs 1-D and 2-D convolutions")
    strides, dil, pads = _conv_pads(node, tuple(x.shape), tuple(w.shape), node.attrs)
    spatial = w.dim() - 2
    begin, end = pads[:spatial], pads[spatial:]
    # F.pad takes (last dim begin, last dim end, previous dim begin, ...)
    torch_pads = []
    for b_, e_ in zip(reversed(begin), reversed(end)):
        torch_pads += [int(b_), int(e_)]
    if any(torch_pads):
        x = F.pad(x, torch_pads)
    group = int(node.attrs.get("group", 1))
    conv = F.conv1d if spatial == 1 else F.conv2d
    return [conv(x, w, b, stride=tuple(strides), padding=0, dilation=tuple(dil),
                 groups=group)]


def _scalar(t):
    return float(t.reshape(-1)[0]) if t is not None and t.numel() else None


def _ref_clip(torch, F, node, args, opset):
    x = args[0]
    if opset < 11:
        lo = node.attrs.get("min")
        hi = node.attrs.get("max")
    else:
        lo = _scalar(args[1]) if len(args) > 1 and args[1] is not None else None
        hi = _scalar(args[2]) if len(args) > 2 and args[2] is not None else None
    if lo is None and hi is None:
        return [x.clone()]
    return [torch.clamp(x, min=lo, max=hi)]


def _ref_batch_norm(torch, F, node, args):
    if node.attrs.get("training_mode", 0):
        raise UnsupportedError(f"{node.label()}: training_mode=1; the reference runs "
                               "inference BatchNormalization")
    if any(o for o in node.outputs[1:]):
        raise UnsupportedError(f"{node.label()}: running mean/var outputs requested "
                               "(training form)")
    x, scale, bias, mean, var = args[:5]
    eps = float(node.attrs.get("epsilon", 1e-5))
    return [F.batch_norm(x, mean, var, weight=scale, bias=bias, training=False, eps=eps)]


def _ref_constant(torch, node):
    a = node.attrs
    if "value" in a:
        value = np.array(a["value"])
    elif "value_float" in a:
        value = np.array(a["value_float"], dtype=np.float32)
    elif "value_floats" in a:
        value = np.array(a["value_floats"], dtype=np.float32)
    elif "value_int" in a:
        value = np.array(a["value_int"], dtype=np.int64)
    elif "value_ints" in a:
        value = np.array(a["value_ints"], dtype=np.int64)
    else:
        raise UnsupportedError(f"{node.label()}: Constant with attributes "
                               f"{sorted(a)}; the reference reads value, value_float(s)"
                               " and value_int(s)")
    return [torch.from_numpy(np.array(value, copy=True))]


REFERENCE_OPS = ("Add", "BatchNormalization", "Clip", "Constant", "Conv", "Div",
                 "Dropout", "Erf", "Gelu", "HardSigmoid", "HardSwish", "Identity",
                 "LeakyRelu", "Mul", "PRelu", "Relu", "Sigmoid", "Tanh")


def run_torch_reference(model, feeds, base_dir=None):
    """Run an ONNX model's graph rebuilt with torch ops, in float32 on the CPU.

    model: path, bytes or onnx.ModelProto (read with pyconv1x1's own parser, external
        data from the model's folder or base_dir).
    feeds: dict input name -> numpy array.
    Returns {graph output name: numpy float32 array}.

    An independent check of pyconv1x1's kernels and graph rewrites: every node runs as
    the plain torch op (F.conv2d/conv1d with F.pad for explicit or auto pads,
    F.batch_norm, clamp, leaky_relu, broadcasting add/mul), with no folding or fusion.
    Ops outside REFERENCE_OPS raise pyconv1x1.UnsupportedError listing every one.
    """
    import torch
    import torch.nn.functional as F

    from . import check, onnx_reader

    graph = onnx_reader.load(model, base_dir=base_dir)
    problems = []
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.label()}: domain {node.domain!r}")
        elif node.op_type not in REFERENCE_OPS:
            problems.append(f"{node.label()}: op {node.op_type}")
    if problems:
        raise UnsupportedError(
            "the torch reference cannot run this model (it runs "
            f"{', '.join(REFERENCE_OPS)}):\n  " + "\n  ".join(problems))
    order = check.topological_order(graph)

    if not isinstance(feeds, dict):
        raise InputError(f"feeds must be a dict of name -> numpy array, got "
                         f"{type(feeds).__name__}")
    expected = [v.name for v in graph.inputs]
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        raise InputError(f"missing input(s) {missing}, unknown input(s) {extra}; the "
                         f"model's inputs are {expected}")
    env = {}
    for name, arr in graph.constants.items():
        # float constants run as float32, as the runtime itself reads them
        dtype = np.float32 if arr.dtype.kind == "f" else arr.dtype
        env[name] = torch.from_numpy(np.array(arr, dtype=dtype, copy=True))
    for name in expected:
        arr = feeds[name]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise InputError(f"input {name!r} must be a float numpy array, got "
                             f"{getattr(arr, 'dtype', type(arr).__name__)}")
        decl = next(v.shape for v in graph.inputs if v.name == name)
        if decl is not None and (arr.ndim != len(decl) or any(
                isinstance(d, int) and d != n for d, n in zip(decl, arr.shape))):
            raise InputError(f"input {name!r} has shape {list(arr.shape)}; the model "
                             f"declares {list(decl)}")
        env[name] = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))

    with torch.no_grad():
        for i in order:
            node = graph.nodes[i]
            args = [env[n] if n else None for n in node.inputs]
            for a in args:
                if a is not None and a.is_floating_point() and a.dtype != torch.float32:
                    raise UnsupportedError(f"{node.label()}: {a.dtype} tensor; the "
                                           "reference runs float32")
            try:
                out = _run_reference_node(torch, F, node, args, graph.opset)
            except Error:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError, AttributeError,
                    ArithmeticError) as exc:
                raise ModelError(f"{node.label()}: torch cannot run it with inputs "
                                 f"{[None if a is None else list(a.shape) for a in args]}"
                                 f" and attributes {dict(node.attrs)}: {exc}") from None
            for name, value in zip(node.outputs, out):
                if name:
                    env[name] = value
    return {v.name: env[v.name].numpy().astype(np.float32, copy=True)
            for v in graph.outputs}


def _ref_activation(torch, F, node, args):
    """The element-wise activations as torch ops (None: not one of them)."""
    op, x = node.op_type, args[0]
    if op == "Sigmoid":
        return torch.sigmoid(x)
    if op == "Tanh":
        return torch.tanh(x)
    if op == "Erf":
        return torch.erf(x)
    if op == "HardSwish":
        return F.hardswish(x)
    if op == "HardSigmoid":
        alpha = float(node.attrs.get("alpha", 0.2))
        beta = float(node.attrs.get("beta", 0.5))
        return torch.clamp(x * alpha + beta, 0.0, 1.0)
    if op == "PRelu":
        return torch.where(x < 0, x * args[1], x)
    if op == "Gelu":
        return F.gelu(x, approximate=str(node.attrs.get("approximate", "none")))
    return None


def _run_reference_node(torch, F, node, args, opset):
    """One ONNX node as torch ops -> the list of its outputs."""
    op = node.op_type
    if op == "Conv":
        return _ref_conv(torch, F, node, args)
    if op == "Relu":
        return [torch.relu(args[0])]
    if op == "LeakyRelu":
        return [F.leaky_relu(args[0], float(node.attrs.get("alpha", 0.01)))]
    if op == "Clip":
        return _ref_clip(torch, F, node, args, opset)
    unary = _ref_activation(torch, F, node, args)
    if unary is not None:
        return [unary]
    if op == "BatchNormalization":
        return _ref_batch_norm(torch, F, node, args)
    if op == "Add":
        return [args[0] + args[1]]
    if op == "Mul":
        return [args[0] * args[1]]
    if op == "Div":
        return [args[0] / args[1]]
    if op == "Constant":
        return _ref_constant(torch, node)
    if op == "Dropout":
        if len(args) > 2 and args[2] is not None and bool(args[2].reshape(-1)[0]):
            raise UnsupportedError(f"{node.label()}: training_mode is true; the reference "
                                   "runs inference Dropout")
        return [args[0].clone(), torch.ones(args[0].shape, dtype=torch.bool)]
    return [args[0].clone()]  # Identity
