"""Input normalization and type edges: what exporters write around the convs that is an
affine map per channel or a change of float type.

Binders (registered in ops.REGISTRY): `Sub` and `Div` by a constant, `Sub` of a tensor
from a constant, `Neg`, and `Cast` between float32 and float16, each bound to the steps
the rewrite stage already fuses:

  x - c  -> x + (-c)            exact (negation is exact)
  c - x  -> x * -1 + c          exact
  x / c  -> x * (1/c)           within 1.5 ulp of the division; refused where 1/c is
                                 not a normal float32 (|c| beyond 2^126 or below 2^-126)
  -x     -> x * -1              exact
  Cast float32 <-> float16      a copy: float16 tensors inside the model are computed
                                 in float32 (see edge_type_problems)

`c / x` is not affine in x and stays refused, naming the node.

The rewrite pass `fold_into_next_conv` folds an affine step left standing before a
conv (input normalization: `(x - mean) / std` then the first conv) into that conv's
weights and bias, where it is exact: always for a scale alone, and for a shift only
when the conv has no padding (padded pixels are zeros of the affine's output, which
the raw input cannot express). Otherwise the affine step runs on its own."""
import numpy as np

from . import fold
from .errors import Problem
from .ops import (Refused, _attrs, _inputs, _per_channel, _single_output,
                  binary_operands, op)
from .program import AffineStep, ChainStep, CopyStep

_F32 = np.float32
_TINY = float(np.finfo(np.float32).tiny)
_FLOAT_CODES = {1: "float32", 10: "float16"}
EDGE_TYPES = ("float32", "float16")  # what graph inputs and outputs may be declared


@op("Sub")
def sub(node, ctx):
    a, b, ca, cb = binary_operands(node, ctx, "Sub")
    if ca is None and cb is None:
        raise Refused("difference of two run-time tensors is not supported")
    if cb is not None:  # x - c
        return AffineStep(node.name, a, node.outputs[0], None,
                          -_per_channel(node, ctx, cb, a))
    return AffineStep(node.name, b, node.outputs[0], np.full(1, -1.0, _F32),
                      _per_channel(node, ctx, ca, b))  # c - x


@op("Div")
def div(node, ctx):
    a, b, ca, cb = binary_operands(node, ctx, "Div")
    if cb is None:
        if ca is None:
            raise Refused("quotient of two run-time tensors is not supported")
        raise Refused(f"divides constant {a!r} by run-time tensor {b!r}: not an affine "
                      "map of the tensor; only division by a constant runs")
    c = _per_channel(node, ctx, cb, a)
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        recip = (_F32(1) / c).astype(_F32)
    finite = np.isfinite(c) & (c != 0)
    bad = finite & ~(np.abs(recip) >= _TINY) | finite & ~np.isfinite(recip)
    if bad.any():
        raise Refused(f"divisor {float(c[bad][0]):g} has no normal float32 reciprocal; x * (1/c) "
                      "would not match x / c")
    return AffineStep(node.name, a, node.outputs[0], recip, None)


@op("Neg")
def neg(node, ctx):
    _attrs(node, {"consumed_inputs": None})
    _inputs(node, 1, 1)
    _single_output(node)
    if node.inputs[0] in ctx.constants:
        raise Refused(fold.reason_not_folded(node, ctx.constants, ctx.opset))
    return AffineStep(node.name, node.inputs[0], node.outputs[0],
                      np.full(1, -1.0, _F32), None)


@op("Cast")
def cast(node, ctx):
    _inputs(node, 1, 1)
    _single_output(node)
    if node.inputs[0] in ctx.constants:
        raise Refused(fold.reason_not_folded(node, ctx.constants, ctx.opset))
    to = node.attrs.get("to")
    if any(k not in ("to", "saturate") for k in node.attrs):
        raise Refused(f"attributes {sorted(node.attrs)}; Cast takes 'to' (and "
                      "'saturate')")
    if to not in _FLOAT_CODES:
        from .onnx_reader import _TYPE_NAMES
        raise Refused(f"casts a run-time tensor to {_TYPE_NAMES.get(to, to)}; only "
                      "float32 <-> float16 casts run (computed in float32)")
    return CopyStep(node.name, node.inputs[0], node.outputs[0])


