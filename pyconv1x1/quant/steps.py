"""The quantized program steps (program.steps.Step kinds): what the recognizer makes of
QDQ / QOperator / ConvInteger nodes and what a plan file stores. Each step owns its
behaviour: the tensors it reads, its output shape, its description, its plan-file codec
(encode / decode / validate), its kernel object (build) and its bound call for one input
shape (bind). They are registered in program.STEP_KINDS here and in plan.BINDERS /
plan.KERNEL_BUILDERS through BINDERS / KERNEL_BUILDERS below.

Quantized tensors between steps are uint8 arrays with a zero point (an int8 value v is
held as v + 128); params travel with the steps that read or write them."""
import numpy as np

from ..errors import InputError, ModelError, UnsupportedError
from ..program.codec import (field, integer, json_list, layer_names, name as _name,
                              number, show)
from ..program.steps import STEP_KINDS, Step, _Mutable


def _flat(a):
    """An array as [1, 1, size] (the kernels' [n, c, p] for elementwise work)."""
    return a.reshape(1, 1, -1)


def _out(outs, dst, shape, dtype):
    y = outs.get(dst)
    if y is not None and y.dtype == dtype and tuple(y.shape) == tuple(shape):
        return y
    return np.empty(shape, dtype)


# -- plan-file field readers ------------------------------------------------------------
def _scale(v, what):
    v = number(v, what)
    if not (np.isfinite(v) and v > 0):
        raise ModelError(f"{what} is {v}; a scale must be finite and > 0")
    return v


def _u8(v, what):
    return integer(v, what, 0, 255)


def _flag(v, what):
    if not isinstance(v, bool):
        raise ModelError(f"{what} is {show(v)}; expected a boolean")
    return v


def _q_pair(v, what):
    """(scale, zero point) or None, from a plan file."""
    if v is None:
        return None
    v = json_list(v, what)
    if len(v) != 2:
        raise ModelError(f"{what} has {len(v)} values; expected [scale, zero point]")
    return _scale(v[0], f"{what} scale"), _u8(v[1], f"{what} zero point")


def _names(s, what, *keys):
    return [_name(field(s, k, what), f"{what} {k}") for k in keys]


