"""Each supported op and attribute combination, as a small ONNX model, against onnx's
ReferenceEvaluator and onnxruntime; graphs (branches, joins, several outputs), dynamic
dims, every opset, and the onnx package's own backend node tests."""
import importlib
import os
import re

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import (NEWEST_OPSET, assert_close, conv_node, make_model, run_ort,
                      run_reference, rnd)
from pyconv1x1 import InferenceSession, UnsupportedError

F = np.float32


# onnx < 1.23's ReferenceEvaluator gets a Conv with auto_pad and strides > 1 wrong (a
# wrong output shape, or "index can't contain negative values" from its im2col). The
# emulated aarch64 run (tools/aarch64.sh) has onnx 1.19, the newest whose aarch64 wheels
# run on Debian 12's numpy; there onnxruntime alone checks those convs.
OLD_ONNX_REFERENCE = tuple(int(p) for p in onnx.__version__.split(".")[:2]) < (1, 23)


def _reference_mishandles(model):
    for node in model.graph.node:
        if node.op_type != "Conv":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        pad = attrs.get("auto_pad", b"NOTSET")
        if pad not in (b"NOTSET", "NOTSET") and any(s > 1 for s in attrs.get("strides", [])):
            return True
    return False


def check(model, feeds, ort=True, ref=True, rtol=1e-5, threads=(1, 2)):
    """Run here at each thread count and compare with the references; returns ours."""
    if ref and OLD_ONNX_REFERENCE and _reference_mishandles(model):
        assert ort, "no reference left to check this model against"
        ref = False
    first = None
    for t in threads:
        sess = InferenceSession(model, threads=t)
        got = sess.run(None, feeds)
        assert [o.name for o in sess.get_outputs()] == [o.name for o in model.graph.output]
        for g in got:
            assert isinstance(g, np.ndarray) and g.dtype == np.float32
        if first is None:
            first = got
        else:
            for a, b in zip(first, got):
                assert np.array_equal(a, b), f"threads={t} differs from threads={threads[0]}"
    if ref:
        for g, r in zip(first, run_reference(model, feeds)):
            assert_close(g, r, rtol)
    if ort:
        for g, r in zip(first, run_ort(model, feeds)):
            assert_close(g, r, rtol)
    return first


