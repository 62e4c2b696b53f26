"""Bad feeds -> InputError naming what was expected and what came; unsupported models ->
UnsupportedError listing every offending node at once; inconsistent models ->
ModelError."""
import re

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import conv_node, make_model, rnd
from pyconv1x1 import Error, InferenceSession, InputError, ModelError, UnsupportedError

F = np.float32


@pytest.fixture(scope="module")
def sess():
    """inputs a [2, 4, 'H', 'W'] and b ['N', 3, 'H', None]; outputs y, z."""
    rng = np.random.default_rng(0)
    inits = {"Wa": rnd(rng, 5, 4, 1, 1), "Wb": rnd(rng, 5, 3, 1, 1)}
    nodes = [conv_node("a", "Wa", None, "y"), conv_node("b", "Wb", None, "z")]
    model = make_model(nodes, [("a", [2, 4, "H", "W"]), ("b", ["N", 3, "H", None])],
                       [("y", [2, 5, "H", "W"]), ("z", ["N", 5, "H", None])], inits)
    return InferenceSession(model)


def feeds(a_shape=(2, 4, 3, 3), b_shape=(1, 3, 3, 2), dtype=F):
    return {"a": np.ones(a_shape, dtype), "b": np.ones(b_shape, dtype)}


def bad(sess, feed, *patterns, names=None):
    with pytest.raises(InputError) as info:
        sess.run(names, feed)
    assert isinstance(info.value, ValueError) and isinstance(info.value, Error)
    msg = str(info.value)
    for p in patterns:
        assert re.search(p, msg), f"{p!r} not in {msg!r}"
    return msg


def test_good_feed_runs(sess):
    y, z = sess.run(None, feeds())
    assert y.shape == (2, 5, 3, 3) and z.shape == (1, 5, 3, 2)


def test_wrong_input_name(sess):
    f = feeds()
    f["c"] = f.pop("b")
    bad(sess, f, r"missing.*'b'", r"unknown.*'c'", r"'a'.*'b'")


def test_missing_input(sess):
    f = feeds()
    del f["a"]
    bad(sess, f, r"missing.*'a'", r"inputs are \['a', 'b'\]")


def test_extra_input(sess):
    f = feeds()
    f["extra"] = np.ones(3, F)
    bad(sess, f, r"unknown.*'extra'")


@pytest.mark.parametrize("dtype", [np.float64, np.float16, np.int32, np.int64, np.bool_,
                                   np.uint8])
def test_wrong_dtype(sess, dtype):
    f = feeds()
    f["a"] = f["a"].astype(dtype)
    bad(sess, f, "'a'", np.dtype(dtype).name, "float32")


def test_wrong_rank(sess):
    bad(sess, feeds(a_shape=(2, 4, 3)), "'a'", "rank 3", "rank 4")
    bad(sess, feeds(b_shape=(1, 1, 3, 3, 2)), "'b'", "rank 5", "rank 4")


def test_wrong_static_dim(sess):
    bad(sess, feeds(a_shape=(3, 4, 3, 3)), "'a'", r"\[3, 4, 3, 3\]", "dim 0", "2")
    bad(sess, feeds(b_shape=(1, 5, 3, 2)), "'b'", r"\[1, 5, 3, 2\]", "dim 1", "3")


def test_named_dim_bound_twice(sess):
    bad(sess, feeds(a_shape=(2, 4, 3, 3), b_shape=(1, 3, 4, 2)), "'H'", "3", "4")


@pytest.mark.parametrize("value", [[[1.0]], (1.0,), 1.0, None, "x", b"\x00" * 16])
def test_not_an_array(sess, value):
    f = feeds()
    f["b"] = value
    bad(sess, f, "'b'", "numpy array", type(value).__name__)


def test_feed_not_a_dict(sess):
    bad(sess, [np.ones((2, 4, 3, 3), F)], "dict", "list")


def test_unknown_output_name(sess):
    bad(sess, feeds(), "'w'", r"\['y', 'z'\]", names=["y", "w"])


