"""Issue 5: compiled plans, pickling, caller-provided outputs, light imports."""
import concurrent.futures
import glob
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import pyconv1x1
from pyconv1x1 import planfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = sorted(glob.glob(os.path.join(ROOT, "models", "*.onnx")))
DYNAMO = os.path.join(ROOT, "models", "embed_64to32_relu_dynamo.onnx")
# subprocesses import the same pyconv1x1 as this test run (installed or in-place build)
ENV = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pyconv1x1.__file__)))


def _feeds(path):
    return dict(np.load(path[:-5] + ".inputs.npz"))


def _residual_model():
    from onnx import helper, numpy_helper
    rng = np.random.default_rng(3)
    inits = []
    for i, (co, ci) in enumerate([(12, 7), (7, 12)]):
        inits.append(numpy_helper.from_array(rng.standard_normal((co, ci, 1, 1)).astype(
            np.float32), f"w{i}"))
        inits.append(numpy_helper.from_array(rng.standard_normal(co).astype(np.float32),
                                             f"b{i}"))
    inits.append(numpy_helper.from_array(np.array([0.5, 2, 1, 1, 1, 1, 3], np.float32)
                                         .reshape(1, 7, 1, 1), "scale"))
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="c0"),
        helper.make_node("Clip", ["c0"], ["r0"], name="relu6", min=0.0, max=6.0),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="c1"),
        helper.make_node("Add", ["c1", "x"], ["s"], name="add"),
        helper.make_node("Mul", ["s", "scale"], ["y"], name="mul"),
        helper.make_node("LeakyRelu", ["x"], ["z"], name="leaky", alpha=0.2),
    ]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", 1, ["N", 7, "H", "W"])],
        [helper.make_tensor_value_info("y", 1, None),
         helper.make_tensor_value_info("z", 1, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])


@pytest.mark.parametrize("path", MODELS, ids=os.path.basename)
def test_plan_file_round_trip(path, tmp_path):
    out = tmp_path / "m.pc1"
    size = planfile.compile_model(path, out)
    assert size == out.stat().st_size > 0
    feeds = _feeds(path)
    want = pyconv1x1.InferenceSession(path).run(None, feeds)
    sess = pyconv1x1.InferenceSession(str(out))
    got = sess.run(None, feeds)
    assert all(np.array_equal(a, b) for a, b in zip(want, got))
    assert [(i.name, i.shape, i.type) for i in sess.get_inputs()] == \
        [(i.name, i.shape, i.type) for i in pyconv1x1.InferenceSession(path).get_inputs()]


_LIVE_PLAN = """
import os, sys
import numpy as np
import pyconv1x1
path, how = sys.argv[1], sys.argv[2]
x = np.random.default_rng(0).standard_normal((2, 7, 5, 9), dtype=np.float32)
sess = pyconv1x1.InferenceSession(path)
want = sess.run(None, {"x": x})
size = os.path.getsize(path)
with open(path, "r+b") as f:
    if how == "truncate":
        f.truncate(0)
    elif how == "shrink":
        f.truncate(size // 2)
    else:  # rewrite in place: same size, every byte after the prefix changed
        f.seek(64)
        f.write(bytes(np.random.default_rng(1).integers(0, 256, size - 64, np.uint8)))
for _ in range(3):
    got = sess.run(None, {"x": x})
    assert all(np.array_equal(a, b) for a, b in zip(got, want)), "results changed"
x2 = np.ascontiguousarray(x[:1, :, :3])  # a new shape: a new plan from what it holds
got = sess.run(None, {"x": x2})
assert all(np.array_equal(a, b[:1, :, :3]) for a, b in zip(got, want))
print("ok")
"""


