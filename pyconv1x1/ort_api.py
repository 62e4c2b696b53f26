"""onnxruntime's Python API, the subset a CPU program uses, for pyconv1x1 sessions:
SessionOptions, RunOptions, GraphOptimizationLevel, ExecutionMode, ModelMetadata,
IOBinding and OrtValue, with onnxruntime's names, signatures and defaults, so that code
written for onnxruntime runs after `import pyconv1x1 as ort`.

What has a meaning here acts as in onnxruntime; what has none (this runtime always folds
and fuses, runs the steps of one model in order, and logs nothing) is accepted, kept and
returned as set, and has no effect; each docstring says which. Errors are pyconv1x1's
(pyconv1x1.Error and subclasses), not onnxruntime's.
"""
import enum
import os
import time

import numpy as np

from .errors import Error, InputError, UnsupportedError

CPU_PROVIDER = "CPUExecutionProvider"
# ModelMetadata.version when the model sets no model_version (onnxruntime's kNoVersion)
NO_VERSION = 2 ** 63 - 1


class GraphOptimizationLevel(enum.IntEnum):
    """Accepted and reported; no effect: pyconv1x1 always applies its folds and fusions
    (BatchNorm/Mul/Add folded into the conv, epilogues, depth-first chains)."""
    ORT_DISABLE_ALL = 0
    ORT_ENABLE_BASIC = 1
    ORT_ENABLE_EXTENDED = 2
    ORT_ENABLE_LAYOUT = 3
    ORT_ENABLE_ALL = 99


class ExecutionMode(enum.IntEnum):
    """Accepted and reported; no effect: the steps of a model run in order, each one
    spread over the session's threads."""
    ORT_SEQUENTIAL = 0
    ORT_PARALLEL = 1


class ExecutionOrder(enum.IntEnum):
    """Accepted and reported; no effect (the plan fixes the order)."""
    DEFAULT = 0
    PRIORITY_BASED = 1
    MEMORY_EFFICIENT = 2


def _enum(cls, value, what):
    """value as a member of cls: a member, an int, or another library's enum (such as
    onnxruntime's own) with the same name or value."""
    if isinstance(value, cls):
        return value
    name = getattr(value, "name", None)
    if isinstance(name, str) and name in cls.__members__:
        return cls[name]
    try:
        if isinstance(value, bool):
            raise ValueError
        return cls(int(value))
    except (TypeError, ValueError):
        raise Error(f"{what} must be one of {[m.name for m in cls]} "
                    f"(pyconv1x1.{cls.__name__}), got {value!r}") from None


def _int_option(value, what, lo, hi=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) \
            or value < lo or (hi is not None and value > hi):
        bound = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        raise Error(f"{what} must be an int {bound}, got {value!r}")
    return int(value)


def _bool_option(value, what):
    if not isinstance(value, (bool, np.bool_)):
        raise Error(f"{what} must be True or False, got {value!r}")
    return bool(value)


def _str_option(value, what):
    if not isinstance(value, str):
        raise Error(f"{what} must be a str, got {value!r}")
    return value


class _Options:
    """Typed attributes: each assignment is checked (a wrong type raises
    pyconv1x1.Error naming the option), as onnxruntime's bindings check theirs."""
    _CHECKS = {}

    def __setattr__(self, name, value):
        check = self._CHECKS.get(name)
        if check is None:
            raise AttributeError(f"{type(self).__name__} has no option {name!r}; the "
                                 f"options are {sorted(self._CHECKS)}")
        object.__setattr__(self, name, check(value, f"{type(self).__name__}.{name}"))

    def __repr__(self):
        values = ", ".join(f"{k}={getattr(self, k)!r}" for k in sorted(self._CHECKS))
        return f"{type(self).__name__}({values})"


def _config(store, key, value, what):
    if not isinstance(key, str) or not isinstance(value, str):
        raise Error(f"{what} takes a str key and a str value, got {key!r}, {value!r}")
    store[key] = value


def _get_config(store, key, what):
    if key not in store:
        raise Error(f"{what}: no entry {key!r}; the entries set are {sorted(store)}")
    return store[key]


