"""Issue 14: sessions that ship cheaply (pickled as path + digest, tokenized without
weights, threads settable), pyconv1x1.dask and pyconv1x1.ray. Tests marked `cluster`
start a real dask.distributed LocalCluster (2 process workers, 1 thread each) or a local
Ray instance on 2 CPUs; deselect them with `-m "not cluster"`."""
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import helper

from conftest import NEUTRAL_CWD, conv_node, make_model, rnd
import pyconv1x1
from pyconv1x1 import InferenceSession, ModelError, session as session_mod

# subprocesses and cluster workers import the same pyconv1x1 as this test run
PKG_ROOT = os.path.dirname(os.path.dirname(pyconv1x1.__file__))
ENV = dict(os.environ, PYTHONPATH=PKG_ROOT)
N_INPUTS = 300


def _model(seed=0, cin=8, hidden=16, cout=4):
    """x[N, cin, H, W] -> conv -> relu -> conv -> y ; the relu output r is an output too."""
    rng = np.random.default_rng(seed)
    inits = {"W1": rnd(rng, hidden, cin, 1, 1), "B1": rnd(rng, hidden),
             "W2": rnd(rng, cout, hidden, 1, 1)}
    nodes = [conv_node("x", "W1", "B1", "c"), helper.make_node("Relu", ["c"], ["r"]),
             conv_node("r", "W2", None, "y")]
    return make_model(nodes, [("x", ["N", cin, "H", "W"])],
                      [("y", ["N", cout, "H", "W"]), ("r", ["N", hidden, "H", "W"])], inits)


@pytest.fixture
def model_path(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_model(seed=int.from_bytes(os.urandom(4), "little")), str(path))
    return str(path)


@pytest.fixture(scope="module")
def shared_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("scaleout") / "shared.onnx"
    onnx.save(_model(seed=14), str(path))
    return str(path)


@pytest.fixture(scope="module")
def inputs():
    return np.random.default_rng(14).standard_normal((N_INPUTS, 8, 5, 6), dtype=np.float32)


def _replace_file(path, model):
    """Write a different model at `path` as a new file (new inode, as editors and
    exporters do)."""
    tmp = path + ".new"
    onnx.save(model, tmp)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------
# pickling
# ----------------------------------------------------------------------------------
def test_path_session_pickles_as_path_and_round_trips_bitwise(model_path, inputs):
    sess = InferenceSession(model_path, threads=1)
    data = pickle.dumps(sess)
    plan = pickle.dumps(InferenceSession(open(model_path, "rb").read(), threads=1))
    weights = 4 * (16 * 8 + 16 + 4 * 16)
    assert len(data) < 600 and os.path.abspath(model_path).encode() in data
    assert len(plan) > weights > len(data) / 2
    clone = pickle.loads(data)
    assert clone is not sess and clone.threads == 1
    for a, b in zip(sess.run(None, {"x": inputs[:7]}), clone.run(None, {"x": inputs[:7]})):
        assert np.array_equal(a, b)


def test_relative_path_pickles_absolute(model_path, monkeypatch):
    monkeypatch.chdir(os.path.dirname(model_path))
    sess = InferenceSession(os.path.basename(model_path))
    monkeypatch.chdir("/")
    clone = pickle.loads(pickle.dumps(sess))
    assert clone.get_outputs()[0].name == "y"


def test_file_rewritten_after_load_pickles_as_plan(model_path, inputs):
    sess = InferenceSession(model_path)
    want = sess.run(None, {"x": inputs[:3]})
    _replace_file(model_path, _model(seed=99))
    data = pickle.dumps(sess)
    assert model_path.encode() not in data and len(data) > 4 * 16 * 8
    got = pickle.loads(data).run(None, {"x": inputs[:3]})
    for a, b in zip(want, got):
        assert np.array_equal(a, b)


def test_unpickle_of_a_changed_file_raises_model_error(model_path):
    data = pickle.dumps(InferenceSession(model_path))
    _replace_file(model_path, _model(seed=98))
    with pytest.raises(ModelError, match="different model"):
        pickle.loads(data)


def test_unpickle_of_a_missing_file_raises_model_error(model_path):
    data = pickle.dumps(InferenceSession(model_path))
    os.remove(model_path)
    with pytest.raises(ModelError, match="readable at that path on every worker"):
        pickle.loads(data)


