"""What exporters write around the convs (issue 13): input normalization and other
per-channel affine maps, constant subgraphs folded at load, float16 models and
weight-only quantized weights. Each pattern is exported from PyTorch with both exporters
where PyTorch can express it, and compared with PyTorch and onnxruntime; patterns that
exporters fold away themselves (constant subgraphs, DequantizeLinear of weights) are
built with onnx.helper and compared with onnxruntime. Every op or broadcast this runtime
cannot run stays refused with a message naming the node."""
import os
import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import pyconv1x1
from pyconv1x1 import InferenceSession, InputError, UnsupportedError, fold, onnx_reader
from pyconv1x1.testing import compare_outputs

from conftest import conv_node, make_model, rnd, run_ort

F = np.float32
THREADS = 2


# --------------------------------------------------------------------------------------
# constant folding: each op against onnxruntime, value and dtype exactly
# --------------------------------------------------------------------------------------
def _fold_case(op, inputs, opset=17, **attrs):
    """A model computing `op` on constant inputs ({name: array}) as its output."""
    names = list(inputs)
    node = helper.make_node(op, names, ["out"], name="n", **attrs)
    untyped = helper.make_value_info("out", onnx.TypeProto())
    return make_model([node], [], [untyped], inputs, opset=opset, check=False)


I64 = np.int64
FOLD_CASES = {
    "add_broadcast": ("Add", {"a": np.arange(6, dtype=F).reshape(2, 3),
                              "b": np.array([0.5, -1, 2], F)}, {}),
    "sub_int": ("Sub", {"a": np.array([5, -3], I64), "b": np.array([7], I64)}, {}),
    "mul_f16": ("Mul", {"a": np.array([1.1, 3.3, 65504], np.float16),
                        "b": np.array([3.7], np.float16)}, {}),
    "div_float": ("Div", {"a": np.array([1, 2, 255], F), "b": np.array(255, F)}, {}),
    "div_int_truncates": ("Div", {"a": np.array([-7, 7, -8, 8, 0], I64),
                                  "b": np.array([2, -2, 3, 3, -5], I64)}, {}),
    "div_int32": ("Div", {"a": np.array([-9, 9], np.int32), "b": np.array([4], np.int32)},
                  {}),
    "neg": ("Neg", {"a": np.array([1.5, -0.0, 3], F)}, {}),
    "reciprocal": ("Reciprocal", {"a": np.array([0.229, 0.224, 3, 0], F)}, {}),
    "sqrt": ("Sqrt", {"a": np.array([4, 2, 0.5, 1e-5], F)}, {}),
    "pow_int_exponent": ("Pow", {"a": np.array([1.5, -2, 0.1], F), "b": np.array(2, I64)},
                         {}),
    "pow_float": ("Pow", {"a": np.array([1.5, 2, 0.1], F), "b": np.array([0.5], F)}, {}),
    "cast_f_to_i": ("Cast", {"a": np.array([-2.7, 2.7, 0.5, -0.5], F)},
                    {"to": TensorProto.INT64}),
    "cast_f_to_f16": ("Cast", {"a": np.array([1 / 3, 70000, 1e-8], F)},
                      {"to": TensorProto.FLOAT16}),
    "cast_i_to_f": ("Cast", {"a": np.array([3, -1], I64)}, {"to": TensorProto.FLOAT}),
    "cast_bool": ("Cast", {"a": np.array([0, 2.5], F)}, {"to": TensorProto.BOOL}),
    "identity": ("Identity", {"a": np.array([[1, 2]], F)}, {}),
    "reshape_zero_minus1": ("Reshape", {"a": np.arange(24, dtype=F).reshape(2, 3, 4),
                                        "s": np.array([0, -1, 2], I64)}, {}),
    "unsqueeze": ("Unsqueeze", {"a": np.arange(3, dtype=F),
                                "axes": np.array([0, -1, 2], I64)}, {}),
    "squeeze_all": ("Squeeze", {"a": np.zeros((1, 3, 1, 1), F)}, {}),
    "squeeze_axes": ("Squeeze", {"a": np.zeros((1, 3, 1, 1), F),
                                 "axes": np.array([0, -1], I64)}, {}),
    "flatten": ("Flatten", {"a": np.arange(24, dtype=F).reshape(2, 3, 4)}, {"axis": 2}),
    "flatten_neg": ("Flatten", {"a": np.arange(24, dtype=F).reshape(2, 3, 4)},
                    {"axis": -3}),
    "expand_bidirectional": ("Expand", {"a": np.arange(3, dtype=F).reshape(3, 1),
                                        "s": np.array([2, 1, 4], I64)}, {}),
    "constant_of_shape": ("ConstantOfShape", {"s": np.array([1, 3, 1, 1], I64)},
                          {"value": numpy_helper.from_array(np.array([0.5], F))}),
    "constant_of_shape_default": ("ConstantOfShape", {"s": np.array([2, 2], I64)}, {}),
    "dequantize_per_tensor": ("DequantizeLinear", {
        "q": np.array([[0, 255, 128], [3, 7, 9]], np.uint8), "s": np.array(0.02, F),
        "z": np.array(128, np.uint8)}, {}),
    "dequantize_per_channel": ("DequantizeLinear", {
        "q": np.array([[-128, 127], [5, -5], [0, 1]], np.int8).reshape(3, 2, 1, 1),
        "s": np.array([0.1, 0.02, 1.5], F), "z": np.array([0, -3, 2], np.int8)},
        {"axis": 0}),
    "dequantize_no_zero_point": ("DequantizeLinear", {
        "q": np.array([-128, 0, 127], np.int8), "s": np.array(0.5, F)}, {}),
    "dequantize_int32_bias": ("DequantizeLinear", {
        "q": np.array([-100000, 3, 2 ** 30], np.int32), "s": np.array(1e-4, F)}, {}),
}


