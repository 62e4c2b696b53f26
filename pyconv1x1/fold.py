"""Constant folding at load: ir.Graph -> ir.Graph with every node whose inputs are all
constants replaced by its value, and the constants nothing reads any more dropped.

Exporters write small constant subgraphs around the convs: a `Constant` divided into
another, a `Cast` or `Reshape` of an initializer, `DequantizeLinear` of int8 weights
(weight-only quantization). Each op here is computed with its ONNX semantics (numpy
broadcasting, the element type of its inputs, integer division truncating toward zero),
and only when every input is a constant: anything that reads a run-time tensor or a
shape (`Shape` is not folded) is left to the check stage, which refuses what it cannot
run. A constant node that cannot be folded (an integer division by zero, a cast to a
type numpy has no exact form for) stays too, and the check stage reports why."""
import math

import numpy as np

from .errors import ModelError
from .ir import Graph
from .onnx_reader import _DTYPES, _TYPE_NAMES, MAX_TENSOR_BYTES
from .ops import REGISTRY, Refused
from .ops import _attrs as bind_attrs

FOLDERS = {}


class NotFolded(Exception):
    """A constant-only node this pass does not compute; the reason says why."""


def folder(name):
    """Decorator: fn computes `name`'s outputs from its constant inputs."""
    return lambda fn: FOLDERS.setdefault(name, fn)


def fold_constants(graph):
    """(graph, notes): `graph` with its constant-only nodes folded into constants and
    its unread constants dropped; notes say what was folded (Program.notes)."""
    constants = dict(graph.constants)
    kept, notes = [], []
    foldable = [n for n in graph.nodes
                if n.op_type in FOLDERS and n.domain in ("", "ai.onnx")]
    if not foldable:
        return graph, notes
    from .check import topological_order
    for i in topological_order(graph):  # (ModelError on a cyclic or inconsistent graph)
        node = graph.nodes[i]
        values = _fold(node, constants, graph.opset)
        if values is None:
            kept.append((i, node))
            continue
        for name, value in zip(node.outputs, values):
            if name:
                value = np.ascontiguousarray(value)
                value.flags.writeable = False
                constants[name] = value
        notes.append(f"folded {node.label()} (constant inputs) into constant "
                     f"{node.outputs[0]!r} {list(values[0].shape)} {values[0].dtype}")
    if len(kept) == len(graph.nodes):
        return graph, notes
    read = {t for _, n in kept for t in n.inputs if t}
    read.update(v.name for v in graph.outputs)
    dead = [k for k in constants if k not in read]
    for k in dead:
        del constants[k]
    if dead:
        notes.append(f"dropped {len(dead)} constant(s) nothing reads any more")
    nodes = [n for _, n in sorted(kept, key=lambda item: item[0])]
    return Graph(nodes=nodes, inputs=graph.inputs, outputs=graph.outputs,
                 constants=constants, value_info=graph.value_info, opset=graph.opset,
                 name=graph.name, producer=graph.producer,
                 metadata=graph.metadata), notes


def _fold(node, constants, opset):
    """The node's output values, or None when it is not folded."""
    fn = FOLDERS.get(node.op_type)
    if fn is None or node.domain not in ("", "ai.onnx") or not node.outputs:
        return None
    if not node.inputs or any(t and t not in constants for t in node.inputs):
        return None
    args = [constants[t] if t else None for t in node.inputs]
    try:
        out = fn(node, args, opset)
    except NotFolded:
        return None
    return out if isinstance(out, tuple) else (out,)


def reason_not_folded(node, constants, opset):
    """Why a node of a folding op was not folded (for the check stage's message)."""
    missing = [t for t in node.inputs if t and t not in constants]
    if missing:
        return (f"input {missing[0]!r} is computed at run time; {node.op_type} runs only "
                "on constants (folded at load)")
    try:
        FOLDERS[node.op_type](node, [constants[t] if t else None for t in node.inputs],
                              opset)
    except NotFolded as why:
        return f"its constant inputs are not folded: {why}"
    return "not folded"  # (unreachable: a foldable node was folded)


# --------------------------------------------------------------------------------------
# helpers: attributes, inputs, dtypes, sizes
# --------------------------------------------------------------------------------------
def _attrs(node, spec):
    """Attributes bound with defaults (ops._attrs: a value of the wrong kind is a
    ModelError); one this pass does not know leaves the node unfolded."""
    try:
        return bind_attrs(node, spec)
    except Refused as why:
        raise NotFolded(str(why)) from None


