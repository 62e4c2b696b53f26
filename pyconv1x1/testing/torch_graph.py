"""The reference graph interpreter: an ONNX graph rebuilt node by node with torch ops,
an independent check of pyconv1x1's kernels and graph rewrites (`run_torch_reference`).
torch loads inside the function.
"""
import numpy as np

from ..errors import Error, InputError, ModelError, UnsupportedError

__all__ = ["run_torch_reference", "REFERENCE_OPS"]

# --------------------------------------------------------------------------------------
def _conv_pads(node, x_shape, w_shape, attrs):
    """Explicit (begin..., end...) pads of a Conv, auto_pad resolved."""
    spatial = len(w_shape) - 2
    kernel = tuple(w_shape[2:])
    strides = tuple(attrs.get("strides") or (1,) * spatial)
    dil = tuple(attrs.get("dilations") or (1,) * spatial)
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for size, k, s, d in zip(x_shape[2:], kernel, strides, dil):
            out = -(-size // s)
            total = max((out - 1) * s + (k - 1) * d + 1 - size, 0)
            small, big = total // 2, total - total // 2
            if auto_pad == "SAME_UPPER":
                begin.append(small)
                end.append(big)
            else:
                begin.append(big)
                end.append(small)
        return strides, dil, tuple(begin) + tuple(end)
    if auto_pad == "VALID":
        return strides, dil, (0,) * (2 * spatial)
    if auto_pad not in ("NOTSET", ""):
        raise ModelError(f"{node.label()}: auto_pad {auto_pad!r} is not an ONNX value")
    pads = tuple(attrs.get("pads") or (0,) * (2 * spatial))
    if len(pads) != 2 * spatial or len(strides) != spatial or len(dil) != spatial:
        raise ModelError(f"{node.label()}: strides {list(strides)}, dilations "
                         f"{list(dil)} and pads {list(pads)} do not fit a {spatial}-D "
                         "kernel")
    return strides, dil, pads


def _ref_conv(torch, F, node, args):
    x, w = args[0], args[1]
    b = args[2] if len(args) > 2 else None
    if w.dim() not in (3, 4):
        raise UnsupportedError(f"{node.label()}: {w.dim() - 2}-D convolution; the torch "
                               "reference runs 1-D and 2-D convolutions")
    strides, dil, pads = _conv_pads(node, tuple(x.shape), tuple(w.shape), node.attrs)
    spatial = w.dim() - 2
    begin, end = pads[:spatial], pads[spatial:]
    # F.pad takes (last dim begin, last dim end, previous dim begin, ...)
    torch_pads = []
    for b_, e_ in zip(reversed(begin), reversed(end)):
        torch_pads += [int(b_), int(e_)]
    if any(torch_pads):
        x = F.pad(x, torch_pads)
    group = int(node.attrs.get("group", 1))
    conv = F.conv1d if spatial == 1 else F.conv2d
    return [conv(x, w, b, stride=tuple(strides), padding=0, dilation=tuple(dil),
                 groups=group)]


def _scalar(t):
    return float(t.reshape(-1)[0]) if t is not None and t.numel() else None


def _ref_clip(torch, F, node, args, opset):
    x = args[0]
    if opset < 11:
        lo = node.attrs.get("min")
        hi = node.attrs.get("max")
    else:
        lo = _scalar(args[1]) if len(args) > 1 and args[1] is not None else None
        hi = _scalar(args[2]) if len(args) > 2 and args[2] is not None else None
    if lo is None and hi is None:
        return [x.clone()]
    return [torch.clamp(x, min=lo, max=hi)]


def _ref_batch_norm(torch, F, node, args):
    if node.attrs.get("training_mode", 0):
        raise UnsupportedError(f"{node.label()}: training_mode=1; the reference runs "
                               "inference BatchNormalization")
    if any(o for o in node.outputs[1:]):
        raise UnsupportedError(f"{node.label()}: running mean/var outputs requested "
                               "(training form)")
    x, scale, bias, mean, var = args[:5]
    eps = float(node.attrs.get("epsilon", 1e-5))
    return [F.batch_norm(x, mean, var, weight=scale, bias=bias, training=False, eps=eps)]


def _ref_constant(torch, node):
    a = node.attrs
    if "value" in a:
        value = np.array(a["value"])
    elif "value_float" in a:
        value = np.array(a["value_float"], dtype=np.float32)
    elif "value_floats" in a:
        value = np.array(a["value_floats"], dtype=np.float32)
    elif "value_int" in a:
        value = np.array(a["value_int"], dtype=np.int64)
    elif "value_ints" in a:
        value = np.array(a["value_ints"], dtype=np.int64)
    else:
        raise UnsupportedError(f"{node.label()}: Constant with attributes "
                               f"{sorted(a)}; the reference reads value, value_float(s)"
                               " and value_int(s)")
    return [torch.from_numpy(np.array(value, copy=True))]


REFERENCE_OPS = ("Add", "BatchNormalization", "Clip", "Constant", "Conv", "Div",
                 "Dropout", "Erf", "Gelu", "HardSigmoid", "HardSwish", "Identity",
                 "LeakyRelu", "Mul", "Neg", "PRelu", "Pow", "Relu", "Sigmoid", "Sub",
                 "Tanh")


def run_torch_reference(model, feeds, base_dir=None):
    """Run an ONNX model's graph rebuilt with torch ops, in float32 on the CPU.

    model: path, bytes or onnx.ModelProto (read with pyconv1x1's own parser, external
        data from the model's folder or base_dir).
    feeds: dict input name -> numpy array.
    Returns {graph output name: numpy float32 array}.

    An independent check of pyconv1x1's kernels and graph rewrites: every node runs as
    the plain torch op (F.conv2d/conv1d with F.pad for explicit or auto pads,
    F.batch_norm, clamp, leaky_relu, broadcasting add/sub/mul/div, neg), with no
    folding or fusion.
    Ops outside REFERENCE_OPS raise pyconv1x1.UnsupportedError listing every one.
    """
    import torch
    import torch.nn.functional as F

    from .. import check, onnx_reader

    graph = onnx_reader.load(model, base_dir=base_dir)
    problems = []
    for node in graph.nodes:
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.label()}: domain {node.domain!r}")
        elif node.op_type not in REFERENCE_OPS:
            problems.append(f"{node.label()}: op {node.op_type}")
    if problems:
        raise UnsupportedError(
            "the torch reference cannot run this model (it runs "
            f"{', '.join(REFERENCE_OPS)}):\n  " + "\n  ".join(problems))
    order = check.topological_order(graph)

    if not isinstance(feeds, dict):
        raise InputError(f"feeds must be a dict of name -> numpy array, got "
                         f"{type(feeds).__name__}")
    expected = [v.name for v in graph.inputs]
    missing = [n for n in expected if n not in feeds]
    extra = [n for n in feeds if n not in expected]
    if missing or extra:
        raise InputError(f"missing input(s) {missing}, unknown input(s) {extra}; the "
                         f"model's inputs are {expected}")
    env = {}
    for name, arr in graph.constants.items():
        # float constants run as float32, as the runtime itself reads them
        dtype = np.float32 if arr.dtype.kind == "f" else arr.dtype
        env[name] = torch.from_numpy(np.array(arr, dtype=dtype, copy=True))
    for name in expected:
        arr = feeds[name]
        if not isinstance(arr, np.ndarray) or arr.dtype.kind != "f":
            raise InputError(f"input {name!r} must be a float numpy array, got "
                             f"{getattr(arr, 'dtype', type(arr).__name__)}")
        decl = next(v.shape for v in graph.inputs if v.name == name)
        if decl is not None and (arr.ndim != len(decl) or any(
                isinstance(d, int) and d != n for d, n in zip(decl, arr.shape))):
            raise InputError(f"input {name!r} has shape {list(arr.shape)}; the model "
                             f"declares {list(decl)}")
        env[name] = torch.from_numpy(np.array(arr, dtype=np.float32, copy=True))

    with torch.no_grad():
        for i in order:
            node = graph.nodes[i]
            args = [env[n] if n else None for n in node.inputs]
            for a in args:
                if a is not None and a.is_floating_point() and a.dtype != torch.float32:
                    raise UnsupportedError(f"{node.label()}: {a.dtype} tensor; the "
                                           "reference runs float32")
            try:
                out = _run_reference_node(torch, F, node, args, graph.opset)
            except Error:
                raise
            except (RuntimeError, ValueError, IndexError, TypeError, AttributeError,
                    ArithmeticError) as exc:
                raise ModelError(f"{node.label()}: torch cannot run it with inputs "
                                 f"{[None if a is None else list(a.shape) for a in args]}"
                                 f" and attributes {dict(node.attrs)}: {exc}") from None
            for name, value in zip(node.outputs, out):
                if name:
                    env[name] = value
    return {v.name: env[v.name].numpy().astype(np.float32, copy=True)
            for v in graph.outputs}


