"""The issue-4 benchmark workloads as ONNX models, shared by tools/bench.py and
tools/footprint.py.

Each workload is a chain of 1x1 convolutions (float32, NCHW, with bias), each followed by
its activation. ``build(name)`` returns a :class:`Workload` holding the ONNX ModelProto,
the input array, the FLOPs of one run and the layers as plain numpy arrays (so a numpy or
torch reference can run the same chain without parsing ONNX).

    python tools/workloads.py --save DIR     # write every workload as DIR/<name>.onnx
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np

OPSET = 13

# name -> (input shape N,C,H,W, [(cout, activation), ...]); activation in
# "relu", "relu6", None.
SPECS = {
    "big256": ((1, 256, 56, 56), [(256, "relu")]),
    "bottleneck": ((1, 256, 56, 56), [(64, "relu"), (64, "relu"), (256, "relu")]),
    "narrow16x32": ((1, 32, 224, 224), [(32, "relu")] * 16),
    "expand_project": ((1, 24, 56, 56), [(144, "relu6"), (24, None)]),
    "batch16": ((16, 64, 28, 28), [(128, "relu"), (64, "relu")]),
    "tiny": ((1, 8, 16, 16), [(16, "relu"), (8, "relu")]),
}
NAMES = list(SPECS)  # the issue-4 targets
# more shapes a user meets (not in the targets): ResNet-50-style layers whose reductions
# are long and images small, where a pixel-vectorized kernel wastes lanes on the last
# panel (7x7 = 49 = 3 x 16 + 1)
EXTRA_SPECS = {
    "resnet_c4": ((1, 1024, 14, 14), [(256, "relu"), (1024, None)]),
    "resnet_c5": ((1, 2048, 7, 7), [(512, "relu"), (2048, None)]),
    "wide1024": ((1, 1024, 28, 28), [(1024, "relu")]),
}
EXTRA_NAMES = list(EXTRA_SPECS)
# the shape sweep (issue 11): pixels per image 1 .. 224x224, batch 1 .. 64, channels
# 3 .. 4096, single layers and chains; named <what>_p<pixels>_b<batch>. Sized so that the
# whole sweep runs in a few minutes per thread count on 2 cores (--quick).
SWEEP_SPECS = {
    # 1x1 maps: classifier heads, squeeze-excitation, batches of feature vectors
    "head_p1_b1": ((1, 1280, 1, 1), [(1000, None)]),
    "head4096_p1_b1": ((1, 4096, 1, 1), [(1024, "relu")]),
    "se_p1_b1": ((1, 256, 1, 1), [(64, "relu"), (256, None)]),
    "vec_p1_b8": ((8, 512, 1, 1), [(512, "relu")]),
    "head_p1_b32": ((32, 1280, 1, 1), [(1000, None)]),
    "se_p1_b64": ((64, 256, 1, 1), [(64, "relu"), (256, None)]),
    # 7x7 and 14x14 stages
    "wide_p49_b1": ((1, 1024, 7, 7), [(1024, "relu")]),
    "expand_p49_b8": ((8, 320, 7, 7), [(1280, "relu")]),
    "c5_p49_b1": ((1, 2048, 7, 7), [(512, "relu"), (2048, None)]),
    "mid_p49_b32": ((32, 128, 7, 7), [(256, "relu"), (128, None)]),
    "c4_p196_b1": ((1, 1024, 14, 14), [(256, "relu")]),
    "c4_p196_b8": ((8, 256, 14, 14), [(256, "relu"), (1024, None)]),
    # larger maps
    "c3_p784_b1": ((1, 512, 28, 28), [(128, "relu"), (512, None)]),
    "narrow_p784_b32": ((32, 32, 28, 28), [(64, "relu6"), (32, None)]),
    "c2_p3136_b1": ((1, 64, 56, 56), [(256, "relu")]),
    "c2_p3136_b8": ((8, 256, 56, 56), [(64, "relu")]),
    "stem_p50176_b1": ((1, 3, 224, 224), [(32, "relu"), (16, "relu")]),
    "small_p50176_b8": ((8, 16, 224, 224), [(16, "relu6")]),
}
SWEEP_NAMES = list(SWEEP_SPECS)
# what exporters write around the convs (issue 13), as torch exports it: name ->
# (pattern, input shape, hidden width). convnext: x + T(l2(relu(l1(T(x))))) with
# Transposes to and from channels-last (ConvNeXt-T stage 1, depthwise conv left out);
# tokens: x + l2(relu(l1(x))) on [N, L, C] (a ViT-S feed-forward block); se: SE
# (GlobalAveragePool, conv, relu, conv, HardSigmoid, Mul) then a 1x1 projection conv.
# An optional 4th entry is the MLP's activation: "gelu" (the Div/Erf/Add/Mul/Mul nodes
# of the TorchScript exporter) or "gelu_tanh" (nn.GELU(approximate="tanh") as the dynamo
# exporter writes it before opset 20: Pow, Mul, Add, Mul, Tanh, Add, Mul, Mul).
GRAPH_SPECS = {
    "convnext_mlp": ("convnext", (1, 96, 56, 56), 384),
    "convnext_mlp_gelu": ("convnext", (1, 96, 56, 56), 384, "gelu"),
    "convnext_mlp_gelu_tanh": ("convnext", (1, 96, 56, 56), 384, "gelu_tanh"),
    "token_mlp": ("tokens", (1, 197, 384), 1536),
    "token_mlp_gelu": ("tokens", (1, 197, 384), 1536, "gelu"),
    "token_mlp_gelu_tanh": ("tokens", (1, 197, 384), 1536, "gelu_tanh"),
    "token_mlp_b8": ("tokens", (8, 197, 384), 1536),
    "token_mlp_b8_gelu": ("tokens", (8, 197, 384), 1536, "gelu"),
    "se_project": ("se", (1, 96, 56, 56), 24),
}
GRAPH_NAMES = list(GRAPH_SPECS)
# activations beyond min/max, fused as epilogue programs: a YOLO/EfficientNet-style SiLU
# pair and a transformer-MLP-style GELU expand/project (written as PyTorch's exporters
# write them before opset 20: Sigmoid + Mul, and the Div/Erf/Add/Mul/Mul pattern)
ACT_SPECS = {
    "silu_chain": ((1, 64, 56, 56), [(128, "silu"), (64, "silu")]),
    "gelu_mlp": ((1, 96, 28, 28), [(384, "gelu"), (96, None)]),
}
ACT_NAMES = list(ACT_SPECS)
SPECS.update(EXTRA_SPECS)
SPECS.update(ACT_SPECS)
SPECS.update(SWEEP_SPECS)


@dataclasses.dataclass
class Layer:
    weight: np.ndarray          # [cout, cin] float32
    bias: np.ndarray            # [cout] float32
    act: str | None             # "relu", "relu6", "silu", "gelu" or None


@dataclasses.dataclass
class Workload:
    name: str
    model: object = dataclasses.field(repr=False)  # onnx.ModelProto; None for a path
    x: np.ndarray = dataclasses.field(repr=False)  # the input (first graph input)
    flops: float = 0.0          # 2*N*H*W*Cin*Cout summed over the 1x1 convs
    layers: list | None = dataclasses.field(default=None, repr=False)  # [Layer] or None
    path: str | None = None     # the .onnx path for a model given on the command line
    input_name: str = "input"
    output_name: str = "output"

    def model_bytes(self):
        if self.path is not None:
            with open(self.path, "rb") as f:
                return f.read()
        return self.model.SerializeToString()

    def ort_source(self):
        """What onnxruntime.InferenceSession takes: a path (keeps external data) or bytes."""
        return self.path if self.path is not None else self.model_bytes()

    def save(self, path):
        import onnx
        if self.path is not None:
            raise ValueError("a model given by path is already on disk")
        onnx.save(self.model, path)
        return path


def _layers(name, seed):
    shape, chain = SPECS[name]
    rng = np.random.default_rng(seed)
    cin = shape[1]
    layers = []
    for cout, act in chain:
        w = (rng.standard_normal((cout, cin)) / np.sqrt(cin)).astype(np.float32)
        b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
        layers.append(Layer(w, b, act))
        cin = cout
    return layers


def chain_flops(shape, layers):
    n, _, h, w = shape
    return float(sum(2 * n * h * w * l.weight.shape[0] * l.weight.shape[1] for l in layers))


def gelu_nodes(x, out, g, tanh=False):
    """The nodes PyTorch's exporters write for nn.GELU before opset 20 (x -> out, node
    and tensor names prefixed g) and their constants {name: float32 scalar}: the erf
    form in the TorchScript exporter's order, or (tanh) the tanh form in the dynamo
    exporter's."""
    from onnx import helper
    mk = helper.make_node
    if tanh:
        consts = {"three": 3.0, "c": 0.044715, "k": (2 / np.pi) ** 0.5, "one": 1.0,
                  "half": 0.5}
        nodes = [mk("Pow", [x, f"{g}.three"], [f"{g}.cube"], name=f"{g}.pow"),
                 mk("Mul", [f"{g}.c", f"{g}.cube"], [f"{g}.cc"], name=f"{g}.mulc"),
                 mk("Add", [x, f"{g}.cc"], [f"{g}.in"], name=f"{g}.inner"),
                 mk("Mul", [f"{g}.k", f"{g}.in"], [f"{g}.ki"], name=f"{g}.mulk"),
                 mk("Tanh", [f"{g}.ki"], [f"{g}.t"], name=f"{g}.tanh"),
                 mk("Add", [f"{g}.t", f"{g}.one"], [f"{g}.a"], name=f"{g}.add"),
                 mk("Mul", [f"{g}.half", f"{g}.a"], [f"{g}.m"], name=f"{g}.mul"),
                 mk("Mul", [x, f"{g}.m"], [out], name=f"{g}.x")]
    else:  # x * (1 + erf(x / sqrt 2)) * 0.5
        consts = {"sqrt2": 2 ** 0.5, "one": 1.0, "half": 0.5}
        nodes = [mk("Div", [x, f"{g}.sqrt2"], [f"{g}.d"], name=f"{g}.div"),
                 mk("Erf", [f"{g}.d"], [f"{g}.e"], name=f"{g}.erf"),
                 mk("Add", [f"{g}.e", f"{g}.one"], [f"{g}.a"], name=f"{g}.add"),
                 mk("Mul", [x, f"{g}.a"], [f"{g}.m"], name=f"{g}.mul"),
                 mk("Mul", [f"{g}.m", f"{g}.half"], [out], name=f"{g}.half")]
    return nodes, {f"{g}.{k}": np.array(v, np.float32) for k, v in consts.items()}


