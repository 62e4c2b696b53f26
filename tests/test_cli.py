"""The `pyconv1x1` command line, through subprocesses (`python -m pyconv1x1`, run from a
temporary folder so nothing depends on the repository being the current directory).

Exit codes: 0 ok, 1 validation mismatch, 2 bad usage / unloadable model or file (one line
on stderr, no traceback), 3 internal error."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pyconv1x1
from pyconv1x1 import cli

MODELS = Path(__file__).resolve().parents[1] / "models"
BUNDLED = sorted(p.name for p in MODELS.glob("*.onnx"))
EMBED = MODELS / "embed_64to32_relu_torchscript.onnx"
REDUCE = MODELS / "reduce_64to16_dynamo.onnx"
# pyconv1x1 as imported here: in place (PYTHONPATH) or installed
PACKAGE_PARENT = str(Path(pyconv1x1.__file__).resolve().parents[1])


def _light_model(name):
    try:
        import onnx
    except ImportError:  # pragma: no cover - onnx is a dependency
        return None
    path = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"
    return path if path.is_file() else None


def cli_run(*args, cwd, env=None, timeout=180):
    environ = dict(os.environ)
    environ["PYTHONPATH"] = os.pathsep.join(
        [PACKAGE_PARENT] + [p for p in environ.get("PYTHONPATH", "").split(os.pathsep) if p])
    environ.pop("PYCONV1X1_DEBUG", None)
    environ.update(env or {})
    return subprocess.run([sys.executable, "-m", "pyconv1x1", *map(str, args)], cwd=cwd,
                          env=environ, capture_output=True, text=True, timeout=timeout)


def assert_one_line_error(proc, code=2):
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("pyconv1x1: error: "), proc.stderr
    return lines[0]


def assert_ok(proc):
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    return proc.stdout


# ---- small models written with onnx.helper -------------------------------------------
def _save(path, nodes, inputs, outputs, initializers, opset=17):
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in outputs],
        [numpy_helper.from_array(np.asarray(a, np.float32), n)
         for n, a in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="test_cli")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def residual_model(path):
    """x[N,8,4,4] -> conv1(8->16) -> bn1 -> relu1 -> conv2(16->8) -> add(+x) -> relu2."""
    from onnx import helper
    rng = np.random.default_rng(1)
    init = {
        "w1": rng.standard_normal((16, 8, 1, 1)) * 0.3, "b1": rng.standard_normal(16) * 0.1,
        "s": rng.uniform(0.5, 1.5, 16), "t": rng.standard_normal(16) * 0.1,
        "m": rng.standard_normal(16) * 0.1, "v": rng.uniform(0.5, 1.5, 16),
        "w2": rng.standard_normal((8, 16, 1, 1)) * 0.3, "b2": rng.standard_normal(8) * 0.1,
    }
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1"),
        helper.make_node("BatchNormalization", ["c1", "s", "t", "m", "v"], ["n1"],
                         name="bn1"),
        helper.make_node("Relu", ["n1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "x"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["y"], name="relu2"),
    ]
    return _save(path, nodes, [("x", ["N", 8, 4, 4])], [("y", ["N", 8, 4, 4])], init)


def two_input_model(path):
    from onnx import helper
    rng = np.random.default_rng(2)
    init = {"wa": rng.standard_normal((4, 4, 1, 1)), "wb": rng.standard_normal((4, 4, 1, 1))}
    nodes = [helper.make_node("Conv", ["a", "wa"], ["ya"], name="conv_a"),
             helper.make_node("Conv", ["b", "wb"], ["yb"], name="conv_b"),
             helper.make_node("Add", ["ya", "yb"], ["y"], name="add")]
    return _save(path, nodes, [("a", [1, 4, 3, 3]), ("b", [1, 4, 3, 3])],
                 [("y", [1, 4, 3, 3])], init)


def conv3x3_model(path):
    from onnx import helper
    rng = np.random.default_rng(3)
    init = {"w1": rng.standard_normal((4, 4, 1, 1)), "w3": rng.standard_normal((4, 4, 3, 3))}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], name="pointwise"),
             helper.make_node("Conv", ["h", "w3"], ["y"], name="spatial", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["y"], ["z"], name="act")]
    return _save(path, nodes, [("x", [1, 4, 5, 5])], [("z", [1, 4, 5, 5])], init)


def _session_outputs(model, feeds):
    sess = pyconv1x1.InferenceSession(str(model))
    return dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds)))


# ---- run -----------------------------------------------------------------------------
def test_run_random_input_is_seeded_and_written(tmp_path):
    out = assert_ok(cli_run("run", EMBED, "--output", "y.npz", cwd=tmp_path))
    assert "input  input: [3, 64, 32, 32] float32 (random normal, seed 0)" in out
    assert "output output: [3, 32, 32, 32] float32  min 0 " in out  # relu: min is 0
    for word in ("max ", "mean ", "std ", "run time: ", " ms", "kernels: ", "thread"):
        assert word in out
    x = np.random.default_rng(0).standard_normal((3, 64, 32, 32), dtype=np.float32)
    expected = _session_outputs(EMBED, {"input": x})
    with np.load(tmp_path / "y.npz") as z:
        assert z.files == ["output"]
        np.testing.assert_array_equal(z["output"], expected["output"])

    assert_ok(cli_run("run", EMBED, "--seed", "7", "--output", "y7.npz", "--threads", "1",
                      cwd=tmp_path))
    x7 = np.random.default_rng(7).standard_normal((3, 64, 32, 32), dtype=np.float32)
    with np.load(tmp_path / "y7.npz") as z:
        np.testing.assert_array_equal(z["output"], _session_outputs(EMBED, {"input": x7})
                                      ["output"])


@pytest.mark.parametrize("kind", ["npz", "npy"])
def test_run_with_input_file_matches_session(tmp_path, kind):
    x = np.random.default_rng(5).standard_normal((3, 64, 32, 32), dtype=np.float32)
    if kind == "npz":
        np.savez(tmp_path / "x.npz", input=x)
    else:
        np.save(tmp_path / "x.npy", x)
    out = assert_ok(cli_run("run", REDUCE, "--input", f"x.{kind}", "--output", "y.npz",
                            cwd=tmp_path))
    assert f"(from x.{kind})" in out and "wrote y.npz" in out
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_array_equal(z["output"], _session_outputs(REDUCE, {"input": x})
                                      ["output"])


def test_run_named_dims_and_two_inputs(tmp_path):
    out = assert_ok(cli_run("run", residual_model(tmp_path / "res.onnx"), cwd=tmp_path))
    assert "input  x: [1, 8, 4, 4] float32" in out and "output y: [1, 8, 4, 4]" in out

    model = two_input_model(tmp_path / "two.onnx")
    rng = np.random.default_rng(0)
    feeds = {"a": rng.standard_normal((1, 4, 3, 3), dtype=np.float32),
             "b": rng.standard_normal((1, 4, 3, 3), dtype=np.float32)}
    np.savez(tmp_path / "ab.npz", **feeds)
    assert_ok(cli_run("run", model, "--input", "ab.npz", "--output", "y.npz", cwd=tmp_path))
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_array_equal(z["y"], _session_outputs(model, feeds)["y"])
    # a .npy cannot feed two inputs; an npz must have exactly the input names
    np.save(tmp_path / "a.npy", feeds["a"])
    line = assert_one_line_error(cli_run("run", model, "--input", "a.npy", cwd=tmp_path))
    assert "single-input" in line
    np.savez(tmp_path / "a_only.npz", a=feeds["a"])
    line = assert_one_line_error(cli_run("run", model, "--input", "a_only.npz",
                                         cwd=tmp_path))
    assert "'b'" in line


def test_run_bad_input_files(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip file at all")
    assert "junk.npz" in assert_one_line_error(
        cli_run("run", EMBED, "--input", "junk.npz", cwd=tmp_path))
    assert "nothere.npy" in assert_one_line_error(
        cli_run("run", EMBED, "--input", "nothere.npy", cwd=tmp_path))
    np.save(tmp_path / "x64.npy", np.zeros((3, 64, 32, 32)))  # float64: no silent cast
    assert "float64" in assert_one_line_error(
        cli_run("run", EMBED, "--input", "x64.npy", cwd=tmp_path))
    np.save(tmp_path / "small.npy", np.zeros((3, 64, 8, 8), np.float32))
    assert "64, 8, 8" in assert_one_line_error(
        cli_run("run", EMBED, "--input", "small.npy", cwd=tmp_path))
    np.savez(tmp_path / "wrong.npz", x=np.zeros((3, 64, 32, 32), np.float32))
    assert "['input']" in assert_one_line_error(
        cli_run("run", EMBED, "--input", "wrong.npz", cwd=tmp_path))
    (tmp_path / "x.txt").write_text("1 2 3")
    assert ".npy or .npz" in assert_one_line_error(
        cli_run("run", EMBED, "--input", "x.txt", cwd=tmp_path))


# ---- info ----------------------------------------------------------------------------
def test_info_bundled_model(tmp_path):
    out = assert_ok(cli_run("info", EMBED, cwd=tmp_path))
    assert "producer: pytorch" in out and "opset 20" in out
    assert "input  [3, 64, 32, 32]  tensor(float)" in out
    assert "output  [3, 32, 32, 32]  tensor(float)" in out
    layer = [line for line in out.splitlines() if "64->32" in line]
    assert len(layer) == 1
    for cell in ("Conv+Relu", "/0/Conv+/1/Relu", "relu", "[3, 32, 32, 32]", " 2080 ",
                 "12582912"):
        assert cell in layer[0] + " ", (cell, layer[0])
    assert "total: 2080 parameters" in out and "12582912 (12.58M) FLOPs" in out
    assert "kernels: " in out and " thread" in out
    assert "rewrite notes:" in out and "fused /1/Relu" in out


def test_info_fused_residual_chain(tmp_path):
    out = assert_ok(cli_run("info", residual_model(tmp_path / "res.onnx"), cwd=tmp_path))
    assert "x  [N, 8, 4, 4]  tensor(float)" in out
    first = [line for line in out.splitlines() if "8->16" in line]
    second = [line for line in out.splitlines() if "16->8" in line]
    assert len(first) == 1 and len(second) == 1
    assert "conv1+bn1+relu1" in first[0] and "Conv+BatchNormalization+Relu" in first[0]
    assert "[1, 16, 4, 4]" in first[0] and "4096" in first[0]
    assert "+x" in second[0] and "relu" in second[0] and "[1, 8, 4, 4]" in second[0]
    # params after folding: 16*8+16 + 8*16+8; FLOPs at N=1: 2*16*(16*8) + 2*16*(8*16)
    assert "total: 280 parameters" in out and " 8192 (8.19k) FLOPs" in out


def test_info_unsupported_small_model_names_node_and_op(tmp_path):
    proc = cli_run("info", conv3x3_model(tmp_path / "k3.onnx"), cwd=tmp_path)
    line = assert_one_line_error(proc)
    assert "cannot run" in line and "1 problem" in line
    out = proc.stdout
    assert "x  [1, 4, 5, 5]  tensor(float)" in out and "z  [1, 4, 5, 5]" in out
    assert "Conv 2, Relu 1" in out
    assert "Conv nodes: 2, of which 1x1: 1" in out
    problem = [line for line in out.splitlines() if "'spatial'" in line]
    assert len(problem) == 1 and "Conv" in problem[0] and "3x3" in problem[0]


@pytest.mark.parametrize("name, convs, ones, node, op", [
    ("light_resnet50", 53, 36, "n175", "Softmax"),
    ("light_squeezenet", 26, 17, "n2", "MaxPool"),
])
def test_info_unsupported_onnx_light_models(tmp_path, name, convs, ones, node, op):
    path = _light_model(name)
    if path is None:
        pytest.skip(f"the onnx package does not ship {name}.onnx")
    proc = cli_run("info", path, cwd=tmp_path)
    assert "problem(s)" in assert_one_line_error(proc)
    out = proc.stdout
    assert f"Conv nodes: {convs}, of which 1x1: {ones}" in out
    assert f"{op} '{node}'" in out and f"op {op} is not supported" in out
    full = cli_run("info", path, "--all-problems", cwd=tmp_path)
    assert full.returncode == 2
    assert len(full.stdout.splitlines()) > len(out.splitlines())


# ---- validate ------------------------------------------------------------------------
@pytest.mark.parametrize("model", BUNDLED)
def test_validate_recorded_bundled(tmp_path, model):
    out = assert_ok(cli_run("validate", MODELS / model, "--against", "recorded",
                            cwd=tmp_path))
    assert "ok: all 1 output(s) within tolerance" in out
    assert "max abs err" in out and "rel err" in out


@pytest.mark.parametrize("against", ["onnxruntime", "reference"])
def test_validate_against_runtimes(tmp_path, against):
    if against == "onnxruntime":
        pytest.importorskip("onnxruntime")
    out = assert_ok(cli_run("validate", REDUCE, "--against", against, cwd=tmp_path))
    assert "ok: all 1 output(s)" in out
    out = assert_ok(cli_run("validate", residual_model(tmp_path / "res.onnx"), "--against",
                            against, "--seed", "3", cwd=tmp_path))
    assert "ok:" in out and "seed 3" in out


def test_validate_against_torch(tmp_path):
    pytest.importorskip("torch")
    out = assert_ok(cli_run("validate", residual_model(tmp_path / "res.onnx"), "--against",
                            "torch", cwd=tmp_path))
    assert "PyTorch" in out and "ok:" in out


def test_validate_torch_missing_is_one_line(tmp_path):
    fake = tmp_path / "fake"
    (fake / "torch").mkdir(parents=True)
    (fake / "torch" / "__init__.py").write_text("raise ImportError('no torch here (test)')\n")
    proc = cli_run("validate", REDUCE, "--against", "torch", cwd=tmp_path,
                   env={"PYTHONPATH": os.pathsep.join([str(fake), PACKAGE_PARENT])})
    assert "torch" in assert_one_line_error(proc).lower()


def _copy_with_recorded(tmp_path, name="embed_64to32_relu_torchscript"):
    for suffix in (".onnx", ".inputs.npz", ".outputs.npz"):
        shutil.copy(MODELS / (name + suffix), tmp_path / (name + suffix))
    return tmp_path / (name + ".onnx"), tmp_path / (name + ".outputs.npz")


def test_validate_tampered_recording_exits_1(tmp_path):
    model, outputs = _copy_with_recorded(tmp_path)
    with np.load(outputs) as z:
        y = z["output"].copy()
    y.flat[12345] += 1e-3 * np.abs(y).max()
    np.savez(outputs, output=y)
    proc = cli_run("validate", model.name, "--against", "recorded", cwd=tmp_path)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    assert "FAIL" in proc.stdout and "MISMATCH" in proc.stdout
    assert "Traceback" not in proc.stderr
    # the same error is within a loose relative or absolute tolerance
    assert_ok(cli_run("validate", model.name, "--against", "recorded", "--rtol", "2e-3",
                      cwd=tmp_path))
    assert_ok(cli_run("validate", model.name, "--against", "recorded", "--atol", "1",
                      cwd=tmp_path))


def test_validate_recorded_problems_exit_2(tmp_path):
    model, outputs = _copy_with_recorded(tmp_path)
    np.savez(outputs, output=np.zeros((3, 32, 32, 31), np.float32))   # wrong shape
    proc = cli_run("validate", model.name, "--against", "recorded", cwd=tmp_path)
    assert proc.returncode == 1 and "reference shape" in proc.stdout
    outputs.unlink()
    assert "outputs.npz" in assert_one_line_error(
        cli_run("validate", model.name, "--against", "recorded", cwd=tmp_path))
    np.save(tmp_path / "x.npy", np.zeros((3, 64, 32, 32), np.float32))
    assert "--input" in assert_one_line_error(
        cli_run("validate", model.name, "--against", "recorded", "--input", "x.npy",
                cwd=tmp_path))


def test_compare_tolerance_rule():
    ref = np.array([1.0, -4.0, 2.0], np.float32)
    assert cli.compare(ref, ref, 0, 0) == (0.0, 0.0, True)
    got = ref + np.float32(4e-5)
    err, rel, ok = cli.compare(got, ref, 1e-5, 0)
    assert err == pytest.approx(4e-5, rel=1e-2) and rel == pytest.approx(1e-5, rel=1e-2)
    assert not cli.compare(got, ref, 0.9e-5, 0)[2] and cli.compare(got, ref, 1.1e-5, 0)[2]
    assert cli.compare(got, ref, 0, 5e-5)[2]
    nan = np.array([np.nan, 1.0], np.float32)
    assert cli.compare(nan, nan, 0, 0)[2]
    assert not cli.compare(nan, np.array([0.0, 1.0], np.float32), 1, 1)[2]
    inf = np.array([np.inf, 1.0], np.float32)
    assert cli.compare(inf, inf, 0, 0)[2]
    assert not cli.compare(inf, np.array([-np.inf, 1.0], np.float32), 1, 1)[2]


@pytest.mark.parametrize("case, scale, passes", [
    ("zero reference", 0.5, True), ("zero reference", 2.0, False),
    ("near tolerance", 0.9, True), ("near tolerance", 1.1, False)])
def test_validate_and_compare_outputs_share_one_rule(tmp_path, capsys, case, scale, passes):
    """`pyconv1x1 validate` (default --atol) and pyconv1x1.testing.compare_outputs give
    one verdict: within rtol * max|reference|, and within rtol itself where the
    reference is all zeros (they disagreed there: validate demanded an exact 0)."""
    from pyconv1x1.testing import compare_outputs
    rtol = 1e-5
    model = dynamic_model(tmp_path / "m.onnx")
    x = np.random.default_rng(0).standard_normal((2, 6, 3, 4)).astype(np.float32)
    if case == "zero reference":  # our output peaks at scale * rtol; the reference is 0
        peak = np.abs(_session_outputs(model, {"x": x})["y"]).max()
        x = x * np.float32(scale * rtol / peak)
        got = _session_outputs(model, {"x": x})["y"]
        ref = np.zeros_like(got)
    else:  # one element off by scale * rtol * max|reference|, the peak left alone
        got = _session_outputs(model, {"x": x})["y"]
        ref = got.copy()
        small = np.unravel_index(np.argmin(np.abs(got)), got.shape)
        ref[small] += np.float32(scale * rtol * np.abs(got).max())
    np.savez(tmp_path / "m.inputs.npz", x=x)
    np.savez(tmp_path / "m.outputs.npz", y=ref)
    code = cli.main(["validate", str(model), "--against", "recorded"])
    out = capsys.readouterr().out
    assert code == (0 if passes else 1), out
    assert ("ok: all 1 output(s)" in out) == passes
    assert compare_outputs([got], [ref], rtol=rtol).ok == passes
    assert cli.compare(got, ref, rtol)[2] == passes
    # an explicit --atol 0 asks for an exact 0 on a zero reference, in both
    if case == "zero reference":
        assert cli.main(["validate", str(model), "--against", "recorded", "--atol",
                         "0"]) == 1
        assert not compare_outputs([got], [ref], rtol=rtol, atol=0).ok
        capsys.readouterr()


# ---- bench ---------------------------------------------------------------------------
def test_bench_prints_numbers(tmp_path):
    out = assert_ok(cli_run("bench", REDUCE, "--repeat", "3", "--warmup", "1", "--threads",
                            "1", cwd=tmp_path))
    row = [line.split() for line in out.splitlines() if line.strip().startswith("pyconv1x1")]
    assert len(row) == 1 and row[0][1] == "3"
    header = next(line.split() for line in out.splitlines()
                  if line.strip().startswith("engine"))
    assert header == ["engine", "runs", "p50", "ms", "p90", "ms", "p99", "ms", "min", "ms",
                      "mean", "ms", "GF/s"]
    p50, p90, p99, low, mean, gfs = map(float, row[0][2:8])
    assert 0 < low <= p50 <= p90 <= p99 and low <= mean <= p99 and gfs > 0
    assert "6.29M FLOPs" in out and "1 thread" in out
    assert "peak memory (RSS of this process): " in out and " MiB" in out


def test_bench_compare_onnxruntime(tmp_path):
    pytest.importorskip("onnxruntime")
    out = assert_ok(cli_run("bench", REDUCE, "--repeat", "4", "--warmup", "1", "--compare",
                            "onnxruntime", cwd=tmp_path))
    rows = {line.split()[0]: line.split() for line in out.splitlines()
            if line.strip().startswith(("pyconv1x1", "onnxruntime"))}
    assert rows["pyconv1x1"][1] == "4" and rows["onnxruntime"][1] == "4"
    assert float(rows["onnxruntime"][2]) > 0
    assert "ratio onnxruntime/pyconv1x1" in out


# ---- usage and load errors -----------------------------------------------------------
@pytest.mark.parametrize("args", [
    [], ["frobnicate", "m.onnx"], ["run"], ["validate", "m.onnx"],
    ["validate", "m.onnx", "--against", "tensorflow"], ["run", "m.onnx", "--threads", "0"],
    ["bench", "m.onnx", "--repeat", "2", "--seconds", "1"], ["bench", "m.onnx", "--repeat",
                                                            "x"],
])
def test_bad_usage_exits_2(tmp_path, args):
    proc = cli_run(*args, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stderr.startswith("usage: pyconv1x1") and "error: " in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("command", ["run", "info", "bench", "validate"])
def test_missing_model_exits_2(tmp_path, command):
    extra = ["--against", "onnxruntime"] if command == "validate" else []
    line = assert_one_line_error(cli_run(command, "missing.onnx", *extra, cwd=tmp_path))
    assert "missing.onnx" in line


def test_corrupt_and_unsupported_models_exit_2(tmp_path):
    (tmp_path / "junk.onnx").write_bytes(os.urandom(64))
    assert "junk.onnx" in assert_one_line_error(cli_run("run", "junk.onnx", cwd=tmp_path))
    assert_one_line_error(cli_run("info", "junk.onnx", cwd=tmp_path))
    conv3x3_model(tmp_path / "k3.onnx")
    line = assert_one_line_error(cli_run("run", "k3.onnx", cwd=tmp_path))
    assert "'spatial'" in line and "3x3" in line


def test_version_and_help(tmp_path):
    assert pyconv1x1.__version__ in assert_ok(cli_run("--version", cwd=tmp_path))
    out = assert_ok(cli_run("--help", cwd=tmp_path))
    for command in ("run", "info", "validate", "bench"):
        assert command in out


# ---- in process: the entry point function and internal errors ------------------------
def test_main_in_process(capsys):
    assert cli.main(["info", str(EMBED)]) == 0
    assert "64->32" in capsys.readouterr().out
    assert cli.main(["run", str(MODELS / "missing.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pyconv1x1: error: ") and err.count("\n") == 1


def test_internal_error_exits_3(monkeypatch, capsys):
    def broken(args):
        raise RuntimeError("boom\nsecond line")
    monkeypatch.setattr(cli, "cmd_info", broken)
    monkeypatch.delenv("PYCONV1X1_DEBUG", raising=False)
    assert cli.main(["info", str(EMBED)]) == 3
    err = capsys.readouterr().err
    assert "internal error" in err and "RuntimeError: boom" in err
    assert "Traceback" not in err and err.count("\n") == 1
    monkeypatch.setenv("PYCONV1X1_DEBUG", "1")
    assert cli.main(["info", str(EMBED)]) == 3
    assert "Traceback" in capsys.readouterr().err


def test_cli_imports_are_lazy(tmp_path):
    code = ("import sys, pyconv1x1.cli as c; c.build_parser().parse_args(['info', 'm.onnx']); "
            "print(sorted(m for m in ('onnx', 'onnxruntime', 'torch', 'google.protobuf') "
            "if m in sys.modules))")
    environ = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=environ,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---- dynamic shapes, many inputs, plans, bench outputs (issue 13) --------------------
def dynamic_model(path):
    """x[batch,6,H,W] -> conv(6->5) -> y[batch,5,H,W]."""
    rng = np.random.default_rng(4)
    return _save(path, [__import__("onnx").helper.make_node("Conv", ["x", "w"], ["y"])],
                 [("x", ["batch", 6, "H", "W"])], [("y", ["batch", 5, "H", "W"])],
                 {"w": rng.standard_normal((5, 6, 1, 1))})


def test_run_shape_and_dim_for_dynamic_models(tmp_path):
    model = dynamic_model(tmp_path / "dyn.onnx")
    out = assert_ok(cli_run("run", model, cwd=tmp_path))
    assert "input  x: [1, 6, 1, 1]" in out
    assert "dims not given, set to 1: batch, H, W" in out and "--dim NAME=N" in out
    out = assert_ok(cli_run("run", model, "--dim", "batch=3", "--dim", "H=2", "--dim",
                            "W=5", "--output", "y.npz", cwd=tmp_path))
    assert "input  x: [3, 6, 2, 5]" in out and "set to 1" not in out
    x = np.random.default_rng(0).standard_normal((3, 6, 2, 5), dtype=np.float32)
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_array_equal(z["y"], _session_outputs(model, {"x": x})["y"])
    out = assert_ok(cli_run("run", model, "--shape", "x=2x6x3x4", cwd=tmp_path))
    assert "input  x: [2, 6, 3, 4]" in out and "set to 1" not in out
    out = assert_ok(cli_run("bench", model, "--dim", "batch=2", "--repeat", "2", cwd=tmp_path))
    assert "input: x=[2, 6, 1, 1]" in out and "set to 1: H, W" in out


@pytest.mark.parametrize("args, words", [
    (["--shape", "z=1x6x2x2"], ["no input 'z'", "['x']"]),
    (["--dim", "depth=3"], ["'depth'", "['batch', 'H', 'W']"]),
    (["--shape", "x=1x7x2x2"], ["dim 1 must be 6"]),
    (["--shape", "x=1x6x2"], ["rank 3", "rank 4"]),
    (["--shape", "x=2x6x2x2", "--dim", "batch=3"], ["'batch'", "3"]),
    (["--input", "x.npy", "--dim", "batch=2"], ["--input"]),
])
def test_shape_and_dim_errors(tmp_path, args, words):
    model = dynamic_model(tmp_path / "dyn.onnx")
    np.save(tmp_path / "x.npy", np.zeros((1, 6, 2, 2), np.float32))
    line = assert_one_line_error(cli_run("run", model, *args, cwd=tmp_path))
    for word in words:
        assert word in line, line


@pytest.mark.parametrize("bad", ["x=1x6", "x=", "=1x2", "x=1x-2x3", "batch"])
def test_malformed_shape_is_usage_error(tmp_path, bad):
    option = "--dim" if bad == "batch" else "--shape"
    proc = cli_run("run", "m.onnx", option, bad, cwd=tmp_path)
    if bad == "x=1x6":  # well formed; the model is missing
        assert proc.returncode == 2 and "m.onnx" in proc.stderr
        return
    assert proc.returncode == 2 and proc.stderr.startswith("usage: ")
    assert "expected" in proc.stderr


def test_run_over_a_folder(tmp_path):
    model = dynamic_model(tmp_path / "dyn.onnx")
    rng = np.random.default_rng(9)
    (tmp_path / "xs").mkdir()
    feeds = {}
    for i, shape in enumerate([(1, 6, 2, 2), (2, 6, 3, 1), (4, 6, 1, 1)]):
        feeds[f"s{i}"] = rng.standard_normal(shape, dtype=np.float32)
        np.save(tmp_path / "xs" / f"s{i}.npy", feeds[f"s{i}"])
    (tmp_path / "xs" / "notes.txt").write_text("ignored")
    proc = cli_run("run", model, "--input", "xs", "--output", "ys", cwd=tmp_path)
    out = assert_ok(proc)
    assert proc.stderr == ""  # no progress bar: stderr is not a terminal
    assert "ran 3 input(s), 7 sample(s)" in out and "runs/s" in out and "samples/s" in out
    for stem, x in feeds.items():
        want = _session_outputs(model, {"x": x})["y"]
        np.testing.assert_array_equal(np.load(tmp_path / "ys" / f"{stem}.npy"), want)
    assert_ok(cli_run("run", model, "--input", "xs", "--output", "all.npz", cwd=tmp_path))
    with np.load(tmp_path / "all.npz") as z:
        assert sorted(z.files) == ["s0", "s1", "s2"]
        np.testing.assert_array_equal(z["s1"], _session_outputs(model, {"x": feeds["s1"]})
                                      ["y"])
    (tmp_path / "empty").mkdir()
    assert "no .npy or .npz" in assert_one_line_error(
        cli_run("run", model, "--input", "empty", cwd=tmp_path))
    np.save(tmp_path / "xs" / "s9.npy", np.zeros((1, 7, 2, 2), np.float32))
    line = assert_one_line_error(cli_run("run", model, "--input", "xs", cwd=tmp_path))
    assert "'s9'" in line and "7" in line


def test_run_batches_of_an_npz(tmp_path):
    model = dynamic_model(tmp_path / "dyn.onnx")
    x = np.random.default_rng(2).standard_normal((10, 6, 3, 2), dtype=np.float32)
    np.savez(tmp_path / "x.npz", x=x)
    out = assert_ok(cli_run("run", model, "--input", "x.npz", "--batch-size", "4",
                            "--output", "y.npz", cwd=tmp_path))
    assert "ran 3 input(s), 10 sample(s)" in out
    with np.load(tmp_path / "y.npz") as z:
        np.testing.assert_allclose(z["y"], _session_outputs(model, {"x": x})["y"],
                                   rtol=1e-6, atol=1e-6)
    assert_ok(cli_run("run", model, "--input", "x.npz", "--batch-size", "4", "--output",
                      "parts", cwd=tmp_path))
    assert sorted(os.listdir(tmp_path / "parts")) == ["000000.npy", "000001.npy",
                                                       "000002.npy"]
    assert np.load(tmp_path / "parts" / "000002.npy").shape == (2, 5, 3, 2)
    assert "--input FILE.npz" in assert_one_line_error(
        cli_run("run", model, "--batch-size", "4", cwd=tmp_path))


def test_progress_bar_only_on_a_terminal():
    import io

    class Tty(io.StringIO):
        def isatty(self):
            return True
    tty, pipe = Tty(), io.StringIO()
    for stream in (tty, pipe):
        bar = cli.Progress(3, "run", stream=stream)
        for _ in range(3):
            bar.update()
        bar.close()
    assert "3/3" in tty.getvalue() and "\r" in tty.getvalue() and "#" in tty.getvalue()
    assert pipe.getvalue() == ""


def test_compile_refuses_to_overwrite_its_input(tmp_path):
    model = dynamic_model(tmp_path / "dyn.onnx")
    before = model.read_bytes()
    os.symlink("dyn.onnx", tmp_path / "link.onnx")
    os.link(model, tmp_path / "hard.onnx")
    for target in ("dyn.onnx", "./dyn.onnx", "link.onnx", "hard.onnx",
                   str(tmp_path / "dyn.onnx")):
        line = assert_one_line_error(cli_run("compile", "dyn.onnx", "-o", target,
                                             cwd=tmp_path))
        assert "refusing to overwrite" in line, line
    assert model.read_bytes() == before
    assert_ok(cli_run("compile", "dyn.onnx", "-o", "dyn.pc1", cwd=tmp_path))


def test_validate_a_plan(tmp_path):
    _copy_with_recorded(tmp_path)
    name = "embed_64to32_relu_torchscript"
    assert_ok(cli_run("compile", f"{name}.onnx", "-o", f"{name}.pc1", cwd=tmp_path))
    out = assert_ok(cli_run("validate", f"{name}.pc1", "--against", "recorded",
                            cwd=tmp_path))
    assert f"recorded outputs {name}.outputs.npz" in out and "ok:" in out
    # a plan elsewhere finds the recorded files beside its --source
    (tmp_path / "plans").mkdir()
    assert_ok(cli_run("compile", f"{name}.onnx", "-o", "plans/p.pc1", cwd=tmp_path))
    out = assert_ok(cli_run("validate", "plans/p.pc1", "--against", "recorded", "--source",
                            f"{name}.onnx", cwd=tmp_path))
    assert "ok:" in out
    out = assert_ok(cli_run("validate", "plans/p.pc1", "--against", "source", "--source",
                            f"{name}.onnx", cwd=tmp_path))
    assert "pyconv1x1 on the source model" in out and "ok:" in out
    line = assert_one_line_error(cli_run("validate", "plans/p.pc1", "--against",
                                         "onnxruntime", cwd=tmp_path))
    assert "--source" in line and "compiled plan" in line
    line = assert_one_line_error(cli_run("validate", f"{name}.onnx", "--against",
                                         "onnxruntime", "--source", f"{name}.onnx",
                                         cwd=tmp_path))
    assert "not a .pc1 plan" in line
    assert "--source" in assert_one_line_error(
        cli_run("validate", "plans/p.pc1", "--against", "source", cwd=tmp_path))


def test_validate_plan_against_onnxruntime_source(tmp_path):
    pytest.importorskip("onnxruntime")
    model = dynamic_model(tmp_path / "dyn.onnx")
    assert_ok(cli_run("compile", model, "-o", "dyn.pc1", cwd=tmp_path))
    out = assert_ok(cli_run("validate", "dyn.pc1", "--against", "onnxruntime", "--source",
                            "dyn.onnx", "--dim", "batch=2", "--dim", "H=3", "--dim", "W=3",
                            cwd=tmp_path))
    assert "[2, 5, 3, 3]" in out and "ok:" in out and "(dyn.onnx)" in out


def test_validate_help_explains_torch(tmp_path):
    out = assert_ok(cli_run("validate", "--help", cwd=tmp_path))
    assert "REBUILT WITH TORCH OPS" in out
    assert "pyconv1x1.testing.assert_matches_torch" in out
    assert "--source" in out


def test_bench_json(tmp_path):
    out = assert_ok(cli_run("bench", REDUCE, "--repeat", "5", "--warmup", "1", "--json",
                            "b.json", "--threads", "1", cwd=tmp_path))
    assert "wrote b.json" in out
    import json
    data = json.loads((tmp_path / "b.json").read_text())
    stats = data["engines"]["pyconv1x1"]
    assert stats["runs"] == 5 and len(data["times_ms"]["pyconv1x1"]) == 5
    assert 0 < stats["min_ms"] <= stats["p50_ms"] <= stats["p90_ms"] <= stats["p99_ms"]
    assert data["flops_per_run"] == 6291456 and data["threads"] == 1
    assert data["inputs"] == {"input": [3, 64, 32, 32]}
    assert data["peak_rss_bytes"] is None or data["peak_rss_bytes"] > 2 ** 20


def test_bench_plot(tmp_path):
    pytest.importorskip("matplotlib")
    out = assert_ok(cli_run("bench", REDUCE, "--repeat", "4", "--warmup", "1", "--plot",
                            "b.png", "--target-ms", "0.5", cwd=tmp_path))
    assert "wrote b.png" in out
    assert (tmp_path / "b.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    stats = {"pyconv1x1": {"p10_ms": 1.0, "p50_ms": 2.0, "p90_ms": 4.0},
             "onnxruntime": {"p10_ms": 2.0, "p50_ms": 3.0, "p90_ms": 3.5}}
    labels = cli._plot(str(tmp_path / "c.png"), "m.onnx", stats, 3.0, "onnxruntime median")
    assert "target: onnxruntime median (3 ms)" in labels
    assert any("error bars: p10 to p90" in label for label in labels)


def test_bench_plot_without_matplotlib(tmp_path):
    fake = tmp_path / "fake"
    (fake / "matplotlib").mkdir(parents=True)
    (fake / "matplotlib" / "__init__.py").write_text("raise ImportError('not here')\n")
    proc = cli_run("bench", REDUCE, "--repeat", "2", "--plot", "b.png", cwd=tmp_path,
                   env={"PYTHONPATH": os.pathsep.join([str(fake), PACKAGE_PARENT])})
    line = assert_one_line_error(proc)
    assert "matplotlib" in line and "pip install 'pyconv1x1[plot]'" in line
    assert "model:" not in proc.stdout  # refused before timing anything


def test_kernels_line_names_variants_the_build_lacks(monkeypatch):
    from pyconv1x1 import _backend

    class FakeSession:
        kernel_variant, threads = "v3", 1
    flags = set(_backend._REQUIRES["v4"]) | set(_backend._REQUIRES["v3"])
    monkeypatch.setattr(_backend, "_linux_cpu_flags", lambda: flags)
    monkeypatch.setattr(_backend, "built_variants", lambda: ["v3", "generic"])
    line = cli._kernels_line(FakeSession())
    assert "v4 would run on this CPU but is not built" in line and "pip install -v" in line
    monkeypatch.setattr(_backend, "built_variants", lambda: ["v4", "v3", "generic"])
    assert "not built" not in cli._kernels_line(FakeSession())
