"""The public session API: construction from path / bytes / ModelProto, NodeArg
metadata, run() semantics (new arrays, inputs untouched, odd memory layouts), NaN
locality, thread counts, concurrent runs and a light `import pyconv1x1`."""
import os
import subprocess
import sys
import threading

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import (MODELS, assert_close, conv_node, make_model, native_only, rnd,
                      run_ort)
import pyconv1x1
from pyconv1x1 import Error, InferenceSession, InputError

F = np.float32


@pytest.fixture(scope="module")
def two_output_model():
    """x[N,6,H,W] -> conv(strides 1) -> relu -> conv -> y ; also the relu output r."""
    rng = np.random.default_rng(7)
    inits = {"W1": rnd(rng, 8, 6, 1, 1), "B1": rnd(rng, 8), "W2": rnd(rng, 5, 8, 1, 1)}
    nodes = [conv_node("x", "W1", "B1", "c"), helper.make_node("Relu", ["c"], ["r"]),
             conv_node("r", "W2", None, "y")]
    return make_model(nodes, [("x", ["N", 6, "H", "W"])],
                      [("y", ["N", 5, "H", "W"]), ("r", ["N", 8, "H", "W"])], inits)


@pytest.fixture(scope="module")
def sess(two_output_model):
    return InferenceSession(two_output_model, threads=2)


# ----------------------------------------------------------------------------------
# construction
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("form", ["str", "pathlike", "bytes", "bytearray", "proto"])
@pytest.mark.parametrize("name", ["embed_64to32_relu_torchscript", "reduce_64to16_dynamo"])
def test_session_from_every_form(form, name):
    path = os.path.join(MODELS, name + ".onnx")
    if form == "str":
        model, kw = path, {}
    elif form == "pathlike":
        import pathlib
        model, kw = pathlib.Path(path), {}
    elif form in ("bytes", "bytearray"):
        with open(path, "rb") as f:
            model = f.read() if form == "bytes" else bytearray(f.read())
        kw = {"base_dir": MODELS}
    else:
        model, kw = onnx.load(path, load_external_data=False), {"base_dir": MODELS}
    s = InferenceSession(model, **kw)
    x = dict(np.load(os.path.join(MODELS, name + ".inputs.npz")))
    want = dict(np.load(os.path.join(MODELS, name + ".outputs.npz")))
    got = s.run(None, x)
    assert_close(got[0], want["output"])


def test_proto_with_loaded_external_data_needs_no_base_dir():
    path = os.path.join(MODELS, "expand_16to128_dynamo.onnx")
    proto = onnx.load(path)                  # external data loaded into raw_data
    s = InferenceSession(proto)
    x = dict(np.load(path[:-5] + ".inputs.npz"))
    assert s.run(None, x)[0].shape == (3, 128, 32, 32)


def test_get_inputs_and_outputs(sess):
    ins, outs = sess.get_inputs(), sess.get_outputs()
    assert [i.name for i in ins] == ["x"]
    assert ins[0].shape == ["N", 6, "H", "W"]
    assert ins[0].type == "tensor(float)"
    assert [o.name for o in outs] == ["y", "r"]
    assert outs[0].shape == ["N", 5, "H", "W"] and outs[1].shape == ["N", 8, "H", "W"]
    assert all(o.type == "tensor(float)" for o in outs)
    # the lists are copies: mutating them does not change the session
    ins.clear()
    assert len(sess.get_inputs()) == 1
    assert "x" in repr(sess.get_inputs()[0])


def test_nodearg_shapes_match_onnxruntime():
    ort = pytest.importorskip("onnxruntime")
    rng = np.random.default_rng(0)
    inits = {"W": rnd(rng, 3, 4, 1, 1)}
    model = make_model([conv_node("x", "W", None, "y")], [("x", ["batch", 4, None, 7])],
                       [("y", ["batch", 3, None, 7])], inits)
    mine = InferenceSession(model)
    theirs = ort.InferenceSession(model.SerializeToString(),
                                  providers=["CPUExecutionProvider"])
    for a, b in ((mine.get_inputs(), theirs.get_inputs()),
                 (mine.get_outputs(), theirs.get_outputs())):
        assert [(x.name, list(x.shape), x.type) for x in a] == \
               [(x.name, list(x.shape), x.type) for x in b]
    assert mine.get_inputs()[0].shape == ["batch", 4, None, 7]


