"""Speed of the int8 kernels (every path this CPU runs) against our float32 chain on the
issue-4 workload shapes (tools/workloads.py).

    python tools/bench_int8_kernels.py [--threads 1,2] [--rounds 5] [--workloads a,b]

Each workload's layers get random int8 weights of the same shapes (speed depends on the
shapes only); the int8 chain runs float32 in -> float32 out (run_f32 with out_float,
quantizing at the input and dequantizing at the output, as a quantized model does) and
the float32 chain is pyconv1x1.InferenceSession on the workload's float model. Engines
alternate within each round (paired rounds); a round times each engine for about
--block-ms and keeps its best run. Printed: GOPS (2 * multiply-adds / s) per engine (best
round) and the median over rounds of the per-round ratio int8 / float32. --ort adds u8 in
-> u8 out of our default path against onnxruntime's QLinearConv model of the same layers.
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


def qlayers(wl):
    rng = np.random.default_rng(0)
    out = []
    for layer in wl.layers:
        cout, k = layer.weight.shape
        w = rng.integers(-127, 128, (cout, k), dtype=np.int8)
        bias = rng.integers(-1000, 1000, cout).astype(np.int32)
        scale = np.full(cout, 1.0 / (64 * k), np.float32)
        out.append((w, bias, scale, 3, cout))
    return out


def qchain(qk, wl, path, out_float=True):
    layers = [qk.QLayer(w, b, s, zp, 0, 255, np.zeros(cout, np.float32))
              for w, b, s, zp, cout in qlayers(wl)]
    return qk.QChain(layers, out_float, path=path)


def qlinear_model(wl, chain_layers):
    """The same chain as QLinearConv nodes (u8 activations, s8 weights, per-channel
    scales) for onnxruntime, with the weights, biases and scales of `chain_layers`."""
    from onnx import TensorProto, helper, numpy_helper
    n, c, h, w = wl.x.shape
    nodes, inits, cur = [], [], "x"
    for i, (wq, bias, scale, zp, cout) in enumerate(chain_layers):
        k = wq.shape[1]
        names = [f"{v}{i}" for v in ("w", "b", "xs", "xz", "ws", "wz", "ys", "yz")]
        arrays = [wq.reshape(cout, k, 1, 1), bias, np.float32(1.0), np.uint8(3),
                  scale.astype(np.float32), np.zeros(cout, np.int8), np.float32(1.0),
                  np.uint8(zp)]
        inits += [numpy_helper.from_array(np.asarray(a), nm) for a, nm in zip(arrays, names)]
        out = "y" if i == len(chain_layers) - 1 else f"t{i}"
        nodes.append(helper.make_node("QLinearConv", [cur, names[2], names[3], names[0],
                                                      names[4], names[5], names[6],
                                                      names[7], names[1]], [out],
                                      kernel_shape=[1, 1]))
        cur = out
    cout = chain_layers[-1][4]
    graph = helper.make_graph(
        nodes, wl.name, [helper.make_tensor_value_info("x", TensorProto.UINT8, [n, c, h, w])],
        [helper.make_tensor_value_info("y", TensorProto.UINT8, [n, cout, h, w])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


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


def bench(name, threads, rounds, block_s, qk, ort_too=False):
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
    if ort_too:  # u8 in, u8 out: our default path against onnxruntime's QLinearConv
        import onnxruntime as ort
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        osess = ort.InferenceSession(qlinear_model(wl, qlayers(wl)), so,
                                     providers=["CPUExecutionProvider"])
        xu = np.random.default_rng(1).integers(0, 256, wl.x.shape, dtype=np.uint8)
        chu = qchain(qk, wl, None, out_float=False)
        yu = np.empty((n, cout, h * w), np.uint8)
        xu3 = xu.reshape(n, c, h * w)
        engines["ort-u8"] = lambda: osess.run(None, {"x": xu})
        engines["u8"] = lambda: chu.run_u8(xu3, yu, threads)
    times = {e: [] for e in engines}
    for _ in range(rounds):
        for e, fn in engines.items():
            times[e].append(best_time(fn, block_s))
    gops = {e: wl.flops / min(t) / 1e9 for e, t in times.items()}
    ratio = {e: float(np.median(np.array(times["f32"]) / np.array(times[e])))
             for e in engines if e != "f32"}
    if ort_too:
        ratio["ort"] = float(np.median(np.array(times["ort-u8"]) / np.array(times["u8"])))
    return gops, ratio


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--block-ms", type=float, default=150.0)
    ap.add_argument("--workloads", default=",".join(workloads.NAMES))
    ap.add_argument("--ort", action="store_true",
                    help="also u8 -> u8: our default path vs onnxruntime QLinearConv")
    args = ap.parse_args(argv)
    qk = _backend.qkernels()
    paths = qk.available_paths()
    print(f"float variant {_backend.kernels().__name__.rsplit('_', 1)[1]}, int8 paths "
          f"{', '.join(paths)} (default {qk.INT8_PATH})")
    extra = ["u8 GOPS", "ort-u8 GOPS", "u8/ort-u8"] if args.ort else []
    cols = (["workload", "thr", "f32 GOPS"] + [p + " GOPS" for p in paths]
            + [p + "/f32" for p in paths] + extra)
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for name in args.workloads.split(","):
        for t in [int(v) for v in args.threads.split(",")]:
            gops, ratio = bench(name, t, args.rounds, args.block_ms / 1e3, qk, args.ort)
            row = ([name, str(t), f"{gops['f32']:.1f}"] + [f"{gops[p]:.1f}" for p in paths]
                   + [f"{ratio[p]:.2f}x" for p in paths])
            if args.ort:
                row += [f"{gops['u8']:.1f}", f"{gops['ort-u8']:.1f}", f"{ratio['ort']:.2f}x"]
            print("| " + " | ".join(row) + " |", flush=True)


if __name__ == "__main__":
    main()