def test_output_names_a_string(sess):
    bad(sess, feeds(), "'y'", "list", names="y")


def test_output_names_not_iterable(sess):
    bad(sess, feeds(), "list", names=3)


def test_feeds_checked_before_anything_runs(sess):
    f = feeds()
    f["b"] = np.ones((1, 3, 3, 2), np.float64)
    with pytest.raises(InputError):
        sess.run(None, f)
    # the session still works
    assert sess.run(["z"], feeds())[0].shape == (1, 5, 3, 2)


def test_dynamic_channel_dim_checked_at_run(rng):
    inits = {"W": rnd(rng, 2, 4, 1, 1)}
    model = make_model([conv_node("x", "W", None, "y")], [("x", ["N", "C", "H", "W"])],
                       [("y", ["N", 2, "H", "W"])], inits)
    s = InferenceSession(model)
    with pytest.raises(InputError, match=r"'x'.*\[1, 5, 2, 2\].*4 channels"):
        s.run(None, {"x": np.ones((1, 5, 2, 2), F)})
    with pytest.raises(InputError, match="rank"):
        s.run(None, {"x": np.ones((1, 4, 2), F)})


def test_unknown_rank_input_checked_at_run(rng):
    inits = {"W": rnd(rng, 2, 4, 1, 1)}
    model = make_model([conv_node("x", "W", None, "y")], [("x", None)],
                       [("y", [None] * 4)], inits, check=False)
    s = InferenceSession(model)
    assert s.get_inputs()[0].shape is None
    assert s.run(None, {"x": np.ones((1, 4, 2, 3), F)})[0].shape == (1, 2, 2, 3)
    with pytest.raises(InputError, match="rank"):
        s.run(None, {"x": np.ones((4, 2, 3), F)})


def test_residual_shapes_differ_at_run(rng):
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    model = make_model(nodes, [("a", ["N", 3]), ("b", ["M", 3])], [("y", [None, 3])])
    s = InferenceSession(model)
    assert s.run(None, {"a": np.ones((2, 3), F), "b": np.ones((2, 3), F)})[0].shape == (2, 3)
    with pytest.raises(Error, match="'a'.*'b'|broadcast"):
        s.run(None, {"a": np.ones((2, 3), F), "b": np.ones((1, 3), F)})


def test_empty_input(rng):
    inits = {"W": rnd(rng, 2, 4, 1, 1)}
    model = make_model([conv_node("x", "W", None, "y")], [("x", ["N", 4, "H", "W"])],
                       [("y", ["N", 2, "H", "W"])], inits)
    s = InferenceSession(model)
    for shape in [(0, 4, 3, 3), (1, 4, 0, 3), (2, 4, 3, 0)]:
        try:
            y = s.run(None, {"x": np.ones(shape, F)})[0]
        except InputError:
            continue
        assert y.shape == (shape[0], 2) + shape[2:]


@pytest.mark.parametrize("op", ["Relu", "Mul", "Add"])
def test_empty_input_costs_nothing_whatever_the_batch(rng, monkeypatch, op):
    """A zero-element input of batch 2**27 took 18 s: the element-wise kernels walk
    every image x channel row. Empty tensors never reach a kernel."""
    if op == "Relu":
        nodes, inits, ins = [helper.make_node("Relu", ["x"], ["y"])], {}, ["x"]
    elif op == "Mul":
        nodes = [helper.make_node("Mul", ["x", "s"], ["y"])]
        inits, ins = {"s": rnd(rng, 1, 64, 1, 1)}, ["x"]
    else:
        nodes, inits, ins = [helper.make_node("Add", ["x", "x2"], ["y"])], {}, ["x", "x2"]
    model = make_model(nodes, [(i, ["N", 64, "H", "W"]) for i in ins],
                       [("y", ["N", 64, "H", "W"])], inits)
    s = InferenceSession(model)
    calls = []
    for name in ("affine_act", "add_act"):
        kernel = getattr(s._kernels, name)
        monkeypatch.setattr(s._kernels, name,
                            lambda *a, _k=kernel, _n=name: calls.append(_n) or _k(*a))
    x = np.zeros((2 ** 27, 64, 0, 5), F)
    y = s.run(None, {i: x for i in ins})[0]
    assert y.shape == x.shape and calls == []
    x = np.ones((2, 64, 1, 1), F)  # (the spy does see kernels that have work)
    s.run(None, {i: x for i in ins})
    assert calls