def test_bundled_models_declare_static_shapes():
    s = InferenceSession(os.path.join(MODELS, "reduce_64to16_torchscript.onnx"))
    assert s.get_inputs()[0].shape == [3, 64, 32, 32]
    assert all(isinstance(d, int) for d in s.get_outputs()[0].shape)


# ----------------------------------------------------------------------------------
# run()
# ----------------------------------------------------------------------------------
def test_output_name_selection(sess, rng):
    x = rnd(rng, 2, 6, 3, 5)
    y_all = sess.run(None, {"x": x})
    y_empty = sess.run([], {"x": x})
    y_r = sess.run(["r"], {"x": x})
    y_ry = sess.run(["r", "y"], {"x": x})
    y_tuple = sess.run(("y",), {"x": x})
    assert len(y_all) == 2 and len(y_empty) == 2 and len(y_r) == 1
    assert np.array_equal(y_all[0], y_empty[0]) and np.array_equal(y_all[1], y_r[0])
    assert np.array_equal(y_ry[0], y_all[1]) and np.array_equal(y_ry[1], y_all[0])
    assert np.array_equal(y_tuple[0], y_all[0])
    assert y_all[0].shape == (2, 5, 3, 5) and y_all[1].shape == (2, 8, 3, 5)


def test_outputs_are_new_arrays(sess, rng):
    x = rnd(rng, 1, 6, 4, 4)
    a = sess.run(None, {"x": x})
    b = sess.run(None, {"x": x})
    dup = sess.run(["y", "y"], {"x": x})
    arrays = a + b + dup + [x]
    for i in range(len(arrays)):
        assert arrays[i].dtype == np.float32
        for j in range(i + 1, len(arrays)):
            assert not np.shares_memory(arrays[i], arrays[j]), (i, j)
    for arr in a:
        assert arr.flags.writeable and arr.flags.c_contiguous
    keep = [v.copy() for v in b]
    a[0][...] = 123.0
    a[1][...] = -5.0
    c = sess.run(None, {"x": x})
    assert np.array_equal(c[0], keep[0]) and np.array_equal(c[1], keep[1])


def test_output_that_is_an_input_is_a_copy(rng):
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    model = make_model(nodes, [("x", [2, 3])], [("y", [2, 3])])
    s = InferenceSession(model)
    x = rnd(rng, 2, 3)
    y = s.run(None, {"x": x})[0]
    assert np.array_equal(y, x) and not np.shares_memory(y, x)
    y[...] = 0
    assert not np.all(x == 0)


def test_inputs_are_never_modified(sess, rng):
    for x in (rnd(rng, 2, 6, 5, 7), np.asfortranarray(rnd(rng, 1, 6, 3, 3)),
              rnd(rng, 2, 12, 5, 9)[:, ::2, :, ::2]):
        before = x.copy()
        flags = (x.flags.c_contiguous, x.flags.f_contiguous, x.flags.writeable)
        sess.run(None, {"x": x})
        assert np.array_equal(x, before)
        assert (x.flags.c_contiguous, x.flags.f_contiguous, x.flags.writeable) == flags


@pytest.mark.parametrize("layout", ["fortran", "strided", "negative", "readonly",
                                    "transposed", "broadcast", "unaligned"])
def test_odd_memory_layouts(sess, rng, layout):
    base = rnd(rng, 2, 6, 4, 5)
    if layout == "fortran":
        x = np.asfortranarray(base)
    elif layout == "strided":
        big = np.zeros((2, 12, 8, 10), F)
        big[:, ::2, ::2, ::2] = base
        x = big[:, ::2, ::2, ::2]
    elif layout == "negative":
        x = base[:, ::-1, ::-1].copy()[:, ::-1, ::-1]
    elif layout == "readonly":
        x = base.copy()
        x.flags.writeable = False
    elif layout == "transposed":
        x = np.ascontiguousarray(base.transpose(3, 2, 1, 0)).transpose(3, 2, 1, 0)
    elif layout == "broadcast":
        base = np.broadcast_to(base[:1], (2, 6, 4, 5))
        x = base
    else:
        raw = np.zeros(base.size * 4 + 1, np.uint8)[1:].view(F).reshape(base.shape)
        raw[...] = base
        x = raw
    assert np.array_equal(x, base)
    got = sess.run(None, {"x": x})
    want = sess.run(None, {"x": np.ascontiguousarray(base)})
    for g, w in zip(got, want):
        assert np.array_equal(g, w)


