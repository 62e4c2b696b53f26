"""Compiled plan files (.pc1): a validated, folded Program with weights already packed in
the kernels' layout, loadable with numpy alone; read into memory once and validated there.

Layout (all integers little-endian; see docs/PLAN_FORMAT.md):

    offset 0   8 bytes   magic b"PC1PLAN\\0"
    offset 8   u32       format version (FORMAT_VERSION)
    offset 12  u32       header length H in bytes
    offset 16  u64       blob offset B (multiple of 64)
    offset 24  u64       blob length L
    offset 32  u32       CRC-32 of header bytes + blob bytes (corruption, not forgery:
                         the structure is validated whatever the checksum says)
    offset 36  28 bytes  zero
    offset 64  H bytes   header: UTF-8 JSON (program structure, array table)
    ...        zero padding up to B
    offset B   L bytes   blob: every array, each starting on a 64-byte boundary

The file ends at B + L. Every field is checked on load (sizes, offsets, checksum, then the
program's structure and packed-block geometry) before any kernel sees a pointer.
"""
import math
import os
import stat
import struct

import numpy as np

from .errors import ModelError
from .ir import ValueInfo
from .program import (Activation, AddStep, AffineStep, ChainStep, ConvLayer, CopyStep,
                      Program, RES_AFTER_ACT, RES_BEFORE_ACT, RES_NONE)

MAGIC = b"PC1PLAN\x00"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<8sIIQQI28x")
ALIGN = 64
MAX_HEADER_BYTES = 64 << 20
_DTYPES = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8")}


def is_plan(data_or_path):
    """True if bytes or a file start with the plan magic."""
    if isinstance(data_or_path, (bytes, bytearray, memoryview)):
        return bytes(data_or_path[:8]) == MAGIC
    if not isinstance(data_or_path, (str, os.PathLike)):
        return False  # (an int would be taken as a file descriptor)
    try:
        if not stat.S_ISREG(os.stat(data_or_path).st_mode):
            return False  # a FIFO or device: never block on it here
        with open(data_or_path, "rb") as f:
            return f.read(8) == MAGIC
    except (OSError, TypeError, ValueError):
        return False


# --------------------------------------------------------------------------------------
# write
# --------------------------------------------------------------------------------------
class _Arrays:
    def __init__(self):
        self.table, self.chunks, self.size = [], [], 0

    def add(self, arr):
        if arr is None:
            return None
        arr = np.ascontiguousarray(arr)
        dtype = "float32" if arr.dtype.kind == "f" else "int64"
        arr = np.ascontiguousarray(arr, dtype=_DTYPES[dtype])
        pad = (-self.size) % ALIGN
        if pad:
            self.chunks.append(b"\x00" * pad)
            self.size += pad
        self.table.append({"dtype": dtype, "shape": list(arr.shape), "offset": self.size,
                           "nbytes": arr.nbytes})
        self.chunks.append(arr.tobytes())
        self.size += arr.nbytes
        return len(self.table) - 1


def _act_json(a):
    return {"kind": a.kind, "lo": _f(a.lo), "hi": _f(a.hi), "alpha": _f(a.alpha)}


def _f(x):
    return "inf" if x == math.inf else "-inf" if x == -math.inf else float(x)


def _vi_json(v):
    return {"name": v.name, "elem_type": v.elem_type,
            "shape": None if v.shape is None else list(v.shape)}


