#!/usr/bin/env python
"""Validate every model in a folder (default: models/) and print a table.

Usage::

    python tools/validate_models.py [--models DIR] [--threads N] [--rtol 1e-5]

For each ``<stem>.onnx`` with ``<stem>.inputs.npz`` beside it, pyconv1x1's output is
compared with:

* recorded    - ``<stem>.outputs.npz`` (PyTorch's own output, stored at export time);
* onnxruntime - the same model run by onnxruntime (when installed);
* torch ref   - the graph rebuilt with torch ops, pyconv1x1.testing.run_torch_reference
                (when torch is installed).

Each cell is the worst relative error over the outputs (max |ours - theirs| / max
|theirs|); "-" when that side is unavailable. Exit status 0 when every comparison is
within --rtol/--atol, 1 otherwise, 2 when a model cannot be loaded.
"""
import argparse
import glob
import importlib.util
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # run from a checkout without installing

import pyconv1x1  # noqa: E402
from pyconv1x1.testing import compare_outputs, run_reference  # noqa: E402


def _load_npz(path):
    with np.load(path) as f:
        return dict(f)


def _engine(kind, module, path, feeds, threads):
    """The outputs of reference `kind` (pyconv1x1.testing.run_reference), or None when
    its engine (`module`) is not installed."""
    if importlib.util.find_spec(module) is None:
        return None
    return run_reference(kind, path, feeds, threads)


def validate(path, threads, rtol, atol):
    """One table row: {column: (rel err or None, ok)} plus timings."""
    stem = path[:-len(".onnx")]
    feeds = _load_npz(stem + ".inputs.npz")
    sess = pyconv1x1.InferenceSession(path, threads=threads)
    names = [o.name for o in sess.get_outputs()]
    ours = dict(zip(names, sess.run(None, feeds)))   # the first run also plans
    t0 = time.perf_counter()
    sess.run(None, feeds)
    run_ms = (time.perf_counter() - t0) * 1e3
    row = {"model": os.path.basename(path), "run ms": f"{run_ms:.2f}",
           "outputs": ", ".join(f"{n}{list(ours[n].shape)}" for n in names)}
    results = {}
    sides = [("recorded", lambda: _load_npz(stem + ".outputs.npz")
              if os.path.isfile(stem + ".outputs.npz") else None),
             ("onnxruntime", lambda: _engine("onnxruntime", "onnxruntime", path, feeds,
                                             threads)),
             ("torch ref", lambda: _engine("torch", "torch", path, feeds, threads))]
    for column, get in sides:
        try:
            theirs = get()
        except Exception as exc:  # the other side failed: show it, count it as a failure
            results[column] = (None, False, f"{type(exc).__name__}: {exc}".splitlines()[0])
            continue
        if theirs is None:
            results[column] = (None, True, "")
            continue
        try:
            report = compare_outputs(ours, theirs, rtol=rtol, atol=atol)
        except AssertionError as exc:
            results[column] = (None, False, str(exc))
            continue
        results[column] = (report.max_rel_err, report.ok,
                           "" if report.ok else report.format())
    return row, results


def _table(rows, columns):
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) for r in rows]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=os.path.join(os.path.dirname(HERE), "models"),
                    help="folder of <stem>.onnx with <stem>.inputs.npz (default: models/)")
    ap.add_argument("--threads", type=int, default=None, help="threads (default: all)")
    ap.add_argument("--rtol", type=float, default=1e-5)
    ap.add_argument("--atol", type=float, default=None)
    args = ap.parse_args(argv)

    paths = [p for p in sorted(glob.glob(os.path.join(args.models, "*.onnx")))
             if os.path.isfile(p[:-len(".onnx")] + ".inputs.npz")]
    if not paths:
        print(f"no <stem>.onnx with <stem>.inputs.npz in {args.models}", file=sys.stderr)
        return 2
    columns = ["model", "outputs", "recorded", "onnxruntime", "torch ref", "run ms",
               "status"]
    rows, details, status = [], [], 0
    for path in paths:
        try:
            row, results = validate(path, args.threads, args.rtol, args.atol)
        except pyconv1x1.Error as exc:
            rows.append([os.path.basename(path), "-", "-", "-", "-", "-", "LOAD ERROR"])
            details.append(f"{os.path.basename(path)}: {type(exc).__name__}: {exc}")
            status = max(status, 2)
            continue
        cells, ok = [], True
        for column in ("recorded", "onnxruntime", "torch ref"):
            err, good, detail = results[column]
            cells.append("-" if err is None and good else
                         "FAILED" if err is None else f"{err:.2e}")
            ok &= good
            if detail:
                details.append(f"{row['model']} vs {column}: {detail}")
        rows.append([row["model"], row["outputs"], *cells, row["run ms"],
                     "ok" if ok else "MISMATCH"])
        if not ok:
            status = max(status, 1)
    from pyconv1x1._threads import resolve_threads
    sess_threads = resolve_threads(args.threads)
    print(f"pyconv1x1 {pyconv1x1.__version__}: {len(paths)} model(s) in {args.models}, "
          f"threads={sess_threads}, rtol={args.rtol:g}, atol={args.atol or 0:g} "
          "(cells: max rel err of pyconv1x1 vs that side)")
    print(_table(rows, columns))
    for d in details:
        print(d)
    return status


if __name__ == "__main__":
    sys.exit(main())
