"""The int8 kernels (pyconv1x1/_qkernels.pyx.tp, _qkernels.h) against the integer numpy
reference (pyconv1x1/quant/reference.py): bitwise, on every int8 path this CPU runs and in
every kernel variant built here, at thread counts 1..8."""
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import NEUTRAL_CWD, native_only
import pyconv1x1
from pyconv1x1 import _backend
from pyconv1x1.quant import reference as ref

VARIANTS = _backend.runnable_variants()
QK = {v: _backend.qkernels(v) for v in VARIANTS}
QDEFAULT = _backend.qkernels()
# (variant, path): every path in every variant's module (a module's gather and epilogues
# are vector code of its own ISA, shared by the paths without fused kernels)
CASES = [(v, p) for v in VARIANTS for p in QK[v].available_paths()]
IDS = [f"{v}-{p}" for v, p in CASES]


@pytest.fixture(autouse=True)
def thread_small_runs(monkeypatch):
    """The kernels run small chains on fewer threads; here every thread count runs."""
    for qk in QK.values():
        monkeypatch.setattr(qk, "MACS_PER_THREAD", 0)


def rand_layer(rng, k, cout, zp=None, lo=None, hi=None, spread=300.0):
    """A layer whose outputs spread over about +-spread quantization steps, so they
    saturate at both ends of [lo, hi] and round at every fraction."""
    w = rng.integers(-128, 128, (cout, k), dtype=np.int8)
    bias = rng.integers(-20000, 20000, cout).astype(np.int32)
    typical = np.sqrt(k) * 74.0 * 128.0 + 20000.0
    scale = (spread / typical * rng.uniform(0.5, 2.0, cout)).astype(np.float32)
    zp = int(rng.integers(0, 256)) if zp is None else zp
    lo = int(rng.integers(0, 40)) if lo is None else lo
    hi = int(rng.integers(215, 256)) if hi is None else hi
    fbias = rng.standard_normal(cout).astype(np.float32)
    return (w, bias, scale, zp, lo, hi, fbias)


def make_chain(qk, specs, out_float, path):
    return qk.QChain([qk.QLayer(*s) for s in specs], out_float, path=path)


def run_u8(ch, x, out_float, threads):
    y = np.empty((x.shape[0], ch.cout, x.shape[2]), np.float32 if out_float else np.uint8)
    ch.run_u8(x, y, threads)
    return y