def conv_model(rng, x_shape, cout, bias=True, opset=17, group=1, w_spatial=None,
               out_shape=None, **attrs):
    cin = x_shape[1]
    spatial = len(x_shape) - 2
    w_shape = (cout, cin // group) + (w_spatial or (1,) * spatial)
    inits = {"W": rnd(rng, *w_shape, scale=1 / np.sqrt(cin // group))}
    if bias:
        inits["B"] = rnd(rng, cout)
    if group != 1:
        attrs["group"] = group
    node = conv_node("x", "W", "B" if bias else None, "y", name="conv0", **attrs)
    out_shape = out_shape or [None] * len(x_shape)
    return make_model([node], [("x", list(x_shape))], [("y", out_shape)], inits,
                      opset=opset)


# ----------------------------------------------------------------------------------
# Conv
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel_shape", [None, [1, 1]])
def test_conv_basic(rng, bias, kernel_shape):
    attrs = {} if kernel_shape is None else {"kernel_shape": kernel_shape}
    model = conv_model(rng, (2, 7, 5, 9), 11, bias=bias, **attrs)
    check(model, {"x": rnd(rng, 2, 7, 5, 9)})


@pytest.mark.parametrize("attrs", [
    {"strides": [2, 2]}, {"strides": [1, 2]}, {"strides": [3, 3]},
    {"pads": [1, 1, 1, 1]}, {"pads": [0, 1, 2, 0]}, {"pads": [2, 0, 0, 3], "strides": [2, 2]},
    {"auto_pad": "NOTSET"}, {"auto_pad": "VALID"}, {"auto_pad": "VALID", "strides": [2, 3]},
    {"auto_pad": "SAME_UPPER"}, {"auto_pad": "SAME_UPPER", "strides": [2, 2]},
    {"auto_pad": "SAME_UPPER", "strides": [3, 2]},
    {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, {"auto_pad": "SAME_LOWER", "strides": [2, 3]},
    {"dilations": [2, 2]}, {"dilations": [3, 1], "strides": [2, 2]},
], ids=lambda a: "-".join(f"{k}{v}" for k, v in a.items()))
@pytest.mark.parametrize("hw", [(7, 9), (8, 5), (1, 1)])
def test_conv_geometry(rng, attrs, hw):
    model = conv_model(rng, (2, 5) + hw, 6, **attrs)
    check(model, {"x": rnd(rng, 2, 5, *hw)})


@pytest.mark.parametrize("cin,cout,group", [(8, 12, 2), (8, 8, 4), (6, 9, 3), (16, 16, 16)])
def test_conv_groups(rng, cin, cout, group):
    model = conv_model(rng, (2, cin, 6, 7), cout, group=group, strides=[2, 1])
    check(model, {"x": rnd(rng, 2, cin, 6, 7)})


@pytest.mark.parametrize("attrs", [{}, {"strides": [2]}, {"pads": [1, 2]},
                                   {"auto_pad": "SAME_UPPER", "strides": [3]},
                                   {"group": 2}])
def test_conv_1d(rng, attrs):
    group = attrs.pop("group", 1)
    model = conv_model(rng, (3, 6, 11), 4, group=group, **attrs)
    check(model, {"x": rnd(rng, 3, 6, 11)})


# ----------------------------------------------------------------------------------
# activations
# ----------------------------------------------------------------------------------
def unary_model(node, shape=(2, 3, 4, 5), opset=17, inits=None, pre=()):
    return make_model(list(pre) + [node], [("x", list(shape))], [("y", list(shape))],
                      inits, opset=opset)


@pytest.mark.parametrize("opset", [7, 14, NEWEST_OPSET])
def test_relu(rng, opset):
    model = unary_model(helper.make_node("Relu", ["x"], ["y"]), opset=opset)
    check(model, {"x": rnd(rng, 2, 3, 4, 5)})


@pytest.mark.parametrize("opset", [7, 16])
@pytest.mark.parametrize("alpha", [None, 0.2, 1.5])
def test_leaky_relu(rng, opset, alpha):
    kw = {} if alpha is None else {"alpha": alpha}
    model = unary_model(helper.make_node("LeakyRelu", ["x"], ["y"], **kw), opset=opset)
    check(model, {"x": rnd(rng, 2, 3, 4, 5)})


@pytest.mark.parametrize("opset", [7, 10])
@pytest.mark.parametrize("bounds", [{"min": -0.5, "max": 0.5}, {"min": 0.0, "max": 6.0},
                                    {"min": -0.3}, {"max": 0.2}, {}])
def test_clip_attributes(rng, opset, bounds):
    model = unary_model(helper.make_node("Clip", ["x"], ["y"], **bounds), opset=opset)
    check(model, {"x": rnd(rng, 2, 3, 4, 5)})


@pytest.mark.parametrize("opset", [11, 12, 13, NEWEST_OPSET])
@pytest.mark.parametrize("source", ["initializer", "constant_node"])
@pytest.mark.parametrize("bounds", [(-0.5, 0.5), (0.0, 6.0), (-0.3, None), (None, 0.2),
                                    (None, None), (0.4, -0.4)])
def test_clip_inputs(rng, opset, source, bounds):
    lo, hi = bounds
    names = ["x", "" if lo is None else "lo", "" if hi is None else "hi"]
    while names[-1] == "":
        names.pop()
    inits, pre = {}, []
    for name, v in (("lo", lo), ("hi", hi)):
        if v is None:
            continue
        if source == "initializer":
            inits[name] = np.array(v, F)
        else:
            pre.append(helper.make_node("Constant", [], [name], name=f"const_{name}",
                                        value=numpy_helper.from_array(np.array(v, F))))
    model = unary_model(helper.make_node("Clip", names, ["y"], name="clip"), opset=opset,
                        inits=inits, pre=pre)
    check(model, {"x": rnd(rng, 2, 3, 4, 5)})


def test_clip_min_from_a_run_time_tensor_is_refused(rng):
    model = make_model([helper.make_node("Clip", ["x", "m"], ["y"], name="clipper")],
                       [("x", [1, 2, 3, 3]), ("m", [])], [("y", [1, 2, 3, 3])], opset=13)
    with pytest.raises(UnsupportedError, match="clipper"):
        InferenceSession(model)


# ----------------------------------------------------------------------------------
# BatchNormalization
# ----------------------------------------------------------------------------------
def bn_inits(rng, c, prefix="bn"):
    return {f"{prefix}_s": rnd(rng, c), f"{prefix}_b": rnd(rng, c),
            f"{prefix}_m": rnd(rng, c), f"{prefix}_v": (np.abs(rnd(rng, c)) + 0.1).astype(F)}


def bn_node(x, y, prefix="bn", **attrs):
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{k}" for k in "sbmv"],
                            [y], name=prefix, **attrs)


@pytest.mark.parametrize("opset", [7, 9, 14, 15, NEWEST_OPSET])
@pytest.mark.parametrize("epsilon", [None, 1e-3])
def test_batchnorm_folded_after_conv(rng, opset, epsilon):
    kw = {} if epsilon is None else {"epsilon": epsilon}
    inits = {"W": rnd(rng, 6, 4, 1, 1), "B": rnd(rng, 6), **bn_inits(rng, 6)}
    nodes = [conv_node("x", "W", "B", "c"), bn_node("c", "y", **kw)]
    model = make_model(nodes, [("x", [2, 4, 5, 3])], [("y", [2, 6, 5, 3])], inits,
                       opset=opset)
    # onnx's ReferenceEvaluator runs BatchNormalization-9 in training mode
    check(model, {"x": rnd(rng, 2, 4, 5, 3)}, ref=opset >= 14)
    sess = InferenceSession(model)
    assert len(sess.program.steps) == 1          # folded into the conv


@pytest.mark.parametrize("opset", [7, 9, 15])
@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (2, 3, 7), (1, 3, 1, 1)])
def test_batchnorm_standalone(rng, opset, shape):
    model = unary_model(bn_node("x", "y"), shape=shape, opset=opset,
                        inits=bn_inits(rng, shape[1]))
    check(model, {"x": rnd(rng, *shape)}, ref=opset >= 14)


def test_batchnorm_after_relu_and_before_conv(rng):
    inits = {"W": rnd(rng, 5, 3, 1, 1), **bn_inits(rng, 3)}
    nodes = [helper.make_node("Relu", ["x"], ["r"]), bn_node("r", "b"),
             conv_node("b", "W", None, "y")]
    model = make_model(nodes, [("x", [2, 3, 4, 4])], [("y", [2, 5, 4, 4])], inits)
    check(model, {"x": rnd(rng, 2, 3, 4, 4)})


def test_batchnorm_not_folded_into_a_conv_output_used_elsewhere(rng):
    inits = {"W": rnd(rng, 4, 4, 1, 1), "B": rnd(rng, 4), **bn_inits(rng, 4)}
    nodes = [conv_node("x", "W", "B", "c"), bn_node("c", "y")]
    model = make_model(nodes, [("x", [1, 4, 3, 3])], [("y", [1, 4, 3, 3]), ("c", [1, 4, 3, 3])],
                       inits)
    check(model, {"x": rnd(rng, 1, 4, 3, 3)})


# ----------------------------------------------------------------------------------
# Add / Mul
# ----------------------------------------------------------------------------------
CONST_SHAPES = [(6, 1, 1), (1, 6, 1, 1), (), (1,), (1, 1, 1, 1)]


@pytest.mark.parametrize("cshape", CONST_SHAPES, ids=str)
@pytest.mark.parametrize("op", ["Add", "Mul"])
@pytest.mark.parametrize("where", ["after_conv", "on_input", "const_first"])
def test_per_channel_constant(rng, cshape, op, where):
    inits = {"K": rnd(rng, *cshape) if cshape else np.array(1.7, F)}
    if where == "after_conv":
        inits.update(W=rnd(rng, 6, 3, 1, 1), B=rnd(rng, 6))
        nodes = [conv_node("x", "W", "B", "c"), helper.make_node(op, ["c", "K"], ["y"])]
        cin = 3
    elif where == "on_input":
        nodes = [helper.make_node(op, ["x", "K"], ["y"])]
        cin = 6
    else:
        inits.update(W=rnd(rng, 6, 6, 1, 1))
        nodes = [helper.make_node(op, ["K", "x"], ["a"]), conv_node("a", "W", None, "y")]
        cin = 6
    model = make_model(nodes, [("x", [2, cin, 3, 5])], [("y", [2, 6, 3, 5])], inits)
    check(model, {"x": rnd(rng, 2, cin, 3, 5)})


@pytest.mark.parametrize("order", ["before_relu", "after_relu", "swapped"])
def test_residual_add(rng, order):
    inits = {"W": rnd(rng, 4, 4, 1, 1), "B": rnd(rng, 4)}
    conv = conv_node("x", "W", "B", "c")
    if order == "before_relu":
        nodes = [conv, helper.make_node("Add", ["c", "x"], ["s"]),
                 helper.make_node("Relu", ["s"], ["y"])]
    elif order == "after_relu":
        nodes = [conv, helper.make_node("Relu", ["c"], ["r"]),
                 helper.make_node("Add", ["r", "x"], ["y"])]
    else:
        nodes = [conv, helper.make_node("Add", ["x", "c"], ["s"]),
                 helper.make_node("Relu", ["s"], ["y"])]
    model = make_model(nodes, [("x", [2, 4, 5, 6])], [("y", [2, 4, 5, 6])], inits)
    check(model, {"x": rnd(rng, 2, 4, 5, 6)})


def test_add_of_two_inputs(rng):
    nodes = [helper.make_node("Add", ["a", "b"], ["s"]), helper.make_node("Relu", ["s"], ["y"])]
    model = make_model(nodes, [("a", [2, 3, 4, 5]), ("b", [2, 3, 4, 5])],
                       [("y", [2, 3, 4, 5])])
    check(model, {"a": rnd(rng, 2, 3, 4, 5), "b": rnd(rng, 2, 3, 4, 5)})


def test_add_of_a_tensor_with_itself(rng):
    inits = {"W": rnd(rng, 3, 3, 1, 1)}
    nodes = [conv_node("x", "W", None, "c"), helper.make_node("Add", ["c", "c"], ["y"])]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 3, 4, 4])], inits)
    check(model, {"x": rnd(rng, 1, 3, 4, 4)})