# ----------------------------------------------------------------------------------
# unsupported -> every offending node at once
# ----------------------------------------------------------------------------------
def test_every_unsupported_node_listed(rng):
    inits = {"W1": rnd(rng, 8, 4, 1, 1), "K3a": rnd(rng, 8, 8, 3, 3),
             "K3b": rnd(rng, 8, 8, 3, 3), "W4": rnd(rng, 4, 8, 1, 1)}
    nodes = [conv_node("x", "W1", None, "c1", name="layer1.conv"),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             conv_node("r1", "K3a", None, "c2", name="layer3.0.conv2", pads=[1, 1, 1, 1]),
             conv_node("c2", "K3b", None, "c3", name="layer3.1.conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["c3"], ["s"], name="gate"),
             conv_node("s", "W4", None, "y", name="head")]
    model = make_model(nodes, [("x", [1, 4, 6, 6])], [("y", [1, 4, 6, 6])], inits)
    with pytest.raises(UnsupportedError) as info:
        InferenceSession(model)
    msg = str(info.value)
    assert "3 problem" in msg
    assert re.search(r"Conv 'layer3\.0\.conv2': kernel 3x3; only 1x1 kernels run", msg), msg
    assert re.search(r"Conv 'layer3\.1\.conv2': kernel 3x3; only 1x1 kernels run", msg), msg
    assert re.search(r"Softmax 'gate'.*not supported", msg), msg
    assert "layer1.conv" not in msg and "head" not in msg and "relu1" not in msg


def _compile_to_bytes(model):
    import tempfile
    from pyconv1x1 import planfile
    with tempfile.TemporaryDirectory() as folder:
        planfile.compile_model(model, f"{folder}/m.pc1")


@pytest.mark.parametrize("case", [
    "maxpool", "gemm", "custom_domain", "weight_is_input", "conv3d", "kernel_1x3",
    "mul_two_tensors", "add_const_hw", "bn_training", "relu_unknown_attr", "float64_input",
    "clip_runtime_bound", "bn_runtime_param", "float64_output", "float16_output"])
def test_unsupported_cases(rng, case):
    x = ("x", [1, 4, 5, 5])
    inits = {"W": rnd(rng, 4, 4, 1, 1)}
    inputs, name = [x], "bad"
    if case == "maxpool":
        nodes = [helper.make_node("MaxPool", ["x"], ["y"], name=name, kernel_shape=[2, 2])]
        want = r"MaxPool 'bad'.*op MaxPool is not supported"
    elif case == "gemm":
        inits = {"G": rnd(rng, 5, 5)}
        nodes = [helper.make_node("Gemm", ["x", "G"], ["y"], name=name, transA=1)]
        inputs = [("x", [5, 5])]
        want = r"Gemm 'bad'.*not supported"
    elif case == "custom_domain":
        nodes = [helper.make_node("Relu", ["x"], ["y"], name=name, domain="com.example")]
        want = r"Relu 'bad'.*domain 'com\.example'"
    elif case == "weight_is_input":
        inputs = [x, ("w", [4, 4, 1, 1])]
        nodes = [conv_node("x", "w", None, "y", name=name)]
        want = r"Conv 'bad'.*weight 'w' is computed at run time"
    elif case == "conv3d":
        inits = {"W": rnd(rng, 4, 4, 1, 1, 1)}
        inputs = [("x", [1, 4, 2, 2, 2])]
        nodes = [conv_node("x", "W", None, "y", name=name)]
        want = r"Conv 'bad'.*3-D convolution"
    elif case == "kernel_1x3":
        inits = {"W": rnd(rng, 4, 4, 1, 3)}
        nodes = [conv_node("x", "W", None, "y", name=name)]
        want = r"Conv 'bad': kernel 1x3; only 1x1 kernels run"
    elif case == "mul_two_tensors":
        nodes = [helper.make_node("Mul", ["x", "x"], ["y"], name=name)]
        want = r"Mul 'bad'.*two run-time tensors"
    elif case == "add_const_hw":
        inits = {"K": rnd(rng, 4, 5, 5)}
        nodes = [helper.make_node("Add", ["x", "K"], ["y"], name=name)]
        want = r"Add 'bad'.*constant of shape \[4, 5, 5\]"
    elif case == "bn_training":
        inits = {k: np.ones(4, F) for k in "sbmv"}
        nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                  name=name, training_mode=1)]
        want = r"BatchNormalization 'bad'.*training_mode"
    elif case == "relu_unknown_attr":
        nodes = [helper.make_node("Relu", ["x"], ["y"], name=name, flavour=2)]
        want = r"Relu 'bad'.*attribute 'flavour'"
    elif case == "float64_input":
        inputs = [("x", [1, 4, 5, 5], TensorProto.DOUBLE)]
        nodes = [helper.make_node("Relu", ["x"], ["y"], name=name)]
        want = r"input 'x' is float64; only float32"
    elif case in ("float64_output", "float16_output"):
        # it loaded and ran, but could not be pickled or compiled: refused at load
        elem = TensorProto.DOUBLE if case == "float64_output" else TensorProto.FLOAT16
        nodes = [helper.make_node("Relu", ["x"], ["y"], name=name)]
        model = make_model(nodes, inputs, [("y", None, elem)], inits, check=False)
        want = r"output 'y' is declared float(64|16); only float32"
        for load in (InferenceSession, _compile_to_bytes):
            with pytest.raises(UnsupportedError, match=want):
                load(model)
        return
    elif case == "clip_runtime_bound":
        inputs = [x, ("lo", [])]
        nodes = [helper.make_node("Clip", ["x", "lo"], ["y"], name=name)]
        want = r"Clip 'bad'.*'lo' is computed at run time"
    else:
        inputs = [x, ("s", [4])]
        inits = {k: np.ones(4, F) for k in "bmv"}
        nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                  name=name)]
        want = r"BatchNormalization 'bad'.*'s' is computed at run time"
    model = make_model(nodes, inputs, [("y", None)], inits, check=False)
    with pytest.raises(UnsupportedError, match=want):
        InferenceSession(model)