# (n, cin, pixels, [cout per layer])
SHAPES = [
    (1, 1, 1, [1]),
    (1, 3, 7, [5]),
    (2, 5, 33, [3, 17]),
    (1, 17, 95, [9, 1, 13]),
    (3, 1, 64, [8]),
    (1, 300, 41, [20, 7]),
    (2, 8, 1, [300]),
    (1, 64, 129, [33, 64, 16]),
    (4, 24, 50, [144, 24]),
]


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
@pytest.mark.parametrize("out_float", [False, True])
def test_chains_exact(variant, path, out_float):
    rng = np.random.default_rng(1)
    qk = QK[variant]
    clamped = [0, 0]
    for n, c, p, couts in SHAPES:
        specs, k = [], c
        for cout in couts:
            specs.append(rand_layer(rng, k, cout))
            k = cout
        x = rng.integers(0, 256, (n, c, p), dtype=np.uint8)
        x0 = x.copy()
        want = ref.chain(x, specs, out_float)
        ch = make_chain(qk, specs, out_float, path)
        assert (ch.cin, ch.cout, ch.path) == (c, couts[-1], path)
        for threads in (1, 2, 3, 8):
            got = run_u8(ch, x, out_float, threads)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want, err_msg=f"{(n, c, p, couts)} "
                                          f"threads={threads}")
        np.testing.assert_array_equal(x, x0)  # the caller's input is left alone
        if not out_float:
            last = specs[-1]
            clamped[0] += int((want == last[4]).sum())
            clamped[1] += int((want == last[5]).sum())
    if not out_float:  # saturation at both ends was exercised
        assert clamped[0] > 10 and clamped[1] > 10


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_every_thread_count_bitwise(variant, path):
    """1..8 threads; few tiles split output channels too (fused for one layer, layer by
    layer for a chain), u8 and f32 in and out."""
    rng = np.random.default_rng(2)
    qk = QK[variant]
    for n, c, p, couts in [(1, 37, 300, [70, 5]), (1, 100, 1, [130]), (3, 16, 2, [24]),
                           (2, 40, 1, [64, 17, 50]), (1, 19, 3, [40, 30])]:
        specs, k = [], c
        for cout in couts:
            specs.append(rand_layer(rng, k, cout))
            k = cout
        x = rng.integers(0, 256, (n, c, p), dtype=np.uint8)
        xf = (rng.standard_normal((n, c, p)) * 2).astype(np.float32)
        want = ref.chain(x, specs)
        wantf = ref.chain(xf, specs, True, in_scale=0.03, in_zp=100)
        ch = make_chain(qk, specs, False, path)
        chf = make_chain(qk, specs, True, path)
        for threads in range(1, 9):
            np.testing.assert_array_equal(run_u8(ch, x, False, threads), want)
            y = np.empty(wantf.shape, np.float32)
            chf.run_f32(xf, 0.03, 100, y, threads)
            np.testing.assert_array_equal(y, wantf)
    assert qk.pool_workers() >= 1  # the pool did run tasks on other threads


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_big_accumulators_and_zero_points(variant, path):
    """Extreme weights and inputs (accumulators near the int32 bound), zero points 0,
    1, 254, 255 and Relu-like clamps (lo = zp)."""
    qk = QK[variant]
    k = 300
    for wv, xv in [(127, 255), (-128, 255), (-128, 0), (127, 1)]:
        for zp, lo, hi in [(0, 0, 255), (255, 0, 255), (1, 1, 200), (254, 3, 254)]:
            w = np.full((3, k), wv, np.int8)
            w[1, ::2] = -w[1, ::2] - (wv < 0)
            bias = np.array([2 ** 31 - 1 - 255 * 128 * k, -(2 ** 31 - 1 - 255 * 128 * k),
                             0], np.int32)
            scale = np.array([1e-6, 1e-5, 3.0], np.float32)
            spec = (w, bias, scale, zp, lo, hi, None)
            x = np.full((2, k, 37), xv, np.uint8)
            ch = make_chain(qk, [spec], False, path)
            np.testing.assert_array_equal(run_u8(ch, x, False, 2), ref.chain(x, [spec]))
            chf = make_chain(qk, [spec], True, path)
            np.testing.assert_array_equal(run_u8(chf, x, True, 1),
                                          ref.chain(x, [spec], True))


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_inner_requantization_far_out_of_range(variant, path):
    """An inner layer whose (float)acc * scale reaches about 3e2, 1e5 (past int16), 1e9
    and 1e12 (past int32: the epilogue must clamp before it rounds) steps: its clamped,
    rounded bytes still feed the next layer exactly."""
    qk = QK[variant]
    rng = np.random.default_rng(12)
    for spread in (300.0, 1e5, 1e9, 1e12):
        for zp, lo, hi in [(0, 0, 255), (128, 128, 255), (255, 0, 255), (7, 3, 201)]:
            first = rand_layer(rng, 12, 9, zp, lo, hi, spread=spread)
            specs = [first, rand_layer(rng, 9, 5)]
            x = rng.integers(0, 256, (2, 12, 70), dtype=np.uint8)
            for out_float in (False, True):
                ch = make_chain(qk, specs, out_float, path)
                np.testing.assert_array_equal(run_u8(ch, x, out_float, 1),
                                              ref.chain(x, specs, out_float))


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_run_f32_quantizes_half_to_even(variant, path):
    """x / in_scale = 2.5 -> 2, 3.5 -> 4, -0.5 -> -0 ...; NaN -> 0; infinities clamp."""
    qk = QK[variant]
    halves = np.array([0.5, 1.5, 2.5, 3.5, -0.5, -1.5, 126.5, 127.5, -2.5, 1000.0, -1e30,
                       np.inf, -np.inf, np.nan, 0.0, -0.0], np.float32)
    for in_scale, in_zp in [(1.0, 0), (0.5, 128), (0.25, 3), (1.0, 255)]:
        x = (halves * np.float32(in_scale)).reshape(1, 1, -1)
        # identity layer: w = 1, scale 1, zp 0: y = the quantized input
        spec = (np.ones((1, 1), np.int8), np.zeros(1, np.int32), np.ones(1, np.float32),
                0, 0, 255, None)
        ch = make_chain(qk, [spec], False, path)
        y = np.empty((1, 1, x.shape[2]), np.uint8)
        ch.run_f32(x, in_scale, in_zp, y, 1)
        expect = np.clip(np.rint(np.nan_to_num(halves, nan=-1e9)) + in_zp, 0, 255)
        np.testing.assert_array_equal(y[0, 0], expect.astype(np.uint8))
        np.testing.assert_array_equal(y, ref.quantize(x, in_scale, in_zp))
    rng = np.random.default_rng(3)
    for n, c, p, couts in SHAPES[:6]:
        specs, k = [], c
        for cout in couts:
            specs.append(rand_layer(rng, k, cout))
            k = cout
        x = (rng.standard_normal((n, c, p)) * 3).astype(np.float32)
        x.flat[::7] = np.float32(0.05) * (rng.integers(-300, 300, x.flat[::7].size) + 0.5)
        for out_float in (False, True):
            want = ref.chain(x, specs, out_float, in_scale=0.05, in_zp=131)
            ch = make_chain(qk, specs, out_float, path)
            for threads in (1, 3):
                y = np.empty(want.shape, want.dtype)
                ch.run_f32(x, 0.05, 131, y, threads)
                np.testing.assert_array_equal(y, want)