def test_mul_then_add_then_activation_chain(rng):
    inits = {"W": rnd(rng, 6, 3, 1, 1), "B": rnd(rng, 6), "S": rnd(rng, 1, 6, 1, 1),
             "T": rnd(rng, 6, 1, 1), "W2": rnd(rng, 5, 6, 1, 1),
             "lo": np.array(-0.2, F), "hi": np.array(0.9, F)}
    nodes = [conv_node("x", "W", "B", "c"), helper.make_node("Mul", ["c", "S"], ["m"]),
             helper.make_node("Add", ["T", "m"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Clip", ["r", "lo", "hi"], ["k"]),
             conv_node("k", "W2", None, "d"),
             helper.make_node("LeakyRelu", ["d"], ["l"], alpha=0.3),
             helper.make_node("Relu", ["l"], ["y"])]
    model = make_model(nodes, [("x", [2, 3, 7, 7])], [("y", [2, 5, 7, 7])], inits)
    check(model, {"x": rnd(rng, 2, 3, 7, 7)})


@pytest.mark.parametrize("acts", [("Clip06", "LeakyRelu"), ("LeakyRelu", "Clip06"),
                                  ("Relu", "Clip06"), ("LeakyRelu", "LeakyRelu"),
                                  ("Clip06", "Relu", "LeakyRelu")])
def test_stacked_activations_after_conv(rng, acts):
    inits = {"W": rnd(rng, 5, 3, 1, 1, scale=3.0), "B": rnd(rng, 5),
             "z": np.array(0.0, F), "six": np.array(6.0, F)}
    nodes = [conv_node("x", "W", "B", "t0")]
    for i, a in enumerate(acts):
        src, dst = f"t{i}", ("y" if i == len(acts) - 1 else f"t{i + 1}")
        if a == "Clip06":
            nodes.append(helper.make_node("Clip", [src, "z", "six"], [dst]))
        elif a == "LeakyRelu":
            nodes.append(helper.make_node("LeakyRelu", [src], [dst], alpha=0.25))
        else:
            nodes.append(helper.make_node(a, [src], [dst]))
    model = make_model(nodes, [("x", [2, 3, 4, 5])], [("y", [2, 5, 4, 5])], inits)
    check(model, {"x": rnd(rng, 2, 3, 4, 5, scale=3.0)})


# ----------------------------------------------------------------------------------
# Identity / Dropout
# ----------------------------------------------------------------------------------
def test_identity_before_and_after_conv(rng):
    inits = {"W": rnd(rng, 4, 3, 1, 1)}
    nodes = [helper.make_node("Identity", ["x"], ["i"]), conv_node("i", "W", None, "c"),
             helper.make_node("Identity", ["c"], ["y"])]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])], inits)
    check(model, {"x": rnd(rng, 1, 3, 4, 4)})