# --------------------------------------------------------------------------------------
class QConvLayer(_Mutable):
    """One int8 1x1 conv: acc = bias + w . x (input zero point folded into bias), then
    requantized to uint8 (scale, zp_out, clamp lo..hi) or, when out_float, float32
    acc * scale + fbias. strides / pads (top, left, bottom, right; padded pixels hold
    in_zp) apply to the layer's input: only a chain's first layer has them."""
    __slots__ = ("names", "w", "bias", "scale", "zp_out", "lo", "hi", "fbias",
                 "out_float", "strides", "pads", "in_zp", "spatial_rank")

    def __init__(self, names, w, bias, scale, zp_out=0, lo=0, hi=255, fbias=None,
                 out_float=False, strides=(1, 1), pads=(0, 0, 0, 0), in_zp=0,
                 spatial_rank=2):
        self.names = list(names)
        self.w = np.ascontiguousarray(w, np.int8)
        self.bias = np.ascontiguousarray(bias, np.int32)
        self.scale = np.ascontiguousarray(scale, np.float32)
        self.zp_out, self.lo, self.hi = int(zp_out), int(lo), int(hi)
        self.fbias = None if fbias is None else np.ascontiguousarray(fbias, np.float32)
        self.out_float = bool(out_float)
        self.strides, self.pads = tuple(strides), tuple(pads)
        self.in_zp, self.spatial_rank = int(in_zp), int(spatial_rank)

    cout = property(lambda self: self.w.shape[0])
    cin = property(lambda self: self.w.shape[1])
    name = property(lambda self: "+".join(self.names))

    @property
    def keeps_pixels(self):
        return self.strides == (1, 1) and self.pads == (0, 0, 0, 0)

    def out_hw(self, h, w):
        pt, pl, pb, pr = self.pads
        sh, sw = self.strides
        return (h + pt + pb - 1) // sh + 1, (w + pl + pr - 1) // sw + 1

    def kernel(self, api):
        return api.QLayer(self.w, self.bias, self.scale, self.zp_out, self.lo, self.hi,
                          self.fbias)

    def describe(self):
        out = "float32" if self.out_float else f"uint8 clamp {self.lo}..{self.hi}"
        return f"int8 conv {self.name} {self.cin}->{self.cout} ({out})"

    def encode(self, arrays):
        return {"names": list(self.names), "w": arrays.add(self.w),
                "bias": arrays.add(self.bias), "scale": arrays.add(self.scale),
                "zp_out": self.zp_out, "lo": self.lo, "hi": self.hi,
                "fbias": arrays.add(self.fbias), "out_float": self.out_float,
                "strides": list(self.strides), "pads": list(self.pads),
                "in_zp": self.in_zp, "spatial_rank": self.spatial_rank}

    @classmethod
    def decode(cls, l, arr, what):
        get = lambda key: field(l, key, what)  # noqa: E731
        names = layer_names(l, what)
        w = arr(get("w"), f"{what} w", "int8")
        if w is None or w.ndim != 2 or 0 in w.shape:
            raise ModelError(f"{what}: weight must be a non-empty [cout, cin] int8 array")
        cout = w.shape[0]
        vec = {}
        for key, dtype in (("bias", "int32"), ("scale", "float32"), ("fbias", "float32")):
            a = arr(get(key), f"{what} {key}", dtype)
            if a is not None and a.shape != (cout,):
                raise ModelError(f"{what}: {key} has shape {list(a.shape)}; expected "
                                 f"[{cout}]")
            vec[key] = a
        if vec["bias"] is None or vec["scale"] is None:
            raise ModelError(f"{what}: bias and scale are required")
        if not (np.isfinite(vec["scale"]).all() and (vec["scale"] > 0).all()):
            raise ModelError(f"{what}: scales must be finite and > 0")
        ints = lambda key: tuple(  # noqa: E731
            integer(x, f"{what} {key}", 0, 1 << 20) for x in json_list(get(key),
                                                                      f"{what} {key}"))
        strides, pads = ints("strides"), ints("pads")
        if len(strides) != 2 or len(pads) != 4 or min(strides) < 1:
            raise ModelError(f"{what}: bad strides / pads")
        lo, hi = _u8(get("lo"), f"{what} lo"), _u8(get("hi"), f"{what} hi")
        if lo > hi:
            raise ModelError(f"{what}: clamp {lo}..{hi} is empty")
        return cls(names, w, vec["bias"], vec["scale"],
                   _u8(get("zp_out"), f"{what} zp_out"), lo, hi, vec["fbias"],
                   _flag(get("out_float"), f"{what} out_float"),
                   strides, pads, _u8(get("in_zp"), f"{what} in_zp"),
                   integer(get("spatial_rank"), f"{what} spatial_rank", 1, 2))


def _geometry(q, layer, zp):
    """The layer's input after its pads (filled with the zero point) and strides."""
    if layer.keeps_pixels:
        return q
    x4 = q[:, :, None, :] if layer.spatial_rank == 1 else q
    pt, pl, pb, pr = layer.pads
    if pt or pl or pb or pr:
        x4 = np.pad(x4, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=zp)
    x4 = np.ascontiguousarray(x4[:, :, ::layer.strides[0], ::layer.strides[1]])
    return x4[:, :, 0, :] if layer.spatial_rank == 1 else x4


def _conv_out_shape(layer, cout, x):
    """[n, cout, spatial...] of a conv layer reading x (dims may be names or None)."""
    rank = layer.spatial_rank
    if x is None:
        return (None, cout) + (None,) * rank
    hw = (1, x[2]) if rank == 1 else (x[2], x[3])
    if all(isinstance(d, int) for d in hw):
        ho, wo = layer.out_hw(*hw)
        if ho < 1 or wo < 1:
            raise ModelError(f"Conv '{layer.name}': input {list(x)} gives an empty "
                             f"output ({ho}x{wo})")
    elif layer.keeps_pixels:
        ho, wo = hw
    else:
        ho = wo = None
    return (x[0], cout) + ((ho, wo) if rank == 2 else (wo,))


def _check_conv_input(layer, src, x):
    """The output shape of int8 conv `layer` for input shape x (InputError if wrong)."""
    from ..plan import check_conv_input
    check_conv_input(layer, src, x)
    if any(d == 0 for d in x[2:]):
        return (x[0], layer.cout) + tuple(0 for _ in x[2:])
    return _conv_out_shape(layer, layer.cout, tuple(x))


