"""The int8 matrix-vector kernel (pc1q_gv_* in _qkernels.h: output channels in the vector
lanes, for runs of very few pixels on the VNNI paths) against the integer numpy reference
and against the same chain forced onto the panel kernels: bitwise, on every path of every
variant module built here, at thread counts 1..8; and a quantized model on a 1x1 map end
to end against onnxruntime."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import pyconv1x1
from pyconv1x1 import _backend
from pyconv1x1.quant import reference as ref

# every path of every variant module; thread_small_runs (autouse): every thread count runs
from test_qkernels import CASES, IDS, QK, rand_layer, thread_small_runs  # noqa: F401


def panel_only(qk, monkeypatch):
    """Every run of qk on the panel kernels from here on (this test)."""
    monkeypatch.setattr(qk, "GEMV_MAX_PIXELS", 0)
    monkeypatch.setattr(qk, "GEMV_BIG_PIXELS", 0)


def small_runs(qk):
    """(n, p) of every run the matrix-vector kernel takes by default (n * p at most
    GEMV_MAX_PIXELS), then the first sizes past it."""
    m = qk.GEMV_MAX_PIXELS
    assert 1 <= m <= 16
    runs = [(n, p) for n in range(1, m + 1) for p in range(1, m + 1) if n * p <= m]
    return runs + [(1, m + 1), (m + 1, 1), (2, m // 2 + 1)]


def chain_specs(rng, c, couts, **kw):
    specs, k = [], c
    for cout in couts:
        specs.append(rand_layer(rng, k, cout, **kw))
        k = cout
    return specs


def run(qk, specs, x, out_float, path, threads):
    ch = qk.QChain([qk.QLayer(*s) for s in specs], out_float, path=path)
    y = np.empty((x.shape[0], ch.cout, x.shape[2]), np.float32 if out_float else np.uint8)
    if x.dtype == np.float32:
        ch.run_f32(x, 0.04, 117, y, threads)
    else:
        ch.run_u8(x, y, threads)
    return y


def want(specs, x, out_float):
    if x.dtype == np.float32:
        return ref.chain(x, specs, out_float, in_scale=0.04, in_zp=117)
    return ref.chain(x, specs, out_float)


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_every_shape_edge(variant, path):
    """cout 1..17, 33, 100 x k 1..9, 64, 255, 1000, cycling through the small runs, zero
    points, clamps, uint8 and float32 input and output."""
    qk = QK[variant]
    rng = np.random.default_rng(7)
    runs = small_runs(qk)
    zps = [(0, 0, 255), (3, 3, 250), (128, 128, 255), (255, 0, 255), (128, 20, 230)]
    i = 0
    for cout in list(range(1, 18)) + [33, 100]:
        for k in list(range(1, 10)) + [64, 255, 1000]:
            n, p = runs[i % len(runs)]
            zp, lo, hi = zps[i % len(zps)]
            out_float = i % 3 == 1
            specs = chain_specs(rng, k, [cout], zp=zp, lo=lo, hi=hi)
            if i % 4 == 3:
                x = (rng.standard_normal((n, k, p)) * 4).astype(np.float32)
            else:
                x = rng.integers(0, 256, (n, k, p), dtype=np.uint8)
            got = run(qk, specs, x, out_float, path, 1 + i % 3)
            np.testing.assert_array_equal(got, want(specs, x, out_float),
                                          err_msg=f"cout={cout} k={k} n={n} p={p}")
            i += 1


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
@pytest.mark.parametrize("out_float", [False, True])
def test_chains_at_every_thread_count(variant, path, out_float, monkeypatch):
    """1- and 3-layer chains on every small run, 1..8 threads: the reference's result,
    and bitwise the panel kernels' result."""
    qk = QK[variant]
    rng = np.random.default_rng(8)
    clamped = [0, 0]
    for ci, (c, couts) in enumerate([(1000, [100]), (64, [37, 9, 130]), (7, [17, 33, 5]),
                                     (300, [1])]):
        specs = chain_specs(rng, c, couts)
        for n, p in small_runs(qk):
            x = rng.integers(0, 256, (n, c, p), dtype=np.uint8)
            x0 = x.copy()
            w = want(specs, x, out_float)
            for threads in range(1, 9):
                np.testing.assert_array_equal(run(qk, specs, x, out_float, path, threads), w,
                                              err_msg=f"{c} {couts} n={n} p={p} "
                                              f"threads={threads}")
            np.testing.assert_array_equal(x, x0)
            if not out_float:
                clamped[0] += int((w == specs[-1][4]).sum())
                clamped[1] += int((w == specs[-1][5]).sum())
    if not out_float:
        assert clamped[0] > 10 and clamped[1] > 10
    # the same runs on the panel kernels: bitwise the same
    rng = np.random.default_rng(9)
    specs = chain_specs(rng, 200, [70, 20, 41])
    xs = [rng.integers(0, 256, (n, 200, p), dtype=np.uint8) for n, p in small_runs(qk)]
    ours = [run(qk, specs, x, out_float, path, 3) for x in xs]
    panel_only(qk, monkeypatch)
    for x, y in zip(xs, ours):
        np.testing.assert_array_equal(run(qk, specs, x, out_float, path, 3), y)


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_extreme_weights_and_zero_points(variant, path):
    """-128 and 127 weights against 0 and 255 inputs with accumulators near the int32
    bound; zero points 0, 3, 128, 255; Relu-like clamps (lo = zp)."""
    qk = QK[variant]
    k = 257
    for wv, xv in [(127, 255), (-128, 255), (-128, 0), (127, 1)]:
        for zp, lo, hi in [(0, 0, 255), (3, 3, 255), (128, 128, 255), (255, 0, 255)]:
            w = np.full((11, k), wv, np.int8)
            w[1, ::2] = -w[1, ::2] - (wv < 0)
            w[5:, 3] = -128
            bias = np.zeros(11, np.int32)
            bias[:2] = [2 ** 31 - 1 - 255 * 128 * k, -(2 ** 31 - 1 - 255 * 128 * k)]
            scale = np.full(11, 3e-3, np.float32)
            scale[:2] = [1e-6, 1e-5]
            spec = (w, bias, scale, zp, lo, hi, None)
            for n, p in [(1, 1), (2, 2), (1, 3)]:
                x = np.full((n, k, p), xv, np.uint8)
                for out_float in (False, True):
                    np.testing.assert_array_equal(run(qk, [spec], x, out_float, path, 2),
                                                  ref.chain(x, [spec], out_float))


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_dequantizing_epilogue(variant, path, monkeypatch):
    """A uint8 chain whose result is dequantized in its last epilogue (BoundQChain with
    out_dq): dequantize_u8 of the reference, bitwise, with and without the panel
    kernels."""
    qk = QK[variant]
    rng = np.random.default_rng(10)
    specs = chain_specs(rng, 96, [40, 300])
    ch = qk.QChain([qk.QLayer(*s) for s in specs], False, path=path)
    got, runs = {}, small_runs(qk)
    for forced in (False, True):
        if forced:
            panel_only(qk, monkeypatch)
        for n, p in runs:
            x = (rng.standard_normal((n, 96, p)) * 3).astype(np.float32) if not forced \
                else got[(n, p)][0]
            for threads in (1, 2, 5):
                b = qk.BoundQChain(ch, (n, 96, p), (n, 300, p), (0.05, 120), (0.02, 7),
                                   threads)
                y = b.try_call(x)
                q = ref.chain(x, specs, False, in_scale=0.05, in_zp=120)
                np.testing.assert_array_equal(y, ref.dequantize(q, 0.02, 7))
                if forced:
                    np.testing.assert_array_equal(y, got[(n, p)][1])
                got[(n, p)] = (x, y)


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_big_chains_up_to_gemv_big_pixels(variant, path, monkeypatch):
    """Chains with GEMV_BIG_MACS weights or more take the kernel up to GEMV_BIG_PIXELS
    pixels, in groups of 4 (the last one partial): the reference's and the panel
    kernels' results, bitwise; the sizes around both bounds."""
    qk = QK[variant]
    rng = np.random.default_rng(11)
    k = 520
    cout = -(-qk.GEMV_BIG_MACS // k) + 3
    specs = chain_specs(rng, k, [cout])
    small = chain_specs(rng, 8, [5, 3])
    specs3 = chain_specs(rng, k, [cout, 9, 40])  # 3 layers: one big, two small
    m = max(qk.GEMV_BIG_PIXELS, qk.GEMV_MAX_PIXELS)
    xs = []
    for pixels in range(1, m + 2):
        for n, p in [(pixels, 1), (1, pixels)]:
            for sp in (specs, small, specs3):
                xs.append((sp, rng.integers(0, 256, (n, sp[0][0].shape[1], p),
                                            dtype=np.uint8), pixels % 2 == 0))
    ours = []
    for sp, x, out_float in xs:
        for threads in (1, 2, 4, 7):
            y = run(qk, sp, x, out_float, path, threads)
            np.testing.assert_array_equal(y, want(sp, x, out_float))
        ours.append(y)
    panel_only(qk, monkeypatch)
    for (sp, x, out_float), y in zip(xs, ours):
        np.testing.assert_array_equal(run(qk, sp, x, out_float, path, 3), y)


# -- end to end: a quantized model on a 1x1 map --------------------------------------
def head_model(shape):
    """Two 1x1 convs (relu between) on a float32 input of `shape` (a head: 1x1 maps)."""
    rng = np.random.default_rng(0)
    c = shape[1]
    inits, nodes, x = [], [], "x"
    for i, (k, cout) in enumerate([(c, 96), (96, 37)]):
        w = (rng.standard_normal((cout, k, 1, 1)) * (0.5 / np.sqrt(k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [f"c{i}"],
                                      name=f"conv{i}"))
        x = f"c{i}"
        if i == 0:
            nodes.append(helper.make_node("Relu", [x], ["r0"], name="relu0"))
            x = "r0"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT,
                                       [shape[0], 37] + list(shape[2:]))], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model