def _arg(node, args, index, what, required=True):
    if index >= len(args) or args[index] is None:
        if required:
            raise ModelError(f"{node.label()}: missing input #{index} ({what})")
        return None
    return args[index]


def _check_size(node, shape, dtype):
    nbytes = math.prod(max(int(d), 1) for d in shape) * np.dtype(dtype).itemsize
    if nbytes > MAX_TENSOR_BYTES:
        raise ModelError(f"{node.label()}: its constant output {list(shape)} of "
                         f"{np.dtype(dtype).name} is over {MAX_TENSOR_BYTES} bytes")


def _same_type(node, *arrays):
    types = {a.dtype for a in arrays}
    if len(types) > 1:
        raise ModelError(f"{node.label()}: inputs of types "
                         f"{', '.join(a.dtype.name for a in arrays)}; the op needs one type")


def _broadcast(node, dtype, *shapes):
    try:
        shape = np.broadcast_shapes(*shapes)
    except ValueError:
        raise ModelError(f"{node.label()}: shapes {', '.join(str(list(s)) for s in shapes)}"
                         " do not broadcast") from None
    _check_size(node, shape, dtype)
    return shape


def _numeric(node, a, kinds="fiub"):
    if a.dtype.kind not in kinds:
        raise NotFolded(f"input of type {a.dtype.name}")
    return a


def _ints(node, a, what):
    if a.dtype.kind not in "iu" or a.ndim > 1:
        raise ModelError(f"{node.label()}: {what} must be a 1-D integer tensor, got "
                         f"{a.dtype.name} {list(a.shape)}")
    return [int(v) for v in a.reshape(-1)]


# --------------------------------------------------------------------------------------
# elementwise arithmetic
# --------------------------------------------------------------------------------------
def _binary(fn):
    def fold(node, args, opset):
        _attrs(node, {"broadcast": 0, "axis": None, "consumed_inputs": None})
        a, b = _arg(node, args, 0, "A"), _arg(node, args, 1, "B")
        _same_type(node, a, b)
        _numeric(node, a)
        _broadcast(node, a.dtype, a.shape, b.shape)
        with np.errstate(all="ignore"):  # integer wrap-around and inf/nan, as ONNX
            out = fn(node, a, b)
        return np.asarray(out).astype(a.dtype, copy=False)
    return fold


FOLDERS["Add"] = _binary(lambda node, a, b: np.add(a, b))
FOLDERS["Sub"] = _binary(lambda node, a, b: np.subtract(a, b))
FOLDERS["Mul"] = _binary(lambda node, a, b: np.multiply(a, b))


def _divide(node, a, b):
    if a.dtype.kind == "f":
        return np.divide(a, b)
    if a.dtype == np.bool_:
        raise NotFolded("Div of bool tensors is not defined")
    if np.any(b == 0):
        raise NotFolded("integer division by zero")
    # ONNX (and C) integer division truncates toward zero; numpy's // floors
    q = np.abs(a) // np.abs(b)
    return np.where((a < 0) != (b < 0), -q, q)


FOLDERS["Div"] = _binary(_divide)


def _unary(fn, kinds="f"):
    def fold(node, args, opset):
        _attrs(node, {"consumed_inputs": None})
        x = _numeric(node, _arg(node, args, 0, "X"), kinds)
        with np.errstate(all="ignore"):
            return np.asarray(fn(x)).astype(x.dtype, copy=False)
    return fold


FOLDERS["Neg"] = _unary(np.negative, "fi")
FOLDERS["Reciprocal"] = _unary(lambda x: np.divide(x.dtype.type(1), x))
FOLDERS["Sqrt"] = _unary(np.sqrt)


@folder("Pow")
def _pow(node, args, opset):
    _attrs(node, {"broadcast": 0, "axis": None})
    x, y = _arg(node, args, 0, "X"), _arg(node, args, 1, "Y")
    _numeric(node, x, "fi")
    _numeric(node, y, "fiu")
    _broadcast(node, x.dtype, x.shape, y.shape)
    with np.errstate(all="ignore"):
        if x.dtype.kind == "f":  # in double, rounded once to the base's type
            return np.power(x.astype(np.float64), y.astype(np.float64)).astype(x.dtype)
        if y.dtype.kind == "f" or np.any(y < 0):
            raise NotFolded("an integer base with a negative or fractional exponent")
        return np.power(x, y.astype(x.dtype)).astype(x.dtype)


