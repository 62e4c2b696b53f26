#!/usr/bin/env python
"""Soak pyconv1x1 the way a long-lived service does; not part of the unit suite.

Three phases, each reported in one table:

  runs        --runs calls of run() (and some run_into() and checked-path calls) on a
              small one-chain model, RSS sampled; growth reported after a warm-up. Every
              output is compared bitwise with the first.
  cycles      --cycles session create / run / destroy cycles from the .onnx and from a
              compiled .pc1 (path), with the cyclic garbage collector OFF: a session must
              be freed by reference counting alone, as a service that disables or rarely
              triggers gc relies on. Reports RSS growth per cycle and how many dropped
              sessions were still alive (weak references), then what gc.collect() frees.
  concurrent  --seconds of --threads Python threads running a one-chain model (run()'s
              frame-less fast path) and a two-output model (the checked path), on
              sessions shared by all threads and on private ones, with 1 and 2 kernel
              threads, cycling through more input shapes than the per-session plan cache
              holds (so plans are evicted while other threads run them), one thread
              staying on a large image. Every result is compared bitwise with a serial
              single-thread run of the same input.

Exit status 1 on any mismatch or unexpected exception (or RSS growth beyond
--max-growth-mib, when given); 0 otherwise. Defaults finish in about a minute on 2 cores;
the full size used for issue 9:

    python tools/soak.py --runs 1000000 --cycles 1000 --seconds 300 --threads 6

--sanitize-dir DIR reruns it on the ASan + UBSan build that `tools/fuzz.py --sanitize
--sanitize-dir DIR` made (runtimes preloaded, PYTHONMALLOC=malloc): a use-after-free
then stops the run with ASan's report instead of giving a wrong result now and then.
"""
import argparse
import gc
import importlib
import os
import random
import sys
import tempfile
import threading
import time
import weakref

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
try:       # an installed or PYTHONPATH build first (e.g. a sanitizer build), else the tree
    import pyconv1x1
except ImportError:
    sys.path.insert(0, REPO)
    import pyconv1x1

# plans cached per session: the shapes cycled in `concurrent` exceed it
PLAN_CACHE = getattr(importlib.import_module("pyconv1x1.session"), "PLAN_CACHE_SIZE", 32)


