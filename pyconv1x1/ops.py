"""One binder per ONNX op: reads a node's attributes with the spec's defaults, checks
what this runtime can run, and returns the program step that computes it (before
fusion). An explicit registry maps op type to binder; nothing here sees protobuf."""
import math

import numpy as np

from .errors import ModelError
from .onnx_reader import _Unsupported
from .program import (IDENTITY, RELU, Activation, AddStep, AffineStep, ChainStep,
                      ConvLayer, CopyStep, MeanStep, ScaleStep, TransposeStep,
                      channel_move)
from .program.steps import scales
from .program.epilogue import OPS as EPILOGUE_OPS
from .program.epilogue import Op

# ops the pattern pass (patterns.py) makes of several nodes, in their own domain
PATTERN_DOMAIN = "pyconv1x1"

REGISTRY = {}
FLOAT_MAX = float(np.finfo(np.float32).max)


class Refused(Exception):
    """The node is valid ONNX that this runtime does not run; the reason says why."""


def op(name):
    def register(fn):
        REGISTRY[name] = fn
        return fn
    return register


class Context:
    """What a binder may know about its node's inputs."""

    def __init__(self, constants, shapes, opset, used=frozenset()):
        self.constants = constants
        self.shapes = shapes
        self.opset = opset
        self.used = used  # tensors some node or a graph output reads

    def const(self, node, index, what, required=True):
        """The constant at input `index`, None if omitted, Refused if not constant."""
        if index >= len(node.inputs) or node.inputs[index] == "":
            if required:
                raise ModelError(f"{node.label()}: missing input #{index} ({what})")
            return None
        name = node.inputs[index]
        if name not in self.constants:
            raise Refused(f"{what} {name!r} is computed at run time; only constant "
                          f"{what}s are supported")
        return self.constants[name]

    def rank(self, name):
        shape = self.shapes.get(name)
        return None if shape is None else len(shape)


def _attrs(node, spec):
    """Bind attributes with defaults; unknown attributes are refused, not ignored, and
    a value of the wrong kind (e.g. an int where ONNX has ints) is a ModelError."""
    out = dict(spec)
    for key, value in node.attrs.items():
        if key not in spec:
            raise Refused(f"attribute {key!r} is not supported")
        if isinstance(value, _Unsupported):
            raise Refused(f"attribute {key!r} is {value.why}")
        out[key] = _attr_kind(node, key, value)
    return out


_ATTR_KINDS = {"auto_pad": "string", "dilations": "ints", "group": "int",
               "kernel_shape": "ints", "pads": "ints", "strides": "ints", "alpha": "float",
               "min": "float", "max": "float", "epsilon": "float", "momentum": "float",
               "spatial": "int", "training_mode": "int", "is_test": "int",
               "consumed_inputs": "ints", "broadcast": "int", "axis": "int",
               "ratio": "float", "seed": "int", "beta": "float", "transA": "int",
               "transB": "int", "perm": "ints", "axes": "ints", "keepdims": "int",
               "noop_with_empty_axes": "int", "approximate": "string"}


def _attr_kind(node, key, value):
    kind = _ATTR_KINDS.get(key)
    ok = {"string": isinstance(value, str),
          "int": isinstance(value, int),
          "float": isinstance(value, (int, float)),
          "ints": isinstance(value, tuple) and all(isinstance(v, int) for v in value),
          None: True}[kind]
    if not ok:
        got = type(value).__name__
        if isinstance(value, tuple):
            got = "floats" if any(isinstance(v, float) for v in value) else "a list"
        raise ModelError(f"{node.label()}: attribute {key!r} is {got} {value!r}; ONNX "
                         f"defines it as {kind}")
    return float(value) if kind == "float" else value


def _inputs(node, lo, hi):
    n = len(node.inputs)
    if not lo <= n <= hi:
        raise ModelError(f"{node.label()}: {n} inputs; the op takes {lo} to {hi}")
    if node.inputs[0] == "":
        raise ModelError(f"{node.label()}: its data input is empty")


def _single_output(node):
    if not node.outputs or node.outputs[0] == "":
        raise ModelError(f"{node.label()}: no output")