def test_unpickling_twice_in_a_process_loads_once(model_path, monkeypatch):
    data = pickle.dumps(InferenceSession(model_path, threads=1))
    loads = []
    real = session_mod._load_program
    monkeypatch.setattr(session_mod, "_load_program",
                        lambda *a: loads.append(a) or real(*a))
    first, second = pickle.loads(data), pickle.loads(data)
    assert second is first and len(loads) == 1
    first.threads = 2  # retuned since: a later unpickle of threads=1 gets its own
    third = pickle.loads(data)
    assert third is not first and third.threads == 1 and len(loads) == 2


def test_model_digest_is_computed_once_and_names_the_model(model_path, monkeypatch):
    calls = []
    real = session_mod.program_digest
    monkeypatch.setattr(session_mod, "program_digest",
                        lambda p: calls.append(1) or real(p))
    sess = InferenceSession(model_path)
    assert not calls  # creating a session hashes nothing
    for _ in range(3):
        pickle.dumps(sess)
    assert len(calls) == 1
    other = InferenceSession(open(model_path, "rb").read())
    assert other._model_digest() == sess._model_digest()
    assert InferenceSession(_model(seed=5))._model_digest() != sess._model_digest()


def test_dask_token_touches_no_weights(model_path, monkeypatch):
    """The token is drawn once: it neither hashes the program nor pickles the session
    (Dask's fallback for unknown objects), and pickled copies keep it."""
    tokenize = pytest.importorskip("dask.base", reason="needs the [dask] extra: pip "
                                   "install \"pyconv1x1[dask]\"").tokenize
    sess = InferenceSession(model_path)
    clone = pickle.loads(pickle.dumps(sess))

    def forbidden(*args, **kwargs):
        raise AssertionError("tokenizing read the weights")
    monkeypatch.setattr(session_mod, "program_digest", forbidden)
    monkeypatch.setattr(session_mod.planfile, "dumps", forbidden)
    monkeypatch.setattr(InferenceSession, "__reduce__", forbidden)
    fresh = InferenceSession(model_path)
    assert tokenize(sess) == tokenize(sess) == tokenize(clone)
    assert tokenize(fresh) != tokenize(sess)
    assert sess.__dask_tokenize__() == clone.__dask_tokenize__()


def test_threads_setter(model_path, inputs, monkeypatch):
    sess = InferenceSession(model_path, threads=1)
    want = sess.run(None, {"x": inputs[:4]})
    sess.run(None, {"x": inputs[:4, :, :3]})
    assert len(sess._plans) == 2
    sess.threads = 3
    assert sess.threads == 3 and len(sess._plans) == 0 and sess._fast_chain is None
    for a, b in zip(want, sess.run(None, {"x": inputs[:4]})):
        assert np.array_equal(a, b)
    assert pickle.loads(pickle.dumps(sess)).threads == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    sess.threads = None
    assert sess.threads == 2
    for bad in (0, -1, 1.5, "2", True):
        with pytest.raises(pyconv1x1.Error, match="threads"):
            sess.threads = bad
    assert sess.threads == 2


def test_threads_none_travels_unresolved(model_path):
    """threads=None resolves on the receiver (its cores, its OMP_NUM_THREADS)."""
    data = pickle.dumps(InferenceSession(model_path))
    code = ("import pickle, sys; s = pickle.loads(sys.stdin.buffer.read()); "
            "print(s.threads)")
    out = subprocess.run([sys.executable, "-c", code], input=data, capture_output=True,
                         env=dict(ENV, OMP_NUM_THREADS="3"), check=True, cwd=NEUTRAL_CWD)
    assert out.stdout.decode().strip() == "3"


# ----------------------------------------------------------------------------------
# imports
# ----------------------------------------------------------------------------------
def test_package_import_loads_neither_dask_nor_ray(model_path):
    code = ("import pickle, sys, pyconv1x1\n"
            f"s = pyconv1x1.InferenceSession({model_path!r})\n"
            "pickle.loads(pickle.dumps(s))\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed', "
            "'ray', 'pyarrow', 'pandas')]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], env=ENV, check=True, cwd=NEUTRAL_CWD)


@pytest.mark.parametrize("module,extra", [("dask", "dask"), ("ray", "ray")])
def test_missing_extra_names_it(module, extra):
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "try:\n"
            f"    import pyconv1x1.{module}\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    out = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True,
                         check=True, cwd=NEUTRAL_CWD).stdout.decode()
    assert f'pip install "pyconv1x1[{extra}]"' in out


# ----------------------------------------------------------------------------------
# pyconv1x1.dask on the local scheduler
# ----------------------------------------------------------------------------------
def _dask():
    da = pytest.importorskip("dask.array", reason="needs the [dask] extra: "
                             "pip install \"pyconv1x1[dask]\"")
    return da, pytest.importorskip("pyconv1x1.dask")


