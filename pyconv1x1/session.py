"""InferenceSession: the public entry point, shaped like onnxruntime's."""
import _thread
import collections
import os

import numpy as np

from . import _backend, planfile
from ._fastrun import SessionBase
from ._threads import resolve_threads
from .errors import Error, InputError, ModelError
from .plan import KernelSet, ShapePlan

PLAN_CACHE_SIZE = 32
_F32 = np.dtype(np.float32)


class NodeArg:
    """A graph input or output, as onnxruntime's NodeArg: name, shape, type."""
    __slots__ = ("name", "shape", "type")

    def __init__(self, name, shape, type_):
        self.name = name
        self.shape = shape
        self.type = type_

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


def _node_arg(v):
    shape = None if v.shape is None else list(v.shape)
    return NodeArg(v.name, shape, f"tensor({'float' if v.elem_type == 'float32' else v.elem_type})")


def _load_program(model, base_dir):
    """Parse, check and rewrite: model -> Program. A compiled plan (.pc1) needs none of
    that: it is read once, validated and used with numpy alone (no onnx import)."""
    if planfile.is_plan(model):
        return planfile.load(model)
    from . import check, onnx_reader, rewrite
    graph = onnx_reader.load(model, base_dir=base_dir)
    steps, _ = check.lower(graph)
    return rewrite.build_program(graph, steps)


