"""The step kinds of a Program. Each kind owns its behaviour, so a new kind (an int8
chain, a pooling step) is one class here, registered in STEP_KINDS, plus its kernel
binder in plan/ (plan.BINDERS, and plan.KERNEL_BUILDERS if it prepares a kernel object
once per session) and its op binder in ops.py. The interface (defaults in Step):

    kind                     class attribute: the plan file's "type" string
    reads                    tensor names read (every one, residuals included)
    outputs / output         tensor names written (one today)
    label                    how messages name the step
    layers, copy_of          the conv layers it runs (() if none); the tensor it only
                             copies (None if it computes)
    rename_read(old, new)    point a read elsewhere (the rewrite drops copies)
    out_shape(shapes)        symbolic output shape from {tensor: shape} (check stage;
                             UnsupportedError with .problems for what cannot run)
    describe()               one line for humans
    encode(arrays, mr)       -> JSON object; arrays.add(ndarray) -> index (plan file)
    decode(obj, arr, what)   classmethod: JSON object -> step, every field validated
                             (arr(index, what, dtype) -> checked ndarray)
    validate(defined)        structural checks of a decoded step (ModelError)
    fuse_candidates()        (read, other) pairs the rewrite may merge into a producer
    absorb(s, other, notes)  merge step s into self: None when done, else why not;
                             double dispatch through s.fold_into_conv(layer, other,
                             notes) / s.fold_into_elementwise(p, notes) /
                             p.merge_affine(s), each None or a reason
ChainStep adds geometry(x) and layer_shapes(x): the one place the chain's output-shape
arithmetic lives (check, plan and `pyconv1x1 info` use it).
"""
from typing import List, Optional

import numpy as np

from ..errors import ModelError, Problem, UnsupportedError
from ..ir import model_metadata
from .codec import (field, flag, integer, json_list, layer_names, name as _name, string,
                    vector)
from .epilogue import IDENTITY, RES_AFTER_ACT, RES_BEFORE_ACT, RES_NONE, Activation

AUTO_PADS = ("NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID")


class _Mutable:
    """A record whose fields the rewrite stage updates in place."""
    __slots__ = ()

    def __repr__(self):
        keys = [k for c in reversed(type(self).__mro__) for k in c.__dict__.get("__slots__", ())]
        args = ", ".join(f"{k}={getattr(self, k)!r}" for k in keys)
        return f"{type(self).__name__}({args})"


