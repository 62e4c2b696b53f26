"""The AVX2 (no VNNI) int8 micro-kernel's two forms, bitwise against the integer numpy
reference on every int8 path this CPU runs (the results never depend on the path):
vpmaddwd on an s16 weight copy packed (w0, w2, w1, w3) against the activation words
split into even and odd bytes, for any weights; and vpmaddubsw on the bytes as they are,
for layers whose weight pairs (k = 2i, 2i+1) have |w0| + |w1| <= 128, where it cannot
saturate (QLayer leaves w16 None for those)."""
import numpy as np
import pytest

from pyconv1x1.quant import reference as ref
from test_qkernels import CASES, IDS, QK, make_chain, rand_layer, run_u8
from test_qkernels import thread_small_runs  # noqa: F401  (autouse fixture)

# (n, cin, pixels, [cout per layer]): k not a multiple of 4 or 8, cout not a multiple of
# 8, 1 pixel, pixels no panel divides
SHAPES = [(1, 1, 1, [1]), (2, 5, 33, [3, 9]), (1, 9, 95, [17, 6]), (3, 2, 1, [8]),
          (1, 70, 41, [13, 30]), (2, 131, 64, [7])]


def small_weights(rng, cout, k, lim=64):
    """weights in [-lim, lim]: every pair's |w0| + |w1| <= 2 * lim"""
    return rng.integers(-lim, lim + 1, (cout, k)).astype(np.int8)


def chain_specs(rng, c, couts, weights):
    specs, k = [], c
    for cout in couts:
        spec = list(rand_layer(rng, k, cout))
        spec[0] = weights(rng, cout, k)
        # outputs spread over about +-300 steps of these weights: both ends saturate
        spec[2] = (spec[2] * np.float32(128 / (np.abs(spec[0].astype(np.int16)).mean() + 1))).astype(
            np.float32)
        specs.append(tuple(spec))
        k = cout
    return specs


def pairs_fit(w):
    """every pair (k = 2i, 2i+1) of every row has |w0| + |w1| <= 128"""
    a = np.abs(w.astype(np.int16))
    if a.shape[1] % 2:
        a = np.pad(a, ((0, 0), (0, 1)))
    return int(a.reshape(a.shape[0], -1, 2).sum(2).max()) <= 128


def check(qk, path, specs, x, threads=(1, 3)):
    for out_float in (False, True):
        want = ref.chain(x, specs, out_float)
        ch = make_chain(qk, specs, out_float, path)
        for t in threads:
            np.testing.assert_array_equal(run_u8(ch, x, out_float, t), want,
                                          err_msg=f"{x.shape} out_float={out_float} t={t}")
    return ref.chain(x, specs)


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_extreme_bytes_in_every_lane(variant, path):
    """Full-range weights (the vpmaddwd form) and activations at 0, 1, 254, 255 in every
    channel position of the 4-channel words, both ends of the output saturating."""
    qk = QK[variant]
    rng = np.random.default_rng(21)
    ends, wide = [0, 0], 0
    for n, c, p, couts in SHAPES:
        specs = chain_specs(rng, c, couts, lambda r, o, k: r.choice(
            np.array([-128, -127, 126, 127], np.int8), (o, k)))
        assert [qk.QLayer(*s).w16 is None for s in specs] == [pairs_fit(s[0]) for s in specs]
        wide += sum(not pairs_fit(s[0]) for s in specs)
        x = rng.choice(np.array([0, 1, 254, 255], np.uint8), (n, c, p))
        y = check(qk, path, specs, x)
        ends[0] += int((y == specs[-1][4]).sum())
        ends[1] += int((y == specs[-1][5]).sum())
    assert ends[0] > 10 and ends[1] > 10 and wide >= 8  # the vpmaddwd form ran


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_seven_bit_weights_take_the_maddubs_form(variant, path):
    """Weights in [-64, 64] (reduce_range): w16 None, the same results; a chain mixing
    such layers with full-range ones."""
    qk = QK[variant]
    rng = np.random.default_rng(22)
    for n, c, p, couts in SHAPES:
        specs = chain_specs(rng, c, couts, small_weights)
        assert all(qk.QLayer(*s).w16 is None for s in specs)
        x = rng.integers(0, 256, (n, c, p), dtype=np.uint8)
        x.flat[::3] = 255
        check(qk, path, specs, x)
    full = lambda r, o, k: r.integers(-128, 128, (o, k)).astype(np.int8)  # noqa: E731
    specs = (chain_specs(rng, 37, [20], small_weights) + chain_specs(rng, 20, [33], full)
             + chain_specs(rng, 33, [11], small_weights))
    assert [qk.QLayer(*s).w16 is None for s in specs] == [True, False, True]
    check(qk, path, specs, rng.integers(0, 256, (2, 37, 77), dtype=np.uint8), (1, 2, 5))


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_maddubs_bound_is_exact_at_128_and_refused_at_129(variant, path):
    """Pairs at |w0| + |w1| = 128 (the largest sums vpmaddubsw can take: 255 * 128 =
    32640) against x = 255 in that form; one pair of 129 anywhere (it would saturate:
    255 * 129 > 32767) sends the layer to the vpmaddwd form; both exact."""
    qk = QK[variant]
    k, cout = 22, 11
    edge = [(-128, 0), (0, -128), (64, 64), (-64, -64), (127, 1), (-1, -127), (100, -28)]
    w = np.zeros((cout, k), np.int8)
    for o in range(cout):
        for i in range(k // 2):
            w[o, 2 * i:2 * i + 2] = edge[(o + i) % len(edge)]
    bias = np.arange(cout, dtype=np.int32) * 1000 - 5000
    scale = np.full(cout, 1.0 / 4000, np.float32)
    for xv in (255, 254, 1):
        x = np.full((1, k, 40), xv, np.uint8)
        x[0, :, ::5] = 0
        spec = (w, bias, scale, 128, 0, 255, None)
        assert qk.QLayer(*spec).w16 is None
        check(qk, path, [spec], x)
        for o, i in [(0, 0), (cout - 1, k - 2), (5, 8)]:
            w2 = w.copy()
            w2[o, i:i + 2] = (127, 2) if o % 2 else (-128, -1)
            spec = (w2, bias, scale, 128, 0, 255, None)
            assert qk.QLayer(*spec).w16 is not None
            check(qk, path, [spec], x)
    # the pairs are k = 2i, 2i+1: |w1| + |w2| = 254 (two pairs) still qualifies
    w3 = np.zeros((1, 4), np.int8)
    w3[0] = (1, 127, 127, 1)
    assert qk.QLayer(w3, np.zeros(1, np.int32), np.ones(1, np.float32), 0, 0, 255).w16 \
        is None