class InferenceSession(SessionBase):
    """Load a model once, run it many times.

    model: path to an .onnx file, its bytes, or an onnx.ModelProto.
    threads: None uses OMP_NUM_THREADS or every core; N uses N threads.
    base_dir: folder of external data for a model given as bytes or ModelProto.
    """

    def __init__(self, model, threads=None, *, base_dir=None, isa=None):
        self._threads_arg, self._isa_arg = threads, isa
        self.threads = resolve_threads(threads)
        self._program = _load_program(model, base_dir)
        self._kernels = _backend.kernels(isa)
        self._kset = KernelSet(self._program, self._kernels)
        self._inputs = [_node_arg(v) for v in self._program.inputs]
        self._outputs = [_node_arg(v) for v in self._program.outputs]
        self._input_info = {v.name: v for v in self._program.inputs}
        self._output_names = [v.name for v in self._program.outputs]
        self._plans = collections.OrderedDict()
        # run() is SessionBase.run (C): it runs _fast_chain directly for a feed of the
        # shape _run validated last, and calls _run for everything else
        self._fast_input = (self._program.inputs[0].name
                            if len(self._program.inputs) == 1 else None)
        self._lock = _thread.allocate_lock()  # (threading costs ~1 ms to import)

    # -- onnxruntime-compatible surface ----------------------------------------------
    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_providers(self):
        return ["CPUExecutionProvider"]

    @property
    def kernel_variant(self):
        """Which compiled kernel build runs: 'v4' (AVX-512), 'v3' (AVX2+FMA), 'neon'
        (aarch64), 'generic'."""
        return self._kernels.VARIANT

    @property
    def program(self):
        return self._program

    def _run(self, output_names, input_feed, run_options=None):
        """Run the model. output_names: None or [] for all. Returns new float32 arrays.

        This is what `run` does; `run` itself (SessionBase.run, in C) first tries the
        fast path: a single fused chain fed the shape validated last time runs without
        a Python frame."""
        names = self._check_output_names(output_names)
        feeds = self._check_feed(input_feed)
        plan = self._plan({k: v.shape for k, v in feeds.items()})
        if plan.direct is not None:  # this shape passed _check_feed: later runs may skip it
            self._fast_chain = plan.direct
        try:
            env = plan.execute(dict(feeds))
        except MemoryError:
            raise _out_of_memory(feeds) from None
        out, seen = [], set()
        for name in names:
            arr = env[name]
            if name in seen or name in feeds:
                arr = np.array(arr, copy=True)
            seen.add(name)
            out.append(arr)
        return out

    def run_into(self, input_feed, outputs):
        """Run writing the results into caller-provided arrays, with no allocation for
        them: `outputs` maps output name -> C-contiguous, writable float32 array of the
        exact output shape (for tight loops; onnxruntime's io_binding serves this need).
        Outputs not in the dict are not returned. Returns `outputs`."""
        if not isinstance(outputs, dict) or not outputs:
            raise InputError("outputs must be a non-empty dict of output name -> array")
        self._check_output_names(list(outputs))
        feeds = self._check_feed(input_feed)
        plan = self._plan({k: v.shape for k, v in feeds.items()})
        for name, arr in outputs.items():
            want = plan.shapes[name]
            if not isinstance(arr, np.ndarray) or arr.dtype != _F32 \
                    or not arr.flags.c_contiguous or not arr.flags.writeable:
                raise InputError(f"output buffer {name!r} must be a writable C-contiguous "
                                 f"float32 numpy array, got "
                                 f"{getattr(arr, 'dtype', type(arr).__name__)}")
            if tuple(arr.shape) != tuple(want):
                raise InputError(f"output buffer {name!r} has shape {list(arr.shape)}; "
                                 f"expected {list(want)}")
            for fname, x in feeds.items():
                if np.shares_memory(arr, x):
                    raise InputError(f"output buffer {name!r} overlaps input {fname!r}")
        try:
            plan.execute(dict(feeds), outputs)
        except MemoryError:
            raise _out_of_memory(feeds) from None
        return outputs

    def __reduce__(self):
        """Pickle as a compiled plan (bytes): unpickling needs numpy only, so sessions
        travel to multiprocessing / concurrent.futures / Dask / Ray workers."""
        from . import planfile
        data = planfile.dumps(self._program, self._kernels.MAX_BLOCK_ROWS)
        return (_restore, (data, self._threads_arg, self._isa_arg))

    # -- validation ------------------------------------------------------------------
    def _check_output_names(self, output_names):
        if output_names is None:
            return self._output_names
        if isinstance(output_names, str) or not hasattr(output_names, "__iter__"):
            raise InputError(f"output_names must be a list of names or None, got "
                             f"{output_names!r}")
        names = list(output_names)
        if not names:
            return self._output_names
        for name in names:
            if name not in self._output_names:
                raise InputError(f"unknown output name {name!r}; the model's outputs are "
                                 f"{self._output_names}")
        return names

    def _check_feed(self, input_feed):
        if not isinstance(input_feed, dict):
            raise InputError(f"input_feed must be a dict of name -> numpy array, got "
                             f"{type(input_feed).__name__}")
        expected = self._input_info
        missing = [n for n in expected if n not in input_feed]
        extra = [n for n in input_feed if n not in expected]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"missing input(s) {missing}")
            if extra:
                parts.append(f"unknown input(s) {extra}")
            raise InputError("; ".join(parts) + f"; the model's inputs are {list(expected)}")
        feeds = {}
        bound = {}
        for name, info in expected.items():
            arr = input_feed[name]
            if not isinstance(arr, np.ndarray):
                raise InputError(f"input {name!r} must be a numpy array, got "
                                 f"{type(arr).__name__}")
            if type(arr) is not np.ndarray and _is_masked(arr):
                raise InputError(f"input {name!r} is a masked array; the model would "
                                 "read the masked values too: pass np.ma.filled(x, value) "
                                 "or the plain array x.data")
            if arr.dtype != np.float32:
                raise InputError(f"input {name!r} has dtype {arr.dtype}; expected float32 "
                                 "(tensor(float)); no silent casting")
            decl = info.shape
            if decl is not None:
                if arr.ndim != len(decl):
                    raise InputError(f"input {name!r} has rank {arr.ndim} (shape "
                                     f"{list(arr.shape)}); expected rank {len(decl)} "
                                     f"{list(decl)}")
                for axis, (want, got) in enumerate(zip(decl, arr.shape)):
                    if isinstance(want, int) and want != got:
                        raise InputError(f"input {name!r} has shape {list(arr.shape)}; "
                                         f"dim {axis} must be {want} (declared "
                                         f"{list(decl)})")
                    if isinstance(want, str):
                        if bound.setdefault(want, (got, name))[0] != got:
                            other = bound[want]
                            raise InputError(f"input {name!r} dim {axis} ({want!r}) is "
                                             f"{got}, but {other[1]!r} set {want!r} to "
                                             f"{other[0]}")
            feeds[name] = _contiguous(name, arr)
        return feeds

    def _plan(self, shapes):
        key = tuple(sorted(shapes.items()))
        plan = self._plans.get(key)
        if plan is None:
            plan = ShapePlan(self._program, self._kset, shapes, self.threads)
            with self._lock:
                self._plans[key] = plan
                while len(self._plans) > PLAN_CACHE_SIZE:
                    self._plans.popitem(last=False)

        return plan

    def flops(self, shapes):
        """FLOPs of one run at the given input shapes ({name: shape})."""
        return self._plan(shapes).flops


def _is_masked(arr):
    import sys
    ma = sys.modules.get("numpy.ma")  # not imported: no masked array can exist
    return ma is not None and isinstance(arr, ma.MaskedArray)


def _contiguous(name, arr):
    """The feed as a C-contiguous array: the array itself, or a copy whose size is
    checked first (a broadcast view of a scalar can describe terabytes)."""
    if arr.flags.c_contiguous:
        return np.ascontiguousarray(arr)  # (drops a subclass; shares the data)
    from .plan import tensor_byte_limit
    limit = tensor_byte_limit()
    if arr.nbytes > limit:
        raise InputError(f"input {name!r} of shape {list(arr.shape)} is not contiguous "
                         f"and its copy would take {arr.nbytes} bytes; the limit is "
                         f"{limit} bytes (this machine's memory)")
    try:
        return np.ascontiguousarray(arr)
    except MemoryError:
        raise InputError(f"input {name!r} of shape {list(arr.shape)} is not contiguous "
                         f"and there is no memory for its copy ({arr.nbytes} bytes)") from None


def _out_of_memory(feeds):
    return Error(f"out of memory running the model at input shapes "
                 f"{ {k: list(v.shape) for k, v in feeds.items()} }")


def _restore(data, threads, isa):
    return InferenceSession(data, threads=threads, isa=isa)