def _float_tensor(node, arr, what):
    if arr.dtype.kind != "f":
        raise Refused(f"{what} is {arr.dtype.name}; only float tensors are supported")
    with np.errstate(over="ignore"):  # (numpy warns, or raises under -W error)
        out = np.ascontiguousarray(arr, dtype=np.float32)
    if arr.dtype.itemsize > 4 and out.size:
        lost = np.isinf(out) & np.isfinite(arr)
        if lost.any():
            value = float(arr[lost].flat[0])
            raise Refused(f"{what} holds {value!r}, beyond float32's range")
    return out


# --------------------------------------------------------------------------------------
@op("Conv")
def conv(node, ctx):
    _inputs(node, 2, 3)
    _single_output(node)
    a = _attrs(node, {"auto_pad": "NOTSET", "dilations": None, "group": 1,
                      "kernel_shape": None, "pads": None, "strides": None})
    ks = a["kernel_shape"]
    if node.inputs[1] not in ctx.constants and ks is not None and any(k != 1 for k in ks):
        # the weight is computed at run time: the kernel size is still the first reason
        raise Refused(f"kernel {'x'.join(map(str, ks))}; only 1x1 kernels run")
    w = ctx.const(node, 1, "weight")
    if w.ndim not in (3, 4):
        if w.ndim >= 5:
            raise Refused(f"{w.ndim - 2}-D convolution (weight {list(w.shape)}); only 1-D "
                          "and 2-D 1x1 convolutions run")
        raise ModelError(f"{node.label()}: weight has shape {list(w.shape)}; Conv needs "
                         "[M, C/group, kH, kW]")
    spatial = w.ndim - 2
    kernel = tuple(w.shape[2:])
    if a["kernel_shape"] is not None and tuple(a["kernel_shape"]) != kernel:
        raise ModelError(f"{node.label()}: kernel_shape {list(a['kernel_shape'])} does not "
                         f"match the weight's {list(kernel)}")
    if any(k != 1 for k in kernel):
        raise Refused(f"kernel {'x'.join(map(str, kernel))}; only 1x1 kernels run")
    w = _float_tensor(node, w, "weight")
    group = a["group"]
    cout = w.shape[0]
    if not isinstance(group, int) or group < 1 or cout % group:
        raise ModelError(f"{node.label()}: group={group} must be >= 1 and divide the "
                         f"{cout} output channels")
    strides = tuple(a["strides"] or (1,) * spatial)
    pads = tuple(a["pads"] or (0,) * (2 * spatial))
    dil = tuple(a["dilations"] or (1,) * spatial)
    if len(strides) != spatial or len(dil) != spatial or len(pads) != 2 * spatial:
        raise ModelError(f"{node.label()}: strides {list(strides)}, dilations {list(dil)}"
                         f" and pads {list(pads)} do not fit a {spatial}-D kernel")
    if any(s < 1 for s in strides) or any(d < 1 for d in dil) or any(p < 0 for p in pads):
        raise ModelError(f"{node.label()}: strides {list(strides)} and dilations "
                         f"{list(dil)} must be >= 1, pads {list(pads)} >= 0")
    if max(strides + pads) > 1 << 20:
        raise Refused(f"strides {list(strides)} / pads {list(pads)} beyond 2^20")
    auto_pad = a["auto_pad"]
    if auto_pad not in ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"):
        raise ModelError(f"{node.label()}: auto_pad {auto_pad!r} is not an ONNX value")
    b = ctx.const(node, 2, "bias", required=False)
    if b is not None:
        b = _float_tensor(node, b, "bias")
        if b.shape != (cout,):
            raise ModelError(f"{node.label()}: bias shape {list(b.shape)}, expected "
                             f"[{cout}] (one per output channel)")
    else:
        b = np.zeros(cout, np.float32)
    x_rank = ctx.rank(node.inputs[0])
    if x_rank is not None and x_rank != w.ndim:
        raise ModelError(f"{node.label()}: input {node.inputs[0]!r} has rank {x_rank}; "
                         f"the weight {list(w.shape)} needs rank {w.ndim}")
    cin = w.shape[1] * group
    x_shape = ctx.shapes.get(node.inputs[0])
    if x_shape is not None and isinstance(x_shape[1], int) and x_shape[1] != cin:
        raise ModelError(f"{node.label()}: input {node.inputs[0]!r} has {x_shape[1]} "
                         f"channels; weight {list(w.shape)} with group={group} needs {cin}")
    if spatial == 1:  # [N, C, L] runs as [N, C, 1, L]
        strides, pads = (1, strides[0]), (0, pads[0], 0, pads[1])
    else:
        pads = (pads[0], pads[1], pads[2], pads[3])
    weight = w.reshape(cout, -1)
    if np.may_share_memory(weight, ctx.constants[node.inputs[1]]):
        weight = weight.copy()  # ours, not a view keeping the model's bytes alive
    layer = ConvLayer(names=(node.name,), weight=weight, bias=b.copy(),
                      group=group, strides=strides, pads=pads, auto_pad=auto_pad,
                      spatial_rank=spatial)
    return ChainStep(input=node.inputs[0], output=node.outputs[0], layers=[layer])


