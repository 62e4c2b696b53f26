"""`tools/bench.py --int8`: the issue-4 workloads quantized both ways (QDQ s8, as
onnxruntime.quantization.quantize_static writes by default, per-channel weights; and
QOperator u8 activations / s8 weights, per channel), timed on pyconv1x1 against
onnxruntime's int8 on the same model and against pyconv1x1's float32 on the float model,
in interleaved rounds (pyconv1x1._timing: ratios of blocks timed in the same round).

    python tools/bench.py --int8 [--threads 1,2] [--workloads tiny,big256] [--quick]
                          [--fallback]

--fallback also times the quantized chains forced onto the float32 kernels
(PYCONV1X1_INT8_FALLBACK=float, bitwise the same results) and forced onto the int8 path
(=int). Run with PYCONV1X1_ISA=v3 PYCONV1X1_INT8_PATH=avx2 to see what a CPU without VNNI
(AVX2 only) gets. Targets (issue 12): geomean >= 1.3x onnxruntime int8 at every thread
count, no workload below 1.0x, and >= 2x our float32 on a VNNI machine."""
import contextlib
import math
import os
import sys
import tempfile

import numpy as np

TARGET_GEOMEAN = 1.3
TARGET_MIN = 1.0
TARGET_VS_F32 = 2.0
FORMATS = ("qdq_s8", "qop_u8")


@contextlib.contextmanager
def _env(key, value):
    old = os.environ.get(key)
    os.environ[key] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def quantize(wl, fmt, tmp):
    """The workload's float model quantized as `fmt` (calibrated on 4 random inputs)."""
    import onnx
    from onnxruntime import quantization as q

    class Feeds(q.CalibrationDataReader):
        def __init__(self):
            rng = np.random.default_rng(7)
            self.it = iter([{"input": rng.standard_normal(wl.x.shape).astype(np.float32)}
                            for _ in range(4)])

        def get_next(self):
            return next(self.it, None)

    src = os.path.join(tmp, f"{wl.name}.onnx")
    dst = os.path.join(tmp, f"{wl.name}_{fmt}.onnx")
    onnx.save(wl.model, src)
    if fmt == "qdq_s8":
        options = dict(quant_format=q.QuantFormat.QDQ, activation_type=q.QuantType.QInt8)
    else:
        options = dict(quant_format=q.QuantFormat.QOperator,
                       activation_type=q.QuantType.QUInt8)
    q.quantize_static(src, dst, Feeds(), weight_type=q.QuantType.QInt8, per_channel=True,
                      **options)
    return onnx.load(dst).SerializeToString()


def engines(wl, models, threads, fallback):
    """name -> zero-argument callable, and the int8 path line of our quantized runs."""
    import onnxruntime as ort
    import pyconv1x1
    from pyconv1x1.quant import int8_path
    feed = {"input": wl.x}
    out = {}
    paths = {}

    def ours(model, key, mode=None):
        with (_env("PYCONV1X1_INT8_FALLBACK", mode) if mode else contextlib.nullcontext()):
            sess = pyconv1x1.InferenceSession(model, threads=threads)
        out[key] = lambda: sess.run(None, feed)
        if sess.int8_path:
            paths[key] = int8_path(sess.program, sess.kernel_variant, sess._kset.chains)

    def theirs(model, key):
        opt = ort.SessionOptions()
        opt.intra_op_num_threads, opt.inter_op_num_threads = threads, 1
        opt.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        sess = ort.InferenceSession(model, sess_options=opt,
                                    providers=["CPUExecutionProvider"])
        out[key] = lambda: sess.run(None, feed)

    ours(wl.model_bytes(), "ours_f32")
    for fmt in FORMATS:
        ours(models[fmt], f"ours_{fmt}")
        theirs(models[fmt], f"ort_{fmt}")
        if fallback:
            ours(models[fmt], f"ours_{fmt}_float", "float")
            ours(models[fmt], f"ours_{fmt}_int", "int")
    return out, paths


