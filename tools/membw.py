"""Weight streaming of 1x1-map layers against the machine's memory copy bandwidth
(issue 11: "a 1x1 map with >= 1 MB of weights runs at >= 80% of the machine's memory
copy bandwidth").

    python tools/membw.py [--threads 1,2] [--rounds 7] [--pool-mb 640]

copy: numpy copies a 256 MiB float32 array into another (np.copyto); reported as the
bytes read per second (what a layer's weight stream is: reads only; STREAM's figure
counts the written bytes too, twice this).
layers: single-image, one-pixel layers (a classifier head, a wide vector layer) with
1-16 MB of weights, timed two ways: "hot", back-to-back runs of one session (weights
partly or wholly in the caches), and "cold", runs that cycle over enough sessions with
their own weights (--pool-mb in all) that each run streams its weights from memory.
GB/s = weight bytes per second of runs; "/ copy" = that over the copy's read GB/s in
the same round. Medians of --rounds rounds; each round times the copy and the layer
back to back, so that on a shared host they see the same load.
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


class Copy:
    """np.copyto of a 256 MiB float32 array into another; seconds per copy."""

    def __init__(self, mib=256):
        self.a = np.ones(mib * (1 << 20) // 4, np.float32)
        self.b = np.empty_like(self.a)
        np.copyto(self.b, self.a)  # the pages exist before any timing

    def __call__(self):
        t0 = time.perf_counter()
        np.copyto(self.b, self.a)
        return time.perf_counter() - t0


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


def time_layer(cin, cout, threads, rounds, pool_mb, copy):
    """Per round: a copy, hot runs, cold runs; returns the medians over rounds of the
    read GB/s of the copy, of the hot and cold weight streams, and of each stream's
    ratio to the copy of its round (the host is shared: a round's figures share its
    load)."""
    import pyconv1x1
    wbytes = 4 * cin * cout
    count = max(2, int(pool_mb * (1 << 20) // wbytes))
    sessions = [pyconv1x1.InferenceSession(layer_model(cin, cout, s), threads=threads)
                for s in range(count)]
    feed = {"x": np.ones((1, cin, 1, 1), np.float32)}
    for s in sessions:
        s.run(None, feed)
    reps = max(20, int(2e8 // wbytes))
    rows = []
    for _ in range(rounds):
        c = copy.a.nbytes / copy() / 1e9
        t0 = time.perf_counter()
        for _ in range(reps):
            sessions[0].run(None, feed)
        hot = wbytes * reps / (time.perf_counter() - t0) / 1e9
        t0 = time.perf_counter()
        for s in sessions:
            s.run(None, feed)
        cold = wbytes * len(sessions) / (time.perf_counter() - t0) / 1e9
        rows.append((c, hot, cold, hot / c, cold / c))
    return [float(np.median(col)) for col in zip(*rows)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--pool-mb", type=float, default=640,
                    help="weights cycled over by the cold runs (MiB; > the caches)")
    args = ap.parse_args()
    copy = Copy()
    print("| layer | weights MB | threads | copy GB/s (read) | hot GB/s | hot / copy | "
          "cold GB/s | cold / copy |")
    print("|---|---|---|---|---|---|---|---|")
    for threads in [int(t) for t in args.threads.split(",")]:
        for name, cin, cout in LAYERS:
            c, hot, cold, rh, rc = time_layer(cin, cout, threads, args.rounds,
                                              args.pool_mb, copy)
            print(f"| {name} | {4 * cin * cout / 1e6:.1f} | {threads} | {c:.1f} | "
                  f"{hot:.1f} | {100 * rh:.0f}% | {cold:.1f} | {100 * rc:.0f}% |",
                  flush=True)


if __name__ == "__main__":
    main()