# ----------------------------------------------------------------------------------
# inconsistent models -> ModelError
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", [
    "weight_channels", "bias_size", "defined_twice", "undefined_input", "cycle",
    "kernel_shape_mismatch", "group_not_dividing", "stride_zero", "negative_pad",
    "output_not_produced", "input_twice", "initializer_twice", "conv_one_input",
    "weight_rank2", "bn_param_size", "bn_channels", "add_const_channels", "clip_vector",
    "pads_wrong_length", "unknown_auto_pad", "node_without_op", "dropout_mode_empty"])
def test_inconsistent_models(rng, case):
    x = ("x", [1, 4, 5, 5])
    inits = {"W": rnd(rng, 6, 4, 1, 1), "B": rnd(rng, 6)}
    inputs, outputs = [x], [("y", None)]
    conv = conv_node("x", "W", "B", "y", name="c")
    nodes = [conv]
    extra = {}
    if case == "weight_channels":
        inits["W"] = rnd(rng, 6, 3, 1, 1)
        want = r"Conv 'c'.*4 channels.*\[6, 3, 1, 1\]"
    elif case == "bias_size":
        inits["B"] = rnd(rng, 5)
        want = r"Conv 'c'.*bias shape \[5\].*\[6\]"
    elif case == "defined_twice":
        nodes = [conv, helper.make_node("Relu", ["x"], ["y"], name="r")]
        want = r"'y'.*defined once"
    elif case == "undefined_input":
        nodes = [helper.make_node("Relu", ["ghost"], ["y"], name="r")]
        want = r"Relu 'r'.*'ghost'"
    elif case == "cycle":
        nodes = [helper.make_node("Relu", ["b"], ["a"], name="ra"),
                 helper.make_node("Relu", ["a"], ["b"], name="rb"),
                 helper.make_node("Add", ["x", "b"], ["y"], name="add")]
        want = r"cycle"
    elif case == "kernel_shape_mismatch":
        nodes = [conv_node("x", "W", "B", "y", name="c", kernel_shape=[3, 3])]
        want = r"Conv 'c'.*kernel_shape \[3, 3\]"
    elif case == "group_not_dividing":
        inits["W"] = rnd(rng, 6, 1, 1, 1)
        nodes = [conv_node("x", "W", "B", "y", name="c", group=4)]
        want = r"Conv 'c'.*group=4"
    elif case == "stride_zero":
        nodes = [conv_node("x", "W", "B", "y", name="c", strides=[0, 1])]
        want = r"Conv 'c'.*strides \[0, 1\]"
    elif case == "negative_pad":
        nodes = [conv_node("x", "W", "B", "y", name="c", pads=[0, -1, 0, 0])]
        want = r"Conv 'c'.*pads \[0, -1, 0, 0\]"
    elif case == "output_not_produced":
        outputs = [("y", None), ("nowhere", None)]
        want = r"'nowhere'"
    elif case == "input_twice":
        inputs = [x, x]
        want = r"'x'.*twice"
    elif case == "initializer_twice":
        extra = [numpy_helper.from_array(rnd(rng, 6), "B")]
        want = r"'B'.*twice"
    elif case == "conv_one_input":
        nodes = [helper.make_node("Conv", ["x"], ["y"], name="c")]
        want = r"Conv 'c'.*1 inputs"
    elif case == "weight_rank2":
        inits["W"] = rnd(rng, 6, 4)
        want = r"Conv 'c'.*weight has shape \[6, 4\]"
    elif case == "bn_param_size":
        inits = {"s": np.ones(4, F), "b": np.ones(3, F), "m": np.ones(4, F), "v": np.ones(4, F)}
        nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                  name="bn")]
        want = r"BatchNormalization 'bn'.*B has shape \[3\]"
    elif case == "bn_channels":
        inits = {k: np.ones(3, F) for k in "sbmv"}
        nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                  name="bn")]
        want = r"BatchNormalization 'bn'.*4 channels.*3"
    elif case == "add_const_channels":
        inits = {"K": np.ones((3, 1, 1), F)}
        nodes = [helper.make_node("Add", ["x", "K"], ["y"], name="add")]
        want = r"Add 'add'.*\[3, 1, 1\].*\[1, 4, 5, 5\]"
    elif case == "clip_vector":
        inits = {"lo": np.zeros(2, F)}
        nodes = [helper.make_node("Clip", ["x", "lo"], ["y"], name="clip")]
        want = r"Clip 'clip'.*min has shape \[2\]"
    elif case == "pads_wrong_length":
        nodes = [conv_node("x", "W", "B", "y", name="c", pads=[1, 1])]
        want = r"Conv 'c'.*pads \[1, 1\]"
    elif case == "unknown_auto_pad":
        nodes = [conv_node("x", "W", "B", "y", name="c", auto_pad="SAME")]
        want = r"Conv 'c'.*auto_pad 'SAME'"
    elif case == "dropout_mode_empty":
        inits = {"r": np.array(0.5, F), "t": np.zeros(0, np.bool_)}
        nodes = [helper.make_node("Dropout", ["x", "r", "t"], ["y"], name="drop")]
        want = r"Dropout 'drop'.*training_mode has shape \[0\]"
    else:
        nodes = [helper.make_node("", ["x"], ["y"], name="n")]
        want = r"no op_type"
    model = make_model(nodes, inputs, outputs, inits, check=False)
    if extra:
        model.graph.initializer.extend(extra)
    with pytest.raises(ModelError, match=want):
        InferenceSession(model)


