"""The activation a step applies to its result (its epilogue): what it computes, how
two compose (fusion), how it is described and how a plan file stores it. Everything
activation-specific lives here.

An epilogue is either the min/max form y = clamp(leaky(x, alpha), lo, hi) (identity,
Relu, Clip, ReLU6, LeakyRelu), which the micro-kernels apply on their accumulators (the
fast path), or a PROGRAM: up to MAX_OPS ops of the table OPS, which the kernels run on
each output block after storing it (pyconv1x1/_epilogue.h). Adding an op: a row in OPS
(name, kernel opcode, parameters, float64 reference, the ONNX op it binds), its binder
in ops.py when it has inputs beyond attributes, and one case in _epilogue.h."""
import math

import numpy as np

from ..errors import ModelError
from ..ir import _Record
from .codec import encode_number, field, json_list, number, show

RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT = 0, 1, 2
KINDS = ("none", "relu", "clip", "leaky", "program")  # the plan file's allow-list
MAX_OPS = 4  # ops per program: _epilogue.h's PC1_MAX_OPS


# -- float64 references ---------------------------------------------------------------
def _sigmoid(x):
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def _hardsigmoid(x, alpha, beta):
    return np.clip(alpha * x + beta, 0.0, 1.0)


_erfc = np.frompyfunc(math.erfc, 1, 1)


def _gelu(x):
    """x / 2 * (1 + erf(x / sqrt 2)), as x / 2 * erfc(-x / sqrt 2): equal, without the
    cancellation of 1 + erf for x < 0 (in float64 too)"""
    x = np.asarray(x, np.float64)
    return 0.5 * x * _erfc(-x / math.sqrt(2.0)).astype(np.float64)


def _gelu_tanh(x):
    """x / 2 * (1 + tanh(u)), u = sqrt(2 / pi) (x + 0.044715 x^3), as x * sigmoid(2u)"""
    with np.errstate(over="ignore", invalid="ignore"):
        return x * _sigmoid(2.0 * math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3))


def _requant(x, scale, zp, lo, hi):
    """quant/reference.py's requantization of an integer-valued accumulator x, as a
    float: clamp(rne(float32(x) * float32(scale)) + zp, lo, hi), NaN -> lo"""
    v = np.asarray(x, np.float32) * np.asarray(scale, np.float32)
    flo, fhi = np.float32(lo - zp), np.float32(hi - zp)
    v = np.where(v > flo, v, flo)  # NaN -> flo
    v = np.where(v < fhi, v, fhi)
    return np.rint(v).astype(np.float64) + zp


REQUANT_LIMIT = 1 << 22  # |lo - zp|, |hi - zp| below it: _epilogue.h's rounding


class OpKind:
    """One epilogue op. name: as plan files and descriptions spell it; opcode:
    _epilogue.h's PC1_OP_*; params: ((name, default), ...) scalars, except that with
    per_channel the first may be a float32 vector over the output channels; ref(x,
    *params): float64 numpy reference; onnx: the ONNX op type it binds with its
    attributes as params (None: a binder of its own, or a pattern)."""
    __slots__ = ("name", "opcode", "params", "per_channel", "ref", "onnx")

    def __init__(self, name, opcode, params, ref, per_channel=False, onnx=None):
        self.name, self.opcode, self.params = name, opcode, tuple(params)
        self.ref, self.per_channel, self.onnx = ref, per_channel, onnx


OPS = {k.name: k for k in (
    OpKind("clamp", 1, (("lo", -math.inf), ("hi", math.inf)),
           lambda x, lo, hi: np.clip(x, lo, hi)),
    OpKind("prelu", 2, (("slope", 0.01),), lambda x, s: np.where(x < 0, x * s, x),
           per_channel=True),
    OpKind("sigmoid", 3, (), _sigmoid, onnx="Sigmoid"),
    # (ONNX HardSigmoid binds as an affine step + clip(0, 1), ops.py: it folds into the
    # conv before it and keeps the min/max fast path; this op serves programs)
    OpKind("hardsigmoid", 4, (("alpha", 0.2), ("beta", 0.5)), _hardsigmoid),
    OpKind("hardswish", 5, (), lambda x: x * _hardsigmoid(x, 1.0 / 6.0, 0.5),
           onnx="HardSwish"),
    OpKind("tanh", 6, (), np.tanh, onnx="Tanh"),
    OpKind("silu", 7, (), lambda x: x * _sigmoid(x)),
    OpKind("gelu", 8, (), _gelu),
    OpKind("gelu_tanh", 9, (), _gelu_tanh),
    # the int8 requantization on float32 accumulators (quant/floatpath.py): integer zp,
    # lo <= hi with |lo - zp|, |hi - zp| < 2^22
    OpKind("requant", 10, (("scale", 1.0), ("zp", 0.0), ("lo", 0.0), ("hi", 255.0)),
           _requant, per_channel=True),
)}


