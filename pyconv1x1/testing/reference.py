"""The references a model's outputs are checked against, behind one call:
`run_reference(kind, model, feeds)` -> {output name: array}, for kind in REFERENCES.
Each engine loads inside the call; a missing engine, or one that cannot load or run the
model, raises ReferenceFailed (a pyconv1x1.Error) on one line, naming `label` (what the
caller calls this reference, e.g. the command-line option that asked for it).
"""
import importlib.util

from ..errors import Error, onnx_missing, one_line

REFERENCES = {
    "onnxruntime": "onnxruntime",
    "reference": "onnx ReferenceEvaluator",
    "torch": "PyTorch (the ONNX graph rebuilt with torch ops; for your own module: "
             "pyconv1x1.testing.assert_matches_torch)",
    "source": "pyconv1x1 on the source model",
}

__all__ = ["REFERENCES", "ReferenceFailed", "run_reference", "ort_session"]


class ReferenceFailed(Error):
    """A reference engine is not installed, or cannot load or run the model."""


def ort_session(model, threads, label="onnxruntime"):
    """An onnxruntime CPU session with `threads` intra-op threads, one inter-op."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise ReferenceFailed(f"{label} needs onnxruntime, which is not installed "
                              "(pip install onnxruntime)") from None
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ReferenceFailed(f"onnxruntime cannot load {model!r}: "
                              f"{one_line(exc)}") from None


def _onnxruntime(model, feeds, threads, label):
    sess = ort_session(model, threads, label)
    try:
        results = sess.run(None, feeds)
    except Exception as exc:
        raise ReferenceFailed(f"onnxruntime cannot run {model!r}: {one_line(exc)}") \
            from None
    return {o.name: r for o, r in zip(sess.get_outputs(), results)}


def _evaluator(model, feeds, threads, label):
    try:
        from onnx.reference import ReferenceEvaluator
    except ImportError as exc:
        if importlib.util.find_spec("onnx") is None:
            raise onnx_missing(f"{label} (onnx's ReferenceEvaluator)") from None
        raise ReferenceFailed(f"{label} needs onnx.reference: {exc}") from None
    try:
        evaluator = ReferenceEvaluator(model)
        results = evaluator.run(None, feeds)
    except Exception as exc:
        raise ReferenceFailed(f"onnx's ReferenceEvaluator cannot run {model!r}: "
                              f"{one_line(exc)}") from None
    return dict(zip(evaluator.output_names, results))


def _torch(model, feeds, threads, label):
    try:
        import torch  # noqa: F401  (here, to say so if it is missing)
    except ImportError as exc:
        raise ReferenceFailed(f"{label} needs PyTorch, which cannot be imported: "
                              f"{one_line(exc)}") from None
    from .torch_graph import run_torch_reference
    try:
        return dict(run_torch_reference(model, feeds))
    except Error:
        raise
    except Exception as exc:
        raise ReferenceFailed(f"the PyTorch reference cannot run {model!r}: "
                              f"{type(exc).__name__}: {one_line(exc)}") from None


def _source(model, feeds, threads, label):
    from ..session import InferenceSession
    sess = InferenceSession(model, threads=threads)
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


_RUNNERS = {"onnxruntime": _onnxruntime, "reference": _evaluator, "torch": _torch,
            "source": _source}


def run_reference(kind, model, feeds, threads=None, label=None):
    """{output name: array} of `model` (a path, or bytes) run on `feeds` by the
    reference `kind` (a key of REFERENCES; "source" is pyconv1x1 itself, for a compiled
    plan checked against the .onnx it came from). threads: onnxruntime's intra-op
    threads and pyconv1x1's (None: their defaults)."""
    if kind not in _RUNNERS:
        raise ValueError(f"reference must be one of {list(_RUNNERS)}, got {kind!r}")
    return _RUNNERS[kind](model, feeds, threads, label or f"the {kind} reference")