@pytest.mark.parametrize("pads,x_shape", [([1 << 20] * 4, [1, 4, 1, 1]),     # 128 TiB
                                          ([200_000] * 4, [1, 4, 1, 1]),     # 4.7 TiB
                                          ([0, 0, 1 << 20, 1 << 20], [2, 4, 1, 1])])
def test_huge_outputs_are_an_error_not_a_memory_error(rng, pads, x_shape):
    """A pad the model allows can still ask for an output of terabytes: refuse it with a
    pyconv1x1.Error (at load or at run), never numpy's MemoryError."""
    inits = {"W": rnd(rng, 8, 4, 1, 1)}
    model = make_model([conv_node("x", "W", None, "y", name="c", pads=pads)],
                       [("x", x_shape)], [("y", [None] * 4)], inits)
    try:
        s = InferenceSession(model, threads=1)
        s.run(None, {"x": np.ones(x_shape, F)})
    except Error:
        return
    except MemoryError as exc:
        pytest.fail(f"MemoryError escaped: {exc}")
    pytest.fail("an output of this size should be refused")


def test_huge_list_attribute_is_refused_not_inflated(rng):
    inits = {"W": rnd(rng, 6, 4, 1, 1)}
    model = make_model([conv_node("x", "W", None, "y", name="c", strides=[1] * 100_000)],
                       [("x", [1, 4, 5, 5])], [("y", None)], inits, check=False)
    with pytest.raises(UnsupportedError, match=r"Conv 'c'.*strides.*100000 values"):
        InferenceSession(model)


