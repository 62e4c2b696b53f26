"""What the rewrite stage produces and the planner executes: a list of steps over named
tensors, free of ONNX and of input shapes. Weights are already folded (BatchNorm, Mul and
Add constants) and activations fused; a compiled plan file stores exactly this."""
import math
from typing import List, Optional, Tuple

import numpy as np

from .ir import _Record, model_metadata

RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT = 0, 1, 2


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


class _Mutable:
    """A record whose fields the rewrite stage updates in place."""
    __slots__ = ()

    def __repr__(self):
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.__slots__)
        return f"{type(self).__name__}({args})"


class ConvLayer(_Mutable):
    """One 1x1 convolution with its epilogue: bias, optional residual, activation.

    weight: [cout, cin / group] float32, or None when loaded from a plan file that holds
    only `packed` = (rows per block, packed, blocks) (see plan.pack_layer) and `wshape` =
    (cout, k). pads: top, left, bottom, right. spatial_rank: 1 for [N, C, L] tensors."""
    __slots__ = ("names", "weight", "bias", "group", "strides", "pads", "auto_pad", "act",
                 "residual", "res_mode", "spatial_rank", "packed", "wshape")

    def __init__(self, names: List[str], weight: Optional[np.ndarray],
                 bias: np.ndarray, group=1, strides=(1, 1), pads=(0, 0, 0, 0),
                 auto_pad="NOTSET", act=None, residual=None, res_mode=RES_NONE,
                 spatial_rank=2, packed=None, wshape=None):
        self.names = list(names)  # (grows as the rewrite fuses ops in: appended to)
        self.weight = weight
        self.bias = bias
        self.group = group
        self.strides = tuple(strides)
        self.pads = tuple(pads)
        self.auto_pad = auto_pad
        self.act = IDENTITY if act is None else act
        self.residual = residual
        self.res_mode = res_mode
        self.spatial_rank = spatial_rank
        self.packed = packed
        self.wshape = wshape

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


class ChainStep(_Mutable):
    """Conv layers fused depth-first: a tile of pixels passes through all of them."""
    __slots__ = ("input", "output", "layers")

    def __init__(self, input, output, layers):
        self.input, self.output, self.layers = input, output, list(layers)

    @property
    def name(self):
        return " -> ".join(layer.name for layer in self.layers)

    @property
    def reads(self):
        return [self.input] + [l.residual for l in self.layers if l.residual]


class AffineStep(_Mutable):
    """y[:, c] = act(x[:, c] * scale[c] + shift[c]): BatchNorm, Mul/Add by constants or
    an activation that no conv could absorb. scale / shift: [C] or None (1 / 0)."""
    __slots__ = ("name", "input", "output", "scale", "shift", "act")

    def __init__(self, name, input, output, scale, shift, act=None):
        self.name, self.input, self.output = name, input, output
        self.scale, self.shift = scale, shift
        self.act = IDENTITY if act is None else act

    @property
    def reads(self):
        return [self.input]


class AddStep(_Mutable):
    """y = act(a + b) for two tensors of one shape (a residual join no conv absorbed)."""
    __slots__ = ("name", "a", "b", "output", "act")

    def __init__(self, name, a, b, output, act=None):
        self.name, self.a, self.b, self.output = name, a, b, output
        self.act = IDENTITY if act is None else act

    @property
    def reads(self):
        return [self.a, self.b]


class CopyStep(_Mutable):
    """A graph output that is another graph value (Identity of an input or output)."""
    __slots__ = ("name", "input", "output")

    def __init__(self, name, input, output):
        self.name, self.input, self.output = name, input, output

    @property
    def reads(self):
        return [self.input]


class Program(_Mutable):
    """inputs / outputs: ir.ValueInfo of the feeds and results; steps in execution
    order; notes: what the rewrite passes did; metadata: the model's descriptive
    fields (ir.model_metadata)."""
    __slots__ = ("inputs", "outputs", "steps", "opset", "producer", "notes", "metadata")

    def __init__(self, inputs, outputs, steps, opset=0, producer="", notes=None,
                 metadata=None):
        self.inputs, self.outputs, self.steps = tuple(inputs), tuple(outputs), steps
        self.opset, self.producer = opset, producer
        self.notes = [] if notes is None else notes
        self.metadata = model_metadata(metadata or {})

    def layers(self):
        for step in self.steps:
            if isinstance(step, ChainStep):
                yield from step.layers

    def with_steps(self, steps):
        return Program(self.inputs, self.outputs, steps, self.opset, self.producer,
                       list(self.notes), self.metadata)