def build_model(name, layers, shape):
    """A ModelProto of the chain: Conv (1x1, bias) then Relu / Clip(0, 6) per layer."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    nodes, inits = [], []
    cur = "input"
    for i, layer in enumerate(layers):
        cout, cin = layer.weight.shape
        wname, bname = f"conv{i}.weight", f"conv{i}.bias"
        inits.append(numpy_helper.from_array(layer.weight.reshape(cout, cin, 1, 1), wname))
        inits.append(numpy_helper.from_array(layer.bias, bname))
        last = i == len(layers) - 1
        conv_out = "output" if last and layer.act is None else f"conv{i}"
        nodes.append(helper.make_node("Conv", [cur, wname, bname], [conv_out],
                                      name=f"conv{i}", kernel_shape=[1, 1]))
        cur = conv_out
        if layer.act is not None:
            act_out = "output" if last else f"act{i}"
            if layer.act == "relu":
                nodes.append(helper.make_node("Relu", [cur], [act_out], name=f"relu{i}"))
            elif layer.act == "relu6":
                lo, hi = f"clip{i}.min", f"clip{i}.max"
                inits.append(numpy_helper.from_array(np.array(0.0, np.float32), lo))
                inits.append(numpy_helper.from_array(np.array(6.0, np.float32), hi))
                nodes.append(helper.make_node("Clip", [cur, lo, hi], [act_out],
                                              name=f"clip{i}"))
            elif layer.act == "silu":  # Mul(x, Sigmoid(x))
                nodes.append(helper.make_node("Sigmoid", [cur], [f"sig{i}"], name=f"sig{i}"))
                nodes.append(helper.make_node("Mul", [cur, f"sig{i}"], [act_out],
                                              name=f"silu{i}"))
            elif layer.act == "gelu":
                more, consts = gelu_nodes(cur, act_out, f"gelu{i}")
                nodes += more
                inits += [numpy_helper.from_array(v, k) for k, v in consts.items()]
            else:
                raise ValueError(f"unknown activation {layer.act!r}")
            cur = act_out
    n, _, h, w = shape
    cout = layers[-1].weight.shape[0]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(shape))],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [n, cout, h, w])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pyconv1x1-tools-workloads")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def build_graph(name, seed=0):
    """A GRAPH_SPECS workload: the ONNX graph torch's exporter writes for the pattern."""
    from onnx import TensorProto, helper, numpy_helper
    pattern, shape, hidden, *act = GRAPH_SPECS[name]
    act = act[0] if act else "relu"
    rng = np.random.default_rng(seed)
    c = shape[1] if pattern != "tokens" else shape[-1]
    inits = {}

    def const(key, *dims, scale=1.0):
        inits[key] = (rng.standard_normal(dims) * scale).astype(np.float32)
        return key

    def node(op, ins, out, **attrs):
        nodes.append(helper.make_node(op, ins, [out], name=out, **attrs))
        return out

    nodes = []
    if pattern in ("convnext", "tokens"):
        x = "input"
        if pattern == "convnext":
            x = node("Transpose", [x], "to_last", perm=[0, 2, 3, 1])
        h = node("MatMul", [x, const("w1", c, hidden, scale=c ** -0.5)], "l1")
        h = node("Add", [h, const("b1", hidden, scale=0.1)], "l1b")
        if act == "relu":
            h = node("Relu", [h], "act")
        else:
            more, consts = gelu_nodes(h, "act", "gelu", tanh=act == "gelu_tanh")
            nodes += more
            inits.update(consts)
            h = "act"
        h = node("MatMul", [h, const("w2", hidden, c, scale=hidden ** -0.5)], "l2")
        h = node("Add", [h, const("b2", c, scale=0.1)], "l2b")
        if pattern == "convnext":
            h = node("Transpose", [h], "to_first", perm=[0, 3, 1, 2])
        node("Add", ["input", h], "output")
        flops = 2.0 * 2 * np.prod(shape) * hidden
    else:
        s = node("GlobalAveragePool", ["input"], "pool")
        s = node("Conv", [s, const("f1", hidden, c, 1, 1, scale=c ** -0.5),
                          const("g1", hidden, scale=0.1)], "fc1")
        s = node("Conv", [node("Relu", [s], "relu"),
                          const("f2", c, hidden, 1, 1, scale=hidden ** -0.5),
                          const("g2", c, scale=0.1)], "fc2")
        s = node("HardSigmoid", [s], "gate", alpha=1.0 / 6, beta=0.5)
        y = node("Mul", ["input", s], "scaled")
        node("Conv", [y, const("wp", c, c, 1, 1, scale=c ** -0.5),
                      const("bp", c, scale=0.1)], "output")
        flops = 2.0 * np.prod(shape) * c
    graph = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="pyconv1x1-tools-workloads")
    model.ir_version = 8
    x = np.random.default_rng(seed + 1000).standard_normal(shape).astype(np.float32)
    return Workload(name=name, model=model, x=x, flops=float(flops))