class QChainStep(Step):
    """Consecutive int8 convs run as one kernel chain. in_q: (scale, zp) when the input
    is float32 and is quantized here; out_dq: (scale, zp) when the uint8 result is
    dequantized here; else the input / output are uint8 tensors (or float32 from a last
    layer with out_float). Its layers are `qlayers` (Step.layers: float convs only)."""
    __slots__ = ("input", "output", "qlayers", "in_q", "out_dq")
    kind = "qchain"

    def __init__(self, input, output, qlayers, in_q=None, out_dq=None):
        self.input, self.output, self.qlayers = input, output, list(qlayers)
        self.in_q, self.out_dq = in_q, out_dq

    name = property(lambda self: " -> ".join(l.name for l in self.qlayers))
    label = property(lambda self: "+".join(n for l in self.qlayers for n in l.names))
    reads = property(lambda self: [self.input])
    title = property(lambda self: f"int8 chain[{len(self.qlayers)}]")
    param_count = property(lambda self: sum(l.w.size + l.cout for l in self.qlayers))

    @property
    def out_dtype(self):
        return np.float32 if (self.out_dq or self.qlayers[-1].out_float) else np.uint8

    def describe(self):
        ends = (" (quantize in)" if self.in_q else "") + (
            " (dequantize out)" if self.out_dq else "")
        return " -> ".join(l.describe() for l in self.qlayers) + ends

    def out_shape(self, shapes):
        return _conv_out_shape(self.qlayers[0], self.qlayers[-1].cout,
                               shapes.get(self.input))

    def encode(self, arrays, mr):
        pair = lambda p: None if p is None else [float(p[0]), int(p[1])]  # noqa: E731
        return {"type": self.kind, "input": self.input, "output": self.output,
                "in_q": pair(self.in_q), "out_dq": pair(self.out_dq),
                "layers": [l.encode(arrays) for l in self.qlayers]}

    @classmethod
    def decode(cls, s, arr, what):
        layers = [QConvLayer.decode(l, arr, f"{what} layer {i}") for i, l in
                  enumerate(json_list(field(s, "layers", what), f"{what} layers"))]
        return cls(*_names(s, what, "input", "output"), layers,
                   _q_pair(field(s, "in_q", what), f"{what} in_q"),
                   _q_pair(field(s, "out_dq", what), f"{what} out_dq"))

    def validate(self, defined):
        if not self.qlayers:
            raise ModelError(f"plan int8 chain {self.output!r} has no layers")
        for i in range(1, len(self.qlayers)):
            a, b = self.qlayers[i - 1], self.qlayers[i]
            if b.cin != a.cout or not b.keeps_pixels or a.out_float:
                raise ModelError(f"plan int8 layer {b.name}: does not chain")
        if self.out_dq is not None and self.qlayers[-1].out_float:
            raise ModelError(f"plan int8 chain {self.name}: dequantizes a float output")

    def flops(self, shape):
        n, p = shape[0], int(np.prod(shape[2:], dtype=np.int64))
        return sum(2 * n * p * l.cout * l.cin for l in self.qlayers)

    def build(self, api, fkernels=None):
        """The chain's kernel object: an int8 QChain, or (floatpath.use_float: exact,
        and the int8 path here is slower than float32) a FloatQChain on `fkernels`."""
        from . import floatpath
        out_float = self.qlayers[-1].out_float
        chain = api.QChain([l.kernel(api) for l in self.qlayers], out_float)
        if fkernels is not None and floatpath.use_float(self.qlayers, api):
            small = None if floatpath.mode() == "float" else chain
            return floatpath.FloatQChain(self.qlayers, out_float, api, fkernels, small)
        return chain

    def bind(self, kobj, api, shapes, threads):
        first = self.qlayers[0]
        out = _check_conv_input(first, self.input, shapes[self.input])
        out = out[:1] + (self.qlayers[-1].cout,) + out[2:]
        shapes[self.output] = out
        return (_run_qchain, (self.input, self.output, kobj, api, self.in_q, self.out_dq,
                              first, out, np.dtype(self.out_dtype), threads)), \
            self.flops(out)