@pytest.mark.parametrize("opset", [7, 10, 12, 13, NEWEST_OPSET])
def test_dropout(rng, opset):
    inits = {"W": rnd(rng, 4, 3, 1, 1)}
    if opset < 12:
        drop = helper.make_node("Dropout", ["c"], ["y"], ratio=0.3)
    else:
        inits["ratio"] = np.array(0.3, F)
        inits["train"] = np.array(False)
        drop = helper.make_node("Dropout", ["c", "ratio", "train"], ["y"])
    nodes = [conv_node("x", "W", None, "c"), drop]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 4, 4, 4])], inits,
                       opset=opset)
    check(model, {"x": rnd(rng, 1, 3, 4, 4)})


def test_dropout_mask_output_is_refused(rng):
    nodes = [helper.make_node("Dropout", ["x"], ["y", "mask"], name="drop")]
    model = make_model(nodes, [("x", [1, 3, 4, 4])],
                       [("y", [1, 3, 4, 4]), ("mask", [1, 3, 4, 4], TensorProto.BOOL)],
                       opset=13)
    with pytest.raises(UnsupportedError, match="Dropout 'drop'.*mask"):
        InferenceSession(model)


def test_dropout_in_training_mode_is_refused():
    inits = {"train": np.array(True)}
    nodes = [helper.make_node("Dropout", ["x", "", "train"], ["y"], name="drop")]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 3, 4, 4])], inits, opset=13)
    with pytest.raises(UnsupportedError, match="Dropout 'drop'.*training"):
        InferenceSession(model)