class SessionOptions(_Options):
    """Options of an InferenceSession, as onnxruntime's SessionOptions.

    Honoured here:
      intra_op_num_threads   kernel threads; 0 (default) = pyconv1x1's default
                             (OMP_NUM_THREADS, else every available core)
      enable_profiling       record each run; InferenceSession.end_profiling() writes
                             the records (Chrome trace JSON) to
                             `<profile_file_prefix>_<date>.json` and returns its path
      profile_file_prefix    (default "onnxruntime_profile_")
      optimized_model_filepath   when set, the session writes its compiled model there
                             as a pyconv1x1 plan (.pc1, loadable by pyconv1x1 only; not
                             an ONNX file)
      add_free_dimension_override_by_name(name, value)   fixes a named dim: get_inputs()
                             reports it and a feed of another size is refused
      use_deterministic_compute  results are always deterministic (and identical for
                             every thread count)
    Accepted, kept and returned, with no effect here: inter_op_num_threads,
    graph_optimization_level, execution_mode, execution_order, log_severity_level,
    log_verbosity_level, logid, enable_cpu_mem_arena, enable_mem_pattern,
    enable_mem_reuse, use_per_session_threads, session config entries
    (add_session_config_entry / get_session_config_entry),
    add_free_dimension_override_by_denotation.
    Refused (UnsupportedError): add_initializer, add_external_initializers,
    register_custom_ops_library.
    """
    _CHECKS = {
        "intra_op_num_threads": lambda v, w: _int_option(v, w, 0, 1024),
        "inter_op_num_threads": lambda v, w: _int_option(v, w, 0),
        "graph_optimization_level": lambda v, w: _enum(GraphOptimizationLevel, v, w),
        "execution_mode": lambda v, w: _enum(ExecutionMode, v, w),
        "execution_order": lambda v, w: _enum(ExecutionOrder, v, w),
        "log_severity_level": lambda v, w: _int_option(v, w, -1, 4),
        "log_verbosity_level": lambda v, w: _int_option(v, w, 0),
        "logid": _str_option,
        "enable_profiling": _bool_option,
        "profile_file_prefix": _str_option,
        "optimized_model_filepath": lambda v, w: _str_option(os.fspath(v), w)
        if isinstance(v, os.PathLike) else _str_option(v, w),
        "enable_cpu_mem_arena": _bool_option,
        "enable_mem_pattern": _bool_option,
        "enable_mem_reuse": _bool_option,
        "use_deterministic_compute": _bool_option,
        "use_per_session_threads": _bool_option,
    }

    def __init__(self):
        self.intra_op_num_threads = 0
        self.inter_op_num_threads = 0
        self.graph_optimization_level = GraphOptimizationLevel.ORT_ENABLE_ALL
        self.execution_mode = ExecutionMode.ORT_SEQUENTIAL
        self.execution_order = ExecutionOrder.DEFAULT
        self.log_severity_level = -1
        self.log_verbosity_level = 0
        self.logid = ""
        self.enable_profiling = False
        self.profile_file_prefix = "onnxruntime_profile_"
        self.optimized_model_filepath = ""
        self.enable_cpu_mem_arena = True
        self.enable_mem_pattern = True
        self.enable_mem_reuse = True
        self.use_deterministic_compute = False
        self.use_per_session_threads = True
        object.__setattr__(self, "_config", {})
        object.__setattr__(self, "_dim_overrides", {})
        object.__setattr__(self, "_denotation_overrides", {})

    def add_session_config_entry(self, key, value):
        """Kept (get_session_config_entry returns it); no key has an effect here."""
        _config(self._config, key, value, "add_session_config_entry")

    def get_session_config_entry(self, key):
        return _get_config(self._config, key, "get_session_config_entry")

    def add_free_dimension_override_by_name(self, dim_name, dim_value):
        """Fix the named (symbolic) input dim `dim_name` to `dim_value`."""
        _str_option(dim_name, "add_free_dimension_override_by_name dim_name")
        self._dim_overrides[dim_name] = _int_option(
            dim_value, f"add_free_dimension_override_by_name({dim_name!r}) dim_value", 0)

    def add_free_dimension_override_by_denotation(self, dim_denotation, dim_value):
        """Kept; no effect (pyconv1x1 does not read dim denotations)."""
        _str_option(dim_denotation, "add_free_dimension_override_by_denotation")
        self._denotation_overrides[dim_denotation] = _int_option(
            dim_value, "add_free_dimension_override_by_denotation dim_value", 0)

    def _refuse(self, what):
        raise UnsupportedError(f"SessionOptions.{what} is not supported by pyconv1x1 "
                               "(initializers and ops come from the model file alone)")

    def add_initializer(self, name, ortvalue):
        self._refuse("add_initializer")

    def add_external_initializers(self, names, ortvalues):
        self._refuse("add_external_initializers")

    def register_custom_ops_library(self, library_path):
        self._refuse("register_custom_ops_library")


