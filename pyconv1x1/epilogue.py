"""Epilogue ops: one table row per element-wise op a conv (or an element-wise step) can
apply to its output after the bias. Kernel side: pyconv1x1/_epilogue.h."""
import math

import numpy as np

_erfc = np.frompyfunc(math.erfc, 1, 1)


def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _hardsigmoid(x, alpha, beta):
    return np.clip(alpha * x + beta, 0.0, 1.0)


def _gelu_erf(x):
    """x / 2 * (1 + erf(x / sqrt 2)), as x / 2 * erfc(-x / sqrt 2): equal, without the
    cancellation of 1 + erf for x < 0 (in float64 too)"""
    x = np.asarray(x, np.float64)
    return 0.5 * x * _erfc(-x / math.sqrt(2.0)).astype(np.float64)


def _gelu_tanh(x):
    """x / 2 * (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3), as x * sigmoid(2u)"""
    with np.errstate(over="ignore", invalid="ignore"):
        return x * _sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))


class OpKind:
    """name: as in plan files and descriptions; opcode: _epilogue.h's PC1_OP_*;
    params: parameter names with defaults; per_channel: the first parameter may be a
    vector over output channels; ref(x, *params): float64 numpy reference."""
    __slots__ = ("name", "opcode", "params", "per_channel", "ref")

    def __init__(self, name, opcode, params, per_channel, ref):
        self.name, self.opcode, self.params = name, opcode, tuple(params)
        self.per_channel, self.ref = per_channel, ref


OPS = {k.name: k for k in (
    OpKind("clamp", 1, (("lo", -math.inf), ("hi", math.inf)), False,
           lambda x, lo, hi: np.clip(x, lo, hi)),
    OpKind("prelu", 2, (("slope", 0.01),), True,
           lambda x, slope: np.where(x < 0, x * slope, x)),
    OpKind("sigmoid", 3, (), False, _sigmoid),
    OpKind("hardsigmoid", 4, (("alpha", 0.2), ("beta", 0.5)), False, _hardsigmoid),
    OpKind("hardswish", 5, (), False, lambda x: x * _hardsigmoid(x, 1.0 / 6.0, 0.5)),
    OpKind("tanh", 6, (), False, np.tanh),
    OpKind("silu", 7, (), False, lambda x: x * _sigmoid(x)),
    OpKind("gelu", 8, (), False, _gelu_erf),
    OpKind("gelu_tanh", 9, (), False, _gelu_tanh),
)}