# ----------------------------------------------------------------------------------
# every opset
# ----------------------------------------------------------------------------------
def all_ops_model(rng, opset):
    """Conv -> BN -> Relu -> Conv(s2) -> Add c -> LeakyRelu -> Conv(g2) -> Clip -> Dropout
    -> Identity -> Mul c, in the form `opset` spells them."""
    inits = {"W1": rnd(rng, 8, 4, 1, 1), "B1": rnd(rng, 8), **bn_inits(rng, 8),
             "W2": rnd(rng, 6, 8, 1, 1), "A": rnd(rng, 6, 1, 1),
             "W3": rnd(rng, 4, 3, 1, 1), "B3": rnd(rng, 4), "M": rnd(rng, 1, 4, 1, 1)}
    nodes = [conv_node("x", "W1", "B1", "c1", name="c1"), bn_node("c1", "n1"),
             helper.make_node("Relu", ["n1"], ["r1"]),
             conv_node("r1", "W2", None, "c2", name="c2", strides=[2, 2], pads=[1, 0, 0, 1]),
             helper.make_node("Add", ["c2", "A"], ["a2"]),
             helper.make_node("LeakyRelu", ["a2"], ["l2"], alpha=0.1),
             conv_node("l2", "W3", "B3", "c3", name="c3", group=2)]
    if opset < 11:
        nodes.append(helper.make_node("Clip", ["c3"], ["k3"], min=-0.5, max=0.8))
    else:
        inits.update(lo=np.array(-0.5, F), hi=np.array(0.8, F))
        nodes.append(helper.make_node("Clip", ["c3", "lo", "hi"], ["k3"]))
    nodes += [helper.make_node("Dropout", ["k3"], ["d3"]),
              helper.make_node("Identity", ["d3"], ["i3"]),
              helper.make_node("Mul", ["i3", "M"], ["y"])]
    return make_model(nodes, [("x", [2, 4, 7, 6])], [("y", [2, 4, 4, 4])], inits,
                      opset=opset)


@pytest.mark.parametrize("opset", range(7, NEWEST_OPSET + 1))
def test_every_opset(rng, opset):
    model = all_ops_model(rng, opset)
    check(model, {"x": rnd(rng, 2, 4, 7, 6)}, threads=(1,), ref=opset >= 14)


def test_opset_outside_range_is_refused(rng):
    model = conv_model(rng, (1, 3, 2, 2), 2, opset=6)
    with pytest.raises(UnsupportedError, match="opset 6"):
        InferenceSession(model)


def test_initializers_listed_as_graph_inputs(rng):
    inits = {"W": rnd(rng, 5, 3, 1, 1), "B": rnd(rng, 5)}
    extra = [helper.make_tensor_value_info("W", TensorProto.FLOAT, [5, 3, 1, 1]),
             helper.make_tensor_value_info("B", TensorProto.FLOAT, [5])]
    nodes = [conv_node("x", "W", "B", "c"), helper.make_node("Relu", ["c"], ["y"])]
    model = make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 5, 4, 4])], inits,
                       opset=8, extra_inputs=extra)
    sess = InferenceSession(model)
    assert [i.name for i in sess.get_inputs()] == ["x"]
    check(model, {"x": rnd(rng, 1, 3, 4, 4)})


# ----------------------------------------------------------------------------------
# graphs
# ----------------------------------------------------------------------------------
def test_branches_joined(rng):
    inits = {"Wa": rnd(rng, 6, 4, 1, 1), "Wb": rnd(rng, 6, 4, 1, 1), "Bb": rnd(rng, 6),
             "Wc": rnd(rng, 3, 6, 1, 1)}
    nodes = [conv_node("x", "Wa", None, "a"), helper.make_node("Relu", ["a"], ["ra"]),
             conv_node("x", "Wb", "Bb", "b"),
             helper.make_node("Add", ["ra", "b"], ["s"]),
             conv_node("s", "Wc", None, "y")]
    model = make_model(nodes, [("x", [2, 4, 5, 5])], [("y", [2, 3, 5, 5])], inits)
    check(model, {"x": rnd(rng, 2, 4, 5, 5)})