def test_nan_and_inf_stay_in_their_pixels(rng):
    rng = np.random.default_rng(3)
    inits = {"W1": rnd(rng, 16, 8, 1, 1), "B1": rnd(rng, 16), "W2": rnd(rng, 7, 16, 1, 1),
             "s": rnd(rng, 7), "b": rnd(rng, 7), "m": rnd(rng, 7),
             "v": np.abs(rnd(rng, 7)) + 1}
    nodes = [conv_node("x", "W1", "B1", "c"), helper.make_node("Relu", ["c"], ["r"]),
             conv_node("r", "W2", None, "d"),
             helper.make_node("Add", ["d", "d"], ["e"]),
             helper.make_node("BatchNormalization", ["e", "s", "b", "m", "v"], ["y"])]
    model = make_model(nodes, [("x", [3, 8, 9, 11])], [("y", [3, 7, 9, 11])], inits)
    for threads in (1, 2):
        s = InferenceSession(model, threads=threads)
        x = rnd(rng, 3, 8, 9, 11)
        clean = s.run(None, {"x": x})[0]
        assert np.isfinite(clean).all()
        poisoned = x.copy()
        poisoned[1, 3, 4, 5] = np.nan
        poisoned[2, :, 0, 0] = np.inf
        poisoned[0, 0, 8, 10] = -np.inf
        got = s.run(None, {"x": poisoned})[0]
        hit = np.zeros((3, 9, 11), bool)
        hit[1, 4, 5] = hit[2, 0, 0] = hit[0, 8, 10] = True
        for n, i, j in zip(*np.nonzero(~hit)):
            assert np.array_equal(got[n, :, i, j], clean[n, :, i, j]), (n, i, j)
        assert np.isnan(got[1, :, 4, 5]).all()


def test_threads_give_identical_results(two_output_model, rng):
    x = rnd(rng, 3, 6, 33, 37)
    results = []
    for t in (None, 1, 2, 3):
        s = InferenceSession(two_output_model, threads=t)
        assert s.threads >= 1
        results.append(s.run(None, {"x": x}))
    for r in results[1:]:
        for a, b in zip(results[0], r):
            assert np.array_equal(a, b)
    assert InferenceSession(two_output_model, threads=3).threads == 3


def test_threads_none_uses_omp_num_threads(two_output_model, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert InferenceSession(two_output_model).threads == 3


@pytest.mark.parametrize("threads", [0, -1, 1.5, "2", True, [2]])
def test_invalid_threads(two_output_model, threads):
    with pytest.raises(Error):
        InferenceSession(two_output_model, threads=threads)


def _in_threads(worker, count):
    """Run worker(k) for k < count in Python threads at once; re-raise what they raised."""
    errors = []

    def guarded(k):
        try:
            worker(k)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=guarded, args=(k,)) for k in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a run() hung"
    assert not errors, errors


def test_concurrent_runs_match_sequential(two_output_model):
    s = InferenceSession(two_output_model, threads=2)
    rng = np.random.default_rng(11)
    shapes = [(1, 6, 8, 8), (2, 6, 5, 7), (3, 6, 16, 9), (1, 6, 1, 1), (2, 6, 64, 48)]
    xs = [rnd(rng, *shapes[i % len(shapes)]) for i in range(16)]
    want = [s.run(None, {"x": x}) for x in xs]
    got = {}
    barrier = threading.Barrier(8)

    def worker(k):
        barrier.wait()
        for rep in range(6):
            for i in range(k, len(xs), 8):
                got[(k, rep, i)] = s.run(None, {"x": xs[i]})

    _in_threads(worker, 8)
    assert len(got) == 6 * len(xs)
    for (k, rep, i), outs in got.items():
        for a, b in zip(outs, want[i]):
            assert np.array_equal(a, b)


def test_plans_are_cached_per_shape(sess, rng):
    a = sess.run(None, {"x": rnd(rng, 1, 6, 2, 3)})
    b = sess.run(None, {"x": rnd(rng, 4, 6, 7, 1)})
    assert a[0].shape == (1, 5, 2, 3) and b[0].shape == (4, 5, 7, 1)


def test_matches_onnxruntime(two_output_model, rng):
    x = rnd(rng, 2, 6, 13, 11)
    for g, r in zip(InferenceSession(two_output_model).run(None, {"x": x}),
                    run_ort(two_output_model, {"x": x})):
        assert_close(g, r)