def dumps(program, mr):
    """Serialize a Program, its conv weights packed for blocks of `mr` rows."""
    import json
    import zlib
    from .plan import pack_layer
    arrays = _Arrays()
    steps = []
    for step in program.steps:
        if isinstance(step, ChainStep):
            layers = []
            for layer in step.layers:
                packed, blocks = pack_layer(layer, mr)
                layers.append({
                    "names": list(layer.names), "cout": layer.cout, "k": layer.k,
                    "bias": arrays.add(layer.bias), "group": layer.group,
                    "strides": list(layer.strides), "pads": list(layer.pads),
                    "auto_pad": layer.auto_pad, "act": _act_json(layer.act),
                    "residual": layer.residual, "res_mode": layer.res_mode,
                    "spatial_rank": layer.spatial_rank, "mr": mr,
                    "packed": arrays.add(packed), "blocks": arrays.add(blocks)})
            steps.append({"type": "chain", "input": step.input, "output": step.output,
                          "layers": layers})
        elif isinstance(step, AffineStep):
            steps.append({"type": "affine", "name": step.name, "input": step.input,
                          "output": step.output, "scale": arrays.add(step.scale),
                          "shift": arrays.add(step.shift), "act": _act_json(step.act)})
        elif isinstance(step, AddStep):
            steps.append({"type": "add", "name": step.name, "a": step.a, "b": step.b,
                          "output": step.output, "act": _act_json(step.act)})
        elif isinstance(step, CopyStep):
            steps.append({"type": "copy", "name": step.name, "input": step.input,
                          "output": step.output})
        else:  # pragma: no cover
            raise TypeError(step)
    header = json.dumps({
        "format": "pyconv1x1-plan", "version": FORMAT_VERSION,
        "inputs": [_vi_json(v) for v in program.inputs],
        "outputs": [_vi_json(v) for v in program.outputs],
        "opset": program.opset, "producer": program.producer, "notes": program.notes,
        "metadata": program.metadata,
        "steps": steps, "arrays": arrays.table}, separators=(",", ":")).encode()
    blob = b"".join(arrays.chunks)
    blob_offset = PREFIX.size + len(header)
    blob_offset += (-blob_offset) % ALIGN
    crc = zlib.crc32(blob, zlib.crc32(header))
    prefix = PREFIX.pack(MAGIC, FORMAT_VERSION, len(header), blob_offset, len(blob), crc)
    padding = b"\x00" * (blob_offset - PREFIX.size - len(header))
    return prefix + header + padding + blob


def save(program, path, mr):
    data = dumps(program, mr)
    tmp = f"{os.fspath(path)}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)
    return len(data)


def compile_model(model, out_path, base_dir=None, isa=None):
    """Parse, check, fold and pack `model` (path, bytes or ModelProto) into a plan file
    for this machine's kernels. Returns the plan's size in bytes."""
    from . import _backend
    from .session import _load_program
    program = _load_program(model, base_dir)
    return save(program, out_path, _backend.kernels(isa).MAX_BLOCK_ROWS)


# --------------------------------------------------------------------------------------
# read
# --------------------------------------------------------------------------------------
MAX_PLAN_BYTES = 1 << 40  # a bound for the size check, not a limit anyone meets


def load(source):
    """Program from a plan file path or bytes. The session owns every byte it
    validated: a path is read into memory once (a mapping would let a rewrite or a
    truncation of the file change block offsets under a live session: SIGSEGV, SIGBUS
    or silently different results), and a mutable buffer is copied."""
    import json  # here, not at module level: session sniffs .onnx files with is_plan
    import zlib
    if isinstance(source, (bytes, bytearray, memoryview)):
        where = "plan bytes"
        if type(source) is not bytes:  # a bytearray or a view may change after we return
            try:
                source = memoryview(source).cast("B").tobytes()
            except (TypeError, ValueError) as exc:
                raise ModelError(f"{where}: not a readable byte buffer: {exc}") from None
    else:
        where = f"plan {os.fspath(source)!r}"
        source = _read_file(os.fspath(source), where)
    data = np.frombuffer(source, dtype=np.uint8)  # read-only: bytes are immutable
    if data.size < PREFIX.size:
        raise ModelError(f"{where} is truncated ({data.size} bytes)")
    magic, version, hlen, boff, blen, digest = PREFIX.unpack(bytes(data[:PREFIX.size]))
    if magic != MAGIC:
        raise ModelError(f"{where} is not a pyconv1x1 plan (bad magic)")
    if version != FORMAT_VERSION:
        raise ModelError(f"{where} has format version {version}; this pyconv1x1 reads "
                         f"version {FORMAT_VERSION}: recompile it with `pyconv1x1 compile`")
    if (hlen > MAX_HEADER_BYTES or boff % ALIGN or boff < PREFIX.size + hlen
            or boff + blen != data.size):
        raise ModelError(f"{where} is truncated or corrupt: header {hlen} bytes, blob "
                         f"{blen} bytes at {boff}, file {data.size} bytes")
    header = bytes(data[PREFIX.size:PREFIX.size + hlen])
    blob = data[boff:boff + blen]
    if zlib.crc32(blob, zlib.crc32(header)) != digest:
        raise ModelError(f"{where} is corrupt: checksum mismatch")
    meta = _parse_header(json, header, where)
    try:
        return _program(meta, blob)
    except ModelError as exc:
        raise ModelError(f"{where}: {exc}") from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, OverflowError,
            RecursionError) as exc:  # a check below missed a case: still the file's fault
        raise ModelError(f"{where} is corrupt: {type(exc).__name__}: {exc}") from None


