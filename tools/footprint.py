#!/usr/bin/env python
"""Start-up and memory footprint of pyconv1x1 against onnxruntime (issue 5).

Usage::

    python tools/footprint.py [MODEL.onnx] [--reps 5] [--threads N]

Every figure is measured in fresh subprocesses (``sys.executable -c ...``) so nothing is
cached between measurements; times are the median over --reps processes. Without a model
it uses the ``narrow16x32`` workload from tools/workloads.py (sixteen 32 -> 32 relu layers
at 1 x 32 x 224 x 224) saved to a temporary .onnx.

Figures:
* import time: ``import pyconv1x1`` vs ``import onnxruntime`` (timed inside the process,
  so interpreter start-up is excluded), whether onnx / google.protobuf got imported, and
  the time to reach ``pyconv1x1.InferenceSession`` (which loads numpy and the kernels).
* session creation: from the .onnx path (first session in a fresh process, which for
  pyconv1x1 includes importing onnx, and a second one in the same process); from a
  compiled plan (.pc1) when ``pyconv1x1.planfile`` exists.
* peak RSS a run adds: the process's peak RSS is reset (``/proc/self/clear_refs``) right
  before the first run, then read after it and after 10 runs; the output size is given
  apart (every run must return a new output array).
* time to the first result: imports (numpy included) + session + one run, from the start
  of a fresh process's script: what a short-lived process on a small device pays.
* file sizes: .onnx (+ external data) vs .pc1.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

TARGET_IMPORT_RATIO = 0.5
TARGET_RSS_RATIO = 0.5


def child_env():
    """The environment for the fresh processes: pyconv1x1 importable as it is here."""
    env = dict(os.environ)
    # measure imports as users see them, from cached bytecode: with
    # PYTHONDONTWRITEBYTECODE set (as in some sandboxes) every import recompiles its
    # sources, which costs pyconv1x1 ~15 ms and a compiled package like onnxruntime
    # little; the first (discarded) run of each figure writes the caches
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    spec = importlib.util.find_spec("pyconv1x1")
    if spec is None and os.path.isdir(os.path.join(REPO, "pyconv1x1")):
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (REPO, env.get("PYTHONPATH", "")) if p)
    return env


def fresh(code, env, cwd):
    """Run `code` in a fresh interpreter; it prints one JSON line last."""
    proc = subprocess.run([sys.executable, "-c", code], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        msg = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise RuntimeError(msg[:200])
    return json.loads(proc.stdout.strip().splitlines()[-1])


def median_of(code, env, cwd, reps, key):
    vals, last = [], None
    fresh(code, env, cwd)  # warm-up: bytecode caches, page cache
    for _ in range(reps):
        last = fresh(code, env, cwd)
        vals.append(last[key])
    return statistics.median(vals), last


# -- code run in the fresh processes ---------------------------------------------------

IMPORT_CODE = r"""
import json, sys, time
t0 = time.perf_counter()
import {module}
t1 = time.perf_counter()
seen = {{m: m in sys.modules for m in ("onnx", "google.protobuf", "numpy")}}
extra = None
if {touch!r}:
    t2 = time.perf_counter()
    getattr({module}, "InferenceSession")
    extra = time.perf_counter() - t2 + (t1 - t0)
    seen_after = {{m: m in sys.modules for m in ("onnx", "google.protobuf", "numpy")}}
else:
    seen_after = seen
print(json.dumps({{"s": t1 - t0, "touch_s": extra, "seen": seen, "seen_after": seen_after}}))
"""

# every measuring script's session maker, defined once its engine is imported (no
# braces: the scripts are str.format templates)
MAKE_CODE = r"""
def make():
    if engine == "pyconv1x1":
        return pyconv1x1.InferenceSession(path, threads=threads)
    so = ort.SessionOptions()
    if threads:
        so.intra_op_num_threads = threads
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])
"""

SESSION_CODE = r"""
import json, sys, time
engine, path, threads, preimport = {engine!r}, {path!r}, {threads!r}, {preimport!r}
if preimport:
    import onnx  # noqa: F401  (measure session creation without onnx's import cost)
if engine == "pyconv1x1":
    import pyconv1x1
    pyconv1x1.InferenceSession  # the package's own import cost is not session creation
else:
    import onnxruntime as ort
