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


@pytest.mark.parametrize("n,cin,widths,hw,strides,pads,residual", [
    (8, 96, [200, 64, 200], (1, 1), (1, 1), (0, 0, 0, 0), False),   # 8 vectors
    (1, 130, [300, 96, 300], (7, 7), (1, 1), (0, 0, 0, 0), True),   # one 7x7 map
    (3, 40, [70, 33], (9, 7), (2, 2), (1, 0, 1, 1), False),         # strided, folded
    (5, 48, [40, 24, 40], (3, 5), (1, 1), (0, 0, 0, 0), True),      # small maps
    (5, 260, [300, 270, 300], (7, 7), (1, 1), (0, 0, 0, 0), True),  # unfolded lanes
])
def test_orientations_agree_bitwise(monkeypatch, n, cin, widths, hw, strides, pads,
                                    residual):
    """Sessions with every layer in the channel-lane orientation, every layer on pixel
    panels, and the planner's choice: all bitwise the same at 1..8 threads, and close
    to onnxruntime."""
    rng = np.random.default_rng(cin)
    model = chain_model(rng, cin, widths, residual=residual, strides=strides, pads=pads)
    x = rnd(rng, n, cin, *hw)
    results = {}
    for orientation in ("auto", "lanes", "pixels"):
        monkeypatch.setattr(plan.policy, "ORIENTATION", orientation)
        results[orientation] = check_model(model, x)
    assert np.array_equal(results["lanes"], results["pixels"])
    assert np.array_equal(results["auto"], results["pixels"])


def test_plan_runs_lanes_where_pixel_panels_waste_lanes():
    """On the kernels in use: a batch of 8 vectors of 512 channels (8 lanes of a panel)
    runs channels-in-lanes exactly when the rule says so (always on AVX-512: 8 of 16),
    full panels (a 56 x 56 image's tiles) never do."""
    rng = np.random.default_rng(0)
    model = chain_model(rng, 512, [512])
    sess = pyconv1x1.InferenceSession(model.SerializeToString(), threads=1)
    kern = sess._kernels
    nr = kern.PANEL_WIDTH
    layer = sess._program.steps[0].layers[0]
    use8 = plan.pixel_lane_use(nr, kern.VECTOR_LANES, kern.MAX_BLOCK_ROWS, 8,
                               kern.GEMV_COLUMNS)
    assert plan.choose_orientation([layer], kern, 8) == (plan.LANES_EFFICIENCY >= use8)
    assert plan.choose_orientation([layer], kern, 4 * nr) == 0
    if kern.VECTOR_LANES == 16:
        assert plan.choose_orientation([layer], kern, 8) == 1
    x = rnd(rng, 8, 512, 1, 1)
    assert np.array_equal(sess.run(None, {"x": x})[0], check_model(model, x))