class RunOptions(_Options):
    """Options of one run, as onnxruntime's RunOptions. All are accepted and kept, with
    no effect here: log_severity_level, log_verbosity_level, logid,
    only_execute_path_to_fetches (every step runs), terminate (a run cannot be
    interrupted: it is not checked), run config entries."""
    _CHECKS = {
        "log_severity_level": lambda v, w: _int_option(v, w, -1, 4),
        "log_verbosity_level": lambda v, w: _int_option(v, w, 0),
        "logid": _str_option,
        "only_execute_path_to_fetches": _bool_option,
        "terminate": _bool_option,
    }

    def __init__(self):
        self.log_severity_level = -1
        self.log_verbosity_level = 0
        self.logid = ""
        self.only_execute_path_to_fetches = False
        self.terminate = False
        object.__setattr__(self, "_config", {})

    def add_run_config_entry(self, key, value):
        _config(self._config, key, value, "add_run_config_entry")

    def get_run_config_entry(self, key):
        return _get_config(self._config, key, "get_run_config_entry")


def check_run_options(run_options):
    if run_options is not None and not isinstance(run_options, RunOptions) \
            and not hasattr(run_options, "only_execute_path_to_fetches"):
        raise InputError(f"run_options must be a pyconv1x1.RunOptions or None, got "
                         f"{type(run_options).__name__}")


class ModelMetadata:
    """What InferenceSession.get_modelmeta() returns, as onnxruntime's: producer_name,
    graph_name, graph_description, domain, description (the model's doc_string),
    version (model_version; 2**63 - 1 when the model sets none, as onnxruntime) and
    custom_metadata_map (the model's metadata_props)."""
    __slots__ = ("producer_name", "graph_name", "graph_description", "domain",
                 "description", "version", "custom_metadata_map")

    def __init__(self, metadata):
        for key in self.__slots__:
            if key == "version":
                value = metadata.get("version")
                value = NO_VERSION if value is None else value
            elif key == "custom_metadata_map":
                value = dict(metadata.get(key) or {})
            else:
                value = metadata.get(key, "")
            setattr(self, key, value)

    def __repr__(self):
        return "ModelMetadata(" + ", ".join(f"{k}={getattr(self, k)!r}"
                                            for k in self.__slots__) + ")"


# --------------------------------------------------------------------------------------
# InferenceSession's arguments
# --------------------------------------------------------------------------------------
_UNSET = object()
# keyword arguments onnxruntime's InferenceSession takes besides its four parameters
_ORT_KWARGS = ("disabled_optimizers", "read_config_from_model")


def _provider_list(providers, provider_options):
    """[(name, {key: str})] from onnxruntime's `providers` (names or (name, options)
    tuples) and `provider_options` (a list of dicts beside the names)."""
    if providers is None:
        providers = [CPU_PROVIDER]
    if isinstance(providers, (str, tuple)) or not hasattr(providers, "__iter__"):
        raise Error(f"providers must be a list of provider names or (name, options) "
                    f"tuples, got {providers!r}")
    providers = list(providers)
    if provider_options is not None:
        provider_options = list(provider_options)
        if len(provider_options) != len(providers):
            raise Error(f"provider_options has {len(provider_options)} entries for "
                        f"{len(providers)} providers; expected one dict per provider")
    out, refused = [], []
    for i, p in enumerate(providers):
        if isinstance(p, tuple) and len(p) == 2 and isinstance(p[0], str):
            if provider_options is not None:
                raise Error("give provider options either in (name, options) tuples or "
                            "in provider_options, not both")
            name, options = p
        elif isinstance(p, str):
            name = p
            options = provider_options[i] if provider_options is not None else {}
        else:
            raise Error(f"providers[{i}] must be a provider name or a (name, options) "
                        f"tuple, got {p!r}")
        if not isinstance(options, dict):
            raise Error(f"the options of provider {name!r} must be a dict, got "
                        f"{options!r}")
        if name != CPU_PROVIDER:
            refused.append(name)
        out.append((name, {str(k): str(v) for k, v in options.items()}))
    if refused:
        raise UnsupportedError(f"provider(s) {refused} are not available: pyconv1x1 runs "
                               f"on the CPU only; the available providers are "
                               f"{[CPU_PROVIDER]}")
    if not out:
        raise Error(f"providers is empty; expected [{CPU_PROVIDER!r}] (or None)")
    return out


