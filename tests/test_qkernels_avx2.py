"""The AVX2 (no VNNI) int8 micro-kernel's two forms, bitwise against the integer numpy
reference on every int8 path this CPU runs (the results never depend on the path):
per group of 4 input channels of a block of 8 output channels, vpmaddubsw on the bytes
(some channels flipped: x -> 255 - x, w -> -w) where no pair of products can saturate,
else vpmaddwd on s16. QLayer.avx2_groups counts the groups in the vpmaddubsw form."""
import numpy as np
import pytest

from pyconv1x1.quant import reference as ref
from test_qkernels import CASES, IDS, QK, make_chain, rand_layer, run_u8
from test_qkernels import thread_small_runs  # noqa: F401  (autouse fixture)

# (n, cin, pixels, [cout per layer]): k not a multiple of 4 or 8, cout not a multiple of
# 8, 1 pixel, pixels no panel divides
SHAPES = [(1, 1, 1, [1]), (2, 5, 33, [3, 9]), (1, 9, 95, [17, 6]), (3, 2, 1, [8]),
          (1, 70, 41, [13, 30]), (2, 131, 64, [7])]


def groups(qk, w):
    """(groups in the maddubs form, groups) of a layer of weights w, or None where this
    module has no AVX2 path"""
    return qk.QLayer(w, np.zeros(w.shape[0], np.int32), np.ones(w.shape[0], np.float32),
                     0, 0, 255).avx2_groups


def has_avx2(qk):
    return "avx2" in qk.available_paths()


def chain_specs(rng, c, couts, weights):
    specs, k = [], c
    for cout in couts:
        spec = list(rand_layer(rng, k, cout))
        spec[0] = weights(rng, cout, k)
        # outputs spread over about +-300 steps of these weights: both ends saturate
        spec[2] = (spec[2] * np.float32(
            128 / (np.abs(spec[0].astype(np.int16)).mean() + 1))).astype(np.float32)
        specs.append(tuple(spec))
        k = cout
    return specs


def check(qk, path, specs, x, threads=(1, 3)):
    for out_float in (False, True):
        want = ref.chain(x, specs, out_float)
        ch = make_chain(qk, specs, out_float, path)
        for t in threads:
            np.testing.assert_array_equal(run_u8(ch, x, out_float, t), want,
                                          err_msg=f"{x.shape} out_float={out_float} t={t}")
    return ref.chain(x, specs)


def full_range(rng, cout, k):
    return rng.integers(-128, 128, (cout, k)).astype(np.int8)