def _act_step(node, act, max_inputs=1):
    _inputs(node, 1, max_inputs)
    _single_output(node)
    return AffineStep(node.name, node.inputs[0], node.outputs[0], None, None, act)


@op("Relu")
def relu(node, ctx):
    _attrs(node, {})
    return _act_step(node, RELU)


@op("LeakyRelu")
def leaky_relu(node, ctx):
    a = _attrs(node, {"alpha": 0.01})
    alpha = float(a["alpha"])
    if not math.isfinite(alpha):
        raise ModelError(f"{node.label()}: alpha {alpha} is not finite")
    return _act_step(node, Activation("leaky", -math.inf, math.inf, alpha))


@op("Clip")
def clip(node, ctx):
    if ctx.opset < 11:
        a = _attrs(node, {"min": -FLOAT_MAX, "max": FLOAT_MAX})
        lo, hi = float(a["min"]), float(a["max"])
        _inputs(node, 1, 1)
    else:
        _attrs(node, {})
        _inputs(node, 1, 3)
        lo, hi = -math.inf, math.inf
        for index, what in ((1, "min"), (2, "max")):
            v = ctx.const(node, index, f"Clip {what}", required=False)
            if v is None:
                continue
            if v.size != 1:
                raise ModelError(f"{node.label()}: {what} has shape {list(v.shape)}; "
                                 "Clip bounds are scalars")
            value = float(np.asarray(v, dtype=np.float64).reshape(()))
            if math.isnan(value):
                raise Refused(f"{what} is NaN")
            if index == 1:
                lo = value
            else:
                hi = value
    lo = -math.inf if lo <= -FLOAT_MAX else lo
    hi = math.inf if hi >= FLOAT_MAX else hi
    if lo > hi:  # ONNX: every output is max
        lo = hi
    kind = "relu" if (lo == 0.0 and hi == math.inf) else "clip"
    return _act_step(node, Activation(kind, lo, hi, 1.0), max_inputs=3)


def _epilogue_binder(kind):
    """Binder of an ONNX op that is one epilogue op whose parameters are its attributes
    (the table's defaults are the ONNX spec's)."""
    spec = EPILOGUE_OPS[kind]

    def bind(node, ctx):
        a = _attrs(node, dict(spec.params))
        params = tuple(float(a[name]) for name, _ in spec.params)
        if not all(math.isfinite(v) for v in params):
            raise ModelError(f"{node.label()}: attributes {a} must be finite")
        return _act_step(node, Activation.program([Op(kind, params)]))
    return bind


for _kind in EPILOGUE_OPS.values():  # Sigmoid, HardSwish, Tanh
    if _kind.onnx:
        op(_kind.onnx)(_epilogue_binder(_kind.name))


@op("PRelu")
def prelu(node, ctx):
    """slope: a constant [C], [C, 1, 1], [1, C, 1, 1] or a scalar (one per channel)."""
    _attrs(node, {})
    _inputs(node, 2, 2)
    _single_output(node)
    slope = _per_channel(node, ctx, ctx.const(node, 1, "slope"), node.inputs[0])
    param = float(slope[0]) if slope.size == 1 else slope
    if not np.isfinite(slope).all():
        raise ModelError(f"{node.label()}: slope holds a value that is not finite")
    return AffineStep(node.name, node.inputs[0], node.outputs[0], None, None,
                      Activation.program([Op("prelu", (param,))]))