def test_residual_block_and_deep_chain(rng):
    inits, nodes, t = {}, [], "x"
    for i in range(6):
        inits[f"W{i}a"] = rnd(rng, 12, 8, 1, 1, scale=0.3)
        inits[f"W{i}b"] = rnd(rng, 8, 12, 1, 1, scale=0.3)
        inits.update(bn_inits(rng, 8, prefix=f"bn{i}"))
        nodes += [conv_node(t, f"W{i}a", None, f"a{i}", name=f"ca{i}"),
                  helper.make_node("Relu", [f"a{i}"], [f"r{i}"]),
                  conv_node(f"r{i}", f"W{i}b", None, f"b{i}", name=f"cb{i}"),
                  bn_node(f"b{i}", f"n{i}", prefix=f"bn{i}"),
                  helper.make_node("Add", [f"n{i}", t], [f"s{i}"]),
                  helper.make_node("Relu", [f"s{i}"], [f"o{i}"])]
        t = f"o{i}"
    nodes.append(helper.make_node("Identity", [t], ["y"]))
    model = make_model(nodes, [("x", [2, 8, 9, 7])], [("y", [2, 8, 9, 7])], inits)
    check(model, {"x": rnd(rng, 2, 8, 9, 7)})


def test_two_outputs_one_consumed_inside(rng):
    inits = {"W1": rnd(rng, 5, 3, 1, 1), "W2": rnd(rng, 4, 5, 1, 1), "B2": rnd(rng, 4)}
    nodes = [conv_node("x", "W1", None, "y1"), helper.make_node("Relu", ["y1"], ["r"]),
             conv_node("r", "W2", "B2", "y2")]
    model = make_model(nodes, [("x", [2, 3, 4, 6])],
                       [("y2", [2, 4, 4, 6]), ("y1", [2, 5, 4, 6])], inits)
    got = check(model, {"x": rnd(rng, 2, 3, 4, 6)})
    assert got[0].shape == (2, 4, 4, 6) and got[1].shape == (2, 5, 4, 6)


def test_two_heads(rng):
    inits = {"W": rnd(rng, 6, 3, 1, 1), "Wa": rnd(rng, 2, 6, 1, 1), "Wb": rnd(rng, 5, 6, 1, 1)}
    nodes = [conv_node("x", "W", None, "f"), helper.make_node("Relu", ["f"], ["r"]),
             conv_node("r", "Wa", None, "ya"), conv_node("r", "Wb", None, "yb")]
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("ya", [1, 2, 8, 8]), ("yb", [1, 5, 8, 8])],
                       inits)
    check(model, {"x": rnd(rng, 1, 3, 8, 8)})


def test_identity_output_of_a_graph_input(rng):
    inits = {"W": rnd(rng, 2, 3, 1, 1)}
    nodes = [helper.make_node("Identity", ["x"], ["same"]), conv_node("x", "W", None, "y")]
    model = make_model(nodes, [("x", [1, 3, 2, 2])], [("same", [1, 3, 2, 2]), ("y", [1, 2, 2, 2])],
                       inits)
    x = rnd(rng, 1, 3, 2, 2)
    got = check(model, {"x": x})
    assert np.array_equal(got[0], x)
    assert not np.shares_memory(got[0], x)


def test_output_listed_twice_and_identity_of_output(rng):
    inits = {"W": rnd(rng, 2, 3, 1, 1)}
    nodes = [conv_node("x", "W", None, "y"), helper.make_node("Identity", ["y"], ["z"])]
    model = make_model(nodes, [("x", [1, 3, 2, 2])], [("y", [1, 2, 2, 2]), ("z", [1, 2, 2, 2])],
                       inits)
    got = check(model, {"x": rnd(rng, 1, 3, 2, 2)})
    assert np.array_equal(got[0], got[1]) and not np.shares_memory(got[0], got[1])


def test_nodes_out_of_order(rng):
    inits = {"W1": rnd(rng, 4, 3, 1, 1), "W2": rnd(rng, 2, 4, 1, 1)}
    nodes = [conv_node("r", "W2", None, "y"), helper.make_node("Relu", ["c"], ["r"]),
             conv_node("x", "W1", None, "c")]
    model = make_model(nodes, [("x", [1, 3, 3, 3])], [("y", [1, 2, 3, 3])], inits, check=False)
    got = InferenceSession(model).run(None, {"x": rnd(rng, 1, 3, 3, 3)})
    assert got[0].shape == (1, 2, 3, 3)