def build(name, seed=0):
    """The named issue-4 workload (see SPECS), or a GRAPH_SPECS one."""
    if name in GRAPH_SPECS:
        return build_graph(name, seed)
    if name not in SPECS:
        raise KeyError(f"unknown workload {name!r}; known: {NAMES}")
    shape, _ = SPECS[name]
    layers = _layers(name, seed)
    rng = np.random.default_rng(seed + 1000)
    x = rng.standard_normal(shape).astype(np.float32)
    return Workload(name=name, model=build_model(name, layers, shape), x=x,
                    flops=chain_flops(shape, layers), layers=layers)


def _dim(d, default=1):
    return d if isinstance(d, int) and d > 0 else default


def from_path(path, seed=0):
    """A workload from an .onnx file: random input of its first input's shape (unknown
    dims -> 1); FLOPs counted over its Conv nodes with onnx shape inference (0 if that
    fails). The model stays on disk so external data resolves."""
    import onnx
    model = onnx.load(path, load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    graph_inputs = [i for i in model.graph.input if i.name not in inits]
    inp = graph_inputs[0]
    dims = inp.type.tensor_type.shape.dim
    shape = tuple(_dim(d.dim_value) for d in dims)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32)
    flops = _conv_flops(path, shape, inp.name)
    name = os.path.splitext(os.path.basename(path))[0]
    return Workload(name=name, model=None, x=x, flops=flops, path=os.path.abspath(path),
                    input_name=inp.name, output_name=model.graph.output[0].name)


