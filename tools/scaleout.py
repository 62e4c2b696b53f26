#!/usr/bin/env python
"""Scale-out throughput and the cost of shipping a session (issue 14).

Usage::

    python tools/scaleout.py [--inputs 512] [--batch 16] [--repeat 3] [--markdown]
                             [--skip-dask] [--skip-ray]

Needs the extras: ``pip install ".[dask,ray]"``.

One model and one data set for every engine: a ~10 MB chain of 1x1 convs (512 -> 1024
-> 1024 -> 1024, ReLU after each) over --inputs images of 512 x 14 x 14 float32 (about
1 GFLOP each). Every engine pools each output to a 1024-vector where it ran it (what a
scoring job keeps), so the figures are the model's, not the client's copying.

Throughput (inputs/s), for
* 1 process: a loop of session.run over batches of --batch images, 1 then 2 threads;
* Dask: pyconv1x1.dask.predict on LocalClusters of 1 and 2 process workers with 1
  thread each (both kept up), reading the images from a .npy stack on disk (chunks of
  --batch); timed after a warm-up compute, so each worker has loaded the model;
* Ray: pyconv1x1.ray.Predictor in Dataset.map_batches over 1 and 2 actors of 1 CPU
  (ray.init(num_cpus=2)), the images put in the object store with from_numpy. Its
  inputs/s are over the window from the first batch's start to the last batch's end,
  as seen in the actors; "end-to-end" adds starting the actors and loading the model.
CPU time per input sums user + system time of every process that ran the model (the
loop's process, the Dask workers, the Ray actors; not Dask's scheduler nor Ray's driver
and daemons); equal figures for 1 and 2 workers mean no oversubscription (2 workers x 1
thread on 2 cores). The machine is shared and noisy, so each engine runs --repeat
rounds, each timing 1 and 2 workers back to back (alternating which goes first), and
measures how many cores other processes kept busy meanwhile (/proc/stat minus this
tool's process tree): the table gives the best run's inputs/s, the 2 / 1 ratio of the
round with the least such load (the median over rounds beside it), and the median CPU
time.

Shipping a session, on the same model with 1-image tasks:
* pickling costs per task: a session made from a path (pickled as its path and digest,
  restored from the worker's cache) vs one made from bytes (pickled as its compiled
  plan), and Dask's tokenize of a session;
* on a 1-worker Dask cluster, the wall time per 1-image task when the session is an
  argument of every task vs scattered once (client.scatter), as % of a task's compute
  (sess.run of one image on 1 thread): medians over 4 x --repeat paired rounds (the
  difference is the median of the rounds' differences; Dask's own per-task overhead,
  ~1-3 ms here, is in both).
"""
from __future__ import annotations

import argparse
import logging
import os
import pickle
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
if REPO not in sys.path:
    sys.path.insert(0, REPO)

import pyconv1x1  # noqa: E402
from pyconv1x1 import InferenceSession  # noqa: E402

CHANNELS = (512, 1024, 1024, 1024)
HW = (14, 14)
PKG_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))


