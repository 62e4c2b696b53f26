"""The epilogue-program activations end to end: Sigmoid, HardSigmoid, HardSwish, Tanh,
PRelu, Gelu (opset 20, both approximations), the SiLU pattern Mul(x, Sigmoid(x)) and the
GELU Erf patterns, fused after a conv, after a residual join, on their own (nothing
precedes them), against onnxruntime and the torch reference; plan-file round trips;
refusals; and PyTorch modules through both exporters."""
import importlib.util
import math

import numpy as np
import pytest
from onnx import helper

import pyconv1x1
from conftest import assert_close, conv_node, rnd, run_ort
from conftest import make_model as _make_model
from pyconv1x1 import planfile
from pyconv1x1.program.epilogue import OPS
from pyconv1x1.testing import run_torch_reference

def make_model(*args, **kwargs):
    kwargs.setdefault("check", False)  # (outputs of unknown shape)
    return _make_model(*args, **kwargs)


HAVE_TORCH = importlib.util.find_spec("torch") is not None  # (not under aarch64 emulation)
C = 6
SHAPE = [2, 4, 5, 7]
RTOL = 2e-6


def _act_nodes(kind, x, y, p=""):
    """(nodes, initializers, opset) computing activation `kind` from x into y."""
    n = lambda *a, **k: helper.make_node(*a, **k)  # noqa: E731
    if kind == "sigmoid":
        return [n("Sigmoid", [x], [y], name=p + "sig")], {}, 17
    if kind == "hardsigmoid":
        return [n("HardSigmoid", [x], [y], name=p + "hs", alpha=0.3, beta=0.45)], {}, 17
    if kind == "hardsigmoid_default":
        return [n("HardSigmoid", [x], [y], name=p + "hs")], {}, 17
    if kind == "hardswish":
        return [n("HardSwish", [x], [y], name=p + "hsw")], {}, 17
    if kind == "tanh":
        return [n("Tanh", [x], [y], name=p + "tanh")], {}, 17
    if kind == "silu":
        return [n("Sigmoid", [x], [p + "s"], name=p + "sig"),
                n("Mul", [p + "s", x], [y], name=p + "mul")], {}, 17
    if kind.startswith("prelu"):
        shape = {"prelu": [C, 1, 1], "prelu_c": [C], "prelu_4d": [1, C, 1, 1],
                 "prelu_scalar": []}[kind]
        slope = np.linspace(-0.3, 0.6, max(1, int(np.prod(shape))), dtype=np.float32)
        return [n("PRelu", [x, p + "slope"], [y], name=p + "prelu")], \
            {p + "slope": slope.reshape(shape)}, 17
    if kind == "gelu":
        return [n("Gelu", [x], [y], name=p + "gelu")], {}, 20
    if kind == "gelu_tanh":
        return [n("Gelu", [x], [y], name=p + "gelu", approximate="tanh")], {}, 20
    if kind.startswith("gelu_tanh_"):  # the tanh GELU as exporters write it before opset 20
        consts = {p + "three": np.float32(3), p + "c": np.float32(0.044715),
                  p + "k": np.float32(math.sqrt(2 / math.pi)), p + "one": np.float32(1),
                  p + "half": np.float32(0.5)}
        if kind == "gelu_tanh_ts":  # TorchScript: x * (x * x), (x * f) * 0.5
            cube = [n("Mul", [x, x], [p + "sq"], name=p + "sq"),
                    n("Mul", [x, p + "sq"], [p + "cu"], name=p + "cube")]
            tail = [n("Mul", [x, p + "f"], [p + "m"], name=p + "mul1"),
                    n("Mul", [p + "half", p + "m"], [y], name=p + "mul2")]
        else:                       # dynamo: Pow(x, 3), x * (0.5 * f)
            cube = [n("Pow", [x, p + "three"], [p + "cu"], name=p + "cube")]
            tail = [n("Mul", [p + "half", p + "f"], [p + "m"], name=p + "mul1"),
                    n("Mul", [x, p + "m"], [y], name=p + "mul2")]
        mid = [n("Mul", [p + "c", p + "cu"], [p + "cc"], name=p + "c"),
               n("Add", [x, p + "cc"], [p + "in"], name=p + "inner"),
               n("Mul", [p + "k", p + "in"], [p + "ki"], name=p + "k"),
               n("Tanh", [p + "ki"], [p + "tn"], name=p + "tanh"),
               n("Add", [p + "tn", p + "one"], [p + "f"], name=p + "add1")]
        return cube + mid + tail, consts, 17
    if kind.startswith("gelu_erf"):
        consts = {p + "r2": np.float32(math.sqrt(2)), p + "one": np.float32(1),
                  p + "half": np.float32(0.5), p + "ir2": np.float32(math.sqrt(0.5))}
        if kind == "gelu_erf_mul":  # x * (1/sqrt 2), then ((x * 0.5) * (1 + erf))
            head = [n("Mul", [x, p + "ir2"], [p + "a"], name=p + "div"),
                    n("Erf", [p + "a"], [p + "e"], name=p + "erf"),
                    n("Add", [p + "one", p + "e"], [p + "f"], name=p + "add"),
                    n("Mul", [x, p + "half"], [p + "h"], name=p + "half"),
                    n("Mul", [p + "h", p + "f"], [y], name=p + "mul")]
            return head, consts, 17
        head = [n("Div", [x, p + "r2"], [p + "a"], name=p + "div"),
                n("Erf", [p + "a"], [p + "e"], name=p + "erf"),
                n("Add", [p + "e", p + "one"], [p + "f"], name=p + "add")]
        if kind == "gelu_erf":  # TorchScript exporter: (x * f) * 0.5
            tail = [n("Mul", [x, p + "f"], [p + "m"], name=p + "mul1"),
                    n("Mul", [p + "m", p + "half"], [y], name=p + "mul2")]
        else:                   # dynamo exporter: x * (0.5 * f)
            tail = [n("Mul", [p + "half", p + "f"], [p + "m"], name=p + "mul1"),
                    n("Mul", [x, p + "m"], [y], name=p + "mul2")]
        return head + tail, consts, 17
    raise AssertionError(kind)