@pytest.mark.parametrize("how", ["rewrite", "truncate", "shrink"])
def test_plan_file_changed_under_a_live_session(tmp_path, how):
    """The session owns what it validated: a file rewritten or truncated in place after
    loading changes nothing (a shared mapping gave SIGSEGV, SIGBUS or other results)."""
    out = tmp_path / "m.pc1"
    planfile.compile_model(_residual_model().SerializeToString(), out)
    proc = subprocess.run([sys.executable, "-c", _LIVE_PLAN, str(out), how],
                          capture_output=True, text=True, env=ENV, timeout=120,
                          cwd=tmp_path)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", \
        (proc.returncode, proc.stderr[-2000:])


def test_plan_buffer_changed_after_loading():
    """Plan bytes given in a bytearray are copied: the caller may reuse the buffer."""
    data = bytearray(planfile.dumps(pyconv1x1.InferenceSession(DYNAMO).program, 8))
    sess = pyconv1x1.InferenceSession(data)
    x = np.random.default_rng(0).standard_normal((3, 64, 32, 32), dtype=np.float32)
    want = sess.run(None, {"input": x})[0]
    data[64:] = bytes(len(data) - 64)
    assert np.array_equal(sess.run(None, {"input": x})[0], want)


def _forge(meta):
    """A plan with this header (any JSON text or object) and a valid checksum."""
    import json
    import zlib
    header = meta if isinstance(meta, bytes) else json.dumps(meta).encode()
    blob = _forge.blob
    boff = planfile.PREFIX.size + len(header)
    boff += (-boff) % planfile.ALIGN
    digest = zlib.crc32(blob, zlib.crc32(header))
    return (planfile.PREFIX.pack(planfile.MAGIC, planfile.FORMAT_VERSION, len(header), boff,
                                 len(blob), digest)
            + header + bytes(boff - planfile.PREFIX.size - len(header)) + blob)


def _dynamo_plan():
    import json
    data = planfile.dumps(pyconv1x1.InferenceSession(DYNAMO).program, 8)
    _, _, hlen, boff, _, _ = planfile.PREFIX.unpack(data[:planfile.PREFIX.size])
    _forge.blob = data[boff:]
    return json.loads(data[64:64 + hlen])


@pytest.mark.parametrize("header", [
    b"[" * 100000 + b"]" * 100000,
    b'{"format": "pyconv1x1-plan", "arrays": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b"[]", b"null", b"7", b'"x"', b"{", b"\xff\xfe", b"{}",
])
def test_malformed_plan_header_is_model_error(header):
    _dynamo_plan()
    with pytest.raises(pyconv1x1.ModelError):
        pyconv1x1.InferenceSession(_forge(header))


@pytest.mark.parametrize("literal", [b"Infinity", b"-Infinity", b"NaN", b"1e400", b"1.5",
                                     b"true", b"99999999999999999999999"])
def test_plan_opset_not_an_int_is_model_error(literal):
    import json
    meta = _dynamo_plan()
    header = json.dumps(dict(meta, opset=0)).encode().replace(b'"opset": 0', b'"opset": '
                                                              + literal)
    with pytest.raises(pyconv1x1.ModelError, match="opset|JSON"):
        pyconv1x1.InferenceSession(_forge(header))


def _paths(node, path=()):
    yield path
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, path + (key,))
    elif isinstance(node, list):
        for i, value in enumerate(node[:3]):
            yield from _paths(value, path + (i,))


_BAD_VALUES = [None, True, -1, 2 ** 63, 2 ** 31 + 1, 1.5, 1e300, "x", "", [], [[[1]]], {},
               {"a": 1}, [-1, 2 ** 40]]


def test_every_header_field_of_any_bad_type_is_model_error():
    """Each field of a real plan's header, replaced by values of every wrong kind: the
    plan loads or raises ModelError; no other exception (KeyError, OverflowError...)."""
    import copy
    import json
    meta = _dynamo_plan()
    tried = 0
    for path in _paths(meta):
        if not path:
            continue
        for value in _BAD_VALUES:
            bad = copy.deepcopy(meta)
            node = bad
            for key in path[:-1]:
                node = node[key]
            node[path[-1]] = value
            try:
                pyconv1x1.InferenceSession(_forge(json.dumps(bad).encode()))
            except pyconv1x1.ModelError as exc:
                assert str(exc)
            tried += 1
    assert tried > 300