# --------------------------------------------------------------------------------------
# element types at the graph's edges
# --------------------------------------------------------------------------------------
def computed_types(graph):
    """{tensor: element type name} as the graph computes them: a Cast gives its `to`
    type, every other op the type of its first input (every op this runtime binds
    keeps its data input's type)."""
    from .onnx_reader import elem_type_name
    types = {v.name: v.elem_type for v in graph.inputs}
    types.update((k, a.dtype.name) for k, a in graph.constants.items())
    from .check import topological_order
    for i in topological_order(graph):
        node = graph.nodes[i]
        if node.op_type == "Cast" and isinstance(node.attrs.get("to"), int):
            t = elem_type_name(node.attrs["to"])
        else:
            t = next((types.get(x) for x in node.inputs if x), None)
        for o in node.outputs:
            if o:
                types[o] = t
    return types


def edge_type_problems(graph, quantized=frozenset()):
    """Problems with the declared types of the graph's inputs and outputs: each must be
    float32 or float16, and an output's declared type the one its producer computes.
    float16 values are computed in float32 (float32 accumulation) and rounded to float16
    only where a float16 output is returned. `quantized`: the uint8 / int8 edges that
    quantized steps read or write (quant.quantized_edges), accepted as they are."""
    problems = []
    for v in graph.inputs:
        if v.elem_type not in EDGE_TYPES and v.name not in quantized:
            problems.append(Problem("", "", f"input {v.name!r} is {v.elem_type}; only "
                                    "float32 and float16 inputs run"))
    types = None
    for v in graph.outputs:
        if v.name in quantized:
            continue
        if v.elem_type not in EDGE_TYPES:
            problems.append(Problem("", "", f"output {v.name!r} is declared "
                                    f"{v.elem_type}; only float32 and float16 outputs "
                                    "are computed"))
        elif v.elem_type != "float32":
            if types is None:
                types = computed_types(graph)
            got = types.get(v.name)
            if got is not None and got != v.elem_type:
                problems.append(Problem("", "", f"output {v.name!r} is declared "
                                        f"{v.elem_type}; only {got} is computed for it (a "
                                        f"{v.elem_type} output needs {v.elem_type} inputs "
                                        f"or a Cast to {v.elem_type})"))
    return problems


# --------------------------------------------------------------------------------------
# rewrite: an affine step before a conv, into the conv
# --------------------------------------------------------------------------------------
def fold_into_next_conv(steps, outputs, notes):
    """Fold each AffineStep (no activation) whose only reader is a one-layer conv chain
    into that conv: W'[o, k] = W[o, k] * scale[ci], b'[o] = b[o] + sum_k W[o, k] *
    shift[ci] (ci: the input channel of column k in o's group). Skipped when the conv
    pads and the shift is not zero, or when a value is not finite."""
    readers = {}
    for s in steps:
        for t in s.reads:
            readers.setdefault(t, []).append(s)
    dropped = set()
    for s in steps:
        if type(s) is not AffineStep or not s.act.is_identity or s.output in outputs:
            continue
        users = readers.get(s.output, ())
        if len(users) != 1 or not isinstance(users[0], ChainStep):
            continue
        conv = users[0]
        layer = conv.layers[0]
        if conv.input != s.output or layer.residual == s.output or layer.weight is None:
            continue
        if s.per_channel and s.last != conv.in_last and layer.spatial_rank:
            continue  # (its constants vary along another axis than the conv's channels)
        cin = layer.cin
        scale = _per_input(s.scale, cin, 1.0)
        shift = _per_input(s.shift, cin, 0.0)
        if scale is None or shift is None or not (np.isfinite(scale).all()
                                                  and np.isfinite(shift).all()):
            continue
        if any(layer.pads) and shift.any():
            notes.append(f"kept {s.name} before conv {layer.names[0]}: the conv pads, "
                         "and a shift cannot fold into it")
            continue
        cout, k = layer.weight.shape
        per_group = cout // layer.group
        channel = (np.arange(cout)[:, None] // per_group) * k + np.arange(k)[None, :]
        w = layer.weight.astype(np.float64)
        with np.errstate(over="ignore", invalid="ignore"):
            bias = layer.bias.astype(np.float64) + (w * shift[channel]).sum(axis=1)
            weight = w * scale[channel]
        layer.weight = weight.astype(_F32)
        layer.bias = bias.astype(_F32)
        layer.names.append(s.name)
        conv.input = s.input
        readers[s.input] = [conv if x is s else x for x in readers.get(s.input, ())]
        dropped.add(id(s))
        notes.append(f"folded {s.name} into the weights of conv {layer.names[0]} "
                     "(before it)")
    return [s for s in steps if id(s) not in dropped]


def _per_input(v, c, default):
    if v is None:
        return np.full(c, default, np.float64)
    if v.size == 1:
        return np.full(c, float(v.reshape(-1)[0]), np.float64)
    if v.size != c:
        return None
    return v.astype(np.float64)

