"""InferenceSession: the public entry point, shaped like onnxruntime's."""
import _thread
import collections
import functools
import os
import stat

import numpy as np

from . import _backend, planfile
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
    that: it is validated and memory-mapped with numpy alone (no onnx import)."""
    if planfile.is_plan(model):
        return planfile.load(model)
    from . import check, onnx_reader, rewrite
    graph = onnx_reader.load(model, base_dir=base_dir)
    steps, _ = check.lower(graph)
    return rewrite.build_program(graph, steps)


class InferenceSession:
    """Load a model once, run it many times.

    model: path to an .onnx file, its bytes, or an onnx.ModelProto.
    threads: None uses OMP_NUM_THREADS or every core; N uses N threads.
    base_dir: folder of external data for a model given as bytes or ModelProto.
    """

    def __init__(self, model, threads=None, *, base_dir=None, isa=None):
        self._threads_arg, self._isa_arg = threads, isa
        self._source = _source_of(model)  # (path, stat) before loading: see __reduce__
        self.threads = resolve_threads(threads)
        self._program = _load_program(model, base_dir)
        self._kernels = _backend.kernels(isa)
        self._kset = KernelSet(self._program, self._kernels)
        self._inputs = [_node_arg(v) for v in self._program.inputs]
        self._outputs = [_node_arg(v) for v in self._program.outputs]
        self._input_info = {v.name: v for v in self._program.inputs}
        self._output_names = [v.name for v in self._program.outputs]
        self._plans = collections.OrderedDict()
        self._direct_name = (self._program.inputs[0].name
                             if len(self._program.inputs) == 1 else None)
        self._fast = self._kernels.FastRun(
            functools.partial(InferenceSession.run, self), self._direct_name)
        self.run = self._fast.run  # instance attribute: found before the class's method
        self._lock = _thread.allocate_lock()  # (threading costs ~1 ms to import)
        self._digest = self._token = None  # computed on first pickle / tokenize

    # -- onnxruntime-compatible surface ----------------------------------------------
    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_providers(self):
        return ["CPUExecutionProvider"]

    @property
    def kernel_variant(self):
        """Which compiled kernel build runs: 'v4' (AVX-512), 'v3' (AVX2+FMA), 'generic'."""
        return self._kernels.VARIANT

    @property
    def program(self):
        return self._program

    @property
    def threads(self):
        """Threads a run uses (settable: None resolves as in the constructor). Set it
        between runs: a run in flight finishes with the count it started with."""
        return self._threads

    @threads.setter
    def threads(self, value):
        count = resolve_threads(value)
        lock = getattr(self, "_lock", None)
        if lock is None or getattr(self, "_fast", None) is None:  # in the constructor
            self._threads = count
            return
        with lock:  # shape plans fix their thread count: drop them
            self._threads = count
            self._threads_arg = value
            self._plans.clear()
            self._fast.bound = None

    def run(self, output_names, input_feed, run_options=None):
        """Run the model. output_names: None or [] for all. Returns new float32 arrays.

        (Instances answer `run` with a FastRun kernel object first: for a single fused
        chain fed the shape validated last time it runs without a Python frame, and
        falls back to this method for everything else.)"""
        names = self._check_output_names(output_names)
        feeds = self._check_feed(input_feed)
        plan = self._plan({k: v.shape for k, v in feeds.items()})
        if plan.direct is not None:  # this shape passed _check_feed: later runs may skip it
            self._fast.bound = plan.direct
        try:
            env = plan.execute(dict(feeds))
        except MemoryError:
            raise Error(f"out of memory running the model at input shapes "
                        f"{ {k: list(v.shape) for k, v in feeds.items()} }") from None
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
        plan.execute(dict(feeds), outputs)
        return outputs

    def __reduce__(self):
        """Pickle small: a session made from a model file that is still the one it
        loaded (same size, mtime and inode) pickles as that file's absolute path plus
        the digest of the loaded model; the unpickler loads the path and raises
        ModelError if the digest differs. Any other session pickles as a compiled plan
        (bytes; unpickling needs numpy only). Either way the thread count travels as
        given (None resolves on the receiver) and the kernel variant is chosen there
        unless `isa` was given."""
        args = (self._threads_arg, self._isa_arg, self._model_digest(),
                self.__dask_tokenize__())
        if self._source is not None and _stat_key(self._source[0]) == self._source[1]:
            return (_restore, (self._source[0],) + args)
        data = planfile.dumps(self._program, self._kernels.MAX_BLOCK_ROWS)
        return (_restore, (data,) + args)

    def __dask_tokenize__(self):
        """Dask's name for this session: random, drawn once per session and kept by its
        pickled copies, so Dask never hashes (or pickles) the weights to name a task."""
        if self._token is None:
            self._token = f"pyconv1x1.InferenceSession-{os.urandom(16).hex()}"
        return self._token

    def _model_digest(self):
        """BLAKE2b of the loaded program (structure and folded weights): one pass over
        the weights on the first pickle, then cached. It names the model, not the file,
        so it covers external data files and does not depend on the kernel variant."""
        if self._digest is None:
            self._digest = program_digest(self._program)
        return self._digest

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
            feeds[name] = np.ascontiguousarray(arr)
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


def _source_of(model):
    """(absolute path, stat key) of a model given as a path to a regular file, else None."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    try:
        path = os.path.abspath(os.fspath(model))
    except (TypeError, ValueError):
        return None
    key = _stat_key(path)
    return None if key is None else (path, key)