@pytest.mark.parametrize("decl", [["N", 4, "H", "W"], [None, 4, None, None], ["N", 4, 5, "W"]])
def test_dynamic_dims(rng, decl):
    inits = {"W": rnd(rng, 6, 4, 1, 1), "B": rnd(rng, 6), "W2": rnd(rng, 3, 6, 1, 1)}
    nodes = [conv_node("x", "W", "B", "c", strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]), conv_node("r", "W2", None, "y")]
    model = make_model(nodes, [("x", decl)], [("y", [None] * 4)], inits)
    sess = InferenceSession(model, threads=2)
    assert sess.get_inputs()[0].shape == decl
    sizes = [(1, 4, 5, 5), (3, 4, 5, 2), (2, 4, 5, 1), (1, 4, 5, 5), (4, 4, 5, 17)]
    for shape in sizes:
        x = rnd(rng, *shape)
        got = sess.run(None, {"x": x})[0]
        ref = run_reference(model, {"x": x})[0]
        assert_close(got, ref)
    if decl[2] is None or isinstance(decl[2], str):
        got = sess.run(None, {"x": rnd(rng, 2, 4, 9, 3)})[0]
        assert got.shape == (2, 3, 5, 2)


def test_dynamic_dims_residual_and_1d(rng):
    inits = {"W": rnd(rng, 4, 4, 1), "B": rnd(rng, 4)}
    nodes = [conv_node("x", "W", "B", "c"), helper.make_node("Add", ["c", "x"], ["y"])]
    model = make_model(nodes, [("x", ["N", 4, "L"])], [("y", ["N", 4, "L"])], inits)
    sess = InferenceSession(model)
    for shape in [(1, 4, 1), (2, 4, 33), (5, 4, 7)]:
        x = rnd(rng, *shape)
        assert_close(sess.run(None, {"x": x})[0], run_reference(model, {"x": x})[0])


# ----------------------------------------------------------------------------------
# the onnx package's backend node tests
# ----------------------------------------------------------------------------------
BACKEND_PREFIXES = ("test_relu", "test_leakyrelu", "test_clip", "test_batchnorm", "test_add")
BACKEND_MODULES = ("relu", "leakyrelu", "clip", "batch_normalization", "add")
# tests whose refusal is acceptable: a dtype or broadcast we do not run, or the training
# form of BatchNormalization (this is an inference runtime)
ACCEPTED_REFUSAL = re.compile(r"int8|int16|int32|int64|uint|float16|float64|double|"
                              r"only float32|broadcast|training_mode")
MUST_PASS = {"test_relu", "test_leakyrelu", "test_leakyrelu_default", "test_leakyrelu_example",
             "test_clip", "test_clip_example", "test_clip_default_min", "test_clip_default_max",
             "test_clip_inbounds", "test_clip_outbounds", "test_clip_splitbounds",
             "test_batchnorm_example", "test_batchnorm_epsilon", "test_add"}


def _backend_cases():
    """(name, model, inputs, outputs) of the non-expanded node tests: from the data
    folder when the installed onnx ships it, else generated from onnx's case modules."""
    import onnx
    root = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "node")
    cases = []
    if os.path.isdir(root):
        for name in sorted(os.listdir(root)):
            if not name.startswith(BACKEND_PREFIXES) or "_expanded" in name:
                continue
            folder = os.path.join(root, name)
            model = onnx.load(os.path.join(folder, "model.onnx"))
            data = os.path.join(folder, "test_data_set_0")
            ins, outs = [], []
            for f in sorted(os.listdir(data)):
                t = onnx.TensorProto()
                with open(os.path.join(data, f), "rb") as fh:
                    t.ParseFromString(fh.read())
                (ins if f.startswith("input") else outs).append(numpy_helper.to_array(t))
            cases.append((name, model, ins, outs))
        if cases:
            return cases
    import onnx.backend.test.case.node as node_cases
    for m in BACKEND_MODULES:
        importlib.import_module(f"onnx.backend.test.case.node.{m}")
    seen = set()
    for c in node_cases._NodeTestCases:
        if c.name.startswith(BACKEND_PREFIXES) and "_expanded" not in c.name \
                and c.name not in seen:
            seen.add(c.name)
            ins, outs = c.data_sets[0]
            cases.append((c.name, c.model, list(ins), list(outs)))
    return cases


def _bind_parameters(model, inputs):
    """Clip bounds and BatchNorm parameters are graph inputs in the node tests; this
    runtime needs them constant: add initializers of the same names (as old exporters
    did), keeping the graph inputs. Returns (model, feeds of the data inputs)."""
    import onnx
    m = onnx.ModelProto()
    m.CopyFrom(model)
    node = m.graph.node[0]
    names = [i.name for i in m.graph.input]
    feeds = dict(zip(names, inputs))
    if node.op_type in ("Clip", "BatchNormalization"):
        for name in list(node.input)[1:]:
            if name and name in feeds:
                m.graph.initializer.append(numpy_helper.from_array(feeds.pop(name), name))
    return m, feeds


