"""Epilogue programs in the kernels (pyconv1x1/_epilogue.h) against the float64
references of the op table, on every runnable ISA variant:

- accuracy of each op's vectorized approximation over a dense sweep with the tails,
  against float64 (bounds asserted; tools/epilogue_accuracy.py prints the table that the
  README states), and the special values: +-inf, NaN (propagates), +-0, subnormals
  (flushed to zero, as every kernel runs with FTZ/DAZ);
- conv layers with a program: odd shapes, every block height and panel edge, the
  matrix-vector path, residuals before and after the activation, reduction chunks:
  against float64, bitwise identical for 1 .. 8 threads, and bitwise equal to the same
  conv without a program followed by the element-wise kernel with it (one copy of each
  op's arithmetic, whichever kernel stored the block);
- the element-wise kernels (affine_act, add_act) with per-channel parameters.
"""
import math

import numpy as np
import pytest

from conftest import conv1x1_ref, load_tool
from pyconv1x1 import _backend, _variants, plan
from pyconv1x1.program.epilogue import OPS, Op
from pyconv1x1.program import RES_AFTER_ACT, RES_BEFORE_ACT, RES_NONE, ConvLayer

VARIANTS = _backend.runnable_variants()
KERNELS = {name: _backend.kernels(name) for name in VARIANTS}
MAX_ROWS = max(k.MAX_BLOCK_ROWS for k in KERNELS.values())
ACCURACY = load_tool("epilogue_accuracy")  # the sweep and the error measure
SWEEP = ACCURACY.sweep()
FLT_MIN = ACCURACY.FLT_MIN

# the op instances tested: name -> (scalar params); prelu also runs per channel below
PROGRAMS = {
    "sigmoid": [("sigmoid", ())],
    "hardsigmoid": [("hardsigmoid", (0.2, 0.5))],
    "hardswish": [("hardswish", ())],
    "tanh": [("tanh", ())],
    "silu": [("silu", ())],
    "gelu": [("gelu", ())],
    "gelu_tanh": [("gelu_tanh", ())],
    "prelu": [("prelu", (0.25,))],
    "clamp": [("clamp", (-0.5, 0.75))],
    "clamp_then_sigmoid_tanh": [("clamp", (-2.0, 3.0)), ("sigmoid", ()), ("tanh", ())],
    "four_ops": [("prelu", (0.1,)), ("gelu", ()), ("hardsigmoid", (0.3, 0.4)),
                 ("silu", ())],
}

# bounds asserted on the dense sweep: (max abs error, max relative error where the
# float64 result is at least tools/epilogue_accuracy.py's REL_FROM), about 2x the largest measured on any variant
# (tools/epilogue_accuracy.py prints them; the README states them). The abs errors of
# gelu and silu are < 3 ulp of outputs near 20. hardsigmoid: without FMA (the generic
# build) alpha * x is rounded before beta is added, which cancels near the lower kink.
# gelu_tanh: its argument u = sqrt(2 / pi) (x + 0.044715 x^3) is rounded to float32, and
# exp(2u) magnifies that in the far negative tail (x < -8, outputs < 1e-20)
BOUNDS = {
    "sigmoid": (2e-7, 4e-7),
    "hardsigmoid": (1e-7, 5e-4),
    "hardswish": (8e-7, 4e-7),
    "tanh": (2e-7, 3e-7),
    "silu": (3e-6, 5e-7),
    "gelu": (3e-6, 1e-6),  # 5e-6 without FMA: x^2 = hi + lo needs an exact product
    "gelu_tanh": (1.2e-6, 2e-5),
}


def ops_of(program):
    """[(name, params)] -> the table's Ops (a params entry that is an array is the
    per-channel vector; empty params: the defaults)."""
    return [Op(name, params if params else None) for name, params in program]


def kernel_ops(program, channels=None):
    """The kernels' (opcode, s0, s1[, s2, s3], vec) tuples of a program."""
    return tuple(op.kernel() for op in ops_of(program))


def program_ref(v, program, channel_axis=1):
    """float64 reference of a program on v (channels on channel_axis)."""
    v = np.asarray(v, np.float64)
    for op in ops_of(program):
        v = op.ref(v, channel_axis)
    return v


def run_unary(kern, x, program, nthreads=1):
    """The program on x through the element-wise kernel (scale 1, shift 0)."""
    return ACCURACY.run_ops(kern, x, [Op(n, p if p else None) for n, p in program],
                            nthreads)


def has_fma(variant):
    row = _variants.VARIANTS[variant]
    return "fma" in row["requires"] or row["arch"] == "aarch64"


@pytest.fixture(params=VARIANTS)
def kern(request):
    return KERNELS[request.param]