def build_model(path):
    """The ~10 MB model: 1x1 convs CHANNELS[i] -> CHANNELS[i + 1], ReLU after each."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(14)
    nodes, inits, prev = [], [], "x"
    for i, (cin, cout) in enumerate(zip(CHANNELS, CHANNELS[1:])):
        w = (rng.standard_normal((cout, cin, 1, 1)) / np.sqrt(cin)).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.1).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes += [helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"]),
                  helper.make_node("Relu", [f"c{i}"], [f"r{i}"])]
        prev = f"r{i}"
    nodes[-1] = helper.make_node("Relu", [f"c{len(CHANNELS) - 2}"], ["y"])
    graph = helper.make_graph(
        nodes, "scaleout",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CHANNELS[0], "H", "W"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CHANNELS[-1], "H", "W"])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                              ir_version=8)
    onnx.save(model, path)
    return os.path.getsize(path)


def _pool(block):
    return block.mean(axis=(2, 3))


def _cpu_seconds():
    t = os.times()
    return t.user + t.system


# --------------------------------------------------------------------------------------
# throughput
# --------------------------------------------------------------------------------------
class Local:
    """A loop of session.run in this process, at 1 or 2 threads."""
    engine = "1 process"

    def __init__(self, path, x, batch):
        self.x, self.batch = x, batch
        self.sessions = {t: InferenceSession(path, threads=t) for t in (1, 2)}
        for sess in self.sessions.values():
            sess.run(None, {"x": x[:batch]})

    def label(self, k):
        return f"1 x {k} thread{'s' * (k > 1)}"

    def measure(self, threads):
        sess, x, batch = self.sessions[threads], self.x, self.batch
        c0, t0 = _cpu_seconds(), time.perf_counter()
        out = [_pool(sess.run(None, {"x": x[i:i + batch]})[0])
               for i in range(0, len(x), batch)]
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - c0
        return {"wall": wall, "cpu": cpu, "e2e": wall, "out": np.concatenate(out)}

    def close(self):
        pass


class Dask:
    """pyconv1x1.dask.predict on two LocalClusters kept up side by side (1 and 2
    process workers of 1 thread), so that rounds can alternate between them."""
    engine = "Dask"

    def __init__(self, path, stack):
        import dask.array as da
        from distributed import Client, LocalCluster
        from pyconv1x1.dask import predict
        self.clients, self.clusters = {}, []
        for workers in (1, 2):
            cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                   dashboard_address=None, silence_logs=logging.ERROR)
            self.clusters.append(cluster)
            self.clients[workers] = Client(cluster, set_as_default=False)
        x = da.from_npy_stack(stack)
        self.emb = predict(InferenceSession(path), x).map_blocks(
            _pool, drop_axis=[2, 3], dtype=np.float32)
        for client in self.clients.values():
            client.compute(self.emb, sync=True)  # warm-up: every worker loads the model

    def label(self, k):
        return f"{k} worker{'s' * (k > 1)} x 1 thread"

    def measure(self, workers):
        client = self.clients[workers]
        c0 = sum(client.run(_cpu_seconds).values())
        t0 = time.perf_counter()
        out = client.compute(self.emb, sync=True)
        wall = time.perf_counter() - t0
        cpu = sum(client.run(_cpu_seconds).values()) - c0
        return {"wall": wall, "cpu": cpu, "e2e": wall, "out": out}

    def close(self):
        for client in self.clients.values():
            client.close()
        for cluster in self.clusters:
            cluster.close()


class Ray:
    """pyconv1x1.ray.Predictor in Dataset.map_batches over 1 or 2 actors of 1 CPU."""
    engine = "Ray"

    def __init__(self, path, x, batch):
        import ray
        import ray.data
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR,
                 object_store_memory=max(256 << 20, 3 * x.nbytes),
                 runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}})
        ray.data.DataContext.get_current().enable_progress_bars = False
        self.ray, self.path, self.batch = ray, path, batch
        self.ds = ray.data.from_numpy([x[i:i + batch] for i in range(0, len(x), batch)])

    def label(self, k):
        return f"{k} actor{'s' * (k > 1)} x 1 CPU"

    def measure(self, actors):
        from pyconv1x1.ray import Predictor

        class Pooled(Predictor):
            """Pools the output in the actor; reports its process, CPU time, clock."""

            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)
                self.cpu0 = _cpu_seconds()

            def __call__(self, batch_):
                start = time.time()
                y = _pool(super().__call__(batch_)["y"])
                n_ = len(y)
                return {"emb": y, "pid": np.full(n_, os.getpid()),
                        "cpu": np.full(n_, _cpu_seconds() - self.cpu0),
                        "t0": np.full(n_, start), "t1": np.full(n_, time.time()),
                        "threads": np.full(n_, self.session.threads)}

        t0 = time.perf_counter()
        rows = self.ds.map_batches(
            Pooled, fn_constructor_args=(self.path,), batch_format="numpy",
            batch_size=self.batch, compute=self.ray.data.ActorPoolStrategy(size=actors),
            num_cpus=1).take_all()
        e2e = time.perf_counter() - t0
        cpu = {}
        for r in rows:
            cpu[r["pid"]] = max(cpu.get(r["pid"], 0.0), float(r["cpu"]))
        wall = max(float(r["t1"]) for r in rows) - min(float(r["t0"]) for r in rows)
        threads = sorted({int(r["threads"]) for r in rows})
        assert threads == [1], f"actors of 1 CPU ran {threads} threads"
        batches = {(r["pid"], float(r["t0"])): float(r["t1"]) - float(r["t0"]) for r in rows}
        return {"wall": wall, "cpu": sum(cpu.values()), "e2e": e2e, "out": None,
                "busy": sum(batches.values()) / (wall * actors)}

    def close(self):
        self.ray.shutdown()


def _machine_busy_seconds():
    """CPU seconds the whole machine has spent busy (incl. steal), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            user, nice, system, _, _, irq, softirq, steal = map(int, f.readline().split()[1:9])
    except (OSError, ValueError):
        return None
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def _our_seconds():
    """CPU seconds of this process and all its descendants (workers, actors, daemons),
    those already reaped included (a parent's children_user/children_system)."""
    import psutil
    me = psutil.Process()
    total = 0.0
    for proc in [me] + me.children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.Error:
            pass
    return total


