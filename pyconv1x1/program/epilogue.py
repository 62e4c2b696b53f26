"""The activation a step applies to its result (its epilogue): what it computes, how
two compose (fusion), how it is described and how a plan file stores it. Everything
activation-specific lives here."""
import math

from ..errors import ModelError
from ..ir import _Record
from .codec import encode_number, field, number, show

RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT = 0, 1, 2
KINDS = ("none", "relu", "clip", "leaky")  # the plan file's allow-list


class Activation(_Record):
    """y = clamp(x if x >= 0 else alpha * x, lo, hi): covers identity, Relu, Clip, ReLU6
    and LeakyRelu with one epilogue."""
    __slots__ = ("kind", "lo", "hi", "alpha")

    def __init__(self, kind="none", lo=-math.inf, hi=math.inf, alpha=1.0):
        self._init(kind=kind, lo=lo, hi=hi, alpha=alpha)

    @property
    def is_identity(self):
        return self.kind == "none"

    def then(self, other):
        """The activation equal to `other` applied after self, or None if no single
        epilogue expresses it (see why_not_then)."""
        if self.is_identity:
            return other
        if other.is_identity:
            return self
        if self.alpha != 1.0 or other.alpha != 1.0:
            return None
        lo, hi = max(self.lo, other.lo), min(self.hi, other.hi)
        if lo > hi:
            return None
        kind = "relu" if (lo == 0 and hi == math.inf) else "clip"
        return Activation(kind, lo, hi, 1.0)

    def why_not_then(self, other):
        """Why then(other) is None, in words (for the rewrite's declined list)."""
        if self.alpha != 1.0 or other.alpha != 1.0:
            return (f"{other.describe() or 'identity'} after {self.describe()}: a leaky "
                    "slope composes with no other activation in one epilogue")
        return (f"{other.describe()} after {self.describe()}: the clamp ranges do not "
                "overlap")

    def describe(self):
        if self.kind == "none":
            return ""
        if self.kind == "relu":
            return "relu"
        if self.kind == "leaky":
            return f"leaky({self.alpha:g})"
        return f"clip({self.lo:g},{self.hi:g})"

    def kernel_args(self):
        """The epilogue arguments every kernel takes: (lo, hi, alpha) as floats."""
        return float(self.lo), float(self.hi), float(self.alpha)

    # -- plan-file codec --------------------------------------------------------------
    def encode(self):
        return {"kind": self.kind, "lo": encode_number(self.lo),
                "hi": encode_number(self.hi), "alpha": encode_number(self.alpha)}

    @staticmethod
    def decode(a, what):
        kind = field(a, "kind", what)
        if kind not in KINDS:
            raise ModelError(f"{what}: activation kind {show(kind)} is unknown")
        return Activation(kind, number(field(a, "lo", what), f"{what} lo"),
                          number(field(a, "hi", what), f"{what} hi"),
                          number(field(a, "alpha", what), f"{what} alpha"))


RELU = Activation("relu", 0.0, math.inf, 1.0)
IDENTITY = Activation()
