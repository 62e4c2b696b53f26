"""InferenceSession: the public entry point, shaped like onnxruntime's."""
import _thread
import collections
import os
import stat
import time

import numpy as np

from . import _backend, ort_api, planfile
from ._fastrun import SessionBase
from ._threads import resolve_threads
from .errors import Error, InputError, ModelError
from .pipeline import load_program as _load_program  # (module global: tests patch it)
from .plan import KernelSet, ShapePlan

PLAN_CACHE_SIZE = 32
_F32 = np.dtype(np.float32)
_QUANT_EDGES = ("uint8", "int8")  # quantized models' input / output types


class NodeArg:
    """A graph input or output, as onnxruntime's NodeArg: name, shape, type."""
    __slots__ = ("name", "shape", "type")

    def __init__(self, name, shape, type_):
        self.name = name
        self.shape = shape
        self.type = type_

    def __repr__(self):
        return f"NodeArg(name={self.name!r}, type={self.type!r}, shape={self.shape!r})"


def _type_name(elem_type):
    """onnxruntime's name of a tensor type: 'tensor(float)' for float32."""
    return f"tensor({'float' if elem_type == 'float32' else elem_type})"


def _node_arg(v, overrides=None):
    shape = None if v.shape is None else [
        overrides.get(d, d) if overrides and isinstance(d, str) else d for d in v.shape]
    return NodeArg(v.name, shape, _type_name(v.elem_type))


