"""onnxruntime's Python API on pyconv1x1: the same code, written for onnxruntime, runs
against both runtimes (the `rt` fixture is the module `onnxruntime` or `pyconv1x1`) and
gives the same answers; then what is pyconv1x1's own (errors, options it honours,
compiled plans keeping the model's metadata)."""
import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import MODELS, NEUTRAL_CWD, conv_node, make_model, rnd
import pyconv1x1
from pyconv1x1 import Error, InputError, UnsupportedError

F = np.float32
EMBED = os.path.join(MODELS, "embed_64to32_relu_dynamo.onnx")


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """x[batch,6,H,W] -> conv -> relu -> conv -> y, relu output r also an output; with
    every metadata field set."""
    rng = np.random.default_rng(3)
    inits = {"W1": rnd(rng, 8, 6, 1, 1), "B1": rnd(rng, 8), "W2": rnd(rng, 5, 8, 1, 1)}
    nodes = [conv_node("x", "W1", "B1", "c"), helper.make_node("Relu", ["c"], ["r"]),
             conv_node("r", "W2", None, "y")]
    model = make_model(nodes, [("x", ["batch", 6, "H", "W"])],
                       [("y", ["batch", 5, "H", "W"]), ("r", ["batch", 8, "H", "W"])],
                       inits)
    model.producer_name = "ort-api-test"
    model.producer_version = "1.2"
    model.domain = "org.example"
    model.doc_string = "two convs"
    model.model_version = 7
    model.graph.name = "tiny_graph"
    model.graph.doc_string = "the graph"
    helper.set_model_props(model, {"author": "me", "license": "MIT"})
    path = tmp_path_factory.mktemp("ort_api") / "tiny.onnx"
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(params=["onnxruntime", "pyconv1x1"])
def rt(request):
    """The runtime module: code below is written for onnxruntime and only imports it
    under another name."""
    if request.param == "onnxruntime":
        return pytest.importorskip("onnxruntime")
    return pyconv1x1


def _feed(batch=2, h=3, w=5):
    return {"x": np.random.default_rng(11).standard_normal((batch, 6, h, w), dtype=F)}


def _reference(model_path):
    ort = pytest.importorskip("onnxruntime")
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return sess.run(None, _feed())