""" + MAKE_CODE + r"""
t0 = time.perf_counter(); s = make(); t1 = time.perf_counter()
del s
t2 = time.perf_counter(); s = make(); t3 = time.perf_counter()
print(json.dumps({{"cold": t1 - t0, "warm": t3 - t2, "onnx_loaded": "onnx" in sys.modules,
                  "protobuf_loaded": "google.protobuf" in sys.modules}}))
"""

FIRST_RESULT_CODE = r"""
import time
t0 = time.perf_counter()
import json, sys
engine, path, threads, shape = {engine!r}, {path!r}, {threads!r}, {shape!r}
import numpy as np
if engine == "pyconv1x1":
    import pyconv1x1
else:
    import onnxruntime as ort
""" + MAKE_CODE + r"""
s = make()
x = np.zeros(shape, np.float32)
y = s.run(None, {{s.get_inputs()[0].name: x}})[0]
print(json.dumps({{"s": time.perf_counter() - t0}}))
"""

RSS_CODE = r"""
import gc, json, sys
import numpy as np
engine, path, threads, shape = {engine!r}, {path!r}, {threads!r}, {shape!r}

def status():
    out = {{}}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) * 1024
    return out

after_import_base = status()["VmRSS"]
if engine == "pyconv1x1":
    import pyconv1x1
    pyconv1x1.InferenceSession
else:
    import onnxruntime as ort
after_import = status()["VmRSS"]
""" + MAKE_CODE + r"""
s = make()
name = s.get_inputs()[0].name
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
gc.collect()
after_session = status()["VmRSS"]
reset = True
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")   # reset VmHWM to the current RSS
except OSError:
    reset = False
base = status()
y = s.run(None, {{name: x}})[0]
first = status()["VmHWM"]
out_bytes = int(y.nbytes)
for _ in range(9):
    del y   # the previous output is freed first: a run's own peak, not two outputs
    y = s.run(None, {{name: x}})[0]
ten = status()["VmHWM"]
print(json.dumps({{"reset": reset, "base_rss": base["VmRSS"],
                  "base_hwm": base["VmHWM"], "first": first - base["VmRSS"],
                  "ten": ten - base["VmRSS"], "out_bytes": out_bytes,
                  "in_bytes": int(x.nbytes),
                  "session_rss": after_session - after_import - int(x.nbytes),
                  "import_rss": after_import - after_import_base,
                  "onnx_loaded": "onnx" in sys.modules}}))
