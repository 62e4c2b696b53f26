"""Run a model over a dask.array of inputs, on any Dask scheduler (threads, processes or
a dask.distributed cluster), shipping the model once per worker, never once per task.

    import dask.array as da
    from pyconv1x1.dask import predict
    x = da.from_zarr("images.zarr")                     # [N, C, H, W] float32
    y = predict("model.onnx", x)                        # dask.array [N, C', H', W']
    y.to_zarr("scores.zarr")

Install with `pip install "pyconv1x1[dask]"`; `import pyconv1x1` never imports this module.
"""
import collections
import threading

import numpy as np

from ._extras import require
from ._threads import available_cores, resolve_threads
from .errors import InputError
from .session import InferenceSession, _restore

dask = require("dask", "dask", "Dask")
da = require("dask.array", "dask", "Dask")

__all__ = ["predict", "task_threads"]

SESSION_CACHE_SIZE = 4
_sessions = collections.OrderedDict()  # (digest, isa, threads) -> session, newest last
_sessions_lock = threading.Lock()  # a worker may run several tasks at once


def predict(model, x, *, output=None, threads=None):
    """Run `model` over the dask array `x`, chunk by chunk along axis 0.

    model: an InferenceSession, or what InferenceSession takes (a path, bytes...).
    x: a dask.array of the input's type (float32; float16 or uint8/int8 where the
       model declares it) (or a numpy array, or anything da.asarray takes) shaped like
       the model's only input; its batch axis may be chunked as you like, the other axes
       are merged into one chunk each.
    output: the output name (default: the model's only output), or a list of names for
       a list of arrays computed by one run per chunk.
    threads: kernel threads per task; None: the task's share of its worker's cores,
       see task_threads().

    Returns a lazy dask.array (or a list of them) of each output's type with the batch chunks of
    `x`. The model travels as one graph key: a session made from a model file as its
    path and digest (each worker process loads the file once), any other as its compiled
    plan; Dask names it by the session's token, never by hashing its weights.
    """
    sess = model if isinstance(model, InferenceSession) else InferenceSession(model)
    if threads is not None:
        resolve_threads(threads)  # fail here, not in every task
    inputs = sess.get_inputs()
    if len(inputs) != 1:
        raise InputError(f"pyconv1x1.dask.predict runs models with one input; this one "
                         f"has {[i.name for i in inputs]}")
    in_name = inputs[0].name
    names = _output_names(sess, output)
    x = _as_batches(x, inputs[0], sess._dtype_of(in_name))
    shapes = _output_shapes(sess, in_name, names, x)
    # the model as one graph key: (source, isa, digest, token), source a path or plan
    # bytes; named by the session's token so that Dask hashes no weights
    _, (source, _, isa, digest, token) = sess.__reduce__()
    spec = dask.delayed((source, isa, digest, token), name=f"pyconv1x1-model-{token}",
                        traverse=False)
    if isinstance(output, str) or output is None:
        name = names[0]
        dtype = sess._dtype_of(name)
        meta = np.empty((0,) * len(shapes[name][0]), dtype)
        out_shapes = shapes[name]
        chunks = (x.chunks[0],) + tuple((d,) for d in out_shapes[0][1:])
        key = dask.base.tokenize(x.name, token, name, threads)
        return da.map_blocks(_run_block, x, spec, in_name, name, threads, chunks=chunks,
                             dtype=dtype, meta=meta, name=f"pyconv1x1-predict-{key}")
    blocks = x.to_delayed().reshape(-1)
    runs = [dask.delayed(_run_block_all, pure=True)(spec, block, in_name, names, threads)
            for block in blocks]
    result = []
    for k, name in enumerate(names):
        dtype = sess._dtype_of(name)
        meta = np.empty((0,) * len(shapes[name][0]), dtype)
        parts = [da.from_delayed(run[k], shape, dtype, meta=meta)
                 for run, shape in zip(runs, shapes[name])]
        result.append(da.concatenate(parts, axis=0))
    return result