def _read_file(path, where):
    # O_NONBLOCK: a FIFO planted as the plan must not wait for a writer
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except (OSError, ValueError, TypeError) as exc:
        raise ModelError(f"cannot open {where}: {exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ModelError(f"{where} is not a regular file")
        if st.st_size > MAX_PLAN_BYTES:
            raise ModelError(f"{where} is {st.st_size} bytes; the limit is {MAX_PLAN_BYTES}")
        with os.fdopen(os.dup(fd), "rb") as f:
            # read(n) allocates n bytes up front: ask for what the file holds (one byte
            # more shows a file that grew while we read; the size check then fails)
            return f.read(st.st_size + 1)
    except OSError as exc:
        raise ModelError(f"cannot read {where}: {exc}") from None
    except MemoryError:
        raise ModelError(f"{where} ({st.st_size} bytes) does not fit in memory") from None
    finally:
        os.close(fd)


def _parse_header(json, header, where):
    def no_constant(name):  # NaN / Infinity / -Infinity: not JSON, and never written
        raise ValueError(f"{name} is not a JSON number")
    try:
        meta = json.loads(header.decode("utf-8"), parse_constant=no_constant)
    except RecursionError:
        raise ModelError(f"{where} is corrupt: header JSON nested too deeply") from None
    except (ValueError, MemoryError) as exc:  # UnicodeDecodeError is a ValueError
        raise ModelError(f"{where} is corrupt: header is not JSON: {exc}") from None
    if not isinstance(meta, dict):
        raise ModelError(f"{where} is corrupt: header is a JSON {type(meta).__name__}, "
                         "expected an object")
    return meta


# -- typed access to header fields: every value is checked before it is used ---------
def _field(obj, key, what):
    if not isinstance(obj, dict):
        raise ModelError(f"{what} is {_show(obj)}; expected a JSON object")
    if key not in obj:
        raise ModelError(f"{what} has no field {key!r}")
    return obj[key]


def _int(x, what, lo=0, hi=1 << 62):
    if isinstance(x, bool) or not isinstance(x, int) or not lo <= x <= hi:
        raise ModelError(f"{what} is {_show(x)}; expected an integer in [{lo}, {hi}]")
    return x


def _list(x, what):
    if not isinstance(x, list):
        raise ModelError(f"{what} is {_show(x)}; expected a JSON list")
    return x


def _str(x, what):
    if not isinstance(x, str):
        raise ModelError(f"{what} is {_show(x)}; expected a string")
    return x


def _show(x):
    """A header value for an error message: short, whatever its size or depth."""
    if isinstance(x, (dict, list)):
        return f"a JSON {'object' if isinstance(x, dict) else 'list'} of {len(x)} items"
    text = repr(x)
    return text if len(text) <= 60 else text[:57] + "..."


def _program(meta, blob):
    if meta.get("format") != "pyconv1x1-plan":
        raise ModelError("plan header is not a pyconv1x1 plan")
    arrays = [_array(entry, blob, f"array {i}")
              for i, entry in enumerate(_list(_field(meta, "arrays", "header"), "arrays"))]

    def arr(index, what, dtype="float32"):
        if index is None:
            return None
        a = arrays[_int(index, f"{what} (an array index)", 0, len(arrays) - 1)]
        if a.dtype != _DTYPES[dtype]:
            raise ModelError(f"{what}: array {index} is {a.dtype}, expected {dtype}")
        return a

    steps = [_step(s, arr, f"step {i}")
             for i, s in enumerate(_list(_field(meta, "steps", "header"), "steps"))]
    program = Program(
        inputs=tuple(_vi(v, f"input {i}") for i, v in
                     enumerate(_list(_field(meta, "inputs", "header"), "inputs"))),
        outputs=tuple(_vi(v, f"output {i}") for i, v in
                      enumerate(_list(_field(meta, "outputs", "header"), "outputs"))),
        steps=steps, opset=_int(meta.get("opset", 0), "opset", 0, 1 << 31),
        producer=_str(meta.get("producer", ""), "producer"),
        notes=[_str(n, "a note") for n in _list(meta.get("notes", []), "notes")],
        metadata=_metadata(meta.get("metadata", {})))
    validate(program)
    return program


def _metadata(m):
    """The model's descriptive fields (plans written before they were kept have none:
    every field then takes its default)."""
    from .ir import METADATA_STRINGS
    if not isinstance(m, dict):
        raise ModelError(f"metadata is {_show(m)}; expected an object")
    out = {k: _str(m.get(k, ""), f"metadata {k}") for k in METADATA_STRINGS}
    version = m.get("version")
    out["version"] = None if version is None else _int(version, "metadata version",
                                                        -(1 << 63), (1 << 63) - 1)
    custom = m.get("custom_metadata_map", {})
    if not isinstance(custom, dict):
        raise ModelError(f"metadata custom_metadata_map is {_show(custom)}; expected an "
                         "object of strings")
    out["custom_metadata_map"] = {k: _str(v, f"metadata value of {k!r}")
                                  for k, v in custom.items()}
    return out


def _array(entry, blob, what):
    dtype = _DTYPES.get(_str(_field(entry, "dtype", what), f"{what} dtype"))
    if dtype is None:
        raise ModelError(f"{what}: dtype {entry['dtype']!r} is not one of {list(_DTYPES)}")
    shape = tuple(_int(d, f"{what} dim", 0, blob.size)
                  for d in _list(_field(entry, "shape", what), f"{what} shape"))
    if len(shape) > 8:
        raise ModelError(f"{what}: {len(shape)} dims; at most 8")
    off = _int(_field(entry, "offset", what), f"{what} offset", 0, blob.size)
    nbytes = _int(_field(entry, "nbytes", what), f"{what} nbytes", 0, blob.size)
    if nbytes != math.prod(shape) * dtype.itemsize or off % dtype.itemsize \
            or off + nbytes > blob.size:
        raise ModelError(f"{what}: shape {list(shape)} of {dtype.name} at offset {off}, "
                         f"{nbytes} bytes, does not fit a blob of {blob.size} bytes")
    return blob[off:off + nbytes].view(dtype).reshape(shape)


def _step(s, arr, what):
    kind = _field(s, "type", what)
    name = lambda key: _name(_field(s, key, what), f"{what} {key}")  # noqa: E731
    if kind == "chain":
        layers = [_layer(l, arr, f"{what} layer {i}")
                  for i, l in enumerate(_list(_field(s, "layers", what), f"{what} layers"))]
        return ChainStep(name("input"), name("output"), layers)
    if kind == "affine":
        return AffineStep(name("name"), name("input"), name("output"),
                          _vec(arr(_field(s, "scale", what), f"{what} scale")),
                          _vec(arr(_field(s, "shift", what), f"{what} shift")),
                          _act(_field(s, "act", what), f"{what} act"))
    if kind == "add":
        return AddStep(name("name"), name("a"), name("b"), name("output"),
                       _act(_field(s, "act", what), f"{what} act"))
    if kind == "copy":
        return CopyStep(name("name"), name("input"), name("output"))
    raise ModelError(f"{what}: step type {_show(kind)} is unknown")


def _name(x, what="plan tensor name"):
    if not isinstance(x, str) or not x:
        raise ModelError(f"{what} is {_show(x)}; expected a non-empty string")
    return x


def _vec(a):
    if a is not None and a.ndim != 1:
        raise ModelError(f"plan per-channel vector has shape {list(a.shape)}")
    return a


def _num(x, what):
    if x in ("inf", "-inf"):
        return float(x)
    if isinstance(x, bool) or not isinstance(x, (int, float)) or math.isnan(x) \
            or not math.isfinite(float(x)):
        raise ModelError(f"{what} is {_show(x)}; expected a finite number, 'inf' or '-inf'")
    return float(x)


def _act(a, what):
    kind = _field(a, "kind", what)
    if kind not in ("none", "relu", "clip", "leaky"):
        raise ModelError(f"{what}: activation kind {_show(kind)} is unknown")
    return Activation(kind, _num(_field(a, "lo", what), f"{what} lo"),
                      _num(_field(a, "hi", what), f"{what} hi"),
                      _num(_field(a, "alpha", what), f"{what} alpha"))


def _vi(v, what):
    name = _name(_field(v, "name", what), f"{what} name")
    shape = _field(v, "shape", what)
    if shape is not None:
        shape = tuple(d if (d is None or isinstance(d, str)) else
                      _int(d, f"{what} {name!r} dim")
                      for d in _list(shape, f"{what} {name!r} shape"))
    return ValueInfo(name, _str(_field(v, "elem_type", what), f"{what} elem_type"), shape)


def _layer(l, arr, what):
    get = lambda key: _field(l, key, what)  # noqa: E731
    names = [_name(n, f"{what} name") for n in _list(get("names"), f"{what} names")]
    if not names:
        raise ModelError(f"{what} has no names")
    what = f"plan layer {'+'.join(names)!r}"
    cout = _int(get("cout"), f"{what} cout", 1, 1 << 31)
    k = _int(get("k"), f"{what} k", 1, 1 << 31)
    group = _int(get("group"), f"{what} group", 1, 1 << 31)
    mr = _int(get("mr"), f"{what} mr", 1, 64)
    if cout % group:
        raise ModelError(f"{what}: cout {cout} is not a multiple of group {group}")
    packed = arr(get("packed"), f"{what} packed")
    blocks = arr(get("blocks"), f"{what} blocks", "int64")
    bias = arr(get("bias"), f"{what} bias")
    if bias is None or bias.shape != (cout,):
        raise ModelError(f"{what}: bias shape does not match {cout}")
    if packed is None or packed.shape != (cout * k,):
        raise ModelError(f"{what}: packed weight size does not match {cout} x {k}")
    if blocks is None:
        raise ModelError(f"{what}: no packed-block table")
    ints = lambda key: tuple(  # noqa: E731
        _int(x, f"{what} {key}", 0, 1 << 31) for x in _list(get(key), f"{what} {key}"))
    residual = get("residual")
    layer = ConvLayer(names=names, weight=None, bias=bias, group=group,
                      strides=ints("strides"), pads=ints("pads"),
                      auto_pad=_str(get("auto_pad"), f"{what} auto_pad"),
                      act=_act(get("act"), f"{what} act"),
                      residual=None if residual is None else _name(residual, f"{what} residual"),
                      res_mode=_int(get("res_mode"), f"{what} res_mode", 0, 2),
                      spatial_rank=_int(get("spatial_rank"), f"{what} spatial_rank", 1, 2),
                      packed=(mr, packed, np.ascontiguousarray(blocks, dtype=np.intp)),
                      wshape=(cout, k))
    # the kernel trusts block offsets: they must be exactly what packing produces
    from .plan import block_table
    expect = block_table(cout, k, group, mr)
    if blocks.shape != expect.shape or not np.array_equal(blocks, expect):
        raise ModelError(f"{what}: packed blocks are inconsistent")
    return layer


def validate(program):
    """Structural checks of a Program that did not come from our own rewrite stage."""
    defined = {v.name for v in program.inputs}
    if len(defined) != len(program.inputs):
        raise ModelError("plan declares an input twice")
    for v in program.inputs + program.outputs:
        if v.elem_type not in ("float32", "float16"):
            raise ModelError(f"plan value {v.name!r} is {v.elem_type}, not float32 or "
                             "float16")
    for step in program.steps:
        for t in step.reads:
            if t not in defined:
                raise ModelError(f"plan step {getattr(step, 'name', step.output)!r} reads "
                                 f"{t!r} before it is defined")
        if step.output in defined:
            raise ModelError(f"plan defines tensor {step.output!r} twice")
        if isinstance(step, ChainStep):
            if not step.layers:
                raise ModelError("plan chain without layers")
            for i, layer in enumerate(step.layers):
                if len(layer.strides) != 2 or len(layer.pads) != 4 \
                        or min(layer.strides) < 1 or min(layer.pads) < 0 \
                        or max(layer.strides + layer.pads) > 1 << 20:
                    raise ModelError(f"plan layer {layer.name}: bad strides/pads")
                if layer.auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
                    raise ModelError(f"plan layer {layer.name}: bad auto_pad")
                if layer.spatial_rank not in (1, 2):
                    raise ModelError(f"plan layer {layer.name}: bad spatial rank")
                if layer.res_mode not in (RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT) or \
                        (layer.res_mode == RES_NONE) != (layer.residual is None):
                    raise ModelError(f"plan layer {layer.name}: bad residual")
                if layer.residual is not None and layer.residual not in defined:
                    raise ModelError(f"plan layer {layer.name}: residual undefined")
                if i and (not layer.keeps_pixels or layer.cin != step.layers[i - 1].cout):
                    raise ModelError(f"plan layer {layer.name}: does not chain")
        elif isinstance(step, AffineStep):
            for v in (step.scale, step.shift):
                if v is not None and v.ndim != 1:
                    raise ModelError(f"plan step {step.name!r}: bad per-channel vector")
        defined.add(step.output)
    for v in program.outputs:
        if v.name not in defined:
            raise ModelError(f"plan output {v.name!r} is never computed")