# ---- the same code against both runtimes ----------------------------------------------
def test_session_options_and_providers(rt, model_path):
    opts = rt.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = rt.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = rt.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    sess = rt.InferenceSession(model_path, sess_options=opts,
                               providers=["CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in sess.get_provider_options()
    got = sess.get_session_options()
    assert got.intra_op_num_threads == 2
    assert got.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert "CPUExecutionProvider" in rt.get_available_providers()
    # positional sess_options, as onnxruntime's examples write it
    sess2 = rt.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    assert [a.name for a in sess2.get_inputs()] == ["x"]


def test_inputs_outputs_and_metadata(rt, model_path):
    sess = rt.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    assert [(a.name, a.shape, a.type) for a in sess.get_inputs()] == [
        ("x", ["batch", 6, "H", "W"], "tensor(float)")]
    assert [(a.name, a.shape, a.type) for a in sess.get_outputs()] == [
        ("y", ["batch", 5, "H", "W"], "tensor(float)"),
        ("r", ["batch", 8, "H", "W"], "tensor(float)")]
    meta = sess.get_modelmeta()
    assert (meta.producer_name, meta.graph_name, meta.domain, meta.description,
            meta.version, meta.graph_description) == (
        "ort-api-test", "tiny_graph", "org.example", "two convs", 7, "the graph")
    assert meta.custom_metadata_map == {"author": "me", "license": "MIT"}


def test_modelmeta_without_fields_matches(rt):
    """A model that sets no version: onnxruntime reports 2**63 - 1, so do we."""
    meta = rt.InferenceSession(EMBED, providers=["CPUExecutionProvider"]).get_modelmeta()
    assert (meta.producer_name, meta.graph_name, meta.version, meta.custom_metadata_map,
            meta.description) == ("pytorch", "main_graph", 2 ** 63 - 1, {}, "")


def test_run_with_run_options(rt, model_path):
    sess = rt.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    ro = rt.RunOptions()
    ro.log_severity_level = 3
    ro.logid = "test"
    ro.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
    assert ro.get_run_config_entry("memory.enable_memory_arena_shrinkage") == "cpu:0"
    y, r = sess.run(None, _feed(), ro)
    want_y, want_r = _reference(model_path)
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r, want_r, rtol=1e-5, atol=1e-5)
    (only_r,) = sess.run(["r"], _feed(), run_options=ro)
    np.testing.assert_allclose(only_r, want_r, rtol=1e-5, atol=1e-5)


def test_io_binding_round_trip(rt, model_path):
    sess = rt.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    x = _feed()["x"]
    want_y, want_r = _reference(model_path)
    binding = sess.io_binding()
    binding.bind_cpu_input("x", x)
    binding.bind_output("y")                       # allocated by the runtime
    out_r = np.full(want_r.shape, np.nan, dtype=F)  # written in place
    binding.bind_output("r", "cpu", 0, np.float32, list(out_r.shape), out_r.ctypes.data)
    sess.run_with_iobinding(binding)
    y, r = binding.copy_outputs_to_cpu()
    np.testing.assert_allclose(y, want_y, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(r, want_r, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out_r, want_r, rtol=1e-5, atol=1e-5)
    values = binding.get_outputs()
    assert [v.shape() for v in values] == [list(want_y.shape), list(want_r.shape)]
    assert values[0].data_type() == "tensor(float)"
    np.testing.assert_allclose(values[1].numpy(), want_r, rtol=1e-5, atol=1e-5)
    # rebinding the input to another batch size: the allocated output follows it
    binding.clear_binding_inputs()
    binding.clear_binding_outputs()
    x1 = x[:1].copy()
    binding.bind_cpu_input("x", x1)
    binding.bind_output("y")
    sess.run_with_iobinding(binding)
    (y1,) = binding.copy_outputs_to_cpu()
    np.testing.assert_allclose(y1, want_y[:1], rtol=1e-5, atol=1e-5)


def test_run_with_iobinding_needs_an_output(rt, model_path):
    sess = rt.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    binding = sess.io_binding()
    binding.bind_cpu_input("x", _feed()["x"])
    with pytest.raises(Exception, match="(?i)output"):
        sess.run_with_iobinding(binding)


def test_ort_values_and_set_providers(rt, model_path):
    sess = rt.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    x = rt.OrtValue.ortvalue_from_numpy(_feed()["x"])
    (r,) = sess.run_with_ort_values(["r"], {"x": x})
    np.testing.assert_allclose(r.numpy(), _reference(model_path)[1], rtol=1e-5, atol=1e-5)
    assert r.shape() == [2, 8, 3, 5] and r.device_name().lower() == "cpu"
    sess.set_providers(["CPUExecutionProvider"])
    assert sess.get_providers() == ["CPUExecutionProvider"]
    assert sess.get_overridable_initializers() == []


def test_profiling(rt, model_path, tmp_path):
    opts = rt.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "prof")
    sess = rt.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    for _ in range(2):
        sess.run(None, _feed())
    path = sess.end_profiling()
    assert os.path.dirname(os.path.abspath(path)) == str(tmp_path)
    with open(path) as f:
        events = json.load(f)
    runs = [e for e in events if e.get("name") == "model_run"]
    assert len(runs) == 2, [e.get("name") for e in events]
    assert all(e["ph"] == "X" and e["dur"] >= 0 for e in runs)


def test_profiling_off_returns_empty(rt, model_path):
    sess = rt.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    assert sess.end_profiling() == ""


def test_free_dimension_override(rt, model_path):
    opts = rt.SessionOptions()
    opts.add_free_dimension_override_by_name("batch", 2)
    sess = rt.InferenceSession(model_path, opts, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [2, 6, "H", "W"]
    sess.run(None, _feed(batch=2))
    with pytest.raises(Exception, match="(?i)dim|dimension|shape"):
        sess.run(None, _feed(batch=3))


def test_non_cpu_provider_refused(model_path):
    for providers in (["CUDAExecutionProvider"],
                      ["TensorrtExecutionProvider", "CPUExecutionProvider"],
                      [("CUDAExecutionProvider", {"device_id": 0})]):
        with pytest.raises(UnsupportedError) as info:
            pyconv1x1.InferenceSession(model_path, providers=providers)
        bad = providers[0][0] if isinstance(providers[0], tuple) else providers[0]
        assert bad in str(info.value) and "CPUExecutionProvider" in str(info.value)


# ---- pyconv1x1's own ------------------------------------------------------------------
def test_provider_options_kept(model_path):
    sess = pyconv1x1.InferenceSession(
        model_path, providers=["CPUExecutionProvider"], provider_options=[{"a": 1}])
    assert sess.get_provider_options() == {"CPUExecutionProvider": {"a": "1"}}
    with pytest.raises(Error, match="provider_options has 2 entries for 1"):
        pyconv1x1.InferenceSession(model_path, providers=["CPUExecutionProvider"],
                                   provider_options=[{}, {}])
    with pytest.raises(Error, match="providers must be a list"):
        pyconv1x1.InferenceSession(model_path, providers="CPUExecutionProvider")


def test_threads_and_options(model_path):
    opts = pyconv1x1.SessionOptions()
    assert opts.intra_op_num_threads == 0
    opts.intra_op_num_threads = 3
    assert pyconv1x1.InferenceSession(model_path, opts).threads == 3
    assert pyconv1x1.InferenceSession(model_path, opts, threads=3).threads == 3
    assert pyconv1x1.InferenceSession(model_path, opts, threads=None).threads == 3
    with pytest.raises(Error, match="contradicts"):
        pyconv1x1.InferenceSession(model_path, opts, threads=2)
    assert pyconv1x1.InferenceSession(model_path, threads=2).threads == 2
    with pytest.warns(DeprecationWarning, match="sess_options"):
        assert pyconv1x1.InferenceSession(model_path, 2).threads == 2
    with pytest.raises(Error, match="intra_op_num_threads must be an int"):
        opts.intra_op_num_threads = "2"
    with pytest.raises(Error, match="graph_optimization_level must be one of"):
        opts.graph_optimization_level = "all"
    with pytest.raises(AttributeError, match="no option 'intra_threads'"):
        opts.intra_threads = 2
    with pytest.raises(Error, match=r"unexpected keyword argument\(s\) \['thread'\]"):
        pyconv1x1.InferenceSession(model_path, thread=2)
    with pytest.raises(Error, match="sess_options must be"):
        pyconv1x1.InferenceSession(model_path, "fast")
    with pytest.raises(Error, match="no entry 'missing'"):
        opts.get_session_config_entry("missing")
    with pytest.raises(UnsupportedError, match="add_initializer"):
        opts.add_initializer("W1", None)


def test_onnxruntime_options_object_is_read(model_path):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    assert pyconv1x1.InferenceSession(model_path, opts).threads == 2
    mine = pyconv1x1.SessionOptions()
    mine.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert mine.graph_optimization_level is \
        pyconv1x1.GraphOptimizationLevel.ORT_ENABLE_BASIC


def test_run_options_type_checked(model_path):
    sess = pyconv1x1.InferenceSession(model_path)
    for _ in range(2):  # the second run would take the C fast path without run_options
        sess.run(None, _feed())
        with pytest.raises(InputError, match="run_options must be"):
            sess.run(None, _feed(), {"terminate": True})


def test_profiling_records_every_run_even_on_the_fast_path(tmp_path):
    """A single-chain model runs through the C fast path; while profiling each run must
    still be recorded."""
    opts = pyconv1x1.SessionOptions()
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp_path / "p")
    sess = pyconv1x1.InferenceSession(EMBED, opts)
    x = np.zeros((3, 64, 32, 32), F)
    for _ in range(5):
        sess.run(None, {"input": x})
    with open(sess.end_profiling()) as f:
        assert sum(e["name"] == "model_run" for e in json.load(f)) == 5
    assert sess.end_profiling() == ""  # profiling stopped


def test_iobinding_output_buffers(model_path):
    sess = pyconv1x1.InferenceSession(model_path)
    x = _feed()["x"]
    want_y, want_r = sess.run(None, {"x": x})
    binding = sess.io_binding()
    binding.bind_input("x", "cpu", 0, np.float32, list(x.shape), x.ctypes.data)
    y = np.empty_like(want_y)
    binding.bind_output("y", buffer_ptr=y)  # a numpy array directly (ours)
    sess.run_with_iobinding(binding)
    assert binding.get_outputs()[0].numpy() is y
    assert np.array_equal(y, want_y)
    with pytest.raises(UnsupportedError, match="'cuda'"):
        binding.bind_output("r", "cuda", 0)
    with pytest.raises(InputError, match="unknown output name 'z'"):
        binding.bind_output("z")
    with pytest.raises(InputError, match="unknown input name 'q'"):
        binding.bind_cpu_input("q", x)
    with pytest.raises(InputError, match="writable C-contiguous float32"):
        binding.bind_output("r", buffer_ptr=np.empty(want_r.shape, np.float64))
    wrong = np.empty((1, 5, 3, 5), F)
    binding.bind_output("y", buffer_ptr=wrong)
    with pytest.raises(InputError, match=r"shape \[1, 5, 3, 5\]"):
        sess.run_with_iobinding(binding)
    other = pyconv1x1.InferenceSession(model_path).io_binding()
    with pytest.raises(InputError, match="this session's io_binding"):
        sess.run_with_iobinding(other)
    fresh = sess.io_binding()
    with pytest.raises(Error, match="no results yet"):
        fresh.copy_outputs_to_cpu()
    value = pyconv1x1.OrtValue.ortvalue_from_numpy(x)
    fresh.bind_ortvalue_input("x", value)
    fresh.bind_ortvalue_output("y", pyconv1x1.OrtValue.ortvalue_from_shape_and_type(
        want_y.shape, np.float32))
    sess.run_with_iobinding(fresh)
    assert np.array_equal(fresh.copy_outputs_to_cpu()[0], want_y)


def test_plan_keeps_metadata(model_path, tmp_path):
    from pyconv1x1 import planfile
    out = tmp_path / "tiny.pc1"
    planfile.compile_model(model_path, out)
    meta = pyconv1x1.InferenceSession(str(out)).get_modelmeta()
    assert (meta.producer_name, meta.graph_name, meta.version,
            meta.custom_metadata_map) == ("ort-api-test", "tiny_graph", 7,
                                          {"author": "me", "license": "MIT"})


def test_old_plan_without_metadata_loads(model_path, tmp_path):
    """Plans written before the metadata was kept: the header has no "metadata"."""
    import zlib

    from pyconv1x1 import planfile
    program = pyconv1x1.InferenceSession(model_path).program
    data = planfile.dumps(program, 6)
    _, version, hlen, boff, blen, _ = planfile.PREFIX.unpack(data[:planfile.PREFIX.size])
    header = json.loads(data[planfile.PREFIX.size:planfile.PREFIX.size + hlen])
    del header["metadata"]
    new_header = json.dumps(header, separators=(",", ":")).encode()
    blob = data[boff:boff + blen]
    new_off = planfile.PREFIX.size + len(new_header)
    new_off += (-new_off) % planfile.ALIGN
    crc = zlib.crc32(blob, zlib.crc32(new_header))
    old = (planfile.PREFIX.pack(planfile.MAGIC, version, len(new_header), new_off, blen,
                                crc)
           + new_header + b"\0" * (new_off - planfile.PREFIX.size - len(new_header)) + blob)
    sess = pyconv1x1.InferenceSession(old)
    meta = sess.get_modelmeta()
    assert (meta.producer_name, meta.version, meta.custom_metadata_map) == (
        "", 2 ** 63 - 1, {})
    assert np.array_equal(sess.run(None, _feed())[0],
                          pyconv1x1.InferenceSession(model_path).run(None, _feed())[0])


def test_optimized_model_filepath_writes_a_plan(model_path, tmp_path):
    opts = pyconv1x1.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.pc1")
    sess = pyconv1x1.InferenceSession(model_path, opts)
    again = pyconv1x1.InferenceSession(str(tmp_path / "opt.pc1"))
    assert np.array_equal(again.run(None, _feed())[0], sess.run(None, _feed())[0])
    opts.optimized_model_filepath = model_path
    with pytest.raises(Error, match="is the model itself"):
        pyconv1x1.InferenceSession(model_path, opts)


def test_api_objects_load_lazily():
    code = ("import sys, pyconv1x1\n"
            "assert 'pyconv1x1.ort_api' not in sys.modules\n"
            "assert pyconv1x1.SessionOptions().intra_op_num_threads == 0\n"
            "assert 'pyconv1x1.session' not in sys.modules\n")
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=NEUTRAL_CWD)