# --------------------------------------------------------------------------------------
# models
# --------------------------------------------------------------------------------------
def _model(nodes, inits, inputs, outputs):
    from onnx import TensorProto, helper, numpy_helper
    f = TensorProto.FLOAT
    graph = helper.make_graph(
        nodes, "soak", [helper.make_tensor_value_info(n, f, s) for n, s in inputs],
        [helper.make_tensor_value_info(n, f, None) for n in outputs],
        initializer=[numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              ir_version=7)
    return model.SerializeToString()


def _weights(rng, *shape):
    return (rng.standard_normal(shape) / np.sqrt(shape[1])).astype(np.float32)


def chain_model(cin=8, mid=16, cout=8, seed=0):
    """x[N, cin, H, W] -> conv -> relu -> conv -> y: one fused chain (the fast path)."""
    from onnx import helper
    rng = np.random.default_rng(seed)
    inits = {"w1": _weights(rng, mid, cin, 1, 1), "b1": _weights(rng, 1, mid)[0],
             "w2": _weights(rng, cout, mid, 1, 1), "b2": _weights(rng, 1, cout)[0]}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"])]
    return _model(nodes, inits, [("x", ["N", cin, "H", "W"])], ["y"])


def two_output_model(cin=8, seed=1):
    """Two chains from one input, a residual join in one: the checked run path."""
    from onnx import helper
    rng = np.random.default_rng(seed)
    inits = {"wa": _weights(rng, 12, cin, 1, 1), "ba": _weights(rng, 1, 12)[0],
             "wb": _weights(rng, cin, 12, 1, 1),
             "wc": _weights(rng, 5, cin, 1, 1)}
    nodes = [helper.make_node("Conv", ["x", "wa", "ba"], ["a"]),
             helper.make_node("Clip", ["a"], ["ra"]),
             helper.make_node("Conv", ["ra", "wb"], ["b"]),
             helper.make_node("Add", ["b", "x"], ["y"]),
             helper.make_node("Conv", ["x", "wc"], ["z"], strides=[2, 2])]
    return _model(nodes, inits, [("x", ["N", cin, "H", "W"])], ["y", "z"])


# --------------------------------------------------------------------------------------
# measuring
# --------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def rss_bytes():
    """Resident set size now (Linux), else the peak so far."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def mib(n):
    return n / (1 << 20)


def same_bits(a, b):
    """Bitwise equality of float32 arrays (np.array_equal takes -0.0 for 0.0)."""
    return (a.shape == b.shape and a.dtype == b.dtype
            and np.array_equal(np.ascontiguousarray(a).view(np.uint32),
                               np.ascontiguousarray(b).view(np.uint32)))


class Result:
    def __init__(self, phase):
        self.phase = phase
        self.calls = 0
        self.seconds = 0.0
        self.rss = []            # (calls done, rss bytes)
        self.mismatches = 0
        self.errors = []
        self.notes = []

    def growth(self, skip=0.1):
        """RSS growth from the first sample after `skip` of the samples to the last."""
        if len(self.rss) < 2:
            return 0, 0
        first = self.rss[min(len(self.rss) - 1, int(len(self.rss) * skip))]
        last = self.rss[-1]
        return last[1] - first[1], max(1, last[0] - first[0])

    @property
    def ok(self):
        return not self.mismatches and not self.errors


# --------------------------------------------------------------------------------------
# phases
# --------------------------------------------------------------------------------------
def soak_runs(runs, samples=50):
    """run() in a tight loop on a small chain: memory must stay flat."""
    res = Result("runs")
    sess = pyconv1x1.InferenceSession(chain_model(), threads=1)
    x = np.random.default_rng(2).standard_normal((1, 8, 16, 16)).astype(np.float32)
    ref = sess.run(None, {"x": x})[0].copy()
    out = np.empty_like(ref)
    every = max(1, runs // samples)
    run = sess.run
    t0 = time.perf_counter()
    for i in range(runs):
        kind = i % 16
        try:
            if kind == 0:       # the checked path (an output name list)
                y = run(["y"], {"x": x})[0]
            elif kind == 1:     # caller-provided output
                y = sess.run_into({"x": x}, {"y": out})["y"]
            else:               # the frame-less fast path, output dropped
                y = run(None, {"x": x})[0]
        except Exception as exc:  # noqa: BLE001  (every exception is a finding)
            res.errors.append(f"run {i}: {type(exc).__name__}: {exc}")
            break
        if not same_bits(y, ref):
            res.mismatches += 1
        if i % every == 0:
            res.rss.append((i + 1, rss_bytes()))
        del y
    res.seconds = time.perf_counter() - t0
    res.calls = runs
    res.rss.append((runs, rss_bytes()))
    return res


def soak_cycles(cycles, samples=40):
    """Create, run and drop sessions with the cyclic GC off."""
    res = Result("cycles")
    model = chain_model(cin=64, mid=256, cout=64, seed=3)   # 128 KiB of weights
    weight_bytes = 4 * (64 * 256 * 2 + 256 + 64)
    x = np.random.default_rng(4).standard_normal((1, 64, 8, 8)).astype(np.float32)
    with tempfile.TemporaryDirectory(prefix="pyconv1x1-soak-") as tmp:
        onnx_path = os.path.join(tmp, "m.onnx")
        with open(onnx_path, "wb") as f:
            f.write(model)
        pc1_path = os.path.join(tmp, "m.pc1")
        from pyconv1x1 import planfile
        planfile.compile_model(onnx_path, pc1_path)
        ref = pyconv1x1.InferenceSession(onnx_path, threads=1).run(None, {"x": x})[0]
        sources = [("onnx", onnx_path), ("pc1", pc1_path)]
        alive = {"onnx": 0, "pc1": 0}
        every = max(1, cycles // samples)
        gc.collect()
        was_enabled = gc.isenabled()
        gc.disable()
        t0 = time.perf_counter()
        try:
            for i in range(cycles):
                for form, path in sources:
                    try:
                        sess = pyconv1x1.InferenceSession(path, threads=1)
                        y = sess.run(None, {"x": x})[0]
                    except Exception as exc:  # noqa: BLE001
                        res.errors.append(f"cycle {i} {form}: {type(exc).__name__}: {exc}")
                        return res
                    if not same_bits(y, ref):
                        res.mismatches += 1
                    ref_dead = weakref.ref(sess)
                    del sess, y
                    if ref_dead() is not None:
                        alive[form] += 1
                if i % every == 0:
                    res.rss.append(((i + 1) * len(sources), rss_bytes()))
            res.seconds = time.perf_counter() - t0
            res.calls = cycles * len(sources)
            res.rss.append((res.calls, rss_bytes()))
            before = rss_bytes()
            freed = gc.collect()     # what refcounting left to the cyclic collector
            after = rss_bytes()
        finally:
            if was_enabled:
                gc.enable()
    grow, span = res.growth()
    res.notes.append(f"RSS growth per dropped session ({mib(weight_bytes) * 1024:.0f} KiB "
                     f"of weights each): {grow / span / 1024:.0f} KiB")
    for form, _ in sources:
        res.notes.append(f"{form}: {alive[form]}/{cycles} dropped sessions not freed by "
                         f"refcounting")
    res.notes.append(f"then gc.collect() freed {freed} objects, RSS "
                     f"{mib(before):.1f} -> {mib(after):.1f} MiB")
    return res


def shapes_for_concurrency(count):
    """`count` distinct input shapes (batch, H, W), small ones and a few larger."""
    out = []
    for i in range(count):
        n = 1 + i % 2
        h = 1 + (i * 7) % 23
        w = 1 + (i * 11) % 37
        out.append((n, 8, h, w))
    return list(dict.fromkeys(out))


def soak_concurrent(seconds, nthreads, nshapes=PLAN_CACHE + 12, seed=5):
    res = Result("concurrent")
    models = {"chain": chain_model(), "two_out": two_output_model()}
    shapes = shapes_for_concurrency(nshapes)
    big = (1, 8, 96, 96)
    rng = np.random.default_rng(seed)
    feeds = {s: rng.standard_normal(s).astype(np.float32) for s in shapes + [big]}
    # the reference: one session per model, one kernel thread, one Python thread
    refs = {}
    for name, model in models.items():
        serial = pyconv1x1.InferenceSession(model, threads=1)
        for s, x in feeds.items():
            refs[name, s] = [o.copy() for o in serial.run(None, {"x": x})]
        del serial
    shared = {(name, kt): pyconv1x1.InferenceSession(model, threads=kt)
              for name, model in models.items() for kt in (1, 2)}
    deadline = time.perf_counter() + seconds
    lock = threading.Lock()
    counts = []

    def worker(tid):
        r = random.Random(seed * 1000 + tid)
        private = {(name, kt): pyconv1x1.InferenceSession(model, threads=kt)
                   for name, model in models.items() for kt in (1, 2)} if tid % 2 else {}
        calls = 0
        try:
            while time.perf_counter() < deadline:
                if tid == 0:
                    # rerun a large image on the shared one-chain sessions while the
                    # other threads evict its plan by cycling shapes through them
                    key, s = ("chain", r.choice((1, 2))), big
                    sess = shared[key]
                else:
                    key, s = r.choice(sorted(shared)), r.choice(shapes)
                    sess = private[key] if private and r.random() < 0.5 else shared[key]
                x = feeds[s]
                if r.random() < 0.1:
                    outs = sess.run_into({"x": x}, {o.name: np.empty_like(ref)
                                                    for o, ref in zip(sess.get_outputs(),
                                                                      refs[key[0], s])})
                    outs = [outs[o.name] for o in sess.get_outputs()]
                else:
                    outs = sess.run(None, {"x": x})
                calls += 1
                bad = [i for i, (o, ref) in enumerate(zip(outs, refs[key[0], s]))
                       if not same_bits(o, ref)]
                if bad or len(outs) != len(refs[key[0], s]):
                    with lock:
                        res.mismatches += 1
                        if res.mismatches <= 5:
                            res.notes.append(f"mismatch: thread {tid} {key[0]} "
                                             f"kernel threads {key[1]} shape {s}")
        except Exception as exc:  # noqa: BLE001
            with lock:
                res.errors.append(f"thread {tid}: {type(exc).__name__}: {exc}")
        with lock:
            counts.append(calls)

    res.rss.append((0, rss_bytes()))
    t0 = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(t,), daemon=True)
               for t in range(nthreads)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(min(1.0, max(0.05, seconds / 20)))
        res.rss.append((sum(counts), rss_bytes()))
    for t in threads:
        t.join()
    res.seconds = time.perf_counter() - t0
    res.calls = sum(counts)
    res.rss.append((res.calls, rss_bytes()))
    res.notes.append(f"{nthreads} Python threads, {len(shapes) + 1} shapes (plan cache "
                     f"{PLAN_CACHE}), shared and private sessions, 1 and 2 kernel threads")
    return res


# --------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------
def table(results):
    head = (f"{'phase':11s} {'calls':>9s} {'s':>7s} {'RSS start':>10s} {'RSS end':>9s} "
            f"{'growth':>9s} {'per call':>10s} {'mismatch':>8s} {'errors':>6s}")
    lines = [head, "-" * len(head)]
    for r in results:
        grow, span = r.growth()
        start = r.rss[0][1] if r.rss else 0
        end = r.rss[-1][1] if r.rss else 0
        lines.append(f"{r.phase:11s} {r.calls:9d} {r.seconds:7.1f} {mib(start):8.1f}Mi "
                     f"{mib(end):7.1f}Mi {mib(grow):+7.2f}Mi {grow / span:+8.0f} B "
                     f"{r.mismatches:8d} {len(r.errors):6d}")
    for r in results:
        for note in r.notes:
            lines.append(f"  {r.phase}: {note}")
        for err in r.errors[:10]:
            lines.append(f"  {r.phase} ERROR: {err}")
    return "\n".join(lines)


def _rerun_sanitized(dest, argv):
    """Replace this process with the same soak on the sanitizer build in `dest`."""
    import importlib.util
    spec = importlib.util.spec_from_file_location("pyconv1x1_fuzz",
                                                  os.path.join(HERE, "fuzz.py"))
    fuzz = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(fuzz)
    if not os.path.isfile(os.path.join(dest, "fuzz-sanitized.json")):
        sys.exit(f"{dest} holds no sanitizer build: run tools/fuzz.py --sanitize "
                 f"--sanitize-dir {dest} first")
    env = fuzz.sanitizer_env(os.path.abspath(dest))
    env["PYCONV1X1_SOAK_SANITIZED"] = "1"
    os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + argv, env)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=100_000,
                    help="run() calls in the runs phase (a few seconds)")
    ap.add_argument("--cycles", type=int, default=300,
                    help="create/destroy cycles per source form (full size: 1000)")
    ap.add_argument("--seconds", type=float, default=30.0,
                    help="length of the concurrent phase (full size: 300)")
    ap.add_argument("--threads", type=int, default=4,
                    help="Python threads in the concurrent phase")
    ap.add_argument("--shapes", type=int, default=PLAN_CACHE + 12,
                    help=f"input shapes cycled in the concurrent phase (more than the "
                         f"plan cache's {PLAN_CACHE} evict plans in use)")
    ap.add_argument("--phases", default="runs,cycles,concurrent")
    ap.add_argument("--sanitize-dir", help="rerun on the ASan+UBSan build in this folder")
    ap.add_argument("--max-growth-mib", type=float, default=None,
                    help="fail when a phase's RSS grows more than this (default: report)")
    args = ap.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    unknown = set(phases) - {"runs", "cycles", "concurrent"}
    if unknown:
        ap.error(f"unknown phases {sorted(unknown)}")
    if args.sanitize_dir and not os.environ.get("PYCONV1X1_SOAK_SANITIZED"):
        _rerun_sanitized(args.sanitize_dir, argv)
    from pyconv1x1 import _backend
    print(f"pyconv1x1 from {os.path.dirname(pyconv1x1.__file__)}, kernel variant "
          f"{_backend.kernels().VARIANT}, {os.cpu_count()} CPUs", flush=True)
    results = []
    for phase in phases:
        t0 = time.perf_counter()
        if phase == "runs":
            results.append(soak_runs(args.runs))
        elif phase == "cycles":
            results.append(soak_cycles(args.cycles))
        else:
            results.append(soak_concurrent(args.seconds, args.threads, args.shapes))
        print(f"  {phase}: {time.perf_counter() - t0:.1f} s", flush=True)
    print(table(results))
    ok = all(r.ok for r in results)
    if args.max_growth_mib is not None:
        for r in results:
            grow, _ = r.growth()
            if mib(grow) > args.max_growth_mib:
                print(f"FAIL: {r.phase} RSS grew {mib(grow):.1f} MiB > "
                      f"{args.max_growth_mib} MiB")
                ok = False
    print("OK" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
