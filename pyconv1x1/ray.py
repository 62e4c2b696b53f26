"""A Ray Data predictor: run a model over a Dataset with `map_batches`, one session per
actor, each actor's kernels on the CPUs Ray gave it.

    import ray
    from pyconv1x1.ray import Predictor
    ds = ray.data.read_numpy("s3://bucket/images/")      # column "data": [C, H, W] rows
    scores = ds.map_batches(Predictor, fn_constructor_args=("model.onnx",),
                            batch_format="numpy", batch_size=64,
                            concurrency=4, num_cpus=2)

Install with `pip install "pyconv1x1[ray]"`; `import pyconv1x1` never imports this module.
"""
import numpy as np

from ._extras import require
from ._threads import available_cores, resolve_threads
from .errors import InputError
from .session import InferenceSession, _restore

ray = require("ray", "ray", "Ray Data")

__all__ = ["Predictor", "actor_threads"]


def actor_threads(threads=None):
    """Kernel threads for this actor or task: `threads` if given, else the CPUs Ray
    assigned it (`num_cpus`, rounded down, at least 1) and no more than the cores this
    process may use; outside Ray, every available core (as threads=None)."""
    if threads is not None:
        return resolve_threads(threads)
    assigned = None
    if ray.is_initialized():  # (get_runtime_context() would start a local Ray instance)
        try:
            assigned = ray.get_runtime_context().get_assigned_resources().get("CPU")
        except Exception:  # no worker context: the plain default
            assigned = None
    if not assigned:
        return resolve_threads(None)
    return max(1, min(int(assigned), available_cores()))


class Predictor:
    """A callable class for `Dataset.map_batches(Predictor, batch_format="numpy",
    fn_constructor_args=(model,), concurrency=..., num_cpus=...)`.

    model: a model path (each actor loads it once, in __init__), an InferenceSession
       (pickled to each actor: as its path and digest when made from a file), or bytes.
    columns: {model input name: batch column}; by default each input reads the column
       of its own name, and a one-input model reads the batch's only column (e.g. the
       "data" column of ray.data.from_numpy / read_numpy) when that name is missing.
    outputs: output names to compute (default all); columns are named like them.
    keep: batch columns copied to the result as they are (ids, file names...).
    threads: kernel threads per actor; None: the actor's num_cpus (actor_threads()).

    Each call returns {output name: array [batch, ...]} (+ the kept columns), of the
    output's type (float32; float16 or uint8/int8 as the model declares); the columns
    must hold the input's type (float16 for a model.half() export: no silent casting).
    """

    def __init__(self, model, *, columns=None, outputs=None, keep=(), threads=None):
        threads = actor_threads(threads)
        if isinstance(model, InferenceSession):
            if model.threads != threads:  # a copy: never retune a session others hold
                _, (source, _, isa, digest, token) = model.__reduce__()
                model = _restore(source, threads, isa, digest, token)
            self.session = model
        else:
            self.session = InferenceSession(model, threads=threads)
        self.inputs = [i.name for i in self.session.get_inputs()]
        self.columns = dict(columns or {})
        unknown = [n for n in self.columns if n not in self.inputs]
        if unknown:
            raise InputError(f"columns= names unknown input(s) {unknown}; the model's "
                             f"inputs are {self.inputs}")
        known = [o.name for o in self.session.get_outputs()]
        self.outputs = known if outputs is None else (
            [outputs] if isinstance(outputs, str) else list(outputs))
        for name in self.outputs:
            if name not in known:
                raise InputError(f"unknown output name {name!r}; the model's outputs "
                                 f"are {known}")
        self.keep = [keep] if isinstance(keep, str) else list(keep)

    def __call__(self, batch):
        if not isinstance(batch, dict):
            raise InputError(f"Predictor takes numpy batches (map_batches(..., "
                             f"batch_format=\"numpy\")), got {type(batch).__name__}")
        feed = {name: self._column(batch, name) for name in self.inputs}
        result = dict(zip(self.outputs, self.session.run(self.outputs, feed)))
        for column in self.keep:
            if column not in batch:
                raise InputError(f"keep= names column {column!r}; the batch has "
                                 f"{sorted(batch)}")
            result[column] = batch[column]
        return result

    def _column(self, batch, name):
        column = self.columns.get(name, name)
        if column not in batch:
            others = [c for c in batch if c not in self.keep]
            if name in self.columns or len(self.inputs) != 1 or len(others) != 1:
                raise InputError(f"the batch has no column {column!r} for input {name!r}; "
                                 f"its columns are {sorted(batch)}: map them with "
                                 f"columns={{{name!r}: 'column'}}")
            column = others[0]
        arr = batch[column]
        if not isinstance(arr, np.ndarray) or arr.dtype == object:
            raise InputError(f"column {column!r} must hold float32 tensors (or the "
                             f"input's float16 / uint8 / int8 type) of one shape "
                             f"(got {getattr(arr, 'dtype', type(arr).__name__)}): rows of "
                             f"different shapes need batch_size=1 or resizing")
        return arr
