"""Issue 13, what exporters write around the convs: a Linear applied at every position
(MatMul / Gemm with a constant weight on the last axis of channels-last tensors, the
Transposes around them taken into the chain's gather and store) and squeeze-excitation
(global average pool, the two convs on the pooled vector, Sigmoid / HardSigmoid and the
per-channel Mul, taken into the next conv's gather where one reads it).

Each pattern is exported from PyTorch with both exporters and compared with PyTorch and
onnxruntime; the kernels' channels-last gather / store and input scale are compared
with numpy on every ISA variant present; thread counts give the same bits."""
import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import pyconv1x1
from conftest import conv1x1_ref
from pyconv1x1 import _backend, plan, planfile
from pyconv1x1.pipeline import load_program
from pyconv1x1.program import ConvLayer

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")  # the dynamo exporter
nn = torch.nn
from pyconv1x1.testing import assert_matches_torch  # noqa: E402

EXPORTERS = ("torchscript", "dynamo")
RTOL = 2e-5
F = np.float32


# --------------------------------------------------------------------------------------
# modules
# --------------------------------------------------------------------------------------
class SqueezeExcitation(nn.Module):
    """torchvision.ops.SqueezeExcitation: avgpool -> fc1 -> relu -> fc2 -> gate -> x*s"""

    def __init__(self, c, squeeze, hard=False):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(c, squeeze, 1)
        self.fc2 = nn.Conv2d(squeeze, c, 1)
        self.scale_activation = nn.Hardsigmoid() if hard else nn.Sigmoid()

    def forward(self, x):
        s = self.scale_activation(self.fc2(torch.relu(self.fc1(self.avgpool(x)))))
        return x * s


class SEThenProject(nn.Module):
    """MobileNetV3's block tail: SE, then the 1x1 projection conv reads the scaled map"""

    def __init__(self, c, squeeze, cout, hard=False):
        super().__init__()
        self.se = SqueezeExcitation(c, squeeze, hard)
        self.project = nn.Conv2d(c, cout, 1)

    def forward(self, x):
        return self.project(self.se(x))


class ConvNeXtMLP(nn.Module):
    """ConvNeXt's channel MLP with its residual (the depthwise conv left out):
    x + permute(l2(act(l1(permute(x)))))"""

    def __init__(self, c, hidden, act=nn.ReLU):
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(c, hidden), act(), nn.Linear(hidden, c)

    def forward(self, x):
        y = x.permute(0, 2, 3, 1)
        y = self.l2(self.act(self.l1(y)))
        return x + y.permute(0, 3, 1, 2)


class TokenMLP(nn.Module):
    """a transformer feed-forward block on [N, L, C] tokens: x + l2(act(l1(x)))"""

    def __init__(self, c, hidden, act=nn.ReLU):
        super().__init__()
        self.l1, self.act, self.l2 = nn.Linear(c, hidden), act(), nn.Linear(hidden, c)

    def forward(self, x):
        return x + self.l2(self.act(self.l1(x)))


def pointnet(width=64):
    """PointNet's shared MLP written with nn.Linear on [N, P, 3]"""
    return nn.Sequential(nn.Linear(3, width), nn.ReLU(), nn.Linear(width, 2 * width),
                         nn.ReLU(), nn.Linear(2 * width, 13))


# name -> (module factory, input shape); odd sizes: C = 1, L = 1, 13 / 37 channels (no
# block divides them)
CASES = {
    "se_sigmoid": (lambda: SqueezeExcitation(13, 5), (2, 13, 7, 6)),
    "se_hardsigmoid": (lambda: SqueezeExcitation(13, 5, hard=True), (2, 13, 7, 6)),
    "se_c1": (lambda: SqueezeExcitation(1, 1), (3, 1, 5, 4)),
    "se_project": (lambda: SEThenProject(16, 4, 37, hard=True), (2, 16, 9, 5)),
    "se_project_sigmoid": (lambda: SEThenProject(37, 9, 8), (1, 37, 3, 17)),
    "convnext": (lambda: ConvNeXtMLP(13, 52), (2, 13, 5, 7)),
    "convnext_c1": (lambda: ConvNeXtMLP(1, 4), (1, 1, 3, 3)),
    "convnext_gelu": (lambda: ConvNeXtMLP(13, 52, nn.GELU), (2, 13, 5, 7)),
    "convnext_gelu_tanh": (lambda: ConvNeXtMLP(13, 52, lambda: nn.GELU(approximate="tanh")),
                           (2, 13, 5, 7)),
    "tokens": (lambda: TokenMLP(37, 148), (3, 11, 37)),
    "tokens_gelu": (lambda: TokenMLP(37, 148, nn.GELU), (3, 11, 37)),
    "tokens_gelu_tanh": (lambda: TokenMLP(37, 148, lambda: nn.GELU(approximate="tanh")),
                         (3, 11, 37)),
    "tokens_l1": (lambda: TokenMLP(8, 32), (2, 1, 8)),
    "tokens_c1": (lambda: TokenMLP(1, 3), (2, 5, 1)),
    "linear_nc": (lambda: nn.Linear(37, 13), (5, 37)),
    "linear_nc_c1": (lambda: nn.Linear(1, 1), (1, 1)),
    "linear_nohead_bias": (lambda: nn.Linear(9, 7, bias=False), (4, 6, 9)),
    "pointnet": (pointnet, (2, 101, 3)),
}


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(F)


