"""Parse stage: ONNX bytes, file or ModelProto -> ir.Graph. The only module that touches
protobuf. A model file is untrusted input: every size is checked before anything is
allocated, and external data must stay inside the model's folder (the onnx package had
path-traversal, symlink, hardlink and unbounded-length CVEs on exactly this).
"""
import math
import os
import stat

import numpy as np

from ._protowire import parse_model
from .errors import ModelError, UnsupportedError
from .ir import Graph, Node, ValueInfo

MAX_MODEL_BYTES = 2 ** 31 - 1          # protobuf's own limit
MAX_TENSOR_BYTES = 2 ** 32             # no tensor of a 1x1-conv model comes near
MAX_DIMS = 8
MAX_ATTR_VALUES = 1 << 16  # list attributes of the ops we run hold a few values

# ONNX TensorProto.DataType -> numpy dtype (little-endian as stored)
_DTYPES = {
    1: np.dtype("<f4"), 2: np.dtype("u1"), 3: np.dtype("i1"), 4: np.dtype("<u2"),
    5: np.dtype("<i2"), 6: np.dtype("<i4"), 7: np.dtype("<i8"), 9: np.dtype("?"),
    10: np.dtype("<f2"), 11: np.dtype("<f8"), 12: np.dtype("<u4"), 13: np.dtype("<u8"),
}
_TYPE_NAMES = {1: "FLOAT", 2: "UINT8", 3: "INT8", 4: "UINT16", 5: "INT16", 6: "INT32",
               7: "INT64", 8: "STRING", 9: "BOOL", 10: "FLOAT16", 11: "DOUBLE",
               12: "UINT32", 13: "UINT64", 14: "COMPLEX64", 15: "COMPLEX128",
               16: "BFLOAT16"}


_NATIVE = {code: dt.newbyteorder("=") for code, dt in _DTYPES.items()}  # as arrays hold them
_ELEM_NAMES = {code: dt.name for code, dt in _NATIVE.items()}


def elem_type_name(code):
    """numpy name of an ONNX element type, or its ONNX name when numpy has none."""
    name = _ELEM_NAMES.get(code)
    if name is not None:
        return name
    return _TYPE_NAMES.get(code, f"type{code}").lower()


class _Unsupported:
    """Marks an attribute this runtime cannot represent (graphs, sparse tensors)."""

    def __init__(self, why):
        self.why = why

    def __repr__(self):
        return f"<unsupported: {self.why}>"


def load(model, base_dir=None):
    """Parse `model` (path, bytes or onnx.ModelProto) into an ir.Graph.

    External data is read from `base_dir`: by default the folder of a model given as a
    path; a model given as bytes or ModelProto has no folder, so its external data is
    refused unless base_dir is given.
    """
    proto, base_dir = _read_proto(model, base_dir)
    return _convert_model(proto, base_dir)


def _read_proto(model, base_dir):
    if type(model).__name__ == "ModelProto" and hasattr(model, "SerializeToString"):
        try:
            data = model.SerializeToString()
        except Exception as exc:  # protobuf refuses to serialize a broken message
            raise ModelError(f"the given ModelProto cannot be serialized: {exc}") from None
        return _parse(data, "the given ModelProto"), _opt_dir(base_dir)
    if isinstance(model, (bytes, bytearray, memoryview)):
        data = bytes(model)
        where = "the given bytes"
    elif isinstance(model, (str, os.PathLike)):
        path = os.fspath(model)
        try:
            st = os.stat(path)
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot open model {path!r}: {exc}") from None
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"model {path!r} is not a regular file")
        if st.st_size > MAX_MODEL_BYTES:
            raise ModelError(f"model {path!r} is {st.st_size} bytes; the limit is "
                             f"{MAX_MODEL_BYTES}")
        try:
            with open(path, "rb") as f:
                # read(n) allocates n bytes up front: ask for what the file holds
                data = f.read(min(st.st_size, MAX_MODEL_BYTES) + 1)
        except OSError as exc:
            raise ModelError(f"cannot read model {path!r}: {exc}") from None
        where = repr(path)
        if base_dir is None:
            base_dir = os.path.dirname(os.path.abspath(path))
    else:
        raise ModelError("model must be a path, bytes or onnx.ModelProto, got "
                         f"{type(model).__name__}")
    if not data:
        raise ModelError(f"{where} is empty, not an ONNX model")
    if len(data) > MAX_MODEL_BYTES:
        raise ModelError(f"{where} is larger than {MAX_MODEL_BYTES} bytes")
    return _parse(data, where), _opt_dir(base_dir)


def _parse(data, where):
    """Our own wire-format reader (_protowire): no protobuf import, and every malformed
    byte is a ModelError naming its offset."""
    try:
        return parse_model(data)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except RecursionError:
        raise ModelError(f"{where} is not a valid ONNX model: nested too deeply") from None