# ----------------------------------------------------------------------------------
# feeds that numpy accepts but cannot or should not copy
# ----------------------------------------------------------------------------------
HUGE = (2, 4, 100_000, 100_000)  # 320 GB described by a 4-byte scalar


@pytest.mark.parametrize("api", ["run", "run_into"])
def test_huge_broadcast_feed_is_an_error_not_a_memory_error(sess, api):
    feed = {"a": np.broadcast_to(F(1), HUGE), "b": np.ones((1, 3, 3, 2), F)}
    with pytest.raises(Error, match=r"'a'.*\[2, 4, 100000, 100000\]"):
        if api == "run":
            sess.run(None, feed)
        else:
            sess.run_into(feed, {"y": np.empty((2, 5, 3, 3), F)})


def test_broadcast_feed_that_fits_runs(sess):
    feed = {"a": np.broadcast_to(F(1.5), (2, 4, 3, 3)), "b": np.ones((1, 3, 3, 2), F)}
    want = sess.run(None, {"a": np.full((2, 4, 3, 3), 1.5, F), "b": feed["b"]})
    got = sess.run(None, feed)
    assert all(np.array_equal(x, y) for x, y in zip(got, want))


@pytest.mark.parametrize("api", ["run", "run_into", "warm_single_input"])
def test_masked_array_is_refused(sess, rng, api):
    x = np.ma.masked_array(np.ones((2, 4, 3, 3), F), mask=np.zeros((2, 4, 3, 3), bool))
    x.mask[0, 0, 0, 0] = True
    if api == "warm_single_input":  # the fast path, warmed by a plain array first
        single = InferenceSession(make_model([conv_node("a", "W", None, "y")],
                                             [("a", [2, 4, 3, 3])], [("y", [None] * 4)],
                                             {"W": rnd(rng, 5, 4, 1, 1)}))
        single.run(None, {"a": x.data})
        with pytest.raises(InputError, match="'a'.*masked"):
            single.run(None, {"a": x})
        return
    feed = {"a": x, "b": np.ones((1, 3, 3, 2), F)}
    with pytest.raises(InputError, match="'a'.*masked"):
        if api == "run":
            sess.run(None, feed)
        else:
            sess.run_into(feed, {"y": np.empty((2, 5, 3, 3), F)})