def _export_and_compare(name, exporter, tmp_path, threads=2):
    """pyconv1x1 vs PyTorch (assert_matches_torch) and vs onnxruntime on the same file;
    returns the model's path."""
    make, shape = CASES[name]
    torch.manual_seed(0)
    module = make()
    x = _x(shape)
    assert_matches_torch(module, x, exporter, rtol=RTOL, threads=threads,
                         save_dir=tmp_path)
    path = str(tmp_path / f"model_{exporter}.onnx")
    ours = pyconv1x1.InferenceSession(path, threads=threads).run(None, {"input": x})[0]
    theirs = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(
        None, {"input": x})[0]
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(ours, theirs, rtol=RTOL, atol=RTOL * np.abs(theirs).max())
    return path


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", sorted(CASES))
def test_pattern_matches_torch_and_onnxruntime(name, exporter, tmp_path):
    path = _export_and_compare(name, exporter, tmp_path)
    program = load_program(path)
    kinds = [s.kind for s in program.steps]
    # no Transpose is run as a copy and, where a conv reads it, no scaled map is written
    assert "transpose" not in kinds, program.steps
    if name.startswith("se_project"):
        assert "scale" not in kinds and any(s.kind == "chain" and s.in_scale
                                            for s in program.steps), program.steps
    if name.startswith(("convnext", "tokens", "pointnet", "linear")):
        assert kinds == ["chain"], program.steps  # one fused chain, nothing else
    if "gelu" in name:  # the exporters' GELU nodes are one epilogue op in the chain
        want = "gelu_tanh" if name.endswith("tanh") else "gelu"
        assert [s.layers[0].act.describe() for s in program.steps] == [want], \
            program.steps
    if name.startswith("convnext"):  # both Transposes gone: an NCHW chain
        assert not program.steps[0].in_last and not program.steps[0].out_last


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("name, shape", [  # each large enough to run on several threads
    ("se_project", (3, 16, 60, 50)), ("convnext", (2, 13, 48, 50)),
    ("tokens", (4, 130, 37)), ("pointnet", (3, 700, 3)), ("linear_nc", (20000, 37)),
    ("convnext_gelu", (2, 13, 48, 50)), ("tokens_gelu_tanh", (4, 130, 37))])
def test_threads_give_the_same_bits(name, shape, tmp_path):
    torch.manual_seed(1)
    module = CASES[name][0]().eval()
    x = _x(shape, seed=2)
    path = str(tmp_path / "m.onnx")
    with torch.no_grad():
        torch.onnx.export(module, (torch.from_numpy(x),), path, dynamo=False,
                          input_names=["input"], output_names=["output"])
        want = module(torch.from_numpy(x)).numpy()
    outs = [pyconv1x1.InferenceSession(path, threads=t).run(None, {"input": x})[0]
            for t in (1, 2, 3, 4)]
    for t, y in zip((2, 3, 4), outs[1:]):
        assert np.array_equal(y, outs[0]), f"{t} threads differ from 1"
    np.testing.assert_allclose(outs[0], want, rtol=RTOL, atol=RTOL * np.abs(want).max())


# --------------------------------------------------------------------------------------
# hand-written graphs: what stays refused, and the forms exporters may also write
# --------------------------------------------------------------------------------------
def _model(nodes, inputs, outputs, inits=None, opset=17):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s)
                     for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in (inits or {}).items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _vs_onnxruntime(model, feeds, threads=(1, 2)):
    data = model.SerializeToString()
    want = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, feeds)
    for t in threads:
        got = pyconv1x1.InferenceSession(data, threads=t).run(None, feeds)
        for g, w in zip(got, want):
            assert g.shape == w.shape
            np.testing.assert_allclose(g, w, rtol=RTOL, atol=RTOL * max(1, np.abs(w).max()))
    return load_program(data)


