"""Quantized models end to end: small float models (onnx.helper, one exported from
torch) quantized by onnxruntime.quantization in each format (QDQ, QOperator, dynamic
ConvInteger, mixed), run here and compared with onnxruntime and with the onnx
ReferenceEvaluator (the ONNX spec's meaning of the quantized graph); bad quantization
parameters and feeds; plan-file round trips; `info` naming the int8 path."""
import io
import contextlib

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator
from onnx.reference.op_run import OpRun

import pyconv1x1
from pyconv1x1 import InputError, ModelError, planfile

ort = pytest.importorskip("onnxruntime")
quantization = pytest.importorskip("onnxruntime.quantization")
QuantFormat, QuantType = quantization.QuantFormat, quantization.QuantType

SHAPE = (2, 8, 5, 7)
THREADS = (1, 2, 3, 8)


# -- references -----------------------------------------------------------------------
class QLinearAdd(OpRun):
    """com.microsoft QLinearAdd's meaning (the ReferenceEvaluator has no contrib ops):
    dequantize both inputs, add, quantize."""
    op_domain = "com.microsoft"

    def _run(self, a, sa, za, b, sb, zb, sc, zc):
        f = ((a.astype(np.float32) - za.astype(np.float32)) * sa
             + (b.astype(np.float32) - zb.astype(np.float32)) * sb)
        info = np.iinfo(zc.dtype)
        return (np.clip(np.rint(f / sc) + zc, info.min, info.max).astype(zc.dtype),)


