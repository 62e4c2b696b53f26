"""THE comparison rule of pyconv1x1's outputs against a reference, used by
`pyconv1x1 validate`, the tests and the tools.

An output passes when, over the whole tensor,

    max |got - expected| <= atol + rtol * max |expected|

with NaN in the same places and infinities equal. Why per tensor, scaled by the
reference's largest magnitude: a float32 kernel accumulates K products with a rounding
error of the order of K * eps(float32) * sum |w * x|, a magnitude set by the tensor's
inputs, not by each element (an element that cancels to nearly 0 carries the same
absolute error as its neighbours, so a per-element relative bound would be meaningless).
The default rtol, 1e-5 (about 84 float32 ulps at the tensor's scale), leaves room for
accumulation lengths in the thousands.

atol=None (the default everywhere, the command line included) means 0, except for a
reference with no nonzero finite value: it has no magnitude to scale by, and the bound is
then rtol itself, as if the magnitude were 1. The relative error reported is
max |got - expected| / max |expected|, or max |got - expected| for such a reference, so
that "rel err <= rtol" is the verdict in both cases.
"""
import math
from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

DEFAULT_RTOL = 1e-5

__all__ = ["DEFAULT_RTOL", "OutputError", "MatchReport", "output_error", "compare",
           "compare_outputs"]


@dataclass(frozen=True)
class OutputError:
    """How far one output is from its reference.

    rel_err is max_abs_err / max|reference| (max_abs_err itself when the reference is
    all zeros); worst is the index of the element with the largest absolute error."""
    name: str
    shape: Tuple[int, ...]
    expected_shape: Tuple[int, ...]
    max_abs_err: float
    max_abs_ref: float
    rel_err: float
    worst: Optional[Tuple[int, ...]] = None
    got_value: Optional[float] = None
    expected_value: Optional[float] = None
    ok: bool = True
    problem: str = ""          # shape, NaN or dtype mismatch, said in words

    def describe(self):
        status = "ok" if self.ok else "MISMATCH"
        head = f"output {self.name!r} shape {list(self.shape)}"
        if self.problem:
            return f"{head}: {self.problem}  {status}"
        text = (f"{head}: max abs err {self.max_abs_err:.3g}, max |ref| "
                f"{self.max_abs_ref:.3g}, rel err {self.rel_err:.3g}")
        if self.worst is not None and self.max_abs_err > 0:
            text += (f", worst at {tuple(self.worst)} (got {self.got_value:.9g}, "
                     f"expected {self.expected_value:.9g})")
        return f"{text}  {status}"


@dataclass
class MatchReport:
    """What a comparison found: one OutputError per output, and how it was run."""
    outputs: List[OutputError]
    rtol: float
    atol: float
    exporter: Optional[str] = None
    threads: Optional[int] = None
    op_types: Tuple[str, ...] = ()     # ops of the exported graph, in file order
    runs: int = 1                      # input sets compared (several for dynamic shapes)

    @property
    def ok(self):
        return all(o.ok for o in self.outputs)

    @property
    def max_rel_err(self):
        return max((o.rel_err for o in self.outputs), default=0.0)

    @property
    def max_abs_err(self):
        return max((o.max_abs_err for o in self.outputs), default=0.0)

    def errors(self):
        """{output name: rel err} (the worst over every run)."""
        out = {}
        for o in self.outputs:
            out[o.name] = max(out.get(o.name, 0.0), o.rel_err)
        return out

    def format(self, title=None):
        where = []
        if self.exporter:
            where.append(f"exporter={self.exporter}")
        if self.threads is not None:
            where.append(f"threads={self.threads}")
        where.append(f"rtol={self.rtol:g}, atol={self.atol:g}")
        title = title or ("outputs match" if self.ok else "outputs do not match")
        lines = [f"{title} ({', '.join(where)}):"]
        lines += ["  " + o.describe() for o in self.outputs]
        if self.op_types:
            lines.append(f"  exported graph ops: {' '.join(self.op_types)}")
        return "\n".join(lines)

    __str__ = format