KINDS = ["sigmoid", "hardsigmoid", "hardsigmoid_default", "hardswish", "tanh", "silu",
         "prelu", "prelu_4d", "prelu_scalar", "gelu", "gelu_tanh", "gelu_erf",
         "gelu_erf_dynamo", "gelu_erf_mul", "gelu_tanh_ts", "gelu_tanh_dynamo"]


def _weights(rng):
    return {"w": rnd(rng, C, 4, 1, 1, scale=1.5), "b": rnd(rng, C), "w2": rnd(rng, C, C, 1, 1),
            "b2": rnd(rng, C)}


def _graph(kind, layout, rng):
    """layout: 'fused' conv -> act; 'alone' act on the input (then a conv); 'residual'
    conv + x -> act; 'after' act(conv) + x; 'add' act(a + b) of two inputs; 'chain'
    conv -> act -> conv -> act."""
    inits = _weights(rng)
    x_shape = SHAPE if layout in ("fused", "chain") else [2, C, 5, 7]
    inputs = [("x", x_shape)]
    if layout == "fused":
        nodes = [conv_node("x", "w", "b", "t", name="conv")]
        act, more, opset = _act_nodes(kind, "t", "y")
    elif layout == "chain":
        act1, more1, opset = _act_nodes(kind, "t", "u", "a1_")
        act, more, _ = _act_nodes(kind, "t2", "y", "a2_")
        nodes = [conv_node("x", "w", "b", "t", name="conv")] + act1 + \
            [conv_node("u", "w2", "b2", "t2", name="conv2")]
        more.update(more1)
    elif layout == "alone":
        act, more, opset = _act_nodes(kind, "x", "t")
        nodes = act
        act = [conv_node("t", "w2", "b2", "y", name="conv2")]
    elif layout == "residual":
        nodes = [conv_node("x", "w2", "b2", "t", name="conv"),
                 helper.make_node("Add", ["t", "x"], ["r"], name="join")]
        act, more, opset = _act_nodes(kind, "r", "y")
    elif layout == "after":
        nodes = [conv_node("x", "w2", "b2", "t", name="conv")]
        act, more, opset = _act_nodes(kind, "t", "r")
        act = act + [helper.make_node("Add", ["r", "x"], ["y"], name="join")]
    elif layout == "add":
        inputs.append(("x2", [2, C, 5, 7]))
        nodes = [helper.make_node("Add", ["x", "x2"], ["r"], name="join")]
        act, more, opset = _act_nodes(kind, "r", "y")
    inits.update(more)
    return make_model(nodes + act, inputs, [("y", None)], inits, opset=opset, check=False)


def _feeds(model, rng):
    return {i.name: rnd(rng, *[d.dim_value for d in i.type.tensor_type.shape.dim],
                        scale=2.0) for i in model.graph.input}


def _op_names(kind):
    if kind.startswith("hardsigmoid"):  # an affine step + clip (ops.py): fast path
        return "clip(0,1)"
    if kind.startswith("gelu_tanh"):
        return "gelu_tanh"
    return {"silu": "silu"}.get(
        kind, "gelu" if kind.startswith("gelu") else kind.split("_")[0])