class ConvLayer(_Mutable):
    """One 1x1 convolution with its epilogue: bias, optional residual, activation.

    weight: [cout, cin / group] float32, or None when loaded from a plan file that holds
    only `packed` = (rows per block, packed, blocks) (see plan.pack_layer) and `wshape` =
    (cout, k). pads: top, left, bottom, right. spatial_rank: 1 for [N, C, L] tensors, 0
    for [N, C] (a Linear on vectors)."""
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

    def out_shape(self, n, ho, wo):
        """This layer's output shape for a batch n and an output map ho x wo."""
        return (n, self.cout) + ((ho, wo), (wo,), ())[2 - self.spatial_rank]

    def flops(self, n, ho, wo):
        return 2 * n * ho * wo * self.cout * self.k

    def describe(self):
        act = self.act.describe()
        res = f" +{self.residual}" if self.residual else ""
        return f"conv {self.name} {self.cin}->{self.cout}{res}{' ' + act if act else ''}"

    # -- plan-file codec --------------------------------------------------------------
    def encode(self, arrays, mr):
        from ..plan import pack_layer
        packed, blocks = pack_layer(self, mr)
        return {"names": list(self.names), "cout": self.cout, "k": self.k,
                "bias": arrays.add(self.bias), "group": self.group,
                "strides": list(self.strides), "pads": list(self.pads),
                "auto_pad": self.auto_pad, "act": self.act.encode(arrays),
                "residual": self.residual, "res_mode": self.res_mode,
                "spatial_rank": self.spatial_rank, "mr": mr,
                "packed": arrays.add(packed), "blocks": arrays.add(blocks)}

    @classmethod
    def decode(cls, l, arr, what):
        get = lambda key: field(l, key, what)  # noqa: E731
        names = layer_names(l, what)
        what = f"plan layer {'+'.join(names)!r}"
        cout = integer(get("cout"), f"{what} cout", 1, 1 << 31)
        k = integer(get("k"), f"{what} k", 1, 1 << 31)
        group = integer(get("group"), f"{what} group", 1, 1 << 31)
        mr = integer(get("mr"), f"{what} mr", 1, 64)
        if cout % group:
            raise ModelError(f"{what}: cout {cout} is not a multiple of group {group}")
        packed = arr(get("packed"), f"{what} packed")
        blocks = arr(get("blocks"), f"{what} blocks", "int64")
        bias = arr(get("bias"), f"{what} bias")
        if bias is None or bias.shape != (cout,):
            raise ModelError(f"{what}: bias shape does not match {cout}")
        if packed is None or packed.shape != (cout * k,):
            raise ModelError(f"{what}: packed weight size does not match {cout} x {k}")
        if blocks is None:
            raise ModelError(f"{what}: no packed-block table")
        ints = lambda key: tuple(  # noqa: E731
            integer(x, f"{what} {key}", 0, 1 << 31) for x in json_list(get(key), f"{what} {key}"))
        residual = get("residual")
        layer = cls(names=names, weight=None, bias=bias, group=group,
                    strides=ints("strides"), pads=ints("pads"),
                    auto_pad=string(get("auto_pad"), f"{what} auto_pad"),
                    act=Activation.decode(get("act"), f"{what} act", arr),
                    residual=None if residual is None else _name(residual, f"{what} residual"),
                    res_mode=integer(get("res_mode"), f"{what} res_mode", 0, 2),
                    spatial_rank=integer(get("spatial_rank"), f"{what} spatial_rank", 0, 2),
                    packed=(mr, packed, np.ascontiguousarray(blocks, dtype=np.intp)),
                    wshape=(cout, k))
        # the kernel trusts block offsets: they must be exactly what packing produces
        from ..plan import block_table
        expect = block_table(cout, k, group, mr)
        if blocks.shape != expect.shape or not np.array_equal(blocks, expect):
            raise ModelError(f"{what}: packed blocks are inconsistent")
        return layer

    def validate(self, defined, previous=None):
        if len(self.strides) != 2 or len(self.pads) != 4 \
                or min(self.strides) < 1 or min(self.pads) < 0 \
                or max(self.strides + self.pads) > 1 << 20:
            raise ModelError(f"plan layer {self.name}: bad strides/pads")
        if self.auto_pad not in AUTO_PADS:
            raise ModelError(f"plan layer {self.name}: bad auto_pad")
        if self.spatial_rank not in (0, 1, 2):
            raise ModelError(f"plan layer {self.name}: bad spatial rank")
        if self.res_mode not in (RES_NONE, RES_BEFORE_ACT, RES_AFTER_ACT) or \
                (self.res_mode == RES_NONE) != (self.residual is None):
            raise ModelError(f"plan layer {self.name}: bad residual")
        if self.residual is not None and self.residual not in defined:
            raise ModelError(f"plan layer {self.name}: residual undefined")
        if previous is not None and (not self.keeps_pixels or self.cin != previous.cout):
            raise ModelError(f"plan layer {self.name}: does not chain")
        why = self.act.why_not_for(self.cout, "the layer")
        if why is not None:
            raise ModelError(f"plan layer {self.name}: {why}")


class Step(_Mutable):
    """What every step kind provides (see the module docstring)."""
    __slots__ = ()
    kind = ""
    layers = ()  # the conv layers a step runs (a chain's; none for the others)
    copy_of = None  # the tensor a step only copies (CopyStep's input), else None

    @property
    def outputs(self):
        return (self.output,)

    @property
    def label(self):
        """How messages name the step."""
        return getattr(self, "name", self.output)

    read_fields = ("input",)  # the attributes that name the tensors a step reads

    @property
    def reads(self):
        return [getattr(self, f) for f in self.read_fields]

    def rename_read(self, old, new):
        for f in self.read_fields:
            if getattr(self, f) == old:
                setattr(self, f, new)

    def out_shape(self, shapes):
        return shapes.get(self.input)

    def validate(self, defined):
        """Kind-specific structural checks of a decoded step (reads already checked)."""

    def fuse_candidates(self):
        return ()

    def absorb(self, s, other, notes):
        return f"a {self.kind} step takes no fused epilogue"

    def fold_into_conv(self, layer, other, notes):
        return f"a {self.kind} step does not fold into a conv"

    def fold_into_elementwise(self, p, notes):
        return f"a {self.kind} step does not fold into a {p.kind} step"

    def merge_affine(self, s):
        return f"a {self.kind} step takes no per-channel constants"