W = _x((6, 5), seed=3)


@pytest.mark.parametrize("case, want", [
    ("transpose_other_axes", r"Transpose 't'.*perm \[0, 1, 3, 2\] moves other axes"),
    ("matmul_runtime_weight", r"MatMul 'mm'.*weight 'w' is computed at run time"),
    ("matmul_non_last_axis", r"MatMul 'mm'.*left operand.*axis -2"),
    ("matmul_batched_weight", r"MatMul 'mm'.*shape \[2, 6, 5\]; only a 2-D"),
    ("reduce_mean_channels", r"ReduceMean 'r'.*axes \[1\].*every spatial axis"),
    ("gemm_bias_per_row", r"Gemm 'g'.*bias C of shape \[4, 5\] varies along the batch"),
    ("mul_broadcast_pixels", r"Mul 'm'.*two run-time tensors \[1, 6, 4, 4\] and "
                             r"\[1, 1, 4, 4\]"),
])
def test_refused_with_the_node_named(case, want):
    x4 = ("x", [1, 6, 4, 4])
    if case == "transpose_other_axes":
        m = _model([helper.make_node("Transpose", ["x"], ["y"], name="t",
                                     perm=[0, 1, 3, 2])], [x4], [("y", None)])
    elif case == "matmul_runtime_weight":
        m = _model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                   [("x", [2, 3, 6]), ("w", [6, 5])], [("y", None)])
    elif case == "matmul_non_last_axis":
        m = _model([helper.make_node("MatMul", ["W", "x"], ["y"], name="mm")],
                   [("x", [2, 5, 3])], [("y", None)], {"W": W})
    elif case == "matmul_batched_weight":
        m = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")],
                   [("x", [2, 3, 6])], [("y", None)], {"W": _x((2, 6, 5))})
    elif case == "reduce_mean_channels":
        m = _model([helper.make_node("ReduceMean", ["x"], ["y"], name="r", axes=[1])],
                   [x4], [("y", None)])
    elif case == "gemm_bias_per_row":
        m = _model([helper.make_node("Gemm", ["x", "W", "C"], ["y"], name="g")],
                   [("x", [4, 6])], [("y", None)], {"W": W, "C": _x((4, 5))})
    else:
        m = _model([helper.make_node("Mul", ["x", "s"], ["y"], name="m")],
                   [x4, ("s", [1, 1, 4, 4])], [("y", None)])
    with pytest.raises(pyconv1x1.UnsupportedError, match=want):
        pyconv1x1.InferenceSession(m.SerializeToString())


@pytest.mark.parametrize("opset", [13, 18])
@pytest.mark.parametrize("keepdims", [1, 0])
def test_reduce_mean_forms(opset, keepdims):
    """axes as an attribute (opset < 18) or an input (18), negative axes, keepdims 0."""
    x = _x((2, 5, 3, 7))
    if opset >= 18:
        node = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="r",
                                keepdims=keepdims)
        inits = {"axes": np.array([-1, 2], np.int64)}
    else:
        node = helper.make_node("ReduceMean", ["x"], ["y"], name="r", axes=[-1, 2],
                                keepdims=keepdims)
        inits = {}
    m = _model([node], [("x", [2, 5, 3, 7])], [("y", None)], inits, opset)
    _vs_onnxruntime(m, {"x": x})


