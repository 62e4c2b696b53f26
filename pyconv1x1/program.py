"""What the rewrite stage produces and the planner executes: a list of steps over named
tensors, free of ONNX and of input shapes. Weights are already folded (BatchNorm, Mul and
Add constants) and activations fused; a compiled plan file stores exactly this."""
import math
from dataclasses import dataclass, field, replace
from typing import Optional, Tuple

import numpy as np

RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT = 0, 1, 2


@dataclass(frozen=True)
class Activation:
    """y = clamp(x if x >= 0 else alpha * x, lo, hi): covers identity, Relu, Clip, ReLU6
    and LeakyRelu with one epilogue."""
    kind: str = "none"
    lo: float = -math.inf
    hi: float = math.inf
    alpha: float = 1.0

    @property
    def is_identity(self):
        return self.kind == "none"

    def then(self, other):
        """The activation equal to `other` applied after self, or None if no single
        epilogue expresses it."""
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

    def describe(self):
        if self.kind == "none":
            return ""
        if self.kind == "relu":
            return "relu"
        if self.kind == "leaky":
            return f"leaky({self.alpha:g})"
        return f"clip({self.lo:g},{self.hi:g})"


RELU = Activation("relu", 0.0, math.inf, 1.0)
IDENTITY = Activation()


@dataclass
class ConvLayer:
    """One 1x1 convolution with its epilogue: bias, optional residual, activation."""
    names: Tuple[str, ...]            # the ONNX nodes it came from, for messages
    weight: Optional[np.ndarray]      # [cout, cin / group] float32; None when loaded
                                      # from a plan file that holds only `packed`
    bias: np.ndarray                  # [cout] float32
    group: int = 1
    strides: Tuple[int, int] = (1, 1)
    pads: Tuple[int, int, int, int] = (0, 0, 0, 0)   # top, left, bottom, right
    auto_pad: str = "NOTSET"
    act: Activation = IDENTITY
    residual: Optional[str] = None
    res_mode: int = RES_NONE
    spatial_rank: int = 2             # 1 for Conv1d-style [N, C, L] tensors
    packed: Optional[tuple] = None    # (rows per block, packed, blocks): see plan.pack_layer
    wshape: Optional[Tuple[int, int]] = None  # (cout, k) when weight is None

    @property
    def cout(self):
        return self.weight.shape[0] if self.weight is not None else self.wshape[0]

    @property
    def k(self):
        """Input channels per group: the reduction length."""
        return self.weight.shape[1] if self.weight is not None else self.wshape[1]

    @property
    def cin(self):
        return self.k * self.group

    @property
    def name(self):
        return "+".join(self.names)

    @property
    def keeps_pixels(self):
        """Output pixel i depends on input pixel i only (fusable after another layer)."""
        return (self.strides == (1, 1) and self.pads == (0, 0, 0, 0)
                and self.auto_pad in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"))

    def out_hw(self, h, w):
        """Output size and (top, left) pads for an input of h x w."""
        sh, sw = self.strides
        if self.auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            ho, wo = -(-h // sh), -(-w // sw)
            pads = []
            for size, out, s in ((h, ho, sh), (w, wo, sw)):
                total = max((out - 1) * s + 1 - size, 0)
                pads.append(total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2)
            return ho, wo, pads[0], pads[1]
        if self.auto_pad == "VALID":
            return (h - 1) // sh + 1, (w - 1) // sw + 1, 0, 0
        pt, pl, pb, pr = self.pads
        return (h + pt + pb - 1) // sh + 1, (w + pl + pr - 1) // sw + 1, pt, pl

    def flops(self, n, ho, wo):
        return 2 * n * ho * wo * self.cout * self.k


@dataclass
class ChainStep:
    """Conv layers fused depth-first: a tile of pixels passes through all of them."""
    input: str
    output: str
    layers: list

    @property
    def name(self):
        return " -> ".join(layer.name for layer in self.layers)

    @property
    def reads(self):
        return [self.input] + [l.residual for l in self.layers if l.residual]


@dataclass
class AffineStep:
    """y[:, c] = act(x[:, c] * scale[c] + shift[c]): BatchNorm, Mul/Add by constants or
    an activation that no conv could absorb."""
    name: str
    input: str
    output: str
    scale: Optional[np.ndarray]       # [C] or None (1)
    shift: Optional[np.ndarray]       # [C] or None (0)
    act: Activation = IDENTITY

    @property
    def reads(self):
        return [self.input]


@dataclass
class AddStep:
    """y = act(a + b) for two tensors of one shape (a residual join no conv absorbed)."""
    name: str
    a: str
    b: str
    output: str
    act: Activation = IDENTITY

    @property
    def reads(self):
        return [self.a, self.b]


@dataclass
class CopyStep:
    """A graph output that is another graph value (Identity of an input or output)."""
    name: str
    input: str
    output: str

    @property
    def reads(self):
        return [self.input]


@dataclass
class Program:
    inputs: tuple                     # ir.ValueInfo of the feeds
    outputs: tuple                    # ir.ValueInfo of the results
    steps: list
    opset: int = 0
    producer: str = ""
    notes: list = field(default_factory=list)   # what the rewrite passes did

    def layers(self):
        for step in self.steps:
            if isinstance(step, ChainStep):
                yield from step.layers

    def with_steps(self, steps):
        return replace(self, steps=steps)