@pytest.mark.parametrize("case", list(FOLD_CASES))
def test_fold_matches_onnxruntime(case):
    op, inputs, attrs = FOLD_CASES[case]
    model = _fold_case(op, inputs, **attrs)
    want = run_ort(model, {})[0]
    graph, notes = fold.fold_constants(onnx_reader.load(model.SerializeToString()))
    assert not graph.nodes, graph.nodes
    got = graph.constants["out"]
    assert got.dtype == want.dtype and got.shape == want.shape, (got, want)
    np.testing.assert_array_equal(got, want)
    assert any(f"folded {op} 'n'" in n for n in notes), notes
    assert not got.flags.writeable


def test_fold_chain_drops_dead_constants_and_runs(rng):
    """The constant subgraph of a normalization written out by hand: Constant, Cast,
    Reshape, Sub, Sqrt, Reciprocal, Mul, then the per-channel Mul / Add into the conv."""
    c = 4
    mean = np.array([0.1, -0.2, 0.3, 0.0], F)
    var = np.array([1.0, 0.5, 2.0, 0.25], F)
    inits = {"mean": mean, "var": var, "eps": np.array(1e-5, F),
             "shape": np.array([1, -1, 1, 1], I64), "W": rnd(rng, 6, c, 1, 1),
             "B": rnd(rng, 6), "unused": np.ones(3, F)}
    nodes = [
        helper.make_node("Constant", [], ["two"], name="const_two",
                         value=numpy_helper.from_array(np.array(2, I64))),
        helper.make_node("Cast", ["two"], ["two_f"], name="cast_two", to=TensorProto.FLOAT),
        helper.make_node("Add", ["var", "eps"], ["ve"], name="var_eps"),
        helper.make_node("Sqrt", ["ve"], ["std"], name="sqrt"),
        helper.make_node("Reciprocal", ["std"], ["inv"], name="recip"),
        helper.make_node("Mul", ["inv", "two_f"], ["inv2"], name="times_two"),
        helper.make_node("Reshape", ["inv2", "shape"], ["inv4"], name="reshape_inv"),
        helper.make_node("Neg", ["mean"], ["nm"], name="neg_mean"),
        helper.make_node("Reshape", ["nm", "shape"], ["nm4"], name="reshape_mean"),
        helper.make_node("Add", ["x", "nm4"], ["centred"], name="center"),
        helper.make_node("Mul", ["centred", "inv4"], ["normed"], name="scale"),
        conv_node("normed", "W", "B", "y", name="conv"),
    ]
    model = make_model(nodes, [("x", [2, c, 3, 5])], [("y", [2, 6, 3, 5])], inits)
    x = rnd(rng, 2, c, 3, 5)
    sess = InferenceSession(model, threads=THREADS)
    assert compare_outputs(sess.run(None, {"x": x}), run_ort(model, {"x": x})).ok
    graph, notes = fold.fold_constants(onnx_reader.load(model.SerializeToString()))
    assert [n.op_type for n in graph.nodes] == ["Add", "Mul", "Conv"]
    assert "unused" not in graph.constants and "var" not in graph.constants
    assert set(graph.constants) == {"nm4", "inv4", "W", "B"}
    assert any("dropped" in n and "constant" in n for n in notes)
    program = sess.program
    assert len(program.steps) == 1 and len(list(program.layers())) == 1
    assert any("folded Sqrt 'sqrt'" in n for n in program.notes)
    assert any("before it" in n for n in program.notes), program.notes