@op("Gelu")
def gelu(node, ctx):
    """opset 20; also what patterns.py makes of the x/2 * (1 + Erf(x/sqrt 2)) nodes."""
    a = _attrs(node, {"approximate": "none"})
    kinds = {"none": "gelu", "tanh": "gelu_tanh"}
    if a["approximate"] not in kinds:
        raise ModelError(f"{node.label()}: approximate={a['approximate']!r}; ONNX "
                         "defines 'none' and 'tanh'")
    return _act_step(node, Activation.program([Op(kinds[a["approximate"]])]))


@op(f"{PATTERN_DOMAIN}:Silu")
def silu(node, ctx):
    """Mul(x, Sigmoid(x)), as exporters write nn.SiLU (see patterns.py)."""
    return _act_step(node, Activation.program([Op("silu")]))


@op("Erf")
def erf(node, ctx):
    raise Refused("Erf runs only inside the GELU pattern x * 0.5 * (1 + Erf(x / sqrt 2)) "
                  "(Div or Mul by the constant, Add 1, two Muls), which this one is not")


@op("BatchNormalization")
def batch_norm(node, ctx):
    a = _attrs(node, {"epsilon": 1e-5, "momentum": 0.9, "spatial": 1,
                      "training_mode": 0, "is_test": 1, "consumed_inputs": None})
    _inputs(node, 5, 5)
    if a["training_mode"]:
        raise Refused("training_mode=1; only inference BatchNormalization runs")
    if a["spatial"] != 1:
        raise Refused("spatial=0 (per-pixel statistics) is not supported")
    if any(o for o in node.outputs[1:]):
        raise Refused("the running mean/var outputs are requested (training form)")
    params = [_float_tensor(node, ctx.const(node, i, what), what).astype(np.float64)
              for i, what in ((1, "scale"), (2, "B"), (3, "mean"), (4, "var"))]
    c = params[0].size
    for p, what in zip(params, ("scale", "B", "mean", "var")):
        if p.ndim != 1 or p.size != c:
            raise ModelError(f"{node.label()}: {what} has shape {list(p.shape)}; expected "
                             f"[{c}]")
    gamma, beta, mean, var = params
    eps = float(a["epsilon"])
    with np.errstate(all="ignore"):
        scale = gamma / np.sqrt(var + eps)
        shift = beta - mean * scale
    x_shape = ctx.shapes.get(node.inputs[0])
    if x_shape is not None and len(x_shape) >= 2 and isinstance(x_shape[1], int) \
            and x_shape[1] != c:
        raise ModelError(f"{node.label()}: input has {x_shape[1]} channels; the "
                         f"parameters have {c}")
    with np.errstate(over="ignore", invalid="ignore"):  # (as float32 arithmetic would)
        scale, shift = scale.astype(np.float32), shift.astype(np.float32)
    return AffineStep(node.name, node.inputs[0], node.outputs[0], scale, shift)


def _per_channel(node, ctx, const, data_name, last_axis=False):
    """A constant operand of Add/Mul as a per-channel vector [C] (or scalar [1]) for
    the NCHW data tensor, or Refused when it broadcasts any other way. last_axis: a
    constant varying along the last axis alone (of a rank >= 3 tensor: channels-last)
    comes back as _LastAxis(vector)."""
    c = _float_tensor(node, const, "constant operand")
    rank = ctx.rank(data_name)
    if c.size == 1:
        if rank is not None and c.ndim > rank:
            raise Refused(f"constant of shape {list(const.shape)} broadcasts beyond the "
                          f"rank-{rank} input")
        return c.reshape(1).copy()  # (a view would keep the whole model's bytes alive)
    if rank is None:
        raise Refused(f"constant of shape {list(const.shape)} against an input of unknown "
                      "rank")
    if c.ndim > rank or rank < 2:
        raise Refused(f"constant of shape {list(const.shape)} does not broadcast "
                      f"per channel over a rank-{rank} input")
    full = (1,) * (rank - c.ndim) + c.shape
    if last_axis and rank > 2 and all(d == 1 for d in full[:-1]):  # channels-last
        x_shape = ctx.shapes.get(data_name)
        if x_shape is not None and x_shape[-1] == 1 and full[-1] != 1:
            raise Refused(f"constant of shape {list(const.shape)} broadcasts input "
                          f"{data_name!r} of shape {list(x_shape)} to a larger shape")
        if x_shape is not None and isinstance(x_shape[-1], int) and x_shape[-1] != full[-1]:
            raise ModelError(f"{node.label()}: constant of shape {list(const.shape)} does "
                             f"not broadcast against input {data_name!r} of shape "
                             f"{list(x_shape)}")
        return _LastAxis(c.reshape(-1).copy())
    if full[0] != 1 or any(d != 1 for d in full[2:]):
        raise Refused(f"constant of shape {list(const.shape)} varies along more than the "
                      "channel axis")
    x_shape = ctx.shapes.get(data_name)
    if x_shape is not None and isinstance(x_shape[1], int) and x_shape[1] != full[1]:
        raise ModelError(f"{node.label()}: constant of shape {list(const.shape)} does not "
                         f"broadcast against input {data_name!r} of shape {list(x_shape)}")
    return c.reshape(-1).copy()