# --------------------------------------------------------------------------------------
# types
# --------------------------------------------------------------------------------------
@folder("Cast")
def _cast(node, args, opset):
    a = _attrs(node, {"to": None, "saturate": 1})
    x = _arg(node, args, 0, "input")
    to = a["to"]
    if not isinstance(to, int):
        raise ModelError(f"{node.label()}: attribute 'to' must be an element type code")
    dtype = _DTYPES.get(to)
    if dtype is None:
        raise NotFolded(f"a cast to {_TYPE_NAMES.get(to, f'type {to}')}")
    dtype = dtype.newbyteorder("=")
    _numeric(node, x)
    if x.dtype.kind == "f" and dtype.kind in "iu":
        finite = np.isfinite(x)
        info = np.iinfo(dtype)
        with np.errstate(invalid="ignore"):
            t = np.trunc(x.astype(np.float64))
        too_big = float(info.max) + 1  # (a power of two: exact in float64)
        if not finite.all() or np.any((t < info.min) | (t >= too_big)):
            raise NotFolded(f"{x.dtype.name} values outside {dtype.name}'s range (the "
                            "result is undefined)")
        return t.astype(dtype)
    with np.errstate(all="ignore"):
        return x.astype(dtype)


@folder("Identity")
def _identity(node, args, opset):
    _attrs(node, {})
    return _arg(node, args, 0, "input")


# --------------------------------------------------------------------------------------
# shapes (of constants only: Shape itself is never folded)
# --------------------------------------------------------------------------------------
@folder("Reshape")
def _reshape(node, args, opset):
    a = _attrs(node, {"allowzero": 0, "shape": None, "consumed_inputs": None})
    x = _arg(node, args, 0, "data")
    if opset < 5:
        if a["shape"] is None:
            raise ModelError(f"{node.label()}: no 'shape' attribute")
        spec = [int(v) for v in a["shape"]]
    else:
        spec = _ints(node, _arg(node, args, 1, "shape"), "shape")
    out = []
    for i, d in enumerate(spec):
        if d == 0 and not a["allowzero"]:
            if i >= x.ndim:
                raise ModelError(f"{node.label()}: shape {spec} copies dim {i} of a "
                                 f"rank-{x.ndim} input")
            d = x.shape[i]
        out.append(d)
    if out.count(-1) > 1 or any(d < -1 for d in out):
        raise ModelError(f"{node.label()}: shape {spec} is not a valid Reshape target")
    if -1 in out:
        known = math.prod(d for d in out if d != -1)
        if known == 0 or x.size % known:
            raise ModelError(f"{node.label()}: cannot reshape {list(x.shape)} to {spec}")
        out[out.index(-1)] = x.size // known
    if math.prod(out) != x.size:
        raise ModelError(f"{node.label()}: cannot reshape {list(x.shape)} to {spec}")
    return x.reshape(out)


def _axes(node, args, opset, since, required):
    a = _attrs(node, {"axes": None})
    if opset >= since:
        if a["axes"] is not None:
            raise ModelError(f"{node.label()}: 'axes' is an input since opset {since}")
        v = _arg(node, args, 1, "axes", required=False)
        axes = None if v is None else _ints(node, v, "axes")
    else:
        axes = None if a["axes"] is None else [int(v) for v in a["axes"]]
    if axes is None and required:
        raise ModelError(f"{node.label()}: no axes")
    return axes


def _normalize_axes(node, axes, rank):
    out = sorted(ax + rank if ax < 0 else ax for ax in axes)
    if any(not 0 <= ax < rank for ax in out) or len(set(out)) != len(out):
        raise ModelError(f"{node.label()}: axes {axes} out of range for rank {rank}")
    return out


@folder("Unsqueeze")
def _unsqueeze(node, args, opset):
    x = _arg(node, args, 0, "data")
    axes = _axes(node, args, opset, 13, True)
    axes = _normalize_axes(node, axes, x.ndim + len(axes))
    shape = list(x.shape)
    for ax in axes:
        shape.insert(ax, 1)
    return x.reshape(shape)


@folder("Squeeze")
def _squeeze(node, args, opset):
    x = _arg(node, args, 0, "data")
    axes = _axes(node, args, opset, 13, False)
    if axes is None:
        axes = [i for i, d in enumerate(x.shape) if d == 1]
    axes = _normalize_axes(node, axes, x.ndim)
    if any(x.shape[ax] != 1 for ax in axes):
        raise ModelError(f"{node.label()}: squeezes axes {axes} of shape {list(x.shape)}; "
                         "each must be 1")
    return x.reshape([d for i, d in enumerate(x.shape) if i not in axes])