def task_threads(threads=None):
    """Kernel threads for one task: `threads` if given; in a dask.distributed worker,
    its cores (affinity-aware) divided among the tasks it runs at once (`nthreads`),
    and no more than OMP_NUM_THREADS (which Dask's nanny sets to 1 unless configured
    otherwise); elsewhere (Dask's local schedulers run one task per core) 1. So N
    workers on N cores run N kernel threads in all."""
    if threads is not None:
        return resolve_threads(threads)
    try:
        from distributed import get_worker
        worker = get_worker()
    except (ImportError, ValueError):
        return 1
    state = getattr(worker, "state", worker)
    nthreads = max(1, int(getattr(state, "nthreads", 1) or 1))
    return max(1, min(resolve_threads(None), available_cores() // nthreads))


# --------------------------------------------------------------------------------------
# on the workers
# --------------------------------------------------------------------------------------
def _session(spec, threads):
    """This process's session for `spec` at `threads` threads: built once (loading the
    path, or the plan bytes), then reused by every task of every graph that runs the
    same model (the same digest: two sessions of one file share it)."""
    source, isa, digest, token = spec
    key = (digest, isa, threads)
    with _sessions_lock:
        sess = _sessions.get(key)
        if sess is None:
            sess = _restore(source, threads, isa, digest, token)
            _sessions[key] = sess
            while len(_sessions) > SESSION_CACHE_SIZE:
                _sessions.popitem(last=False)
        else:
            _sessions.move_to_end(key)
    return sess


def _run_block(block, spec, in_name, out_name, threads):
    sess = _session(spec, task_threads(threads))
    return sess.run([out_name], {in_name: np.ascontiguousarray(block)})[0]


def _run_block_all(spec, block, in_name, names, threads):
    sess = _session(spec, task_threads(threads))
    return tuple(sess.run(names, {in_name: np.ascontiguousarray(block)}))


# --------------------------------------------------------------------------------------
# on the client
# --------------------------------------------------------------------------------------
def _output_names(sess, output):
    known = [o.name for o in sess.get_outputs()]
    if output is None:
        if len(known) != 1:
            raise InputError(f"the model has outputs {known}: pass output= one name or a "
                             f"list of names")
        return known
    names = [output] if isinstance(output, str) else list(output)
    if not names:
        raise InputError(f"output= is an empty list; the model's outputs are {known}")
    for name in names:
        if name not in known:
            raise InputError(f"unknown output name {name!r}; the model's outputs are "
                             f"{known}")
    return names


def _as_batches(x, info, dtype):
    """x as a dask array of the input's rank and dtype, one chunk along every axis but
    0."""
    if not isinstance(x, da.Array):
        x = da.asarray(x)
    if x.ndim < 1 or any(np.isnan(d) for d in x.shape):
        raise InputError(f"input {info.name!r} needs a known shape with a batch axis, got "
                         f"{x.shape}")
    if x.dtype != dtype:
        raise InputError(f"input {info.name!r} has dtype {x.dtype}; expected {dtype.name} "
                         f"(the model's {info.type}; no silent casting: use "
                         f"x.astype(np.{dtype.name}))")
    decl = info.shape
    if decl is not None:
        if x.ndim != len(decl):
            raise InputError(f"input {info.name!r} has rank {x.ndim} (shape "
                             f"{list(x.shape)}); expected rank {len(decl)} {list(decl)}")
        for axis in range(1, x.ndim):
            want = decl[axis]
            if isinstance(want, int) and want != x.shape[axis]:
                raise InputError(f"input {info.name!r} has shape {list(x.shape)}; dim "
                                 f"{axis} must be {want} (declared {list(decl)})")
    if any(len(c) > 1 for c in x.chunks[1:]):
        x = x.rechunk({axis: -1 for axis in range(1, x.ndim)})
    return x


def _output_shapes(sess, in_name, names, x):
    """{output name: [shape per batch chunk]} from the shape plans, without running."""
    decl = sess.get_inputs()[0].shape
    shapes = {name: [] for name in names}
    for rows in x.chunks[0]:
        shape = (rows,) + tuple(x.shape[1:])
        if decl is not None and isinstance(decl[0], int) and decl[0] != rows:
            raise InputError(f"input {in_name!r} declares batch size {decl[0]}: chunk the "
                             f"batch axis by {decl[0]} (got a chunk of {rows})")
        plan = sess._plan({in_name: shape})
        for name in names:
            shapes[name].append(tuple(int(d) for d in plan.shapes[name]))
    return shapes