@pytest.mark.parametrize("layout", ["fused", "chain", "alone", "residual", "after", "add"])
@pytest.mark.parametrize("kind", KINDS)
def test_activation_matches_onnxruntime(kind, layout):
    rng = np.random.default_rng(len(kind) * 7 + len(layout))
    model = _graph(kind, layout, rng)
    feeds = _feeds(model, rng)
    ref = run_ort(model, feeds)[0]
    torch_ref = run_torch_reference(model, feeds)["y"] if HAVE_TORCH else None
    for threads in (1, 3):
        sess = pyconv1x1.InferenceSession(model.SerializeToString(), threads=threads)
        y = sess.run(None, feeds)[0]
        assert_close(y, ref, RTOL)
        if torch_ref is not None:
            assert_close(y, torch_ref, RTOL)
    steps = sess._program.steps
    text = " ".join(s.describe() for s in steps)
    assert _op_names(kind) in text, text
    if layout in ("fused", "chain", "residual"):  # one fused step does it all
        if kind.startswith("hardsigmoid") and layout == "residual":
            # (its affine step's scale and shift do not fold into a conv that adds a
            # residual: it runs after the chain)
            assert [s.kind for s in steps] == ["chain", "affine"], text
        else:
            assert [s.kind for s in steps] == ["chain"], text
    if layout == "after":
        assert [s.kind for s in steps] == ["chain"], text
        assert steps[0].layers[0].res_mode == 2


def test_plan_file_round_trip_keeps_programs(tmp_path, rng):
    """A per-channel slope and a program survive compile -> load bit for bit; min/max
    activations are written as before (old plans keep loading: test_deploy's files)."""
    nodes = [conv_node("x", "w", "b", "t", name="conv")]
    act, inits, _ = _act_nodes("prelu", "t", "u")
    act2, _, _ = _act_nodes("silu", "u", "v", "s_")
    relu = [helper.make_node("Relu", ["v"], ["r"], name="relu"),
            conv_node("r", "w2", "b2", "y", name="conv2"),
            ]
    inits.update(_weights(rng))
    model = make_model(nodes + act + act2 + relu, [("x", SHAPE)], [("y", None)], inits)
    path = tmp_path / "m.pc1"
    planfile.compile_model(model.SerializeToString(), str(path))
    x = rnd(rng, *SHAPE)
    a = pyconv1x1.InferenceSession(model.SerializeToString(), threads=1).run(None, {"x": x})
    b = pyconv1x1.InferenceSession(str(path), threads=1).run(None, {"x": x})
    assert np.array_equal(a[0], b[0])
    layer = pyconv1x1.InferenceSession(str(path))._program.steps[0].layers[0]
    assert layer.act.describe() == "prelu([6])+silu+clamp(0,inf)"


def _unsupported(model, *words):
    with pytest.raises(pyconv1x1.UnsupportedError) as info:
        pyconv1x1.InferenceSession(model.SerializeToString())
    for w in words:
        assert w in str(info.value), str(info.value)


def test_prelu_slope_that_is_not_per_channel_is_refused(rng):
    inits = _weights(rng)
    inits["slope"] = np.full((C, 5, 1), 0.1, np.float32)
    model = make_model([conv_node("x", "w", "b", "t", name="conv"),
                        helper.make_node("PRelu", ["t", "slope"], ["y"], name="pr")],
                       [("x", SHAPE)], [("y", None)], inits)
    _unsupported(model, "PRelu", "'pr'", "[6, 5, 1]", "channel axis")


def test_prelu_slope_of_the_wrong_channel_count_is_a_model_error(rng):
    inits = _weights(rng)
    inits["slope"] = np.full((C + 1, 1, 1), 0.1, np.float32)
    model = make_model([conv_node("x", "w", "b", "t", name="conv"),
                        helper.make_node("PRelu", ["t", "slope"], ["y"], name="pr")],
                       [("x", SHAPE)], [("y", [2, C, 5, 7])], inits, check=False)
    with pytest.raises(pyconv1x1.ModelError, match="'pr'.*\\[7, 1, 1\\]"):
        pyconv1x1.InferenceSession(model.SerializeToString())


def test_erf_outside_the_gelu_pattern_is_refused(rng):
    model = make_model([conv_node("x", "w", "b", "t", name="conv"),
                        helper.make_node("Erf", ["t"], ["y"], name="erf")],
                       [("x", SHAPE)], [("y", None)], _weights(rng))
    _unsupported(model, "Erf 'erf'", "GELU pattern")


def test_gelu_pattern_whose_intermediate_is_read_elsewhere_is_not_fused(rng):
    """The Erf output is also a graph output: no pattern, so Erf is refused."""
    nodes, inits, _ = _act_nodes("gelu_erf", "t", "y")
    inits.update(_weights(rng))
    model = make_model([conv_node("x", "w", "b", "t", name="conv")] + nodes,
                       [("x", SHAPE)], [("y", None), ("e", None)], inits)
    _unsupported(model, "Erf", "GELU pattern")


