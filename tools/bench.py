#!/usr/bin/env python
"""Benchmark pyconv1x1 against onnxruntime, numpy and torch on the issue-4 workloads.

Usage::

    python tools/bench.py [MODEL.onnx ...] [--threads 1,2] [--quick] [--markdown]
                          [--plot FILE.png] [--workloads big256,tiny|extra|sweep] [--peak GF/s]
    python tools/bench.py --int8 [--fallback] [--threads 1,2] [--workloads ...]  (issue 12)

Every thread count runs in a fresh subprocess whose OMP_NUM_THREADS, OPENBLAS_NUM_THREADS
and MKL_NUM_THREADS are set before numpy is imported, so numpy's BLAS (and torch) use that
many threads too; pyconv1x1 gets ``threads=t``, onnxruntime ``intra_op_num_threads=t``
(inter_op 1, sequential execution, all graph optimizations) and torch
``torch.set_num_threads(t)``.

Engines run interleaved in rounds: each round times a block of calls (about --block-ms of
work) per engine, in an order that rotates from round to round, so machine drift hits every
engine alike; before each block the process waits until no thread of the previous engine
still spins (OpenBLAS threads spin ~0.1 s after a call), so no engine's spinning threads
steal cycles from another's block.
Reported per workload and engine: the median per-call time over all rounds, GF/s, % of the
sgemm peak (the best round's GF/s over the best large numpy float32 matmul at the same
thread count seen in the run, at start, end and once per round; or --peak x threads), the
ratio onnxruntime_time / engine_time (the median over rounds of the ratio of the two blocks
timed in the same round, with its interquartile range: on a host whose speed drifts, a
ratio of blocks seconds apart is steadier than a ratio of overall medians), and the max
relative error against onnxruntime.
A separate settled block per engine gives CPU time / wall time, and the CPU burnt in the
100 ms after the last call returns (spinning threads show up there).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ENGINES = ("pyconv1x1", "onnxruntime", "numpy", "torch")
SHORT = {"pyconv1x1": "ours", "onnxruntime": "ort", "numpy": "numpy", "torch": "torch"}

TARGET_GEOMEAN = 1.2
TARGET_MIN_RATIO = 0.9
TARGET_BIG256_PEAK = 90.0
TARGET_TINY_US = 3.0


# ---------------------------------------------------------------------------------------
# engines (constructed inside the worker process)

class Engine:
    name = "?"

    def __call__(self):
        raise NotImplementedError


class Ours(Engine):
    name = "pyconv1x1"

    def __init__(self, wl, threads):
        import pyconv1x1
        src = wl.path if wl.path is not None else wl.model_bytes()
        self.sess = pyconv1x1.InferenceSession(src, threads=threads)
        self.feed = {wl.input_name: wl.x}
        self.variant = self.sess.kernel_variant

    def __call__(self):
        return self.sess.run(None, self.feed)[0]


class Ort(Engine):
    name = "onnxruntime"

    def __init__(self, wl, threads):
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.sess = ort.InferenceSession(wl.ort_source(), sess_options=so,
                                         providers=["CPUExecutionProvider"])
        self.feed = {wl.input_name: wl.x}

    def __call__(self):
        return self.sess.run(None, self.feed)[0]


class Numpy(Engine):
    """W @ X per image (one batched matmul), then bias and activation in place."""
    name = "numpy"

    def __init__(self, wl, threads):
        import numpy as np
        if wl.layers is None:
            raise NotImplementedError("no numpy version of a model given by path")
        self.np = np
        n, c, h, w = wl.x.shape
        self.x = wl.x.reshape(n, c, h * w)
        self.out_shape = (n, wl.layers[-1].weight.shape[0], h, w)
        self.layers = [(l.weight, l.bias[:, None], l.act) for l in wl.layers]
        if any(act == "gelu" for _, _, act in self.layers):
            raise NotImplementedError("numpy has no vectorized erf")

    def __call__(self):
        np = self.np
        y = self.x
        for weight, bias, act in self.layers:
            y = np.matmul(weight, y)
            y += bias
            if act == "relu":
                np.maximum(y, 0.0, out=y)
            elif act == "relu6":
                np.clip(y, 0.0, 6.0, out=y)
            elif act == "silu":
                y = y / (1.0 + np.exp(-y))
        return y.reshape(self.out_shape)


class Torch(Engine):
    name = "torch"

    def __init__(self, wl, threads):
        import torch
        import torch.nn.functional as F
        if wl.layers is None:
            raise NotImplementedError("no torch version of a model given by path")
        torch.set_num_threads(threads)
        self.torch, self.F = torch, F
        self.x = torch.from_numpy(wl.x)
        self.layers = [(torch.from_numpy(l.weight.reshape(*l.weight.shape, 1, 1).copy()),
                        torch.from_numpy(l.bias.copy()), l.act) for l in wl.layers]

    def __call__(self):
        torch, F = self.torch, self.F
        with torch.inference_mode():
            y = self.x
            for weight, bias, act in self.layers:
                y = F.conv2d(y, weight, bias)
                if act == "relu":
                    y = torch.relu(y)
                elif act == "relu6":
                    y = torch.clamp(y, 0.0, 6.0)
                elif act == "silu":
                    y = F.silu(y)
                elif act == "gelu":
                    y = F.gelu(y)
            return y.numpy()


ENGINE_CLASSES = {"pyconv1x1": Ours, "onnxruntime": Ort, "numpy": Numpy, "torch": Torch}


def _engine_available(name):
    if name == "torch":
        try:
            import torch  # noqa: F401
        except Exception:
            return False
    return True


# ---------------------------------------------------------------------------------------
# measurement (worker side)

def measure_peak(threads, reps=5, n=2048):
    """GF/s of a float32 n x n x n numpy matmul: the best of `reps` calls."""
    import numpy as np
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n)).astype(np.float32)
    b = rng.standard_normal((n, n)).astype(np.float32)
    c = np.empty((n, n), np.float32)
    np.matmul(a, b, out=c)
    best = math.inf
    for _ in range(reps):
        t0 = time.perf_counter()
        np.matmul(a, b, out=c)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best / 1e9


class PeakProbe:
    """One float32 n^3 numpy matmul per round, timed beside the engines: the peak is the
    best sgemm seen over the whole run, not only at its start and end, on a host whose
    speed drifts for minutes at a time."""
    name = "sgemm peak"

    def __init__(self, n=2048):
        import numpy as np
        rng = np.random.default_rng(0)
        self.a = rng.standard_normal((n, n)).astype(np.float32)
        self.b = rng.standard_normal((n, n)).astype(np.float32)
        self.c = np.empty((n, n), np.float32)
        self.flops = 2.0 * n ** 3

    def __call__(self):
        import numpy as np
        np.matmul(self.a, self.b, out=self.c)


def _err(msg):
    return msg.strip().splitlines()[-1][:160] if msg.strip() else "error"


def bench_workload(wl, engines, threads, cfg, probe=None):
    """Interleaved rounds over the engines that built (and the peak probe, if given);
    returns {engine: result dict}."""
    import numpy as np
    from pyconv1x1._timing import Rounds, percentiles_ms, settle
    from pyconv1x1.testing import compare
    res = {}
    live = {}
    for name in engines:
        r = res[name] = {"error": None}
        try:
            eng = ENGINE_CLASSES[name](wl, threads)
            y = eng()
            eng()  # a second warm-up (first calls build plans / allocate)
            t0 = time.perf_counter()
            eng()
            est = max(time.perf_counter() - t0, 1e-7)
            r["reps"] = int(min(cfg["max_reps"], max(cfg["min_reps"],
                                                    round(cfg["block_s"] / est))))
            r["_y"] = np.asarray(y, dtype=np.float32)
            if name == "pyconv1x1":
                r["variant"] = eng.variant
            live[name] = eng
        except NotImplementedError as e:
            r["error"] = f"n/a: {e}"
        except Exception:
            r["error"] = _err(traceback.format_exc())
    ref = res.get("onnxruntime", {}).get("_y")
    for name, r in res.items():
        y = r.pop("_y", None)
        if y is not None and ref is not None and name != "onnxruntime":
            if y.shape != ref.shape:
                r["error"] = f"output shape {list(y.shape)} != onnxruntime {list(ref.shape)}"
                live.pop(name, None)
            else:
                r["max_rel_err"] = compare(y, ref)[1]

    if probe is not None:
        probe()
        live[probe.name] = probe
        res[probe.name] = {"reps": 1, "error": None}
    # interleaved rounds, the order turning each round; an engine that raises sits out
    rounds = Rounds(live, settle_s=cfg["gap_s"], rotate=True, keep_going=True)
    for _ in range(cfg["rounds"]):
        rounds.round({name: res[name]["reps"] for name in live})
    for name, exc in rounds.failed.items():
        res[name]["error"] = _err("".join(
            traceback.format_exception(type(exc), exc, exc.__traceback__)))
        live.pop(name)
    order = list(rounds.engines)
    for name in order:
        if name in live and rounds.times[name]:
            t = rounds.times[name]
            pct = percentiles_ms(t, (50, 90))
            res[name]["ms"] = pct["p50_ms"]
            res[name]["p90_ms"] = pct["p90_ms"]
            res[name]["samples"] = len(t)
    # paired ratios: onnxruntime's block / this engine's block in the same round (blocks
    # a few ms apart), so drift of the machine between rounds cancels out
    for name in order:
        if name in live and "onnxruntime" in order and name != "onnxruntime":
            ratio = rounds.ratio("onnxruntime", name)
            if ratio is not None:
                res[name]["ratio"] = ratio.median
                res[name]["ratio_q1"] = ratio.q1
                res[name]["ratio_q3"] = ratio.q3
        elif name == "onnxruntime" and name in live:
            res[name]["ratio"] = 1.0
    for name in order:  # the same pairing against pyconv1x1, for the plot
        if name in live and "pyconv1x1" in order and name != "pyconv1x1":
            ratio = rounds.ratio(name, "pyconv1x1")
            if ratio is not None:
                res[name]["time_vs_ours"] = ratio.median
    blocks = rounds.blocks
    if probe is not None:  # the best sgemm speed seen in this workload's rounds
        peak_blocks = [b for b in blocks[probe.name] if b is not None]
        live.pop(probe.name, None)
        order.remove(probe.name)
        probe_res = res.pop(probe.name)
        if peak_blocks and not probe_res.get("error"):
            res[probe.name] = {"peak_gfs": probe.flops / min(peak_blocks) / 1e9}
    for name in order:  # the best round: the machine's speed when nothing disturbed it
        done = [b for b in blocks[name] if b is not None]
        if name in live and done:
            res[name]["best_ms"] = 1e3 * min(done)

    # settled blocks: CPU time vs wall time per call, then CPU burnt after return
    for name in order:
        if name not in live:
            continue
        eng = live[name]
        settle(cfg["settle_s"])
        time.sleep(0.01)
        reps = res[name]["reps"]
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(reps):
            eng()
        c1, w1 = time.process_time(), time.perf_counter()
        time.sleep(cfg["idle_s"])
        c2 = time.process_time()
        res[name]["cpu_per_wall"] = (c1 - c0) / max(w1 - w0, 1e-9)
        res[name]["idle_cpu_ms"] = 1e3 * (c2 - c1) * (0.1 / cfg["idle_s"])
    live.clear()
    return res


def worker(args):
    """One thread count, in this (fresh) process; writes a JSON result file."""
    import numpy as np  # noqa: F401  (after the parent set the BLAS thread env)
    sys.path.insert(0, HERE)
    import workloads

    threads = args.worker
    cfg = config(args)
    out = {"threads": threads, "workloads": [], "versions": versions(),
           "load_before": _loadavg()}
    if args.peak:
        out["peak"] = args.peak * threads
        out["peak_source"] = f"--peak {args.peak:g} GF/s per core x {threads}"
    else:
        # this machine's speed drifts over minutes: measure before and after, keep the max
        peak_reps = 3 if args.quick else 5
        peak_start = measure_peak(threads, reps=peak_reps)
    engines = [e for e in args.engines.split(",") if e]
    engines = [e for e in engines if _engine_available(e)]
    out["engines"] = engines
    probe_peaks = []
    items = [("builtin", n) for n in selected_workloads(args)] + \
        [("path", p) for p in args.models]
    for kind, what in items:
        try:
            wl = workloads.build(what) if kind == "builtin" else workloads.from_path(what)
        except Exception:
            out["workloads"].append({"name": os.path.basename(what), "builtin": False,
                                     "error": _err(traceback.format_exc())})
            continue
        t0 = time.perf_counter()
        res = bench_workload(wl, engines, threads, cfg,
                             None if args.peak else PeakProbe())
        probe = res.pop(PeakProbe.name, None)
        if probe:
            probe_peaks.append(probe["peak_gfs"])
        print(f"  [threads={threads}] {wl.name}: {time.perf_counter() - t0:.1f} s",
              file=sys.stderr, flush=True)
        out["workloads"].append({"name": wl.name,
                                 "builtin": kind == "builtin" and wl.name in workloads.NAMES,
                                 "flops": wl.flops, "shape": list(wl.x.shape),
                                 "engines": res})
    if not args.peak:
        peak_end = measure_peak(threads, reps=peak_reps)
        out["peak"] = max([peak_start, peak_end] + probe_peaks)
        out["peak_source"] = (f"numpy float32 sgemm 2048^3: the best of {peak_reps} calls "
                              f"at start ({peak_start:.1f}) and at end ({peak_end:.1f}) and "
                              f"of one call per round of every workload ("
                              f"{max(probe_peaks, default=float('nan')):.1f})")
    out["load_after"] = _loadavg()
    with open(args.json_out, "w") as f:
        json.dump(out, f)
    return 0


def _loadavg():
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def config(args):
    if args.quick:
        cfg = {"rounds": 3, "block_s": 0.015, "min_reps": 1, "max_reps": 3000,
               "settle_s": 0.3, "idle_s": 0.1, "gap_s": 0.3}
    else:
        cfg = {"rounds": 9, "block_s": 0.06, "min_reps": 2, "max_reps": 20000,
               "settle_s": 0.5, "idle_s": 0.1, "gap_s": 0.5}
    if args.rounds:
        cfg["rounds"] = args.rounds
    if args.block_ms:
        cfg["block_s"] = args.block_ms / 1e3
    return cfg


def versions():
    v = {"python": platform.python_version()}
    for mod in ("numpy", "onnxruntime", "torch", "onnx"):
        try:
            v[mod] = __import__(mod).__version__
        except Exception:
            pass
    try:
        import pyconv1x1
        v["pyconv1x1"] = pyconv1x1.__version__
    except Exception:
        pass
    return v


def selected_workloads(args):
    sys.path.insert(0, HERE)
    import workloads
    if args.workloads in ("all", ""):
        return list(workloads.NAMES)
    names = [n.strip() for n in args.workloads.split(",") if n.strip()]
    if names == ["none"]:
        return []
    expand = {"all": workloads.NAMES, "extra": workloads.EXTRA_NAMES,
              "sweep": workloads.SWEEP_NAMES, "graphs": workloads.GRAPH_NAMES,
              "act": workloads.ACT_NAMES}
    names = [m for n in names for m in expand.get(n, [n])]
    known = (workloads.NAMES + workloads.EXTRA_NAMES + workloads.SWEEP_NAMES
             + workloads.GRAPH_NAMES + workloads.ACT_NAMES)
    bad = [n for n in names if n not in known]
    if bad:
        raise SystemExit(f"bench.py: unknown workload(s) {bad}; known: {known} "
                         "('all': the targets, 'extra' and 'sweep': the others)")
    return list(dict.fromkeys(names))


# ---------------------------------------------------------------------------------------
# parent: run workers, print tables

def _child_pythonpath(env):
    """Make an in-place build in the repo importable when pyconv1x1 is not installed."""
    import importlib.util
    repo = os.path.dirname(HERE)
    if importlib.util.find_spec("pyconv1x1") is None and \
            os.path.isdir(os.path.join(repo, "pyconv1x1")):
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH")) if p)


def run_worker(threads, args, argv):
    env = dict(os.environ)
    _child_pythonpath(env)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
        env[var] = str(threads)
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, os.path.abspath(__file__), *argv,
               "--_worker", str(threads), "--_json", out]
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0 or not os.path.exists(out):
            return {"threads": threads, "error": f"worker exited with {proc.returncode}",
                    "workloads": []}
        with open(out) as f:
            return json.load(f)


def machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count()
    return cpu, cores


def kernel_variant(results):
    for run in results:
        for wl in run.get("workloads", []):
            v = wl.get("engines", {}).get("pyconv1x1", {}).get("variant")
            if v:
                return v
    return "?"


def _fmt_ms(ms):
    if ms is None:
        return "-"
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}" if ms >= 1 else f"{ms:.4f}"


def _fmt_idle(ms):
    return "-" if ms is None else f"{ms:.1f}ms"


def _fmt(x, spec, missing="-"):
    return missing if x is None else format(x, spec)


def gflops(wl, r, key="ms"):
    if r.get(key) and wl.get("flops"):
        return wl["flops"] / (r[key] * 1e-3) / 1e9
    return None


def pct_peak(wl, r, peak):
    """% of the sgemm peak: the best round's GF/s over the best sgemm GF/s of the run
    (both the machine's undisturbed speed; a median over a drifting host is not)."""
    gf = gflops(wl, r, "best_ms" if r.get("best_ms") else "ms")
    return 100 * gf / peak if gf and peak else None


def summarize(run):
    """Per thread count: ratios ort/ours on built-in workloads and the target checks."""
    ratios = {}
    big_pct = tiny_us = tiny_median_us = None
    for wl in run.get("workloads", []):
        eng = wl.get("engines", {})
        ours, ort = eng.get("pyconv1x1", {}), eng.get("onnxruntime", {})
        if ours.get("ratio"):
            ratios[wl["name"]] = (ours["ratio"], wl["builtin"])
        if wl["name"] == "big256" and wl.get("builtin") and ours.get("ms"):
            big_pct = pct_peak(wl, ours, run["peak"])
        if wl["name"] == "tiny" and wl.get("builtin") and ours.get("ms"):
            tiny_us = ours.get("best_ms", ours["ms"]) * 1e3
            tiny_median_us = ours["ms"] * 1e3
    builtin = [r for r, b in ratios.values() if b]
    geo = math.exp(sum(map(math.log, builtin)) / len(builtin)) if builtin else None
    every = [r for r, _ in ratios.values()]
    geo_all = math.exp(sum(map(math.log, every)) / len(every)) if every else None
    mn = min(builtin) if builtin else None
    checks = [
        (f"geomean ort/ours >= {TARGET_GEOMEAN}", geo, geo is not None and geo >= TARGET_GEOMEAN,
         _fmt(geo, ".2f")),
        (f"no workload < {TARGET_MIN_RATIO}", mn, mn is not None and mn >= TARGET_MIN_RATIO,
         _fmt(mn, ".2f")),
        (f"big256 >= {TARGET_BIG256_PEAK:.0f}% of sgemm peak", big_pct,
         big_pct is not None and big_pct >= TARGET_BIG256_PEAK, _fmt(big_pct, ".1f") + "%"),
        (f"tiny <= {TARGET_TINY_US:g} us per run() (best round)", tiny_us,
         tiny_us is not None and tiny_us <= TARGET_TINY_US,
         _fmt(tiny_us, ".2f") + f" us (median of all rounds {_fmt(tiny_median_us, '.2f')} us)"),
    ]
    return {"geomean": geo, "min": mn, "n": len(builtin), "checks": checks,
            "geomean_all": geo_all, "n_all": len(every),
            "min_all": min(every) if every else None,
            "ratios": {k: v for k, (v, _) in ratios.items()}}


def print_text(results, engines, cpu, cores):
    variant = kernel_variant(results)
    print(f"\nmachine: {cpu}, {cores} cores; pyconv1x1 kernel variant: {variant}")
    if results and results[0].get("versions"):
        print("versions: " + ", ".join(f"{k} {v}" for k, v in results[0]["versions"].items()))
    for run in results:
        t = run["threads"]
        if run.get("error"):
            print(f"\n=== threads={t}: {run['error']}")
            continue
        print(f"\n=== threads={t}   peak {run['peak']:.1f} GF/s ({run['peak_source']});  "
              f"1-min load average {_fmt(run.get('load_before'), '.2f')} before, "
              f"{_fmt(run.get('load_after'), '.2f')} after (this run adds up to {t}; more "
              "means other processes competed)")
        hdr = (f"{'workload':16s} {'engine':12s} {'ms':>9s} {'p90 ms':>9s} {'GF/s':>7s} "
               f"{'%peak':>6s} {'ort/x':>6s} {'IQR':>9s} {'rel err':>8s} {'cpu/wall':>8s} "
               f"{'idle cpu':>8s}")
        print(hdr)
        print("-" * len(hdr))
        for wl in run["workloads"]:
            if wl.get("error"):
                print(f"{wl['name']:16s} ERROR: {wl['error']}")
                continue
            first = True
            for name in engines:
                r = wl["engines"].get(name)
                if r is None:
                    continue
                label = (wl["name"] if first else "")[:16]
                first = False
                if r.get("error") and not r.get("ms"):
                    print(f"{label:16s} {name:12s} {r['error']}")
                    continue
                gf = gflops(wl, r)
                pct = pct_peak(wl, r, run["peak"])
                ratio = r.get("ratio")
                spread = (f"{r['ratio_q1']:.2f}-{r['ratio_q3']:.2f}" if "ratio_q1" in r
                          else "-")
                err = r.get("max_rel_err")
                print(f"{label:16s} {name:12s} {_fmt_ms(r['ms']):>9s} "
                      f"{_fmt_ms(r['p90_ms']):>9s} "
                      f"{_fmt(gf, '7.1f'):>7s} {_fmt(pct, '5.0f'):>5s}% "
                      f"{_fmt(ratio, '6.2f'):>6s} {spread:>9s} {_fmt(err, '8.1e'):>8s} "
                      f"{_fmt(r.get('cpu_per_wall'), '8.2f'):>8s} "
                      f"{_fmt_idle(r.get('idle_cpu_ms')):>8s}"
                      + (f"  ({r['error']})" if r.get("error") else ""))
        s = summarize(run)
        print(f"\nthreads={t}: geomean ort/ours {_fmt(s['geomean'], '.3f')} over {s['n']} "
              f"built-in workloads, min {_fmt(s['min'], '.3f')}; over all {s['n_all']} "
              f"timed workloads {_fmt(s['geomean_all'], '.3f')}, min "
              f"{_fmt(s['min_all'], '.3f')}")
        for label, value, ok, shown in s["checks"]:
            verdict = "n/a " if value is None else "PASS" if ok else "FAIL"
            print(f"  [{verdict}] {label}: {shown if value is not None else 'not measured'}")
    print("\nms = median per-call time over interleaved rounds; ort/x = median over rounds of "
          "onnxruntime's block time / the engine's block time in the same round (>1: faster "
          "than onnxruntime), IQR its interquartile range;\n%peak = the engine's best round "
          "(GF/s) / the best 2048^3 numpy sgemm seen in the run (or --peak);\nrel err = max|y - y_ort| / max|y_ort|; "
          "cpu/wall = process CPU time / wall time over a settled block (<= threads means "
          "no oversubscription);\nidle cpu = CPU burnt in the 100 ms after the last call "
          "returned (spinning threads). numpy's BLAS and torch use the same thread count "
          "(env set before import).")


def print_markdown(results, engines, cpu, cores):
    variant = kernel_variant(results)
    v = results[0].get("versions", {}) if results else {}
    print(f"\nMachine: {cpu}, {cores} cores, Linux; pyconv1x1 kernel variant `{variant}`; "
          + ", ".join(f"{k} {val}" for k, val in v.items()) + ".\n")
    others = [e for e in engines if e != "pyconv1x1"]
    cols = ["workload", "threads", "MFLOP", "pyconv1x1 ms", "GF/s", "% peak"] + \
        [f"{e} ms" for e in others] + ["onnxruntime / pyconv1x1"]
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" if i < 1 else "---:" for i in range(len(cols))) + "|")
    for run in results:
        if run.get("error"):
            continue
        for wl in run["workloads"]:
            if wl.get("error"):
                continue
            e = wl["engines"]
            ours = e.get("pyconv1x1", {})
            gf = gflops(wl, ours)
            pct = pct_peak(wl, ours, run["peak"])
            ratio = ours.get("ratio")
            row = [wl["name"], str(run["threads"]), f"{wl['flops'] / 1e6:.1f}",
                   _fmt_ms(ours.get("ms")), _fmt(gf, ".1f"), _fmt(pct, ".0f")]
            row += [_fmt_ms(e.get(o, {}).get("ms")) for o in others]
            row += [_fmt(ratio, ".2f")]
            print("| " + " | ".join(row) + " |")
    print()
    for run in results:
        if run.get("error"):
            continue
        s = summarize(run)
        print(f"- {run['threads']} thread(s), sgemm peak {run['peak']:.0f} GF/s: geomean "
              f"onnxruntime/pyconv1x1 **{_fmt(s['geomean'], '.2f')}**, min "
              f"{_fmt(s['min'], '.2f')} (issue-4 workloads); all {s['n_all']} timed: "
              f"geomean {_fmt(s['geomean_all'], '.2f')}, min {_fmt(s['min_all'], '.2f')}; "
              + "; ".join(
                  f"{label} {'n/a' if value is None else 'yes' if ok else 'NO'} ({shown})"
                  for label, value, ok, shown in s["checks"][2:]))


def plot(results, engines, path):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib import ticker
    except Exception:
        print(f"--plot: matplotlib is not importable; no plot written ({path})")
        return
    runs = [r for r in results if not r.get("error")]
    others = [e for e in engines if e != "pyconv1x1"]
    fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.5), squeeze=False,
                             sharey=True)
    for ax, run in zip(axes[0], runs):
        names = [w["name"] for w in run["workloads"] if not w.get("error")]
        width = 0.8 / max(1, len(others))
        for i, eng in enumerate(others):
            vals = []
            for w in run["workloads"]:
                if w.get("error"):
                    continue
                vals.append(w["engines"].get(eng, {}).get("time_vs_ours", float("nan")))
            xs = [j + (i - (len(others) - 1) / 2) * width for j in range(len(names))]
            bars = ax.bar(xs, vals, width, label=f"{eng} time / pyconv1x1 time")
            if eng == "onnxruntime":
                ax.bar_label(bars, labels=["" if v != v else f"{v:.2f}" for v in vals],
                             fontsize=7)
        ax.axhline(1.0, color="black", lw=0.8)
        ax.axhline(TARGET_GEOMEAN, color="green", lw=0.8, ls="--")
        s = summarize(run)
        ax.set_title(f"{run['threads']} thread(s): geomean ort/ours "
                     f"{_fmt(s['geomean'], '.2f')}")
        ax.set_xticks(range(len(names)))
        ax.set_xticklabels(names, rotation=30, ha="right")
        ax.set_yscale("log")
        ax.yaxis.set_minor_formatter(ticker.NullFormatter())
        ax.yaxis.set_major_locator(ticker.FixedLocator(
            [0.1, 0.2, 0.5, 0.9, 1.2, 2, 5, 10, 20, 50, 100, 200, 500, 1000]))
        ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
        ax.set_ylabel("speed-up of pyconv1x1 (higher is better)")
        ax.legend(fontsize=8)
    cpu, cores = machine()
    fig.suptitle(f"pyconv1x1 vs others, {cpu}, {cores} cores, kernels "
                 f"{kernel_variant(results)}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="*", help="extra .onnx models to time")
    ap.add_argument("--threads", default="1,2", help="thread counts (default 1,2)")
    ap.add_argument("--workloads", default="all",
                    help="built-in workloads, comma-separated: names, 'all' (the issue-4 "
                         "targets, the default), 'extra' (ResNet-style shapes), 'sweep' "
                         "(issue 11's shape sweep: 1 to 224x224 pixels, batch 1 to 64), "
                         "'graphs' (issue 13: ConvNeXt / token MLPs, squeeze-excitation), "
                         "'act' (SiLU and GELU chains) or 'none'")
    ap.add_argument("--engines", default=",".join(ENGINES),
                    help=f"engines to run (default {','.join(ENGINES)})")
    ap.add_argument("--quick", action="store_true", help="a short run (fewer, shorter rounds)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds (default 9, quick 3)")
    ap.add_argument("--block-ms", type=float,
                    help="work per engine per round in ms (default 60, quick 15)")
    ap.add_argument("--peak", type=float, metavar="GF/s",
                    help="peak GF/s per core (default: measure numpy sgemm per thread count)")
    ap.add_argument("--markdown", action="store_true", help="also print a Markdown table")
    ap.add_argument("--plot", metavar="FILE.png", help="bar chart of speed-ups (matplotlib)")
    ap.add_argument("--json", metavar="FILE", help="also save the raw results as JSON")
    ap.add_argument("--int8", action="store_true",
                    help="the workloads quantized (QDQ s8, QOperator u8): pyconv1x1 vs "
                         "onnxruntime int8 and vs our float32 (tools/bench_int8.py)")
    ap.add_argument("--fallback", action="store_true",
                    help="with --int8: also time the chains on the float kernels and on "
                         "the int8 path, forced")
    ap.add_argument("--_worker", dest="worker", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--_json", dest="json_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    unknown = [e for e in args.engines.split(",") if e and e not in ENGINES]
    if unknown:
        ap.error(f"unknown engine(s) {unknown}; known: {list(ENGINES)}")
    if "pyconv1x1" not in args.engines.split(","):
        ap.error("--engines must include pyconv1x1")
    for m in args.models:
        if not os.path.isfile(m):
            ap.error(f"no such model file: {m}")
    args.models = [os.path.abspath(m) for m in args.models]
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        return worker(args)
    if args.int8:
        sys.path.insert(0, HERE)
        import bench_int8
        return bench_int8.main(args)
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
        assert threads and all(t >= 1 for t in threads)
    except (ValueError, AssertionError):
        raise SystemExit(f"bench.py: --threads must be positive integers, got {args.threads!r}")
    selected_workloads(args)  # validate names before spawning
    # workers get the same options minus the parent-only ones; model paths made absolute
    child_argv = [a for a in _strip_parent_only(argv)]
    results = []
    for t in threads:
        print(f"running threads={t} in a fresh process ...", file=sys.stderr, flush=True)
        results.append(run_worker(t, args, child_argv))
    engines = [e for e in ENGINES if any(e in r.get("engines", []) for r in results)]
    cpu, cores = machine()
    print_text(results, engines, cpu, cores)
    if args.markdown:
        print_markdown(results, engines, cpu, cores)
    if args.plot:
        plot(results, engines, args.plot)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": {"cpu": cpu, "cores": cores}, "runs": results}, f,
                      indent=1)
    return 0


def _strip_parent_only(argv):
    """Drop --plot/--json/--markdown/--threads (and their values) and make model paths
    absolute for the worker."""
    out, skip = [], False
    takes_value = {"--plot", "--json", "--threads"}
    for a in argv:
        if skip:
            skip = False
            continue
        key = a.split("=", 1)[0]
        if key in takes_value:
            skip = "=" not in a
            continue
        if a == "--markdown":
            continue
        if not a.startswith("-") and os.path.isfile(a):
            a = os.path.abspath(a)
        out.append(a)
    return out


if __name__ == "__main__":
    sys.exit(main())