def test_tensor_limit_is_this_machines_memory():
    import os
    from pyconv1x1 import plan
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    assert 0 < plan.tensor_byte_limit() <= physical


@pytest.mark.parametrize("case", ["conv_pads", "activation", "residual_add"])
def test_outputs_beyond_the_memory_limit_are_refused(rng, monkeypatch, case):
    """The 143-byte model with pads=[12000]*4 asked for 2.3 GB; with the limit set to
    1 MiB (as a small machine) the same kinds of model are refused by name."""
    from pyconv1x1 import plan
    monkeypatch.setattr(plan, "MAX_TENSOR_BYTES", 1 << 20)
    if case == "conv_pads":
        model = make_model([conv_node("x", "W", None, "y", name="c", pads=[12000] * 4)],
                           [("x", [1, 1, 1, 1])], [("y", [None] * 4)], {"W": rnd(rng, 1, 1, 1, 1)})
        x, want = np.ones((1, 1, 1, 1), F), r"Conv 'c'.*\[1, 1, 24001, 24001\].*limit is 1048576"
    elif case == "activation":
        model = make_model([helper.make_node("Relu", ["x"], ["y"], name="r")],
                           [("x", [1, "C", "H", "W"])], [("y", [None] * 4)])
        x, want = np.ones((1, 1, 600, 600), F), r"'r'.*\[1, 1, 600, 600\].*limit"
    else:
        model = make_model([helper.make_node("Add", ["x", "x2"], ["y"], name="add")],
                           [("x", [1, 1, "H", "W"]), ("x2", [1, 1, "H", "W"])], [("y", [None] * 4)])
        x, want = np.ones((1, 1, 600, 600), F), r"Add 'add'.*\[1, 1, 600, 600\].*limit"
    s = InferenceSession(model, threads=1)
    feed = {i.name: x for i in s.get_inputs()}
    with pytest.raises(UnsupportedError, match=want):
        s.run(None, feed)
    monkeypatch.setattr(plan, "MAX_TENSOR_BYTES", 1 << 40)
    if case != "conv_pads":  # (2.3 GB: not here)
        assert s.run(None, feed)[0].shape == (1, 1, 600, 600)


@pytest.mark.parametrize("case", ["conv_weight", "mul_constant", "bn_param", "bn_fold"])
def test_float64_constants_beyond_float32(rng, case):
    """A float64 constant that float32 cannot hold is refused by name; folding that
    overflows gives inf as float32 arithmetic would. No numpy warning either way (it
    escaped as an exception under -W error)."""
    import warnings
    big = np.full((4, 4, 1, 1), 1e300)
    if case == "conv_weight":
        nodes, inits = [conv_node("x", "W", None, "y", name="c")], {"W": big}
        want = r"Conv 'c': weight holds 1e\+300, beyond float32"
    elif case == "mul_constant":
        nodes = [helper.make_node("Mul", ["x", "s"], ["y"], name="m")]
        inits, want = {"s": np.full((1, 4, 1, 1), -1e300)}, r"Mul 'm'.*-1e\+300"
    elif case == "bn_param":
        nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                  name="bn")]
        inits = {k: np.full(4, 1e300) for k in "sbmv"}
        want = r"BatchNormalization 'bn'.*1e\+300"
    else:  # in range, but scale / sqrt(tiny var) is not
        nodes = [helper.make_node("BatchNormalization", ["x", "s", "b", "m", "v"], ["y"],
                                  name="bn", epsilon=1e-45)]
        inits = {"s": np.full(4, 3e38, F), "b": np.zeros(4, F), "m": np.zeros(4, F),
                 "v": np.zeros(4, F)}
        want = None
    model = make_model(nodes, [("x", [1, 4, 2, 2])], [("y", [None] * 4)], inits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if want is None:
            y = InferenceSession(model).run(None, {"x": np.ones((1, 4, 2, 2), F)})[0]
            assert np.isinf(y).all()
            return
        with pytest.raises(UnsupportedError, match=want):
            InferenceSession(model)