def test_info_lists_folded_nodes(rng, tmp_path):
    from conftest import NEUTRAL_CWD  # noqa: F401
    import subprocess
    import sys
    inits = {"W": rnd(rng, 3, 2, 1, 1), "k": np.array([255], F)}
    nodes = [helper.make_node("Reciprocal", ["k"], ["rk"], name="inv255"),
             helper.make_node("Mul", ["x", "rk"], ["xs"], name="scale"),
             conv_node("xs", "W", None, "y", name="conv")]
    path = tmp_path / "m.onnx"
    onnx.save(make_model(nodes, [("x", [1, 2, 3, 3])], [("y", [1, 3, 3, 3])], inits),
              str(path))
    proc = subprocess.run([sys.executable, "-m", "pyconv1x1", "info", str(path)],
                          capture_output=True, text=True, cwd=str(tmp_path),
                          env=dict(os.environ, PYTHONPATH=os.path.dirname(
                              os.path.dirname(pyconv1x1.__file__))))
    assert proc.returncode == 0, proc.stderr
    assert "folded Reciprocal 'inv255'" in proc.stdout
    assert "folded scale into the weights of conv conv" in proc.stdout


@pytest.mark.parametrize("case, want", [
    ("shape_op", r"Shape 'shape'.*op Shape is not supported"),
    ("sqrt_runtime", r"Sqrt 'n': input 'x' is computed at run time; Sqrt runs only on "
                     r"constants"),
    ("int_div_zero", r"Div 'n': its constant inputs are not folded: integer division by "
                     r"zero"),
    ("cast_runtime_int", r"Cast 'n': casts a run-time tensor to INT64"),
    ("cast_const_nan_to_int", r"Cast 'n'.*outside int64's range"),
    ("div_const_by_x", r"Div 'n': divides constant 'c' by run-time tensor 'x'"),
    ("sub_two_tensors", r"Sub 'n': difference of two run-time tensors"),
    ("mul_hw_constant", r"Mul 'n': constant of shape \[1, 1, 3, 5\] varies along more "
                        r"than the channel axis"),
    ("add_batch_constant", r"Add 'n': constant of shape \[2, 4, 1, 1\] varies along"),
    ("dequantize_runtime", r"DequantizeLinear 'n': input 'x' is computed at run time"),
    ("dequantize_blocked", r"DequantizeLinear 'n'.*block_size"),
    ("div_tiny", r"Div 'n': divisor 1e-39 has no normal float32 reciprocal"),
])
def test_refusals_name_the_node(rng, case, want):
    x = ("x", [2, 4, 3, 5])
    inputs, inits, opset = [x], {}, 17
    if case == "shape_op":
        inits = {"s": np.array([1, 4, 1, 1], F)}
        nodes = [helper.make_node("Shape", ["x"], ["sh"], name="shape"),
                 helper.make_node("Reshape", ["s", "sh"], ["s4"], name="n"),
                 helper.make_node("Mul", ["x", "s4"], ["y"], name="m")]
    elif case == "sqrt_runtime":
        nodes = [helper.make_node("Sqrt", ["x"], ["y"], name="n")]
    elif case == "int_div_zero":
        inits = {"a": np.array([4], I64), "b": np.array([0], I64)}
        nodes = [helper.make_node("Div", ["a", "b"], ["q"], name="n"),
                 helper.make_node("Cast", ["q"], ["qf"], name="c", to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["x", "qf"], ["y"], name="m")]
    elif case == "cast_runtime_int":
        nodes = [helper.make_node("Cast", ["x"], ["y"], name="n", to=TensorProto.INT64)]
    elif case == "cast_const_nan_to_int":
        inits = {"a": np.array([np.nan], F)}
        nodes = [helper.make_node("Cast", ["a"], ["ai"], name="n", to=TensorProto.INT64),
                 helper.make_node("Cast", ["ai"], ["af"], name="c", to=TensorProto.FLOAT),
                 helper.make_node("Mul", ["x", "af"], ["y"], name="m")]
    elif case == "div_const_by_x":
        inits = {"c": np.array(1, F)}
        nodes = [helper.make_node("Div", ["c", "x"], ["y"], name="n")]
    elif case == "sub_two_tensors":
        inputs = [x, ("z", [2, 4, 3, 5])]
        nodes = [helper.make_node("Sub", ["x", "z"], ["y"], name="n")]
    elif case == "mul_hw_constant":
        inits = {"k": rnd(rng, 1, 1, 3, 5)}
        nodes = [helper.make_node("Mul", ["x", "k"], ["y"], name="n")]
    elif case == "add_batch_constant":
        inits = {"k": rnd(rng, 2, 4, 1, 1)}
        nodes = [helper.make_node("Add", ["x", "k"], ["y"], name="n")]
    elif case == "dequantize_runtime":  # (an int8 input now runs: quantized models)
        inits = {"s": np.array(0.5, F)}
        inputs = [("x", [2, 4, 3, 5], TensorProto.INT32)]
        nodes = [helper.make_node("DequantizeLinear", ["x", "s"], ["y"], name="n")]
    elif case == "dequantize_blocked":
        opset = 21
        inits = {"q": np.ones((4, 4), np.int8), "s": np.ones((4, 2), F),
                 "W": rnd(rng, 4, 4, 1, 1)}
        nodes = [helper.make_node("DequantizeLinear", ["q", "s"], ["w2"], name="n", axis=1,
                                  block_size=2),
                 helper.make_node("Mul", ["x", "w2"], ["y"], name="m")]
    else:
        inits = {"c": np.array(1e-39, F)}
        nodes = [helper.make_node("Div", ["x", "c"], ["y"], name="n")]
    model = make_model(nodes, inputs, [("y", None)], inits, opset=opset, check=False)
    with pytest.raises(UnsupportedError, match=want):
        InferenceSession(model)


