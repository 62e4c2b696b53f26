"""Shared test helpers: build small ONNX models with onnx.helper, run them with the
references (onnx's ReferenceEvaluator, onnxruntime), and a float64 numpy reference of a
1x1 convolution."""
import importlib.util
import os
import platform
import sys
import tempfile

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(REPO, "models")


def _prefer_built_package():
    """`python -m pytest` from the repo root puts the source tree first on sys.path. In a
    fresh clone that tree has no compiled kernels (they are never committed) while the
    installed copy has; then test the installed one."""
    src = os.path.join(REPO, "pyconv1x1")
    if any(f.startswith("_kernels_generic") and f.endswith((".so", ".pyd"))
           for f in os.listdir(src)):
        return
    if "pyconv1x1" in sys.modules:
        return
    keep = [p for p in sys.path
            if os.path.abspath(p or os.curdir) != REPO]
    saved = sys.path[:]
    sys.path[:] = keep
    try:
        spec = importlib.util.find_spec("pyconv1x1")
    finally:
        sys.path[:] = saved
    if spec is not None and spec.origin and not spec.origin.startswith(src):
        sys.path[:] = keep


_prefer_built_package()

# an aarch64 run under qemu-user emulation (tools/aarch64.sh sets PYCONV1X1_EMULATED=1)
EMULATED = (platform.machine() == "aarch64"
            and os.environ.get("PYCONV1X1_EMULATED") == "1")
# tests that start a child Python: under emulation sys.executable is an arm64 binary
# that the x86-64 host cannot exec (no binfmt handler is registered, on purpose: they
# are machine-wide); these run natively, on x86-64 and on a real aarch64 machine
native_only = pytest.mark.skipif(
    EMULATED, reason="starts a child Python (sys.executable): under qemu-user emulation "
    "(tools/aarch64.sh) that arm64 binary cannot be exec'd by the x86-64 host without a "
    "binfmt handler; runs in every native run")

import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

NEWEST_OPSET = onnx.defs.onnx_opset_version()


def ir_version_for(opset):
    """The lowest IR version that carries `opset` (what an exporter of the time wrote)."""
    for ir, ops in ((3, 8), (4, 9), (5, 10), (6, 11), (7, 14), (8, 18), (9, 20)):
        if opset <= ops:
            return ir
    return 10


def value_info(spec):
    """('x', [1, 3, 'h', None]) or a ValueInfoProto -> ValueInfoProto (float32)."""
    if isinstance(spec, onnx.ValueInfoProto):
        return spec
    name, shape = spec[0], spec[1]
    elem = spec[2] if len(spec) > 2 else TensorProto.FLOAT
    return helper.make_tensor_value_info(name, elem, shape)


def make_model(nodes, inputs, outputs, initializers=None, opset=17, ir_version=None,
               check=True, extra_inputs=()):
    """A ModelProto. inputs/outputs: (name, shape) pairs or ValueInfoProtos;
    initializers: {name: ndarray} or a list of TensorProto."""
    inits = []
    if isinstance(initializers, dict):
        for name, arr in initializers.items():
            inits.append(numpy_helper.from_array(np.asarray(arr), name))
    elif initializers:
        inits = list(initializers)
    ir_version = ir_version or ir_version_for(opset)
    graph_inputs = [value_info(i) for i in inputs] + list(extra_inputs)
    if ir_version < 4:  # IR 3: every initializer is also a graph input
        listed = {v.name for v in graph_inputs}
        graph_inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims))
                         for t in inits if t.name not in listed]
    graph = helper.make_graph(list(nodes), "test", graph_inputs,
                              [value_info(o) for o in outputs], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=ir_version, producer_name="pyconv1x1-tests")
    if check:
        onnx.checker.check_model(model)
    return model


def conv_node(x, w, b, y, name=None, **attrs):
    ins = [x, w] + ([b] if b else [])
    return helper.make_node("Conv", ins, [y], name=name or f"conv_{y}", **attrs)


def conv1x1_ref(x, w, b=None, strides=(1, 1), pads=(0, 0, 0, 0), group=1):
    """float64 1x1 conv over NCHW. w: [cout, cin/group] (or [cout, cin/g, 1, 1]);
    pads: (top, left, bottom, right)."""
    x = np.asarray(x, np.float64)
    w = np.asarray(w, np.float64).reshape(w.shape[0], -1)
    n, c, h, wd = x.shape
    pt, pl, pb, pr = pads
    xp = np.zeros((n, c, h + pt + pb, wd + pl + pr))
    xp[:, :, pt:pt + h, pl:pl + wd] = x
    sh, sw = strides
    xs = xp[:, :, ::sh, ::sw]
    cout = w.shape[0]
    cg, og = c // group, cout // group
    out = np.empty((n, cout) + xs.shape[2:])
    for g in range(group):
        out[:, g * og:(g + 1) * og] = np.einsum(
            "oc,nchw->nohw", w[g * og:(g + 1) * og], xs[:, g * cg:(g + 1) * cg])
    if b is not None:
        out += np.asarray(b, np.float64)[None, :, None, None]
    return out


def act_ref(v, lo=-np.inf, hi=np.inf, alpha=1.0):
    """The kernels' min/max epilogue in float64: leaky slope, then clamp (the epilogue
    table's reference, pyconv1x1/program/epilogue.py)."""
    from pyconv1x1.program.epilogue import Activation
    return Activation("clip", lo, hi, alpha).ref(v)


def rnd(rng, *shape, scale=1.0):
    """A seeded float32 array of standard normal values (times scale)."""
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def rel_err(got, ref):
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    if ref.size == 0:
        return 0.0
    scale = max(np.abs(ref).max(), 1e-30)
    return float(np.abs(got - ref).max() / scale)


def assert_close(got, ref, rtol=1e-5):
    got = np.asarray(got)
    ref = np.asarray(ref)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    err = rel_err(got, ref)
    assert err <= rtol, f"relative error {err:.3g} > {rtol:g}"


def run_reference(model, feeds):
    from onnx.reference import ReferenceEvaluator
    return ReferenceEvaluator(model).run(None, feeds)


def run_ort(model, feeds):
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts,
                                providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)


# cwd of test subprocesses and cluster workers: never the repository root, whose source
# tree (without compiled kernels in a fresh clone) would shadow the installed package
NEUTRAL_CWD = tempfile.gettempdir()


def load_tool(name):
    """tools/<name>.py as a module (the tools are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"pyconv1x1_{name}",
                                                  os.path.join(REPO, "tools", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bundled_models():
    return sorted(f for f in os.listdir(MODELS) if f.endswith(".onnx"))


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