class Op(_Record):
    """One op of a program: kind (a key of OPS) and its parameter values (floats; with
    a per-channel kind, the first may be a 1-D float32 array)."""
    __slots__ = ("kind", "params")

    def __init__(self, kind, params=None):
        spec = OPS[kind]
        if params is None:
            params = tuple(d for _, d in spec.params)
        params = tuple(p if isinstance(p, np.ndarray) else float(p) for p in params)
        if len(params) != len(spec.params):
            raise ValueError(f"epilogue op {kind} takes {len(spec.params)} parameters")
        if kind == "requant":
            zp, lo, hi = params[1:]
            if not all(float(v).is_integer() for v in (zp, lo, hi)) or not lo <= hi or \
                    max(abs(lo - zp), abs(hi - zp)) >= REQUANT_LIMIT:
                raise ValueError(f"epilogue op requant: zp {zp:g}, lo {lo:g}, hi {hi:g} "
                                 "must be integers, lo <= hi, within 2^22 of zp")
        self._init(kind=kind, params=params)

    def __eq__(self, other):
        return type(other) is Op and self.kind == other.kind and len(self.params) == len(
            other.params) and all(
            np.array_equal(a, b) if isinstance(a, np.ndarray) or isinstance(b, np.ndarray)
            else a == b for a, b in zip(self.params, other.params))

    def __hash__(self):
        return hash((self.kind, len(self.params)))

    @property
    def vector(self):
        """The per-channel parameter vector, or None."""
        return next((p for p in self.params if isinstance(p, np.ndarray)), None)

    def describe(self):
        shown = [f"[{p.size}]" if isinstance(p, np.ndarray) else f"{p:g}"
                 for p in self.params]
        return self.kind + (f"({','.join(shown)})" if shown else "")

    def kernel(self):
        """(opcode, s0, s1[, s2, s3], vector or None) as the kernels take it."""
        s = [0.0] * max(2, len(self.params))
        vec = None
        for i, p in enumerate(self.params):
            if isinstance(p, np.ndarray):
                vec = np.ascontiguousarray(p, np.float32)
            else:
                s[i] = p
        return (OPS[self.kind].opcode, *s, vec)

    def ref(self, v, channel_axis=1):
        args = []
        for p in self.params:
            if isinstance(p, np.ndarray):
                shape = [1] * v.ndim
                shape[channel_axis] = -1
                p = np.asarray(p, np.float64).reshape(shape)
            else:
                p = float(np.float32(p))  # the kernels' parameters are float32
            args.append(p)
        with np.errstate(invalid="ignore", over="ignore"):
            return OPS[self.kind].ref(v, *args)

    def encode(self, arrays):
        return {"op": self.kind, "params": [
            {"vector": arrays.add(p)} if isinstance(p, np.ndarray) else encode_number(p)
            for p in self.params]}

    @staticmethod
    def decode(o, what, arr):
        kind = field(o, "op", what)
        if not isinstance(kind, str) or kind not in OPS:
            raise ModelError(f"{what}: epilogue op {show(kind)} is unknown (known: "
                             f"{', '.join(OPS)})")
        spec = OPS[kind]
        raw = json_list(field(o, "params", what), f"{what} params")
        if len(raw) != len(spec.params):
            raise ModelError(f"{what}: op {kind} has {len(raw)} parameters; it takes "
                             f"{len(spec.params)}")
        params = []
        for i, (p, (pname, _)) in enumerate(zip(raw, spec.params)):
            if isinstance(p, dict) and i == 0 and spec.per_channel:
                v = arr(field(p, "vector", f"{what} {pname}"), f"{what} {pname}")
                if v is None or v.ndim != 1 or v.dtype != np.float32:
                    raise ModelError(f"{what}: {pname} is not a float32 vector")
                params.append(v)
            else:
                params.append(number(p, f"{what} {pname}"))
        try:
            return Op(kind, params)
        except ValueError as e:
            raise ModelError(f"{what}: {e}") from None