def test_onnx_backend_node_tests():
    cases = _backend_cases()
    assert len(cases) >= 20, [c[0] for c in cases]
    passed, refused = [], {}
    for name, model, inputs, outputs in cases:
        m, feeds = _bind_parameters(model, inputs)
        try:
            sess = InferenceSession(m)
        except UnsupportedError as exc:
            assert ACCEPTED_REFUSAL.search(str(exc)), f"{name} refused: {exc}"
            refused[name] = str(exc)
            continue
        got = sess.run(None, feeds)
        assert len(got) == len(outputs)
        for g, want in zip(got, outputs):
            np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6, err_msg=name)
        passed.append(name)
    missing = MUST_PASS - set(passed)
    assert not missing, f"expected to pass: {sorted(missing)}; refused: {refused}"
    # the ones we refuse are the non-float ones, the broadcast sum and training mode
    for name in refused:
        assert re.search(r"int|uint|bcast|training", name), name


# ----------------------------------------------------------------------------------
# random DAGs of every supported op against onnxruntime: the rewrite passes (folding,
# fusion, chaining, copies) must not change any output
# ----------------------------------------------------------------------------------
def random_graph(seed):
    import random
    r = random.Random(seed)
    rng = np.random.default_rng(seed)
    shapes = {"x": (2, 4, 9, 7)}
    order = ["x"]
    nodes, inits = [], {}
    count = [0]

    def new(prefix):
        count[0] += 1
        return f"{prefix}{count[0]}"

    for _ in range(r.randint(3, 12)):
        src = r.choice(order[-3:])
        n, c, h, w = shapes[src]
        op = r.choice(["Conv", "Conv", "Conv", "Relu", "LeakyRelu", "Clip", "BN", "AddC",
                       "MulC", "Add", "Identity", "Dropout"])
        out = new("t")
        if op == "Conv":
            group = r.choice([g for g in (1, 1, 2, 4) if c % g == 0])
            cout = group * r.randint(1, 5)
            wname, bname = new("W"), new("B")
            inits[wname] = rnd(rng, cout, c // group, 1, 1, scale=1 / np.sqrt(c))
            attrs = {"group": group} if group > 1 else {}
            ho, wo = h, w
            if r.random() < 0.25:
                s = r.choice([1, 2])
                pads = [r.randint(0, 1) for _ in range(4)]
                attrs.update(strides=[s, s], pads=pads)
                ho = (h + pads[0] + pads[2] - 1) // s + 1
                wo = (w + pads[1] + pads[3] - 1) // s + 1
            bias = r.random() < 0.6
            if bias:
                inits[bname] = rnd(rng, cout)
            nodes.append(conv_node(src, wname, bname if bias else None, out, name=out,
                                   **attrs))
            shapes[out] = (n, cout, ho, wo)
        elif op == "Add":
            same = [t for t in order if shapes[t] == shapes[src]]
            other = r.choice(same)
            nodes.append(helper.make_node("Add", [src, other][::r.choice([1, -1])], [out],
                                          name=out))
            shapes[out] = shapes[src]
        else:
            if op in ("Relu", "Identity", "Dropout"):
                nodes.append(helper.make_node(op, [src], [out], name=out))
            elif op == "LeakyRelu":
                nodes.append(helper.make_node(op, [src], [out], name=out,
                                              alpha=r.choice([0.01, 0.2, 2.0])))
            elif op == "Clip":
                lo, hi = new("lo"), new("hi")
                inits[lo] = np.array(r.choice([-1.0, 0.0, -0.25]), F)
                inits[hi] = np.array(r.choice([0.5, 1.0, 6.0]), F)
                nodes.append(helper.make_node(op, [src, lo, hi], [out], name=out))
            elif op == "BN":
                p = new("bn")
                inits.update(bn_inits(rng, c, prefix=p))
                nodes.append(bn_node(src, out, prefix=p))
            else:
                k = new("K")
                inits[k] = rnd(rng, *r.choice([(c, 1, 1), (1, c, 1, 1), ()]))
                nodes.append(helper.make_node("Add" if op == "AddC" else "Mul", [src, k],
                                              [out], name=out))
            shapes[out] = shapes[src]
        order.append(out)
    outs = [order[-1]] + r.sample(order[1:-1], min(len(order) - 2, r.randint(0, 2)))
    model = make_model(nodes, [("x", list(shapes["x"]))],
                       [(o, list(shapes[o])) for o in outs], inits, opset=13)
    return model


@pytest.mark.parametrize("seed", range(100))
def test_random_graphs(seed):
    model = random_graph(seed)
    x = np.random.default_rng(seed).standard_normal((2, 4, 9, 7)).astype(F)
    check(model, {"x": x}, ref=False, rtol=1e-4, threads=(1, 3))