def measured(runner, k):
    """runner.measure(k), plus the cores that other processes kept busy meanwhile."""
    busy0, ours0, t0 = _machine_busy_seconds(), _our_seconds(), time.perf_counter()
    result = runner.measure(k)
    busy1, ours1, wall = _machine_busy_seconds(), _our_seconds(), time.perf_counter() - t0
    result["others"] = (None if busy0 is None
                        else max(0.0, (busy1 - busy0) - (ours1 - ours0)) / wall)
    return result


def rounds(runner, n, count, reference):
    """`count` rounds of (1, 2) or (2, 1) alternately. For the table: the best run of
    each, and the 2 / 1 throughput ratio of the round in which other processes took the
    least CPU (the median over rounds beside it)."""
    runs, ratios, noise = {1: [], 2: []}, [], []
    for i in range(count):
        got = {}
        for k in ((1, 2) if i % 2 == 0 else (2, 1)):
            got[k] = measured(runner, k)
            if reference is not None and got[k]["out"] is not None:
                assert np.array_equal(got[k]["out"], reference), f"{runner.engine} differs"
            runs[k].append(got[k])
        ratios.append(got[1]["wall"] / got[2]["wall"])
        noise.append(max(got[k]["others"] or 0.0 for k in (1, 2)))
        print(f"  {runner.engine} round {i + 1}: " + ", ".join(
            f"{runner.label(k)} {n / got[k]['wall']:.1f}/s" for k in (1, 2)) +
            f", ratio {ratios[-1]:.2f}; other processes used up to {noise[-1]:.2f} cores",
            flush=True)
    quiet = min(range(count), key=noise.__getitem__)
    result = []
    for k in (1, 2):
        best = min(runs[k], key=lambda r: r["wall"])
        best["cpu_median"] = statistics.median(r["cpu"] for r in runs[k])
        best["ratio"] = (ratios[quiet], statistics.median(ratios), noise[quiet]) \
            if k == 2 else None
        result.append((runner.engine, runner.label(k), best))
    return result


# --------------------------------------------------------------------------------------
# shipping
# --------------------------------------------------------------------------------------
def _median_time(fn, reps):
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _run_one(sess, x):
    return _pool(sess.run(None, {"x": x})[0])