class ChainStep(Step):
    """Conv layers fused depth-first: a tile of pixels passes through all of them.
    in_last / out_last: the input / the output (and every residual) is channels-last,
    [N, ..., C] (a Linear applied at every position; spatial_rank 0: [N, C]), else NCHW:
    the kernels' gather and store read and write either layout, so a Transpose that only
    moves the channel axis next to a chain is never copied. in_scale: None, or a tensor
    [N or 1, C, 1, ...] that scales the (NCHW) input per image and channel as it is
    gathered (a squeeze-excitation Mul taken into the conv that reads its result)."""
    __slots__ = ("input", "output", "layers", "in_last", "out_last", "in_scale")
    kind = "chain"

    def __init__(self, input, output, layers, in_last=False, out_last=False,
                 in_scale=None):
        self.input, self.output, self.layers = input, output, list(layers)
        self.in_last, self.out_last = bool(in_last), bool(out_last)
        self.in_scale = in_scale

    @property
    def name(self):
        return " -> ".join(layer.name for layer in self.layers)

    @property
    def reads(self):
        return ([self.input] + [l.residual for l in self.layers if l.residual]
                + ([self.in_scale] if self.in_scale else []))

    def rename_read(self, old, new):
        if self.input == old:
            self.input = new
        if self.in_scale == old:
            self.in_scale = new
        for layer in self.layers:
            if layer.residual == old:
                layer.residual = new

    # -- shapes: the one place the chain's output-shape arithmetic lives ---------------
    def geometry(self, x):
        """(n, h, w, ho, wo, pt, pl) for an input of shape x (rank checked by the
        caller). Symbolic dims (names, None) give ho / wo equal to them where the first
        layer keeps pixels, else None; pt / pl are None then."""
        first = self.layers[0]
        spatial = tuple(x[1:-1] if self.in_last else x[2:])
        h, w = ((1, 1) + spatial)[-2:]  # [N, C]: one pixel; [N, C, L]: 1 x L
        if isinstance(h, int) and isinstance(w, int):
            ho, wo, pt, pl = first.out_hw(h, w)
        else:
            ho = h if first.keeps_pixels else None
            wo = w if first.keeps_pixels else None
            pt = pl = None
        return x[0], h, w, ho, wo, pt, pl

    def layer_shapes(self, x):
        """Each layer's output shape for an input of shape x, or None when x is
        unknown or of another rank (for `pyconv1x1 info` and tools)."""
        if x is None or len(x) != self.layers[0].spatial_rank + 2:
            return None
        n, _, _, ho, wo, _, _ = self.geometry(x)
        return [self.laid_out(layer.out_shape(n, ho, wo)) for layer in self.layers]

    def in_channels(self, x):
        """The channel count of an input of shape x, in this chain's input layout."""
        return x[-1] if self.in_last else x[1]

    def laid_out(self, nchw):
        """An [N, C, ...] output shape in this chain's output layout."""
        return (nchw[0],) + tuple(nchw[2:]) + (nchw[1],) if self.out_last else nchw

    def out_shape(self, shapes):
        x = shapes.get(self.input)
        last = self.layers[-1]
        if x is None:
            return self.laid_out((None, last.cout) + (None,) * last.spatial_rank)
        n, h, w, ho, wo, _, _ = self.geometry(x)
        if isinstance(h, int) and isinstance(w, int) and (ho < 1 or wo < 1):
            raise ModelError(f"Conv '{self.layers[0].name}': input {list(x)} gives an "
                             f"empty output ({ho}x{wo})")
        return self.laid_out(last.out_shape(n, ho, wo))

    def describe(self):
        layout = "".join((" (channels-last in)" if self.in_last else "",
                          " (channels-last out)" if self.out_last else "",
                          f" (input scaled by {self.in_scale})" if self.in_scale else ""))
        return " -> ".join(layer.describe() for layer in self.layers) + layout

    # -- plan-file codec --------------------------------------------------------------
    def encode(self, arrays, mr):
        out = {"type": self.kind, "input": self.input, "output": self.output,
               "layers": [layer.encode(arrays, mr) for layer in self.layers]}
        if self.in_last or self.out_last:  # (plans without them stay as they were)
            out.update(in_last=self.in_last, out_last=self.out_last)
        if self.in_scale:
            out["in_scale"] = self.in_scale
        return out

    @classmethod
    def decode(cls, s, arr, what):
        layers = [ConvLayer.decode(l, arr, f"{what} layer {i}")
                  for i, l in enumerate(json_list(field(s, "layers", what), f"{what} layers"))]
        return cls(_name(field(s, "input", what), f"{what} input"),
                   _name(field(s, "output", what), f"{what} output"), layers,
                   flag(s, "in_last", what), flag(s, "out_last", what),
                   _name(s["in_scale"], f"{what} in_scale") if "in_scale" in s else None)

    def validate(self, defined):
        if not self.layers:
            raise ModelError("plan chain without layers")
        for i, layer in enumerate(self.layers):
            layer.validate(defined, self.layers[i - 1] if i else None)
            if (self.in_last or self.out_last) and not layer.keeps_pixels:
                raise ModelError(f"plan layer {layer.name}: a channels-last chain with "
                                 "strides or pads")
        if self.in_scale and self.in_last:
            raise ModelError(f"plan chain {self.name}: an input scale on a channels-last "
                             "input")

    # -- rewrite ----------------------------------------------------------------------
    def absorb(self, s, other, notes):
        if len(self.layers) != 1:
            return "the conv is already chained"
        if getattr(s, "last", self.out_last) != self.out_last \
                and self.layers[0].spatial_rank and s.per_channel:
            return (f"its constants vary along the {'last' if s.last else 'channel'} "
                    f"axis; the conv writes {'channels-last' if self.out_last else 'NCHW'}")
        return s.fold_into_conv(self.layers[0], other, notes)


