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
from .program import STEP_KINDS, Program
from .program.codec import (field as _field, integer as _int,
                            json_list as _list, name as _name, show as _show,
                            string as _str)

MAGIC = b"PC1PLAN\x00"
FORMAT_VERSION = 1
PREFIX = struct.Struct("<8sIIQQI28x")
ALIGN = 64
MAX_HEADER_BYTES = 64 << 20
_DTYPES = {"float32": np.dtype("<f4"), "int64": np.dtype("<i8"), "int32": np.dtype("<i4"),
           "int16": np.dtype("<i2"), "int8": np.dtype("i1"),
           "uint8": np.dtype("u1")}  # (int32 and smaller: quantized steps)
_KEEP = ("int32", "int16", "int8", "uint8")  # stored as they are; other ints as int64


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
        dtype = ("float32" if arr.dtype.kind == "f" else
                 arr.dtype.name if arr.dtype.name in _KEEP else "int64")
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


def _vi_json(v):
    return {"name": v.name, "elem_type": v.elem_type,
            "shape": None if v.shape is None else list(v.shape)}


def dumps(program, mr):
    """Serialize a Program, its conv weights packed for blocks of `mr` rows."""
    import json
    import zlib
    arrays = _Arrays()
    steps = [step.encode(arrays, mr) for step in program.steps]
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
    from .pipeline import load_program
    program = load_program(model, base_dir)
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
    cls = STEP_KINDS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise ModelError(f"{what}: step type {_show(kind)} is unknown")
    return cls.decode(s, arr, what)


def _vi(v, what):
    name = _name(_field(v, "name", what), f"{what} name")
    shape = _field(v, "shape", what)
    if shape is not None:
        shape = tuple(d if (d is None or isinstance(d, str)) else
                      _int(d, f"{what} {name!r} dim")
                      for d in _list(shape, f"{what} {name!r} shape"))
    return ValueInfo(name, _str(_field(v, "elem_type", what), f"{what} elem_type"), shape)


def validate(program):
    """Structural checks of a Program that did not come from our own rewrite stage."""
    defined = {v.name for v in program.inputs}
    if len(defined) != len(program.inputs):
        raise ModelError("plan declares an input twice")
    for v in program.inputs + program.outputs:
        if v.elem_type not in ("float32", "float16", "uint8", "int8"):
            raise ModelError(f"plan value {v.name!r} is {v.elem_type}, not float32 or "
                             "float16 (or uint8 / int8: a quantized model's edges)")
    for step in program.steps:
        for t in step.reads:
            if t not in defined:
                raise ModelError(f"plan step {step.label!r} reads "
                                 f"{t!r} before it is defined")
        if step.output in defined:
            raise ModelError(f"plan defines tensor {step.output!r} twice")
        step.validate(defined)
        defined.add(step.output)
    for v in program.outputs:
        if v.name not in defined:
            raise ModelError(f"plan output {v.name!r} is never computed")