@pytest.mark.parametrize("name", sorted(BOUNDS))
def test_op_accuracy_against_float64(kern, name):
    abs_err, rel_err = ACCURACY.op_errors(kern, name, SWEEP)
    max_abs, max_rel = BOUNDS[name]
    if name == "gelu" and not has_fma(kern.VARIANT):
        max_rel = 5e-6
    assert abs_err <= max_abs and rel_err <= max_rel, \
        f"{kern.VARIANT} {name}: abs {abs_err:.3g} (bound {max_abs:g}), rel {rel_err:.3g} " \
        f"(bound {max_rel:g})"


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_special_values(kern, name):
    """inf and NaN follow the float64 formula (NaN in, NaN out; x * sigmoid(x) at -inf
    is NaN, as the ONNX graph Mul(x, Sigmoid(x)) computes it); subnormals are zero."""
    x = np.array([np.inf, -np.inf, np.nan, -np.nan, 0.0, -0.0, 1e-40, -1e-40, 5.0, -5.0],
                 np.float32)
    y = run_unary(kern, x, [(name, ())]).astype(np.float64)
    ref = program_ref(np.where(np.abs(x) < FLT_MIN, 0.0, x.astype(np.float64)),
                      [(name, ())])
    assert np.array_equal(np.isnan(y), np.isnan(ref)), f"{name}: {y} vs {ref}"
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(y[ok], ref[ok], rtol=2e-6, atol=1e-6, err_msg=name)


def test_op_table_matches_the_kernel_header():
    """Opcodes are written twice (the table, _epilogue.h's enum): the same numbers."""
    import os
    import re
    from conftest import REPO
    # the source tree's header (an installed package ships no C sources)
    header = open(os.path.join(REPO, "pyconv1x1", "_epilogue.h")).read()
    enum = {m.group(1).lower(): int(m.group(2))
            for m in re.finditer(r"PC1_OP_(\w+) = (\d+)", header)}
    assert enum.pop("last") == max(enum.values())
    assert enum == {name: kind.opcode for name, kind in OPS.items()}


# ----------------------------------------------------------------------------------
# conv layers with a program
# ----------------------------------------------------------------------------------
def make_chain(kern, layers, programs):
    specs = []
    for layer, program in zip(layers, programs):
        packed, blocks = plan.pack_layer(layer, kern.MAX_BLOCK_ROWS)
        spec = (packed, np.ascontiguousarray(layer.bias, np.float32), blocks, layer.cin,
                layer.cout, layer.weight.shape[1], -math.inf, math.inf, 1.0,
                int(layer.res_mode))
        if program:
            spec += (kernel_ops(program, layer.cout),)
        specs.append(spec)
    return kern.Chain(specs)


def run(kern, chain, x, cout, residuals, nthreads, tile):
    n, _, h, w = x.shape
    y = np.full((n, cout, h, w), np.nan, np.float32)
    chain.run(x, y, residuals, n, h, w, h, w, 1, 1, 0, 0, tile, nthreads)
    return y


def layer(rng, cin, cout, res_mode=RES_NONE):
    w = (rng.standard_normal((cout, cin)) * (2.0 / math.sqrt(cin))).astype(np.float32)
    b = rng.standard_normal(cout).astype(np.float32)
    return ConvLayer(names=("c",), weight=w, bias=b, residual="r" if res_mode else None,
                     res_mode=res_mode)


def with_slopes(program, cout, rng):
    """prelu ops get a per-channel slope vector"""
    return [(n, (rng.uniform(-0.5, 0.5, cout).astype(np.float32),) if n == "prelu" else p)
            for n, p in program]