def binary_operands(node, ctx, kind):
    """(a, b, constant a or None, constant b or None) of a two-input elementwise op;
    Refused when both are constants (the fold stage left them: it says why)."""
    _attrs(node, {"broadcast": 0, "axis": None, "consumed_inputs": None})
    _inputs(node, 2, 2)
    _single_output(node)
    a, b = node.inputs
    if b == "":
        raise ModelError(f"{node.label()}: its second input is empty; {kind} needs two")
    ca, cb = ctx.constants.get(a), ctx.constants.get(b)
    if ca is not None and cb is not None:
        from .fold import reason_not_folded
        raise Refused(reason_not_folded(node, ctx.constants, ctx.opset))
    return a, b, ca, cb


def _binary(node, ctx, kind):
    a, b, ca, cb = binary_operands(node, ctx, kind)
    if ca is None and cb is None:
        if kind == "Mul":
            return _scale(node, ctx, a, b)
        return AddStep(node.name, a, b, node.outputs[0])
    data, const = (a, cb) if cb is not None else (b, ca)
    vec = _per_channel(node, ctx, const, data, last_axis=True)
    last = isinstance(vec, _LastAxis)
    vec = vec.values if last else vec
    if kind == "Mul":
        return AffineStep(node.name, data, node.outputs[0], vec, None, last=last)
    return AffineStep(node.name, data, node.outputs[0], None, vec, last=last)


class _LastAxis:
    """_per_channel's answer for a constant that varies along the last axis."""

    def __init__(self, values):
        self.values = values


def _scale(node, ctx, a, b):
    """Mul of two run-time tensors: a feature map by per-image channel weights
    [N, C, 1, ...] (squeeze-excitation), either operand order."""
    sa, sb = ctx.shapes.get(a), ctx.shapes.get(b)
    if sa is None or sb is None:
        raise Refused("product of two run-time tensors of unknown shapes; only a "
                      "per-channel scale [N, C, 1, ...] of a feature map runs")
    if scales(sb, sa):
        return ScaleStep(node.name, a, b, node.outputs[0])
    if scales(sa, sb):
        return ScaleStep(node.name, b, a, node.outputs[0])
    raise Refused(f"product of two run-time tensors {list(sa)} and {list(sb)}; only a "
                  "per-channel scale [N, C, 1, ...] of a feature map runs")


@op("Add")
def add(node, ctx):
    return _binary(node, ctx, "Add")


@op("Mul")
def mul(node, ctx):
    return _binary(node, ctx, "Mul")


def _unary(node, cls):
    """A step of kind `cls` for an op of one input, one output and no attributes."""
    _attrs(node, {})
    _inputs(node, 1, 1)
    _single_output(node)
    return cls(node.name, node.inputs[0], node.outputs[0])


@op("Identity")
def identity(node, ctx):
    return _unary(node, CopyStep)