def _run_qchain(env, outs, src, dst, kobj, api, in_q, out_dq, first, out, dtype, threads):
    x = env[src]
    y = _out(outs, dst, out, dtype)
    n, cout = out[0], out[1]
    if y.size == 0:
        env[dst] = y
        return
    t = y if out_dq is None else np.empty(out, np.uint8)
    if in_q is not None and first.keeps_pixels:  # quantized in the chain's gather
        kobj.run_f32(x.reshape(n, x.shape[1], -1), in_q[0], in_q[1],
                     t.reshape(n, cout, -1), threads)
    else:
        if in_q is not None:
            q = np.empty(x.shape, np.uint8)
            api.quantize_f32(_flat(x), in_q[0], in_q[1], _flat(q), threads)
            x = q
        x = _geometry(x, first, first.in_zp)
        kobj.run_u8(x.reshape(n, x.shape[1], -1), t.reshape(n, cout, -1), threads)
    if out_dq is not None:
        api.dequantize_u8(_flat(t), out_dq[0], out_dq[1], _flat(y), threads)
    env[dst] = y


def _direct_qchain(args, in_shape):
    """plan.DIRECT_BINDERS entry of _run_qchain: the chain bound at this input shape for
    run()'s fast path when it reads float32 (quantized in its gather) and writes float32,
    else None. Same kernel calls as _run_qchain, so the same bits."""
    src, dst, kobj, api, in_q, out_dq, first, out, dtype, threads = args
    if (not isinstance(kobj, api.QChain) or in_q is None or not first.keeps_pixels
            or dtype != np.float32 or 0 in out or 0 in in_shape):
        return None
    return api.BoundQChain(kobj, tuple(in_shape), tuple(out), in_q, out_dq, threads)


class _Elementwise(_Mutable):
    __slots__ = ()
class _Elementwise(Step):
    """One input, one output of its shape; no kernel object."""
    __slots__ = ()
    param_count = 0
    reads = property(lambda self: [self.input])
    title = property(lambda self: self.kind)

    def build(self, api):
        return None


class _Rescale(_Elementwise):
    """Quantize / Dequantize: (name, input, output, scale, zp)."""
    __slots__ = ("name", "input", "output", "scale", "zp")

    def __init__(self, name, input, output, scale, zp):
        self.name, self.input, self.output = name, input, output
        self.scale, self.zp = float(np.float32(scale)), int(zp)

    def describe(self):
        return f"{self.kind} {self.name} (scale {self.scale:g}, zero point {self.zp})"

    def encode(self, arrays, mr):
        return {"type": self.kind, "name": self.name, "input": self.input,
                "output": self.output, "scale": self.scale, "zp": self.zp}

    @classmethod
    def decode(cls, s, arr, what):
        return cls(*_names(s, what, "name", "input", "output"),
                   _scale(field(s, "scale", what), f"{what} scale"),
                   _u8(field(s, "zp", what), f"{what} zp"))

    def bind(self, kobj, api, shapes, threads):
        shape = tuple(shapes[self.input])
        shapes[self.output] = shape
        return (self._run, (self.input, self.output, api, shape, self.scale, self.zp,
                            threads)), 0


def _run_quantize(env, outs, src, dst, api, shape, scale, zp, threads):
    y = _out(outs, dst, shape, np.uint8)
    if y.size:
        api.quantize_f32(_flat(env[src]), scale, zp, _flat(y), threads)
    env[dst] = y


def _run_dequantize(env, outs, src, dst, api, shape, scale, zp, threads):
    y = _out(outs, dst, shape, np.float32)
    if y.size:
        api.dequantize_u8(_flat(env[src]), scale, zp, _flat(y), threads)
    env[dst] = y


class QuantizeStep(_Rescale):
    """float32 -> uint8: clamp(round_half_even(x / scale) + zp, 0, 255)."""
    __slots__ = ()
    kind = "quantize"
    _run = staticmethod(_run_quantize)


class DequantizeStep(_Rescale):
    """uint8 -> float32: (q - zp) * scale."""
    __slots__ = ()
    kind = "dequantize"
    _run = staticmethod(_run_dequantize)