# --------------------------------------------------------------------------------------
# normalization and affine maps, hand-built: Sub/Div/Neg forms, pads, groups
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["x_div_255", "x_minus_c", "c_minus_x", "neg_x",
                                  "mean_std", "post_conv_div_sub", "div_zero_and_inf"])
@pytest.mark.parametrize("pads, group", [((0, 0, 0, 0), 1), ((1, 0, 2, 1), 1),
                                         ((0, 0, 0, 0), 2), ((1, 1, 1, 1), 2)])
def test_affine_forms_match_onnxruntime(rng, form, pads, group):
    c, cout = 4, 6
    inits = {"W": rnd(rng, cout, c // group, 1, 1), "B": rnd(rng, cout),
             "k255": np.array(255, F), "mean": rnd(rng, 1, c, 1, 1),
             "std": (np.abs(rnd(rng, c, 1, 1)) + 0.2).astype(F), "half": np.array(0.5, F),
             "two": np.array([2], F), "odd": np.array([0, np.inf, 3, -0.0], F)
             .reshape(c, 1, 1)}
    conv = conv_node("a", "W", "B", "y", name="conv", pads=list(pads), group=group)
    if form == "x_div_255":
        pre = [helper.make_node("Div", ["x", "k255"], ["a"], name="div")]
    elif form == "x_minus_c":
        pre = [helper.make_node("Sub", ["x", "mean"], ["a"], name="sub")]
    elif form == "c_minus_x":
        pre = [helper.make_node("Sub", ["mean", "x"], ["a"], name="rsub")]
    elif form == "neg_x":
        pre = [helper.make_node("Neg", ["x"], ["a"], name="neg")]
    elif form == "mean_std":
        pre = [helper.make_node("Div", ["x", "k255"], ["x1"], name="div"),
               helper.make_node("Sub", ["x1", "mean"], ["x2"], name="sub"),
               helper.make_node("Div", ["x2", "std"], ["a"], name="div_std")]
    elif form == "div_zero_and_inf":
        pre = [helper.make_node("Div", ["x", "odd"], ["a"], name="div_odd")]
    else:
        pre = [helper.make_node("Identity", ["x"], ["a"], name="id")]
        conv = conv_node("a", "W", "B", "c1", name="conv", pads=list(pads), group=group)
        pre.append(conv)
        conv = helper.make_node("Div", ["c1", "two"], ["c2"], name="post_div")
        pre.append(conv)
        conv = helper.make_node("Sub", ["c2", "half"], ["y"], name="post_sub")
    model = make_model(pre + [conv], [("x", [2, c, 3, 5])], [("y", None)], inits,
                       check=False)
    x = (rng.random((2, c, 3, 5)) * 255).astype(F)
    if form == "div_zero_and_inf":
        x[0, 0, 0, :2] = 0
    sess = InferenceSession(model, threads=THREADS)
    got, want = sess.run(None, {"x": x}), run_ort(model, {"x": x})
    report = compare_outputs(got, want, rtol=1e-5)
    assert report.ok, report.format()
    notes = " | ".join(sess.program.notes)
    if form in ("x_div_255", "neg_x"):  # a scale alone folds even before padding
        assert len(sess.program.steps) == 1, notes
        assert "before it" in notes
    if form in ("x_minus_c", "c_minus_x", "mean_std"):
        folded = not any(pads)
        assert ("before it" in notes) == folded, notes
        assert (len(sess.program.steps) == 1) == folded, notes
    if form == "post_conv_div_sub":
        assert len(sess.program.steps) == 1 and "folded post_div" in notes, notes


def test_torch_reference_runs_sub_div_neg(rng):
    """`validate --against torch` rebuilds these ops with torch: an independent check."""
    from pyconv1x1.testing import run_torch_reference
    inits = {"W": rnd(rng, 6, 4, 1, 1), "k": np.array(255, F), "m": rnd(rng, 1, 4, 1, 1),
             "s": np.array([0.2, 0.3, 0.4, 0.5], F).reshape(4, 1, 1)}
    nodes = [helper.make_node("Div", ["x", "k"], ["a"], name="div"),
             helper.make_node("Sub", ["a", "m"], ["b"], name="sub"),
             helper.make_node("Neg", ["b"], ["c"], name="neg"),
             helper.make_node("Div", ["c", "s"], ["d"], name="div_std"),
             conv_node("d", "W", None, "y", name="conv", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [("x", [2, 4, 3, 5])], [("y", [2, 6, 5, 7])], inits)
    x = (rng.random((2, 4, 3, 5)) * 255).astype(F)
    ref = run_torch_reference(model, {"x": x})["y"]
    assert compare_outputs([ref], run_ort(model, {"x": x}), rtol=1e-6).ok
    got = InferenceSession(model, threads=THREADS).run(None, {"x": x})
    assert compare_outputs(got, [ref], rtol=1e-5).ok


# --------------------------------------------------------------------------------------
# weight-only quantization
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["int8_per_channel", "uint8_per_tensor",
                                  "int8_no_zero_point", "with_int32_bias"])
def test_weight_only_quantized_conv_matches_onnxruntime(rng, kind):
    cout, c = 8, 5
    w = rnd(rng, cout, c, 1, 1)
    if kind == "uint8_per_tensor":
        scale = np.array(np.abs(w).max() / 127, F)
        zero = np.array(128, np.uint8)
        q = np.clip(np.round(w / scale) + 128, 0, 255).astype(np.uint8)
        deq = helper.make_node("DequantizeLinear", ["Wq", "Ws", "Wz"], ["W"], name="deq")
    else:
        scale = (np.abs(w).reshape(cout, -1).max(axis=1) / 120).astype(F)
        zero = rng.integers(-5, 5, cout).astype(np.int8)
        q = np.clip(np.round(w / scale[:, None, None, None]) + zero[:, None, None, None],
                    -128, 127).astype(np.int8)
        ins = ["Wq", "Ws"] if kind == "int8_no_zero_point" else ["Wq", "Ws", "Wz"]
        deq = helper.make_node("DequantizeLinear", ins, ["W"], name="deq", axis=0)
    inits = {"Wq": q, "Ws": scale, "Wz": zero}
    nodes = [deq]
    bias = None
    if kind == "with_int32_bias":
        inits.update(Bq=rng.integers(-5000, 5000, cout).astype(np.int32),
                     Bs=np.array(1e-3, F))
        nodes.append(helper.make_node("DequantizeLinear", ["Bq", "Bs"], ["B"], name="deqb"))
        bias = "B"
    nodes += [conv_node("x", "W", bias, "c", name="conv"),
              helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, [("x", [2, c, 4, 3])], [("y", [2, cout, 4, 3])], inits,
                       opset=13)
    x = rnd(rng, 2, c, 4, 3)
    sess = InferenceSession(model, threads=THREADS)
    report = compare_outputs(sess.run(None, {"x": x}), run_ort(model, {"x": x}))
    assert report.ok, report.format()
    assert sess.program.steps[0].layers[0].weight.dtype == F
    assert any("folded DequantizeLinear 'deq'" in n for n in sess.program.notes)


# --------------------------------------------------------------------------------------
# float16 models built by hand: declared types, feeds, Cast at the edges, plans
# --------------------------------------------------------------------------------------
def _half_model(rng, edges):
    """Conv -> Relu -> Conv with float16 weights. edges 'float16': float16 input and
    output; 'cast': float32 input and output with Cast nodes at the edges."""
    H = np.float16
    inits = {"W1": rnd(rng, 6, 4, 1, 1).astype(H), "B1": rnd(rng, 6).astype(H),
             "W2": rnd(rng, 3, 6, 1, 1).astype(H), "B2": rnd(rng, 3).astype(H)}
    body = [conv_node("h", "W1", "B1", "c1", name="conv1"),
            helper.make_node("Relu", ["c1"], ["r1"], name="relu"),
            conv_node("r1", "W2", "B2", "o", name="conv2")]
    if edges == "float16":
        body = [helper.make_node("Identity", ["x"], ["h"], name="id")] + body
        body.append(helper.make_node("Identity", ["o"], ["y"], name="id_out"))
        elem = TensorProto.FLOAT16
    else:
        body = [helper.make_node("Cast", ["x"], ["h"], name="to_half",
                                 to=TensorProto.FLOAT16)] + body
        body.append(helper.make_node("Cast", ["o"], ["y"], name="to_float",
                                     to=TensorProto.FLOAT))
        elem = TensorProto.FLOAT
    return make_model(body, [("x", [2, 4, 3, "w"], elem)], [("y", None, elem)], inits,
                      check=False)


def _float32_reference(model, x):
    """The model's float16 weights in float32, run by onnxruntime in float32."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for t in m.graph.initializer:
        if t.data_type == TensorProto.FLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(F), t.name))
    for v in list(m.graph.input) + list(m.graph.output):
        v.type.tensor_type.elem_type = TensorProto.FLOAT
    for n in m.graph.node:
        if n.op_type == "Cast":
            n.op_type = "Identity"
            del n.attribute[:]
    return run_ort(m, {"x": x.astype(F)})[0]


@pytest.mark.parametrize("edges", ["float16", "cast"])
def test_float16_model_types_and_values(rng, edges, tmp_path):
    model = _half_model(rng, edges)
    dtype = np.float16 if edges == "float16" else F
    sess = InferenceSession(model, threads=THREADS)
    typ = "tensor(float16)" if edges == "float16" else "tensor(float)"
    assert [a.type for a in sess.get_inputs()] == [typ]
    assert [a.type for a in sess.get_outputs()] == [typ]
    x = rnd(rng, 2, 4, 3, 5).astype(dtype)
    for _ in range(3):  # (repeated: a fast path must not skip the conversions)
        got = sess.run(None, {"x": x})[0]
        assert got.dtype == dtype
    # float32 accumulation: equal to float32 arithmetic on the float16 weights,
    # rounded to float16 once at the output
    ref = _float32_reference(model, x)
    assert compare_outputs([got], [ref.astype(dtype)], rtol=1e-3).ok
    # onnxruntime rounds every intermediate to float16: a float16 tolerance
    report = compare_outputs([got], run_ort(model, {"x": x}), rtol=1e-2)
    assert report.ok, report.format()
    # what onnxruntime refuses, we refuse: a feed of the other float type
    other = x.astype(F if edges == "float16" else np.float16)
    with pytest.raises(InputError, match=rf"'x' has dtype {other.dtype.name}; expected "
                                         rf"{np.dtype(dtype).name}"):
        sess.run(None, {"x": other})
    # a compiled plan keeps the declared types
    from pyconv1x1 import planfile
    planfile.compile_model(model, str(tmp_path / "m.pc1"))
    again = InferenceSession(str(tmp_path / "m.pc1"))
    assert [a.type for a in again.get_inputs()] == [typ]
    np.testing.assert_array_equal(again.run(None, {"x": x})[0], got)
    if edges == "float16":
        with pytest.raises(InputError, match="'y' must be a writable C-contiguous float16"):
            sess.run_into({"x": x}, {"y": np.empty_like(got, F)})
        buf = np.full_like(got, np.nan)
        assert sess.run_into({"x": x}, {"y": buf})["y"] is buf
        np.testing.assert_array_equal(buf, got)
    # io_binding with a bound output buffer, the same code against both runtimes
    import onnxruntime
    for s in (sess, onnxruntime.InferenceSession(model.SerializeToString(),
                                                 providers=["CPUExecutionProvider"])):
        out = np.full_like(got, np.nan)
        binding = s.io_binding()
        binding.bind_cpu_input("x", x)
        binding.bind_output("y", "cpu", 0, dtype, list(out.shape), out.ctypes.data)
        s.run_with_iobinding(binding)
        assert compare_outputs([out], [ref.astype(dtype)], rtol=1e-2).ok, type(s)
        assert binding.copy_outputs_to_cpu()[0].dtype == dtype
        binding.bind_output("y")  # a new array per run
        s.run_with_iobinding(binding)
        assert binding.copy_outputs_to_cpu()[0].dtype == dtype


# --------------------------------------------------------------------------------------
# exported from PyTorch with both exporters
# --------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
nn = torch.nn

try:
    import onnxscript  # noqa: F401
    HAVE_ONNXSCRIPT = True
except ImportError:  # pragma: no cover - CI installs it
    HAVE_ONNXSCRIPT = False

EXPORTERS = [
    pytest.param("torchscript", id="torchscript"),
    pytest.param("dynamo", id="dynamo", marks=pytest.mark.skipif(
        not HAVE_ONNXSCRIPT, reason="the dynamo exporter needs onnxscript")),
]


class Normalize(nn.Module):
    """x / 255, (x - mean) / std, then a conv: an image model's input normalization."""

    def __init__(self, padding=0, groups=1, post=False):
        super().__init__()
        self.conv = nn.Conv2d(3 * groups, 8, 1, padding=padding, groups=groups)
        c = 3 * groups
        self.register_buffer("mean", torch.linspace(0.4, 0.5, c).view(1, c, 1, 1))
        self.register_buffer("std", torch.linspace(0.22, 0.23, c).view(1, c, 1, 1))
        self.post = post

    def forward(self, x):
        y = self.conv((x / 255 - self.mean) / self.std)
        if self.post:
            y = (1.0 - torch.relu(y) / 6) * 2
        return y


class Centre(nn.Module):
    """x - c and -x around convs, a per-channel Sub in the middle of a chain"""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(5, 7, 1)
        self.c2 = nn.Conv2d(7, 4, 1)
        self.register_buffer("shift", torch.linspace(-1, 1, 7).view(1, 7, 1, 1))

    def forward(self, x):
        y = torch.relu(self.c1(-(x - 0.5)))
        return self.c2(y - self.shift)


class PixelMask(nn.Module):
    """a constant varying over H and W: not per channel, so refused"""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.register_buffer("mask", torch.linspace(0, 1, 20).view(1, 1, 4, 5))

    def forward(self, x):
        return self.conv(x * self.mask)


class HalfEdges(nn.Module):
    """a float16 network inside float32 edges: Cast at both ends"""

    def __init__(self):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(), nn.Conv2d(8, 3, 1)).half()

    def forward(self, x):
        return self.net(x.half()).float()