@op("Dropout")
def dropout(node, ctx):
    _attrs(node, {"ratio": 0.5, "is_test": 0, "seed": None, "consumed_inputs": None})
    _inputs(node, 1, 3)
    if ctx.opset >= 12 and len(node.inputs) == 3 and node.inputs[2]:
        mode = ctx.const(node, 2, "training_mode")
        if mode.size != 1:
            raise ModelError(f"{node.label()}: training_mode has shape {list(mode.shape)};"
                             " it is a scalar")
        if bool(mode.reshape(-1)[0]):
            raise Refused("training_mode is true; only inference Dropout runs")
    if len(node.outputs) > 1 and node.outputs[1] and node.outputs[1] in ctx.used:
        raise Refused("its mask output is used")
    return CopyStep(node.name, node.inputs[0], node.outputs[0])


# -- Linear at every position, layout, squeeze-excitation ---------------------------------
def _linear(node, ctx, x, weight, bias):
    """A Linear applied to the last axis of x ([N, C], [N, L, C] or [N, H, W, C]) as a
    channels-last 1x1 conv chain. weight: [cout, cin] float32 (ours), bias [cout]."""
    rank = ctx.rank(x)
    if rank is None:
        raise Refused(f"input {x!r} has an unknown rank; a Linear runs on [N, C], "
                      "[N, L, C] or [N, H, W, C]")
    if not 2 <= rank <= 4:
        raise Refused(f"input {x!r} has rank {rank}; a Linear runs on [N, C], [N, L, C] "
                      "or [N, H, W, C]")
    cout, cin = weight.shape
    shape = ctx.shapes.get(x)
    if isinstance(shape[-1], int) and shape[-1] != cin:
        raise ModelError(f"{node.label()}: input {x!r} of shape {list(shape)} has "
                         f"{shape[-1]} features; the weight needs {cin}")
    layer = ConvLayer(names=(node.name,), weight=weight, bias=bias,
                      spatial_rank=rank - 2)
    return ChainStep(x, node.outputs[0], [layer], in_last=True, out_last=True)


def _matrix(node, ctx, index, what):
    w = _float_tensor(node, ctx.const(node, index, what), what)
    if w.ndim != 2:
        raise Refused(f"{what} {node.inputs[index]!r} has shape {list(w.shape)}; only a "
                      "2-D constant weight (a Linear) runs")
    return w


@op("MatMul")
def matmul(node, ctx):
    _attrs(node, {})
    _inputs(node, 2, 2)
    _single_output(node)
    a, b = node.inputs
    if a in ctx.constants and b not in ctx.constants:
        raise Refused(f"its constant {a!r} is the left operand: the product runs over axis "
                      f"-2 of {b!r}; only x @ W with a constant W (a Linear over the last "
                      "axis) runs")
    w = _matrix(node, ctx, 1, "weight")  # [cin, cout]
    return _linear(node, ctx, a, np.ascontiguousarray(w.T), np.zeros(w.shape[1], np.float32))


@op("Gemm")
def gemm(node, ctx):
    g = _attrs(node, {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0,
                      "broadcast": 0})
    _inputs(node, 2, 3)
    _single_output(node)
    if g["transA"]:
        raise Refused("transA=1 is not supported: the product would run over axis 0 of "
                      "the input; only A @ W (a Linear over the last axis) runs")
    if node.inputs[0] in ctx.constants:
        raise Refused(f"its input {node.inputs[0]!r} is a constant")
    w = _matrix(node, ctx, 1, "weight")
    w = w if g["transB"] else w.T  # [cout, cin]
    with np.errstate(over="ignore"):
        w = np.ascontiguousarray(w * np.float32(g["alpha"]), np.float32)
    cout = w.shape[0]
    c = ctx.const(node, 2, "bias C", required=False)
    bias = np.zeros(cout, np.float32)
    if c is not None:
        c = _float_tensor(node, c, "bias C")
        if c.size != 1 and (c.ndim > 2 or c.shape[-1] != cout
                            or (c.ndim == 2 and c.shape[0] != 1)):
            raise Refused(f"bias C of shape {list(c.shape)} varies along the batch; only a "
                          f"per-output bias [{cout}] (or a scalar) runs")
        with np.errstate(over="ignore"):
            bias = (np.broadcast_to(c.reshape(-1), (cout,)) * np.float32(g["beta"])
                    ).astype(np.float32)
    if ctx.rank(node.inputs[0]) not in (None, 2):
        raise ModelError(f"{node.label()}: input {node.inputs[0]!r} has rank "
                         f"{ctx.rank(node.inputs[0])}; Gemm takes a matrix")
    return _linear(node, ctx, node.inputs[0], w, bias)


