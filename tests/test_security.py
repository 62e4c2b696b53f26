"""A model file is untrusted input. Malformed, truncated or hostile files end in
ModelError (never protobuf's DecodeError, OSError or KeyError); external data must stay
inside the model's folder; sizes are checked before anything is allocated; model and
data files are never modified."""
import hashlib
import os
import shutil
import subprocess
import sys
import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import MODELS, conv_node, make_model
import pyconv1x1
from pyconv1x1 import Error, InferenceSession, ModelError

F = np.float32
DYNAMO = "expand_16to128_dynamo"        # weight and bias both in <stem>.onnx.data
DYNAMO_MIXED = "reduce_64to16_dynamo"   # weight external, bias inline


def load_ok(model, **kw):
    """Load and (when it loads) run: either way only pyconv1x1 errors may escape."""
    try:
        s = InferenceSession(model, **kw)
    except Error:
        return None
    feed = {}
    for i in s.get_inputs():
        shape = [d if isinstance(d, int) else 1 for d in (i.shape or [1, 1, 1, 1])]
        if np.prod(shape) > 10_000_000:
            return s
        feed[i.name] = np.ones(shape, F)
    try:
        s.run(None, feed)
    except Error:
        pass
    return s


def expect_model_error(model, *patterns, **kw):
    with pytest.raises(ModelError) as info:
        InferenceSession(model, **kw)
    msg = str(info.value)
    for p in patterns:
        assert p in msg, f"{p!r} not in {msg!r}"
    return msg


def copy_model(tmp_path, stem=DYNAMO, folder="model"):
    dst = tmp_path / folder
    dst.mkdir(parents=True, exist_ok=True)
    for suffix in (".onnx", ".onnx.data", ".inputs.npz", ".outputs.npz"):
        src = os.path.join(MODELS, stem + suffix)
        if os.path.exists(src):
            shutil.copy(src, dst / (stem + suffix))
    return dst / (stem + ".onnx")


def edit(path, fn):
    """Rewrite the model at path after fn(proto) (external data left as references)."""
    proto = onnx.load(str(path), load_external_data=False)
    fn(proto)
    with open(path, "wb") as f:
        f.write(proto.SerializeToString())
    return path


def external(proto):
    return [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]


def set_ext(t, **kv):
    info = {e.key: e.value for e in t.external_data}
    for k, v in kv.items():
        if v is None:
            info.pop(k, None)
        else:
            info[k] = str(v)
    del t.external_data[:]
    for k, v in info.items():
        e = t.external_data.add()
        e.key, e.value = k, v


def small_model_bytes():
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((3, 2, 1, 1)).astype(F), "B": np.ones(3, F)}
    nodes = [conv_node("x", "W", "B", "c"), helper.make_node("Relu", ["c"], ["y"])]
    return make_model(nodes, [("x", [1, 2, 2, 2])], [("y", [1, 3, 2, 2])],
                      inits).SerializeToString()


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ----------------------------------------------------------------------------------
# unreadable input
# ----------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_random_bytes(seed):
    rng = np.random.default_rng(seed)
    data = rng.integers(0, 256, int(rng.integers(1, 4096)), dtype=np.uint8).tobytes()
    with pytest.raises(ModelError):
        InferenceSession(data)


def test_protobuf_lookalikes():
    for data in (b"\x08", b"\x0a\xff\xff\xff\xff\x0f", b"\x12\x00", b"\x3a\x00",
                 b"\x08\x07\x3a\x02\x0a\x00", b"\xff" * 64, b"hello onnx", b"\x00" * 100):
        with pytest.raises(ModelError):
            InferenceSession(data)


def test_empty_bytes_and_file(tmp_path):
    expect_model_error(b"", "empty")
    expect_model_error(bytearray(), "empty")
    empty = tmp_path / "empty.onnx"
    empty.write_bytes(b"")
    expect_model_error(str(empty), "empty")