def _randomize_bn(bn):
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(bn.num_features, generator=g) * 0.3)
        bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return bn


def _session_matches(path, x, references, rtol):
    """(session, outputs) of the exported model at `path` fed x; asserts the outputs
    match onnxruntime's and each reference: a list of outputs (compared at rtol) or
    (outputs, its own rtol)."""
    import onnxruntime as ort
    sess = InferenceSession(path, threads=THREADS)
    feed = {sess.get_inputs()[0].name: x.numpy()}
    got = sess.run(None, feed)
    for ref in list(references) + [(ort.InferenceSession(path).run(None, feed), rtol)]:
        ref, tol = ref if isinstance(ref, tuple) else (ref, rtol)
        report = compare_outputs(got, ref, rtol=tol)
        assert report.ok, report.format()
    return sess, got


def _seeded(factory, seed):
    torch.manual_seed(seed)
    return factory().eval()


def _export(module, x, path, exporter):
    from pyconv1x1.testing.torch_export import ExportFailed, _export as export
    try:
        export(torch, module, (x,), str(path), exporter, ["x"], ["y"], None, None, None)
    except ExportFailed as exc:
        pytest.xfail(str(exc))
    return str(path)


NORM_CASES = {
    "div255_mean_std": (lambda: Normalize(), (2, 3, 5, 6)),
    "div255_mean_std_padded": (lambda: Normalize(padding=1), (2, 3, 5, 6)),
    "mean_std_grouped": (lambda: Normalize(groups=2), (2, 6, 4, 3)),
    "post_affine": (lambda: Normalize(post=True), (2, 3, 5, 6)),
    "centre_and_negate": (Centre, (2, 5, 3, 4)),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(NORM_CASES))
