"""pyconv1x1.testing: the one comparison rule (compare, compare_outputs, output_error
agree everywhere), the references behind run_reference, and the optional-extra import
guard of pyconv1x1.dask / pyconv1x1.ray."""
import os
import subprocess
import sys

import numpy as np
import pytest

import pyconv1x1
from pyconv1x1 import Error
from pyconv1x1.testing import (REFERENCES, ReferenceFailed, compare, compare_outputs,
                               output_error, run_reference)

from conftest import MODELS, NEUTRAL_CWD

REDUCE = os.path.join(MODELS, "reduce_64to16_dynamo.onnx")
PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))


def _cases():
    """(got, expected) pairs around the rule's edges."""
    ref = np.array([[1.0, -4.0], [2.0, 0.5]], np.float32)
    zero = np.zeros(3, np.float32)
    nan = np.array([np.nan, 1.0], np.float32)
    inf = np.array([np.inf, -1.0], np.float32)
    return [
        (ref, ref), (ref + np.float32(3.9e-5), ref), (ref + np.float32(4.1e-5), ref),
        (zero, zero), (zero + np.float32(0.9e-5), zero), (zero + np.float32(1.1e-5), zero),
        (nan, nan), (np.array([0.0, 1.0], np.float32), nan), (inf, inf),
        (np.array([np.inf, -np.inf], np.float32), inf), (np.array([1e38, -1.0]), inf),
        (np.zeros((0, 3), np.float32), np.zeros((0, 3), np.float32)),
        (np.full(3, np.inf), np.full(3, np.inf)),
        (np.full(3, 1e-6), np.full(3, 1e-30)),
    ]


@pytest.mark.parametrize("atol", [None, 0.0, 1e-4])
@pytest.mark.parametrize("index", range(len(_cases())))
def test_one_rule_behind_every_entry_point(index, atol):
    got, expected = _cases()[index]
    rtol = 1e-5
    o = output_error("y", got, expected, rtol, atol)
    assert compare(got, expected, rtol, atol) == (o.max_abs_err, o.rel_err, o.ok)
    assert compare_outputs({"y": got}, {"y": expected}, rtol, atol).ok == o.ok
    # the verdict is the rule, stated in numpy here
    g, e = np.asarray(got, np.float64), np.asarray(expected, np.float64)
    if np.array_equal(np.isnan(g), np.isnan(e)) and np.array_equal(
            np.where(np.isinf(g), g, 0), np.where(np.isinf(e), e, 0)):
        finite = np.isfinite(e)
        scale = np.abs(e[finite]).max() if finite.any() else 0.0
        with np.errstate(invalid="ignore"):  # inf - inf, left out by `finite`
            err = np.abs(g - e)[finite].max() if finite.any() else 0.0
        bound = (atol if atol is not None else (rtol if scale == 0 else 0.0)) + rtol * scale
        assert o.ok == bool(err <= bound), (got, expected, atol)
    else:
        assert not o.ok


def test_rel_err_is_the_verdict_on_a_zero_reference():
    zero = np.zeros(4, np.float32)
    err, rel, ok = compare(zero + np.float32(3e-6), zero)
    assert rel == pytest.approx(3e-6) and ok
    assert compare(zero + np.float32(3e-5), zero)[2] is False


def test_run_reference_engines_agree(tmp_path):
    feeds = dict(np.load(REDUCE[:-len(".onnx")] + ".inputs.npz"))
    want = dict(np.load(REDUCE[:-len(".onnx")] + ".outputs.npz"))
    kinds = ["source"]
    for kind, module in (("onnxruntime", "onnxruntime"), ("reference", "onnx"),
                         ("torch", "torch")):
        try:
            __import__(module)
            kinds.append(kind)
        except ImportError:
            pass
    assert set(kinds) <= set(REFERENCES)
    for kind in kinds:
        got = run_reference(kind, REDUCE, feeds, threads=1)
        assert list(got) == ["output"], kind
        assert compare_outputs(got, want).ok, kind
    assert np.array_equal(run_reference("source", REDUCE, feeds)["output"],
                          pyconv1x1.InferenceSession(REDUCE).run(None, feeds)[0])


def test_run_reference_failures_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="reference must be one of"):
        run_reference("tensorflow", REDUCE, {})
    pytest.importorskip("onnxruntime")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ReferenceFailed, match="onnxruntime cannot load") as info:
        run_reference("onnxruntime", str(junk), {})
    assert isinstance(info.value, Error) and "\n" not in str(info.value)
    with pytest.raises(ReferenceFailed, match="onnxruntime cannot run"):
        run_reference("onnxruntime", REDUCE, {"input": np.zeros((1, 3), np.float32)})


@pytest.mark.parametrize("engine, kind, words", [
    ("onnxruntime", "onnxruntime", "--against onnxruntime needs onnxruntime"),
    ("torch", "torch", "--against torch"),
])
def test_run_reference_names_a_missing_engine(tmp_path, engine, kind, words):
    fake = tmp_path / "fake"
    (fake / engine).mkdir(parents=True)
    (fake / engine / "__init__.py").write_text("raise ImportError('not here (test)')\n")
    code = ("import numpy as np, sys\n"
            "from pyconv1x1.testing import ReferenceFailed, run_reference\n"
            "try:\n"
            f"    run_reference({kind!r}, {REDUCE!r}, "
            "{'input': np.zeros((1, 64, 2, 2), np.float32)}, "
            f"label='--against {kind}')\n"
            "except ReferenceFailed as exc:\n"
            "    print(exc)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), PACKAGE_PARENT]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=NEUTRAL_CWD, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert words in proc.stdout and len(proc.stdout.strip().splitlines()) == 1


@pytest.mark.parametrize("module, extra, what", [("dask", "dask", "Dask"),
                                                 ("ray", "ray", "Ray Data")])
def test_optional_extra_names_its_pip_extra(tmp_path, module, extra, what):
    fake = tmp_path / "fake"
    (fake / module).mkdir(parents=True)
    (fake / module / "__init__.py").write_text("raise ImportError('not here (test)', "
                                               f"name={module!r})\n")
    code = (f"try:\n    import pyconv1x1.{extra}\n"
            "except ImportError as exc:\n    print(type(exc).__name__, exc.name, exc)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(fake), PACKAGE_PARENT]))
    proc = subprocess.run([sys.executable, "-c", code], cwd=NEUTRAL_CWD, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"ImportError {module} pyconv1x1.{extra} needs {what}: "
                                  f"pip install \"pyconv1x1[{extra}]\""), proc.stdout