def test_gemm_attributes_and_transposes_that_stay():
    """Gemm alpha / beta / transB; a Transpose no chain can take runs as one copy; a
    chain reading [N, L, C] through a rank-3 transpose [0, 2, 1] reads NCHW instead."""
    wt = _x((5, 6), seed=4)
    nodes = [helper.make_node("Gemm", ["x", "Wt", "C"], ["g"], name="g", alpha=0.5,
                              beta=2.0, transB=1),
             helper.make_node("Relu", ["g"], ["y"], name="relu")]
    m = _model(nodes, [("x", [3, 6])], [("y", None)], {"Wt": wt, "C": _x((1, 5))})
    _vs_onnxruntime(m, {"x": _x((3, 6))})
    # x -> Transpose -> Relu -> graph output: nothing to take it: a copy
    m = _model([helper.make_node("Transpose", ["x"], ["t"], name="t", perm=[0, 2, 3, 1]),
                helper.make_node("Relu", ["t"], ["y"], name="relu")],
               [("x", [2, 3, 4, 5])], [("y", None)])
    program = _vs_onnxruntime(m, {"x": _x((2, 3, 4, 5))})
    assert [s.kind for s in program.steps] == ["transpose", "affine"]
    assert any("transpose t" in d and "kept" in d for d in program.declined)
    # [N, C, L] -> Transpose [0, 2, 1] -> MatMul -> Transpose [0, 2, 1]: a Conv1d
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="t1", perm=[0, 2, 1]),
             helper.make_node("MatMul", ["t", "W"], ["m"], name="mm"),
             helper.make_node("Transpose", ["m"], ["y"], name="t2", perm=[0, 2, 1])]
    m = _model(nodes, [("x", [2, 6, 9])], [("y", None)], {"W": W})
    program = _vs_onnxruntime(m, {"x": _x((2, 6, 9))})
    assert [s.kind for s in program.steps] == ["chain"]
    assert not program.steps[0].in_last and not program.steps[0].out_last


def test_constants_along_axis_1_of_tokens_stay_beside_a_linear():
    """[N, L, C] times a constant [1, L, 1] (axis 1, not the Linear's channels) before and
    after a MatMul: never folded into its weights; the last-axis bias Add is."""
    nodes = [helper.make_node("Mul", ["x", "K"], ["a"], name="before"),
             helper.make_node("MatMul", ["a", "W"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "B"], ["b"], name="bias"),
             helper.make_node("Mul", ["b", "K2"], ["y"], name="after")]
    m = _model(nodes, [("x", [2, 6, 6])], [("y", None)],  # (L = C: sizes alone agree)
               {"K": _x((1, 6, 1), seed=8), "W": _x((6, 6), seed=11), "B": _x((6,), seed=9),
                "K2": _x((6, 1), seed=10)})
    program = _vs_onnxruntime(m, {"x": _x((2, 6, 6))})
    assert [s.kind for s in program.steps] == ["affine", "chain", "affine"], program.steps
    assert "bias" in program.steps[1].layers[0].names


def test_conv_then_linear_is_one_chain():
    """Conv -> Transpose -> MatMul -> Add -> Transpose -> Relu: the first Transpose goes
    into the conv's store, the second into the Linear's; the three chain as one."""
    wc = _x((6, 4, 1, 1), seed=6)
    nodes = [helper.make_node("Conv", ["x", "Wc"], ["c"], name="conv"),
             helper.make_node("Transpose", ["c"], ["t"], name="t1", perm=[0, 2, 3, 1]),
             helper.make_node("MatMul", ["t", "W"], ["m"], name="mm"),
             helper.make_node("Add", ["m", "B"], ["a"], name="bias"),
             helper.make_node("Transpose", ["a"], ["u"], name="t2", perm=[0, 3, 1, 2]),
             helper.make_node("Relu", ["u"], ["y"], name="relu")]
    m = _model(nodes, [("x", [2, 4, 3, 5])], [("y", None)],
               {"Wc": wc, "W": W, "B": _x((5,), seed=7)})
    program = _vs_onnxruntime(m, {"x": _x((2, 4, 3, 5))}, threads=(1, 3))
    assert [s.kind for s in program.steps] == ["chain"], program.steps
    step = program.steps[0]
    assert len(step.layers) == 2 and not step.in_last and not step.out_last


@pytest.mark.filterwarnings("ignore")
def test_compiled_plan_keeps_layouts_and_scale(tmp_path):
    make, shape = CASES["se_project"]
    torch.manual_seed(0)
    src = str(tmp_path / "se.onnx")
    x = _x(shape)
    with torch.no_grad():
        torch.onnx.export(make().eval(), (torch.from_numpy(x),), src, dynamo=False,
                          input_names=["input"], output_names=["output"])
    tok = str(tmp_path / "tok.onnx")
    xt = _x(CASES["tokens"][1])
    with torch.no_grad():
        torch.onnx.export(CASES["tokens"][0]().eval(), (torch.from_numpy(xt),), tok,
                          dynamo=False, input_names=["input"], output_names=["output"])
    for path, feed in ((src, x), (tok, xt)):
        pc1 = str(tmp_path / "m.pc1")
        planfile.compile_model(path, pc1)
        a = pyconv1x1.InferenceSession(path, threads=2).run(None, {"input": feed})[0]
        b = pyconv1x1.InferenceSession(pc1, threads=2).run(None, {"input": feed})[0]
        assert np.array_equal(a, b)