def near_half_quotients(rng, scale, size):
    """float32 x whose x / scale lies within a few ulps of a half-integer in [-300, 300]
    (where a quotient computed as x * (1 / scale) could round the other way), and
    others spread over the range, zeros, subnormals and non-finite values."""
    s = np.float32(scale)
    h = (rng.integers(-300, 300, size) + 0.5).astype(np.float32)
    with np.errstate(all="ignore"):  # h * s overflows at the largest scales
        x = h * s
        for _ in range(4):  # move each up or down by up to 4 ulps
            step = rng.integers(-1, 2, size)
            x = np.where(step > 0, np.nextafter(x, np.float32(np.inf)),
                         np.where(step < 0, np.nextafter(x, np.float32(-np.inf)), x))
        spread = (rng.uniform(-300, 300, size) * s).astype(np.float32)
    x = np.where(rng.random(size) < 0.3, spread, x).astype(np.float32)
    x[::17] = np.array([0.0, -0.0, 1e-42, np.inf, -np.inf, np.nan], np.float32)[
        rng.integers(0, 6, x[::17].size)]
    return x


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_run_f32_quotients_near_half(variant, path):
    """The gather quantizes x / in_scale exactly (round half to even of the float32
    quotient) also where the quotient is a few ulps from a half-integer, at scales that
    are not powers of two and at extreme ones (1 / scale subnormal or infinite)."""
    qk = QK[variant]
    rng = np.random.default_rng(11)
    spec = (np.ones((1, 1), np.int8), np.zeros(1, np.int32), np.ones(1, np.float32),
            0, 0, 255, None)
    ch = make_chain(qk, [spec], False, path)
    for scale in (0.1, 0.0173, 3.7, 1 / 3, 0.05, 2e-38, 1e-45, 3e38, 1.7e-3):
        for zp in (0, 131, 255):
            x = near_half_quotients(rng, scale, 515).reshape(1, 1, -1)
            y = np.empty(x.shape, np.uint8)
            ch.run_f32(x, scale, zp, y, 1)
            np.testing.assert_array_equal(y, ref.quantize(x, scale, zp))
            q = np.empty(x.shape, np.uint8)
            qk.quantize_f32(x, scale, zp, q, 1)
            np.testing.assert_array_equal(q, ref.quantize(x, scale, zp))