def test_dask_predict_chunks_dtype_meta(shared_model, inputs):
    da, pdask = _dask()
    sess = InferenceSession(shared_model, threads=1)
    x = da.from_array(inputs[:50], chunks=(7, 4, 5, 3))  # odd chunks on every axis
    y = pdask.predict(sess, x, output="y")
    assert y.dtype == np.float32 and y.shape == (50, 4, 5, 6)
    assert y.chunks == ((7,) * 7 + (1,), (4,), (5,), (6,))
    assert isinstance(y._meta, np.ndarray) and y._meta.dtype == np.float32
    assert np.array_equal(y.compute(scheduler="threads"),
                          sess.run(["y"], {"x": inputs[:50]})[0])
    r, y2 = pdask.predict(shared_model, x, output=["r", "y"])
    want_y, want_r = sess.run(None, {"x": inputs[:50]})
    got_r, got_y = da.compute(r, y2, scheduler="sync")
    assert np.array_equal(got_y, want_y) and np.array_equal(got_r, want_r)
    assert r.chunks[0] == x.chunks[0] and r.shape == (50, 16, 5, 6)


def test_dask_predict_ships_the_model_as_one_key(shared_model, inputs):
    """One graph key holds the model (its path and digest, a few hundred bytes); tasks
    refer to it. Re-running the same graph names the same keys."""
    da, pdask = _dask()
    sess = InferenceSession(shared_model)
    x = da.from_array(inputs, chunks=(10, 8, 5, 6))
    y = pdask.predict(sess, x, output="y")
    graph = dict(y.__dask_graph__())
    models = [k for k in graph if str(k).startswith("pyconv1x1-model-")]
    assert len(models) == 1
    assert len(pickle.dumps(graph[models[0]])) < 1000
    assert pdask.predict(sess, x, output="y").name == y.name


def test_dask_predict_from_zarr_and_npy_stack(shared_model, inputs, tmp_path):
    da, pdask = _dask()
    want = InferenceSession(shared_model).run(["y"], {"x": inputs})[0]
    da.to_npy_stack(str(tmp_path / "npy"), da.from_array(inputs, chunks=(64, 8, 5, 6)))
    y = pdask.predict(shared_model, da.from_npy_stack(str(tmp_path / "npy")), output="y")
    assert np.array_equal(y.compute(), want)
    pytest.importorskip("zarr", reason="needs zarr")
    da.from_array(inputs, chunks=(32, 8, 5, 6)).to_zarr(str(tmp_path / "x.zarr"))
    y = pdask.predict(shared_model, da.from_zarr(str(tmp_path / "x.zarr")), output="y")
    assert np.array_equal(y.compute(), want)


def test_dask_predict_refuses_bad_inputs(shared_model, inputs):
    da, pdask = _dask()
    x = da.from_array(inputs, chunks=(50, 8, 5, 6))
    with pytest.raises(pyconv1x1.InputError, match=r"outputs \['y', 'r'\]"):
        pdask.predict(shared_model, x)
    with pytest.raises(pyconv1x1.InputError, match="unknown output name 'z'"):
        pdask.predict(shared_model, x, output="z")
    with pytest.raises(pyconv1x1.InputError, match="float64"):
        pdask.predict(shared_model, x.astype(np.float64), output="y")
    with pytest.raises(pyconv1x1.InputError, match="rank 3"):
        pdask.predict(shared_model, x[:, 0], output="y")
    with pytest.raises(pyconv1x1.InputError, match="dim 1 must be 8"):
        pdask.predict(shared_model, x[:, :5], output="y")
    with pytest.raises(pyconv1x1.Error, match="threads"):
        pdask.predict(shared_model, x, output="y", threads=0)


def test_dask_task_threads_outside_a_worker():
    _, pdask = _dask()
    assert pdask.task_threads() == 1
    assert pdask.task_threads(3) == 3