def output_error(name, got, expected, rtol=DEFAULT_RTOL, atol=None):
    """One output against its reference under the rule (see the module): an
    OutputError, whose .ok is the verdict."""
    got = np.asarray(got)
    expected = np.asarray(expected)
    base = dict(name=name, shape=tuple(got.shape), expected_shape=tuple(expected.shape))
    if got.shape != expected.shape:
        return OutputError(**base, max_abs_err=math.inf, max_abs_ref=math.nan,
                           rel_err=math.inf, ok=False,
                           problem=f"shape {list(got.shape)}, expected "
                                   f"{list(expected.shape)}")
    if got.size == 0:
        return OutputError(**base, max_abs_err=0.0, max_abs_ref=0.0, rel_err=0.0)
    g = got.astype(np.float64)
    e = expected.astype(np.float64)
    nan_g, nan_e = np.isnan(g), np.isnan(e)
    if not np.array_equal(nan_g, nan_e):
        where = tuple(int(i) for i in np.argwhere(nan_g != nan_e)[0])
        return OutputError(**base, max_abs_err=math.inf, max_abs_ref=math.nan,
                           rel_err=math.inf, worst=where, ok=False,
                           problem=f"NaN in one but not the other, first at {where} "
                                   f"(got {g[where]!r}, expected {e[where]!r})")
    inf_g, inf_e = np.isinf(g), np.isinf(e)
    if not np.array_equal(inf_g & (g > 0), inf_e & (e > 0)) or \
            not np.array_equal(inf_g & (g < 0), inf_e & (e < 0)):
        where = tuple(int(i) for i in np.argwhere((g != e) & (inf_g | inf_e))[0])
        return OutputError(**base, max_abs_err=math.inf, max_abs_ref=math.nan,
                           rel_err=math.inf, worst=where, ok=False,
                           problem=f"Inf in one but not the other, first at {where} "
                                   f"(got {g[where]!r}, expected {e[where]!r})")
    finite = np.isfinite(e)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf where both are inf
        diff = np.where(finite, np.abs(g - e), 0.0)
    flat = int(np.argmax(diff))
    worst = tuple(int(i) for i in np.unravel_index(flat, diff.shape))
    max_abs = float(diff[worst])
    max_ref = float(np.max(np.abs(e[finite]))) if finite.any() else 0.0
    rel = max_abs / max_ref if max_ref > 0 else max_abs
    if atol is None:
        atol = rtol if max_ref == 0 else 0.0
    ok = max_abs <= atol + rtol * max_ref
    return OutputError(**base, max_abs_err=max_abs, max_abs_ref=max_ref, rel_err=rel,
                       worst=worst, got_value=float(g[worst]),
                       expected_value=float(e[worst]), ok=bool(ok))


def compare(actual, expected, rtol=DEFAULT_RTOL, atol=None):
    """(max abs error, relative error, passed) of one output against its reference,
    under the rule (see the module)."""
    o = output_error("", actual, expected, rtol, atol)
    return o.max_abs_err, o.rel_err, o.ok


def compare_outputs(got, expected, rtol=DEFAULT_RTOL, atol=None, names=None):
    """Compare two output sets; returns a MatchReport (see its `.ok` and `.format()`).

    got, expected: dicts name -> array, or sequences of arrays in the same order
    (names then labels them). An output passes when
    max|got - expected| <= atol + rtol * max|expected| over the whole tensor, NaN and
    Inf in the same places. atol=None means 0, except for an all-zero reference, where
    it is rtol (so an exact 0 still compares sensibly).
    """
    if isinstance(got, dict) != isinstance(expected, dict):
        raise TypeError("got and expected must both be dicts or both be sequences")
    if isinstance(expected, dict):
        missing = [k for k in expected if k not in got]
        if missing:
            raise AssertionError(f"outputs {missing} are missing; got {list(got)}")
        pairs = [(k, got[k], expected[k]) for k in expected]
    else:
        got, expected = list(got), list(expected)
        if len(got) != len(expected):
            raise AssertionError(f"{len(got)} outputs, expected {len(expected)}")
        names = list(names) if names is not None else [f"#{i}" for i in range(len(got))]
        pairs = list(zip(names, got, expected))
    outputs = [output_error(name, g, e, rtol, atol) for name, g, e in pairs]
    return MatchReport(outputs=outputs, rtol=rtol, atol=0.0 if atol is None else atol)
