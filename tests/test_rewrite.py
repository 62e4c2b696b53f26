"""The rewrite passes one by one: each applies where it should (Program.notes say what
it did, the steps show it) and declines where it must not, saying why in
Program.declined. Small graphs built with onnx.helper; the numbers they compute are
checked in test_ops.py, the structure here."""
import numpy as np
import pytest
from onnx import helper

from conftest import conv_node, make_model, rnd
from pyconv1x1 import InferenceSession, UnsupportedError
from pyconv1x1.errors import Problem
from pyconv1x1.pipeline import program_from_model

C = 4


def _conv(x, y, name, cin=C, cout=C, **attrs):
    """A conv node and its initializers (weights named after the node)."""
    rng = np.random.default_rng(len(name))
    inits = {f"{name}_w": rnd(rng, cout, cin, 1, 1), f"{name}_b": rnd(rng, cout)}
    return conv_node(x, f"{name}_w", f"{name}_b", y, name=name, **attrs), inits


def _program(nodes_inits, outputs=("y",), x_shape=(1, C, 5, 5)):
    nodes, inits = [], {}
    for node, init in nodes_inits:
        nodes.append(node)
        inits.update(init)
    model = make_model(nodes, [("x", list(x_shape))],
                       [(o, [None] * 4) for o in outputs], inits)
    return model, program_from_model(model)


def _node(op, ins, out, name, **attrs):
    return helper.make_node(op, ins, [out], name=name, **attrs), {}


def _bn(x, y, name):
    rng = np.random.default_rng(7)
    inits = {f"{name}_s": rnd(rng, C), f"{name}_b": rnd(rng, C), f"{name}_m": rnd(rng, C),
             f"{name}_v": np.abs(rnd(rng, C)) + 0.5}
    node = helper.make_node("BatchNormalization", [x] + list(inits), [y], name=name)
    return node, inits


def _const_mul(x, y, name, values):
    return (helper.make_node("Mul", [x, f"{name}_k"], [y], name=name),
            {f"{name}_k": np.asarray(values, np.float32)})


def _runs_like_onnxruntime(model):
    from conftest import assert_close, run_ort
    x = rnd(np.random.default_rng(0), 1, C, 5, 5)
    got = InferenceSession(model, threads=1).run(None, {"x": x})
    for g, r in zip(got, run_ort(model, {"x": x})):
        assert_close(g, r)


def _one_declined(program, *words):
    hits = [d for d in program.declined if all(w in d for w in words)]
    assert hits, f"no declined entry with {words}: {program.declined}"
    return hits[0]


# -- 1. drop copies ----------------------------------------------------------------------
def test_identity_between_steps_is_dropped():
    model, p = _program([_conv("x", "t", "c"), _node("Identity", ["t"], "y", "id")])
    assert [s.kind for s in p.steps] == ["chain"] and p.steps[0].output == "y"
    assert any("dropped id" in n for n in p.notes)
    assert p.declined == []


def test_identity_of_a_graph_input_stays_a_copy_and_says_why():
    model, p = _program([_node("Identity", ["x"], "y", "id"), _conv("x", "z", "c")],
                        outputs=("y", "z"))
    assert sorted(s.kind for s in p.steps) == ["chain", "copy"]
    text = _one_declined(p, "id (identity) kept as a copy")
    assert "'x' is a graph input" in text
    _runs_like_onnxruntime(model)


# -- 2. fold BatchNorm / Mul / Add by constants into the conv -------------------------
def test_batchnorm_folds_into_the_conv():
    model, p = _program([_conv("x", "t", "c"), _bn("t", "y", "bn")])
    assert len(p.steps) == 1 and p.steps[0].layers[0].names == ["c", "bn"]
    assert "folded bn into conv c" in p.notes
    _runs_like_onnxruntime(model)


def test_batchnorm_after_an_activation_is_not_folded():
    model, p = _program([_conv("x", "t", "c"), _node("Relu", ["t"], "r", "relu"),
                         _bn("r", "y", "bn")])
    assert [s.kind for s in p.steps] == ["chain", "affine"]
    text = _one_declined(p, "affine bn", "not fused")
    assert "conv c already applies relu" in text
    _runs_like_onnxruntime(model)


def test_mul_by_a_constant_folds_and_a_shared_output_declines():
    model, p = _program([_conv("x", "t", "c"),
                         _const_mul("t", "y", "mul", np.full((C, 1, 1), 2.0))])
    assert len(p.steps) == 1 and "folded mul into conv c" in p.notes
    model, p = _program([_conv("x", "t", "c"),
                         _const_mul("t", "y", "mul", np.full((C, 1, 1), 2.0)),
                         _node("Relu", ["t"], "z", "relu")], outputs=("y", "z"))
    assert len(p.steps) == 3
    _one_declined(p, "affine mul", "not fused", "'t' is also read by relu")
    _runs_like_onnxruntime(model)