def _opt_dir(base_dir):
    if base_dir is None:
        return None
    base_dir = os.fspath(base_dir)
    if not os.path.isdir(base_dir):
        raise ModelError(f"base_dir {base_dir!r} is not a folder")
    return os.path.realpath(base_dir)


# --------------------------------------------------------------------------------------
# model / graph
# --------------------------------------------------------------------------------------
def _convert_model(proto, base_dir):
    try:
        has_graph = proto.HasField("graph")
    except Exception:
        has_graph = False
    if not has_graph or (not proto.graph.node and not proto.graph.output):
        raise ModelError("not an ONNX model: no graph (empty or foreign protobuf)")
    if proto.ir_version <= 0:
        raise ModelError(f"not an ONNX model: ir_version {proto.ir_version}")
    opset = None
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = int(imp.version)
    if opset is None:
        if proto.ir_version >= 3:
            raise ModelError("the model declares no opset for the default ONNX domain")
        opset = 1
    g = proto.graph
    if len(g.sparse_initializer):
        raise UnsupportedError("sparse initializers are not supported: "
                               + ", ".join(repr(t.name) for t in g.sparse_initializer))
    constants = {}
    for t in g.initializer:
        if not t.name:
            raise ModelError("an initializer has no name")
        if t.name in constants:
            raise ModelError(f"initializer {t.name!r} is defined twice")
        constants[t.name] = tensor_to_array(t, base_dir, f"initializer {t.name!r}")
    nodes = []
    for index, n in enumerate(g.node):
        name = n.name or f"{n.op_type or 'node'}_{index}"
        if not n.op_type:
            raise ModelError(f"node #{index} ({name!r}) has no op_type")
        attrs = {}
        for a in n.attribute:
            if a.name in attrs:
                raise ModelError(f"node '{name}' has attribute {a.name!r} twice")
            attrs[a.name] = _attr_value(a, base_dir, f"attribute {a.name!r} of node '{name}'")
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            value = _constant_value(name, n, attrs)
            if value is not None:
                out = n.output[0]
                if out in constants:
                    raise ModelError(f"tensor {out!r} is defined twice (Constant '{name}' "
                                     "and an initializer or another Constant)")
                value.flags.writeable = False
                constants[out] = value
                continue
        nodes.append(Node(name=name, op_type=n.op_type, domain=n.domain,
                          inputs=tuple(n.input), outputs=tuple(n.output), attrs=attrs))
    inputs = tuple(_value_info(v) for v in g.input if v.name not in constants)
    outputs = tuple(_value_info(v) for v in g.output)
    value_info = {}
    for v in list(g.input) + list(g.output):  # (intermediate value_info is not read)
        try:
            value_info[v.name] = _value_info(v)
        except UnsupportedError:
            continue
    seen = set()
    for v in inputs:
        if v.name in seen:
            raise ModelError(f"graph input {v.name!r} is declared twice")
        seen.add(v.name)
    for a in constants.values():
        a.flags.writeable = False
    return Graph(nodes=tuple(nodes), inputs=inputs, outputs=outputs, constants=constants,
                 value_info=value_info, opset=opset, name=g.name,
                 producer=f"{proto.producer_name} {proto.producer_version}".strip(),
                 metadata=_metadata(proto))


def _metadata(proto):
    """ModelProto's descriptive fields (what onnxruntime's get_modelmeta reports)."""
    custom = {}
    for kv in proto.metadata_props:
        custom[kv.key] = kv.value  # (a repeated key: the last wins, as in onnxruntime)
    return {"producer_name": proto.producer_name,
            "producer_version": proto.producer_version, "domain": proto.domain,
            "description": proto.doc_string, "graph_name": proto.graph.name,
            "graph_description": proto.graph.doc_string,
            "version": proto.model_version if proto.HasField("model_version") else None,
            "custom_metadata_map": custom}


def _constant_value(name, n, attrs):
    """The array of a Constant node, or None when it is not a plain numeric tensor
    (then the check stage reports the node as unsupported)."""
    if len(n.input) or len(n.output) != 1 or not n.output[0] or len(attrs) != 1:
        if not n.output or not n.output[0]:
            raise ModelError(f"Constant '{name}' has no output")
        return None
    key, value = next(iter(attrs.items()))
    if key == "value" and isinstance(value, np.ndarray):
        return value
    if key == "value_float":
        return np.array(value, np.float32)
    if key == "value_floats":
        return np.array(value, np.float32).reshape(-1)
    if key == "value_int":
        return np.array(value, np.int64)
    if key == "value_ints":
        return np.array(value, np.int64).reshape(-1)
    return None