# --------------------------------------------------------------------------------------
# kernels: channels-last gather / store and the input scale, every variant
# --------------------------------------------------------------------------------------
VARIANTS = _backend.runnable_variants()


@pytest.fixture(params=VARIANTS)
def kern(request):
    return _backend.kernels(request.param)


def _layer(rng, cin, cout, res=0):
    w = (rng.standard_normal((cout, cin)) / math.sqrt(cin)).astype(F)
    return ConvLayer(names=(f"l{cin}x{cout}",), weight=w,
                     bias=rng.standard_normal(cout).astype(F),
                     residual="r" if res else None, res_mode=res)


def _chain(kern, layers):
    from pyconv1x1.plan import _chain_kernel
    from pyconv1x1.program import ChainStep
    return _chain_kernel(ChainStep("x", "y", layers), kern)


@pytest.mark.parametrize("in_last, out_last", [(True, True), (True, False),
                                               (False, True)])
@pytest.mark.parametrize("n, p, cin, mid, cout", [(1, 1, 1, 1, 1), (3, 7, 5, 9, 3),
                                                  (2, 45, 13, 37, 6)])
def test_kernel_channels_last(kern, in_last, out_last, n, p, cin, mid, cout):
    rng = np.random.default_rng(n * p + cin)
    nr = kern.PANEL_WIDTH
    layers = [_layer(rng, cin, mid), _layer(rng, mid, cout, res=1)]
    chain = _chain(kern, layers)
    x = rng.standard_normal((n, cin, p)).astype(F)  # NCHW, one row of p pixels
    r = rng.standard_normal((n, cout, p)).astype(F)
    want = conv1x1_ref(conv1x1_ref(x[:, :, None], layers[0].weight, layers[0].bias),
                       layers[1].weight, layers[1].bias)[:, :, 0] + r
    cl = lambda a: np.ascontiguousarray(a.transpose(0, 2, 1))  # noqa: E731
    xin = cl(x) if in_last else x
    res = cl(r) if out_last else r
    outs = []
    for tile in (nr, plan.tile_pixels(nr, max(cin, mid, cout), n * p)):
        for threads in (1, 2, 3):
            for split in (1, 2):
                y = np.full((n, p, cout) if out_last else (n, cout, p), np.nan, F)
                chain.run(xin, y, (None, res), n, 1, p, 1, p, 1, 1, 0, 0, tile, threads,
                          True, split, in_last, out_last)
                outs.append(y)
    for y in outs[1:]:
        assert np.array_equal(y, outs[0])
    got = outs[0].transpose(0, 2, 1) if out_last else outs[0]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="channels-last"):  # unfolded: refused
        chain.run(xin, outs[0], (None, res), n, 1, p, 1, p, 1, 1, 0, 0, nr, 1, False, 1,
                  in_last, out_last)


@pytest.mark.parametrize("folded", [False, True])
@pytest.mark.parametrize("strided", [False, True])
def test_kernel_input_scale(kern, folded, strided):
    """x * s[n, c] as the chain gathers x: the same bits as scaling first."""
    rng = np.random.default_rng(5)
    nr = kern.PANEL_WIDTH
    n, c, h, w = 3, 13, 5, 2 * nr + 1
    layer = _layer(rng, c, 7)
    if strided:
        layer.strides, layer.pads = (2, 2), (1, 0, 1, 1)
    chain = _chain(kern, [layer])
    x = rng.standard_normal((n, c, h, w)).astype(F)
    s = rng.random((n, c)).astype(F)
    ho, wo, pt, pl = layer.out_hw(h, w)
    tile = nr * 2
    outs = []
    for xs, scale in ((x * s[:, :, None, None], None), (x, s)):
        for threads, split in ((1, 1), (3, 1), (2, 3)):
            y = np.full((n, 7, ho, wo), np.nan, F)
            chain.run(xs, y, (None,), n, h, w, ho, wo, *layer.strides, pt, pl, tile,
                      threads, folded, split, xscale=scale)
            outs.append(y)
    for y in outs[1:]:
        assert np.array_equal(y, outs[0])
    with pytest.raises(ValueError, match="xscale"):
        chain.run(x, outs[0], (None,), n, h, w, ho, wo, *layer.strides, pt, pl, tile, 1,
                  folded, 1, xscale=s[:, :-1].copy())