class AffineStep(Step):
    """y[:, c] = act(x[:, c] * scale[c] + shift[c]): BatchNorm, Mul/Add by constants or
    an activation that no conv could absorb. scale / shift: [C] or None (1 / 0).
    last: the constants vary along the last axis (a channels-last tensor, e.g. the bias
    Add after a MatMul), not axis 1."""
    __slots__ = ("name", "input", "output", "scale", "shift", "act", "last")
    kind = "affine"

    def __init__(self, name, input, output, scale, shift, act=None, last=False):
        self.name, self.input, self.output = name, input, output
        self.scale, self.shift = scale, shift
        self.act = IDENTITY if act is None else act
        self.last = bool(last)

    @property
    def reads(self):
        return [self.input]

    @property
    def has_constants(self):
        return self.scale is not None or self.shift is not None

    @property
    def per_channel(self):
        """Its constants vary (more than one value): their axis matters."""
        return max(_len(self.scale), _len(self.shift)) > 1

    def describe(self):
        parts = [p for p, v in (("scale", self.scale), ("shift", self.shift))
                 if v is not None] + [self.act.describe()]
        return f"affine {self.name} ({', '.join(p for p in parts if p) or 'identity'})"

    def encode(self, arrays, mr):
        out = {"type": self.kind, "name": self.name, "input": self.input,
               "output": self.output, "scale": arrays.add(self.scale),
               "shift": arrays.add(self.shift), "act": self.act.encode(arrays)}
        if self.last:
            out["last"] = True
        return out

    @classmethod
    def decode(cls, s, arr, what):
        return cls(_name(field(s, "name", what), f"{what} name"),
                   _name(field(s, "input", what), f"{what} input"),
                   _name(field(s, "output", what), f"{what} output"),
                   vector(arr(field(s, "scale", what), f"{what} scale")),
                   vector(arr(field(s, "shift", what), f"{what} shift")),
                   Activation.decode(field(s, "act", what), f"{what} act", arr),
                   flag(s, "last", what))

    def validate(self, defined):
        for v in (self.scale, self.shift):
            if v is not None and v.ndim != 1:
                raise ModelError(f"plan step {self.name!r}: bad per-channel vector")

    # -- rewrite ----------------------------------------------------------------------
    def fuse_candidates(self):
        return ((self.input, None),)

    def absorb(self, s, other, notes):
        return s.fold_into_elementwise(self, notes)

    def fold_into_conv(self, layer, other, notes):
        if self.has_constants:
            if not layer.act.is_identity:
                return f"conv {layer.names[0]} already applies {layer.act.describe()}"
            if layer.residual is not None:
                return f"conv {layer.names[0]} already adds residual {layer.residual!r}"
            scale = _expand(self.scale, layer.cout, 1.0)
            shift = _expand(self.shift, layer.cout, 0.0)
            if scale is None or shift is None:
                return (f"its per-channel constants do not match the conv's "
                        f"{layer.cout} output channels")
        if not self.act.is_identity:
            if layer.res_mode == RES_AFTER_ACT:
                return (f"conv {layer.names[0]} adds its residual after its activation")
            act = layer.act.then(self.act)
            if act is None:
                return layer.act.why_not_then(self.act)
            why = act.why_not_for(layer.cout, f"conv {layer.names[0]}")
            if why is not None:
                return why
        if self.has_constants:  # (checked above: nothing is changed on a decline)
            with np.errstate(over="ignore", invalid="ignore"):  # inf, as in float32
                w = layer.weight.astype(np.float64) * scale[:, None]
                b = layer.bias.astype(np.float64) * scale + shift
                layer.weight = w.astype(np.float32)
                layer.bias = b.astype(np.float32)
            notes.append(f"folded {self.name} into conv {layer.names[0]}")
        if not self.act.is_identity:
            layer.act = act
            notes.append(f"fused {self.name} ({self.act.describe()}) into conv "
                         f"{layer.names[0]}")
        layer.names.append(self.name)
        return None

    def fold_into_elementwise(self, p, notes):
        if not self.has_constants:
            act = p.act.then(self.act)
            if act is None:
                return p.act.why_not_then(self.act)
            notes.append(f"fused {self.name} into {p.name.split('+')[0]}")
            p.act = act
            p.name = _merged_name(p.name, self.name)
            return None
        return p.merge_affine(self)

    def merge_affine(self, s):
        if not (self.act.is_identity and s.act.is_identity):
            return "an activation sits between the two per-channel steps"
        sizes = [_len(self.scale), _len(self.shift), _len(s.scale), _len(s.shift)]
        c = max(sizes)
        lasts = {st.last for st in (self, s) if st.per_channel}
        if len(lasts) > 1:
            return "one varies along the channel axis, the other along the last axis"
        if any(n not in (0, 1, c) for n in sizes):
            return "their per-channel constants differ in length"
        s1, b1 = _expand(self.scale, c, 1.0), _expand(self.shift, c, 0.0)
        s2, b2 = _expand(s.scale, c, 1.0), _expand(s.shift, c, 0.0)
        with np.errstate(over="ignore", invalid="ignore"):
            self.scale = (s1 * s2).astype(np.float32)
            self.shift = (b1 * s2 + b2).astype(np.float32)
        self.name = _merged_name(self.name, s.name)
        self.last = lasts.pop() if lasts else self.last
        return None