def test_normalization_matches_torch_and_onnxruntime(name, exporter, tmp_path):
    factory, shape = NORM_CASES[name]
    module = _seeded(factory, 7)
    x = (torch.rand(*shape) * 255) if "div255" in name or "mean_std" in name \
        or "post" in name else torch.randn(*shape)
    path = _export(module, x, tmp_path / "m.onnx", exporter)
    with torch.no_grad():
        ref = module(x).numpy()
    sess, _ = _session_matches(path, x, [[ref]], rtol=1e-5)
    convs = sum(1 for _ in sess.program.layers())
    if name in ("div255_mean_std", "mean_std_grouped"):
        assert len(sess.program.steps) == 1, sess.program.notes  # all in the conv
    if name == "post_affine":  # (an affine after the Relu runs as its own step)
        assert len(sess.program.steps) == 2, sess.program.notes
    if name == "div255_mean_std_padded":
        assert len(sess.program.steps) == 2 and convs == 1, sess.program.notes


@pytest.mark.parametrize("exporter", EXPORTERS)
def test_pixel_varying_constant_is_refused(exporter, tmp_path):
    path = _export(PixelMask().eval(), torch.rand(1, 3, 4, 5), tmp_path / "m.onnx",
                   exporter)
    with pytest.raises(UnsupportedError, match=r"Mul '[^']+': constant of shape "
                                               r"\[1, 1, 4, 5\] varies along more than "
                                               r"the channel axis"):
        InferenceSession(path)