def session_arguments(sess_options, providers, provider_options, threads, kwargs):
    """InferenceSession's arguments -> (threads argument: None or int, SessionOptions or
    an onnxruntime-like options object, [(provider, options)])."""
    if isinstance(sess_options, int) and not isinstance(sess_options, bool):
        import warnings
        warnings.warn("InferenceSession(model, N): the second positional argument is "
                      "sess_options, as in onnxruntime; an int there is taken as threads "
                      "for compatibility and will be refused in a later release: pass "
                      "threads=N", DeprecationWarning, stacklevel=3)
        if threads is not _UNSET:
            raise Error(f"threads given twice: positionally ({sess_options}) and as "
                        f"threads={threads!r}")
        threads, sess_options = sess_options, None
    unknown = [k for k in kwargs if k not in _ORT_KWARGS]
    if unknown:
        raise Error(f"InferenceSession got unexpected keyword argument(s) {unknown}; "
                    f"it takes sess_options, providers, provider_options, threads, "
                    f"base_dir, isa and onnxruntime's {list(_ORT_KWARGS)}")
    if sess_options is None:
        options = SessionOptions()
    elif isinstance(sess_options, SessionOptions) or (
            hasattr(sess_options, "intra_op_num_threads")
            and hasattr(sess_options, "graph_optimization_level")):
        options = sess_options  # (onnxruntime's own SessionOptions is read the same way)
    else:
        raise Error(f"sess_options must be a pyconv1x1.SessionOptions or None, got "
                    f"{type(sess_options).__name__}")
    intra = getattr(options, "intra_op_num_threads", 0)
    if threads is _UNSET or threads is None:  # (None: the default, as intra_op 0)
        threads = None if not intra else intra
    elif intra and intra != threads:
        raise Error(f"threads={threads!r} contradicts sess_options.intra_op_num_threads="
                    f"{intra}; give one of them")
    return threads, options, _provider_list(providers, provider_options)


def dim_overrides(options):
    """{dim name: size} set by add_free_dimension_override_by_name."""
    return dict(getattr(options, "_dim_overrides", None) or {})


# --------------------------------------------------------------------------------------
# profiling
# --------------------------------------------------------------------------------------
class Profiler:
    """Records (name, start, duration) of session events while enable_profiling is on;
    end() writes them as onnxruntime does, a Chrome trace JSON list."""

    def __init__(self, prefix, start_ns=None):
        self.prefix = prefix
        now = time.perf_counter_ns()
        self.start_ns = now if start_ns is None else start_ns
        self.wall_start_ns = time.time_ns() - (now - self.start_ns)
        self.events = []

    def record(self, name, start_ns, args=None):
        end = time.perf_counter_ns()
        self.events.append({"cat": "Session", "pid": os.getpid(), "tid": 0,
                            "dur": (end - start_ns) // 1000,
                            "ts": (start_ns - self.start_ns) // 1000, "ph": "X",
                            "name": name, "args": args or {}})

    def end(self):
        import json
        stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
        path = f"{self.prefix}_{stamp}.json"
        n = 1
        while os.path.exists(path):
            n += 1
            path = f"{self.prefix}_{stamp}_{n}.json"
        try:
            with open(path, "w") as f:
                json.dump(self.events, f, indent=0)
        except OSError as exc:
            raise Error(f"cannot write the profile {path!r}: {exc.strerror or exc}") \
                from None
        return path


# --------------------------------------------------------------------------------------
# OrtValue and IOBinding
# --------------------------------------------------------------------------------------
_F32 = np.dtype(np.float32)
_BINDABLE = tuple(np.dtype(t) for t in ("float32", "float16", "uint8", "int8"))


def _check_device(device_type, device_id, what):
    if not isinstance(device_type, str) or device_type.lower() != "cpu":
        raise UnsupportedError(f"{what}: device {device_type!r} is not available; "
                               "pyconv1x1 runs on 'cpu' only")
    if device_id not in (0, None):
        raise UnsupportedError(f"{what}: device_id {device_id!r}; the CPU is device 0")