def _value_info(v):
    if not v.name:
        raise ModelError("a graph input or output has no name")
    t = v.type
    which = t.WhichOneof("value") if t is not None else None
    if which is None:
        return ValueInfo(v.name, "float32", None)  # type not declared
    if which != "tensor_type":
        raise UnsupportedError(f"graph value {v.name!r} is a {which}, not a tensor")
    tt = t.tensor_type
    etype = elem_type_name(tt.elem_type) if tt.elem_type else "float32"
    if not tt.HasField("shape"):
        return ValueInfo(v.name, etype, None)
    dims = []
    for d in tt.shape.dim:
        kind = d.WhichOneof("value")
        if kind == "dim_value":
            if d.dim_value < 0:
                raise ModelError(f"graph value {v.name!r} has a negative dim {d.dim_value}")
            dims.append(int(d.dim_value))
        elif kind == "dim_param" and d.dim_param:
            dims.append(str(d.dim_param))
        else:
            dims.append(None)
    return ValueInfo(v.name, etype, tuple(dims))


def _attr_value(a, base_dir, what):
    if a.ref_attr_name:
        return _Unsupported("reference to a function attribute")
    kind = a.type
    if kind == 0:  # very old files leave the type unset: infer it from the filled field
        for field, code in (("floats", 6), ("ints", 7), ("strings", 8)):
            if len(getattr(a, field)):
                kind = code
        for field, code in (("t", 4), ("g", 5)):
            if a.HasField(field):
                kind = code
        if kind == 0:
            kind = 3 if a.s else (1 if a.f else 2)
    if kind == 1:
        return float(a.f)
    if kind == 2:
        return int(a.i)
    if kind == 3:
        return bytes(a.s).decode("utf-8", errors="replace")
    if kind == 4:
        if a.t is None:
            raise ModelError(f"{what}: of type TENSOR but holds no tensor")
        return tensor_to_array(a.t, base_dir, what)
    if kind in (6, 7):
        values = a.floats if kind == 6 else a.ints
        if len(values) > MAX_ATTR_VALUES:  # (counted before decoding: Python objects)
            return _Unsupported(f"a list of {len(values)} values")
        return tuple(values)
    if kind == 8:
        return tuple(bytes(s).decode("utf-8", errors="replace") for s in a.strings)
    if kind in (5, 10):
        return _Unsupported("a subgraph")
    if kind in (11, 12):
        return _Unsupported("a sparse tensor")
    return _Unsupported(f"attribute type {kind}")


# --------------------------------------------------------------------------------------
# tensors
# --------------------------------------------------------------------------------------
def tensor_to_array(t, base_dir, what):
    """TensorProto -> read-only C-contiguous numpy array, every size checked first.
    Data already in the machine's layout is used where it lies (a view of the model's
    immutable bytes, or of the buffer external data was read into) instead of copied."""
    dtype = _DTYPES.get(t.data_type)
    if dtype is None:
        raise UnsupportedError(f"{what}: element type {_TYPE_NAMES.get(t.data_type, t.data_type)}"
                               " is not supported")
    if t.HasField("segment"):
        raise UnsupportedError(f"{what}: segmented tensors are not supported")
    dims = _tensor_dims(t, dtype, what)
    count = math.prod(dims)
    nbytes = count * dtype.itemsize
    if t.data_location == 1:
        raw = _read_external(t, base_dir, what, nbytes)
        arr = np.frombuffer(raw, dtype=dtype, count=count)
    elif t.data_location not in (0,):
        raise ModelError(f"{what}: unknown data_location {t.data_location}")
    elif t.raw_data:
        if len(t.raw_data) != nbytes:
            raise ModelError(f"{what}: raw_data has {len(t.raw_data)} bytes; shape "
                             f"{list(dims)} of {dtype.name} needs {nbytes}")
        arr = np.frombuffer(t.raw_data, dtype=dtype, count=count)
    else:
        arr = _typed_field(t, dtype, count, what)
    native = _NATIVE[t.data_type]
    if arr.dtype != native or not arr.flags.aligned:
        arr = arr.astype(native)
    arr = arr.reshape(dims)
    arr.flags.writeable = False
    return arr


def _tensor_dims(t, dtype, what):
    """The tensor's shape, checked before anything of its size is allocated: rank,
    signs, and the byte size (with every zero dim counted as 1, so that an empty
    tensor of absurd extent is refused too: numpy cannot even describe [0, 2**62])."""
    if len(t.dims) > MAX_DIMS:
        raise ModelError(f"{what}: {len(t.dims)} dims; at most {MAX_DIMS} are accepted")
    dims = tuple(t.dims)
    for d in dims:
        if d < 0:
            raise ModelError(f"{what}: negative dim {d} in shape {list(dims)}")
    extent = math.prod(max(d, 1) for d in dims) * dtype.itemsize
    if extent > MAX_TENSOR_BYTES:
        size = math.prod(dims) * dtype.itemsize
        raise ModelError(f"{what}: shape {list(dims)} of {dtype.name} is {size} bytes"
                         + ("" if size else f" but spans {extent}")
                         + f"; the limit is {MAX_TENSOR_BYTES}")
    return dims