def _conv_flops(path, shape, input_name):
    """2 * N*Ho*Wo * Cout * Cin/group * kh*kw summed over Conv nodes (0 when unknown)."""
    try:
        import onnx
        from onnx import shape_inference
        model = onnx.load(path, load_external_data=False)
        for inp in model.graph.input:
            if inp.name == input_name:
                for d, v in zip(inp.type.tensor_type.shape.dim, shape):
                    d.ClearField("dim_param")
                    d.dim_value = v
        model = shape_inference.infer_shapes(model)
        shapes = {}
        for vi in list(model.graph.value_info) + list(model.graph.output) + \
                list(model.graph.input):
            shapes[vi.name] = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        wshapes = {t.name: list(t.dims) for t in model.graph.initializer}
        total = 0.0
        for node in model.graph.node:
            if node.op_type != "Conv":
                continue
            out = shapes.get(node.output[0])
            wsh = wshapes.get(node.input[1])
            if not out or not wsh or 0 in out:
                return 0.0
            k = int(np.prod(wsh[1:]))
            total += 2.0 * out[0] * int(np.prod(out[2:])) * wsh[0] * k
        return total
    except Exception:  # FLOPs are informative only; any model still runs
        return 0.0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--save", metavar="DIR", help="write every workload as DIR/<name>.onnx")
    args = ap.parse_args(argv)
    for name in NAMES:
        wl = build(name)
        line = f"{name:16s} input {list(wl.x.shape)}  {wl.flops / 1e6:9.1f} MFLOP"
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            line += "  -> " + wl.save(os.path.join(args.save, name + ".onnx"))
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