def test_plan_of_fused_dag_matches(tmp_path):
    model = _residual_model()
    out = tmp_path / "r.pc1"
    planfile.compile_model(model.SerializeToString(), out)
    x = np.random.default_rng(0).standard_normal((2, 7, 5, 3)).astype(np.float32)
    want = pyconv1x1.InferenceSession(model).run(None, {"x": x})
    got = pyconv1x1.InferenceSession(out.read_bytes()).run(None, {"x": x})
    assert all(np.array_equal(a, b) for a, b in zip(want, got))


def test_plan_loads_without_onnx(tmp_path):
    out = tmp_path / "m.pc1"
    planfile.compile_model(DYNAMO, out)
    x = _feeds(DYNAMO)["input"]
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, builtins\n"
        "real = builtins.__import__\n"
        "def guard(name, *a, **k):\n"
        "    if name == 'onnx' or name.startswith(('onnx.', 'google.protobuf')):\n"
        "        raise ImportError('onnx is not installed here')\n"
        "    return real(name, *a, **k)\n"
        "builtins.__import__ = guard\n"
        "import numpy as np, pyconv1x1\n"
        f"s = pyconv1x1.InferenceSession({str(out)!r})\n"
        f"y = s.run(None, {{'input': np.load({str(tmp_path / 'x.npy')!r})}})[0]\n"
        f"np.save({str(tmp_path / 'y.npy')!r}, y)\n"
        "assert 'onnx' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, env=ENV)
    want = pyconv1x1.InferenceSession(DYNAMO).run(None, {"input": x})[0]
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)


@pytest.mark.parametrize("damage", ["truncate", "flip_blob", "flip_header", "version",
                                    "magic", "empty", "extend"])
def test_corrupt_plan_is_model_error(tmp_path, damage):
    out = tmp_path / "m.pc1"
    planfile.compile_model(DYNAMO, out)
    data = bytearray(out.read_bytes())
    if damage == "truncate":
        data = data[:len(data) - 100]
    elif damage == "flip_blob":
        data[-10] ^= 0xFF
    elif damage == "flip_header":
        data[70] ^= 0x01
    elif damage == "version":
        data[8] = 99
    elif damage == "magic":
        data[0:8] = b"PC1PLAN\x01"
    elif damage == "empty":
        data = data[:8]
    elif damage == "extend":
        data += b"\x00" * 64
    bad = tmp_path / "bad.pc1"
    bad.write_bytes(bytes(data))
    with pytest.raises(pyconv1x1.Error) as info:
        pyconv1x1.InferenceSession(str(bad))
    assert isinstance(info.value, pyconv1x1.ModelError) or damage == "magic"
    if damage == "version":
        assert "version 99" in str(info.value)