def seven_bit(rng, cout, k):
    return rng.integers(-64, 65, (cout, k)).astype(np.int8)


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_extreme_bytes_in_every_lane(variant, path):
    """Weights at -128, -127, 126, 127 (most groups in the vpmaddwd form, some flipped
    into the other) and activations at 0, 1, 254, 255 in every channel position of the
    4-channel words, both ends of the output saturating."""
    qk = QK[variant]
    rng = np.random.default_rng(21)
    ends, counts = [0, 0], np.zeros(2, int)
    for n, c, p, couts in SHAPES:
        specs = chain_specs(rng, c, couts, lambda r, o, k: r.choice(
            np.array([-128, -127, 126, 127], np.int8), (o, k)))
        if has_avx2(qk):
            counts += np.sum([groups(qk, s[0]) for s in specs], axis=0)
        x = rng.choice(np.array([0, 1, 254, 255], np.uint8), (n, c, p))
        y = check(qk, path, specs, x)
        ends[0] += int((y == specs[-1][4]).sum())
        ends[1] += int((y == specs[-1][5]).sum())
    assert ends[0] > 10 and ends[1] > 10
    if has_avx2(qk):  # both forms ran
        assert 0 < counts[0] < counts[1] - 10


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_seven_bit_and_mixed_chains(variant, path):
    """Weights in [-64, 64] (reduce_range): every group in the maddubs form, no flip;
    chains mixing such layers with full-range ones."""
    qk = QK[variant]
    rng = np.random.default_rng(22)
    for n, c, p, couts in SHAPES:
        specs = chain_specs(rng, c, couts, seven_bit)
        if has_avx2(qk):
            for s in specs:
                g = groups(qk, s[0])
                assert g[0] == g[1] == -(-s[0].shape[0] // 8) * -(-s[0].shape[1] // 4)
        x = rng.integers(0, 256, (n, c, p), dtype=np.uint8)
        x.flat[::3] = 255
        check(qk, path, specs, x)
    specs = (chain_specs(rng, 37, [20], seven_bit) + chain_specs(rng, 20, [33], full_range)
             + chain_specs(rng, 33, [11], seven_bit))
    check(qk, path, specs, rng.integers(0, 256, (2, 37, 77), dtype=np.uint8), (1, 2, 5))


def _quad_layer(quads, k=22, cout=8):
    """row o, channels 4i .. 4i+3: quads[(o + i) % len(quads)] (the last group of k = 22
    holds 2 channels)"""
    w = np.zeros((cout, k + 2), np.int8)
    for o in range(cout):
        for i in range(-(-k // 4)):
            w[o, 4 * i:4 * i + 4] = quads[(o + i) % len(quads)]
    return w[:, :k]


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_maddubs_bounds_pairings_and_flips(variant, path):
    """Pairs at |w0| + |w1| = 128 (255 * 128 = 32640, the largest sum vpmaddubsw holds);
    same-sign pairs above 128 flipped (the first channel where the second holds a -128);
    groups whose rows need the pairings 0 2 | 1 3 or 0 3 | 1 2; groups no pairing and
    flip can save (rows that need a flip and rows that forbid it, or a pair of -128s)
    in the exact form. Against x = 255, 254, 1, 0, the products' extremes."""
    qk = QK[variant]
    a, b = 127, -127
    cases = [  # (quads, groups of the 22-channel layer in the maddubs form, of 6)
        ([(-128, 0, 0, -128), (64, 64, -64, -64), (127, 1, -1, -127)], 6),
        ([(a, a, a, a), (100, 29, -127, -2)], 6),           # flips in every group
        ([(-127, -128, -1, -128), (3, 0, 5, 0)], 6),        # flip the first one
        ([(a, a, a, a), (a, b, a, b)], 6),                  # pairing 0 2 | 1 3
        ([(a, a, a, a), (a, b, b, a)], 6),                  # pairing 0 3 | 1 2
        # no pairing: exact, but for the last group (2 channels: 0 2 | 1 3 pairs them
        # with zeros)
        ([(a, a, a, a), (a, b, a, b), (a, a, b, b)], 1),
        ([(-128, -128, -128, -128), (0, 0, 0, 0)], 1),
    ]
    bias = np.arange(8, dtype=np.int32) * 1000 - 5000
    scale = np.full(8, 1.0 / 4000, np.float32)
    for quads, want in cases:
        w = _quad_layer(quads)
        if has_avx2(qk):
            assert groups(qk, w) == (want, 6), quads
        for xv in (255, 254, 1):
            x = np.full((1, 22, 40), xv, np.uint8)
            x[0, :, ::5] = 0
            x[0, ::3, 1::7] = 255 - xv
            check(qk, path, [(w, bias, scale, 128, 0, 255, None)], x)
    if has_avx2(qk):
        # the pairs are k = 2i, 2i+1: |w1| + |w2| = 254 is two pairs, no flip needed
        assert groups(qk, np.array([[1, 127, 127, 1]], np.int8)) == (1, 1)


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_random_blocks_of_both_forms(variant, path):
    """Blocks whose groups mix both forms and flips in random order, k up to 300."""
    qk = QK[variant]
    rng = np.random.default_rng(23)
    for k, cout in [(300, 20), (45, 70), (7, 9)]:
        w = (rng.standard_normal((cout, k)) * 45).clip(-128, 127).astype(np.int8)
        w[rng.random((cout, k)) < 0.05] = -128
        if has_avx2(qk):
            g = groups(qk, w)
            assert 0 < g[0] < g[1] or k == 7
        bias = rng.integers(-30000, 30000, cout).astype(np.int32)
        scale = np.full(cout, 300.0 / (np.sqrt(k) * 45 * 128), np.float32)
        x = rng.integers(0, 256, (2, k, 50), dtype=np.uint8)
        check(qk, path, [(w, bias, scale, 77, 2, 250, None)], x, (1, 2))


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_fused_requantization_of_both_forms(variant, path):
    """The fused kernels (each pass's accumulators requantized in registers: the next
    tile's words, and the last layer's uint8 dequantized on its store): both forms and
    flips, the last layer's rows past cout, passes past the last pixel (1 .. 33 pixels),
    inner layers within and far past int16 after scaling (clamped before or after
    rounding), zero points other than 0 and 128 at both ends saturating; bitwise the
    numpy reference at 1..3 threads, through BoundQChain (float32 in, dequantized out)."""
    qk = QK[variant]
    rng = np.random.default_rng(24)
    extreme = lambda r, o, k: r.choice(np.array([-128, -127, 126, 127], np.int8), (o, k))
    ends = [0, 0]
    for weights in (full_range, seven_bit, extreme):
        for n, c, p, couts in [(1, 8, 1, [16, 8]), (2, 6, 5, [13, 3]), (1, 16, 13, [8, 5]),
                               (1, 9, 31, [20, 12]), (3, 4, 33, [4, 11])]:
            specs = chain_specs(rng, c, couts, weights)
            inner = list(specs[0])
            inner[3:6] = (3, 1, 250) if p % 2 else (255, 0, 255)
            if p > 20:  # far past int16 once scaled: clamp before rounding
                inner[2] = (inner[2] * np.float32(1e4)).astype(np.float32)
            specs[0] = tuple(inner)
            last = list(specs[-1])
            last[3:6] = (201, 4, 240) if n > 1 else (0, 0, 255)
            specs[-1] = tuple(last)
            xf = (rng.standard_normal((n, c, 1, p)) * 3).astype(np.float32)
            q = ref.chain(xf.reshape(n, c, p), specs, False, in_scale=0.02, in_zp=120)
            ends[0] += int((q == last[4]).sum())
            ends[1] += int((q == last[5]).sum())
            for dq_zp in (0, 255, 77):
                want = (q.astype(np.int32) - dq_zp).astype(np.float32) * np.float32(0.0125)
                ch = make_chain(qk, specs, False, path)
                for t in (1, 3):
                    b = qk.BoundQChain(ch, xf.shape, (n, couts[-1], 1, p), (0.02, 120),
                                       (0.0125, dq_zp), t)
                    np.testing.assert_array_equal(
                        b.try_call(xf).reshape(n, couts[-1], p), want,
                        err_msg=f"{weights.__name__} {(n, c, p, couts)} dq_zp={dq_zp} t={t}")
    assert ends[0] > 10 and ends[1] > 10
