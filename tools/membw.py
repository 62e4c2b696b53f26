"""Weight streaming of 1x1-map layers against the machine's memory copy bandwidth
(issue 11: "a 1x1 map with >= 1 MB of weights runs at >= 80% of the machine's memory
copy bandwidth").

    python tools/membw.py [--threads 1,2] [--rounds 7] [--pool-mb 640]

copy: numpy copies a 256 MiB float32 array into another (np.copyto); reported as the
bytes read per second (what a layer's weight stream is: reads only) and, STREAM-style,
read + written bytes per second.
layers: single-image, one-pixel layers (a classifier head, a wide vector layer) with
1-16 MB of weights, timed two ways: "hot", back-to-back runs of one session (weights
partly or wholly in the caches), and "cold", runs that cycle over enough sessions with
their own weights (--pool-mb in all) that each run streams its weights from memory.
GB/s = weight bytes / median time per run; % = of the copy's read bandwidth. The
median of --rounds rounds is printed; the host is shared, so rounds vary.
"""
import argparse
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

LAYERS = [("head 1280->1000", 1280, 1000), ("vec 1024->1024", 1024, 1024),
          ("head 4096->1024", 4096, 1024), ("vec 2048->2048", 2048, 2048)]


def copy_bandwidth(rounds, mib=256):
    a = np.ones(mib * (1 << 20) // 4, np.float32)
    b = np.empty_like(a)
    np.copyto(b, a)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.copyto(b, a)
        times.append(time.perf_counter() - t0)
    t = float(np.median(times))
    return a.nbytes / t / 1e9, 2 * a.nbytes / t / 1e9


def layer_model(cin, cout, seed):
    from onnx import TensorProto, helper, numpy_helper
    rng = np.random.default_rng(seed)
    w = (rng.standard_normal((cout, cin, 1, 1)) / np.sqrt(cin)).astype(np.float32)
    b = (0.1 * rng.standard_normal(cout)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[1, 1])
    graph = helper.make_graph(
        [node], "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, cin, 1, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, cout, 1, 1])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString()


def time_layer(cin, cout, threads, rounds, pool_mb):
    import pyconv1x1
    wbytes = 4 * cin * cout
    count = max(2, int(pool_mb * (1 << 20) // wbytes))
    sessions = [pyconv1x1.InferenceSession(layer_model(cin, cout, s), threads=threads)
                for s in range(count)]
    x = np.ones((1, cin, 1, 1), np.float32)
    feed = {"x": x}
    for s in sessions:
        s.run(None, feed)
    hot, cold = [], []
    reps = max(20, int(2e8 // wbytes))
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            sessions[0].run(None, feed)
        hot.append((time.perf_counter() - t0) / reps)
        t0 = time.perf_counter()
        for s in sessions:
            s.run(None, feed)
        cold.append((time.perf_counter() - t0) / len(sessions))
    return wbytes, float(np.median(hot)), float(np.median(cold)), count


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pool-mb", type=float, default=640,
                    help="weights cycled over by the cold runs (MiB; > the caches)")
    args = ap.parse_args()
    read_bw, stream_bw = copy_bandwidth(args.rounds)
    print(f"copy (np.copyto 256 MiB): {read_bw:.1f} GB/s read ({stream_bw:.1f} GB/s "
          "read + write, STREAM convention)")
    print("| layer | weights MB | threads | hot GB/s | % copy | cold GB/s | % copy |")
    print("|---|---|---|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        for name, cin, cout in LAYERS:
            wbytes, hot, cold, _ = time_layer(cin, cout, threads, args.rounds, args.pool_mb)
            print(f"| {name} | {wbytes / 1e6:.1f} | {threads} | {wbytes / hot / 1e9:.1f} | "
                  f"{100 * wbytes / hot / 1e9 / read_bw:.0f}% | {wbytes / cold / 1e9:.1f} | "
                  f"{100 * wbytes / cold / 1e9 / read_bw:.0f}% |", flush=True)
    read_bw2, _ = copy_bandwidth(args.rounds)
    print(f"copy again at the end: {read_bw2:.1f} GB/s read")


if __name__ == "__main__":
    main()