def _array_at(address, element_type, shape, what):
    """A numpy array over memory at `address` (onnxruntime's buffer_ptr: the caller
    keeps that memory alive and large enough, as with onnxruntime)."""
    dtype = np.dtype(element_type) if element_type is not None else None
    if dtype not in _BINDABLE:
        raise InputError(f"{what}: element_type {element_type!r}; expected one of "
                         f"{[d.name for d in _BINDABLE]} (the output's type)")
    if shape is None:
        raise InputError(f"{what}: a buffer_ptr needs its shape")
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise InputError(f"{what}: negative dim in shape {list(shape)}")
    if isinstance(address, bool) or not isinstance(address, (int, np.integer)) \
            or address <= 0:
        raise InputError(f"{what}: buffer_ptr must be a memory address (an int > 0, "
                         f"such as array.ctypes.data) or a numpy array, got {address!r}")
    import ctypes
    count = 1
    for d in shape:
        count *= d
    raw = (ctypes.c_uint8 * (count * dtype.itemsize)).from_address(int(address))
    return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)


class OrtValue:
    """A tensor on the CPU, as onnxruntime's OrtValue: here a wrapper of a numpy array
    (numpy() returns that array itself, not a copy)."""
    __slots__ = ("_array",)

    def __init__(self, array):
        self._array = array

    @staticmethod
    def ortvalue_from_numpy(numpy_obj, device_type="cpu", device_id=0):
        _check_device(device_type, device_id, "OrtValue.ortvalue_from_numpy")
        if not isinstance(numpy_obj, np.ndarray):
            raise InputError(f"OrtValue.ortvalue_from_numpy takes a numpy array, got "
                             f"{type(numpy_obj).__name__}")
        return OrtValue(numpy_obj)

    @staticmethod
    def ortvalue_from_shape_and_type(shape, element_type=np.float32, device_type="cpu",
                                     device_id=0):
        _check_device(device_type, device_id, "OrtValue.ortvalue_from_shape_and_type")
        return OrtValue(np.empty(tuple(int(d) for d in shape), dtype=element_type))

    def numpy(self):
        return self._array

    def shape(self):
        return list(self._array.shape)

    def data_type(self):
        from .session import _type_name
        return _type_name(self._array.dtype.name)

    def element_type(self):
        return self._array.dtype.type

    def device_name(self):
        return "cpu"

    def is_tensor(self):
        return True

    def has_value(self):
        return True

    def data_ptr(self):
        return self._array.ctypes.data

    def __repr__(self):
        return f"OrtValue(shape={self.shape()}, type={self.data_type()!r})"