@folder("Flatten")
def _flatten(node, args, opset):
    a = _attrs(node, {"axis": 1})
    x = _arg(node, args, 0, "input")
    axis = a["axis"] + x.ndim if a["axis"] < 0 else a["axis"]
    if not 0 <= axis <= x.ndim:
        raise ModelError(f"{node.label()}: axis {a['axis']} out of range for rank {x.ndim}")
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@folder("Expand")
def _expand(node, args, opset):
    _attrs(node, {})
    x = _arg(node, args, 0, "input")
    spec = _ints(node, _arg(node, args, 1, "shape"), "shape")
    if any(d < 0 for d in spec):
        raise ModelError(f"{node.label()}: shape {spec} has a negative dim")
    shape = _broadcast(node, x.dtype, x.shape, tuple(spec))
    return np.broadcast_to(x, shape).copy()


@folder("ConstantOfShape")
def _constant_of_shape(node, args, opset):
    a = _attrs(node, {"value": None})
    spec = _ints(node, _arg(node, args, 0, "input"), "shape")
    value = a["value"]
    if value is None:
        value = np.zeros(1, np.float32)
    if not isinstance(value, np.ndarray) or value.size != 1:
        raise ModelError(f"{node.label()}: 'value' must be a one-element tensor")
    if any(d < 0 for d in spec):
        raise ModelError(f"{node.label()}: shape {spec} has a negative dim")
    _check_size(node, spec, value.dtype)
    return np.full(spec, value.reshape(-1)[0], value.dtype)


# --------------------------------------------------------------------------------------
# weight-only quantization
# --------------------------------------------------------------------------------------
@folder("DequantizeLinear")
def _dequantize(node, args, opset):
    a = _attrs(node, {"axis": 1, "block_size": 0, "output_dtype": 0})
    x = _arg(node, args, 0, "x")
    scale = _arg(node, args, 1, "x_scale")
    zero = _arg(node, args, 2, "x_zero_point", required=False)
    if a["block_size"]:
        raise NotFolded(f"blocked quantization (block_size={a['block_size']})")
    if x.dtype not in (np.int8, np.uint8, np.int16, np.uint16, np.int32):
        raise NotFolded(f"x of type {x.dtype.name}")
    if scale.dtype.kind != "f":
        raise ModelError(f"{node.label()}: x_scale is {scale.dtype.name}; it must be float")
    if a["output_dtype"] and _DTYPES.get(a["output_dtype"]) != scale.dtype:
        raise NotFolded(f"output_dtype {a['output_dtype']} differs from x_scale's type")
    if zero is not None and zero.dtype != x.dtype:
        raise ModelError(f"{node.label()}: x_zero_point is {zero.dtype.name}, x is "
                         f"{x.dtype.name}; they must be one type")
    if zero is not None and zero.shape != scale.shape:
        raise ModelError(f"{node.label()}: x_zero_point {list(zero.shape)} and x_scale "
                         f"{list(scale.shape)} differ in shape")
    shape = [1] * x.ndim
    if scale.size == 1 and scale.ndim <= 1:
        pass  # per tensor (a 1-element vector too, as onnxruntime reads it)
    elif scale.ndim == 1:
        axis = a["axis"] + x.ndim if a["axis"] < 0 else a["axis"]
        if not 0 <= axis < x.ndim or x.shape[axis] != scale.size:
            raise ModelError(f"{node.label()}: x_scale of {scale.size} values does not "
                             f"match axis {a['axis']} of x {list(x.shape)}")
        shape[axis] = scale.size
    else:
        raise ModelError(f"{node.label()}: x_scale has shape {list(scale.shape)}; per "
                         "tensor or per axis (1-D) scales only")
    q = x.astype(np.int64)
    if zero is not None:
        q = q - zero.astype(np.int64).reshape(shape)
    out = q.astype(np.float32) * scale.astype(np.float32).reshape(shape)
    return out.astype(scale.dtype, copy=False)


# --------------------------------------------------------------------------------------
# what the check stage says about a folding op's node left standing
# --------------------------------------------------------------------------------------
def _refuse_unfolded(node, ctx):
    raise Refused(reason_not_folded(node, ctx.constants, ctx.opset))


for _name in FOLDERS:
    REGISTRY.setdefault(_name, _refuse_unfolded)