@op("Transpose")
def transpose(node, ctx):
    a = _attrs(node, {"perm": None})
    _inputs(node, 1, 1)
    _single_output(node)
    rank = ctx.rank(node.inputs[0])
    if rank is None:
        raise Refused(f"input {node.inputs[0]!r} has an unknown rank")
    perm = tuple(a["perm"]) if a["perm"] is not None else tuple(range(rank))[::-1]
    if sorted(perm) != list(range(rank)):
        raise ModelError(f"{node.label()}: perm {list(perm)} is not a permutation of the "
                         f"{rank} axes of {node.inputs[0]!r}")
    if perm == tuple(range(rank)):
        return CopyStep(node.name, node.inputs[0], node.outputs[0])
    if channel_move(perm) is None:
        raise Refused(f"perm {list(perm)} moves other axes; only a Transpose that moves "
                      "the channel axis between position 1 and last (NCHW <-> "
                      "channels-last) runs")
    return TransposeStep(node.name, node.inputs[0], node.outputs[0], perm)


def _mean_step(node, ctx, axes, keepdims):
    rank = ctx.rank(node.inputs[0])
    if rank is None:
        raise Refused(f"input {node.inputs[0]!r} has an unknown rank")
    if rank < 3:
        raise Refused(f"input {node.inputs[0]!r} has rank {rank}; only the mean over the "
                      "pixels of [N, C, ...] runs")
    if axes is not None:
        norm = sorted({int(x) % rank for x in axes} if all(-rank <= int(x) < rank
                                                           for x in axes) else [-1])
        if norm != list(range(2, rank)):
            raise Refused(f"axes {list(map(int, axes))} of a rank-{rank} input; only the "
                          "mean over every spatial axis (a global average pool) runs")
    return MeanStep(node.name, node.inputs[0], node.outputs[0], keepdims)


@op("GlobalAveragePool")
def global_average_pool(node, ctx):
    _attrs(node, {})
    _inputs(node, 1, 1)
    _single_output(node)
    return _mean_step(node, ctx, None, True)


@op("ReduceMean")
def reduce_mean(node, ctx):
    a = _attrs(node, {"axes": None, "keepdims": 1, "noop_with_empty_axes": 0})
    _inputs(node, 1, 2)
    _single_output(node)
    axes = a["axes"]
    if ctx.opset >= 18 and len(node.inputs) == 2 and node.inputs[1]:
        axes = ctx.const(node, 1, "axes")
        if axes.dtype.kind not in "iu" or axes.ndim > 1:
            raise ModelError(f"{node.label()}: axes is {axes.dtype} {list(axes.shape)}; "
                             "ONNX wants a 1-D int64 tensor")
        axes = axes.reshape(-1).tolist()
    if axes is None or len(axes) == 0:
        if a["noop_with_empty_axes"]:
            return CopyStep(node.name, node.inputs[0], node.outputs[0])
        raise Refused("no axes: the mean over every axis; only the mean over every "
                      "spatial axis (a global average pool) runs")
    return _mean_step(node, ctx, axes, bool(a["keepdims"]))


# Sigmoid binds from the epilogue table (above): an epilogue program, fused into the
# producing conv (the squeeze-excitation gate's too)


@op("HardSigmoid")
def hard_sigmoid(node, ctx):
    a = _attrs(node, {"alpha": 0.2, "beta": 0.5})
    alpha, beta = float(a["alpha"]), float(a["beta"])
    if not (math.isfinite(alpha) and math.isfinite(beta)):
        raise ModelError(f"{node.label()}: alpha {alpha} and beta {beta} must be finite")
    _inputs(node, 1, 1)
    _single_output(node)
    # clamp(alpha * x + beta, 0, 1): an affine step (it folds into the conv before it)
    return AffineStep(node.name, node.inputs[0], node.outputs[0],
                      np.array([alpha], np.float32), np.array([beta], np.float32),
                      Activation("clip", 0.0, 1.0, 1.0))


# binders of other modules: constant folding's ops and the affine / type-edge ones
from . import fold, normalize  # noqa: E402,F401  (registered on import)