"""


def input_shape(path):
    sys.path.insert(0, HERE)
    import workloads
    return list(workloads.from_path(path).x.shape)


def compile_plan(onnx_path, pc1_path, env, cwd):
    """Compile through pyconv1x1.planfile in a fresh process; returns None or a reason."""
    code = ("import json, pyconv1x1.planfile as p\n"
            f"p.compile_model({onnx_path!r}, {pc1_path!r})\n"
            "print(json.dumps({'ok': True}))\n")
    try:
        fresh(code, env, cwd)
        return None
    except RuntimeError as e:
        return f"compile failed: {e}"


def plan_module_available(env, cwd):
    code = ("import importlib.util, json\n"
            "print(json.dumps({'ok': importlib.util.find_spec('pyconv1x1.planfile') "
            "is not None}))\n")
    try:
        return fresh(code, env, cwd)["ok"]
    except RuntimeError:
        return False


def file_size(path):
    total = os.path.getsize(path)
    # external data beside the model (the exporters' default name, or any *.data next to it)
    for cand in (path + ".data", os.path.splitext(path)[0] + ".data"):
        if os.path.isfile(cand):
            total += os.path.getsize(cand)
            break
    return total


def _ms(s):
    return "-" if s is None else f"{1e3 * s:.1f} ms"


def _mb(b):
    return "-" if b is None else f"{b / 2**20:.2f} MiB"


def _ratio(a, b):
    return "-" if a is None or not b else f"{a / b:.2f}"


def measure(args, model_path, work):
    env = child_env()
    reps = args.reps
    rows = []   # (figure, ours, ort, ratio, target, ok)
    notes = []

    def row(figure, ours, ort, fmt, target=None, limit=None):
        ratio = None if ours is None or not ort else ours / ort
        ok = None if limit is None or ratio is None else ratio <= limit
        rows.append((figure, fmt(ours), fmt(ort), _ratio(ours, ort), target or "", ok))

    # import time
    print("measuring import time ...", file=sys.stderr, flush=True)
    try:
        ours_imp, last = median_of(IMPORT_CODE.format(module="pyconv1x1", touch=False),
                                   env, work, reps, "s")
        ort_imp, _ = median_of(IMPORT_CODE.format(module="onnxruntime", touch=False),
                               env, work, reps, "s")
        row("import", ours_imp, ort_imp, _ms, f"ratio <= {TARGET_IMPORT_RATIO}",
            TARGET_IMPORT_RATIO)
        seen = last["seen"]
        notes.append("`import pyconv1x1` imported: " + ", ".join(
            f"{m} {'YES' if v else 'no'}" for m, v in seen.items()))
        ours_touch, last = median_of(IMPORT_CODE.format(module="pyconv1x1", touch=True),
                                     env, work, reps, "touch_s")
        row("import + pyconv1x1.InferenceSession", ours_touch, ort_imp, _ms)
        notes.append("after touching pyconv1x1.InferenceSession: " + ", ".join(
            f"{m} {'YES' if v else 'no'}" for m, v in last["seen_after"].items()))
    except RuntimeError as e:
        notes.append(f"import time: failed: {e}")

    # session creation
    print("measuring session creation ...", file=sys.stderr, flush=True)
    sess = {}
    for engine in ("pyconv1x1", "onnxruntime"):
        code = SESSION_CODE.format(engine=engine, path=model_path, threads=args.threads,
                                   preimport=False)
        code_pre = SESSION_CODE.format(engine=engine, path=model_path,
                                       threads=args.threads, preimport=True)
        try:
            cold, last = median_of(code, env, work, reps, "cold")
            warm, _ = median_of(code, env, work, reps, "warm")
            pre, _ = median_of(code_pre, env, work, reps, "cold")
            sess[engine] = (cold, warm, pre, last)
        except RuntimeError as e:
            sess[engine] = (None, None, None, {"error": str(e)})
            notes.append(f"session creation ({engine}): failed: {e}")
    o, r = sess["pyconv1x1"], sess["onnxruntime"]
    row("session from .onnx, 1st in process", o[0], r[0], _ms, "ratio < 1", 0.999)
    row("  same, onnx already imported", o[2], r[2], _ms)
    row("session from .onnx, 2nd in process", o[1], r[1], _ms, "ratio < 1", 0.999)

    # compiled plan
    onnx_size = file_size(model_path)
    pc1_size = None
    pc1_path = os.path.join(work, "model.pc1")
    if plan_module_available(env, work):
        why = compile_plan(model_path, pc1_path, env, work)
        if why:
            notes.append(f"compiled plan: {why}")
        else:
            pc1_size = os.path.getsize(pc1_path)
            code = SESSION_CODE.format(engine="pyconv1x1", path=pc1_path,
                                       threads=args.threads, preimport=False)
            try:
                cold, last = median_of(code, env, work, reps, "cold")
                warm, _ = median_of(code, env, work, reps, "warm")
                row("session from .pc1, 1st in process", cold, r[0], _ms, "ratio < 1",
                    0.999)
                row("session from .pc1, 2nd in process", warm, r[1], _ms)
                notes.append("loading the .pc1 imported onnx: "
                             f"{'YES' if last['onnx_loaded'] else 'no'}, protobuf: "
                             f"{'YES' if last['protobuf_loaded'] else 'no'}")
            except RuntimeError as e:
                notes.append(f"session from .pc1: failed: {e}")
    else:
        notes.append("compiled plan (.pc1): not available (no pyconv1x1.planfile module)")

    # time to the first result: imports + session + one run, in a fresh process
    print("measuring time to first result ...", file=sys.stderr, flush=True)
    shape = input_shape(model_path)
    first = {}
    for label, engine, path in (("onnx", "pyconv1x1", model_path),
                                ("pc1", "pyconv1x1", pc1_path if pc1_size else None),
                                ("ort", "onnxruntime", model_path)):
        if path is None:
            continue
        code = FIRST_RESULT_CODE.format(engine=engine, path=path, threads=args.threads,
                                        shape=shape)
        try:
            first[label] = median_of(code, env, work, reps, "s")[0]
        except RuntimeError as e:
            notes.append(f"time to first result ({label}): failed: {e}")
    row("import + session + 1st run, from .onnx", first.get("onnx"), first.get("ort"), _ms)
    if "pc1" in first:
        row("import + session + 1st run, from .pc1", first.get("pc1"), first.get("ort"),
            _ms)

    # memory
    print("measuring peak RSS ...", file=sys.stderr, flush=True)
    mem = {}
    for engine in ("pyconv1x1", "onnxruntime"):
        code = RSS_CODE.format(engine=engine, path=model_path, threads=args.threads,
                               shape=shape)
        try:
            firsts, tens, last = [], [], None
            for _ in range(max(1, min(reps, 3))):
                last = fresh(code, env, work)
                firsts.append(last["first"])
                tens.append(last["ten"])
            mem[engine] = (statistics.median(firsts), statistics.median(tens), last)
        except RuntimeError as e:
            mem[engine] = (None, None, {})
            notes.append(f"peak RSS ({engine}): failed: {e}")
    o, r = mem["pyconv1x1"], mem["onnxruntime"]
    row("peak RSS added by the 1st run", o[0], r[0], _mb, f"ratio <= {TARGET_RSS_RATIO}",
        TARGET_RSS_RATIO)
    row("peak RSS added over 10 runs", o[1], r[1], _mb)
    row("RSS of the session (incl. lazy imports)", o[2].get("session_rss"),
        r[2].get("session_rss"), _mb)
    row("RSS added by the import (numpy loaded)", o[2].get("import_rss"),
        r[2].get("import_rss"), _mb)
    if pc1_size is not None:
        code = RSS_CODE.format(engine="pyconv1x1", path=pc1_path, threads=args.threads,
                               shape=shape)
        try:
            last = fresh(code, env, work)
            row("peak RSS added by the 1st run, .pc1 session", last["first"], r[0], _mb)
            row("RSS of the session from .pc1", last["session_rss"],
                r[2].get("session_rss"), _mb)
        except RuntimeError as e:
            notes.append(f"peak RSS (.pc1 session): failed: {e}")
    for eng, (_, _, last) in mem.items():
        if last and not last.get("reset"):
            notes.append(f"{eng}: /proc/self/clear_refs not writable; peak RSS is measured "
                         "against the process's earlier peak (an under-estimate)")
    last = o[2] or r[2]
    if last:
        notes.append(f"input {_mb(last['in_bytes'])}, output {_mb(last['out_bytes'])}: a run "
                     "must at least allocate its output")

    # file sizes
    rows.append(("model file size", _mb(pc1_size) + " (.pc1)", _mb(onnx_size) + " (.onnx)",
                 _ratio(pc1_size, onnx_size), "", None))
    return rows, notes


def print_table(rows, notes, model_desc, markdown):
    cols = ("figure", "pyconv1x1", "onnxruntime", "ours/ort", "target")
    body = [(f, o, r, ra, (t + (" PASS" if ok else " FAIL") if ok is not None else t))
            for f, o, r, ra, t, ok in rows]
    print(f"\nmodel: {model_desc}")
    if markdown:
        print("| " + " | ".join(cols) + " |")
        print("|---|---:|---:|---:|---|")
        for b in body:
            print("| " + " | ".join(b) + " |")
    else:
        widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
        line = "  ".join(c.ljust(w) if i in (0, 4) else c.rjust(w)
                         for i, (c, w) in enumerate(zip(cols, widths)))
        print(line)
        print("-" * len(line))
        for b in body:
            print("  ".join(v.ljust(w) if i in (0, 4) else v.rjust(w)
                            for i, (v, w) in enumerate(zip(b, widths))))
    print()
    for n in notes:
        print(f"- {n}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", nargs="?", help=".onnx model (default: narrow16x32 workload)")
    ap.add_argument("--reps", type=int, default=5, help="fresh processes per figure")
    ap.add_argument("--threads", type=int, default=None,
                    help="threads for both runtimes (default: each runtime's default)")
    ap.add_argument("--markdown", action="store_true", help="print a Markdown table")
    args = ap.parse_args(argv)
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    with tempfile.TemporaryDirectory(prefix="pc1-footprint-") as work:
        if args.model:
            if not os.path.isfile(args.model):
                ap.error(f"no such model file: {args.model}")
            model_path = os.path.abspath(args.model)
            desc = model_path
        else:
            sys.path.insert(0, HERE)
            import workloads
            wl = workloads.build("narrow16x32")
            model_path = wl.save(os.path.join(work, "narrow16x32.onnx"))
            desc = (f"narrow16x32 (sixteen 32->32 relu 1x1 convs, input "
                    f"{list(wl.x.shape)}), saved to a temporary .onnx")
        desc += (f"; threads {args.threads or 'default'}; medians over {args.reps} fresh "
                 "processes")
        rows, notes = measure(args, model_path, work)
        print_table(rows, notes, desc, args.markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