class EdgeStep(_Elementwise):
    """An int8 graph edge: int8 feed -> held uint8 (+128), or held uint8 -> int8
    result."""
    __slots__ = ("name", "input", "output", "to_signed")
    kind = "qedge"
    title = "int8 edge"

    def __init__(self, name, input, output, to_signed):
        self.name, self.input, self.output = name, input, output
        self.to_signed = bool(to_signed)

    def describe(self):
        return f"int8 {'output' if self.to_signed else 'input'} {self.name} (+-128)"

    def encode(self, arrays, mr):
        return {"type": self.kind, "name": self.name, "input": self.input,
                "output": self.output, "to_signed": self.to_signed}

    @classmethod
    def decode(cls, s, arr, what):
        return cls(*_names(s, what, "name", "input", "output"),
                   _flag(field(s, "to_signed", what), f"{what} to_signed"))

    def bind(self, kobj, api, shapes, threads):
        shape = tuple(shapes[self.input])
        shapes[self.output] = shape
        return (_run_edge, (self.input, self.output, shape, self.to_signed)), 0


def _run_edge(env, outs, src, dst, shape, to_signed):
    dtype = np.dtype(np.int8 if to_signed else np.uint8)
    y = _out(outs, dst, shape, dtype)
    np.bitwise_xor(env[src].view(np.uint8), np.uint8(0x80), out=y.view(np.uint8))
    env[dst] = y


class _QSum(Step):
    """c = clamp(round_half_even(((a - za) * sa + (b - zb) * sb) / sc) + zc, lo, hi) on
    uint8 tensors of one shape; the qadd kernel. FIELDS name the subclass's params."""
    __slots__ = ()
    FIELDS = ()
    title = property(lambda self: f"int8 {self.kind[1:]}")
    param_count = 0

    def __init__(self, name, *values):
        self.name = name
        for key, v in zip(self.FIELDS, values):  # (two-letter keys: s* scales, others
            if len(key) == 2:                    # zero points and clamp bounds)
                v = float(np.float32(v)) if key[0] == "s" else int(v)
            setattr(self, key, v)

    def encode(self, arrays, mr):
        return {"type": self.kind, "name": self.name,
                **{k: getattr(self, k) for k in self.FIELDS}}

    @classmethod
    def decode(cls, s, arr, what):
        values = []
        for key in cls.FIELDS:
            v = field(s, key, what)
            values.append(_name(v, f"{what} {key}") if len(key) != 2
                          else _scale(v, f"{what} {key}") if key[0] == "s"
                          else _u8(v, f"{what} {key}"))
        step = cls(_name(field(s, "name", what), f"{what} name"), *values)
        if step.lo > step.hi:
            raise ModelError(f"{what}: clamp {step.lo}..{step.hi} is empty")
        return step

    def build(self, api):
        return None

    def _bind(self, a, b, args, shapes, api, threads):
        sa, sb = tuple(shapes[a]), tuple(shapes[b])
        if sa != sb:
            raise UnsupportedError(f"{self.describe()}: inputs {a!r} {list(sa)} and "
                                   f"{b!r} {list(sb)} differ; broadcasting sums are not "
                                   "supported")
        shapes[self.output] = sa
        return (_run_qadd, (a, b, self.output, api, sa, args, threads)), 0


class QAddStep(_QSum):
    """A residual join in int8 (QLinearAdd, or DequantizeLinear x2 -> Add [-> Relu] ->
    QuantizeLinear)."""
    FIELDS = ("a", "b", "output", "za", "sa", "zb", "sb", "zc", "sc", "lo", "hi")
    __slots__ = ("name",) + FIELDS
    kind = "qadd"

    def __init__(self, name, a, b, output, za, sa, zb, sb, zc, sc, lo=0, hi=255):
        super().__init__(name, a, b, output, za, sa, zb, sb, zc, sc, lo, hi)

    reads = property(lambda self: [self.a, self.b])

    def rename_read(self, old, new):
        self.a = new if self.a == old else self.a
        self.b = new if self.b == old else self.b

    def describe(self):
        return f"int8 add {self.name} ({self.a} + {self.b})"

    def out_shape(self, shapes):
        a, b = shapes.get(self.a), shapes.get(self.b)
        if a is None or b is None:
            return a or b
        if len(a) != len(b) or any(isinstance(p, int) and isinstance(q, int) and p != q
                                   for p, q in zip(a, b)):
            raise UnsupportedError(f"{self.describe()}: inputs {list(a)} and {list(b)} "
                                   "broadcast; only same-shape tensor sums run")
        return tuple(p if isinstance(p, int) else q for p, q in zip(a, b))

    def bind(self, kobj, api, shapes, threads):
        args = (self.za, self.sa, self.zb, self.sb, self.zc, self.sc, self.lo, self.hi)
        return self._bind(self.a, self.b, args, shapes, api, threads)