class InferenceSession(SessionBase):
    """Load a model once, run it many times. onnxruntime's signature and semantics:

    path_or_bytes: path to an .onnx file or a compiled .pc1 plan, their bytes, or an
        onnx.ModelProto.
    sess_options: a pyconv1x1.SessionOptions (onnxruntime's own is read the same way):
        intra_op_num_threads sets the threads, the rest see SessionOptions. (An int
        here is taken as `threads`, as before this argument existed: deprecated.)
    providers, provider_options: as onnxruntime's; only "CPUExecutionProvider" exists
        here, any other is refused (UnsupportedError naming it).
    threads: None uses OMP_NUM_THREADS or every available core; N uses N threads
        (same as sess_options.intra_op_num_threads = N; give one of them).
    base_dir: folder of external data for a model given as bytes or ModelProto.
    isa: force a kernel build ('generic', 'v3', 'v4'), as PYCONV1X1_ISA does.
    """
    # (class-level defaults: a session rebuilt without __init__ still has them)
    _profiler = None
    _providers = ((ort_api.CPU_PROVIDER, {}),)
    _sess_options = None
    _edge_dtypes = {}  # (read-only: replaced, never updated)

    def __init__(self, path_or_bytes, sess_options=None, providers=None,
                 provider_options=None, *, threads=ort_api._UNSET, base_dir=None,
                 isa=None, **kwargs):
        load_start = time.perf_counter_ns()
        threads, options, self._providers = ort_api.session_arguments(
            sess_options, providers, provider_options, threads, kwargs)
        self._sess_options = options
        self._threads_arg, self._isa_arg = threads, isa
        self._source = _source_of(path_or_bytes)  # (path, stat) before loading: see __reduce__
        self.threads = resolve_threads(threads)
        self._program = _load_program(path_or_bytes, base_dir)
        self._kernels = _backend.kernels(isa)
        self._kset = KernelSet(self._program, self._kernels)
        overrides = ort_api.dim_overrides(options)
        self._inputs = [_node_arg(v, overrides) for v in self._program.inputs]
        self._outputs = [_node_arg(v) for v in self._program.outputs]
        self._input_info = {v.name: v for v in self._program.inputs}
        if overrides:  # fixed named dims are checked as declared sizes
            from .ir import ValueInfo
            self._input_info = {a.name: ValueInfo(a.name, v.elem_type, None if a.shape
                                                  is None else tuple(a.shape))
                                for a, v in zip(self._inputs, self._program.inputs)}
        self._output_names = [v.name for v in self._program.outputs]
        # float16 inputs and outputs (the rest is computed in float32): fed and
        # returned as declared, converted on the way in and out (never the fast path)
        self._edge_dtypes = {v.name: np.dtype(v.elem_type) for v in
                             self._program.inputs + self._program.outputs
                             if v.elem_type not in ("float32",) + _QUANT_EDGES}
        # uint8 / int8 edges of quantized models: fed and returned as they are
        self._quant_dtypes = {v.name: np.dtype(v.elem_type) for v in
                              self._program.inputs + self._program.outputs
                              if v.elem_type in _QUANT_EDGES}
        self._plans = collections.OrderedDict()
        # run() is SessionBase.run (C): it runs _fast_chain directly for a feed of the
        # shape _run validated last, and calls _run for everything else
        self._fast_input = (self._program.inputs[0].name
                            if len(self._program.inputs) == 1 else None)
        self._lock = _thread.allocate_lock()  # (threading costs ~1 ms to import)
        optimized = getattr(options, "optimized_model_filepath", "")
        if optimized:
            _write_optimized(self, path_or_bytes, optimized)
        self._profiler = None
        if getattr(options, "enable_profiling", False):
            self._profiler = ort_api.Profiler(
                getattr(options, "profile_file_prefix", "onnxruntime_profile_"), load_start)
            self._profiler.record("session_initialization", load_start)
        self._digest = self._token = None  # computed on first pickle / tokenize

    # -- onnxruntime-compatible surface ----------------------------------------------
    def get_inputs(self):
        return list(self._inputs)

    def get_outputs(self):
        return list(self._outputs)

    def get_providers(self):
        return [name for name, _ in self._providers]

    def get_provider_options(self):
        """{provider: {option: value as str}}, as onnxruntime."""
        return {name: dict(options) for name, options in self._providers}

    def set_providers(self, providers=None, provider_options=None):
        """As onnxruntime's: only CPUExecutionProvider exists (others are refused)."""
        self._providers = ort_api._provider_list(providers, provider_options)

    def disable_fallback(self):
        """No effect: there is no other provider to fall back from."""

    def enable_fallback(self):
        """No effect: there is no other provider to fall back from."""

    def get_overridable_initializers(self):
        """[]: initializers come from the model alone (folded into the weights)."""
        return []

    def run_with_ort_values(self, output_names, input_dict_ort_values, run_options=None):
        """run() with OrtValues in and out, as onnxruntime's."""
        if not isinstance(input_dict_ort_values, dict):
            raise InputError(f"input_dict_ort_values must be a dict of name -> OrtValue, "
                             f"got {type(input_dict_ort_values).__name__}")
        feeds = {k: ort_api._unwrap(v, f"input {k!r}")
                 for k, v in input_dict_ort_values.items()}
        return [ort_api.OrtValue(a) for a in self._run(output_names, feeds, run_options)]

    def get_session_options(self):
        """The SessionOptions the session was created with (defaults when none)."""
        if self._sess_options is None:
            self._sess_options = ort_api.SessionOptions()
        return self._sess_options

    def get_modelmeta(self):
        """The model's producer, graph name and description, domain, description,
        version and custom metadata (onnxruntime's ModelMetadata); compiled plans keep
        them."""
        return ort_api.ModelMetadata(self._program.metadata)

    def io_binding(self):
        """An IOBinding for run_with_iobinding (see pyconv1x1.ort_api.IOBinding)."""
        return ort_api.IOBinding(self)

    def run_with_iobinding(self, iobinding, run_options=None):
        """Run with the inputs and outputs bound in `iobinding`; the results stay in
        it (iobinding.copy_outputs_to_cpu() / get_outputs())."""
        if not isinstance(iobinding, ort_api.IOBinding) or iobinding._session is not self:
            raise InputError("run_with_iobinding takes an IOBinding made by this "
                             "session's io_binding()")
        iobinding._run(run_options)

    def end_profiling(self):
        """Stop profiling and write the records (Chrome trace JSON); returns the file's
        path, or '' when profiling was off (as onnxruntime)."""
        profiler, self._profiler = self._profiler, None
        return "" if profiler is None else profiler.end()

    def get_profiling_start_time_ns(self):
        profiler = self._profiler
        return 0 if profiler is None else profiler.wall_start_ns

    @property
    def kernel_variant(self):
        """Which compiled kernel build runs: 'v4' (AVX-512), 'v3' (AVX2+FMA), 'neon'
        (aarch64), 'generic'."""
        return self._kernels.VARIANT

    @property
    def int8_path(self):
        """Which int8 kernels run the model's quantized steps (compiled path or the
        numpy reference), or None when the model has none."""
        from .quant import int8_path
        return int8_path(self._program, self.kernel_variant)

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
        if lock is None:  # in the constructor
            self._threads = count
            return
        with lock:  # shape plans fix their thread count: drop them
            self._threads = count
            self._threads_arg = value
            self._plans.clear()
            self._fast_chain = None

    def _run(self, output_names, input_feed, run_options=None):
        """Run the model. output_names: None or [] for all. Returns new float32 arrays.

        This is what `run` does; `run` itself (SessionBase.run, in C) first tries the
        fast path: a single fused chain fed the shape validated last time runs without
        a Python frame."""
        start = time.perf_counter_ns() if self._profiler is not None else 0
        if run_options is not None:
            ort_api.check_run_options(run_options)
        names = self._check_output_names(output_names)
        feeds = self._check_feed(input_feed)
        plan = self._plan({k: v.shape for k, v in feeds.items()})
        if plan.direct is not None and self._profiler is None and not self._edge_dtypes:
            self._fast_chain = plan.direct  # this shape passed _check_feed: later runs
            # may skip it (not while profiling: each run must pass here to be recorded)
        try:
            env = plan.execute(dict(feeds))
        except MemoryError:
            raise _out_of_memory(feeds) from None
        if start:
            self._record_run(start, feeds)
        out, seen = [], set()
        for name in names:
            arr = env[name]
            if name in seen or name in feeds:
                arr = np.array(arr, copy=True)
            seen.add(name)
            if name in self._edge_dtypes:
                arr = arr.astype(self._edge_dtypes[name])
            out.append(arr)
        return out

    def run_into(self, input_feed, outputs):
        """Run writing the results into caller-provided arrays, with no allocation for
        them: `outputs` maps output name -> C-contiguous, writable array (the output's
        dtype) of the exact output shape (for tight loops; onnxruntime's io_binding
        serves this need); a float16 output takes a float16 array (computed in float32 into a scratch array,
        then rounded into it), a quantized model's uint8/int8 output an array of that type.
        Outputs not in the dict are not returned. Returns `outputs`."""
        if not isinstance(outputs, dict) or not outputs:
            raise InputError("outputs must be a non-empty dict of output name -> array")
        self._check_output_names(list(outputs))
        feeds = self._check_feed(input_feed)
        plan = self._plan({k: v.shape for k, v in feeds.items()})
        for name, arr in outputs.items():
            want = plan.shapes[name]
            dtype = self._dtype_of(name)
            if not isinstance(arr, np.ndarray) or arr.dtype != dtype \
                    or not arr.flags.c_contiguous or not arr.flags.writeable:
                raise InputError(f"output buffer {name!r} must be a writable C-contiguous "
                                 f"{dtype.name} numpy array, got "
                                 f"{getattr(arr, 'dtype', type(arr).__name__)}")
            if tuple(arr.shape) != tuple(want):
                raise InputError(f"output buffer {name!r} has shape {list(arr.shape)}; "
                                 f"expected {list(want)}")
            for fname, x in feeds.items():
                if np.shares_memory(arr, x):
                    raise InputError(f"output buffer {name!r} overlaps input {fname!r}")
        # float16 outputs are computed in float32, then rounded into the caller's array
        half = {n: np.empty(a.shape, _F32) for n, a in outputs.items()
                if n in self._edge_dtypes}
        start = time.perf_counter_ns() if self._profiler is not None else 0
        try:
            plan.execute(dict(feeds), {**outputs, **half} if half else outputs)
        except MemoryError:
            raise _out_of_memory(feeds) from None
        for name, arr in half.items():
            np.copyto(outputs[name], arr, casting="unsafe")
        if start:
            self._record_run(start, feeds)
        return outputs

    def _record_run(self, start, feeds):
        profiler = self._profiler
        if profiler is not None:
            profiler.record("model_run", start, {
                "input_shapes": {k: list(v.shape) for k, v in feeds.items()}})

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
            if type(arr) is not np.ndarray and _is_masked(arr):
                raise InputError(f"input {name!r} is a masked array; the model would "
                                 "read the masked values too: pass np.ma.filled(x, value) "
                                 "or the plain array x.data")
            dtype = self._edge_dtypes.get(name, self._quant_dtypes.get(name, _F32))
            if arr.dtype != dtype:
                raise InputError(f"input {name!r} has dtype {arr.dtype}; expected "
                                 f"{dtype.name} ({_type_name(dtype.name)}); no silent "
                                 "casting")
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
            if name in self._edge_dtypes:  # float16: computed in float32
                feeds[name] = feeds[name].astype(_F32)
        return feeds

    def _dtype_of(self, name):
        """The numpy dtype an input or output takes or returns (float32, or float16 /
        uint8 / int8 as the model declares)."""
        return self._edge_dtypes.get(name) or self._quant_dtypes.get(name, _F32)

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


def _write_optimized(session, model, path):
    """SessionOptions.optimized_model_filepath: the compiled plan of the session."""
    path = os.fspath(path)
    if isinstance(model, (str, os.PathLike)) and os.path.exists(path) \
            and os.path.samefile(path, os.fspath(model)):
        raise Error(f"optimized_model_filepath {path!r} is the model itself; refusing to "
                    "overwrite it")
    try:
        planfile.save(session._program, path, session._kernels.MAX_BLOCK_ROWS)
    except OSError as exc:
        raise Error(f"cannot write optimized_model_filepath {path!r}: "
                    f"{exc.strerror or exc}") from None
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