def test_elementwise_helpers():
    rng = np.random.default_rng(4)
    for qk in QK.values():
        for shape in [(1,), (3, 5, 7), (2, 70000)]:
            x = (rng.standard_normal(shape) * 4).astype(np.float32)
            x.flat[::5] = np.float32(0.125) * (rng.integers(-900, 900, x.flat[::5].size)
                                               + 0.5)
            q = np.empty(shape, np.uint8)
            for threads in (1, 4):
                qk.quantize_f32(x, 0.125, 77, q, threads)
                np.testing.assert_array_equal(q, ref.quantize(x, 0.125, 77))
            d = np.empty(shape, np.float32)
            qk.dequantize_u8(q, 0.03, 77, d, 3)
            np.testing.assert_array_equal(d, ref.dequantize(q, 0.03, 77))
            a = rng.integers(0, 256, shape, dtype=np.uint8)
            b = rng.integers(0, 256, shape, dtype=np.uint8)
            c = np.empty(shape, np.uint8)
            for args in [(3, 0.02, 250, 0.07, 9, 0.05, 0, 255),
                         (128, 0.1, 128, 0.1, 128, 0.1, 128, 255),
                         (0, 1.0, 255, 0.5, 10, 0.75, 12, 200)]:
                za, sa, zb, sb, zc, sc, lo, hi = args
                qk.qadd_u8(a, za, sa, b, zb, sb, c, zc, sc, lo, hi, 2)
                np.testing.assert_array_equal(c, ref.qadd(a, za, sa, b, zb, sb, zc, sc,
                                                          lo, hi))
    # the halfway case of the add: (1 + 1.5) / 1 = 2.5 -> 2
    qk = QDEFAULT
    a, b, c = np.array([1], np.uint8), np.array([3], np.uint8), np.empty(1, np.uint8)
    qk.qadd_u8(a, 0, 1.0, b, 0, 0.5, c, 0, 1.0, 0, 255, 1)
    assert c[0] == 2


def test_paths_reported():
    qk = QDEFAULT
    paths = qk.available_paths()
    # the fastest, unless PYCONV1X1_INT8_PATH forces one (the suite may run that way)
    assert paths[-1] == "c"
    assert qk.INT8_PATH == (os.environ.get("PYCONV1X1_INT8_PATH") or paths[0])
    assert set(paths) <= set(qk.PATHS)
    assert _backend.int8_path() == qk.INT8_PATH
    if _backend._machine() == "x86_64":
        flags = _backend._linux_cpu_flags() or set()
        assert ("avx512vnni" in paths) == ({"avx512_vnni", "avx512bw"} <= flags)
        assert ("avxvnni" in paths) == ("avx_vnni" in flags)
        assert ("avx2" in paths) == ("avx2" in flags)
        assert ("avx512bw" in paths) == ({"avx512f", "avx512bw"} <= flags)
        if "amx" in paths:
            assert {"amx_tile", "amx_int8"} <= flags


def test_default_path_of_a_chain():
    """AMX (64-deep k groups) is the default only where every layer has k >= 64;
    otherwise the next path; the results are the same."""
    qk = QDEFAULT
    paths = qk.available_paths()
    default = qk.INT8_PATH  # paths[0], or the one PYCONV1X1_INT8_PATH forces
    rng = np.random.default_rng(6)
    small, big = rand_layer(rng, 24, 70), rand_layer(rng, 70, 64)
    ch_small = make_chain(qk, [small, big], False, None)
    ch_big = make_chain(qk, [big], False, None)
    assert ch_big.path == default
    assert ch_small.path == (paths[paths.index("amx") + 1] if default == "amx"
                             else default)
    x = rng.integers(0, 256, (2, 24, 99), dtype=np.uint8)
    np.testing.assert_array_equal(run_u8(ch_small, x, False, 2),
                                  ref.chain(x, [small, big]))