HALF_CASES = {
    "half_chain": (lambda: nn.Sequential(nn.Conv2d(4, 8, 1), nn.ReLU(),
                                         nn.Conv2d(8, 3, 1)).half(), np.float16),
    "half_bn_relu6": (lambda: nn.Sequential(nn.Conv2d(4, 8, 1, stride=2),
                                            _randomize_bn(nn.BatchNorm2d(8)), nn.ReLU6(),
                                            nn.Conv2d(8, 3, 1, padding=1)).half(),
                      np.float16),
    "cast_edges": (HalfEdges, np.float32),
}


@pytest.mark.parametrize("exporter", EXPORTERS)
@pytest.mark.parametrize("name", list(HALF_CASES))
def test_half_models_match_torch_and_onnxruntime(name, exporter, tmp_path):
    import copy
    factory, dtype = HALF_CASES[name]
    module = _seeded(factory, 11)
    x = torch.randn(2, 4, 5, 6).to(torch.float16 if dtype == np.float16 else torch.float32)
    path = _export(module, x, tmp_path / "m.onnx", exporter)
    # PyTorch in float32 with the same float16 weights: float32 accumulation, as here
    ref32 = copy.deepcopy(module).float()
    if isinstance(ref32, HalfEdges):
        ref32.forward = lambda t: ref32.net(t)
    with torch.no_grad():
        ref = ref32(x.float()).numpy().astype(dtype)
        half = module(x).float().numpy()
    # PyTorch's and onnxruntime's float16 ops round each intermediate to float16
    sess, got = _session_matches(path, x, [([ref], 1e-3), [half]], rtol=1e-2)
    want_type = "tensor(float16)" if dtype == np.float16 else "tensor(float)"
    assert sess.get_inputs()[0].type == want_type == sess.get_outputs()[0].type
    assert got[0].dtype == dtype
    feed = {sess.get_inputs()[0].name: x.numpy()}
    with pytest.raises(InputError, match=re.escape(want_type)):
        sess.run(None, {k: v.astype(np.float64) for k, v in feed.items()})
