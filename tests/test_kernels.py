"""The Cython kernels of every runnable ISA variant against a float64 numpy reference:
odd and remainder shapes, groups, strides and pads, each epilogue, residuals, chains,
1, 2 and 3 threads (bitwise identical), the element-wise kernels, and the planner's
block and tile arithmetic.

Every panel width, tile, reduction chunk and block height comes from the kernel module
under test (PANEL_WIDTH, REDUCTION_CHUNK, MAX_BLOCK_ROWS): the variants differ in all
of them (AVX2 panels are 16 pixels, AVX-512 ones 64), so a size that is an edge case for
one variant is an ordinary one, or an invalid tile, for another."""
import math

import numpy as np
import pytest

from conftest import EMULATED, act_ref, assert_close, conv1x1_ref
from pyconv1x1 import _backend, _variants, plan
from pyconv1x1.program import (RES_AFTER_ACT, RES_BEFORE_ACT, RES_NONE, Activation,
                               ChainStep, ConvLayer, Program)
from pyconv1x1.ir import ValueInfo

VARIANTS = _backend.runnable_variants()
KERNELS = {name: _backend.kernels(name) for name in VARIANTS}
# the tallest weight block of any variant: parametrized counts of output channels reach
# past two blocks of every variant
MAX_ROWS = max(k.MAX_BLOCK_ROWS for k in KERNELS.values())
THREADS = (1, 2, 3)
INF = math.inf

EPILOGUES = {
    "none": Activation(),
    "relu": Activation("relu", 0.0, INF, 1.0),
    "clip": Activation("clip", -0.5, 0.75, 1.0),
    "relu6": Activation("clip", 0.0, 6.0, 1.0),
    "clip_lo": Activation("clip", -0.25, INF, 1.0),
    "clip_hi": Activation("clip", -INF, 0.3, 1.0),
    "leaky": Activation("leaky", -INF, INF, 0.1),
    "leaky_clip": Activation("leaky", -0.05, 0.5, 0.2),
}


@pytest.fixture(params=VARIANTS)
def kern(request):
    return KERNELS[request.param]


def image(pixels):
    """An h x w image of `pixels` pixels, as square as the count allows (a prime is one
    row): 2-D images whose size is set by the panel width under test."""
    h = max(d for d in range(1, math.isqrt(pixels) + 1) if pixels % d == 0)
    return h, pixels // h