# where each element type keeps its values when it has no raw_data (onnx.proto), and
# the range those stored values must fall in to convert exactly
_FIELDS = {1: "float_data", 11: "double_data", 7: "int64_data", 12: "uint64_data",
           13: "uint64_data"}
_INT_RANGES = {2: (0, 255), 3: (-128, 127), 4: (0, 65535), 5: (-32768, 32767),
               6: (-2 ** 31, 2 ** 31 - 1), 9: (0, 1), 10: (0, 65535), 12: (0, 2 ** 32 - 1)}


def _typed_field(t, dtype, count, what):
    code = t.data_type
    name = _FIELDS.get(code, "int32_data")
    field = getattr(t, name)
    if len(field) != count:  # counted without decoding: nothing allocated yet
        raise ModelError(f"{what}: {len(field)} values stored in {name}; shape "
                         f"{list(t.dims)} needs {count}")
    if code in (1, 11):
        return field.array() if count else np.zeros(0, _NATIVE[code])
    lo, hi = _INT_RANGES.get(code, (None, None))
    target = np.uint16 if code == 10 else _NATIVE[code]  # float16: its bits
    try:
        values = field.array(target, lo, hi, unsigned=code in (12, 13))
    except ValueError as exc:
        raise ModelError(f"{what}: {_TYPE_NAMES[code]} tensor holds {exc.args[0]} in "
                         f"{name}; its values must be in [{lo}, {hi}]") from None
    return values.view(np.float16) if code == 10 else values


def _read_external(t, base_dir, what, nbytes):
    info = {}
    for kv in t.external_data:
        info[kv.key] = kv.value
    location = info.get("location", "")
    if not location:
        raise ModelError(f"{what}: external data without a location")
    if base_dir is None:
        raise ModelError(f"{what}: stored in external file {location!r}, but the model "
                         "was given as bytes or a ModelProto; pass base_dir= to name the "
                         "folder that holds it")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else nbytes
    except ValueError:
        raise ModelError(f"{what}: external data offset/length are not integers: "
                         f"{info.get('offset')!r}, {info.get('length')!r}") from None
    if offset < 0 or length < 0:
        raise ModelError(f"{what}: negative external data offset {offset} or length {length}")
    if length != nbytes:
        raise ModelError(f"{what}: external data length {length} bytes; the tensor's "
                         f"shape and type need {nbytes}")
    path = _safe_external_path(base_dir, location, what)
    # O_NONBLOCK: opening a FIFO planted as the data file must not wait for a writer
    flags = (os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
             | getattr(os, "O_NONBLOCK", 0))
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise ModelError(f"{what}: cannot open external data {location!r}: "
                         f"{exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{what}: external data {location!r} is not a regular file")
        if st.st_nlink > 1:
            raise ModelError(f"{what}: external data {location!r} is a hard link "
                             f"({st.st_nlink} links); refused, it may point outside the "
                             "model's folder")
        if offset + length > st.st_size:
            raise ModelError(f"{what}: external data {location!r} has {st.st_size} bytes; "
                             f"offset {offset} + length {length} runs past its end")
        buf = bytearray(length)  # ours alone: the array is a read-only view of it
        view = memoryview(buf)
        os.lseek(fd, offset, os.SEEK_SET)
        got = 0
        while got < length:
            n = os.readv(fd, [view[got:]])
            if n <= 0:
                raise ModelError(f"{what}: external data {location!r} ended early")
            got += n
        arr = np.frombuffer(buf, dtype=np.uint8)
        arr.flags.writeable = False
        return arr
    finally:
        os.close(fd)


def _safe_external_path(base_dir, location, what):
    bad = None
    if "\x00" in location:
        bad = "contains a NUL byte"
    elif os.path.isabs(location) or location.startswith(("/", "\\")) or (
            len(location) > 1 and location[1] == ":"):
        bad = "is an absolute path"
    else:
        parts = location.replace("\\", "/").split("/")
        if ".." in parts:
            bad = "contains '..'"
    if bad:
        raise ModelError(f"{what}: external data location {location!r} {bad}; it must be "
                         "a relative path inside the model's folder")
    path = base_dir
    for part in location.replace("\\", "/").split("/"):
        if part in ("", "."):
            continue
        path = os.path.join(path, part)
        if os.path.islink(path):
            raise ModelError(f"{what}: external data location {location!r} goes through "
                             f"a symbolic link ({path!r}); refused")
    real = os.path.realpath(path)
    if os.path.commonpath([real, base_dir]) != base_dir:
        raise ModelError(f"{what}: external data location {location!r} resolves outside "
                         "the model's folder")
    return real