def pixel_counts(kern):
    nr = kern.PANEL_WIDTH
    return sorted({1, 2, 3, 4, 5, nr // 4 + 1, nr - 1, nr + 3, 3 * nr + nr // 2 + 1})


@pytest.mark.parametrize("program", sorted(PROGRAMS))
@pytest.mark.parametrize("res_mode", [RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT])
def test_conv_with_program(kern, program, res_mode):
    rng = np.random.default_rng(sum(map(ord, program)) + res_mode)
    cin = 7
    for cout in (1, kern.MAX_BLOCK_ROWS + 1, 2 * MAX_ROWS + 3):
        prog = with_slopes(PROGRAMS[program], cout, rng)
        conv = layer(rng, cin, cout, res_mode)
        chain = make_chain(kern, [conv], [prog])
        plain = make_chain(kern, [layer_copy(conv, RES_BEFORE_ACT if res_mode ==
                                             RES_BEFORE_ACT else RES_NONE)], [None])
        for pixels in pixel_counts(kern):
            x = rng.standard_normal((2, cin, 1, pixels)).astype(np.float32)
            r = rng.standard_normal((2, cout, 1, pixels)).astype(np.float32)
            res = (r if res_mode else None,)
            tile = plan.tile_pixels(kern.PANEL_WIDTH, max(cin, cout), pixels,
                                    chunk=kern.REDUCTION_CHUNK)
            first = None
            for t in range(1, 9):
                y = run(kern, chain, x, cout, res, t, tile)
                if first is None:
                    first = y
                assert np.array_equal(y, first, equal_nan=True), \
                    f"{program} {kern.VARIANT} threads={t} pixels={pixels}"
            # the same pre-activation through the element-wise kernel: bitwise equal
            pre = run(kern, plain, x, cout, (r if res_mode == RES_BEFORE_ACT else None,),
                      1, tile)
            post = np.empty_like(pre)
            one, zero = np.ones(cout, np.float32), np.zeros(cout, np.float32)
            kern.affine_act(pre, post, one, zero, 2, cout, pixels, -np.inf, np.inf, 1.0,
                            1, kernel_ops(prog, cout))
            if res_mode == RES_AFTER_ACT:
                post += r
            assert np.array_equal(first, post, equal_nan=True), \
                f"{program} {kern.VARIANT} pixels={pixels}: conv epilogue != element-wise"
            # float64 reference
            v = conv1x1_ref(x.astype(np.float64), conv.weight, conv.bias)
            if res_mode == RES_BEFORE_ACT:
                v = v + r
            v = program_ref(v, prog)
            if res_mode == RES_AFTER_ACT:
                v = v + r
            np.testing.assert_allclose(first, v, rtol=1e-4, atol=1e-4,
                                       err_msg=f"{program} {kern.VARIANT} {pixels}")


def layer_copy(conv, res_mode):
    return ConvLayer(names=conv.names, weight=conv.weight, bias=conv.bias,
                     residual="r" if res_mode else None, res_mode=res_mode)


def test_long_reduction_with_program(kern):
    """A reduction in several chunks: the program runs once, after the last."""
    rng = np.random.default_rng(5)
    cin, cout, pixels = 2 * kern.REDUCTION_CHUNK + 3, 5, kern.PANEL_WIDTH * 2 + 1
    conv = layer(rng, cin, cout)
    prog = [("silu", ())]
    x = rng.standard_normal((1, cin, 1, pixels)).astype(np.float32)
    tile = plan.tile_pixels(kern.PANEL_WIDTH, cin, pixels, chunk=kern.REDUCTION_CHUNK)
    y = run(kern, make_chain(kern, [conv], [prog]), x, cout, (None,), 1, tile)
    v = program_ref(conv1x1_ref(x.astype(np.float64), conv.weight, conv.bias), prog)
    np.testing.assert_allclose(y, v, rtol=1e-4, atol=1e-4)


def test_chain_of_programs(kern):
    """Programs on an intermediate layer (panel layout) and on the last one."""
    rng = np.random.default_rng(9)
    layers = [layer(rng, 5, 11), layer(rng, 11, 3)]
    progs = [[("gelu", ())], with_slopes([("prelu", ()), ("tanh", ())], 3, rng)]
    for pixels in pixel_counts(kern):
        x = rng.standard_normal((1, 5, 1, pixels)).astype(np.float32)
        tile = plan.tile_pixels(kern.PANEL_WIDTH, 11, pixels, chunk=kern.REDUCTION_CHUNK)
        y = run(kern, make_chain(kern, layers, progs), x, 3, (None, None), 3, tile)
        v = x.astype(np.float64)
        for l, p in zip(layers, progs):
            v = program_ref(conv1x1_ref(v, l.weight, l.bias), p)
        np.testing.assert_allclose(y, v, rtol=1e-4, atol=1e-4)


def test_add_act_with_program(kern):
    rng = np.random.default_rng(3)
    n, c, p = 2, 5, 3 * kern.PANEL_WIDTH + 5
    a, b = (rng.standard_normal((n, c, p)).astype(np.float32) for _ in range(2))
    prog = with_slopes([("prelu", ()), ("hardswish", ())], c, rng)
    first = None
    for t in (1, 3, 8):
        y = np.empty_like(a)
        kern.add_act(a, b, y, a.size, -np.inf, np.inf, 1.0, t, kernel_ops(prog, c), c, p)
        first = y if first is None else first
        assert np.array_equal(y, first)
    ref = program_ref(a.astype(np.float64) + b, prog)
    np.testing.assert_allclose(first, ref, rtol=1e-5, atol=1e-6)


def test_bad_programs_are_refused(kern):
    rng = np.random.default_rng(1)
    conv = layer(rng, 3, 4)
    packed, blocks = plan.pack_layer(conv, kern.MAX_BLOCK_ROWS)
    base = (packed, conv.bias, blocks, 3, 4, 3, -math.inf, math.inf, 1.0, RES_NONE)
    for post, match in (((99, 0.0, 0.0, None),), "opcode"), \
            (((2, 0.0, 0.0, np.ones(3, np.float32)),), "4 channels"), \
            (((3, 0.0, 0.0, None),) * 5, "at most"):
        with pytest.raises(ValueError, match=match):
            kern.Chain([base + (post,)])
    with pytest.raises(ValueError, match="min/max"):
        kern.Chain([base[:6] + (0.0, math.inf, 1.0, RES_NONE, ((3, 0.0, 0.0, None),))])


# ----------------------------------------------------------------------------------
# requant: the int8 requantization (quant/floatpath.py's fused float chains)
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("zp", [0, 17, 250])
def test_requant_is_the_int8_requantization_bitwise(kern, zp):
    """The requant op on integer-valued float32 accumulators equals quant/reference.py's
    requantize bit for bit: per-channel scales, exact halfway values (x.5, both signs),
    saturation at both ends, zero points 0 / 17 / 250, several clamp ranges, odd shapes
    (row tails of every length), 1 .. 8 threads; NaN and infinities as round_clamp."""
    from pyconv1x1.quant import reference
    rng = np.random.default_rng(zp)
    nr = kern.PANEL_WIDTH
    for (n, c, p), (lo, hi), threads in zip(
            [(1, 1, 1), (2, 3, nr + 3), (3, 7, 2 * nr - 1), (1, 5, 3 * nr + 5)],
            [(0, 255), (zp, 255), (3, 200), (0, 255)], [1, 3, 8, 2]):
        acc = rng.integers(-(1 << 16), 1 << 16, (n, c, p))
        acc[..., ::3] = rng.integers(-600, 600, acc[..., ::3].shape)  # near the range
        mid = 2 * ((lo + hi) // 2 - zp)  # odd values near it: x.5 inside [lo, hi]
        acc[..., 1::7] = mid + 2 * rng.integers(-3, 3, acc[..., 1::7].shape) + 1
        acc[..., 0] = (1 << 24) - 1  # saturates hi (or lo with a negative scale)
        acc[..., -1] = -(1 << 24) + 1
        scale = rng.uniform(1e-3, 0.3, c).astype(np.float32)
        scale[::2] = 0.5  # odd accumulators land on x.5 exactly: ties to even
        y = acc.astype(np.float32)
        kern.affine_act(y, y, np.ones(c, np.float32), np.zeros(c, np.float32), n, c, p,
                        -np.inf, np.inf, 1.0, threads,
                        (Op("requant", (scale, zp, lo, hi)).kernel(),))
        want = reference.requantize(acc.astype(np.int32), scale, zp, lo, hi)
        assert np.array_equal(y, want.astype(np.float32)), (n, c, p, lo, hi, threads)
        assert p == 1 or ((y == lo).any() and (y == hi).any())  # both ends
        ties = (acc % 2 == 1) & (scale[None, :, None] == 0.5) & (y > lo) & (y < hi)
        assert (p < 2 or ties.any()) and np.all((y[ties] - zp) % 2 == 0)  # to even
        # the numpy table reference says the same
        ref = Op("requant", (scale, zp, lo, hi)).ref(acc.astype(np.float32))
        assert np.array_equal(ref, want.astype(np.float64))
    x = np.array([np.nan, np.inf, -np.inf, 0.5, 1.5, -0.5, -2.5], np.float32)
    y = run_unary(kern, x, [("requant", (1.0, zp, 0, 255))])
    assert np.array_equal(y, reference.round_clamp(x, zp).astype(np.float32))


def test_requant_parameters_are_checked_and_round_trip():
    """requant's zp / lo / hi are integers within 2^22 of each other (the rounding's
    range); a program with it survives the plan codec bit for bit."""
    import json
    from pyconv1x1.errors import ModelError
    from pyconv1x1.program.epilogue import Activation
    for bad in ((1.0, 0.5, 0, 255), (1.0, 0, 10, 5), (1.0, 0, -(1 << 22), 0),
                (1.0, 0, 0, math.inf)):
        with pytest.raises(ValueError, match="requant"):
            Op("requant", bad)
    scale = np.array([0.25, 1e-3, 3.0], np.float32)
    act = Activation.program([Op("prelu", (0.5,)), Op("requant", (scale, 17, 3, 200))])
    table = []

    class Arrays:
        def add(self, a):
            table.append(np.array(a))
            return len(table) - 1

    enc = json.loads(json.dumps(act.encode(Arrays())))
    back = Activation.decode(enc, "act", lambda i, what, dtype="float32": table[i])
    assert back == act and back.ops[1].params[0].dtype == np.float32
    assert back.describe() == "prelu(0.5)+requant([3],17,3,200)"
    enc["ops"][1]["params"][1] = 0.5
    with pytest.raises(ModelError, match="act op 1: epilogue op requant"):
        Activation.decode(enc, "act", lambda i, what, dtype="float32": table[i])