# -- 3. fuse activations and residual Adds ------------------------------------------
def test_relu_fuses_into_the_conv():
    model, p = _program([_conv("x", "t", "c"), _node("Relu", ["t"], "y", "relu")])
    assert len(p.steps) == 1 and p.steps[0].layers[0].act.kind == "relu"
    assert "fused relu (relu) into conv c" in p.notes


def test_relu_after_a_conv_whose_output_is_a_graph_output_is_not_fused():
    model, p = _program([_conv("x", "t", "c"), _node("Relu", ["t"], "y", "relu")],
                        outputs=("t", "y"))
    assert [s.kind for s in p.steps] == ["chain", "affine"]
    _one_declined(p, "affine relu (relu) not fused", "'t' is a graph output")
    _runs_like_onnxruntime(model)


def test_relu_after_leaky_relu_is_not_fused_and_says_why():
    model, p = _program([_conv("x", "t", "c"),
                         _node("LeakyRelu", ["t"], "l", "leaky", alpha=0.1),
                         _node("Relu", ["l"], "y", "relu")])
    assert [s.kind for s in p.steps] == ["chain", "affine"]
    assert p.steps[0].layers[0].act.kind == "leaky"
    _one_declined(p, "affine relu", "relu after leaky(0.1)", "leaky slope")
    _runs_like_onnxruntime(model)


def test_residual_add_fuses_and_a_second_one_declines():
    model, p = _program([_conv("x", "t", "c"), _node("Add", ["t", "x"], "y", "add")])
    assert len(p.steps) == 1 and p.steps[0].layers[0].residual == "x"
    assert "fused residual add into conv c" in p.notes
    model, p = _program([_conv("x", "t", "c"), _node("Add", ["t", "x"], "a", "add1"),
                         _node("Add", ["a", "x"], "y", "add2")])
    assert [s.kind for s in p.steps] == ["chain", "add"]
    text = _one_declined(p, "add add2", "not fused")
    assert "conv c already adds residual 'x'" in text and "'x' is a graph input" in text
    _runs_like_onnxruntime(model)


# -- 4. chain convs ----------------------------------------------------------------------
def test_consecutive_convs_chain():
    model, p = _program([_conv("x", "t", "c1"), _conv("t", "y", "c2")])
    assert len(p.steps) == 1 and len(p.steps[0].layers) == 2
    assert "chained c2 after c1" in p.notes and p.declined == []


def test_a_strided_conv_is_not_chained():
    model, p = _program([_conv("x", "t", "c1"), _conv("t", "y", "c2", strides=[2, 2])])
    assert len(p.steps) == 2
    _one_declined(p, "conv c2 not chained after conv c1", "strides or pads")
    _runs_like_onnxruntime(model)


def test_a_conv_whose_output_two_convs_read_is_not_chained():
    model, p = _program([_conv("x", "t", "c1"), _conv("t", "y", "c2"),
                         _conv("t", "z", "c3")], outputs=("y", "z"))
    assert len(p.steps) == 3
    _one_declined(p, "conv c2 not chained after conv c1", "'t' is also read by c3")
    _one_declined(p, "conv c3 not chained after conv c1", "'t' is also read by c2")
    _runs_like_onnxruntime(model)


def test_declined_is_empty_where_everything_fuses():
    model, p = _program([_conv("x", "t", "c1"), _bn("t", "b", "bn"),
                         _node("Relu", ["b"], "r", "relu"), _conv("r", "y", "c2")])
    assert len(p.steps) == 1 and p.declined == []
    assert p.with_steps(p.steps).declined == []


# -- check stage: unsupported nodes as data -----------------------------------------------
def test_unsupported_nodes_are_reported_as_records():
    nodes = [helper.make_node("Sin", ["x"], ["s"], name="sine"),
             helper.make_node("Cos", ["s"], ["y"], name="cosine")]
    model = make_model(nodes, [("x", [1, C, 2, 2])], [("y", [None] * 4)])
    with pytest.raises(UnsupportedError) as info:
        InferenceSession(model)
    problems = info.value.problems
    assert [(p.op, p.node) for p in problems] == [("Sin", "sine"), ("Cos", "cosine")]
    assert all(isinstance(p, Problem) and "is not supported" in p.reason
               for p in problems)
    assert str(info.value).splitlines()[1:] == [f"  {p}" for p in problems]


def test_the_info_report_gets_the_same_records():
    from pyconv1x1 import check, onnx_reader
    nodes = [_conv("x", "t", "c")[0], helper.make_node("Sin", ["t"], ["y"], name="sine")]
    model = make_model(nodes, [("x", [1, C, 2, 2])], [("y", [None] * 4)],
                       _conv("x", "t", "c")[1])
    problems, convs, ones = check.unsupported_problems(onnx_reader.load(model))
    assert problems == [Problem("Sin", "sine", problems[0].reason)] and (convs, ones) == (1, 1)
    lines, _, _ = check.unsupported_report(onnx_reader.load(model))
    assert lines == [f"Sin 'sine': {problems[0].reason}"]