class IOBinding:
    """Inputs and outputs bound ahead of InferenceSession.run_with_iobinding, as
    onnxruntime's IOBinding. An output bound to a buffer (a numpy array, an OrtValue, or
    onnxruntime's buffer_ptr address with element_type and shape) is written in place
    with no allocation; an output bound without one gets a new array at each run."""

    def __init__(self, session):
        self._session = session
        self._inputs = {}
        self._outputs = {}  # name -> array or None (allocate)
        self._results = None

    # -- inputs ----------------------------------------------------------------------
    def _known_name(self, name, args, kind, what):
        names = [a.name for a in args]
        if name not in names:
            raise InputError(f"{what}: unknown {kind} name {name!r}; the model's {kind}s "
                             f"are {names}")
        return name

    def _input_name(self, name, what):
        return self._known_name(name, self._session.get_inputs(), "input", what)

    def bind_cpu_input(self, name, arr_on_cpu):
        self._input_name(name, "bind_cpu_input")
        if not isinstance(arr_on_cpu, np.ndarray):
            raise InputError(f"bind_cpu_input({name!r}): expected a numpy array, got "
                             f"{type(arr_on_cpu).__name__}")
        self._inputs[name] = arr_on_cpu

    def bind_input(self, name, device_type, device_id, element_type, shape, buffer_ptr):
        self._input_name(name, "bind_input")
        _check_device(device_type, device_id, f"bind_input({name!r})")
        if isinstance(buffer_ptr, np.ndarray):
            self._inputs[name] = buffer_ptr
        else:
            self._inputs[name] = _array_at(buffer_ptr, element_type, shape,
                                           f"bind_input({name!r})")

    def bind_ortvalue_input(self, name, ortvalue):
        self._input_name(name, "bind_ortvalue_input")
        self._inputs[name] = _unwrap(ortvalue, f"bind_ortvalue_input({name!r})")

    # -- outputs ---------------------------------------------------------------------
    def _output_name(self, name, what):
        return self._known_name(name, self._session.get_outputs(), "output", what)

    def bind_output(self, name, device_type="cpu", device_id=0, element_type=None,
                    shape=None, buffer_ptr=None):
        """Bind output `name`: with no buffer_ptr, a new array per run; with one (an
        address, as onnxruntime, or here also a numpy array), written in place."""
        self._output_name(name, "bind_output")
        _check_device(device_type, device_id, f"bind_output({name!r})")
        if buffer_ptr is None:
            self._outputs[name] = None
            return
        what = f"bind_output({name!r})"
        if isinstance(buffer_ptr, np.ndarray):
            arr = buffer_ptr
            if element_type is not None and np.dtype(element_type) != arr.dtype:
                raise InputError(f"{what}: element_type {element_type!r} but the array "
                                 f"is {arr.dtype}")
            if shape is not None and tuple(shape) != arr.shape:
                raise InputError(f"{what}: shape {list(shape)} but the array has shape "
                                 f"{list(arr.shape)}")
        else:
            arr = _array_at(buffer_ptr, element_type, shape, what)
        self._outputs[name] = _output_buffer(arr, what, self._session._dtype_of(name))

    def bind_ortvalue_output(self, name, ortvalue):
        self._output_name(name, "bind_ortvalue_output")
        what = f"bind_ortvalue_output({name!r})"
        self._outputs[name] = _output_buffer(_unwrap(ortvalue, what), what,
                                             self._session._dtype_of(name))

    def clear_binding_inputs(self):
        self._inputs.clear()

    def clear_binding_outputs(self):
        self._outputs.clear()
        self._results = None

    def synchronize_inputs(self):
        """Nothing to synchronize on the CPU."""

    def synchronize_outputs(self):
        """Nothing to synchronize on the CPU."""

    # -- results ---------------------------------------------------------------------
    def get_outputs(self):
        """The last run's outputs as OrtValues, in binding order."""
        return [OrtValue(a) for a in self._last("get_outputs")]

    def copy_outputs_to_cpu(self):
        """The last run's outputs as new numpy arrays, in binding order."""
        return [np.array(a, copy=True) for a in self._last("copy_outputs_to_cpu")]

    def _last(self, what):
        if self._results is None:
            raise Error(f"IOBinding.{what}: no results yet; call "
                        "session.run_with_iobinding(binding) first")
        return self._results

    def _run(self, run_options):
        """InferenceSession.run_with_iobinding's body."""
        session = self._session
        check_run_options(run_options)
        if not self._outputs:
            raise InputError("run_with_iobinding: no output is bound; bind at least one "
                             "with bind_output")
        names = list(self._outputs)
        given = {n: a for n, a in self._outputs.items() if a is not None}
        if len(given) == len(names):
            session.run_into(self._inputs, dict(given))
            results = [given[n] for n in names]
        else:
            results = session._run(names, dict(self._inputs), run_options)
            for i, name in enumerate(names):
                if name in given:
                    out = given[name]
                    if out.shape != results[i].shape or out.dtype != results[i].dtype:
                        raise InputError(f"output buffer {name!r} is {out.dtype} "
                                         f"{list(out.shape)}; expected "
                                         f"{results[i].dtype} {list(results[i].shape)}")
                    np.copyto(out, results[i])
                    results[i] = out
        self._results = results


def _unwrap(value, what):
    if isinstance(value, OrtValue):
        return value.numpy()
    if hasattr(value, "numpy") and callable(value.numpy):  # onnxruntime's OrtValue
        return np.asarray(value.numpy())
    raise InputError(f"{what}: expected an OrtValue, got {type(value).__name__}")


def _output_buffer(arr, what, dtype):
    """arr when it can take the output (of numpy dtype `dtype`) in place."""
    if arr.dtype != dtype or not arr.flags.c_contiguous or not arr.flags.writeable:
        raise InputError(f"{what}: the output buffer must be a writable C-contiguous "
                         f"{dtype.name} array (the output's type), got {arr.dtype} "
                         f"{'C-contiguous' if arr.flags.c_contiguous else 'non-contiguous'}"
                         f"{'' if arr.flags.writeable else ' read-only'}")
    return arr
