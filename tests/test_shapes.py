"""Sessions on the shapes of issue 11: batches of vectors (N x C x 1 x 1), small maps
with a batch (tiles folded across images), and few tiles with wide layers (split into
output-channel ranges), with strides, pads and residual Adds; each against onnxruntime
and bitwise identical for every thread count, whatever tiling the plan picks."""
import numpy as np
import pytest
from onnx import helper

from conftest import assert_close, conv_node, make_model, rnd, run_ort
import pyconv1x1
from pyconv1x1 import plan

THREADS = (1, 2, 3, 4, 8)


def chain_model(rng, cin, widths, hw=("h", "w"), residual=False, strides=(1, 1),
                pads=(0, 0, 0, 0)):
    """Conv+Relu per width; with residual, the last conv's output is added to the
    input of the layer before it (a bottleneck's skip: widths[-1] == widths[-3] or cin)."""
    nodes, inits, cur, c = [], {}, "x", cin
    outs = []
    for i, cout in enumerate(widths):
        inits[f"w{i}"] = rnd(rng, cout, c, 1, 1, scale=1 / np.sqrt(c))
        inits[f"b{i}"] = rnd(rng, cout, scale=0.1)
        attrs = {"strides": list(strides), "pads": list(pads)} if i == 0 else {}
        nodes.append(conv_node(cur, f"w{i}", f"b{i}", f"c{i}", kernel_shape=[1, 1],
                               **attrs))
        if i < len(widths) - 1:
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
            cur = f"r{i}"
        else:
            cur = f"c{i}"
        outs.append(cur)
        c = cout
    if residual:
        nodes.append(helper.make_node("Add", [cur, outs[-3]], ["y"]))
    else:
        nodes.append(helper.make_node("Identity", [cur], ["y"]))
    return make_model(nodes, [("x", ["n", cin, *hw])], [("y", ["n", widths[-1], "ho", "wo"])],
                      inits)


def check_model(model, x):
    ref = run_ort(model, {"x": x})[0]
    first = None
    for t in THREADS:
        y = pyconv1x1.InferenceSession(model.SerializeToString(), threads=t).run(
            None, {"x": x})[0]
        if first is None:
            first = y
            assert_close(y, ref, rtol=2e-5)
        else:
            assert np.array_equal(y, first), f"threads={t} differs from threads=1"
    return first


@pytest.mark.parametrize("n", [1, 2, 7, 33, 64])
def test_batches_of_vectors(n):
    rng = np.random.default_rng(n)
    model = chain_model(rng, 96, [200, 64, 200])
    check_model(model, rnd(rng, n, 96, 1, 1))


@pytest.mark.parametrize("n,hw", [(3, (7, 7)), (8, (7, 7)), (5, (3, 5)), (16, (14, 14))])
def test_small_maps_with_a_batch_and_a_residual(n, hw):
    rng = np.random.default_rng(n)
    model = chain_model(rng, 48, [40, 24, 40], residual=True)
    check_model(model, rnd(rng, n, 48, *hw))


def test_folded_with_strides_and_pads():
    rng = np.random.default_rng(3)
    model = chain_model(rng, 12, [30, 10], strides=(2, 2), pads=(1, 0, 1, 1))
    check_model(model, rnd(rng, 6, 12, 7, 7))


@pytest.mark.parametrize("hw", [(7, 7), (14, 14), (1, 1)])
def test_wide_layers_on_few_pixels(hw):
    """A single image whose tiles are fewer than the threads: split runs."""
    rng = np.random.default_rng(4)
    model = chain_model(rng, 256, [512, 256], residual=False)
    check_model(model, rnd(rng, 1, 256, *hw))


def test_plan_picks_fold_and_split():
    """What the planner picks on a v4 / v3 sized panel: folds a batch of vectors, splits
    one 7 x 7 image of wide layers across threads, and leaves large images alone."""
    for nr in (16, 64):
        tile, folded = plan.choose_tiling(nr, 1280, 32, 1, plan.min_tiles(2), 64)
        assert folded and tile >= nr
        tile, folded = plan.choose_tiling(nr, 1024, 1, 49, plan.min_tiles(2), 64)
        ntiles = -(-49 // tile)
        assert not folded
        assert ntiles * plan.choose_split(ntiles, 2, 1024 // 6) >= 2 * 2
        assert not plan.choose_tiling(nr, 256, 1, 56 * 56, plan.min_tiles(2), 64)[1]