class QActStep(_QSum):
    """Relu / Clip between a DequantizeLinear and a QuantizeLinear, in integers:
    y = clamp(round_half_even(float32(x - zi) * si / so) + zo, lo, hi): the qadd kernel
    adding x to itself at half the scale (exact: halving a float32 scale only lowers its
    exponent, and the two equal halves sum to float32(x - zi) * si)."""
    FIELDS = ("input", "output", "zi", "si", "zo", "so", "lo", "hi")
    __slots__ = ("name",) + FIELDS
    kind = "qact"

    def __init__(self, name, input, output, zi, si, zo, so, lo, hi):
        super().__init__(name, input, output, zi, si, zo, so, lo, hi)

    reads = property(lambda self: [self.input])

    def describe(self):
        return f"int8 activation {self.name} (clamp {self.lo}..{self.hi})"

    def bind(self, kobj, api, shapes, threads):
        half = self.si / 2
        args = (self.zi, half, self.zi, half, self.zo, self.so, self.lo, self.hi)
        return self._bind(self.input, self.input, args, shapes, api, threads)


def _run_qadd(env, outs, a, b, dst, api, shape, args, threads):
    y = _out(outs, dst, shape, np.uint8)
    if y.size:
        za, sa, zb, sb, zc, sc, lo, hi = args
        api.qadd_u8(_flat(env[a]), za, sa, _flat(env[b]), zb, sb, _flat(y), zc, sc, lo,
                    hi, threads)
    env[dst] = y


class DynQConvStep(Step):
    """quantize_dynamic's DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul -> Add:
    float32 in, float32 out; the input's uint8 scale and zero point come from its
    min / max on every run (the ONNX spec's formula), the conv runs in int8 and its
    result is float32(acc) * float32(x_scale * w_scale[o]) + bias[o]. wide: int16
    [cout, cin] weights minus zero point when they leave int8 (uint8 weights): then the
    conv runs in numpy integers and layer.w is unused."""
    __slots__ = ("layer", "input", "output", "wscale", "wide", "wsum")
    kind = "qdynconv"
    title = "int8 dynamic conv"
    param_count = property(lambda self: self.layer.w.size + self.layer.cout)

    def __init__(self, layer, input, output, wscale, wide=None):
        self.layer, self.input, self.output = layer, input, output
        self.wscale = np.ascontiguousarray(wscale, np.float32)
        self.wide = None if wide is None else np.ascontiguousarray(wide, np.int16)
        self.wsum = (layer.w if wide is None else self.wide).astype(np.int64).sum(axis=1)

    name = property(lambda self: self.layer.names[0])
    reads = property(lambda self: [self.input])

    def describe(self):
        return f"int8 dynamic conv {self.layer.name} {self.layer.cin}->{self.layer.cout}"

    def out_shape(self, shapes):
        return _conv_out_shape(self.layer, self.layer.cout, shapes.get(self.input))

    def encode(self, arrays, mr):
        return {"type": self.kind, "input": self.input, "output": self.output,
                "layer": self.layer.encode(arrays), "wscale": arrays.add(self.wscale),
                "wide": arrays.add(self.wide)}

    @classmethod
    def decode(cls, s, arr, what):
        layer = QConvLayer.decode(field(s, "layer", what), arr, f"{what} layer")
        wscale = arr(field(s, "wscale", what), f"{what} wscale", "float32")
        if wscale is None or wscale.shape != (layer.cout,):
            raise ModelError(f"{what}: wscale does not match {layer.cout} channels")
        wide = arr(field(s, "wide", what), f"{what} wide", "int16")
        if wide is not None and wide.shape != layer.w.shape:
            raise ModelError(f"{what}: wide weight does not match {list(layer.w.shape)}")
        return cls(layer, *_names(s, what, "input", "output"), wscale, wide)

    def build(self, api):
        """The weights packed once (QLayer); each run gives it that run's bias and scale
        (QLayer.rebias). None for wide weights (numpy integers)."""
        if self.wide is not None:
            return None
        cout = self.layer.cout
        q = api.QLayer(self.layer.w, np.zeros(cout, np.int32), np.ones(cout, np.float32),
                       0, 0, 255)
        api.QChain([q], True)  # packs the layout of the runs' chains now, not in a run
        return q

    def bind(self, kobj, api, shapes, threads):
        out = _check_conv_input(self.layer, self.input, shapes[self.input])
        shapes[self.output] = out
        flops = 2 * out[0] * int(np.prod(out[2:])) * self.layer.cout * self.layer.cin
        return (_run_dynconv, (self, kobj, api, out, threads)), flops