class AddStep(Step):
    """y = act(a + b) for two tensors of one shape (a residual join no conv absorbed)."""
    __slots__ = ("name", "a", "b", "output", "act")
    kind = "add"

    read_fields = ("a", "b")

    def __init__(self, name, a, b, output, act=None):
        self.name, self.a, self.b, self.output = name, a, b, output
        self.act = IDENTITY if act is None else act

    def out_shape(self, shapes):
        a, b = shapes.get(self.a), shapes.get(self.b)
        if a is None or b is None:
            return a or b
        if len(a) != len(b) or any(isinstance(x, int) and isinstance(y, int) and x != y
                                   for x, y in zip(a, b)):
            problem = Problem("Add", self.name, f"inputs {list(a)} and {list(b)} "
                              "broadcast; only same-shape tensor sums run")
            raise UnsupportedError(str(problem), problems=[problem])
        return tuple(x if isinstance(x, int) else y for x, y in zip(a, b))

    def describe(self):
        act = self.act.describe()
        return f"add {self.name} ({self.a} + {self.b}{', ' + act if act else ''})"

    def encode(self, arrays, mr):
        return {"type": self.kind, "name": self.name, "a": self.a, "b": self.b,
                "output": self.output, "act": self.act.encode(arrays)}

    @classmethod
    def decode(cls, s, arr, what):
        n = lambda key: _name(field(s, key, what), f"{what} {key}")  # noqa: E731
        return cls(n("name"), n("a"), n("b"), n("output"),
                   Activation.decode(field(s, "act", what), f"{what} act", arr))

    def fuse_candidates(self):
        return ((self.a, self.b), (self.b, self.a))

    def absorb(self, s, other, notes):
        return s.fold_into_elementwise(self, notes)

    def fold_into_conv(self, layer, other, notes):
        if layer.residual is not None:
            return f"conv {layer.names[0]} already adds residual {layer.residual!r}"
        layer.residual = other
        layer.res_mode = RES_BEFORE_ACT if layer.act.is_identity else RES_AFTER_ACT
        layer.names.append(self.name)
        notes.append(f"fused residual {self.name} into conv {layer.names[0]}")
        return None


