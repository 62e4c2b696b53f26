"""Export a torch module with torch.onnx.export and check that pyconv1x1 runs it to
PyTorch's own output (`assert_matches_torch`). torch and onnx load inside the functions.
"""
import contextlib
import io
import logging
import os
import re
import tempfile
import warnings
from dataclasses import replace

import numpy as np

from .compare import DEFAULT_RTOL, MatchReport, compare_outputs

EXPORTERS = ("dynamo", "torchscript")

__all__ = ["assert_matches_torch", "ExportFailed", "EXPORTERS"]


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
        from ..errors import onnx_missing
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
        from .. import onnx_reader
        graph = onnx_reader.load(path)
    except Exception:  # the session reports loading problems itself
        return ()
    return tuple(n.op_type for n in graph.nodes)


def assert_matches_torch(module, example_input, exporter="dynamo", *,
                         rtol=DEFAULT_RTOL, atol=None, threads=None,
                         dynamic_shapes=None, dynamic_axes=None, check_inputs=(),
                         opset_version=None, input_names=None, output_names=None,
                         save_dir=None):
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

    from ..session import InferenceSession

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