def _ref_activation(torch, F, node, args):
    """The element-wise activations as torch ops (None: not one of them)."""
    op, x = node.op_type, args[0]
    if op == "Sigmoid":
        return torch.sigmoid(x)
    if op == "Tanh":
        return torch.tanh(x)
    if op == "Erf":
        return torch.erf(x)
    if op == "HardSwish":
        return F.hardswish(x)
    if op == "HardSigmoid":
        alpha = float(node.attrs.get("alpha", 0.2))
        beta = float(node.attrs.get("beta", 0.5))
        return torch.clamp(x * alpha + beta, 0.0, 1.0)
    if op == "PRelu":
        return torch.where(x < 0, x * args[1], x)
    if op == "Gelu":
        return F.gelu(x, approximate=str(node.attrs.get("approximate", "none")))
    return None


def _run_reference_node(torch, F, node, args, opset):
    """One ONNX node as torch ops -> the list of its outputs."""
    op = node.op_type
    if op == "Conv":
        return _ref_conv(torch, F, node, args)
    if op == "Relu":
        return [torch.relu(args[0])]
    if op == "LeakyRelu":
        return [F.leaky_relu(args[0], float(node.attrs.get("alpha", 0.01)))]
    if op == "Clip":
        return _ref_clip(torch, F, node, args, opset)
    unary = _ref_activation(torch, F, node, args)
    if unary is not None:
        return [unary]
    if op == "BatchNormalization":
        return _ref_batch_norm(torch, F, node, args)
    if op == "Add":
        return [args[0] + args[1]]
    if op == "Mul":
        return [args[0] * args[1]]
    if op == "Sub":
        return [args[0] - args[1]]
    if op == "Div":  # (integer division truncates toward zero in ONNX)
        trunc = not args[0].is_floating_point()
        return [torch.div(args[0], args[1], rounding_mode="trunc" if trunc else None)]
    if op == "Neg":
        return [-args[0]]
    if op == "Pow":  # (the tanh GELU's x^3, as the dynamo exporter writes it)
        return [torch.pow(args[0], args[1])]
    if op == "Constant":
        return _ref_constant(torch, node)
    if op == "Dropout":
        if len(args) > 2 and args[2] is not None and bool(args[2].reshape(-1)[0]):
            raise UnsupportedError(f"{node.label()}: training_mode is true; the reference "
                                   "runs inference Dropout")
        return [args[0].clone(), torch.ones(args[0].shape, dtype=torch.bool)]
    return [args[0].clone()]  # Identity