def test_sigmoid_times_another_tensor_is_not_silu(rng):
    inits = _weights(rng)
    model = make_model([conv_node("x", "w", "b", "t", name="conv"),
                        conv_node("x", "w", "b", "t2", name="conv2"),
                        helper.make_node("Sigmoid", ["t"], ["s"], name="sig"),
                        helper.make_node("Mul", ["t2", "s"], ["y"], name="mul")],
                       [("x", SHAPE)], [("y", None)], inits)
    _unsupported(model, "Mul 'mul'", "product of two run-time tensors")


def test_gelu_bad_approximate_is_a_model_error(rng):
    model = make_model([helper.make_node("Gelu", ["x"], ["y"], name="g",
                                         approximate="erf")],
                       [("x", SHAPE)], [("y", None)], opset=20, check=False)
    with pytest.raises(pyconv1x1.ModelError, match="'g'.*approximate"):
        pyconv1x1.InferenceSession(model.SerializeToString())


def test_more_than_four_ops_stay_separate_steps(rng):
    """A fifth op does not fit the conv's program: it runs as its own step (and says
    why)."""
    nodes = [conv_node("x", "w", "b", "t0", name="conv")]
    for i in range(5):
        nodes.append(helper.make_node("Tanh", [f"t{i}"], [f"t{i + 1}" if i < 4 else "y"],
                                      name=f"tanh{i}"))
    model = make_model(nodes, [("x", SHAPE)], [("y", None)], _weights(rng))
    sess = pyconv1x1.InferenceSession(model.SerializeToString())
    assert [s.kind for s in sess._program.steps] == ["chain", "affine"]
    assert any("more than 4 epilogue ops" in d for d in sess._program.declined)
    feeds = {"x": rnd(rng, *SHAPE)}
    assert_close(sess.run(None, feeds)[0], run_ort(model, feeds)[0], RTOL)


def test_every_table_op_is_reachable_from_onnx():
    """Each row of the table binds from some ONNX op or pattern (clamp / prelu: Clip,
    LeakyRelu, PRelu)."""
    from pyconv1x1.ops import REGISTRY
    bound = {k.onnx for k in OPS.values() if k.onnx}
    assert bound <= set(REGISTRY)
    assert {"PRelu", "Gelu", "pyconv1x1:Silu"} <= set(REGISTRY)


# --------------------------------------------------------------------------------------
# PyTorch modules, both exporters
# --------------------------------------------------------------------------------------
def _slopes(prelu):
    """Distinct random slopes (the TorchScript exporter shares equal initializers
    through an Identity node, a constant computation this runtime does not fold)."""
    import torch
    with torch.no_grad():
        prelu.weight.uniform_(-0.5, 0.5)
    return prelu


def _torch_acts():
    import torch
    nn = torch.nn
    return {"sigmoid": nn.Sigmoid, "hardsigmoid": nn.Hardsigmoid,
            "hardswish": nn.Hardswish, "tanh": nn.Tanh, "silu": nn.SiLU,
            "prelu": lambda: _slopes(nn.PReLU(C)), "prelu1": lambda: _slopes(nn.PReLU()),
            "gelu": nn.GELU, "gelu_tanh": lambda: nn.GELU(approximate="tanh")}


@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "hardsigmoid", "hardswish", "prelu",
                                 "prelu1", "sigmoid", "silu", "tanh"])
def test_torch_module_matches(act, exporter, opset):
    """conv -> act -> conv -> act: fused in the chain; act -> conv: on its own. opset 17:
    GELU is exported as its Erf (or, approximate="tanh", Tanh) pattern, opset 20 as the
    Gelu op."""
    torch = pytest.importorskip("torch")
    from pyconv1x1.testing import ExportFailed, assert_matches_torch
    make = _torch_acts()[act]
    torch.manual_seed(0)
    nn = torch.nn
    for module in (nn.Sequential(nn.Conv2d(4, C, 1), make(), nn.Conv2d(C, C, 1), make()),
                   nn.Sequential(make() if act != "prelu" else _slopes(nn.PReLU(4)),
                                 nn.Conv2d(4, C, 1))):
        x = torch.randn(2, 4, 5, 7) * 2
        try:
            assert_matches_torch(module, x, exporter, rtol=RTOL, threads=2,
                                 opset_version=opset)
        except ExportFailed as exc:
            pytest.xfail(str(exc))


def test_tanh_gelu_pattern_whose_intermediate_is_read_elsewhere_is_not_fused(rng):
    """The Tanh argument is also a graph output: no pattern; the run-time Pow is refused."""
    nodes, inits, _ = _act_nodes("gelu_tanh_dynamo", "t", "y")
    inits.update(_weights(rng))
    model = make_model([conv_node("x", "w", "b", "t", name="conv")] + nodes,
                       [("x", SHAPE)], [("y", None), ("ki", None)], inits, check=False)
    _unsupported(model, "Pow", "")