def bench(wl, models, threads, cfg, fallback):
    from pyconv1x1._timing import Rounds
    live, paths = engines(wl, models, threads, fallback)
    counts = {}
    for name, fn in live.items():
        fn()
        fn()
        import time
        t0 = time.perf_counter()
        fn()
        est = max(time.perf_counter() - t0, 1e-7)
        counts[name] = int(min(2000, max(3, round(cfg["block_s"] / est))))
    rounds = Rounds(live, settle_s=0.02, rotate=True)
    for _ in range(cfg["rounds"]):
        rounds.round(counts)
    res = {"paths": paths}
    for fmt in FORMATS:
        res[f"vs_ort_{fmt}"] = rounds.ratio(f"ort_{fmt}", f"ours_{fmt}").median
        res[f"vs_f32_{fmt}"] = rounds.ratio("ours_f32", f"ours_{fmt}").median
        if fallback:
            res[f"float_vs_int_{fmt}"] = rounds.ratio(f"ours_{fmt}_int",
                                                      f"ours_{fmt}_float").median
            res[f"float_vs_f32_{fmt}"] = rounds.ratio("ours_f32",
                                                      f"ours_{fmt}_float").median
            res[f"int_vs_f32_{fmt}"] = rounds.ratio("ours_f32", f"ours_{fmt}_int").median
    return res


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values))


def main(args):
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.dirname(here)]  # workloads; pyconv1x1 from this tree
    import workloads
    from pyconv1x1 import _backend
    names = (workloads.NAMES if args.workloads in ("all", None)
             else args.workloads.split(","))
    threads = [int(t) for t in args.threads.split(",")]
    cfg = {"rounds": args.rounds or (3 if args.quick else 7),
           "block_s": (args.block_ms or (20 if args.quick else 60)) / 1e3}
    fallback = getattr(args, "fallback", False)
    try:
        qpath = _backend.int8_path()
    except ImportError:
        qpath = "numpy reference"
    print(f"int8 bench: float variant {_backend.kernels().VARIANT}, int8 path {qpath}, "
          f"threads {threads}, {cfg['rounds']} rounds")
    cols = ["ort qdq_s8", "ort qop_u8", "f32 qdq_s8", "f32 qop_u8"]
    if fallback:
        cols += ["fb/int qdq", "fb/f32 qdq", "int/f32 qdq"]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for name in names:
            wl = workloads.build(name)
            models[name] = (wl, {fmt: quantize(wl, fmt, tmp) for fmt in FORMATS})
        for t in threads:
            print(f"\nthreads={t}  (x = their time / ours; fb = quantized chains on the "
                  "float kernels)")
            print(f"{'workload':16s}" + "".join(f"{c:>12s}" for c in cols) + "  int8 path")
            rows = {}
            for name in names:
                wl, qm = models[name]
                r = rows[name] = bench(wl, qm, t, cfg, fallback)
                vals = [r["vs_ort_qdq_s8"], r["vs_ort_qop_u8"], r["vs_f32_qdq_s8"],
                        r["vs_f32_qop_u8"]]
                if fallback:
                    vals += [r["float_vs_int_qdq_s8"], r["float_vs_f32_qdq_s8"],
                             r["int_vs_f32_qdq_s8"]]
                print(f"{name:16s}" + "".join(f"{v:11.2f}x" for v in vals)
                      + "  " + r["paths"].get("ours_qdq_s8", "?"))
            vs_ort = [rows[n][f"vs_ort_{f}"] for n in names for f in FORMATS]
            vs_f32 = [rows[n][f"vs_f32_{f}"] for n in names for f in FORMATS]
            g_ort, g_f32 = geomean(vs_ort), geomean(vs_f32)
            means = [geomean(v) for v in (vs_ort[0::2], vs_ort[1::2], vs_f32[0::2],
                                           vs_f32[1::2])]
            print(f"{'geomean':16s}" + "".join(f"{v:11.2f}x" for v in means))
            vnni = qpath in ("amx", "avx512vnni", "avxvnni")
            checks = [
                (f"geomean vs onnxruntime int8 {g_ort:.2f}x >= {TARGET_GEOMEAN}x",
                 g_ort >= TARGET_GEOMEAN),
                (f"min vs onnxruntime int8 {min(vs_ort):.2f}x >= {TARGET_MIN}x",
                 min(vs_ort) >= TARGET_MIN),
                (f"geomean vs our float32 {g_f32:.2f}x >= "
                 f"{TARGET_VS_F32 if vnni else 1.0}x ({'VNNI' if vnni else 'no VNNI'})",
                 g_f32 >= (TARGET_VS_F32 if vnni else 1.0))]
            for text, good in checks:
                print(f"  {'PASS' if good else 'MISS'}  {text}")
                ok = ok and good
    return 0 if ok else 1