def test_crafted_plan_with_valid_checksum_is_checked(tmp_path):
    """An attacker can recompute the checksum: the structure is checked anyway."""
    import json
    import zlib
    out = tmp_path / "m.pc1"
    planfile.compile_model(DYNAMO, out)
    data = out.read_bytes()
    magic, version, hlen, boff, blen, _ = planfile.PREFIX.unpack(data[:planfile.PREFIX.size])
    meta = json.loads(data[64:64 + hlen])
    blocks = meta["steps"][0]["layers"][0]["blocks"]
    blob = bytearray(data[boff:])
    entry = meta["arrays"][blocks]
    table = np.frombuffer(blob, np.int64, entry["nbytes"] // 8, entry["offset"]).copy()
    table[3] = 10 ** 9  # an offset far past the packed weights
    blob[entry["offset"]:entry["offset"] + entry["nbytes"]] = table.tobytes()
    header = data[64:64 + hlen]
    digest = zlib.crc32(header + bytes(blob))
    forged = planfile.PREFIX.pack(magic, version, hlen, boff, blen, digest) + \
        data[64:boff] + bytes(blob)
    with pytest.raises(pyconv1x1.ModelError, match="blocks"):
        pyconv1x1.InferenceSession(forged)


@pytest.mark.parametrize("threads", [1, 2])
def test_pickle_round_trip(threads):
    model = _residual_model()
    sess = pyconv1x1.InferenceSession(model, threads=threads)
    x = np.random.default_rng(1).standard_normal((1, 7, 6, 6)).astype(np.float32)
    clone = pickle.loads(pickle.dumps(sess))
    assert clone.threads == sess.threads
    for a, b in zip(sess.run(None, {"x": x}), clone.run(None, {"x": x})):
        assert np.array_equal(a, b)


def _run_in_worker(sess, x):
    return sess.run(None, {"input": x})[0]


def test_session_in_process_pool():
    sess = pyconv1x1.InferenceSession(DYNAMO, threads=1)
    x = _feeds(DYNAMO)["input"]
    want = sess.run(None, {"input": x})[0]
    ctx = __import__("multiprocessing").get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=2, mp_context=ctx) as pool:
        results = list(pool.map(_run_in_worker, [sess, sess], [x, x[::-1].copy()]))
    assert np.array_equal(results[0], want)
    assert np.array_equal(results[1], want[::-1])


def test_run_into_writes_caller_arrays():
    model = _residual_model()
    sess = pyconv1x1.InferenceSession(model)
    x = np.random.default_rng(2).standard_normal((2, 7, 4, 5)).astype(np.float32)
    want_y, want_z = sess.run(None, {"x": x})
    y = np.full(want_y.shape, np.nan, np.float32)
    z = np.full(want_z.shape, np.nan, np.float32)
    out = sess.run_into({"x": x}, {"y": y, "z": z})
    assert out["y"] is y and out["z"] is z
    assert np.array_equal(y, want_y) and np.array_equal(z, want_z)
    only = np.empty_like(want_y)
    sess.run_into({"x": x}, {"y": only})
    assert np.array_equal(only, want_y)


@pytest.mark.parametrize("bad", ["shape", "dtype", "fortran", "readonly", "name", "alias",
                                 "empty"])
def test_run_into_rejects_bad_buffers(bad):
    sess = pyconv1x1.InferenceSession(DYNAMO)
    x = _feeds(DYNAMO)["input"]
    y = np.empty((3, 32, 32, 32), np.float32)
    outputs = {"output": y}
    if bad == "shape":
        outputs = {"output": np.empty((3, 32, 32, 31), np.float32)}
    elif bad == "dtype":
        outputs = {"output": y.astype(np.float64)}
    elif bad == "fortran":
        outputs = {"output": np.asfortranarray(y)}
    elif bad == "readonly":
        y.flags.writeable = False
    elif bad == "name":
        outputs = {"nope": y}
    elif bad == "alias":
        big = np.zeros(x.size + y.size, np.float32)
        x = big[:x.size].reshape(x.shape)
        outputs = {"output": big[:y.size].reshape(y.shape)}
    elif bad == "empty":
        outputs = {}
    with pytest.raises(pyconv1x1.InputError):
        sess.run_into({"input": x}, outputs)


def test_import_does_not_load_onnx_or_numpy_heavy_parts(tmp_path):
    code = ("import sys, pyconv1x1\n"
            "bad = [m for m in ('onnx', 'google.protobuf', 'onnxruntime', 'torch') "
            "if m in sys.modules]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, cwd=tmp_path)


def test_loading_onnx_file_does_not_import_onnx(tmp_path):
    code = ("import sys, pyconv1x1\n"
            f"s = pyconv1x1.InferenceSession({DYNAMO!r})\n"
            "assert 'onnx' not in sys.modules and 'google.protobuf' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=ENV, cwd=tmp_path)