def test_ray_predictor_in_process(shared_model, inputs):
    """The predictor's batch handling, without a cluster (Ray Data calls it so)."""
    pytest.importorskip("ray", reason="needs the [ray] extra: pip install \"pyconv1x1[ray]\"")
    from pyconv1x1.ray import Predictor
    import ray
    sess = InferenceSession(shared_model, threads=1)
    pred = Predictor(shared_model, threads=1, outputs=["y"], keep=["id"])
    assert Predictor(shared_model).session.threads == pyconv1x1._threads.resolve_threads()
    assert not ray.is_initialized()  # outside Ray: no instance started to ask
    ids = np.arange(5)
    out = pred({"id": ids, "data": inputs[:5]})
    assert set(out) == {"y", "id"} and out["id"] is ids
    assert np.array_equal(out["y"], sess.run(["y"], {"x": inputs[:5]})[0])
    assert np.array_equal(Predictor(sess, columns={"x": "img"})({"img": inputs[:3]})["r"],
                          sess.run(["r"], {"x": inputs[:3]})[0])
    with pytest.raises(pyconv1x1.InputError, match="no column"):
        pred({"a": inputs[:2], "b": inputs[:2]})
    with pytest.raises(pyconv1x1.InputError, match="unknown output"):
        Predictor(sess, outputs="z")
    ragged = np.empty(2, object)
    ragged[0], ragged[1] = inputs[0], inputs[1, :, :2]
    with pytest.raises(pyconv1x1.InputError, match="float32 tensors"):
        pred({"id": ids[:2], "data": ragged})
    with pytest.raises(pyconv1x1.InputError, match="float64"):
        pred({"id": ids[:2], "data": inputs[:2].astype(np.float64)})


# ----------------------------------------------------------------------------------
# clusters
# ----------------------------------------------------------------------------------
def _worker_state():
    import pyconv1x1.dask as pdask
    return os.getpid(), pdask.task_threads(), sorted(k[2] for k in pdask._sessions)


def _task_threads_in_task(_):
    import pyconv1x1.dask as pdask
    return pdask.task_threads()


@pytest.fixture(scope="module")
def dask_client():
    pytest.importorskip("distributed", reason="needs the [dask] extra: "
                        "pip install \"pyconv1x1[dask]\"")
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        yield client


@pytest.mark.cluster
@pytest.mark.parametrize("form", ["path", "plan"])
def test_dask_cluster_matches_one_process_bitwise(dask_client, shared_model, inputs, form):
    """A model file's path (workers load it) or a session made from a ModelProto
    (shipped as a compiled plan), over 300 inputs in 30 chunks on 2 workers."""
    da, pdask = _dask()
    if form == "path":
        model, reference = shared_model, InferenceSession(shared_model, threads=1)
    else:
        model = reference = InferenceSession(_model(seed=15), threads=1)
    x = da.from_array(inputs, chunks=(10, 8, 5, 6))
    y = pdask.predict(model, x, output="y")
    r = pdask.predict(model, x, output=["r"])[0]  # a second graph: no second load
    got_y, got_r = dask_client.compute([y, r], sync=True)
    want_y, want_r = reference.run(None, {"x": inputs})
    assert np.array_equal(got_y, want_y) and np.array_equal(got_r, want_r)
    states = dask_client.run(_worker_state)
    assert len({pid for pid, _, _ in states.values()}) == 2
    loaded = [sessions for _, _, sessions in states.values()]
    # per worker process one session per model (1 after the path form, 2 after the
    # plan form), at one thread: 2 workers x 1 thread on 2 cores run 2 kernel threads
    most = 1 if form == "path" else 2
    assert any(loaded) and all(set(s) <= {1} and len(s) <= most for s in loaded), loaded
    tasks = dask_client.map(_task_threads_in_task, range(4))
    assert dask_client.gather(tasks) == [1] * 4


@pytest.mark.cluster
def test_dask_cluster_from_zarr(dask_client, shared_model, inputs, tmp_path):
    da, pdask = _dask()
    pytest.importorskip("zarr", reason="needs zarr")
    store = str(tmp_path / "x.zarr")
    da.from_array(inputs, chunks=(25, 8, 5, 6)).to_zarr(store)
    y = pdask.predict(shared_model, da.from_zarr(store), output="y")
    want = InferenceSession(shared_model).run(["y"], {"x": inputs})[0]
    assert np.array_equal(dask_client.compute(y, sync=True), want)


@pytest.fixture(scope="module")
def ray_data():
    ray = pytest.importorskip("ray", reason="needs the [ray] extra: "
                              "pip install \"pyconv1x1[ray]\"")
    data = pytest.importorskip("ray.data", reason="needs the [ray] extra: "
                               "pip install \"pyconv1x1[ray]\"")
    here = os.getcwd()
    os.chdir(NEUTRAL_CWD)  # Ray puts the driver's cwd first on its workers' sys.path
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 object_store_memory=128 << 20, logging_level=logging.ERROR,
                 runtime_env={"env_vars": {"PYTHONPATH": PKG_ROOT}})
    finally:
        os.chdir(here)
    ctx = data.DataContext.get_current()
    ctx.enable_progress_bars = False
    try:
        yield data
    finally:
        ray.shutdown()


