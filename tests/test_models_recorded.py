"""Whole models against recorded PyTorch outputs: every models/*.onnx matches the
<stem>.outputs.npz stored beside it (relative error <= 1e-5) at 1 and 2 threads, and
onnxruntime on the same input. Also the comparison helper itself (no torch needed)."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import native_only
import pyconv1x1
from pyconv1x1.testing import compare_outputs

RTOL = 1e-5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")))
MODEL_IDS = [os.path.basename(p)[:-len(".onnx")] for p in MODELS]


def _recorded(path):
    stem = path[:-len(".onnx")]
    with np.load(stem + ".inputs.npz") as f:
        feeds = dict(f)
    with np.load(stem + ".outputs.npz") as f:
        outputs = dict(f)
    return feeds, outputs


def test_bundled_models_are_present():
    # issue 2: three modules, each from both exporters, with input and output beside
    assert len(MODELS) >= 6
    for name in ("reduce_64to16", "expand_16to128", "embed_64to32_relu"):
        for exporter in ("torchscript", "dynamo"):
            stem = os.path.join(ROOT, "models", f"{name}_{exporter}")
            for suffix in (".onnx", ".inputs.npz", ".outputs.npz"):
                assert os.path.isfile(stem + suffix), stem + suffix
    for path in MODELS:
        if path.endswith("_dynamo.onnx"):
            assert os.path.isfile(path + ".data"), "the dynamo models keep external data"


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("path", MODELS, ids=MODEL_IDS)
def test_model_matches_recorded_pytorch_output(path, threads):
    feeds, want = _recorded(path)
    sess = pyconv1x1.InferenceSession(path, threads=threads)
    assert sorted(a.name for a in sess.get_inputs()) == sorted(feeds)
    assert [a.name for a in sess.get_outputs()] == list(want)
    for arg in sess.get_inputs():
        assert arg.type == "tensor(float)"
        assert list(arg.shape) == list(feeds[arg.name].shape)
    before = {k: v.copy() for k, v in feeds.items()}
    got = sess.run(None, feeds)
    for k in feeds:  # inputs are never modified
        np.testing.assert_array_equal(feeds[k], before[k])
    for arr in got:
        assert arr.dtype == np.float32
    report = compare_outputs(got, list(want.values()), rtol=RTOL, names=list(want))
    assert report.ok, f"{os.path.basename(path)}: {report.format()}"
    assert report.max_rel_err <= RTOL


@pytest.mark.parametrize("path", MODELS, ids=MODEL_IDS)
def test_model_results_do_not_depend_on_thread_count(path):
    feeds, _ = _recorded(path)
    runs = [pyconv1x1.InferenceSession(path, threads=t).run(None, feeds) for t in (1, 2, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("path", MODELS, ids=MODEL_IDS)
def test_model_matches_onnxruntime(path):
    ort = pytest.importorskip("onnxruntime")
    feeds, want = _recorded(path)
    ort_sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in ort_sess.get_outputs()]
    theirs = dict(zip(names, ort_sess.run(None, feeds)))
    sess = pyconv1x1.InferenceSession(path, threads=2)
    assert [a.name for a in sess.get_outputs()] == names
    assert [a.name for a in sess.get_inputs()] == [i.name for i in ort_sess.get_inputs()]
    ours = dict(zip(names, sess.run(None, feeds)))
    report = compare_outputs(ours, theirs, rtol=RTOL)
    assert report.ok, f"{os.path.basename(path)} vs onnxruntime: {report.format()}"
    # onnxruntime itself agrees with the recording: the files are what we think they are
    assert compare_outputs(theirs, want, rtol=RTOL).ok


@pytest.mark.parametrize("path", MODELS, ids=MODEL_IDS)
def test_model_loads_from_bytes_with_base_dir(path):
    feeds, want = _recorded(path)
    with open(path, "rb") as f:
        data = f.read()
    sess = pyconv1x1.InferenceSession(data, threads=1, base_dir=os.path.dirname(path))
    report = compare_outputs(sess.run(None, feeds), list(want.values()), rtol=RTOL,
                             names=list(want))
    assert report.ok, report.format()


# --------------------------------------------------------------------------------------
# the comparison helper
# --------------------------------------------------------------------------------------
def test_compare_outputs_passes_and_reports_errors():
    ref = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
    got = ref.copy()
    got[1, 0] += 2e-5      # 2e-5 / max|ref| 4 = 5e-6
    rep = compare_outputs({"y": got}, {"y": ref}, rtol=1e-5)
    assert rep.ok
    (o,) = rep.outputs
    assert o.worst == (1, 0)
    assert o.max_abs_ref == 4.0
    assert o.rel_err == pytest.approx(5e-6, rel=0.05)
    assert rep.errors() == {"y": o.rel_err}


def test_compare_outputs_mismatch_report_is_readable():
    ref = np.zeros((2, 3, 4), np.float32)
    ref[0, 0, 0] = 10.0
    got = ref.copy()
    got[1, 2, 3] = 0.5
    rep = compare_outputs([got], [ref], rtol=1e-5, names=["out"])
    assert not rep.ok
    text = rep.format()
    for part in ("output 'out' shape [2, 3, 4]", "max abs err 0.5", "max |ref| 10",
                 "rel err 0.05", "worst at (1, 2, 3)", "got 0.5, expected 0",
                 "MISMATCH"):
        assert part in text, text


@pytest.mark.parametrize("got,ref,problem", [
    (np.zeros((2, 3)), np.zeros((3, 2)), "shape [2, 3], expected [3, 2]"),
    (np.array([1.0, np.nan]), np.array([1.0, 2.0]), "NaN in one but not the other"),
    (np.array([1.0, 2.0]), np.array([1.0, np.nan]), "NaN in one but not the other"),
    (np.array([np.inf, 2.0]), np.array([-np.inf, 2.0]), "Inf in one but not the other"),
])
def test_compare_outputs_shape_nan_inf_mismatch(got, ref, problem):
    rep = compare_outputs([got], [ref], names=["y"])
    assert not rep.ok
    assert problem in rep.format()


def test_compare_outputs_nan_inf_in_same_places_pass():
    ref = np.array([np.nan, np.inf, -np.inf, 3.0], np.float32)
    assert compare_outputs([ref.copy()], [ref]).ok


def test_compare_outputs_all_zero_reference_and_atol():
    zero = np.zeros(4, np.float32)
    assert compare_outputs([zero], [zero]).ok
    assert not compare_outputs([zero + 1e-3], [zero]).ok
    assert compare_outputs([zero + 1e-3], [zero], atol=1e-2).ok
    with pytest.raises(AssertionError, match="missing"):
        compare_outputs({}, {"y": zero})
    with pytest.raises(AssertionError, match="1 outputs, expected 2"):
        compare_outputs([zero], [zero, zero])


@native_only
def test_testing_module_imports_without_torch(tmp_path):
    # pyconv1x1.testing loads torch only inside its functions
    code = ("import sys; sys.modules['torch'] = None\n"
            "import pyconv1x1.testing as t\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
            "print(t.compare_outputs([[1.0]], [[1.0]]).ok)\n"
            "try:\n"
            "    t.assert_matches_torch(None, None)\n"
            "except ImportError:\n"
            "    print('needs torch')\n")
    env = dict(os.environ)
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))
    env["PYTHONPATH"] = os.pathsep.join(
        [package_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    proc = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "needs", "torch"]