@pytest.mark.parametrize("fmt", ["qdq", "qop"])
def test_quantized_head_matches_onnxruntime_and_the_panel_kernels(fmt, tmp_path,
                                                                 monkeypatch):
    ort = pytest.importorskip("onnxruntime")
    quantization = pytest.importorskip("onnxruntime.quantization")
    qk = _backend.qkernels()
    for shape in [(1, 200, 1, 1), (3, 200, 1, 1), (1, 200, 2, 2), (2, 200, 3, 1)]:
        rng = np.random.default_rng(shape[0] * 10 + shape[2])
        feeds = [{"x": (rng.standard_normal(shape) * 1.5).astype(np.float32)}
                 for _ in range(5)]

        class Calibration(quantization.CalibrationDataReader):
            def __init__(self):
                self.it = iter(feeds[1:])

            def get_next(self):
                return next(self.it, None)

        src, dst = tmp_path / "f.onnx", tmp_path / f"{fmt}{shape[0]}{shape[2]}.onnx"
        onnx.save(head_model(shape), src)
        quantization.quantize_static(
            str(src), str(dst), Calibration(), per_channel=True,
            quant_format=(quantization.QuantFormat.QDQ if fmt == "qdq"
                          else quantization.QuantFormat.QOperator),
            activation_type=quantization.QuantType.QUInt8,
            weight_type=quantization.QuantType.QInt8)
        blob = dst.read_bytes()
        model = onnx.load_from_string(blob)
        producer = {o: nd for nd in model.graph.node for o in nd.output}
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        node = producer["y"]
        while node.op_type == "Identity":
            node = producer[node.input[0]]
        assert node.op_type == "DequantizeLinear"
        step = float(inits[node.input[1]])  # the output's quantization step
        theirs = ort.InferenceSession(blob, providers=["CPUExecutionProvider"]).run(
            None, feeds[0])[0]
        ours = [pyconv1x1.InferenceSession(blob, threads=t).run(None, feeds[0])[0]
                for t in (1, 2, 4)]
        for y in ours[1:]:
            np.testing.assert_array_equal(y, ours[0])
        assert np.abs(ours[0] - theirs).max() <= step * 1.0001, shape
        assert np.mean(ours[0] == theirs) >= 0.95
        with monkeypatch.context() as m:
            m.setattr(qk, "GEMV_MAX_PIXELS", 0)
            m.setattr(qk, "GEMV_BIG_PIXELS", 0)
            panel = pyconv1x1.InferenceSession(blob, threads=2).run(None, feeds[0])[0]
        np.testing.assert_array_equal(panel, ours[0])