def _with_ids(data, inputs, blocks):
    """Rows {"id", "data"} already in the object store: no read tasks, whose CPU the
    actors (2 x 1 CPU of 2) would otherwise starve."""
    return data.from_items([{"id": i, "data": x} for i, x in enumerate(inputs)],
                           override_num_blocks=blocks)


def _threads_probe():
    from pyconv1x1.ray import Predictor

    class Probe(Predictor):
        """Also reports the actor's process and thread count."""

        def __call__(self, batch):
            out = super().__call__(batch)
            out["pid"] = np.full(len(out["id"]), os.getpid())
            out["threads"] = np.full(len(out["id"]), self.session.threads)
            return out
    return Probe


@pytest.mark.cluster
def test_ray_two_actors_match_one_process_bitwise(ray_data, shared_model, inputs):
    ds = _with_ids(ray_data, inputs, blocks=6)
    out = ds.map_batches(_threads_probe(), fn_constructor_args=(shared_model,),
                         fn_constructor_kwargs={"keep": ("id",)}, batch_format="numpy",
                         batch_size=25, compute=ray_data.ActorPoolStrategy(size=2),
                         num_cpus=1).take_all()
    rows = sorted(out, key=lambda row: row["id"])
    assert [row["id"] for row in rows] == list(range(N_INPUTS))
    want_y, want_r = InferenceSession(shared_model, threads=1).run(None, {"x": inputs})
    assert np.array_equal(np.stack([row["y"] for row in rows]), want_y)
    assert np.array_equal(np.stack([row["r"] for row in rows]), want_r)
    assert {row["threads"] for row in rows} == {1}  # num_cpus=1 per actor
    assert len({row["pid"] for row in rows}) <= 2


@pytest.mark.cluster
def test_ray_actor_threads_follow_num_cpus(ray_data, shared_model, inputs):
    """A session passed in (pickled as its path) gets the actor's 2 CPUs as threads."""
    ds = _with_ids(ray_data, inputs[:40], blocks=2)
    sess = InferenceSession(shared_model, threads=1)
    out = ds.map_batches(_threads_probe(), fn_constructor_args=(sess,),
                         fn_constructor_kwargs={"keep": "id", "outputs": "y"},
                         batch_format="numpy", batch_size=20,
                         compute=ray_data.ActorPoolStrategy(size=1), num_cpus=2).take_all()
    rows = sorted(out, key=lambda row: row["id"])
    assert {row["threads"] for row in rows} == {2} and "r" not in rows[0]
    assert np.array_equal(np.stack([row["y"] for row in rows]),
                          sess.run(["y"], {"x": inputs[:40]})[0])
    assert sess.threads == 1  # the caller's session is untouched


def _half_model():
    """float16 input and output, float16 weights (a model.half() export)."""
    from onnx import TensorProto
    rng = np.random.default_rng(16)
    inits = {"W1": rnd(rng, 6, 8, 1, 1).astype(np.float16),
             "B1": rnd(rng, 6).astype(np.float16)}
    return make_model([conv_node("x", "W1", "B1", "y")], [("x", ["N", 8, 5, 6],
                                                           TensorProto.FLOAT16)],
                      [("y", None, TensorProto.FLOAT16)], inits, check=False)


def test_dask_and_ray_take_and_return_float16_where_the_model_does(inputs):
    da, pdask = _dask()
    from pyconv1x1.errors import InputError
    from pyconv1x1.ray import Predictor
    sess = InferenceSession(_half_model().SerializeToString(), threads=1)
    x16 = inputs[:20].astype(np.float16)
    want = sess.run(None, {"x": x16})[0]
    assert want.dtype == np.float16
    for output in ("y", ["y"]):
        y = pdask.predict(sess, da.from_array(x16, chunks=(7, 8, 5, 6)), output=output)
        y = y if output == "y" else y[0]
        assert y.dtype == np.float16 and y._meta.dtype == np.float16
        got = y.compute(scheduler="sync")
        assert got.dtype == np.float16 and np.array_equal(got, want)
    with pytest.raises(InputError, match=r"'x' has dtype float32; expected float16 "
                                         r"\(the model's tensor\(float16\)"):
        pdask.predict(sess, da.from_array(inputs[:20]), output="y")
    got = Predictor(sess, threads=1)({"x": x16})["y"]
    assert got.dtype == np.float16 and np.array_equal(got, want)
    with pytest.raises(InputError, match=r"'x' has dtype float32; expected float16"):
        Predictor(sess, threads=1)({"x": inputs[:20]})
