"""Compiled plan files (.pc1): a validated, folded Program with weights already packed in
the kernels' layout, loadable with numpy alone and memory-mapped rather than copied.

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
def load(source):
    """Program from a plan file path (memory-mapped) or bytes (zero-copy views)."""
    import json  # here, not at module level: session sniffs .onnx files with is_plan
    import zlib
    if isinstance(source, (bytes, bytearray, memoryview)):
        buf = memoryview(source).cast("B")
        where = "plan bytes"
        data = np.frombuffer(buf, dtype=np.uint8)
    else:
        path = os.fspath(source)
        where = f"plan {path!r}"
        try:
            data = np.memmap(path, dtype=np.uint8, mode="r")
        except (OSError, ValueError) as exc:
            raise ModelError(f"cannot map {where}: {exc}") from None
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
    crc = zlib.crc32(header)
    step = 16 << 20
    for start in range(0, blen, step):
        crc = zlib.crc32(blob[start:start + step], crc)
    if crc != digest:
        raise ModelError(f"{where} is corrupt: checksum mismatch")
    try:
        meta = json.loads(header.decode("utf-8"))
        return _program(meta, blob)
    except ModelError:
        raise
    except (ValueError, KeyError, TypeError, IndexError, AttributeError) as exc:
        raise ModelError(f"{where} is corrupt: {type(exc).__name__}: {exc}") from None


def _program(meta, blob):
    if meta.get("format") != "pyconv1x1-plan":
        raise ModelError("plan header is not a pyconv1x1 plan")
    arrays = []
    for entry in meta["arrays"]:
        dtype = _DTYPES[entry["dtype"]]
        shape = tuple(int(d) for d in entry["shape"])
        off, nbytes = int(entry["offset"]), int(entry["nbytes"])
        if any(d < 0 for d in shape) or nbytes != math.prod(shape) * dtype.itemsize \
                or off < 0 or off % dtype.itemsize or off + nbytes > blob.size:
            raise ModelError(f"plan array table entry {entry} is inconsistent")
        arr = blob[off:off + nbytes].view(dtype).reshape(shape)
        arrays.append(arr)

    def arr(index, dtype="float32"):
        if index is None:
            return None
        a = arrays[int(index)]
        if a.dtype != _DTYPES[dtype]:
            raise ModelError(f"plan array {index} is {a.dtype}, expected {dtype}")
        return a

    steps = []
    for s in meta["steps"]:
        kind = s["type"]
        if kind == "chain":
            layers = [_layer(l, arr) for l in s["layers"]]
            steps.append(ChainStep(_name(s["input"]), _name(s["output"]), layers))
        elif kind == "affine":
            steps.append(AffineStep(str(s["name"]), _name(s["input"]), _name(s["output"]),
                                    _vec(arr(s["scale"])), _vec(arr(s["shift"])),
                                    _act(s["act"])))
        elif kind == "add":
            steps.append(AddStep(str(s["name"]), _name(s["a"]), _name(s["b"]),
                                 _name(s["output"]), _act(s["act"])))
        elif kind == "copy":
            steps.append(CopyStep(str(s["name"]), _name(s["input"]), _name(s["output"])))
        else:
            raise ModelError(f"plan step type {kind!r} is unknown")
    program = Program(inputs=tuple(_vi(v) for v in meta["inputs"]),
                      outputs=tuple(_vi(v) for v in meta["outputs"]), steps=steps,
                      opset=int(meta.get("opset", 0)), producer=str(meta.get("producer", "")),
                      notes=[str(n) for n in meta.get("notes", [])])
    validate(program)
    return program


def _name(x):
    if not isinstance(x, str) or not x:
        raise ModelError(f"plan tensor name {x!r} is not a non-empty string")
    return x


def _vec(a):
    if a is not None and a.ndim != 1:
        raise ModelError(f"plan per-channel vector has shape {list(a.shape)}")
    return a


def _num(x):
    if x in ("inf", "-inf"):
        return float(x)
    value = float(x)
    if math.isnan(value):
        raise ModelError("plan activation bound is NaN")
    return value


def _act(a):
    kind = a["kind"]
    if kind not in ("none", "relu", "clip", "leaky"):
        raise ModelError(f"plan activation kind {kind!r} is unknown")
    return Activation(kind, _num(a["lo"]), _num(a["hi"]), _num(a["alpha"]))


def _vi(v):
    shape = v["shape"]
    if shape is not None:
        shape = tuple(d if (d is None or isinstance(d, str)) else int(d) for d in shape)
        if any(isinstance(d, int) and d < 0 for d in shape):
            raise ModelError(f"plan value {v['name']!r} has a negative dim")
    return ValueInfo(_name(v["name"]), str(v["elem_type"]), shape)


def _layer(l, arr):
    cout, k, group, mr = int(l["cout"]), int(l["k"]), int(l["group"]), int(l["mr"])
    if cout < 1 or k < 1 or group < 1 or cout % group or not 1 <= mr <= 64:
        raise ModelError(f"plan layer {l.get('names')}: cout {cout}, k {k}, group {group}, "
                         f"mr {mr} are inconsistent")
    packed = arr(l["packed"])
    blocks = np.ascontiguousarray(arr(l["blocks"], "int64"), dtype=np.intp)
    bias = arr(l["bias"])
    if bias is None or bias.shape != (cout,):
        raise ModelError(f"plan layer {l.get('names')}: bias shape does not match {cout}")
    if packed is None or packed.shape != (cout * k,):
        raise ModelError(f"plan layer {l.get('names')}: packed weight size does not match "
                         f"{cout} x {k}")
    layer = ConvLayer(names=tuple(str(n) for n in l["names"]), weight=None, bias=bias,
                      group=group, strides=tuple(int(x) for x in l["strides"]),
                      pads=tuple(int(x) for x in l["pads"]), auto_pad=str(l["auto_pad"]),
                      act=_act(l["act"]), residual=l["residual"],
                      res_mode=int(l["res_mode"]), spatial_rank=int(l["spatial_rank"]),
                      packed=(mr, packed, blocks), wshape=(cout, k))
    # the kernel trusts block offsets: they must be exactly what packing produces
    from .plan import block_table
    expect = block_table(cout, k, group, mr)
    if blocks.shape != expect.shape or not np.array_equal(blocks, expect):
        raise ModelError(f"plan layer {layer.name}: packed blocks are inconsistent")
    return layer


def validate(program):
    """Structural checks of a Program that did not come from our own rewrite stage."""
    defined = {v.name for v in program.inputs}
    if len(defined) != len(program.inputs):
        raise ModelError("plan declares an input twice")
    for v in program.inputs + program.outputs:
        if v.elem_type != "float32":
            raise ModelError(f"plan value {v.name!r} is {v.elem_type}, not float32")
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