def shipping(path, x, tasks, repeat):
    import dask.base
    from distributed import Client, LocalCluster, wait
    sess = InferenceSession(path, threads=1)
    one = x[:1]
    sess.run(None, {"x": one})
    compute = _median_time(lambda: sess.run(None, {"x": one}), 20)
    rows = {"compute_ms": compute * 1e3}
    path_pickle = pickle.dumps(sess)
    pickle.loads(path_pickle)  # (the first restore loads the model; later ones are cached)
    rows["path_bytes"] = len(path_pickle)
    rows["path_dumps_us"] = _median_time(lambda: pickle.dumps(sess), 200) * 1e6
    rows["path_loads_us"] = _median_time(lambda: pickle.loads(path_pickle), 200) * 1e6
    with open(path, "rb") as f:
        plan_sess = InferenceSession(f.read(), threads=1)
    plan_pickle = pickle.dumps(plan_sess)
    rows["plan_bytes"] = len(plan_pickle)
    rows["plan_dumps_us"] = _median_time(lambda: pickle.dumps(plan_sess), 7) * 1e6
    rows["plan_loads_us"] = _median_time(lambda: pickle.loads(plan_pickle), 7) * 1e6
    rows["tokenize_us"] = _median_time(lambda: dask.base.tokenize(sess), 200) * 1e6
    # end to end: 1 worker, 1 thread; 1-image tasks, the session an argument of each
    # task or scattered once
    walls = {"per task (path)": [], "per task (plan)": [], "scattered": []}
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                      dashboard_address=None, silence_logs=logging.ERROR) as cluster, \
            Client(cluster) as client:
        images = client.scatter([x[i:i + 1] for i in range(tasks)])
        t0 = time.perf_counter()
        future = client.scatter(sess, broadcast=True)
        wait(future)
        rows["scatter_ms"] = (time.perf_counter() - t0) * 1e3
        def timed(model, some):
            t0 = time.perf_counter()
            client.gather([client.submit(_run_one, model, img, pure=False) for img in some])
            return (time.perf_counter() - t0) / len(some)

        diffs = []
        for i in range(4 * repeat):  # paired rounds, alternating which mode goes first
            order = (("scattered", future), ("per task (path)", sess))
            got = {mode: timed(model, images) for mode, model in order[::1 - 2 * (i % 2)]}
            for mode, wall in got.items():
                walls[mode].append(wall)
            diffs.append(got["per task (path)"] - got["scattered"])
            if i < repeat:  # the plan costs ~2 tasks per task: a few are enough
                walls["per task (plan)"].append(timed(plan_sess, images[:max(1, tasks // 4)]))
        rows["path_minus_scattered_ms"] = statistics.median(diffs) * 1e3
    rows["task_wall_ms"] = {mode: statistics.median(w) * 1e3 for mode, w in walls.items()}
    return rows


# --------------------------------------------------------------------------------------
def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--inputs", type=int, default=512)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3,
                    help="rounds per engine (each runs 1 and 2 workers), and shipping runs")
    ap.add_argument("--tasks", type=int, default=40, help="1-image tasks per shipping mode")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--skip-dask", action="store_true")
    ap.add_argument("--skip-ray", action="store_true")
    args = ap.parse_args(argv)
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (PKG_ROOT, os.environ.get("PYTHONPATH", "")) if p)

    tmp = tempfile.mkdtemp(prefix="pyconv1x1-scaleout-")
    try:
        _main(args, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # the .npy stack: --inputs x 400 KB


def _main(args, tmp):
    path = os.path.join(tmp, "model.onnx")
    size = build_model(path)
    n, batch = args.inputs, args.batch
    x = np.random.default_rng(0).standard_normal((n, CHANNELS[0]) + HW, dtype=np.float32)
    gflop = 2 * sum(a * b for a, b in zip(CHANNELS, CHANNELS[1:])) * HW[0] * HW[1] / 1e9
    print(f"model {size / 1e6:.1f} MB ({' -> '.join(map(str, CHANNELS))}), {n} inputs "
          f"of {CHANNELS[0]}x{HW[0]}x{HW[1]} ({gflop:.2f} GFLOP each), batches of {batch}, "
          f"kernel variant {InferenceSession(path).kernel_variant}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} before", flush=True)

    rows = []
    local = Local(path, x, batch)
    rows += rounds(local, n, args.repeat, None)
    base = rows[0][2]
    reference = base["out"]
    if not args.skip_dask:
        stack = os.path.join(tmp, "x.npy-stack")
        import dask.array as da
        da.to_npy_stack(stack, da.from_array(x, chunks=(batch,) + x.shape[1:]))
        runner = Dask(path, stack)
        try:
            rows += rounds(runner, n, args.repeat, reference)
        finally:
            runner.close()
    if not args.skip_ray:
        runner = Ray(path, x, batch)
        try:
            rows += rounds(runner, n, args.repeat, None)
        finally:
            runner.close()

    print(f"\nload average {os.getloadavg()[0]:.2f} after the throughput runs; \"others' "
          f"cores\": CPU that processes outside this tool took during the quietest round "
          f"(they lower the 2 / 1 ratios)")
    header = ["engine", "workers", "inputs/s (best)", "vs 1 process",
              "2 / 1 quietest round (median)", "others' cores then", "CPU ms / input",
              "end-to-end s"]
    table = []
    for engine, workers, r in rows:
        rate = n / r["wall"]
        ratio = r["ratio"]
        table.append([engine, workers, f"{rate:.1f}", f"{rate * base['wall'] / n:.2f}",
                      f"{ratio[0]:.2f} ({ratio[1]:.2f})" if ratio else "",
                      f"{ratio[2]:.2f}" if ratio else "",
                      f"{r['cpu_median'] / n * 1e3:.1f}", f"{r['e2e']:.2f}"])
    _print_table(header, table, args.markdown)

    if not args.skip_dask:
        s = shipping(path, x, args.tasks, args.repeat)
        c = s["compute_ms"]
        print(f"\nShipping the session ({size / 1e6:.1f} MB model) with 1-image tasks; "
              f"a task's compute (sess.run of 1 image, 1 thread): {c:.2f} ms")
        walls = s["task_wall_ms"]
        ref = walls["scattered"]
        ship_rows = [
            ["session from a path, per task", f"{s['path_bytes']}",
             f"{s['path_dumps_us'] + s['path_loads_us']:.0f} us",
             f"{(s['path_dumps_us'] + s['path_loads_us']) / 1e3 / c * 100:.2f}%",
             f"{walls['per task (path)']:.2f}",
             f"{s['path_minus_scattered_ms'] / c * 100:+.1f}%"],
            ["session from bytes (plan), per task", f"{s['plan_bytes']}",
             f"{(s['plan_dumps_us'] + s['plan_loads_us']) / 1e3:.1f} ms",
             f"{(s['plan_dumps_us'] + s['plan_loads_us']) / 1e3 / c * 100:.0f}%",
             f"{walls['per task (plan)']:.2f}",
             f"{(walls['per task (plan)'] - ref) / c * 100:+.0f}%"],
            ["scattered once", "0", "0",
             f"0 (scatter: {s['scatter_ms']:.0f} ms once)", f"{ref:.2f}", "(reference)"],
        ]
        _print_table(["how the session travels", "bytes per task",
                      "pickle + unpickle", "% of a task", "Dask ms / task (wall, median)",
                      "vs scattered, % of a task (median of paired rounds)"], ship_rows,
                     args.markdown)
        print(f"Either way a worker loads the model once: the first unpickle of a path "
              f"session, or the scatter, {s['scatter_ms']:.0f} ms here (parse, fold, pack).")
        print(f"Dask tokenize(session): {s['tokenize_us']:.1f} us (no weights read)")


def _print_table(header, rows, markdown):
    if markdown:
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        for row in rows:
            print("| " + " | ".join(row) + " |")
        return
    widths = [max(len(str(r[i])) for r in [header] + rows) for i in range(len(header))]
    for row in [header] + rows:
        print("  ".join(str(v).rjust(w) if i else str(v).ljust(w)
                        for i, (v, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
    main()