def test_directory_and_missing_path(tmp_path):
    expect_model_error(str(tmp_path), "not a regular file")
    expect_model_error(str(tmp_path / "nope.onnx"), "nope.onnx")
    expect_model_error(tmp_path / "nope.onnx")
    expect_model_error("bad\x00name.onnx")


def test_not_a_model_object():
    for obj in (123, None, [b"\x08\x07"], {"graph": 1}, 1.5):
        with pytest.raises(ModelError):
            InferenceSession(obj)


def test_every_prefix_of_a_small_model():
    data = small_model_bytes()
    assert len(data) < 1000
    loaded = 0
    for n in range(len(data)):
        s = load_ok(data[:n])
        loaded += s is not None
    assert loaded < len(data) // 4     # nearly every prefix is refused
    assert load_ok(data) is not None


def test_prefixes_of_a_bundled_model():
    with open(os.path.join(MODELS, "embed_64to32_relu_torchscript.onnx"), "rb") as f:
        data = f.read()
    for n in list(range(0, 200)) + list(range(200, len(data), 37)):
        load_ok(data[:n])


def test_truncated_file(tmp_path):
    with open(os.path.join(MODELS, "reduce_64to16_torchscript.onnx"), "rb") as f:
        data = f.read()
    p = tmp_path / "t.onnx"
    p.write_bytes(data[: len(data) // 2])
    expect_model_error(str(p))


# ----------------------------------------------------------------------------------
# external data: where it may come from
# ----------------------------------------------------------------------------------
def test_copied_dynamo_model_runs(tmp_path):
    path = copy_model(tmp_path)
    s = InferenceSession(str(path))
    x = dict(np.load(str(path)[:-5] + ".inputs.npz"))
    want = dict(np.load(str(path)[:-5] + ".outputs.npz"))
    np.testing.assert_allclose(s.run(None, x)[0], want["output"], rtol=1e-5, atol=1e-5)


def test_absolute_location(tmp_path):
    path = copy_model(tmp_path)
    data = str(path) + ".data"
    assert os.path.isabs(data) and os.path.exists(data)
    edit(path, lambda p: [set_ext(t, location=data) for t in external(p)])
    expect_model_error(str(path), "absolute")


@pytest.mark.parametrize("location", ["../outside.data", "sub/../../outside.data",
                                      "..\\outside.data", "./../outside.data"])
def test_dotdot_escape(tmp_path, location):
    path = copy_model(tmp_path)
    shutil.copy(str(path) + ".data", tmp_path / "outside.data")
    (path.parent / "sub").mkdir()
    edit(path, lambda p: [set_ext(t, location=location) for t in external(p)])
    msg = expect_model_error(str(path))
    assert "'..'" in msg or "outside" in msg or "cannot open" in msg


def test_symlink_leading_outside(tmp_path):
    path = copy_model(tmp_path)
    outside = tmp_path / "secret.data"
    shutil.copy(str(path) + ".data", outside)
    os.symlink(outside, path.parent / "link.data")
    edit(path, lambda p: [set_ext(t, location="link.data") for t in external(p)])
    expect_model_error(str(path), "symbolic link")


def test_symlinked_folder_leading_outside(tmp_path):
    path = copy_model(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(str(path) + ".data", tmp_path / "elsewhere" / "w.data")
    os.symlink(tmp_path / "elsewhere", path.parent / "dir")
    edit(path, lambda p: [set_ext(t, location="dir/w.data") for t in external(p)])
    expect_model_error(str(path), "symbolic link")


def test_symlink_inside_the_folder(tmp_path):
    """A link to a file in the same folder: refused like every link (a link can be
    retargeted between check and use), or loaded with the right values."""
    path = copy_model(tmp_path)
    data = str(path) + ".data"
    os.symlink(os.path.basename(data), path.parent / "alias.data")
    edit(path, lambda p: [set_ext(t, location="alias.data") for t in external(p)])
    try:
        s = InferenceSession(str(path))
    except ModelError as exc:
        assert "symbolic link" in str(exc)
        return
    x = dict(np.load(str(path)[:-5] + ".inputs.npz"))
    want = dict(np.load(str(path)[:-5] + ".outputs.npz"))
    np.testing.assert_allclose(s.run(None, x)[0], want["output"], rtol=1e-5, atol=1e-5)


def test_model_file_itself_a_symlink_is_fine_for_its_own_folder(tmp_path):
    path = copy_model(tmp_path)
    os.symlink(path, tmp_path / "link.onnx")
    # the external data is looked up beside the link, where it is not
    expect_model_error(str(tmp_path / "link.onnx"), "external data")


def test_hardlink(tmp_path):
    path = copy_model(tmp_path)
    outside = tmp_path / "secret.data"
    shutil.copy(str(path) + ".data", outside)
    os.link(outside, path.parent / "hard.data")
    edit(path, lambda p: [set_ext(t, location="hard.data") for t in external(p)])
    expect_model_error(str(path), "hard link")


@pytest.mark.parametrize("fields,needle", [
    ({"offset": 8192 + 512}, "past its end"),
    ({"offset": 10 ** 12}, "past its end"),
    ({"offset": 2 ** 63 + 5}, ""),
    ({"length": 100}, "length 100"),
    ({"length": 10 ** 15}, "length"),
    ({"offset": -4}, "negative"),
    ({"length": -8192}, "negative"),
    ({"offset": "abc"}, "not integers"),
    ({"offset": "1.5"}, "not integers"),
    ({"length": "0x10"}, "not integers"),
    ({"offset": ""}, ""),
    ({"location": None}, "without a location"),
    ({"location": ""}, "location"),
    ({"location": "missing.data"}, "cannot open"),
    ({"location": "a\x00b"}, "NUL"),
    ({"location": "."}, ""),
    ({"location": "sub"}, ""),
])
def test_bad_external_fields(tmp_path, fields, needle):
    path = copy_model(tmp_path)
    (path.parent / "sub").mkdir()

    def fn(p):
        for t in external(p):
            set_ext(t, **fields)
    edit(path, fn)
    expect_model_error(str(path), needle)


def test_offset_past_end_by_one(tmp_path):
    path = copy_model(tmp_path)

    def fn(p):
        bias = [t for t in external(p) if t.name == "bias"][0]
        set_ext(bias, offset=8192 + 1)
    edit(path, fn)
    expect_model_error(str(path), "past its end")


def test_data_file_shorter_than_declared(tmp_path):
    path = copy_model(tmp_path)
    data = str(path) + ".data"
    with open(data, "r+b") as f:
        f.truncate(8000)
    expect_model_error(str(path), "past its end")


def test_external_flag_with_inline_data(tmp_path):
    path = copy_model(tmp_path, DYNAMO_MIXED)

    def fn(p):
        bias = [t for t in p.graph.initializer if t.name == "bias"][0]
        bias.data_location = TensorProto.EXTERNAL
    edit(path, fn)
    expect_model_error(str(path), "location")


def load_in_subprocess(path, tmp_path, timeout=20):
    """Load `path` in a fresh interpreter: a hang fails the test instead of the suite.
    Returns the ModelError message."""
    code = ("import pyconv1x1\n"
            "try:\n"
            f"    pyconv1x1.InferenceSession({str(path)!r})\n"
            "except pyconv1x1.ModelError as e:\n"
            "    print('refused:', e)\n")
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pyconv1x1.__file__)))
    try:
        r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"loading {path} hangs")
    assert r.returncode == 0, r.stderr
    assert "refused:" in r.stdout, r.stdout
    return r.stdout


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_as_data_file_does_not_hang(tmp_path):
    """Opening a FIFO for reading blocks until a writer comes."""
    path = copy_model(tmp_path)
    os.remove(str(path) + ".data")
    os.mkfifo(str(path) + ".data")
    assert "not a regular file" in load_in_subprocess(path, tmp_path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_fifo_as_model_does_not_hang(tmp_path):
    os.mkfifo(tmp_path / "m.onnx")
    assert "not a regular file" in load_in_subprocess(tmp_path / "m.onnx", tmp_path)


def test_device_as_model():
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    expect_model_error("/dev/zero", "not a regular file")


def test_loading_from_a_path_allocates_little():
    path = os.path.join(MODELS, "embed_64to32_relu_torchscript.onnx")
    tracemalloc.start()
    try:
        InferenceSession(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2 ** 20, peak


@pytest.mark.parametrize("form", ["bytes", "proto"])
def test_bytes_and_proto_need_base_dir(tmp_path, form):
    path = copy_model(tmp_path)
    if form == "bytes":
        model = path.read_bytes()
    else:
        model = onnx.load(str(path), load_external_data=False)
    expect_model_error(model, "base_dir")
    s = InferenceSession(model, base_dir=str(path.parent))
    x = dict(np.load(str(path)[:-5] + ".inputs.npz"))
    want = dict(np.load(str(path)[:-5] + ".outputs.npz"))
    np.testing.assert_allclose(s.run(None, x)[0], want["output"], rtol=1e-5, atol=1e-5)
    # a wrong base_dir: a folder without the data, or no folder at all
    (tmp_path / "empty").mkdir()
    expect_model_error(model, "cannot open", base_dir=str(tmp_path / "empty"))
    expect_model_error(model, "base_dir", base_dir=str(tmp_path / "nope"))
    expect_model_error(model, base_dir=str(path))


def test_base_dir_does_not_allow_escape(tmp_path):
    path = copy_model(tmp_path)
    shutil.copy(str(path) + ".data", tmp_path / "outside.data")
    edit(path, lambda p: [set_ext(t, location="../outside.data") for t in external(p)])
    expect_model_error(path.read_bytes(), base_dir=str(path.parent))


# ----------------------------------------------------------------------------------
# sizes
# ----------------------------------------------------------------------------------
def with_initializer(tensor, shape_in=(1, 2, 2, 2)):
    """A Relu model whose graph also holds `tensor` as an (unused) initializer."""
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape_in)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape_in)],
                              initializer=[tensor])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def raw_tensor(name, dims, raw, data_type=TensorProto.FLOAT):
    t = TensorProto()
    t.name = name
    t.data_type = data_type
    t.dims.extend(dims)
    t.raw_data = raw
    return t