def _stat_key(path):
    """What changes when a file is rewritten or replaced: size, mtime, inode, device."""
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.R_OK):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_dev)


def program_digest(program):
    """Hex BLAKE2b of a Program: every record's type and fields, arrays by dtype, shape
    and bytes. Equal programs (the same model loaded anywhere) give equal digests."""
    import hashlib
    h = hashlib.blake2b(digest_size=20)

    def walk(value):
        if isinstance(value, np.ndarray):
            arr = np.ascontiguousarray(value)
            h.update(f"<{arr.dtype.str}{arr.shape}>".encode())
            h.update(memoryview(arr).cast("B"))
        elif isinstance(value, (list, tuple)):
            h.update(f"[{len(value)}".encode())
            for item in value:
                walk(item)
            h.update(b"]")
        elif hasattr(type(value), "__slots__") and not isinstance(value, (str, bytes)):
            h.update(f"{type(value).__name__}(".encode())
            for key in type(value).__slots__:
                h.update(key.encode() + b"=")
                walk(getattr(value, key))
            h.update(b")")
        else:
            h.update(f"{type(value).__name__}:{value!r};".encode())

    walk(program)
    return h.hexdigest()


RESTORED_CACHE_SIZE = 4
_restored = collections.OrderedDict()  # (digest, threads, isa) -> session, newest last
_lock_restored = _thread.allocate_lock()


def _restore(source, threads, isa, digest=None, token=None):
    """Unpickle a session: `source` is a model path or compiled plan bytes. A path
    session already restored in this process with the same digest, thread and kernel
    arguments is returned again (the last RESTORED_CACHE_SIZE are kept), so a session
    shipped with every task loads its model once per process."""
    key = (digest, threads, isa)
    if isinstance(source, str) and digest is not None:
        with _lock_restored:
            sess = _restored.get(key)
            if sess is not None and sess._threads_arg == threads:
                _restored.move_to_end(key)
                return sess
    try:
        sess = InferenceSession(source, threads=threads, isa=isa)
    except ModelError as exc:
        if not isinstance(source, str):
            raise
        raise ModelError(f"cannot unpickle the session of {source!r} here: {exc} (a "
                         f"session pickles as its model's path: the file must be readable "
                         f"at that path on every worker; a session made from the model's "
                         f"bytes pickles as a compiled plan instead)") from None
    if digest is not None and isinstance(source, str):
        got = sess._model_digest()
        if got != digest:
            raise ModelError(f"cannot unpickle the session of {source!r}: the file here "
                             f"holds a different model than the one the session loaded "
                             f"(digest {got[:12]}... != {digest[:12]}...): it was rewritten, "
                             f"differs on this machine, or another pyconv1x1 version "
                             f"loaded it")
        with _lock_restored:
            _restored[key] = sess
            while len(_restored) > RESTORED_CACHE_SIZE:
                _restored.popitem(last=False)
    sess._digest = digest if digest is not None else sess._digest
    sess._token = token
    return sess