@native_only
def test_forced_path_by_environment():
    # the package this test imports, from outside the source tree (see NEUTRAL_CWD)
    env = dict(os.environ, PYCONV1X1_INT8_PATH="c",
               PYTHONPATH=os.path.dirname(os.path.dirname(pyconv1x1.__file__)))
    code = "from pyconv1x1 import _backend; print(_backend.int8_path())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True, cwd=NEUTRAL_CWD)
    assert out.stdout.strip() == "c"


def _bad_layer_args():
    w = np.ones((4, 3), np.int8)
    b = np.zeros(4, np.int32)
    s = np.ones(4, np.float32)
    yield (w.astype(np.float32), b, s, 0, 0, 255), "int8"
    yield (w[0], b, s, 0, 0, 255), "int8"
    yield (np.ones((0, 3), np.int8), b[:0], s[:0], 0, 0, 255), "cout >= 1"
    yield (w, b[:3], s, 0, 0, 255), "bias"
    yield (w, b.astype(np.int64), s, 0, 0, 255), "bias"
    yield (w, b, s[:3], 0, 0, 255), "scale"
    for bad in (0.0, -1.0, np.nan, np.inf):
        yield (w, b, np.full(4, bad, np.float32), 0, 0, 255), "scale"
    yield (w, b, s, 256, 0, 255), "zp_out"
    yield (w, b, s, -1, 0, 255), "zp_out"
    yield (w, b, s, 1.5, 0, 255), "zp_out"
    yield (w, b, s, 0, 9, 8), "lo=9 > hi=8"
    yield (w, b, s, 0, 0, 256), "hi"
    yield (w, b, s, 0, 0, 255, np.zeros(3, np.float32)), "fbias"
    yield (w, b, s, 0, 0, 255, np.full(4, np.nan, np.float32)), "fbias"
    yield (w, np.full(4, 2 ** 31 - 100, np.int32), s, 0, 0, 255), "overflow"


@pytest.mark.parametrize("args,msg", list(_bad_layer_args()))
def test_bad_layers_raise(args, msg):
    with pytest.raises(ValueError, match=msg):
        QDEFAULT.QLayer(*args)