def test_raw_data_size_mismatch():
    expect_model_error(with_initializer(raw_tensor("t", [4], b"\x00" * 15)), "raw_data",
                       "15", "16")
    expect_model_error(with_initializer(raw_tensor("t", [4], b"\x00" * 17)), "17")
    expect_model_error(with_initializer(raw_tensor("t", [2, 3], b"\x00" * 4,
                                                   TensorProto.INT64)), "48")


def test_typed_field_count_mismatch():
    t = helper.make_tensor("t", TensorProto.FLOAT, [2, 2], [1.0, 2.0, 3.0, 4.0])
    del t.float_data[-1]
    expect_model_error(with_initializer(t), "3 values", "4")


def test_negative_dims():
    expect_model_error(with_initializer(raw_tensor("t", [-1, 4], b"")), "negative")
    expect_model_error(with_initializer(raw_tensor("t", [4, -2], b"\x00" * 8)), "negative")


def test_negative_dim_in_graph_input():
    model = with_initializer(raw_tensor("t", [1], b"\x00" * 4))
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = -3
    expect_model_error(model, "negative")


@pytest.mark.parametrize("dims", [[2 ** 40, 2 ** 40], [2 ** 31, 2 ** 31, 2 ** 31],
                                  [2 ** 62, 4], [2 ** 33], [1, 2 ** 63 - 1]])