# ---- drop-in: a script written for onnxruntime, run with `import pyconv1x1 as ort` ----
DROP_IN_SCRIPT = '''\
import onnxruntime as ort
import sys
import numpy as np

model, data, out = sys.argv[1:4]
x = np.load(data)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
sess = ort.InferenceSession(model, sess_options=opts, providers=["CPUExecutionProvider"])
assert sess.get_providers() == ["CPUExecutionProvider"]
name = sess.get_inputs()[0].name
out_name = sess.get_outputs()[0].name
(y,) = sess.run([out_name], {name: x})
binding = sess.io_binding()
binding.bind_cpu_input(name, x)
buf = np.empty(y.shape, dtype=np.float32)
binding.bind_output(out_name, "cpu", 0, np.float32, list(buf.shape), buf.ctypes.data)
sess.run_with_iobinding(binding)
(copied,) = binding.copy_outputs_to_cpu()
binding.clear_binding_outputs()
binding.bind_output(out_name)
binding.bind_cpu_input(name, x[:1].copy())
sess.run_with_iobinding(binding)
(first,) = binding.copy_outputs_to_cpu()
np.savez(out, run=y, bound=buf, copied=copied, first=first)
'''


def _mobilenet_v3_block(torch):
    """torchvision's MobileNetV3 InvertedResidual made of 1x1 convs (its depthwise conv
    left out): Conv2dNormActivation(1x1, BN, Hardswish) -> SqueezeExcitation(avgpool,
    fc1, ReLU, fc2, Hardsigmoid) * x -> projection Conv2dNormActivation(1x1, BN) -> + x"""
    nn = torch.nn

    class SE(nn.Module):
        def __init__(self, c, squeeze):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1, self.fc2 = nn.Conv2d(c, squeeze, 1), nn.Conv2d(squeeze, c, 1)
            self.activation, self.scale_activation = nn.ReLU(), nn.Hardsigmoid()

        def forward(self, x):
            s = self.avgpool(x)
            return self.scale_activation(self.fc2(self.activation(self.fc1(s)))) * x

    class Block(nn.Module):
        def __init__(self, c=24, expanded=72):
            super().__init__()
            self.block = nn.Sequential(
                nn.Sequential(nn.Conv2d(c, expanded, 1, bias=False),
                              nn.BatchNorm2d(expanded), nn.Hardswish()),
                SE(expanded, 24),
                nn.Sequential(nn.Conv2d(expanded, c, 1, bias=False), nn.BatchNorm2d(c)))

        def forward(self, x):
            return x + self.block(x)

    torch.manual_seed(5)
    block = Block()
    for m in block.modules():  # trained-looking BatchNorm statistics
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return block.eval()


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("exporter", ["torchscript", "dynamo"])
def test_drop_in_script_on_an_exported_mobilenet_v3_block(exporter, tmp_path):
    """The script above, unchanged but for its import line, gives what onnxruntime and
    PyTorch give on a MobileNetV3-like block (HardSwish, SE with Hardsigmoid, BN,
    residual) exported by either exporter."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxruntime")
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
    block = _mobilenet_v3_block(torch)
    x = np.random.default_rng(7).standard_normal((2, 24, 9, 11), dtype=F)
    path = str(tmp_path / f"mbv3_{exporter}.onnx")
    kw = {"dynamo": exporter == "dynamo"}
    if exporter == "dynamo":
        kw["external_data"] = False
    torch.onnx.export(block, (torch.from_numpy(x),), path, input_names=["input"],
                      output_names=["output"], dynamic_axes={"input": {0: "batch"}}
                      if exporter == "torchscript" else None,
                      dynamic_shapes=({0: torch.export.Dim("batch")},)
                      if exporter == "dynamo" else None, **kw)
    with torch.no_grad():
        want = block(torch.from_numpy(x)).numpy()
    np.save(tmp_path / "x.npy", x)
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([root, env.get("PYTHONPATH", "")])
    results = {}
    for runtime in ("onnxruntime", "pyconv1x1"):
        script = tmp_path / f"script_{runtime}.py"
        text = DROP_IN_SCRIPT.replace("import onnxruntime as ort",
                                      f"import {runtime} as ort", 1)
        assert text.count("\n") == DROP_IN_SCRIPT.count("\n")
        script.write_text(text)
        out = tmp_path / f"{runtime}.npz"
        subprocess.run([sys.executable, str(script), path, str(tmp_path / "x.npy"),
                        str(out)], check=True, env=env, cwd=NEUTRAL_CWD)
        results[runtime] = dict(np.load(out))
    ours, theirs = results["pyconv1x1"], results["onnxruntime"]
    tol = dict(rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    for key in ("run", "bound", "copied"):
        np.testing.assert_allclose(ours[key], want, **tol)
        np.testing.assert_allclose(ours[key], theirs[key], **tol)
    np.testing.assert_allclose(ours["first"], theirs["first"], **tol)
    np.testing.assert_allclose(ours["first"], want[:1], **tol)
    # and it ran on pyconv1x1's fused path: no separate activation or scale pass
    kinds = [s.kind for s in pyconv1x1.InferenceSession(path).program.steps]
    assert kinds.count("chain") >= 1 and "scale" not in kinds, kinds