def reference_run(model, feed):
    """The onnx ReferenceEvaluator on the model (its quantization ops exist from opset
    19 on; their meaning is the same as in the older opsets the quantizer writes)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for imp in m.opset_import:
        if imp.domain in ("", "ai.onnx") and imp.version < 21:
            imp.version = 21
    return ReferenceEvaluator(m, new_ops=[QLinearAdd]).run(None, feed)


def output_step(model):
    """The quantization step of each graph output (its DequantizeLinear's scale), or
    None where the output is computed in float."""
    producer = {o: n for n in model.graph.node for o in n.output}
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    steps = []
    for v in model.graph.output:
        n = producer.get(v.name)
        if n is not None and n.op_type == "DequantizeLinear":
            steps.append(float(inits[n.input[1]]))
        else:
            steps.append(None)
    return steps


# -- float models and the quantizer ---------------------------------------------------
def float_model(chans=(8, 16, 12, 12), act="Relu", residual=True, first_strides=None,
                first_pads=None, group2=False, seed=0):
    """Convs of 1x1 with bias and an activation each; `residual` adds the last two
    layers' outputs (a join the quantizer makes QLinearAdd / a QDQ Add of)."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, h, w = "x", SHAPE[2], SHAPE[3]
    for i in range(len(chans) - 1):
        g = 2 if (group2 and i == 1) else 1
        wt = rng.standard_normal((chans[i + 1], chans[i] // g, 1, 1)).astype(np.float32)
        wt *= 0.5 / np.sqrt(chans[i] // g)
        b = (rng.standard_normal(chans[i + 1]) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(wt, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        attrs = {"group": g} if g > 1 else {}
        if i == 0 and first_strides:
            attrs["strides"] = list(first_strides)
            h, w = (h - 1) // first_strides[0] + 1, (w - 1) // first_strides[1] + 1
        if i == 0 and first_pads:
            attrs["pads"] = list(first_pads)
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"],
                                      name=f"conv{i}", **attrs))
        if act == "Relu":
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        else:
            inits += [numpy_helper.from_array(np.float32(0), f"lo{i}"),
                      numpy_helper.from_array(np.float32(6), f"hi{i}")]
            nodes.append(helper.make_node("Clip", [f"c{i}", f"lo{i}", f"hi{i}"], [f"r{i}"],
                                          name=f"clip{i}"))
        x = f"r{i}"
    if first_pads:
        t, l, b_, r = first_pads
        h, w = SHAPE[2] + t + b_, SHAPE[3] + l + r
        if first_strides:
            h, w = (h - 1) // first_strides[0] + 1, (w - 1) // first_strides[1] + 1
    out_c = chans[-1]
    if residual:
        nodes.append(helper.make_node("Add", [f"r{len(chans) - 3}", x], ["y"], name="add"))
    else:
        nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "float", [helper.make_tensor_value_info("x", TensorProto.FLOAT, SHAPE)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [SHAPE[0], out_c, h, w])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


def torch_model():
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 1), torch.nn.ReLU(),
                              torch.nn.Conv2d(16, 12, 1), torch.nn.ReLU6(),
                              torch.nn.Conv2d(12, 12, 1)).eval()
    f = io.BytesIO()
    torch.onnx.export(net, torch.zeros(SHAPE), f, input_names=["x"], output_names=["y"],
                      opset_version=13, dynamo=False)
    return onnx.load_from_string(f.getvalue())


def feeds(seed, n=1):
    rng = np.random.default_rng(seed)
    return [{"x": (rng.standard_normal(SHAPE) * 1.5).astype(np.float32)} for _ in range(n)]


class _Calibration(quantization.CalibrationDataReader):
    def __init__(self):
        self.it = iter(feeds(100, 4))

    def get_next(self):
        return next(self.it, None)


def quantize(tmp, name, model, dynamic=False, **options):
    src, dst = tmp / f"{name}.float.onnx", tmp / f"{name}.onnx"
    onnx.save(model, src)
    if dynamic:
        quantization.quantize_dynamic(str(src), str(dst), **options)
    else:
        quantization.quantize_static(str(src), str(dst), _Calibration(), **options)
    return onnx.load(str(dst))


S8, U8 = QuantType.QInt8, QuantType.QUInt8
CASES = {
    # name: (float model factory, quantizer options, expect int8 steps, float notes)
    "qdq_s8_per_channel": (float_model, dict(per_channel=True, activation_type=S8,
                                             weight_type=S8), True),
    "qdq_u8_per_tensor_clip": (lambda: float_model(act="Clip"),
                               dict(per_channel=False, activation_type=U8,
                                    weight_type=S8), True),
    "qdq_s8_relu_kept": (float_model, dict(per_channel=True, activation_type=S8,
                                           weight_type=S8,
                                           extra_options={"ActivationSymmetric": True}),
                         True),
    "qdq_u8_weights": (lambda: float_model(residual=False),
                       dict(activation_type=U8, weight_type=U8), True),
    "qdq_strided_padded": (lambda: float_model(first_strides=(2, 2),
                                               first_pads=(1, 0, 1, 1)),
                           dict(per_channel=True, activation_type=S8, weight_type=S8),
                           True),
    "qdq_grouped_falls_back": (lambda: float_model(group2=True, residual=False),
                               dict(per_channel=True, activation_type=S8,
                                    weight_type=S8), True),
    "qdq_mixed": (float_model, dict(per_channel=True, activation_type=S8, weight_type=S8,
                                    nodes_to_exclude=["conv1"]), True),
    "qdq_torch": (torch_model, dict(per_channel=True, activation_type=S8,
                                    weight_type=S8), True),
    "qop_u8": (float_model, dict(quant_format=QuantFormat.QOperator, per_channel=True,
                                 activation_type=U8, weight_type=S8), True),
    "qop_s8": (float_model, dict(quant_format=QuantFormat.QOperator, per_channel=True,
                                 activation_type=S8, weight_type=S8), True),
    "qop_u8_weights": (lambda: float_model(residual=False),
                       dict(quant_format=QuantFormat.QOperator, activation_type=U8,
                            weight_type=U8), True),
    "qop_mixed": (float_model, dict(quant_format=QuantFormat.QOperator, per_channel=True,
                                    activation_type=U8, weight_type=S8,
                                    nodes_to_exclude=["conv0"]), True),
    "dynamic": (float_model, dict(dynamic=True, weight_type=S8), True),
    "dynamic_u8_weights": (lambda: float_model(residual=False),
                           dict(dynamic=True, weight_type=U8), True),
}


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quant")
    cache = {}

    def get(name):
        if name not in cache:
            factory, options, _ = CASES[name]
            options = dict(options)
            dynamic = options.pop("dynamic", False)
            cache[name] = quantize(tmp, name, factory(), dynamic=dynamic, **options)
        return cache[name]
    return get


def _ort_run(model, feed, optimize=True):
    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(model.SerializeToString(), sess_options=options,
                                    providers=["CPUExecutionProvider"])
    except Exception:  # (ConvInteger with int8 weights: not in every onnxruntime build)
        return None
    return sess.run(None, feed)


def _ort_reference(model, feed, step):
    """onnxruntime's outputs: optimized, unless its graph optimizations change the
    result by more than a step (a float conv between QDQ islands, whose float rounding
    onnxruntime's fusion changes, flips a later quantization): then unoptimized, which
    is the spec's meaning."""
    fast = _ort_run(model, feed)
    if fast is None:
        return None
    plain = _ort_run(model, feed, optimize=False)
    if all(np.abs(a.astype(np.float64) - b).max() <= s * (1 + 1e-6)
           for a, b, s in zip(fast, plain, step)):
        return fast
    return plain


def compare(model, feed, threads=THREADS):
    """(max difference in quantization steps vs onnxruntime, fraction identical to
    onnxruntime, max difference in steps vs the reference), after checking every
    thread count gives bitwise the same outputs."""
    outs = [pyconv1x1.InferenceSession(model.SerializeToString(), threads=t).run(None, feed)
            for t in threads]
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            assert a.dtype == b.dtype and np.array_equal(a, b), "differs across threads"
    ours = outs[0]
    ref = reference_run(model, feed)
    steps = output_step(model)
    theirs = _ort_reference(model, feed, [
        s if s is not None else max(float(np.abs(r).max()), 1.0) * 1e-5
        for s, r in zip(steps, ref)])
    stats = []
    for i, (y, r) in enumerate(zip(ours, ref)):
        step = steps[i]
        if step is None:  # a float output (dynamic quantization): float32 rounding
            step = max(float(np.abs(r).max()), 1.0) * 1e-5
        ref_steps = float(np.abs(y.astype(np.float64) - r).max()) / step
        if theirs is None:
            stats.append((None, None, ref_steps))
            continue
        o = theirs[i]
        stats.append((float(np.abs(y.astype(np.float64) - o).max()) / step,
                      float(np.mean(y == o)), ref_steps))
    return ours, stats


@pytest.mark.parametrize("name", sorted(CASES))
def test_quantized_model_matches_onnxruntime_and_reference(quantized, name):
    model = quantized(name)
    sess = pyconv1x1.InferenceSession(model.SerializeToString())
    assert (sess.int8_path is not None) == CASES[name][2]
    for feed in feeds(7, 2):
        _, stats = compare(model, feed)
        for ort_steps, identical, ref_steps in stats:
            assert ref_steps <= 1.0 + 1e-6, (name, stats)
            if ort_steps is not None:
                assert ort_steps <= 1.0 + 1e-6, (name, stats)
                assert identical >= 0.99, (name, stats)


def test_chains_quantize_once_and_residual_joins_stay_int8(quantized):
    for name in ("qdq_s8_per_channel", "qop_u8"):
        program = pyconv1x1.InferenceSession(quantized(name).SerializeToString()).program
        kinds = [getattr(s, "title", s.kind) for s in program.steps]
        assert kinds == ["int8 chain[2]", "int8 chain[1]", "int8 add", "dequantize"], kinds
        assert program.steps[0].in_q is not None  # the float input quantized in the chain


def test_fallbacks_are_noted(quantized):
    notes = pyconv1x1.InferenceSession(
        quantized("qdq_grouped_falls_back").SerializeToString()).program.notes
    assert any("conv1" in n and "float32" in n and "group=2" in n for n in notes), notes
    mixed = pyconv1x1.InferenceSession(quantized("qdq_mixed").SerializeToString()).program
    kinds = [getattr(s, "title", "float") for s in mixed.steps]
    assert any(k.startswith("int8 chain") for k in kinds), kinds
    assert any(type(s).__name__ == "ChainStep" for s in mixed.steps)  # conv1 in float


def test_dynamic_quantization_matches_the_spec_formula(quantized):
    from pyconv1x1.quant.steps import dynamic_quantize_params
    for x in (np.array([-1.0, 2.0, 0.5], np.float32), np.array([0.25, 3.0], np.float32),
              np.array([-4.0, -0.5], np.float32), np.zeros(3, np.float32)):
        node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
        g = helper.make_graph([node], "d", [helper.make_tensor_value_info("x", 1, [None])],
                              [helper.make_tensor_value_info(n, t, None) for n, t in
                               (("y", 2), ("s", 1), ("z", 2))])
        _, s, z = ReferenceEvaluator(helper.make_model(g)).run(None, {"x": x})
        got = dynamic_quantize_params(x)
        assert np.float32(got[0]) == s and got[1] == int(z)


def test_plan_round_trip_keeps_int8_steps(quantized, tmp_path):
    for name in ("qdq_s8_relu_kept", "qop_s8", "dynamic", "qdq_strided_padded",
                 "qdq_mixed", "dynamic_u8_weights", "qop_u8_weights"):
        model = quantized(name)
        sess = pyconv1x1.InferenceSession(model.SerializeToString())
        path = tmp_path / f"{name}.pc1"
        planfile.save(sess.program, path, 8)
        again = pyconv1x1.InferenceSession(str(path))
        assert [s.kind if hasattr(s, "kind") else type(s).__name__
                for s in again.program.steps] == [
            s.kind if hasattr(s, "kind") else type(s).__name__ for s in sess.program.steps]
        assert again.int8_path == sess.int8_path
        feed = feeds(3)[0]
        for a, b in zip(sess.run(None, feed), again.run(None, feed)):
            assert np.array_equal(a, b)


def test_corrupt_int8_plan_is_a_model_error(quantized):
    import json
    sess = pyconv1x1.InferenceSession(quantized("qop_u8").SerializeToString())
    data = planfile.dumps(sess.program, 8)
    prefix = planfile.PREFIX.unpack(data[:planfile.PREFIX.size])
    header = json.loads(data[64:64 + prefix[2]])
    header["steps"][0]["layers"][0]["lo"] = 9  # above hi: an empty clamp
    header["steps"][0]["layers"][0]["hi"] = 5
    text = json.dumps(header, separators=(",", ":")).encode()
    assert len(text) <= prefix[2]
    import zlib
    text = text.ljust(prefix[2], b" ")
    blob = data[prefix[3]:]
    bad = (planfile.PREFIX.pack(planfile.MAGIC, prefix[1], prefix[2], prefix[3], prefix[4],
                                zlib.crc32(blob, zlib.crc32(text)))
           + text + data[64 + prefix[2]:])
    with pytest.raises(ModelError, match="clamp 9..5 is empty"):
        pyconv1x1.InferenceSession(bad)


def test_info_names_the_int8_path(quantized, tmp_path):
    from pyconv1x1 import cli
    from pyconv1x1.quant import int8_path, kernels
    path = tmp_path / "q.onnx"
    onnx.save(quantized("qop_u8"), path)
    sess = pyconv1x1.InferenceSession(str(path))
    assert sess.int8_path == kernels().INT8_PATH == int8_path(sess.program)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["info", str(path)]) == 0
    assert f"int8 kernels: {kernels().INT8_PATH}" in out.getvalue()
    assert "int8 chain[2]" in out.getvalue()
    floats = pyconv1x1.InferenceSession(float_model().SerializeToString())
    assert floats.int8_path is None


# -- hand-made QOperator models: edges and bad parameters -----------------------------
def qop_model(x_scale=0.05, x_zp=np.uint8(128), w_scale=None, w_zp=None, y_scale=0.1,
              y_zp=np.uint8(128), edge="float", cout=6, cin=4):
    """x -> [QuantizeLinear] -> QLinearConv -> [DequantizeLinear] -> y; edge 'float'
    (float in and out), 'uint8' or 'int8' (quantized input and output)."""
    rng = np.random.default_rng(5)
    signed = edge == "int8" or (edge == "float" and np.asarray(x_zp).dtype == np.int8)
    w = rng.integers(-127, 128, (cout, cin, 1, 1)).astype(np.int8)
    w_scale = np.full(cout, 0.02, np.float32) if w_scale is None else w_scale
    w_zp = np.zeros(np.asarray(w_scale).shape, np.int8) if w_zp is None else w_zp
    bias = rng.integers(-500, 500, cout).astype(np.int32)
    inits = [numpy_helper.from_array(np.asarray(v), n) for n, v in (
        ("x_scale", np.float32(x_scale) if np.ndim(x_scale) == 0 else x_scale),
        ("x_zp", x_zp), ("w", w), ("w_scale", np.asarray(w_scale)),
        ("w_zp", np.asarray(w_zp)), ("y_scale", np.float32(y_scale)), ("y_zp", y_zp),
        ("bias", bias))]
    conv_in = "x" if edge != "float" else "xq"
    conv_out = "y" if edge != "float" else "yq"
    nodes = [helper.make_node("QLinearConv", [conv_in, "x_scale", "x_zp", "w", "w_scale",
                                              "w_zp", "y_scale", "y_zp", "bias"],
                              [conv_out], name="qconv")]
    etype = TensorProto.FLOAT
    if edge == "float":
        nodes.insert(0, helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zp"], ["xq"],
                                         name="quant"))
        nodes.append(helper.make_node("DequantizeLinear", ["yq", "y_scale", "y_zp"], ["y"],
                                      name="dequant"))
    else:
        etype = TensorProto.INT8 if signed else TensorProto.UINT8
    graph = helper.make_graph(nodes, "qop", [helper.make_tensor_value_info(
        "x", etype, [1, cin, 3, 4])], [helper.make_tensor_value_info(
            "y", etype, [1, cout, 3, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("edge", ["uint8", "int8"])
def test_quantized_edges_take_and_return_their_dtype(edge):
    zp = np.int8(-3) if edge == "int8" else np.uint8(131)
    model = qop_model(x_zp=zp, y_zp=zp, edge=edge)
    sess = pyconv1x1.InferenceSession(model.SerializeToString())
    assert [a.type for a in sess.get_inputs() + sess.get_outputs()] == [
        f"tensor({edge})"] * 2
    rng = np.random.default_rng(1)
    info = np.iinfo(edge)
    x = rng.integers(info.min, info.max + 1, (1, 4, 3, 4)).astype(edge)
    x[0, 0, 0, :2] = (info.min, info.max)
    kept = x.copy()
    outs = [pyconv1x1.InferenceSession(model.SerializeToString(), threads=t).run(
        None, {"x": x})[0] for t in THREADS]
    assert np.array_equal(x, kept)  # the feed is not modified
    want = reference_run(model, {"x": x})[0]
    theirs = _ort_run(model, {"x": x})
    for y in outs:
        assert y.dtype == np.dtype(edge) and np.array_equal(y, outs[0])
        assert np.abs(y.astype(int) - want.astype(int)).max() <= 1
        if theirs is not None:
            assert np.abs(y.astype(int) - theirs[0].astype(int)).max() <= 1
            assert np.mean(y == theirs[0]) >= 0.99
    with pytest.raises(InputError, match=f"expected {edge}"):
        sess.run(None, {"x": x.astype(np.float32)})
    y = np.empty((1, 6, 3, 4), edge)
    sess.run_into({"x": x}, {"y": y})
    assert np.array_equal(y, outs[0])


def test_int8_results_of_a_qdq_model_are_returned_as_int8(quantized):
    """A QDQ model whose outputs are QuantizeLinear results (one of them also read by
    later int8 steps) returns them as int8, as onnxruntime does."""
    model = onnx.ModelProto()
    model.CopyFrom(quantized("qdq_s8_per_channel"))
    last = model.graph.node[-1]
    assert last.op_type == "DequantizeLinear"
    model.graph.output[0].name = last.input[0]
    model.graph.output[0].type.tensor_type.elem_type = TensorProto.INT8
    del model.graph.node[-1]
    inner = [n.output[0] for n in model.graph.node if n.op_type == "QuantizeLinear"][2]
    model.graph.output.append(helper.make_tensor_value_info(inner, TensorProto.INT8, None))
    feed = feeds(9)[0]
    ours = pyconv1x1.InferenceSession(model.SerializeToString()).run(None, feed)
    theirs = _ort_run(model, feed)
    want = reference_run(model, feed)
    for y, o, r in zip(ours, theirs, want):
        assert y.dtype == np.int8 and np.array_equal(y, r)
        assert np.abs(y.astype(int) - o).max() <= 1 and np.mean(y == o) >= 0.99


def test_saturation_and_zero_points_other_than_0_and_128():
    model = qop_model(x_scale=0.5, x_zp=np.uint8(17), y_scale=0.01, y_zp=np.uint8(250))
    x = np.linspace(-20, 120, 48, dtype=np.float32).reshape(1, 4, 3, 4)
    y = pyconv1x1.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
    want = reference_run(model, {"x": x})[0]
    assert np.abs(y - want).max() <= 0.01 + 1e-7
    q = np.rint(y / 0.01) + 250
    assert q.min() == 0 and q.max() == 255  # both ends saturate


@pytest.mark.parametrize("value", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_scale_is_a_model_error(value):
    with pytest.raises(ModelError, match=r"x_scale.*scale must be finite and > 0"):
        pyconv1x1.InferenceSession(qop_model(x_scale=value).SerializeToString())
    w_scale = np.full(6, 0.02, np.float32)
    w_scale[3] = value
    with pytest.raises(ModelError, match=r"'qconv'.*w_scale"):
        pyconv1x1.InferenceSession(qop_model(w_scale=w_scale).SerializeToString())


def test_bad_zero_points_and_channel_counts_are_model_errors():
    with pytest.raises(ModelError, match=r"x_zp.*int32; expected uint8 or int8"):
        pyconv1x1.InferenceSession(qop_model(x_zp=np.int32(3)).SerializeToString())
    with pytest.raises(ModelError, match=r"w_scale.*5 values.*need 6"):
        pyconv1x1.InferenceSession(qop_model(
            w_scale=np.full(5, 0.02, np.float32)).SerializeToString())
    with pytest.raises(ModelError, match=r"w_zp.*3 values"):
        pyconv1x1.InferenceSession(qop_model(
            w_zp=np.zeros(3, np.int8)).SerializeToString())
    model = qop_model()
    for t in model.graph.initializer:
        if t.name == "y_zp":  # a uint8 zero point holding 300: out of range
            t.ClearField("raw_data")
            t.int32_data[:] = [300]
    with pytest.raises(ModelError, match=r"y_zp.*\[0, 255\]"):
        pyconv1x1.InferenceSession(model.SerializeToString())
    mismatch = qop_model(x_zp=np.int8(0), edge="uint8")  # uint8 input, int8 zero point
    with pytest.raises(ModelError, match=r"'x' is uint8 but its zero point is int8"):
        pyconv1x1.InferenceSession(mismatch.SerializeToString())


def test_wrong_feed_dtypes_are_input_errors():
    sess = pyconv1x1.InferenceSession(qop_model().SerializeToString())
    x = np.zeros((1, 4, 3, 4), np.int8)
    with pytest.raises(InputError, match=r"'x' has dtype int8; expected float32"):
        sess.run(None, {"x": x})
    sess = pyconv1x1.InferenceSession(qop_model(edge="uint8").SerializeToString())
    with pytest.raises(InputError, match=r"'x' has dtype int8; expected uint8"):
        sess.run(None, {"x": x})


def test_runtime_scale_and_unsupported_patterns_are_refused():
    model = qop_model()
    model.graph.input.append(helper.make_tensor_value_info("s", TensorProto.FLOAT, []))
    model.graph.node[0].input[1] = "s"
    with pytest.raises(pyconv1x1.UnsupportedError, match=r"'s' is computed at run time"):
        pyconv1x1.InferenceSession(model.SerializeToString())


# -- the exact float32 fallback (quant.floatpath) ---------------------------------------
def _sessions_both_ways(monkeypatch, model, threads, isa=None):
    out = {}
    for mode in ("int", "float"):
        monkeypatch.setenv("PYCONV1X1_INT8_FALLBACK", mode)
        out[mode] = pyconv1x1.InferenceSession(model.SerializeToString(), threads=threads,
                                               isa=isa)
    monkeypatch.delenv("PYCONV1X1_INT8_FALLBACK")
    return out


@pytest.mark.parametrize("name", sorted(n for n in CASES if CASES[n][2]))
def test_float_fallback_is_bitwise_the_int8_path(quantized, monkeypatch, name):
    """Every int8 chain run on the float32 kernels (forced here; by default only where
    the int8 path is avx2 / c) gives bitwise the int8 path's results, at every thread
    count and in every kernel variant this CPU runs, and `info`'s int8 path line says
    so."""
    from pyconv1x1.quant import int8_path
    from pyconv1x1.quant.floatpath import PATH
    from pyconv1x1.quant.steps import QChainStep
    from pyconv1x1 import _backend
    model = quantized(name)
    variants = _backend.runnable_variants()  # (each has its own float and int8 kernels)
    for threads, isa in [(t, None) for t in range(1, 9)] + [
            (t, v) for v in variants for t in (1, 3, 8)]:
        sess = _sessions_both_ways(monkeypatch, model, threads, isa)
        chains = [s for s in sess["float"].program.steps if isinstance(s, QChainStep)]
        on_float = [sess["float"]._kset.chains[id(s)].path == PATH for s in chains]
        assert all(on_float) and not any(
            sess["int"]._kset.chains[id(s)].path == PATH
            for s in sess["int"].program.steps if isinstance(s, QChainStep))
        if chains:
            line = int8_path(sess["float"].program, None, sess["float"]._kset.chains)
            assert f"{len(chains)} of {len(chains)} int8 chains on {PATH}" in line
        for feed in feeds(11, 2):
            a = sess["int"].run(None, feed)
            b = sess["float"].run(None, feed)
            for u, v in zip(a, b):
                assert u.dtype == v.dtype and np.array_equal(u, v), (name, threads)


def test_float_fallback_policy(monkeypatch):
    """auto: the float kernels only where the int8 path is slower (c, the numpy
    reference) and exact; float: wherever exact; int: never; a bad value is an Error."""
    from types import SimpleNamespace
    from pyconv1x1.quant import floatpath
    from pyconv1x1.quant.steps import QConvLayer
    rng = np.random.default_rng(3)
    small = QConvLayer(["a"], rng.integers(-128, 128, (4, 8)), np.zeros(4), np.ones(4))
    # 255 * 128 * 520 > 2^24: a partial sum could be inexact in float32
    big = QConvLayer(["b"], np.full((2, 520), -128), np.zeros(2), np.ones(2))
    # |bias| + 255 * sum|w| = 2^24 - 1 (exact) and 2^24 (not)
    assert 255 * 127 * 518 + 1785 == 2 ** 24 - 1
    edge = QConvLayer(["c"], np.full((1, 518), 127), np.full(1, -1785), np.ones(1))
    over = QConvLayer(["d"], np.full((1, 518), 127), np.full(1, -1786), np.ones(1))
    api = {p: SimpleNamespace(INT8_PATH=p) for p in floatpath.FAST_PATHS + ("avx2", "c")}
    api["reference"] = SimpleNamespace(INT8_PATH="numpy reference")
    for mode, want in (("auto", {"c", "reference"}), ("float", set(api)), ("int", set())):
        monkeypatch.setenv("PYCONV1X1_INT8_FALLBACK", mode)
        for p, a in api.items():
            assert floatpath.use_float([small], a) == (p in want), (mode, p)
            assert floatpath.use_float([edge], a) == (p in want), (mode, p)
            assert not floatpath.use_float([small, big], a)
            assert not floatpath.use_float([over], a)
    monkeypatch.setenv("PYCONV1X1_INT8_FALLBACK", "fast")
    with pytest.raises(pyconv1x1.Error, match="PYCONV1X1_INT8_FALLBACK"):
        floatpath.mode()


@pytest.mark.parametrize("mode", ["int", "auto"])
def test_numpy_reference_api_runs_models_bitwise(quantized, monkeypatch, mode):
    """Where the int8 kernels are not built, quant.reference runs the same kernel API
    (int) or the chains go to the float kernels (auto): bitwise the compiled results."""
    from pyconv1x1.quant import reference, steps
    for name in ("qdq_s8_per_channel", "qop_u8", "dynamic"):
        model = quantized(name).SerializeToString()
        feed = feeds(5, 1)[0]
        want = pyconv1x1.InferenceSession(model, threads=2).run(None, feed)
        with monkeypatch.context() as m:
            m.setattr(steps, "_kernels_for", lambda kernels: reference)
            m.setenv("PYCONV1X1_INT8_FALLBACK", mode)
            got = pyconv1x1.InferenceSession(model, threads=2).run(None, feed)
        for a, b in zip(want, got):
            assert a.dtype == b.dtype and np.array_equal(a, b), (name, mode)


def test_float_fallback_leaves_small_runs_to_the_int8_path():
    """A FloatQChain given the int8 chain runs runs below FLOAT_MIN_MACS on it, larger
    ones on the float kernels: bitwise the same either way."""
    from pyconv1x1 import _backend
    from pyconv1x1.quant import floatpath, kernels
    from pyconv1x1.quant.steps import QConvLayer
    rng = np.random.default_rng(4)
    w = lambda *shape: rng.integers(-128, 128, shape)  # noqa: E731
    layers = [QConvLayer(["a"], w(24, 16), rng.integers(-999, 999, 24),
                         rng.uniform(1e-4, 1e-3, 24), 7, 3, 250),
              QConvLayer(["b"], w(16, 24), rng.integers(-999, 999, 16),
                         rng.uniform(1e-4, 1e-3, 16), 100, 0, 255)]
    api = kernels()
    ints = api.QChain([l.kernel(api) for l in layers], False)
    both = floatpath.FloatQChain(layers, False, api, _backend.kernels(), small=ints)
    alone = floatpath.FloatQChain(layers, False, api, _backend.kernels())
    calls = []
    both.chain = _Spy(both.chain, calls)
    for pixels, on_float in ((5, False), (floatpath.FLOAT_MIN_MACS // (2 * 768) + 1, True)):
        x = rng.integers(0, 256, (2, 16, pixels), dtype=np.uint8)
        want, got, ref = (np.empty((2, 16, pixels), np.uint8) for _ in range(3))
        ints.run_u8(x, want, 2)
        both.run_u8(x, got, 2)
        alone.run_u8(x, ref, 2)
        assert np.array_equal(got, want) and np.array_equal(ref, want)
        assert bool(calls) == on_float
        calls.clear()


class _Spy:
    def __init__(self, chain, calls):
        self.chain, self.calls, self.cout = chain, calls, chain.cout

    def bind(self, *args):
        self.calls.append(args)
        return self.chain.bind(*args)


def test_info_names_the_paths_chains_take(monkeypatch, tmp_path):
    """A chain whose k < AMX_MIN_K leaves AMX for the next path: the info line says so."""
    from pyconv1x1.quant import int8_path, kernels
    from pyconv1x1.quant.steps import QChainStep
    model = float_model(chans=(8, 16, 12), residual=False)
    q = quantize(tmp_path, "paths", model)
    monkeypatch.setenv("PYCONV1X1_INT8_FALLBACK", "int")
    sess = pyconv1x1.InferenceSession(q.SerializeToString())
    chains = [sess._kset.chains[id(s)] for s in sess.program.steps
              if isinstance(s, QChainStep)]
    line = int8_path(sess.program, None, sess._kset.chains)
    assert line.startswith(kernels().INT8_PATH)
    other = sorted({c.path for c in chains} - {kernels().INT8_PATH})
    assert (f"(chains on {', '.join(other)})" in line) == bool(other), line
    if kernels().INT8_PATH == "amx":
        assert other, line  # k = 8, 16 < 64


@pytest.mark.parametrize("threads", THREADS)
def test_fast_path_of_a_float_edged_int8_chain(threads):
    """A model that is one int8 chain with float32 in and out runs, once a feed of its
    shape was validated, through the kernel's BoundQChain (run()'s C fast path): bitwise
    the checked path's results, a fresh output each run the caller still holds, and every
    unusual feed still goes through the checked path and its errors."""
    sess = pyconv1x1.InferenceSession(qop_model().SerializeToString(), threads=threads)
    rng = np.random.default_rng(9)
    xs = [(rng.standard_normal((1, 4, 3, 4)) * 3).astype(np.float32) for _ in range(4)]
    first = sess.run(None, {"x": xs[0]})[0]
    on_float = [type(c).__name__ for c in sess._kset.chains.values()] == ["FloatQChain"]
    # (a chain on the exact float fallback, where the int8 path is the slow `c` one, has
    # no int8 fast path: its runs take the checked path, and the checks below hold)
    assert type(sess._fast_chain).__name__ == ("NoneType" if on_float else "BoundQChain")
    kept = []
    for x in xs:
        want = sess._run(None, {"x": x})[0]
        got = sess.run(None, {"x": x})[0]
        assert got.dtype == np.float32 and np.array_equal(got, want)
        assert all(got is not k for k in kept)
        kept.append(got)
    assert np.array_equal(kept[0], first)
    got = sess.run(None, {"x": xs[1]})[0]
    got[...] = 7  # a caller's edit of a dropped output never leaks into the next one
    del got
    assert np.array_equal(sess.run(None, {"x": xs[2]})[0], kept[2])
    strided = np.empty((1, 4, 3, 8), np.float32)[..., ::2]
    strided[...] = xs[3]
    assert np.array_equal(sess.run(None, {"x": strided})[0], kept[3])
    x64 = xs[0].astype(np.float64)
    with pytest.raises(InputError, match="'x'.*float64"):
        sess.run(None, {"x": x64})
    with pytest.raises(InputError, match="'x'.*int8"):
        sess.run(None, {"x": xs[0].astype(np.int8)})
    with pytest.raises(InputError, match="'x'"):
        sess.run(None, {"x": xs[0][:, :3]})
    with pytest.raises(InputError):
        sess.run(None, {"x": xs[0], "z": xs[0]})
    assert np.array_equal(sess.run(None, {"x": xs[0]})[0], kept[0])