def test_huge_dims_refused_before_allocating(dims):
    tracemalloc.start()
    try:
        expect_model_error(with_initializer(raw_tensor("t", dims, b"\x00" * 16)), "limit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2 ** 20


def test_huge_external_length_refused_before_reading(tmp_path):
    path = copy_model(tmp_path)

    def fn(p):
        for t in external(p):
            del t.dims[:]
            t.dims.extend([2 ** 20, 2 ** 20])
            set_ext(t, length=4 * 2 ** 40)
    edit(path, fn)
    tracemalloc.start()
    try:
        expect_model_error(str(path), "limit")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2 ** 20


def test_too_many_dims():
    expect_model_error(with_initializer(raw_tensor("t", [1] * 12, b"\x00" * 4)), "dims")


def test_zero_size_tensor_is_fine():
    assert load_ok(with_initializer(raw_tensor("t", [0, 4], b""))) is not None


def test_unsupported_tensor_types_are_errors():
    for dt in (TensorProto.STRING, TensorProto.COMPLEX64, TensorProto.BFLOAT16, 0, 999):
        t = raw_tensor("t", [1], b"\x00" * 4, dt)
        with pytest.raises(Error):
            InferenceSession(with_initializer(t))


def test_huge_dims_in_graph_input_do_not_allocate():
    rng = np.random.default_rng(0)
    inits = {"W": rng.standard_normal((3, 2, 1, 1)).astype(F)}
    model = make_model([conv_node("x", "W", None, "y")], [("x", [2 ** 40, 2, 2 ** 40, 1])],
                       [("y", [2 ** 40, 3, 2 ** 40, 1])], inits)
    s = InferenceSession(model)
    with pytest.raises(Error):
        s.run(None, {"x": np.ones((1, 2, 1, 1), F)})


# ----------------------------------------------------------------------------------
# nothing is modified
# ----------------------------------------------------------------------------------
def test_files_unchanged_after_loading(tmp_path):
    for stem in (DYNAMO, DYNAMO_MIXED, "embed_64to32_relu_torchscript"):
        path = copy_model(tmp_path, stem, folder=stem)
        files = [str(path)] + ([str(path) + ".data"] if os.path.exists(str(path) + ".data")
                               else [])
        before = {f: (sha(f), os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files}
        listing = sorted(os.listdir(path.parent))
        s = InferenceSession(str(path))
        x = dict(np.load(str(path)[:-5] + ".inputs.npz"))
        s.run(None, x)
        InferenceSession(path.read_bytes(), base_dir=str(path.parent))
        del s
        after = {f: (sha(f), os.stat(f).st_mtime_ns, os.stat(f).st_size) for f in files}
        assert before == after
        assert sorted(os.listdir(path.parent)) == listing


def test_bundled_models_unchanged():
    files = sorted(os.path.join(MODELS, f) for f in os.listdir(MODELS)
                   if f.endswith((".onnx", ".data")))
    before = [sha(f) for f in files]
    for f in files:
        if f.endswith(".onnx"):
            InferenceSession(f)
    assert [sha(f) for f in files] == before


def test_proto_not_modified():
    path = os.path.join(MODELS, DYNAMO + ".onnx")
    proto = onnx.load(path, load_external_data=False)
    before = proto.SerializeToString()
    InferenceSession(proto, base_dir=MODELS)
    assert proto.SerializeToString() == before


# ----------------------------------------------------------------------------------
# numbers stored in typed fields: every conversion exact or a ModelError
# ----------------------------------------------------------------------------------
def typed_tensor(name, data_type, dims, field, values):
    t = TensorProto(name=name, data_type=data_type, dims=dims)
    getattr(t, field).extend(values)
    return t


@pytest.mark.parametrize("data_type,field,value", [
    (TensorProto.INT8, "int32_data", 300), (TensorProto.INT8, "int32_data", -129),
    (TensorProto.UINT8, "int32_data", 256), (TensorProto.UINT8, "int32_data", -1),
    (TensorProto.INT16, "int32_data", 40000), (TensorProto.UINT16, "int32_data", 70000),
    (TensorProto.FLOAT16, "int32_data", 70000), (TensorProto.FLOAT16, "int32_data", -1),
    (TensorProto.BOOL, "int32_data", 2),
    (TensorProto.UINT32, "uint64_data", 2 ** 40), (TensorProto.UINT32, "uint64_data", 2 ** 63),
])
def test_typed_value_out_of_range_is_model_error(data_type, field, value):
    t = typed_tensor("odd", data_type, [2], field, [0, value])
    expect_model_error(with_initializer(t), "'odd'", str(value), "must be in")


def test_typed_values_convert_exactly():
    from onnx import numpy_helper
    from pyconv1x1 import onnx_reader
    cases = {
        "u64": (TensorProto.UINT64, "uint64_data", [0, 2 ** 63, 2 ** 64 - 1]),
        "i64": (TensorProto.INT64, "int64_data", [-2 ** 63, -1, 2 ** 63 - 1]),
        "u32": (TensorProto.UINT32, "uint64_data", [0, 2 ** 32 - 1, 7]),
        "i32": (TensorProto.INT32, "int32_data", [-2 ** 31, -1, 2 ** 31 - 1]),
        "i8": (TensorProto.INT8, "int32_data", [-128, -1, 127]),
        "u8": (TensorProto.UINT8, "int32_data", [0, 1, 255]),
        "i16": (TensorProto.INT16, "int32_data", [-32768, 5, 32767]),
        "u16": (TensorProto.UINT16, "int32_data", [0, 65535, 9]),
        "b": (TensorProto.BOOL, "int32_data", [0, 1, 1]),
        "f16": (TensorProto.FLOAT16, "int32_data",
                np.array([1.5, -2, 65504], np.float16).view(np.uint16).tolist()),
        "f32": (TensorProto.FLOAT, "float_data", [1.5, -0.0, 3.4e38]),
        "f64": (TensorProto.DOUBLE, "double_data", [1e300, -2.5, 0.1]),
    }
    model = with_initializer(raw_tensor("unused", [1], b"\x00" * 4))
    for name, (dt, field, values) in cases.items():
        model.graph.initializer.append(typed_tensor(name, dt, [3], field, values))
    graph = onnx_reader.load(model.SerializeToString())
    for t in model.graph.initializer:
        want = numpy_helper.to_array(t)
        got = graph.constants[t.name]
        assert got.dtype == want.dtype and np.array_equal(got, want), t.name


@pytest.mark.parametrize("dims", [[0, 2 ** 62], [0, 2 ** 40, 2 ** 40], [2 ** 63 - 1, 0]])
def test_empty_tensor_of_absurd_extent_is_model_error(dims):
    expect_model_error(with_initializer(raw_tensor("wide", dims, b"")), "'wide'", "limit")


def test_packed_field_larger_than_its_shape_is_refused_before_decoding():
    t = TensorProto(name="t", data_type=TensorProto.INT64, dims=[1])
    t.int64_data.extend(range(2 ** 20, 2 ** 20 + 4_000_000))  # 3-byte varints
    data = with_initializer(t).SerializeToString()
    tracemalloc.start()
    try:
        with pytest.raises(ModelError, match="4000000 values"):
            InferenceSession(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2 ** 20  # the decoded field would be 32 MB


@pytest.mark.parametrize("payload,needle", [
    (b"\xff" * 11 + b"\x01", "longer than 10 bytes"),
    (b"\x05" * 11 + b"\x85", "truncated varint"),
])
def test_malformed_packed_varints(payload, needle):
    t = typed_tensor("t", TensorProto.INT64, [12], "int64_data", [5] * 12)
    data = with_initializer(t).SerializeToString()
    good = b"\x08\x0c" + b"\x10\x07" + b"\x3a\x0c" + b"\x05" * 12  # dims, type, int64_data
    assert data.count(good) == 1
    bad = data.replace(good, b"\x08\x01\x10\x07\x3a\x0c" + payload)
    expect_model_error(bad, needle)


def test_packed_floats_load_without_inflating():
    """12 MB of packed float_data: decoded straight into numpy, not into a list of
    Python floats (which took 26x the weights' size)."""
    from pyconv1x1 import onnx_reader
    w = np.random.default_rng(0).standard_normal(3_000_000).astype(F)
    t = helper.make_tensor("w", TensorProto.FLOAT, [w.size], w)
    data = with_initializer(t).SerializeToString()
    tracemalloc.start()
    try:
        graph = onnx_reader.load(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert np.array_equal(graph.constants["w"], w)
    assert peak < 1.5 * w.nbytes  # a view of the model's bytes, or one aligned copy


# ----------------------------------------------------------------------------------
# long chains: loading is linear in the number of nodes
# ----------------------------------------------------------------------------------
def chain_model(kind, n):
    """n nodes in a chain: 'Identity', 'Relu', 'ConvRelu' (alternating) or 'OneConv'
    (one conv, then n - 1 Relus)."""
    nodes, prev = [], "x"
    for i in range(n):
        out = "y" if i == n - 1 else f"t{i}"
        conv = kind == "ConvRelu" and i % 2 == 0 or kind == "OneConv" and i == 0
        op = "Conv" if conv else "Relu" if kind != "Identity" else "Identity"
        nodes.append(helper.make_node(op, [prev, "w"] if conv else [prev], [out], name=f"n{i}"))
        prev = out
    w = np.eye(4, dtype=F).reshape(4, 4, 1, 1)
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 4, 2, 2])],
                              [helper.make_tensor_value_info("y", 1, None)],
                              [onnx.numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _calls_while(fn, *args):
    """(result, number of Python and C function calls fn makes): a measure of work
    that does not depend on the machine's speed."""
    count = [0]

    def profile(frame, event, arg):
        if event in ("call", "c_call"):
            count[0] += 1
    sys.setprofile(profile)
    try:
        result = fn(*args)
    finally:
        sys.setprofile(None)
    return result, count[0]


@pytest.mark.parametrize("kind", ["Identity", "Relu", "ConvRelu", "OneConv"])
def test_loading_long_chains_is_linear(kind):
    """16,000 chained Identity nodes took 17.7 s to load (each dropped copy rescanned
    every step), 16,000 Relus 1.3 GB (each fusion grew a name that a note quoted), and
    the fusion pass restarted its scan after each merge. Work per node must not grow
    with the chain: calls per node at n and 4n are about the same."""
    from pyconv1x1 import check, onnx_reader, rewrite
    per_node = []
    for n in (500, 2000):
        graph = onnx_reader.load(chain_model(kind, n))
        (steps, _), lower_calls = _calls_while(check.lower, graph)
        program, rewrite_calls = _calls_while(rewrite.build_program, graph, steps)
        per_node.append((lower_calls + rewrite_calls) / n)
        assert sum(map(len, program.notes)) < 100 * n
        assert all(len(getattr(s, "name", "")) < 300 for s in program.steps
                   if not hasattr(s, "layers"))
    assert per_node[1] < 1.5 * per_node[0], per_node
    x = np.arange(16, dtype=F).reshape(1, 4, 2, 2) - 8
    want = x if kind == "Identity" else np.maximum(x, 0)
    assert np.array_equal(InferenceSession(chain_model(kind, 2000)).run(None, {"x": x})[0],
                          want)


@pytest.mark.parametrize("count", [1, 100])  # a short packed run, and a long one
def test_ten_byte_varints_keep_their_low_64_bits(count):
    """A 10th varint byte may carry bits beyond 64: protobuf drops them. They reached
    numpy's int64 conversion as 2**70 - 1 (OverflowError)."""
    from pyconv1x1 import onnx_reader
    t = typed_tensor("t", TensorProto.INT64, [count], "int64_data", [-1] * count)
    data = with_initializer(t).SerializeToString()
    minus_one = b"\xff" * 9 + b"\x01"
    assert data.count(minus_one * count) == 1
    data = data.replace(minus_one * count, (b"\xff" * 9 + b"\x7f") * count)
    assert np.array_equal(onnx_reader.load(data).constants["t"], np.full(count, -1))