def dynamic_quantize_params(x):
    """(scale, zero point) of DynamicQuantizeLinear for x (the ONNX spec's formula,
    as the onnx ReferenceEvaluator computes it)."""
    if x.size == 0:
        return np.float32(1.0 / 255), 0
    hi = np.float32(max(0.0, float(np.max(x))))
    lo = np.float32(min(0.0, float(np.min(x))))
    scale = np.float32(1.0 if hi == lo else (hi - lo)) / np.float32(255)
    zp = np.float32(0) - lo / scale
    zp = float(np.rint(max(0.0, min(255.0, float(zp)))))
    return np.float32(scale), int(zp)


def _run_dynconv(env, outs, step, kobj, api, out, threads):
    x = env[step.input]
    y = _out(outs, step.output, out, np.float32)
    if y.size == 0:
        env[step.output] = y
        return
    if not np.isfinite(x).all():
        raise InputError(f"{step.describe()}: input {step.input!r} holds NaN or "
                         "infinity; its dynamic quantization range is undefined")
    xs, xz = dynamic_quantize_params(x)
    q = np.empty(x.shape, np.uint8)
    api.quantize_f32(_flat(x), xs, xz, _flat(q), threads)
    layer = step.layer
    q = _geometry(q, layer, xz)
    bias = layer.bias.astype(np.int64) - xz * step.wsum
    scale = (np.float32(xs) * step.wscale).astype(np.float32)
    fbias = layer.fbias if layer.fbias is not None else np.zeros(layer.cout, np.float32)
    n = out[0]
    if step.wide is not None:
        q3 = q.reshape(n, q.shape[1], -1).astype(np.int64)
        acc = np.einsum("ok,nkp->nop", step.wide.astype(np.int64), q3)
        acc += bias[None, :, None]
        y3 = acc.astype(np.int32).astype(np.float32) * scale[None, :, None]
        y.reshape(n, layer.cout, -1)[...] = y3 + fbias[None, :, None]
        env[step.output] = y
        return
    chain = api.QChain([kobj.rebias(bias.astype(np.int32), scale, fbias)], True)
    chain.run_u8(q.reshape(n, q.shape[1], -1), y.reshape(n, layer.cout, -1), threads)
    env[step.output] = y


QUANT_STEPS = (QChainStep, QuantizeStep, DequantizeStep, EdgeStep, QAddStep, QActStep,
               DynQConvStep)
STEP_KINDS.update({cls.kind: cls for cls in QUANT_STEPS})


def _kernels_for(kernels):
    from . import kernels as int8_kernels
    return int8_kernels(getattr(kernels, "VARIANT", None))


def _bind(planner, step, kset, shapes, nr, threads):
    """plan.BINDERS entry of every quantized step: its bound call; counts its FLOPs and
    checks its output's size like the float steps."""
    from ..plan import _check_size
    call, flops = step.bind(kset.chains.get(id(step)), _kernels_for(kset.kernels), shapes,
                            threads)
    _check_size(shapes[step.output], step.label, step.reads[0], shapes[step.reads[0]],
                "step")
    planner.flops += flops
    return call


BINDERS = {cls.kind: _bind for cls in QUANT_STEPS}
DIRECT_BINDERS = {_run_qchain: _direct_qchain}
KERNEL_BUILDERS = {
    QChainStep.kind: lambda step, kernels: step.build(_kernels_for(kernels), kernels),
    DynQConvStep.kind: lambda step, kernels: step.build(_kernels_for(kernels))}