def test_errors_hierarchy():
    assert issubclass(pyconv1x1.ModelError, Error)
    assert issubclass(pyconv1x1.UnsupportedError, Error)
    assert issubclass(InputError, Error) and issubclass(InputError, ValueError)
    assert issubclass(Error, Exception)
    assert pyconv1x1.NodeArg is not None


@native_only
def test_import_is_light(tmp_path):
    code = ("import sys, pyconv1x1\n"
            "assert 'onnx' not in sys.modules, 'onnx'\n"
            "assert not [m for m in sys.modules if m.startswith('google.protobuf')], 'pb'\n"
            "assert not [m for m in sys.modules if m.startswith('onnx')], 'onnx*'\n"
            "pyconv1x1.Error, pyconv1x1.InputError\n"
            "print('ok', pyconv1x1.__file__)\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(pyconv1x1.__file__))
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("ok")


# ----------------------------------------------------------------------------------
# a single-chain model: run() may take a fast path once a shape has been validated;
# it must keep every guarantee of the general path
# ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chain_model():
    rng = np.random.default_rng(21)
    inits = {"W1": rnd(rng, 16, 8, 1, 1), "B1": rnd(rng, 16), "W2": rnd(rng, 4, 16, 1, 1)}
    nodes = [conv_node("x", "W1", "B1", "c"), helper.make_node("Relu", ["c"], ["r"]),
             conv_node("r", "W2", None, "y")]
    return make_model(nodes, [("x", ["N", 8, "H", "W"])], [("y", ["N", 4, "H", "W"])],
                      inits)


def test_repeated_runs_same_shape(chain_model, rng):
    s = InferenceSession(chain_model, threads=2)
    x = rnd(rng, 2, 8, 9, 13)
    want = run_ort(chain_model, {"x": x})[0]
    outs = [s.run(None, {"x": x})[0] for _ in range(4)]
    for o in outs:
        assert_close(o, want)
        assert o.dtype == np.float32 and o.flags.writeable
    for i in range(len(outs)):
        for j in range(i + 1, len(outs)):
            assert not np.shares_memory(outs[i], outs[j])
    keep = outs[-1].copy()
    outs[-1][...] = 7.0
    assert np.array_equal(s.run(None, {"x": x})[0], keep)


def test_fast_path_still_validates(chain_model, rng):
    s = InferenceSession(chain_model)
    x = rnd(rng, 1, 8, 5, 6)
    good = s.run(None, {"x": x})[0]
    s.run(None, {"x": x})
    for bad in (x.astype(np.float64), x.astype(np.float16), x.tolist(), x[:, :4],
                x.reshape(1, 8, 30), np.ones((1, 9, 5, 6), F)):
        with pytest.raises(InputError):
            s.run(None, {"x": bad})
    with pytest.raises(InputError):
        s.run(None, {"x": x, "extra": x})
    with pytest.raises(InputError):
        s.run(None, {"y": x})
    with pytest.raises(InputError):
        s.run(["nope"], {"x": x})
    # odd layouts of the validated shape take the general path and agree
    for odd in (np.asfortranarray(x), x.copy()[:, ::-1][:, ::-1],
                np.ascontiguousarray(np.concatenate([x, x], axis=3))[..., :6]):
        assert np.array_equal(s.run(None, {"x": odd})[0], good)
    ro = x.copy()
    ro.flags.writeable = False
    assert np.array_equal(s.run(None, {"x": ro})[0], good)
    assert np.array_equal(s.run(["y"], {"x": x})[0], good)
    assert s.run(None, {"x": rnd(rng, 2, 8, 3, 3)})[0].shape == (2, 4, 3, 3)
    assert np.array_equal(s.run(None, {"x": x})[0], good)


def test_fast_path_recycles_only_dropped_outputs(chain_model, rng):
    """run() may hand back the buffer of an output the caller dropped (no allocation in
    tight loops), never one anything still refers to: a name, a view, a memoryview, a
    weak reference, or one changed in place."""
    import gc
    import weakref
    s = InferenceSession(chain_model)
    x = rnd(rng, 1, 8, 5, 6)
    x2 = rnd(rng, 1, 8, 5, 6)
    want, want2 = run_ort(chain_model, {"x": x})[0], run_ort(chain_model, {"x": x2})[0]
    s.run(None, {"x": x})
    s.run(None, {"x": x})  # now on the fast path
    first = s.run(None, {"x": x})[0]
    first_id = id(first)
    del first
    again = s.run(None, {"x": x2})[0]
    assert id(again) == first_id  # dropped: its buffer came back
    assert_close(again, want2)

    # anything still holding the previous output keeps it intact
    def holders(y):
        yield y  # the array itself
        yield y[0, 1]  # a view
        yield memoryview(y)
        yield np.frombuffer(y, np.float32)

    for make in range(4):
        y = s.run(None, {"x": x})[0]
        keep = y.copy()
        held = list(holders(y))[make]
        del y
        z = s.run(None, {"x": x2})[0]
        assert not np.shares_memory(np.asarray(held), z)
        assert np.array_equal(np.asarray(held).reshape(-1),
                              keep[0, 1].reshape(-1) if make == 1 else keep.reshape(-1))
        assert_close(z, want2)
        del held, z

    y = s.run(None, {"x": x})[0]
    ref = weakref.ref(y)
    del y
    gc.collect()
    z = s.run(None, {"x": x2})[0]
    assert ref() is not z and (ref() is None or not np.shares_memory(ref(), z))
    del z

    # changed in place, then dropped: never handed out again as an output
    for change in ("shape", "readonly", "dtype"):
        y = s.run(None, {"x": x})[0]
        if change == "shape":
            y.shape = (1, 4, 30)
        elif change == "readonly":
            y.flags.writeable = False
        else:
            y.dtype = np.int32
        del y
        z = s.run(None, {"x": x2})[0]
        assert z.shape == (1, 4, 5, 6) and z.dtype == np.float32 and z.flags.writeable
        assert_close(z, want2)
        del z
    assert_close(s.run(None, {"x": x})[0], want)

    # large outputs are never kept alive between runs: their memory goes back at once
    big = rnd(rng, 1, 8, 128, 130)  # 4 x 128 x 130 floats = 260 KiB > 256 KiB
    s.run(None, {"x": big})
    y = s.run(None, {"x": big})[0]
    ref = weakref.ref(y)
    del y
    assert ref() is None


def test_concurrent_runs_single_chain(chain_model):
    s = InferenceSession(chain_model, threads=2)
    rng = np.random.default_rng(5)
    xs = [rnd(rng, 2, 8, 31, 17) for _ in range(4)] + [rnd(rng, 1, 8, 4, 4)]
    want = [s.run(None, {"x": x})[0] for x in xs]
    bad = []

    def worker(k):
        for rep in range(20):
            i = (k + rep) % len(xs)
            y = s.run(None, {"x": xs[i]})[0]
            if not np.array_equal(y, want[i]):
                bad.append((k, rep, i))

    _in_threads(worker, 8)
    assert not bad, bad[:5]


@pytest.mark.parametrize("threads", [1, 2])
def test_long_runs_release_the_gil(threads):
    """Other Python threads keep running while a run of milliseconds computes (only runs
    of a few microseconds keep the GIL): the main thread, ticking in a loop, never
    stalls for most of a run."""
    import time
    rng = np.random.default_rng(8)
    inits, nodes, prev = {}, [], "x"
    for i in range(24):
        inits[f"W{i}"] = rnd(rng, 32, 32, 1, 1)
        nodes.append(conv_node(prev, f"W{i}", None, f"y{i}"))
        prev = f"y{i}"
    model = make_model(nodes, [("x", [1, 32, 256, 256])], [(prev, [1, 32, 256, 256])], inits)
    s = InferenceSession(model, threads=threads)
    x = rnd(rng, 1, 32, 256, 256)
    s.run(None, {"x": x})
    span = []

    def worker():
        t0 = time.perf_counter()
        s.run(None, {"x": x})
        span.append((t0, time.perf_counter()))

    ticks = []
    t = threading.Thread(target=worker)
    t.start()
    while t.is_alive():
        ticks.append(time.perf_counter())
    t.join()
    (t0, t1), = span
    inside = [t0] + [v for v in ticks if t0 < v < t1] + [t1]
    longest = max(b - a for a, b in zip(inside, inside[1:]))
    # holding the GIL would stall the main thread for the whole kernel (all but the
    # interpreter's 5 ms switch interval); time slices of a busy machine are far shorter
    assert longest < 0.5 * (t1 - t0), (longest, t1 - t0)