def test_bad_chains_and_runs_raise():
    qk = QDEFAULT
    rng = np.random.default_rng(5)
    l1 = qk.QLayer(*rand_layer(rng, 6, 4))
    l2 = qk.QLayer(*rand_layer(rng, 5, 2))
    for layers, msg in [([], "non-empty"), ([l1, l2], "k=5"), ([l1, "x"], "QLayer")]:
        with pytest.raises(ValueError, match=msg):
            qk.QChain(layers, False)
    with pytest.raises(ValueError, match="cannot run here"):
        qk.QChain([l1], False, path="sse9")
    ch = qk.QChain([l1], False)
    chf = qk.QChain([l1], True)
    x = rng.integers(0, 256, (2, 6, 9), dtype=np.uint8)
    y = np.zeros((2, 4, 9), np.uint8)
    ro = np.zeros((2, 4, 9), np.uint8)
    ro.setflags(write=False)
    xs = np.zeros((2, 4, 4), np.uint8)  # same size as its output: overlap testable
    sq = qk.QChain([qk.QLayer(*rand_layer(rng, 4, 4))], False)
    bad_runs = [
        (lambda: ch.run_u8(x.astype(np.float32), y, 1), "uint8"),
        (lambda: ch.run_u8(x[:, :5], y, 1), r"\[n, 6, p\]"),
        (lambda: ch.run_u8(x[..., ::2], y[..., :5], 1), "C-contiguous"),
        (lambda: ch.run_u8(x.tolist(), y, 1), "list"),
        (lambda: ch.run_u8(x, y[:1], 1), r"\[2, 4, 9\]"),
        (lambda: ch.run_u8(x, y.astype(np.float32), 1), "uint8"),
        (lambda: chf.run_u8(x, y, 1), "float32"),
        (lambda: ch.run_u8(x, ro, 1), "writeable"),
        (lambda: ch.run_u8(x, y, 0), "threads"),
        (lambda: ch.run_u8(x, y, 1.5), "threads"),
        (lambda: sq.run_u8(xs, xs, 1), "overlap"),
        (lambda: ch.run_f32(x, 0.1, 0, y, 1), "float32"),
        (lambda: ch.run_f32(x.astype(np.float32), 0.0, 0, y, 1), "in_scale"),
        (lambda: ch.run_f32(x.astype(np.float32), np.nan, 0, y, 1), "in_scale"),
        (lambda: ch.run_f32(x.astype(np.float32), 1e-50, 0, y, 1), "in_scale"),
        (lambda: ch.run_f32(x.astype(np.float32), "1", 0, y, 1), "in_scale"),
        (lambda: ch.run_f32(x.astype(np.float32), 0.1, 300, y, 1), "in_zp"),
        (lambda: qk.quantize_f32(x, 0.1, 0, y, 1), "float32"),
        (lambda: qk.quantize_f32(x.astype(np.float32), 0.1, 0, y, 1), "shape"),
        (lambda: qk.quantize_f32(x.astype(np.float32), -0.1, 0, x.copy(), 1), "scale"),
        (lambda: qk.dequantize_u8(x, 0.1, 0, x.copy(), 1), "float32"),
        (lambda: qk.dequantize_u8(x, 0.1, -3, x.astype(np.float32), 1), "zp"),
        (lambda: qk.qadd_u8(x, 0, 0.1, y, 0, 0.1, x.copy(), 0, 0.1, 0, 255, 1), "shape"),
        (lambda: qk.qadd_u8(x, 0, 0.1, x, 0, 0.1, x.copy(), 0, np.inf, 0, 255, 1), "sc"),
        (lambda: qk.qadd_u8(x, 0, 0.1, x, 0, 0.1, x.copy(), 0, 0.1, 9, 8, 1), "lo"),
    ]
    for fn, msg in bad_runs:
        with pytest.raises(ValueError, match=msg):
            fn()
    ch.run_u8(np.zeros((0, 6, 9), np.uint8), np.zeros((0, 4, 9), np.uint8), 2)  # empty


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_rebias_shares_packed_weights(variant, path):
    """QLayer.rebias (ConvInteger's per-run scale): the same results as a layer built
    from scratch with those vectors, the packed weights shared; its vectors checked."""
    qk = QK[variant]
    rng = np.random.default_rng(9)
    w, bias, scale, zp, lo, hi, fbias = rand_layer(rng, 70, 37)
    base = qk.QLayer(w, np.zeros(37, np.int32), np.ones(37, np.float32), zp, lo, hi)
    x = rng.integers(0, 256, (2, 70, 45), dtype=np.uint8)
    for out_float in (False, True):
        again = base.rebias(bias, scale, fbias)
        assert again.w8 is base.w8 and again.w16 is base.w16
        want = ref.chain(x, [(w, bias, scale, zp, lo, hi, fbias)], out_float)
        got = run_u8(qk.QChain([again], out_float, path=path), x, out_float, 3)
        np.testing.assert_array_equal(got, want)
        bias = bias // 2
        scale = scale * np.float32(3)
    with pytest.raises(ValueError, match="overflow"):
        base.rebias(np.full(37, 2 ** 31 - 1000, np.int32), scale)
    with pytest.raises(ValueError, match="scale"):
        base.rebias(bias, np.zeros(37, np.float32))
    with pytest.raises(ValueError, match="bias"):
        base.rebias(bias[:5], scale)


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_bound_chain_dequantizes_in_the_epilogue_bitwise(variant, path):
    """BoundQChain (run()'s fast path): float32 in, quantized in the gather; float32 out,
    the last layer's uint8 dequantized in its epilogue: bitwise run_f32 + dequantize_u8
    and the numpy reference, at 1..8 threads (fused, channel-split and layer-by-layer
    runs); out_float chains as run_f32. Feeds it cannot run directly give None."""
    rng = np.random.default_rng(11)
    qk = QK[variant]
    for n, c, p, couts in [(1, 1, 1, [1]), (2, 5, 33, [3, 17]), (1, 64, 129, [33, 64, 16]),
                           (1, 100, 1, [130]), (2, 40, 1, [64, 17, 50]),
                           (1, 19, 3, [40, 30])]:
        specs, k = [], c
        for cout in couts:
            specs.append(rand_layer(rng, k, cout))
            k = cout
        xf = (rng.standard_normal((n, c, 1, p)) * 2).astype(np.float32)
        q = ref.chain(xf.reshape(n, c, p), specs, False, in_scale=0.03, in_zp=100)
        want = (q.astype(np.int32) - 77).astype(np.float32) * np.float32(0.0125)
        wantf = ref.chain(xf.reshape(n, c, p), specs, True, in_scale=0.03, in_zp=100)
        ch = make_chain(qk, specs, False, path)
        chf = make_chain(qk, specs, True, path)
        for threads in range(1, 9):
            b = qk.BoundQChain(ch, xf.shape, (n, k, 1, p), (0.03, 100), (0.0125, 77),
                               threads)
            y = b.try_call(xf)
            assert y.dtype == np.float32 and y.shape == (n, k, 1, p)
            np.testing.assert_array_equal(y.reshape(n, k, p), want)
            t = np.empty((n, k, p), np.uint8)
            ch.run_f32(xf.reshape(n, c, p), 0.03, 100, t, threads)
            y2 = np.empty(t.shape, np.float32)
            qk.dequantize_u8(t, 0.0125, 77, y2, threads)
            np.testing.assert_array_equal(y.reshape(n, k, p), y2)
            bf = qk.BoundQChain(chf, xf.shape, (n, k, 1, p), (0.03, 100), None, threads)
            np.testing.assert_array_equal(bf.try_call(xf).reshape(n, k, p), wantf)
        assert b.try_call(xf.astype(np.float64)) is None
        assert b.try_call(xf.reshape(n, c, p)) is None
        assert b.try_call(np.zeros((n + 1, c, 1, p), np.float32)) is None
        strided = np.repeat(xf, 2, axis=3)[..., ::2]  # (p = 1: still contiguous)
        assert (b.try_call(strided) is None) == (not strided.flags.c_contiguous)
        assert b.try_call(list(xf)) is None


def test_bound_chain_arguments_are_checked():
    qk = QDEFAULT
    rng = np.random.default_rng(1)
    ch = make_chain(qk, [rand_layer(rng, 4, 6)], False, None)
    chf = make_chain(qk, [rand_layer(rng, 4, 6)], True, None)
    ok = ((1, 4, 2, 3), (1, 6, 2, 3), (0.5, 3), (0.25, 128), 1)
    qk.BoundQChain(ch, *ok)
    for i, bad, msg in [(0, (1, 5, 2, 3), "do not fit"), (1, (1, 6, 3, 3), "do not fit"),
                        (0, (0, 4, 2, 3), "do not fit"), (1, (1, 6, 6), "one rank"),
                        (2, (0.0, 3), "in_q scale"), (2, (0.5, 256), "in_q zero point"),
                        (3, (float("nan"), 0), "out_dq scale"), (3, None, "out_dq"),
                        (4, 0, "threads")]:
        args = list(ok)
        args[i] = bad
        with pytest.raises(ValueError, match=msg):
            qk.BoundQChain(ch, *args)
    with pytest.raises(ValueError, match="out_dq"):
        qk.BoundQChain(chf, *ok)
