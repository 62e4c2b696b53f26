"""Speed of the int8 kernels (every path this CPU runs) against our float32 chain on the
issue-4 workload shapes (tools/workloads.py).

    python tools/bench_int8_kernels.py [--threads 1,2] [--rounds 5] [--workloads a,b]

Each workload's layers get random int8 weights of the same shapes (speed depends on the
shapes only); the int8 chain runs float32 in -> float32 out (run_f32 with out_float,
quantizing at the input and dequantizing at the output, as a quantized model does) and
the float32 chain is pyconv1x1.InferenceSession on the workload's float model. Engines
alternate within each round (paired rounds); a round times each engine for about
--block-ms and keeps its best run. Printed: GOPS (2 * multiply-adds / s) per engine (best
round) and the median over rounds of the per-round ratio int8 / float32.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import pyconv1x1  # noqa: E402
from pyconv1x1 import _backend  # noqa: E402
import workloads  # noqa: E402


def qchain(qk, wl, path):
    rng = np.random.default_rng(0)
    layers = []
    for layer in wl.layers:
        cout, k = layer.weight.shape
        w = rng.integers(-127, 128, (cout, k), dtype=np.int8)
        bias = rng.integers(-1000, 1000, cout).astype(np.int32)
        scale = np.full(cout, 1.0 / (64 * k), np.float32)
        hi = 255 if layer.act is None else 200
        layers.append(qk.QLayer(w, bias, scale, 3, 3 if layer.act else 0, hi,
                                np.zeros(cout, np.float32)))
    return qk.QChain(layers, True, path=path)


def best_time(fn, block_s):
    fn()
    best, t_end = float("inf"), time.perf_counter() + block_s
    while True:
        t0 = time.perf_counter()
        fn()
        t = time.perf_counter() - t0
        best = min(best, t)
        if t0 + t > t_end:
            return best


def bench(name, threads, rounds, block_s, qk):
    wl = workloads.build(name)
    n, c, h, w = wl.x.shape
    x = np.ascontiguousarray(wl.x.reshape(n, c, h * w))
    cout = wl.layers[-1].weight.shape[0]
    sess = pyconv1x1.InferenceSession(wl.model_bytes(), threads=threads)
    engines = {"f32": lambda: sess.run(None, {"input": wl.x})}
    for path in qk.available_paths():
        ch = qchain(qk, wl, path)
        y = np.empty((n, cout, h * w), np.float32)
        engines[path] = (lambda ch=ch, y=y: ch.run_f32(x, 0.05, 128, y, threads))
    times = {e: [] for e in engines}
    for _ in range(rounds):
        for e, fn in engines.items():
            times[e].append(best_time(fn, block_s))
    gops = {e: wl.flops / min(t) / 1e9 for e, t in times.items()}
    ratio = {e: float(np.median(np.array(times["f32"]) / np.array(times[e])))
             for e in engines if e != "f32"}
    return gops, ratio


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-ms", type=float, default=150.0)
    ap.add_argument("--workloads", default=",".join(workloads.NAMES))
    args = ap.parse_args(argv)
    qk = _backend.qkernels()
    paths = qk.available_paths()
    print(f"float variant {_backend.kernels().__name__.rsplit('_', 1)[1]}, int8 paths "
          f"{', '.join(paths)} (default {qk.INT8_PATH})")
    head = (f"| {'workload':<15} | thr | {'f32 GOPS':>8} | "
            + " | ".join(f"{p + ' GOPS':>15}" for p in paths) + " | "
            + " | ".join(f"{p + '/f32':>14}" for p in paths) + " |")
    print(head)
    print("|" + "|".join("-" * (len(s) + 2) for s in head.strip("|").split("|")[:-1])
          + "|" if False else "|---" * (3 + 2 * len(paths)) + "|")
    for name in args.workloads.split(","):
        for t in [int(v) for v in args.threads.split(",")]:
            gops, ratio = bench(name, t, args.rounds, args.block_ms / 1e3, qk)
            print(f"| {name:<15} | {t:>3} | {gops['f32']:8.1f} | "
                  + " | ".join(f"{gops[p]:15.1f}" for p in paths) + " | "
                  + " | ".join(f"{ratio[p]:13.2f}x" for p in paths) + " |", flush=True)


if __name__ == "__main__":
    main()