def panel_edges(nr):
    """Pixel counts at the edges of a variant's panels (nr pixels; a last panel of at
    most nr / 2 (or nr / 4 with AVX-512) pixels runs a narrow kernel, a longer partial
    one goes through scratch): one pixel (half), nr - 1 (partial), exactly one panel,
    one panel and a pixel, two panels and a pixel, ~1000 pixels ending in exactly half
    a panel, and one panel and a quarter. With AVX2's nr = 16 these are 1, 15, 16, 17,
    33, 1000 and 20."""
    return (1, nr - 1, nr, nr + 1, 2 * nr + 1, max(2, 1000 // nr) * nr + nr // 2,
            nr + nr // 4)


def make_layer(rng, cin, cout, group=1, act=Activation(), res_mode=RES_NONE,
               strides=(1, 1), pads=(0, 0, 0, 0), scale=None):
    scale = scale if scale is not None else 1.0 / math.sqrt(max(1, cin // group))
    w = (rng.standard_normal((cout, cin // group)) * scale).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32) * 0.1
    return ConvLayer(names=(f"l{cin}x{cout}",), weight=w, bias=b, group=group,
                     strides=strides, pads=pads, act=act,
                     residual="r" if res_mode else None, res_mode=res_mode)


def make_chain(kern, layers):
    specs = []
    for layer in layers:
        packed, blocks = plan.pack_layer(layer, kern.MAX_BLOCK_ROWS)
        specs.append((packed, np.ascontiguousarray(layer.bias, np.float32), blocks,
                      layer.cin, layer.cout, layer.weight.shape[1], float(layer.act.lo),
                      float(layer.act.hi), float(layer.act.alpha), int(layer.res_mode)))
    return kern.Chain(specs)


def out_geometry(layer, h, w):
    ho, wo, pt, pl = layer.out_hw(h, w)
    return ho, wo, pt, pl


def reference(x, layers, residuals):
    """float64 reference of a chain; the first layer's strides/pads set the geometry."""
    v = np.asarray(x, np.float64)
    for i, layer in enumerate(layers):
        if i == 0:
            h, w = v.shape[2:]
            ho, wo, pt, pl = out_geometry(layer, h, w)
            sh, sw = layer.strides
            pb = max(0, (ho - 1) * sh + 1 - h - pt)
            pr = max(0, (wo - 1) * sw + 1 - w - pl)
            v = conv1x1_ref(v, layer.weight, layer.bias, layer.strides, (pt, pl, pb, pr),
                            layer.group)
            v = v[:, :, :ho, :wo]
        else:
            v = conv1x1_ref(v, layer.weight, layer.bias, group=layer.group)
        r = residuals[i]
        a = layer.act
        if layer.res_mode == RES_BEFORE_ACT:
            v = act_ref(v + r, a.lo, a.hi, a.alpha)
        elif layer.res_mode == RES_AFTER_ACT:
            v = act_ref(v, a.lo, a.hi, a.alpha) + r
        else:
            v = act_ref(v, a.lo, a.hi, a.alpha)
    return v


def run_chain(kern, chain, layers, x, residuals, nthreads, tile=None):
    n, _, h, w = x.shape
    first = layers[0]
    ho, wo, pt, pl = out_geometry(first, h, w)
    y = np.full((n, layers[-1].cout, ho, wo), np.nan, np.float32)
    if tile is None:
        max_c = max(max(l.cin, l.cout) for l in layers)
        tile = plan.tile_pixels(kern.PANEL_WIDTH, max_c, ho * wo,
                                chunk=kern.REDUCTION_CHUNK)
    assert tile % kern.PANEL_WIDTH == 0 and tile > 0, \
        f"test bug: tile {tile} is not a multiple of {kern.VARIANT}'s panel"
    res = tuple(None if r is None else np.ascontiguousarray(r, np.float32)
                for r in residuals)
    chain.run(x, y, res, n, h, w, ho, wo, first.strides[0], first.strides[1], pt, pl,
              tile, nthreads)
    return y


def check_chain(kern, rng, layers, x, tiles=(None,), what=""):
    """Run at every thread count (and tile), compare bitwise and with the reference."""
    n, _, h, w = x.shape
    ho, wo, _, _ = out_geometry(layers[0], h, w)
    residuals = [rng.standard_normal((n, l.cout, ho, wo)).astype(np.float32)
                 if l.res_mode else None for l in layers]
    chain = make_chain(kern, layers)
    ref = reference(x, layers, residuals)
    x_before = x.copy()
    first = None
    for tile in tiles:
        for t in THREADS:
            y = run_chain(kern, chain, layers, x, residuals, t, tile)
            if first is None:
                first = y
                assert_close(y, ref)
            else:
                assert np.array_equal(y, first), \
                    f"{what}: {kern.VARIANT} threads={t} tile={tile} differs from threads=1"
    if hasattr(chain, "bind"):           # the planner's pre-bound form
        ho, wo, pt, pl = out_geometry(layers[0], h, w)
        max_c = max(max(l.cin, l.cout) for l in layers)
        tile = plan.tile_pixels(kern.PANEL_WIDTH, max_c, ho * wo,
                                chunk=kern.REDUCTION_CHUNK)
        res = tuple(None if r is None else np.ascontiguousarray(r) for r in residuals)
        bound = chain.bind((n, layers[-1].cout, ho, wo), n, h, w, ho, wo,
                           layers[0].strides[0], layers[0].strides[1], pt, pl, tile, 2)
        y = bound(x, res)
        assert y.shape == first.shape and y.dtype == np.float32
        assert np.array_equal(y, first), f"{what}: bound chain differs"
    assert np.array_equal(x, x_before)
    return first


# ----------------------------------------------------------------------------------
# the module's constants
# ----------------------------------------------------------------------------------
def test_variants_are_consistent(kern):
    assert kern.VARIANT in _variants.VARIANTS
    lanes, nv, mr_max = _variants.VARIANTS[kern.VARIANT]["shape"]
    assert (kern.PANEL_WIDTH, kern.MAX_BLOCK_ROWS) == (lanes * nv, mr_max)
    assert kern.PANEL_WIDTH >= 8 and kern.PANEL_WIDTH % 8 == 0
    assert 1 <= kern.MAX_BLOCK_ROWS <= 16
    names = kern.kernel_names()
    assert len(names) == kern.MAX_BLOCK_ROWS
    assert all(kern.VARIANT in n and f"x{kern.PANEL_WIDTH}_" in n for n in names)
    assert "generic" in _backend.built_variants()
    assert "generic" in VARIANTS


CPUINFO_AARCH64 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
"""
CPUINFO_X86 = """processor\t: 0
vendor_id\t: GenuineIntel
flags\t\t: fpu vme sse sse2 avx avx2 fma bmi2
vmx flags\t: vnmi
"""


def test_cpu_flags_come_from_the_architectures_line(tmp_path, monkeypatch):
    """aarch64 reads `Features`, x86-64 `flags`; no such line (qemu-user shows the host's
    /proc/cpuinfo) means "ask the CPU" (None), never another architecture's flags."""
    arm, x86 = tmp_path / "arm", tmp_path / "x86"
    arm.write_text(CPUINFO_AARCH64)
    x86.write_text(CPUINFO_X86)
    monkeypatch.setattr(_backend, "_machine", lambda: "aarch64")
    flags = _backend._linux_cpu_flags(str(arm))
    assert {"asimd", "asimddp", "fp"} <= flags and "vnmi" not in flags
    assert _backend._linux_cpu_flags(str(x86)) is None
    monkeypatch.setattr(_backend, "_machine", lambda: "x86_64")
    assert _backend._linux_cpu_flags(str(x86)) == {"fpu", "vme", "sse", "sse2", "avx",
                                                   "avx2", "fma", "bmi2"}
    assert _backend._linux_cpu_flags(str(arm)) is None
    assert _backend._linux_cpu_flags(str(tmp_path / "missing")) is None


def test_a_missing_cpu_feature_falls_back_to_generic(monkeypatch):
    """A variant whose features the CPU lacks is never chosen (never an illegal
    instruction); with every feature each built variant runs."""
    built = _backend.built_variants()
    monkeypatch.setattr(_backend, "_linux_cpu_flags", lambda: set())
    assert _backend.runnable_variants.__wrapped__() == ("generic",)
    every = {f for name in built for f in _backend._REQUIRES[name]}
    monkeypatch.setattr(_backend, "_linux_cpu_flags", lambda: every)
    assert _backend.runnable_variants.__wrapped__() == tuple(built)
    for name in built:  # one feature short: that variant drops out, generic stays
        for feature in _backend._REQUIRES[name]:
            monkeypatch.setattr(_backend, "_linux_cpu_flags",
                                lambda f=feature: every - {f})
            runnable = _backend.runnable_variants.__wrapped__()
            assert name not in runnable and "generic" in runnable


def test_this_machines_variants_and_features():
    """The variants built here are the table's for this machine; aarch64 records its
    features (asimd is architectural on Linux/AArch64) and runs the neon variant."""
    machine = _backend._machine()
    expected = [name for name in _variants.ORDER
                if _variants.VARIANTS[name]["arch"] in (None, machine)]
    assert set(_backend.built_variants()) <= set(expected)
    features = _backend.cpu_features()
    if machine == "aarch64":
        assert set(features) == set(_variants.AARCH64_FEATURES)
        assert features["asimd"] is True
        assert _backend.built_variants() == expected
        assert _backend.runnable_variants()[0] == "neon"
        assert KERNELS["neon"].cpu_has("asimd") and not KERNELS["neon"].cpu_has("avx2")
    else:
        assert features == {}
        assert not KERNELS["generic"].cpu_has("asimd")


def _fuses_multiply_add(name):
    """Variants whose a + w * x is one rounding: all but the x86-64 baseline (SSE2)."""
    return not (name == "generic" and _backend._machine() == "x86_64")


def test_variants_with_the_same_summation_order_agree_bitwise():
    """Every variant sums each output over k in the same order (reduction chunks
    included), so variants that all fuse the multiply-add give bitwise the same result
    whatever their tile (neon vs generic on aarch64, v3 vs v4 on x86-64)."""
    names = [n for n in VARIANTS if _fuses_multiply_add(n)]
    if len(names) < 2:
        pytest.skip(f"one variant with fused multiply-add runs here: {names}")
    rng = np.random.default_rng(21)
    for cin, cout, hw, act in ((3, 5, (7, 9), "relu"), (37, 13, (11, 13), "leaky_clip"),
                               (300, 7, (5, 31), "clip")):
        layers = [make_layer(rng, cin, cout, act=EPILOGUES[act]),
                  make_layer(rng, cout, 6, act=EPILOGUES["relu6"])]
        x = rng.standard_normal((2, cin) + hw).astype(np.float32)
        x[0, 0, 0, :3] = (np.nan, -0.0, np.inf)
        outs = {}
        for name in names:
            kern = KERNELS[name]
            outs[name] = run_chain(kern, make_chain(kern, layers), layers, x,
                                   [None, None], 2)
        first = names[0]
        for name in names[1:]:
            assert np.array_equal(outs[name], outs[first], equal_nan=True), (
                f"{name} differs from {first}: cin={cin} cout={cout} {hw} {act}")
            assert np.array_equal(np.signbit(outs[name]), np.signbit(outs[first]))


def test_relu_keeps_negative_zero_and_nan_like_x86(kern):
    """max(0, v) returns v when v is -0 or NaN (x86 maxps with the bound first; aarch64
    fmax would give +0): every variant gives the same bits on every machine."""
    rng = np.random.default_rng(22)
    layer = make_layer(rng, 1, 1, act=EPILOGUES["relu"])
    layer.weight = np.ones_like(layer.weight)
    layer.bias = np.full_like(layer.bias, -0.0)  # -0 + -0 * 1 stays -0
    x = np.array([-0.0, np.nan, -1.0, 2.0, -np.inf, np.inf] * 3, np.float32)
    x = x.reshape(1, 1, 1, -1)
    y = run_chain(kern, make_chain(kern, [layer]), [layer], x, [None], 1).ravel()
    ref = np.array([-0.0, np.nan, 0.0, 2.0, 0.0, np.inf] * 3, np.float32)
    assert np.array_equal(y, ref, equal_nan=True)
    assert np.array_equal(np.signbit(y), np.signbit(ref))


def test_forced_variant_that_cannot_run_is_an_error():
    from pyconv1x1 import Error
    with pytest.raises(Error):
        _backend.kernels("no-such-variant")


# ----------------------------------------------------------------------------------
# single layers: odd / remainder shapes
# ----------------------------------------------------------------------------------
# every block height and a remainder after two blocks of the tallest, and a few wide
COUTS = list(range(1, 2 * MAX_ROWS + 2)) + [29, 64, 65]


@pytest.mark.parametrize("cout", COUTS)
def test_single_layer_odd_shapes(kern, cout):
    rng = np.random.default_rng(cout)
    # one input channel, odd ones, and exactly one reduction chunk
    for cin in (1, 3, 17, kern.REDUCTION_CHUNK):
        for h, w in map(image, panel_edges(kern.PANEL_WIDTH)):
            if cin * cout * h * w > 4_000_000:
                continue
            layer = make_layer(rng, cin, cout)
            n = 2 if h * w < 100 else 1
            x = rng.standard_normal((n, cin, h, w)).astype(np.float32)
            check_chain(kern, rng, [layer], x, what=f"cin={cin} cout={cout} {h}x{w}")


def test_one_channel_one_pixel(kern):
    rng = np.random.default_rng(0)
    layer = make_layer(rng, 1, 1)
    x = np.array([[[[2.5]]]], np.float32)
    y = check_chain(kern, rng, [layer], x)
    assert y.shape == (1, 1, 1, 1)
    np.testing.assert_allclose(y[0, 0, 0, 0], 2.5 * layer.weight[0, 0] + layer.bias[0],
                               rtol=1e-6)


def test_batch_and_empty_batch(kern):
    rng = np.random.default_rng(1)
    layer = make_layer(rng, 5, 7)
    x = rng.standard_normal((3, 5, 6, 7)).astype(np.float32)
    check_chain(kern, rng, [layer], x)
    chain = make_chain(kern, [layer])
    empty = np.zeros((0, 5, 6, 7), np.float32)
    y = run_chain(kern, chain, [layer], empty, [None], 2)
    assert y.shape == (0, 7, 6, 7)


def test_results_do_not_depend_on_tile(kern):
    rng = np.random.default_rng(2)
    nr = kern.PANEL_WIDTH
    layers = [make_layer(rng, 13, 11, act=EPILOGUES["relu"]), make_layer(rng, 11, 9)]
    x = rng.standard_normal((2, 13, 9, 21)).astype(np.float32)
    check_chain(kern, rng, layers, x, tiles=(nr, 2 * nr, 3 * nr, 13 * nr, 64 * nr),
                what="tiles")


# ----------------------------------------------------------------------------------
# epilogues and residuals
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("epilogue", sorted(EPILOGUES))
@pytest.mark.parametrize("res_mode", [RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT])
def test_epilogues(kern, epilogue, res_mode):
    rng = np.random.default_rng(3)
    layer = make_layer(rng, 17, 13, act=EPILOGUES[epilogue], res_mode=res_mode)
    # full panels (epilogue and residual on the output in place) and a partial one
    x = rng.standard_normal((2, 17) + image(2 * kern.PANEL_WIDTH + 3)).astype(np.float32)
    y = check_chain(kern, rng, [layer], x, what=epilogue)
    a = EPILOGUES[epilogue]
    if res_mode != RES_AFTER_ACT:  # the kernels clamp to the float32 bounds
        assert y.min() >= np.float32(a.lo) and y.max() <= np.float32(a.hi)


def test_nan_and_inf_pass_through_the_epilogue(kern):
    rng = np.random.default_rng(4)
    layer = make_layer(rng, 3, 4, act=EPILOGUES["relu"])
    x = rng.standard_normal((1, 3, 4, 5)).astype(np.float32)
    x[0, 1, 2, 3] = np.nan
    x[0, 0, 0, 0] = np.inf
    chain = make_chain(kern, [layer])
    y = run_chain(kern, chain, [layer], x, [None], 1)
    mask = np.ones((4, 5), bool)
    mask[2, 3] = mask[0, 0] = False
    assert np.isfinite(y[:, :, mask]).all()
    assert np.isnan(y[0, :, 2, 3]).all()


# ----------------------------------------------------------------------------------
# groups, strides, pads
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("cin,cout,group", [(4, 4, 4), (6, 9, 3), (16, 14, 2),
                                            (24, 48, 8), (3, 3, 1), (65, 13, 13)])
def test_groups(kern, cin, cout, group):
    rng = np.random.default_rng(5)
    layer = make_layer(rng, cin, cout, group=group, act=EPILOGUES["leaky"])
    # two full panels and a partial one
    x = rng.standard_normal((2, cin) + image(3 * kern.PANEL_WIDTH - 3)).astype(np.float32)
    check_chain(kern, rng, [layer], x, what=f"group={group}")


@pytest.mark.parametrize("strides,pads", [
    ((2, 2), (0, 0, 0, 0)), ((1, 1), (1, 1, 1, 1)), ((2, 2), (1, 1, 1, 1)),
    ((2, 3), (0, 2, 1, 0)), ((3, 1), (2, 0, 0, 3)), ((1, 2), (0, 0, 2, 2)),
    ((5, 5), (0, 0, 0, 0)), ((1, 1), (3, 0, 0, 0))])
@pytest.mark.parametrize("hw", [(7, 9), (1, 1), ("nr", 5)])
def test_strides_and_pads(kern, strides, pads, hw):
    rng = np.random.default_rng(6)
    if hw[0] == "nr":   # a whole number of panels when stride 1 and no pads
        hw = (kern.PANEL_WIDTH, hw[1])
    layer = make_layer(rng, 6, 7, act=EPILOGUES["clip"], strides=strides, pads=pads)
    x = rng.standard_normal((2, 6) + hw).astype(np.float32)
    y = check_chain(kern, rng, [layer], x, what=f"strides={strides} pads={pads}")
    # a padding pixel is the epilogue applied to the bias
    if pads[0] > 0:
        a = layer.act
        expect = act_ref(layer.bias.astype(np.float64), a.lo, a.hi, a.alpha)
        np.testing.assert_allclose(y[0, :, 0, 0], expect, rtol=1e-6, atol=1e-7)


def test_stride_and_pad_with_residual_and_chain(kern):
    rng = np.random.default_rng(7)
    layers = [make_layer(rng, 5, 12, strides=(2, 2), pads=(1, 0, 1, 2),
                         act=EPILOGUES["relu"], res_mode=RES_AFTER_ACT),
              make_layer(rng, 12, 7, act=EPILOGUES["leaky"], res_mode=RES_BEFORE_ACT),
              make_layer(rng, 7, 3, group=1)]
    x = rng.standard_normal((3, 5, 11, 13)).astype(np.float32)
    check_chain(kern, rng, layers, x, what="strided chain")


# ----------------------------------------------------------------------------------
# chains
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("widths", [(3, 5), (17, 64, 13), (8, 1, 8), (1, 29, 7, 65),
                                    (256, 16, 256), (12, 6, 6, 6, 6, 6)])
def test_chains(kern, widths):
    rng = np.random.default_rng(len(widths) * 100 + widths[0])
    acts = list(EPILOGUES.values())
    layers = []
    for i in range(len(widths) - 1):
        res = (RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT)[i % 3]
        layers.append(make_layer(rng, widths[i], widths[i + 1], act=acts[i % len(acts)],
                                 res_mode=res))
    nr = kern.PANEL_WIDTH
    # one pixel, two panels and a half one, two and a partial one, many
    for h, w in map(image, (1, 2 * nr + 1, 2 * nr + 3, max(2, 1000 // nr) * nr)):
        x = rng.standard_normal((2, widths[0], h, w)).astype(np.float32)
        check_chain(kern, rng, layers, x, what=f"chain {widths} {h}x{w}")


def test_long_reductions_run_in_chunks(kern):
    """Reductions longer than REDUCTION_CHUNK run as chunks whose partial sums go
    through the output (full panels, partial panels through scratch, half-width tails),
    with the epilogue and residual on the last chunk only."""
    kc = kern.REDUCTION_CHUNK
    assert kc >= 16
    rng = np.random.default_rng(11)
    modes = [(RES_NONE, EPILOGUES["relu"]), (RES_BEFORE_ACT, EPILOGUES["leaky_clip"]),
             (RES_AFTER_ACT, EPILOGUES["clip"])]
    nr, half = kern.PANEL_WIDTH, kern.PANEL_WIDTH // 2
    for k in (kc - 1, kc, kc + 1, 2 * kc + 3):
        # half panel; partial panel; full + partial; 2 full + half (1, 9, 25, 33 at nr 16)
        for h, w in map(image, (1, half + 1, nr + half + 1, 2 * nr + 1)):
            res_mode, act = modes[(k + h * w) % 3]
            layer = make_layer(rng, k, 7, act=act, res_mode=res_mode)
            x = rng.standard_normal((2, k, h, w)).astype(np.float32)
            check_chain(kern, rng, [layer], x, what=f"k={k} {h}x{w}")


def test_chunked_layers_in_a_chain(kern):
    kc = kern.REDUCTION_CHUNK
    rng = np.random.default_rng(12)
    layers = [make_layer(rng, kc + 5, 2 * kc + 1, act=EPILOGUES["relu"]),
              make_layer(rng, 2 * kc + 1, 9, act=EPILOGUES["leaky"],
                         res_mode=RES_BEFORE_ACT),
              make_layer(rng, 9, 2 * (kc + 3), group=1, res_mode=RES_AFTER_ACT),
              make_layer(rng, 2 * (kc + 3), 6, group=2, act=EPILOGUES["relu6"])]
    nr, half = kern.PANEL_WIDTH, kern.PANEL_WIDTH // 2
    # a half panel; a full and exactly half a panel; 2 full and a half (3, 24, 39 at nr 16)
    for h, w in map(image, (3, nr + half, 2 * nr + half - 1)):
        x = rng.standard_normal((2, kc + 5, h, w)).astype(np.float32)
        check_chain(kern, rng, layers, x, tiles=(None, kern.PANEL_WIDTH),
                    what=f"chunked chain {h}x{w}")


def test_grouped_layers_in_a_chain(kern):
    rng = np.random.default_rng(8)
    layers = [make_layer(rng, 12, 24, group=4, act=EPILOGUES["relu"]),
              make_layer(rng, 24, 24, group=3, act=EPILOGUES["relu6"]),
              make_layer(rng, 24, 10, group=2)]
    x = rng.standard_normal((2, 12, 7, 9)).astype(np.float32)
    check_chain(kern, rng, layers, x, what="grouped chain")


def test_threads_more_than_tiles(kern):
    rng = np.random.default_rng(9)
    layer = make_layer(rng, 4, 4)
    x = rng.standard_normal((1, 4, 1, 3)).astype(np.float32)
    chain = make_chain(kern, [layer])
    a = run_chain(kern, chain, [layer], x, [None], 1)
    b = run_chain(kern, chain, [layer], x, [None], 64)
    assert np.array_equal(a, b)


# ----------------------------------------------------------------------------------
# flush-to-zero
# ----------------------------------------------------------------------------------
def test_subnormal_weights_and_inputs(kern):
    rng = np.random.default_rng(10)
    tiny = np.float32(1e-40)          # subnormal in float32
    assert 0 < tiny < np.finfo(np.float32).tiny
    layer = make_layer(rng, 9, 7)
    layer.weight = np.full_like(layer.weight, tiny)
    x = rng.standard_normal((1, 9, 5, 6)).astype(np.float32)
    chain = make_chain(kern, [layer])
    for t in THREADS:
        y = run_chain(kern, chain, [layer], x, [None], t)
        np.testing.assert_allclose(y, np.broadcast_to(layer.bias[None, :, None, None],
                                                      y.shape), rtol=0, atol=1e-30)
    layer2 = make_layer(rng, 9, 7)
    xs = np.full((1, 9, 5, 6), tiny, np.float32)
    chain2 = make_chain(kern, [layer2])
    y = run_chain(kern, chain2, [layer2], xs, [None], 2)
    np.testing.assert_allclose(y, np.broadcast_to(layer2.bias[None, :, None, None],
                                                  y.shape), rtol=0, atol=1e-30)
    # the caller's floating-point mode is restored: numpy still produces subnormals
    v = np.array([1e-38], np.float32) / np.float32(1000.0)
    assert v[0] != 0.0


def test_flush_to_zero_is_on_in_every_thread(kern):
    """y = 1 * x + 0 on subnormal x is exactly 0 (x86 MXCSR DAZ/FTZ, aarch64 FPCR.FZ):
    a subnormal reaching the output would mean the kernels ran without the mode, on
    the calling thread or on a pool worker; afterwards the caller's mode is back."""
    tiny = np.float32(1e-40)
    layer = make_layer(np.random.default_rng(11), 1, 1)
    layer.weight = np.ones_like(layer.weight)
    layer.bias = np.zeros_like(layer.bias)
    x = np.full((2, 1, 16, 4 * kern.PANEL_WIDTH + 3), tiny, np.float32)
    chain = make_chain(kern, [layer])
    for t in (1, 3):
        y = run_chain(kern, chain, [layer], x, [None], t, tile=kern.PANEL_WIDTH)
        assert not y.any(), f"threads={t}: {np.count_nonzero(y)} subnormals not flushed"
    assert (x * np.float32(1.0) == tiny).all()  # numpy's (this thread's) mode restored


# ----------------------------------------------------------------------------------
# element-wise kernels
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 3, 17), (1, 5, 1000), (2, 7, 9973)])
@pytest.mark.parametrize("epilogue", ["none", "relu", "clip", "leaky_clip"])
def test_affine_act(kern, shape, epilogue):
    rng = np.random.default_rng(11)
    n, c, p = shape
    x = rng.standard_normal(shape).astype(np.float32)
    scale = rng.standard_normal(c).astype(np.float32)
    shift = rng.standard_normal(c).astype(np.float32)
    a = EPILOGUES[epilogue]
    ref = act_ref(x.astype(np.float64) * scale[None, :, None] + shift[None, :, None],
                  a.lo, a.hi, a.alpha)
    first = None
    for t in THREADS:
        y = np.full(shape, np.nan, np.float32)
        kern.affine_act(x, y, scale, shift, n, c, p, a.lo, a.hi, a.alpha, t)
        if first is None:
            first = y
            assert_close(y, ref)
        else:
            assert np.array_equal(y, first)


@pytest.mark.parametrize("size", [1, 15, 17, 16384, 16385, 65536 + 13, 200_003])
@pytest.mark.parametrize("epilogue", ["none", "relu", "leaky", "clip"])
def test_add_act(kern, size, epilogue):
    rng = np.random.default_rng(12)
    a = rng.standard_normal(size).astype(np.float32)
    b = rng.standard_normal(size).astype(np.float32)
    e = EPILOGUES[epilogue]
    ref = act_ref(a.astype(np.float64) + b, e.lo, e.hi, e.alpha)
    first = None
    for t in THREADS:
        y = np.full(size, np.nan, np.float32)
        kern.add_act(a, b, y, size, e.lo, e.hi, e.alpha, t)
        if first is None:
            first = y
            assert_close(y, ref)
        else:
            assert np.array_equal(y, first)


# ----------------------------------------------------------------------------------
# planner arithmetic
# ----------------------------------------------------------------------------------
BLOCK_ROWS = sorted({k.MAX_BLOCK_ROWS for k in KERNELS.values()})
# every variant's panel, and three of them (an odd number of vectors)
PANEL_WIDTHS = sorted({m * k.PANEL_WIDTH for k in KERNELS.values() for m in (1, 3)})
CHUNKS = sorted({k.REDUCTION_CHUNK for k in KERNELS.values()})


@pytest.mark.parametrize("mr", sorted({1, *BLOCK_ROWS, MAX_ROWS + 2}))
def test_split_rows(mr):
    for count in list(range(0, 40)) + [64, 65, 127, 1000]:
        rows = plan.split_rows(count, mr)
        assert sum(rows) == count
        assert all(1 <= r <= mr for r in rows)
        assert len(rows) == -(-count // mr)
        if rows:
            assert max(rows) - min(rows) <= 1
    assert plan.split_rows(16, 6) == [6, 5, 5]


@pytest.mark.parametrize("nr", PANEL_WIDTHS)
@pytest.mark.parametrize("chunk", [None] + CHUNKS)
def test_tile_pixels(nr, chunk):
    for max_c in (1, 3, 64, 256, 2048, 100_000):
        for pixels in (1, 7, nr - 1, nr, nr + 1, 2 * nr + 1, 1000, 3136, 12544, 1 << 20):
            tile = plan.tile_pixels(nr, max_c, pixels, chunk=chunk)
            assert tile % nr == 0 and tile >= nr, (nr, max_c, pixels, tile)
            tiles = -(-pixels // tile)
            assert tiles * tile >= pixels
            assert (tiles - 1) * tile < pixels   # no empty tile
            # the padding in the last tile is less than one panel per tile
            assert tiles * tile - pixels < tiles * nr
            assert tile <= 512 + nr


@pytest.mark.parametrize("cin,cout,group", [(1, 1, 1), (17, 13, 1), (12, 18, 3),
                                            (64, 65, 1), (8, 8, 8)])
@pytest.mark.parametrize("mr", BLOCK_ROWS)
def test_pack_layer_roundtrip(cin, cout, group, mr):
    rng = np.random.default_rng(13)
    layer = make_layer(rng, cin, cout, group=group)
    packed, blocks = plan.pack_layer(layer, mr)
    assert packed.dtype == np.float32 and packed.flags.c_contiguous
    assert blocks.dtype == np.intp and blocks.shape[1] == 4
    k = cin // group
    rebuilt = np.full((cout, k), np.nan, np.float32)
    for rows, cout0, cin0, offset in blocks:
        assert 1 <= rows <= mr
        assert cin0 == (cout0 // (cout // group)) * k
        panel = packed[offset:offset + rows * k].reshape(k, rows)
        rebuilt[cout0:cout0 + rows] = panel.T
    assert np.array_equal(rebuilt, layer.weight)
    assert packed.size == cout * k


# ----------------------------------------------------------------------------------
# through the planner: Program -> KernelSet -> ShapePlan
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("auto_pad,strides,pads", [
    ("NOTSET", (1, 1), (0, 0, 0, 0)), ("NOTSET", (2, 2), (1, 0, 0, 1)),
    ("SAME_UPPER", (2, 2), (0, 0, 0, 0)), ("SAME_LOWER", (3, 2), (0, 0, 0, 0)),
    ("VALID", (2, 3), (0, 0, 0, 0))])
def test_shape_plan(kern, auto_pad, strides, pads):
    rng = np.random.default_rng(14)
    layer = make_layer(rng, 6, 10, strides=strides, pads=pads, act=EPILOGUES["relu"])
    layer.auto_pad = auto_pad
    layer2 = make_layer(rng, 10, 3)
    step = ChainStep("x", "y", [layer, layer2])
    program = Program(inputs=(ValueInfo("x", "float32", (None, 6, None, None)),),
                      outputs=(ValueInfo("y", "float32", None),), steps=[step])
    kset = plan.KernelSet(program, kern)
    x = rng.standard_normal((2, 6, 9, 10)).astype(np.float32)
    ref = reference(x, [layer, layer2], [None, None])
    first = None
    for t in THREADS:
        sp = plan.ShapePlan(program, kset, {"x": x.shape}, t)
        env = sp.execute({"x": x})
        y = env["y"]
        assert set(env) == {"x", "y"}
        if first is None:
            first = y
            assert_close(y, ref)
        else:
            assert np.array_equal(first, y)
    assert sp.flops == layer.flops(2, *ref.shape[2:]) + layer2.flops(2, *ref.shape[2:])


# ----------------------------------------------------------------------------------
# strided / padded layers on images large enough for multi-panel tiles; in a subprocess
# so that a memory error in the gather path fails this test instead of the whole run
# ----------------------------------------------------------------------------------
LARGE_GEOMETRIES = [((1, 1), (0, 1, 0, 0), (32, 32)), ((2, 2), (1, 1, 1, 1), (57, 41)),
                    ((1, 1), (79, 1, 7, 5), (32, 32)), ((3, 2), (0, 0, 2, 0), (5, 999)),
                    ((2, 2), (0, 0, 0, 0), (64, 64)), ((1, 2), (2, 2, 2, 2), (40, 40))]


def check_large_geometries():
    """Run every variant on LARGE_GEOMETRIES; returns a list of problems."""
    problems = []
    rng = np.random.default_rng(15)
    for name in VARIANTS:
        kern = _backend.kernels(name)
        for strides, pads, hw in LARGE_GEOMETRIES:
            layers = [make_layer(rng, 24, 16, strides=strides, pads=pads,
                                 act=EPILOGUES["relu"]), make_layer(rng, 16, 8)]
            x = rng.standard_normal((2, 24) + hw).astype(np.float32)
            try:
                check_chain(kern, rng, layers, x, what=f"{strides} {pads} {hw}")
            except AssertionError as exc:
                problems.append(f"{name} strides={strides} pads={pads} {hw}: {exc}")
    return problems


def test_strides_and_pads_on_large_images(tmp_path):
    import os
    import subprocess
    import sys
    import pyconv1x1
    if EMULATED:  # qemu-user cannot start a child arm64 Python: the same checks in-process
        problems = check_large_geometries()
        assert not problems, "\n".join(problems)
        return
    tests = os.path.dirname(os.path.abspath(__file__))
    code = ("import sys\n"
            f"sys.path[:0] = [{tests!r}]\n"
            "import test_kernels\n"
            "problems = test_kernels.check_large_geometries()\n"
            "print('\\n'.join(problems) or 'ok')\n"
            "sys.exit(1 if problems else 0)\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, (f"exit {r.returncode}\n{r.stdout[-3000:]}\n"
                               f"{r.stderr[-3000:]}")


@pytest.mark.parametrize("cin", [63, 64, 65, 256, "kc-1", "kc", "kc+1", "4kc"])
@pytest.mark.parametrize("res_mode", [RES_BEFORE_ACT, RES_AFTER_ACT])
def test_reductions_of_any_length_with_residual(kern, cin, res_mode):
    """One micro-kernel call per weight block covers every full panel of a tile, for
    short and long reductions alike: residuals, full panels and a partial last panel,
    tiles of one and of several panels, in a chain. Tiles are multiples of the variant's
    panel (the kernels' precondition); reductions are fixed lengths and lengths around
    the variant's chunk."""
    kc, nr = kern.REDUCTION_CHUNK, kern.PANEL_WIDTH
    if isinstance(cin, str):
        cin = {"kc-1": kc - 1, "kc": kc, "kc+1": kc + 1, "4kc": 4 * kc}[cin]
    rng = np.random.default_rng(cin)
    layers = [make_layer(rng, cin, 70, act=EPILOGUES["relu"], res_mode=res_mode),
              make_layer(rng, 70, 11, act=EPILOGUES["leaky"], res_mode=res_mode)]
    # 12 full panels and a partial one more than half a panel wide (9 x 23 at nr 16)
    x = rng.standard_normal((2, cin) + image(13 * nr - 1)).astype(np.float32)
    check_chain(kern, rng, layers, x, tiles=(None, nr, 3 * nr), what=f"K={cin}")


# ----------------------------------------------------------------------------------
# batch-folded tiles (a tile cuts the batch's n * p pixels, images back to back) and
# split runs (layer by layer, tasks of a tile and a range of output channels)
# ----------------------------------------------------------------------------------
FOLD_THREADS = (1, 2, 3, 5, 8)


SPLITS = (1, 2, 5, 64)


def check_folded(kern, rng, layers, x, tiles=None, what="", splits=SPLITS):
    """Folded and unfolded runs, fused (split 1) and layer by layer with output channels
    cut into ranges (split > 1), at several tiles and 1..8 threads: all bitwise equal to
    the unfolded fused run on one thread, which is close to the float64 reference; then
    the bound forms."""
    n, _, h, w = x.shape
    first = layers[0]
    ho, wo, pt, pl = out_geometry(first, h, w)
    nr = kern.PANEL_WIDTH
    residuals = [rng.standard_normal((n, l.cout, ho, wo)).astype(np.float32)
                 if l.res_mode else None for l in layers]
    res = tuple(residuals)
    chain = make_chain(kern, layers)
    unfolded = run_chain(kern, chain, layers, x, residuals, 1)
    assert_close(unfolded, reference(x, layers, residuals))
    max_c = max(max(l.cin, l.cout) for l in layers)
    planned, _ = plan.choose_tiling(nr, max_c, n, ho * wo, 8, kern.REDUCTION_CHUNK)
    x_before = x.copy()
    for folded in (True, False):
        for split in splits:
            for tile in tiles or (nr, 3 * nr, planned):
                for t in FOLD_THREADS:
                    y = np.full_like(unfolded, np.nan)
                    chain.run(x, y, res, n, h, w, ho, wo, first.strides[0],
                              first.strides[1], pt, pl, tile, t, folded, split)
                    assert np.array_equal(y, unfolded), \
                        (f"{what}: {kern.VARIANT} folded={folded} split={split} "
                         f"tile={tile} threads={t} differs")
        for split in (1, 3):
            bound = chain.bind(tuple(unfolded.shape), n, h, w, ho, wo, first.strides[0],
                               first.strides[1], pt, pl, planned, 2, folded, split)
            assert np.array_equal(bound(x, res), unfolded), \
                f"{what}: bound chain folded={folded} split={split} differs"
    assert np.array_equal(x, x_before)
    return unfolded


@pytest.mark.parametrize("cin,cout", [(1, 1), (3, 7), (17, "rows+1")])
def test_folded_one_pixel_images(kern, cin, cout):
    """N x C x 1 x 1: batches of vectors fill panels with one pixel per image; batch
    sizes around the panel width and up to 70."""
    nr = kern.PANEL_WIDTH
    cout = kern.MAX_BLOCK_ROWS + 1 if cout == "rows+1" else cout
    rng = np.random.default_rng(cin * 100 + cout)
    # around the matrix-vector limit, the quarter (AVX-512) and half-width kernels, a
    # panel, and a panel plus one pixel
    for n in sorted({1, 2, 3, 4, 5, nr // 4, nr // 4 + 1, nr // 2, nr // 2 + 1, nr - 1,
                     nr, nr + 1, 64, 70}):
        layers = [make_layer(rng, cin, cout, act=EPILOGUES["leaky_clip"])]
        x = rng.standard_normal((n, cin, 1, 1)).astype(np.float32)
        check_folded(kern, rng, layers, x, what=f"1x1 batch {n}")


@pytest.mark.parametrize("res_mode", [RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT])
def test_folded_chain_7x7_with_residuals(kern, res_mode):
    rng = np.random.default_rng(res_mode)
    layers = [make_layer(rng, 17, 13, act=EPILOGUES["relu"], res_mode=res_mode),
              make_layer(rng, 13, kern.MAX_BLOCK_ROWS * 2 + 1, act=EPILOGUES["clip"]),
              make_layer(rng, kern.MAX_BLOCK_ROWS * 2 + 1, 5, res_mode=res_mode)]
    x = rng.standard_normal((3, 17, 7, 7)).astype(np.float32)
    check_folded(kern, rng, layers, x, what="7x7 x 3")


@pytest.mark.parametrize("strides,pads", [((2, 2), (0, 0, 0, 0)), ((1, 1), (1, 2, 0, 1)),
                                          ((2, 3), (1, 0, 2, 1))])
@pytest.mark.parametrize("res_mode", [RES_BEFORE_ACT, RES_AFTER_ACT])
def test_folded_strides_pads_residuals(kern, strides, pads, res_mode):
    rng = np.random.default_rng(7)
    layers = [make_layer(rng, 5, 9, act=EPILOGUES["leaky"], res_mode=res_mode,
                         strides=strides, pads=pads),
              make_layer(rng, 9, 4, act=EPILOGUES["relu6"], res_mode=res_mode)]
    for n, hw in ((4, (7, 7)), (9, (3, 5)), (2, (1, 1))):
        x = rng.standard_normal((n, 5) + hw).astype(np.float32)
        check_folded(kern, rng, layers, x, what=f"{n} x {hw} {strides} {pads}")


def test_folded_long_reductions_and_remainders(kern):
    """Chunked reductions (REDUCTION_CHUNK + 3 input channels), block remainders and a
    last panel more than half full, in folded tiles of 5 x 5 images."""
    kc, rows = kern.REDUCTION_CHUNK, kern.MAX_BLOCK_ROWS
    rng = np.random.default_rng(11)
    layers = [make_layer(rng, kc + 3, rows + 1, act=EPILOGUES["relu"],
                         res_mode=RES_AFTER_ACT),
              make_layer(rng, rows + 1, 2 * rows - 1)]
    x = rng.standard_normal((5, kc + 3, 5, 5)).astype(np.float32)
    check_folded(kern, rng, layers, x, what="chunked")


def test_folded_preconditions(kern):
    rng = np.random.default_rng(0)
    layer = make_layer(rng, 3, 4)
    chain = make_chain(kern, [layer])
    nr = kern.PANEL_WIDTH
    x = np.zeros((2, 3, 1, 1), np.float32)
    y = np.zeros((2, 4, 1, 1), np.float32)
    with pytest.raises(ValueError, match="folded"):
        chain.bind((1 << 40, 4, 1 << 20, 1), 1 << 40, 1 << 20, 1, 1 << 20, 1, 1, 1, 0,
                   0, nr, 1, True)
    with pytest.raises(ValueError, match="tile"):
        chain.run(x, y, (None,), 2, 1, 1, 1, 1, 1, 1, 0, 0, nr + 1, 1, True)
    for split in (0, -1, 1 << 20):
        with pytest.raises(ValueError, match="split"):
            chain.run(x, y, (None,), 2, 1, 1, 1, 1, 1, 1, 0, 0, nr, 1, True, split)
        with pytest.raises(ValueError, match="split"):
            chain.bind((2, 4, 1, 1), 2, 1, 1, 1, 1, 1, 1, 0, 0, nr, 1, False, split)
    # an empty batch or empty images run no task
    for split in (1, 2):
        chain.run(np.zeros((0, 3, 1, 1), np.float32), np.zeros((0, 4, 1, 1), np.float32),
                  (None,), 0, 1, 1, 1, 1, 1, 1, 0, 0, nr, 2, True, split)


@pytest.mark.parametrize("nr", PANEL_WIDTHS)
def test_choose_tiling_folds_small_images(nr):
    for max_c in (3, 256, 2048):
        # one image, or images of whole panels: no fold
        assert plan.choose_tiling(nr, max_c, 1, 1, 8) == (nr, False)
        assert not plan.choose_tiling(nr, max_c, 8, 4 * nr, 8)[1]
        assert not plan.choose_tiling(nr, max_c, 4, 224 * 224, 8)[1]
        # batches of vectors and of images smaller than a panel: folded
        for n, p in ((2, 1), (64, 1), (3, nr // 2), (8, nr + 1)):
            tile, folded = plan.choose_tiling(nr, max_c, n, p, 8)
            assert folded and tile % nr == 0, (n, p, tile)
            assert plan.panel_lanes(nr, n * p, tile) < n * plan.panel_lanes(
                nr, p, plan.tile_pixels(nr, max_c, p, 8))


def test_split_wide_layers_few_pixels(kern):
    """One 7 x 7 image through wide layers (more weight blocks than tasks want), one
    tile: split runs cut every layer's output channels; residuals both ways."""
    rows = kern.MAX_BLOCK_ROWS
    rng = np.random.default_rng(5)
    layers = [make_layer(rng, 40, 20 * rows + 1, act=EPILOGUES["relu"],
                         res_mode=RES_BEFORE_ACT),
              make_layer(rng, 20 * rows + 1, 7 * rows, act=EPILOGUES["relu6"]),
              make_layer(rng, 7 * rows, 33, res_mode=RES_AFTER_ACT)]
    x = rng.standard_normal((1, 40, 7, 7)).astype(np.float32)
    check_folded(kern, rng, layers, x, splits=(1, 2, 3, 4, 7, 21, 4096), what="split")


@pytest.mark.parametrize("group", [2, 3])
def test_split_grouped_layers(kern, group):
    rng = np.random.default_rng(group)
    layers = [make_layer(rng, 6 * group, 5 * group, group=group, act=EPILOGUES["leaky"]),
              make_layer(rng, 5 * group, 9 * group, group=group, res_mode=RES_AFTER_ACT)]
    x = rng.standard_normal((3, 6 * group, 5, 3)).astype(np.float32)
    check_folded(kern, rng, layers, x, what=f"groups {group}")


def test_choose_split():
    assert plan.choose_split(8, 1, 100) == 1      # one thread: never
    assert plan.choose_split(100, 4, 100) == 1    # tiles enough
    for threads in (2, 4, 8, 16):
        for ntiles in (1, 2, 3, threads):
            split = plan.choose_split(ntiles, threads, 1000)
            assert ntiles * split >= plan.SPLIT_TASKS_PER_THREAD * threads
            assert ntiles * (split - 1) < plan.SPLIT_TASKS_PER_THREAD * threads
        assert plan.choose_split(1, threads, 3) <= 3  # at most the blocks there are


def test_choose_split_shares_uneven_tiles_out():
    """Tiles too few and too uneven to share out (14x14 in tiles of a panel: the last
    holds a few pixels) are cut into output-channel ranges until the busiest thread has
    at most SPLIT_BALANCE of the mean; even tiles, tiles enough or no sizes: as before."""
    nr = 64
    sizes = plan.tile_sizes(1, 196, nr, False)
    assert sizes == [64, 64, 64, 4]
    assert plan.split_makespan(sizes, 1, 2) == pytest.approx(128 / 98)
    split = plan.choose_split(4, 2, 100, sizes)
    assert split > 1 and plan.split_makespan(sizes, split, 2) <= plan.SPLIT_BALANCE
    assert plan.split_makespan(sizes, split - 1, 2) > plan.SPLIT_BALANCE
    assert plan.choose_split(4, 2, 100) == 1           # sizes not given
    assert plan.choose_split(4, 2, 1, sizes) == 1      # one block: nothing to cut
    assert plan.choose_split(4, 2, 100, [64] * 4) == 1  # even: shares out
    many = plan.tile_sizes(1, 100 * nr + 3, nr, False)
    assert plan.choose_split(len(many), 2, 100, many) == 1  # tiles enough per thread
    assert plan.tile_sizes(3, 5, 4, True) == [4, 4, 4, 3]
    assert plan.tile_sizes(2, 5, 4, False) == [4, 1, 4, 1]
    assert plan.split_makespan([], 3, 4) == 1.0
    # one-layer steps ask for more tasks per thread (plan.SPLIT_TASKS_ONE_LAYER)
    for threads in (2, 3, 8):
        per = plan.SPLIT_TASKS_ONE_LAYER
        assert plan.choose_split(1, threads, 1000, [7], per) == per * threads
        assert plan.choose_split(1, threads, 5, [7], per) == 5


@pytest.mark.parametrize("res_mode", [RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT])
@pytest.mark.parametrize("pixels", [1, 2, 3, 4, 5])
def test_matrix_vector_tiles_match_panels(kern, res_mode, pixels):
    """Tiles of a few pixels run the matrix-vector kernel (channels in the lanes), the
    same pixels folded from a batch of 70 run the panel kernels: the bits agree. Long
    reductions (chunked in the panel kernels, not in the matrix-vector one), blocks in
    groups of four and a remainder, every epilogue kind, residuals, groups."""
    kc, rows = kern.REDUCTION_CHUNK, kern.MAX_BLOCK_ROWS
    rng = np.random.default_rng(pixels * 10 + res_mode)
    for epilogue in ("none", "relu", "leaky_clip", "clip_hi"):
        layers = [make_layer(rng, kc + 3, 5 * rows + 1, act=EPILOGUES[epilogue],
                             res_mode=res_mode),
                  make_layer(rng, 5 * rows + 1, 3, act=EPILOGUES["leaky"]),
                  make_layer(rng, 3, 2 * rows, group=1, res_mode=res_mode),
                  make_layer(rng, 2 * rows, 4 * rows, group=2)]
        x = rng.standard_normal((70, kc + 3, 1, pixels)).astype(np.float32)
        check_folded(kern, rng, layers, x, splits=(1, 3), what=f"gemv {epilogue}")


# ----------------------------------------------------------------------------------
# the channel-lane orientation (output channels in the vector lanes, pixels broadcast):
# sizes from the kernel module under test (VECTOR_LANES, LANES_BLOCK_ROWS, LANES_PIXELS,
# LANES_REDUCTION_CHUNK, PANEL_WIDTH)
# ----------------------------------------------------------------------------------
def lanes_chain(kern, layers):
    chain = make_chain(kern, layers)
    for i, layer in enumerate(layers):
        chain.set_lanes(i, *plan.pack_lanes(layer, kern.VECTOR_LANES,
                                            kern.LANES_BLOCK_ROWS))
    return chain


def run_masks(kern, rng, layers, x, masks, threads=THREADS, tiles=(None,), folded=(False,),
              splits=(1,), what=""):
    """Every (mask, tile, fold, split, thread count) bitwise equal to the first run,
    which matches the float64 reference."""
    n, _, h, w = x.shape
    first = layers[0]
    ho, wo, pt, pl = out_geometry(first, h, w)
    residuals = [rng.standard_normal((n, l.cout, ho, wo)).astype(np.float32)
                 if l.res_mode else None for l in layers]
    ref = reference(x, layers, residuals)
    chain = lanes_chain(kern, layers)
    nr = kern.PANEL_WIDTH
    base = None
    for mask in masks:
        for tile in tiles:
            tile = tile or -(-max(1, ho * wo) // nr) * nr
            for fold in folded:
                for split in splits:
                    for t in threads:
                        y = np.full((n, layers[-1].cout, ho, wo), np.nan, np.float32)
                        chain.run(x, y, tuple(residuals), n, h, w, ho, wo,
                                  first.strides[0], first.strides[1], pt, pl, tile, t,
                                  fold, split, lanes=mask)
                        if base is None:
                            base = y
                            assert_close(y, ref)
                        else:
                            assert np.array_equal(y, base), (
                                f"{what} {kern.VARIANT}: mask={mask} tile={tile} "
                                f"folded={fold} split={split} threads={t} differs")
    return base


def lanes_edges(kern):
    """Output-channel counts at the lanes blocks' edges: 1, a vector less one, a vector
    and one, a block, a block and one, two blocks and a vector and 3."""
    L, R = kern.VECTOR_LANES, kern.LANES_BLOCK_ROWS
    return sorted({1, max(1, L - 1), L + 1, R, R + 1, 2 * R + L + 3})


def test_lanes_constants(kern):
    lanes, nv, mr_max = _variants.VARIANTS[kern.VARIANT]["shape"]
    assert kern.VECTOR_LANES == lanes
    assert kern.LANES_BLOCK_ROWS == nv * lanes and kern.LANES_PIXELS == mr_max
    assert kern.LANES_REDUCTION_CHUNK >= 16


def test_pack_lanes_round_trip(kern):
    rng = np.random.default_rng(5)
    for cout, group in [(1, 1), (kern.LANES_BLOCK_ROWS + 3, 1), (2 * 12, 3)]:
        layer = make_layer(rng, 6 * group, cout, group=group)
        packed, bias, blocks = plan.pack_lanes(layer, kern.VECTOR_LANES,
                                               kern.LANES_BLOCK_ROWS)
        k = layer.weight.shape[1]
        weight = np.zeros_like(layer.weight)
        for rows, cout0, cin0, woff, boff in blocks.tolist():
            width = -(-rows // kern.VECTOR_LANES) * kern.VECTOR_LANES
            blk = packed[woff:woff + width * k].reshape(k, width)
            assert not blk[:, rows:].any() and not bias[boff + rows:boff + width].any()
            weight[cout0:cout0 + rows] = blk[:, :rows].T
            assert np.array_equal(bias[boff:boff + rows], layer.bias[cout0:cout0 + rows])
            assert cin0 == cout0 // (cout // group) * k
        assert np.array_equal(weight, layer.weight)


@pytest.mark.parametrize("res_mode", [RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT])
def test_lanes_single_layer_edges(kern, res_mode):
    """Every lanes block remainder x pixel-group remainder x reduction chunk edge, both
    orientations bitwise equal, threads 1..8."""
    rng = np.random.default_rng(11 + res_mode)
    kc, px, nr = kern.LANES_REDUCTION_CHUNK, kern.LANES_PIXELS, kern.PANEL_WIDTH
    for cout in lanes_edges(kern):
        for cin in (1, kc - 1, kc + 1, 2 * kc + 3):
            for pixels in (1, px - 1 or 1, px + 1, nr + px + 1):
                layer = make_layer(rng, cin, cout, act=EPILOGUES["leaky_clip"],
                                   res_mode=res_mode)
                x = rng.standard_normal((1, cin) + image(pixels)).astype(np.float32)
                run_masks(kern, rng, [layer], x, (0, 1), threads=(1, 2, 5, 8),
                          what=f"cout={cout} cin={cin} pixels={pixels}")


@pytest.mark.parametrize("epilogue", sorted(EPILOGUES))
def test_lanes_epilogues(kern, epilogue):
    rng = np.random.default_rng(3)
    layer = make_layer(rng, 37, kern.LANES_BLOCK_ROWS + 5, act=EPILOGUES[epilogue])
    x = rng.standard_normal((2, 37, 3, 5)).astype(np.float32) * 3
    run_masks(kern, rng, [layer], x, (0, 1), threads=(1, 3))


def test_lanes_chain_mixed_orientations_threads_1_to_8(kern):
    """A chain whose layers alternate orientations (every mask), residuals before and
    after the activation, several tiles, split runs, threads 1..8."""
    rng = np.random.default_rng(21)
    R = kern.LANES_BLOCK_ROWS
    layers = [make_layer(rng, 19, R + 3, act=EPILOGUES["relu"]),
              make_layer(rng, R + 3, 2 * R - 1, act=EPILOGUES["clip"],
                         res_mode=RES_BEFORE_ACT),
              make_layer(rng, 2 * R - 1, 7, act=EPILOGUES["leaky"], res_mode=RES_AFTER_ACT)]
    nr = kern.PANEL_WIDTH
    x = rng.standard_normal((2, 19) + image(2 * nr + 5)).astype(np.float32)
    run_masks(kern, rng, layers, x, range(8), threads=range(1, 9), tiles=(nr, 2 * nr),
              splits=(1, 3), what="mixed chain")


@pytest.mark.parametrize("n,hw,strides,pads", [
    (8, (1, 1), (1, 1), (0, 0, 0, 0)),     # a batch of vectors
    (5, (7, 7), (1, 1), (0, 0, 0, 0)),     # small maps, tiles across images
    (3, (9, 7), (2, 2), (1, 0, 1, 1)),     # strided and padded, folded
    (2, (5, 5), (1, 2), (0, 1, 0, 0)),
])
def test_lanes_folded_batch_spanning_tiles(kern, n, hw, strides, pads):
    """Folded tiles that span images, with strides, pads and both residual modes, in
    both orientations, fused and split, threads 1..8: all bitwise the same."""
    rng = np.random.default_rng(n)
    R = kern.LANES_BLOCK_ROWS
    layers = [make_layer(rng, 23, R + 1, act=EPILOGUES["relu6"], res_mode=RES_AFTER_ACT,
                         strides=strides, pads=pads),
              make_layer(rng, R + 1, 9, act=EPILOGUES["leaky_clip"],
                         res_mode=RES_BEFORE_ACT)]
    x = rng.standard_normal((n, 23) + hw).astype(np.float32)
    nr = kern.PANEL_WIDTH
    run_masks(kern, rng, layers, x, range(4), threads=(1, 2, 4, 8), tiles=(nr,),
              folded=(False, True), splits=(1, 2), what="folded")


@pytest.mark.parametrize("res_mode", [RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT])
def test_lanes_first_layer_reads_the_image_in_place(kern, res_mode):
    """A chain whose first layer runs channels-in-lanes reads an image without strides
    or pads where it lies (no gather): images of 1 pixel, a pixel group less one, and
    panels and a remainder, cut into tiles of one and two panels (so tiles start inside
    the image), alone and chained, fused and split (whose first layer then skips the
    gather job too), threads 1..8, with and without an input scale (which still
    gathers), all bitwise the same as the pixel panels; the input is not written."""
    rng = np.random.default_rng(31 + res_mode)
    R, nr, px = kern.LANES_BLOCK_ROWS, kern.PANEL_WIDTH, kern.LANES_PIXELS
    kc = kern.LANES_REDUCTION_CHUNK
    for cin, pixels in [(1, 1), (kc + 3, max(1, px - 1)), (2 * kc + 1, 2 * nr + px + 1)]:
        first = make_layer(rng, cin, R + 1, act=EPILOGUES["relu"], res_mode=res_mode)
        layers = [first, make_layer(rng, R + 1, 5, act=EPILOGUES["clip"])]
        for chain_layers in ([first], layers):
            x = rng.standard_normal((3, cin) + image(pixels)).astype(np.float32)
            x0 = x.copy()
            masks = (1, 0, 3) if len(chain_layers) == 2 else (1, 0)
            run_masks(kern, rng, chain_layers, x, masks, threads=range(1, 9),
                      tiles=(None, nr, 2 * nr), splits=(1, 2, 5),
                      what=f"in place cin={cin} p={pixels}")
            assert np.array_equal(x, x0)
            scale = rng.standard_normal((3, cin)).astype(np.float32)
            chain = lanes_chain(kern, chain_layers)
            n, _, h, w = x.shape
            res = tuple(rng.standard_normal((n, l.cout, h, w)).astype(np.float32)
                        if l.res_mode else None for l in chain_layers)
            out = []
            for mask, split in ((0, 1), (1, 1), (1, 3)):
                y = np.full((n, chain_layers[-1].cout, h, w), np.nan, np.float32)
                chain.run(x, y, res, n, h, w, h, w, 1, 1, 0, 0, nr, 2, False, split,
                          xscale=scale, lanes=mask)
                out.append(y)
            assert_close(out[0], reference(x * scale[:, :, None, None], chain_layers,
                                           list(res)))
            assert all(np.array_equal(out[0], o) for o in out[1:])
            assert np.array_equal(x, x0)


@pytest.mark.parametrize("hw", [(1, 1), (1, 2), (1, 3), (1, 7), (2, 4), (3, 3)])
def test_folded_images_of_a_few_pixels(kern, hw):
    """Folded batches of images of 1 .. 9 pixels (gathered and scattered a block of
    channels at a time below 8 pixels): channel counts around the block, residuals before
    and after the activation, both orientations, fused and split, threads 1..8, all
    bitwise the same as unfolded."""
    rng = np.random.default_rng(hw[0] * 10 + hw[1])
    nr = kern.PANEL_WIDTH
    layers = [make_layer(rng, 17, 33, act=EPILOGUES["relu"], res_mode=RES_AFTER_ACT),
              make_layer(rng, 33, 1, act=EPILOGUES["clip"], res_mode=RES_BEFORE_ACT),
              make_layer(rng, 1, 16, act=EPILOGUES["leaky"], res_mode=RES_BEFORE_ACT)]
    n = 2 * nr // (hw[0] * hw[1]) + 3
    x = rng.standard_normal((n, 17) + hw).astype(np.float32)
    x0 = x.copy()
    run_masks(kern, rng, layers, x, (0, 1, 7), threads=range(1, 9), tiles=(nr, 2 * nr),
              folded=(False, True), splits=(1, 3), what=f"folded {hw}")
    assert np.array_equal(x, x0)


def test_lanes_grouped_layer(kern):
    rng = np.random.default_rng(8)
    layer = make_layer(rng, 12, 3 * (kern.VECTOR_LANES + 1), group=3,
                       act=EPILOGUES["relu"])
    x = rng.standard_normal((2, 12, 3, 3)).astype(np.float32)
    run_masks(kern, rng, [layer], x, (0, 1), threads=(1, 2), splits=(1, 2))


def test_set_lanes_checks_its_arguments(kern):
    rng = np.random.default_rng(2)
    layer = make_layer(rng, 5, kern.VECTOR_LANES + 2)
    chain = make_chain(kern, [layer])
    x = np.zeros((1, 5, 1, 1), np.float32)
    y = np.zeros((1, layer.cout, 1, 1), np.float32)
    with pytest.raises(ValueError, match="lanes"):  # no packing yet
        chain.run(x, y, (None,), 1, 1, 1, 1, 1, 1, 1, 0, 0, kern.PANEL_WIDTH, 1, False, 1,
                  lanes=1)
    with pytest.raises(ValueError, match="lanes"):  # not a layer of the chain
        chain.bind((1, layer.cout, 1, 1), 1, 1, 1, 1, 1, 1, 1, 0, 0, kern.PANEL_WIDTH, 1,
                   False, 1, lanes=2)
    packed, bias, blocks = plan.pack_lanes(layer, kern.VECTOR_LANES, kern.LANES_BLOCK_ROWS)
    for bad in (blocks[:, :4].copy(), blocks[:-1].copy() if len(blocks) > 1 else blocks[:0],
                np.array([[1, 0, 5, 0, 0]], np.intp)):
        with pytest.raises(ValueError):
            chain.set_lanes(0, packed, bias, np.ascontiguousarray(bad))
    with pytest.raises(ValueError, match="outside"):
        chain.set_lanes(0, packed[:-1].copy(), bias, blocks)
    assert not chain.has_lanes(0)
    chain.set_lanes(0, packed, bias, blocks)
    assert chain.has_lanes(0)
    chain.run(x, y, (None,), 1, 1, 1, 1, 1, 1, 1, 0, 0, kern.PANEL_WIDTH, 1, False, 1,
              lanes=1)
    assert np.array_equal(y[0, :, 0, 0], np.maximum(layer.bias, -np.inf).astype(np.float32))


def test_choose_orientation_counts_every_tile(kern):
    """With the image's pixels given, the pixel lanes' use is that of all its tiles: a
    last tile of a few pixels (14x14 in tiles of 2 panels) counts."""
    rng = np.random.default_rng(2)
    R, nr, L = kern.LANES_BLOCK_ROWS, kern.PANEL_WIDTH, kern.VECTOR_LANES
    wide = make_layer(rng, 64, 4 * R)
    args = (nr, L, kern.MAX_BLOCK_ROWS)
    gemv = kern.GEMV_COLUMNS
    assert plan.tiles_lane_use(*args, 4 * nr, 2 * nr, gemv) == 1
    assert plan.tiles_lane_use(*args, 0, 0, gemv) == 1  # an empty batch
    for pixels, tile in [(3 * nr + 1, 2 * nr), (3 * nr + 4, 2 * nr), (2 * nr + 1, nr),
                         (5 * nr - 3, 2 * nr), (nr + 2, nr)]:
        use = plan.tiles_lane_use(*args, pixels, tile, gemv)
        full, rest = divmod(pixels, tile)
        want = pixels / (full * tile + rest / plan.pixel_lane_use(*args, rest, gemv))
        assert 0 < use <= 1 and use == pytest.approx(want)
        assert use <= plan.pixel_lane_use(*args, tile, gemv)
        mask = plan.choose_orientation([wide], kern, tile, pixels)
        assert mask == (plan.LANES_EFFICIENCY >= use), (pixels, tile)
    assert plan.tiles_lane_use(*args, 7, nr, gemv) == plan.pixel_lane_use(*args, 7, gemv)


def test_prefer_lanes_per_image(kern, monkeypatch):
    """Batches of images of half a panel up to one, every layer channels-in-lanes with
    long reductions, run per image instead of folded; nothing else does."""
    rng = np.random.default_rng(4)
    R, nr, K = kern.LANES_BLOCK_ROWS, kern.PANEL_WIDTH, plan.LANES_UNFOLD_MIN_K
    wide = make_layer(rng, K, 4 * R)
    short = make_layer(rng, K - 1, 4 * R)
    narrow = make_layer(rng, K, 1)
    prefer = plan.prefer_lanes_per_image
    for pixels in range(nr // 2, nr):
        lanes = plan.choose_orientation([wide, wide], kern, pixels, pixels) == 3
        assert prefer([wide, wide], kern, pixels, nr) == lanes
        assert not prefer([wide, short], kern, pixels, nr)
        assert not prefer([wide, narrow], kern, pixels, nr)
    assert prefer([wide, wide], kern, 3 * nr // 4 + 1, nr)  # 7x7 with AVX-512
    for pixels in (1, nr // 2 - 1, nr, 3 * nr + 4):
        assert not prefer([wide], kern, pixels, -(-pixels // nr) * nr)
    assert not prefer([], kern, nr - 1, nr)
    monkeypatch.setattr(plan.policy, "ORIENTATION", "pixels")
    assert not prefer([wide], kern, nr - 1, nr)


def test_choose_orientation_follows_lane_use(kern, monkeypatch):
    """The planner's rule: lanes where the channel lanes' use x LANES_EFFICIENCY is at
    least the pixel panels' use on the tile; forced settings win."""
    rng = np.random.default_rng(1)
    R, nr = kern.LANES_BLOCK_ROWS, kern.PANEL_WIDTH
    wide = make_layer(rng, 64, 4 * R)        # every channel lane used
    narrow = make_layer(rng, 64, 1)          # one lane of a vector
    short = make_layer(rng, 3, 4 * R)        # reduction below LANES_MIN_K
    big = type("Layer", (), dict(k=1024, cout=1024, group=1))()  # 4 MiB of weights
    for valid in (1, kern.GEMV_COLUMNS + 1, nr // 2 + 1, nr - 1, nr, 3 * nr + 1):
        use = plan.pixel_lane_use(nr, kern.VECTOR_LANES, kern.MAX_BLOCK_ROWS, valid,
                                  kern.GEMV_COLUMNS)
        assert 0 < use <= 1
        mask = plan.choose_orientation([wide, narrow, short], kern, valid)
        assert bool(mask & 1) == (plan.LANES_EFFICIENCY >= use), valid
        assert not mask & 2 or plan.LANES_EFFICIENCY / kern.VECTOR_LANES >= use
        assert not mask & 4
    assert plan.pixel_lane_use(nr, kern.VECTOR_LANES, kern.MAX_BLOCK_ROWS, nr, 0) == 1
    # megabytes of weights on a few pixels stream faster channels-in-lanes too
    for valid in range(1, kern.GEMV_COLUMNS + 1):
        use = plan.pixel_lane_use(nr, kern.VECTOR_LANES, kern.MAX_BLOCK_ROWS, valid,
                                  kern.GEMV_COLUMNS)
        assert plan.choose_orientation([big], kern, valid) == (plan.LANES_EFFICIENCY >= use)
    monkeypatch.setattr(plan.policy, "ORIENTATION", "lanes")
    assert plan.choose_orientation([wide, narrow, short], kern, nr) == 7
    monkeypatch.setattr(plan.policy, "ORIENTATION", "pixels")
    assert plan.choose_orientation([wide, narrow, short], kern, 1) == 0