class _UnaryStep(Step):
    """A step of one input, one output and no parameters."""
    __slots__ = ("name", "input", "output")

    def __init__(self, name, input, output):
        self.name, self.input, self.output = name, input, output

    def encode(self, arrays, mr):
        return {"type": self.kind, "name": self.name, "input": self.input,
                "output": self.output}

    @classmethod
    def decode(cls, s, arr, what):
        n = lambda key: _name(field(s, key, what), f"{what} {key}")  # noqa: E731
        return cls(n("name"), n("input"), n("output"))


class CopyStep(_UnaryStep):
    """A graph output that is another graph value (Identity of an input or output)."""
    __slots__ = ()
    kind = "copy"

    @property
    def copy_of(self):
        return self.input

    def describe(self):
        return f"copy {self.name} ({self.input} -> {self.output})"


def channel_move(perm):
    """How a Transpose perm moves the channel axis, or None when it moves other axes:
    "last" (NCHW -> channels-last), "first" (back), "swap" (rank 3: [0, 2, 1] is both)."""
    perm, r = tuple(perm), len(perm)
    if r < 3:
        return None
    to_last = (0,) + tuple(range(2, r)) + (1,)
    to_first = (0, r - 1) + tuple(range(1, r - 1))
    if perm == to_last == to_first:
        return "swap"
    return "last" if perm == to_last else "first" if perm == to_first else None


class TransposeStep(Step):
    """A Transpose that only moves the channel axis (NCHW <-> channels-last) and that no
    chain next to it took into its gather or store (the rewrite tries both): a copy."""
    __slots__ = ("name", "input", "output", "perm")
    kind = "transpose"

    def __init__(self, name, input, output, perm):
        self.name, self.input, self.output, self.perm = name, input, output, tuple(perm)

    def out_shape(self, shapes):
        x = shapes.get(self.input)
        if x is None or len(x) != len(self.perm):
            return (None,) * len(self.perm)
        return tuple(x[i] for i in self.perm)

    def describe(self):
        return f"transpose {self.name} {list(self.perm)} (a copy)"

    def encode(self, arrays, mr):
        return {"type": self.kind, "name": self.name, "input": self.input,
                "output": self.output, "perm": list(self.perm)}

    @classmethod
    def decode(cls, s, arr, what):
        n = lambda key: _name(field(s, key, what), f"{what} {key}")  # noqa: E731
        perm = tuple(integer(i, f"{what} perm", 0, 7)
                     for i in json_list(field(s, "perm", what), f"{what} perm"))
        return cls(n("name"), n("input"), n("output"), perm)

    def validate(self, defined):
        if channel_move(self.perm) is None:
            raise ModelError(f"plan step {self.name!r}: perm {list(self.perm)} does not "
                             "move the channel axis alone")


class MeanStep(Step):
    """GlobalAveragePool / ReduceMean over every spatial axis of an NCHW tensor:
    y[n, c] = sum of x[n, c, :] / pixels, summed in float32 in a fixed order (the same
    bits whatever the thread count). keepdims: [N, C, 1, ...], else [N, C]."""
    __slots__ = ("name", "input", "output", "keepdims")
    kind = "mean"

    def __init__(self, name, input, output, keepdims=True):
        self.name, self.input, self.output = name, input, output
        self.keepdims = bool(keepdims)

    def out_shape(self, shapes):
        x = shapes.get(self.input)
        if x is None:
            return None
        return tuple(x[:2]) + ((1,) * (len(x) - 2) if self.keepdims else ())

    def describe(self):
        return f"mean {self.name} (global average over the pixels)"

    def encode(self, arrays, mr):
        return {"type": self.kind, "name": self.name, "input": self.input,
                "output": self.output, "keepdims": self.keepdims}

    @classmethod
    def decode(cls, s, arr, what):
        n = lambda key: _name(field(s, key, what), f"{what} {key}")  # noqa: E731
        return cls(n("name"), n("input"), n("output"), flag(s, "keepdims", what))


