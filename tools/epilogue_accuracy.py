#!/usr/bin/env python
"""Accuracy of the kernels' vectorized epilogue ops (pyconv1x1/_epilogue.h) against
float64, on every ISA variant this machine runs: the table the README states and
tests/test_epilogue.py bounds.

Usage::

    python tools/epilogue_accuracy.py

The sweep: 400,001 points evenly over [-20, 20], 20,001 magnitudes from 1e-38 to 3e38
of each sign, subnormals, +-0, +-inf, NaN. Each op runs through the element-wise kernel
(so with flush-to-zero, as every kernel runs: a subnormal input counts as 0). Max abs
error over every finite result; max relative error where |float64 result| >= 2^-100
(below that, flushed intermediates show: x * sigmoid(x) at x = -88 is a normal -5e-37,
sigmoid(-88) a flushed subnormal)."""
import numpy as np

from pyconv1x1 import _backend
from pyconv1x1.program.epilogue import Op

FLT_MIN = float(np.finfo(np.float32).tiny)
REL_FROM = 2.0 ** -100
MEASURED = ("sigmoid", "hardsigmoid", "hardswish", "tanh", "silu", "gelu", "gelu_tanh")


def sweep():
    dense = np.linspace(-20, 20, 400001, dtype=np.float32)
    mags = np.logspace(-38, 38.5, 20001).astype(np.float32)
    sub = np.array([1e-45, 1e-40, 1.1e-38], np.float32)
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, np.finfo(np.float32).max,
                        -np.finfo(np.float32).max], np.float32)
    return np.concatenate([dense, mags, -mags, sub, -sub, special])


def run_ops(kern, x, ops, nthreads=1):
    """Ops (program.epilogue.Op) on x through the element-wise kernel (scale 1, shift 0)."""
    y = np.empty_like(x)
    one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
    kern.affine_act(x, y, one, zero, 1, 1, x.size, -np.inf, np.inf, 1.0, nthreads,
                    tuple(op.kernel() for op in ops))
    return y


def op_errors(kern, name, x=None):
    """(max abs error, max relative error) of op `name` (default parameters)."""
    x = sweep() if x is None else x
    op = Op(name)
    y = run_ops(kern, x, [op]).astype(np.float64)
    xin = np.where(np.abs(x) < FLT_MIN, 0.0, x.astype(np.float64))  # DAZ
    ref = op.ref(xin)
    finite = np.isfinite(ref)
    with np.errstate(invalid="ignore"):
        err = np.abs(y - ref)
    rel_ok = finite & (np.abs(ref) >= REL_FROM)
    return float(err[finite].max()), float((err[rel_ok] / np.abs(ref[rel_ok])).max())


def main():
    variants = _backend.runnable_variants()
    x = sweep()
    print("| op | " + " | ".join(f"{v} abs | {v} rel" for v in variants) + " |")
    print("|---|" + "---:|---:|" * len(variants))
    for name in MEASURED:
        cells = []
        for v in variants:
            a, r = op_errors(_backend.kernels(v), name, x)
            cells += [f"{a:.2g}", f"{r:.2g}"]
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