class Activation(_Record):
    """y = clamp(x if x >= 0 else alpha * x, lo, hi): covers identity, Relu, Clip, ReLU6
    and LeakyRelu with one epilogue; or kind "program": the ops in order (lo, hi, alpha
    then the identity)."""
    __slots__ = ("kind", "lo", "hi", "alpha", "ops")

    def __init__(self, kind="none", lo=-math.inf, hi=math.inf, alpha=1.0, ops=()):
        self._init(kind=kind, lo=lo, hi=hi, alpha=alpha, ops=tuple(ops))

    @staticmethod
    def program(ops):
        return Activation("program", ops=ops)

    @property
    def is_identity(self):
        return self.kind == "none"

    def as_ops(self):
        """The same epilogue as program ops."""
        if self.kind == "program":
            return self.ops
        ops = ()
        if self.alpha != 1.0:
            ops += (Op("prelu", (self.alpha,)),)
        if self.lo != -math.inf or self.hi != math.inf:
            ops += (Op("clamp", (self.lo, self.hi)),)
        return ops

    def then(self, other):
        """The activation equal to `other` applied after self, or None if no single
        epilogue expresses it (see why_not_then)."""
        if self.is_identity:
            return other
        if other.is_identity:
            return self
        if self.kind == "program" or other.kind == "program":
            ops = self.as_ops() + other.as_ops()
            return Activation.program(ops) if len(ops) <= MAX_OPS else None
        if self.alpha != 1.0 or other.alpha != 1.0:
            return None
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        if lo > hi:
            return None
        kind = "relu" if (lo == 0 and hi == math.inf) else "clip"
        return Activation(kind, lo, hi, 1.0)

    def why_not_then(self, other):
        """Why then(other) is None, in words (for the rewrite's declined list)."""
        if self.kind == "program" or other.kind == "program":
            return (f"{other.describe()} after {self.describe()}: more than {MAX_OPS} "
                    "epilogue ops")
        if self.alpha != 1.0 or other.alpha != 1.0:
            return (f"{other.describe() or 'identity'} after {self.describe()}: a leaky "
                    "slope composes with no other activation in one epilogue")
        return (f"{other.describe()} after {self.describe()}: the clamp ranges do not "
                "overlap")

    def channels(self):
        """Lengths of its per-channel parameter vectors (a set, empty: none)."""
        return {op.vector.size for op in self.ops if op.vector is not None}

    def why_not_for(self, channels, where):
        """None if it applies to `channels` channels, else why not."""
        bad = self.channels() - {channels}
        if bad:
            return (f"{self.describe()} has {min(bad)} per-channel parameters; {where} "
                    f"has {channels} channels")
        return None

    def describe(self):
        if self.kind == "none":
            return ""
        if self.kind == "relu":
            return "relu"
        if self.kind == "leaky":
            return f"leaky({self.alpha:g})"
        if self.kind == "program":
            return "+".join(op.describe() for op in self.ops)
        return f"clip({self.lo:g},{self.hi:g})"

    def kernel_args(self):
        """The min/max epilogue arguments every kernel takes: (lo, hi, alpha) as floats
        (the identity for a program)."""
        return float(self.lo), float(self.hi), float(self.alpha)

    def kernel_ops(self):
        """The program as the kernels take it (see _kernels set_post_ops): a tuple of
        (opcode, s0, s1[, s2, s3], vector or None); () for the min/max form."""
        return tuple(op.kernel() for op in self.ops)

    def ref(self, v, channel_axis=1):
        """float64 numpy reference on v (channels along channel_axis)."""
        v = np.asarray(v, np.float64)
        if self.kind == "program":
            for op in self.ops:
                v = op.ref(v, channel_axis)
            return v
        v = np.where(v < 0, v * self.alpha, v) if self.alpha != 1.0 else v
        return np.minimum(np.maximum(v, self.lo), self.hi) if self.kind != "none" else v

    # -- plan-file codec --------------------------------------------------------------
    def encode(self, arrays):
        out = {"kind": self.kind, "lo": encode_number(self.lo),
               "hi": encode_number(self.hi), "alpha": encode_number(self.alpha)}
        if self.kind == "program":
            out["ops"] = [op.encode(arrays) for op in self.ops]
        return out

    @staticmethod
    def decode(a, what, arr):
        kind = field(a, "kind", what)
        if kind not in KINDS:
            raise ModelError(f"{what}: activation kind {show(kind)} is unknown")
        if kind == "program":
            ops = json_list(field(a, "ops", what), f"{what} ops")
            if not 1 <= len(ops) <= MAX_OPS:
                raise ModelError(f"{what}: {len(ops)} epilogue ops; 1 to {MAX_OPS} run")
            return Activation.program(Op.decode(o, f"{what} op {i}", arr)
                                      for i, o in enumerate(ops))
        return Activation(kind, number(field(a, "lo", what), f"{what} lo"),
                          number(field(a, "hi", what), f"{what} hi"),
                          number(field(a, "alpha", what), f"{what} alpha"))


RELU = Activation("relu", 0.0, math.inf, 1.0)
IDENTITY = Activation()