class ScaleStep(Step):
    """y[n, c, :] = x[n, c, :] * gate[n, c]: the Mul by which squeeze-excitation scales
    a feature map by its per-image channel weights (the gate, [N or 1, C, 1, ...],
    computed at run time). One pass over x, unless the rewrite takes it into the gather
    of the conv that reads y (ChainStep.in_scale)."""
    __slots__ = ("name", "input", "gate", "output")
    kind = "scale"
    read_fields = ("input", "gate")

    def __init__(self, name, input, gate, output):
        self.name, self.input, self.gate, self.output = name, input, gate, output

    def out_shape(self, shapes):
        x, s = shapes.get(self.input), shapes.get(self.gate)
        if x is not None and s is not None and not scales(s, x):
            problem = Problem("Mul", self.name, f"inputs {list(x)} and {list(s)}: only a "
                              "per-image, per-channel scale [N, C, 1, ...] of a feature "
                              "map runs")
            raise UnsupportedError(str(problem), problems=[problem])
        return x

    def describe(self):
        return f"scale {self.name} ({self.input} * {self.gate} per channel)"

    def encode(self, arrays, mr):
        return {"type": self.kind, "name": self.name, "input": self.input,
                "gate": self.gate, "output": self.output}

    @classmethod
    def decode(cls, s, arr, what):
        n = lambda key: _name(field(s, key, what), f"{what} {key}")  # noqa: E731
        return cls(n("name"), n("input"), n("gate"), n("output"))


def scales(s, x):
    """Whether a tensor of shape s scales one of shape x per image and channel (dims
    that are names or None count as matching)."""
    same = lambda a, b: not (isinstance(a, int) and isinstance(b, int)) or a == b  # noqa
    return (len(s) == len(x) >= 3 and all(d == 1 for d in s[2:])
            and (s[0] == 1 or same(s[0], x[0])) and same(s[1], x[1]))


# plan-file "type" -> step class: the one place a kind string is dispatched on
STEP_KINDS = {cls.kind: cls for cls in (ChainStep, AffineStep, AddStep, CopyStep)}
STEP_KINDS.update((cls.kind, cls) for cls in (TransposeStep, MeanStep, ScaleStep))


def _merged_name(a, b, limit=200):
    """The name of a step that absorbed another: both while short, then the first
    and the last (16,000 fused activations made names, and notes quoting them,
    quadratic in size: 1.3 GB)."""
    name = f"{a}+{b}"
    if len(name) <= limit:
        return name
    return f"{a.split('+...+')[0].split('+')[0]}+...+{b}"


def _len(v):
    return 0 if v is None else v.size


def _expand(v, c, default):
    if v is None:
        return np.full(c, default, np.float64)
    if v.size == 1:
        return np.full(c, float(v[0]), np.float64)
    if v.size != c:
        return None
    return v.astype(np.float64)


class Program(_Mutable):
    """inputs / outputs: ir.ValueInfo of the feeds and results; steps in execution
    order; notes: what the rewrite passes did; declined: what they did not do and why
    (not stored in plan files); metadata: the model's descriptive fields
    (ir.model_metadata)."""
    __slots__ = ("inputs", "outputs", "steps", "opset", "producer", "notes", "metadata",
                 "declined")

    def __init__(self, inputs, outputs, steps, opset=0, producer="", notes=None,
                 metadata=None, declined=None):
        self.inputs, self.outputs, self.steps = tuple(inputs), tuple(outputs), steps
        self.opset, self.producer = opset, producer
        self.notes = [] if notes is None else notes
        self.metadata = model_metadata(metadata or {})
        self.declined = [] if declined is None else declined

    def layers(self):
        for step in self.steps:
            yield from step.layers

    def with_steps(self, steps):
        return Program(self.inputs, self.outputs, steps, self.opset, self.producer,
                       list(self.notes), self.metadata, list(self.declined))
