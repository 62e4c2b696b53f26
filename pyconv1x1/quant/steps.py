"""The quantized program steps: what the recognizer makes of QDQ / QOperator /
ConvInteger nodes and what a plan file stores. Each step owns its behaviour: the
tensors it reads, its output shape, its description, its kernel objects, its bound call
for one input shape and its plan-file record.

Quantized tensors between steps are uint8 arrays with a zero point (an int8 value v is
held as v + 128); params travel with the steps that read or write them."""
import numpy as np

from ..errors import InputError, ModelError, UnsupportedError
from ..program import _Mutable


def _same_shape_out(step, shapes, a, b=None):
    x = shapes.get(a)
    if b is None:
        return x
    y = shapes.get(b)
    if x is None or y is None:
        return x or y
    if len(x) != len(y) or any(isinstance(p, int) and isinstance(q, int) and p != q
                               for p, q in zip(x, y)):
        raise UnsupportedError(f"{step.describe()}: inputs {list(x)} and {list(y)} "
                               "broadcast; only same-shape tensor sums run")
    return tuple(p if isinstance(p, int) else q for p, q in zip(x, y))


def _flat(a):
    """An array as [1, 1, size] (the kernels' [n, c, p] for elementwise work)."""
    return a.reshape(1, 1, -1)


def _out(outs, dst, shape, dtype):
    y = outs.get(dst)
    if y is not None and y.dtype == dtype and tuple(y.shape) == tuple(shape):
        return y
    return np.empty(shape, dtype)


# --------------------------------------------------------------------------------------
class QConvLayer(_Mutable):
    """One int8 1x1 conv: acc = bias + w . x (input zero point folded into bias), then
    requantized to uint8 (scale, zp_out, clamp lo..hi) or, when out_float, float32
    acc * scale + fbias. strides / pads (top, left, bottom, right; padded pixels hold
    in_zp) apply to the layer's input: only a chain's first layer has them."""
    __slots__ = ("names", "w", "bias", "scale", "zp_out", "lo", "hi", "fbias", "out_float",
                 "strides", "pads", "in_zp", "spatial_rank")

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
            raise ModelError(f"Conv '{layer.name}': input {list(x)} gives an empty output "
                             f"({ho}x{wo})")
    elif layer.keeps_pixels:
        ho, wo = hw
    else:
        ho = wo = None
    return (x[0], cout) + ((ho, wo) if rank == 2 else (wo,))


def _check_conv_input(layer, src, x):
    rank = layer.spatial_rank + 2
    if len(x) != rank:
        raise InputError(f"Conv '{layer.name}': input {src!r} has shape {list(x)}; "
                         f"expected rank {rank}")
    if x[1] != layer.cin:
        raise InputError(f"Conv '{layer.name}': input {src!r} has shape {list(x)}; "
                         f"expected {layer.cin} channels (dim 1)")
    out = _conv_out_shape(layer, layer.cout, tuple(x))
    if any(d < 1 for d in out[2:]) and all(d > 0 for d in x[2:]):
        raise InputError(f"Conv '{layer.name}': input {list(x)} gives an empty output")
    return out


class QChainStep(_Mutable):
    """Consecutive int8 convs run as one kernel chain. in_q: (scale, zp) when the input
    is float32 and is quantized here; out_dq: (scale, zp) when the uint8 result is
    dequantized here; else the input / output are uint8 tensors (or float32 from a last
    layer with out_float)."""
    __slots__ = ("input", "output", "layers", "in_q", "out_dq")

    def __init__(self, input, output, layers, in_q=None, out_dq=None):
        self.input, self.output, self.layers = input, output, list(layers)
        self.in_q, self.out_dq = in_q, out_dq

    name = property(lambda self: " -> ".join(l.name for l in self.layers))
    reads = property(lambda self: [self.input])
    kind = property(lambda self: f"int8 chain[{len(self.layers)}]")

    @property
    def out_dtype(self):
        return np.float32 if (self.out_dq or self.layers[-1].out_float) else np.uint8

    def rename_read(self, old, new):
        if self.input == old:
            self.input = new

    def describe(self):
        ends = (" (quantize in)" if self.in_q else "") + (
            " (dequantize out)" if self.out_dq else "")
        return f"int8 chain[{len(self.layers)}] {self.name}{ends}"

    def out_shape(self, shapes):
        return _conv_out_shape(self.layers[0], self.layers[-1].cout,
                               shapes.get(self.input))

    def flops(self, shape):
        n, p = shape[0], int(np.prod(shape[2:], dtype=np.int64))
        return sum(2 * n * p * l.cout * l.cin for l in self.layers)

    def build(self, api):
        return api.QChain([l.kernel(api) for l in self.layers],
                          self.layers[-1].out_float)

    def bind(self, kobj, api, shapes, threads):
        first = self.layers[0]
        out = _check_conv_input(first, self.input, shapes[self.input])
        out = out[:1] + (self.layers[-1].cout,) + out[2:]
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
    if in_q is not None and first.keeps_pixels and out_dq is None:
        kobj.run_f32(x.reshape(n, x.shape[1], -1), in_q[0], in_q[1],
                     y.reshape(n, cout, -1), threads)
        env[dst] = y
        return
    if in_q is not None:
        q = np.empty(x.shape, np.uint8)
        api.quantize_f32(_flat(x), in_q[0], in_q[1], _flat(q), threads)
        x = q
    x = _geometry(x, first, first.in_zp)
    x3 = x.reshape(n, x.shape[1], -1)
    if out_dq is None:
        kobj.run_u8(x3, y.reshape(n, cout, -1), threads)
    else:
        t = np.empty(out, np.uint8)
        kobj.run_u8(x3, t.reshape(n, cout, -1), threads)
        api.dequantize_u8(_flat(t), out_dq[0], out_dq[1], _flat(y), threads)
    env[dst] = y


class _Elementwise(_Mutable):
    __slots__ = ()
    reads = property(lambda self: [self.input])

    def rename_read(self, old, new):
        if self.input == old:
            self.input = new

    def out_shape(self, shapes):
        return shapes.get(self.input)

    def build(self, api):
        return None


class QuantizeStep(_Elementwise):
    """float32 -> uint8: clamp(round_half_even(x / scale) + zp, 0, 255)."""
    __slots__ = ("name", "input", "output", "scale", "zp")
    kind = "quantize"

    def __init__(self, name, input, output, scale, zp):
        self.name, self.input, self.output = name, input, output
        self.scale, self.zp = float(np.float32(scale)), int(zp)

    def describe(self):
        return f"quantize {self.name} (scale {self.scale:g}, zero point {self.zp})"

    def bind(self, kobj, api, shapes, threads):
        shape = tuple(shapes[self.input])
        shapes[self.output] = shape
        return (_run_quantize, (self.input, self.output, api, shape, self.scale, self.zp,
                                threads)), 0


def _run_quantize(env, outs, src, dst, api, shape, scale, zp, threads):
    y = _out(outs, dst, shape, np.uint8)
    if y.size:
        api.quantize_f32(_flat(env[src]), scale, zp, _flat(y), threads)
    env[dst] = y


class DequantizeStep(_Elementwise):
    """uint8 -> float32: (q - zp) * scale."""
    __slots__ = ("name", "input", "output", "scale", "zp")
    kind = "dequantize"

    def __init__(self, name, input, output, scale, zp):
        self.name, self.input, self.output = name, input, output
        self.scale, self.zp = float(np.float32(scale)), int(zp)

    def describe(self):
        return f"dequantize {self.name} (scale {self.scale:g}, zero point {self.zp})"

    def bind(self, kobj, api, shapes, threads):
        shape = tuple(shapes[self.input])
        shapes[self.output] = shape
        return (_run_dequantize, (self.input, self.output, api, shape, self.scale,
                                  self.zp, threads)), 0


def _run_dequantize(env, outs, src, dst, api, shape, scale, zp, threads):
    y = _out(outs, dst, shape, np.float32)
    if y.size:
        api.dequantize_u8(_flat(env[src]), scale, zp, _flat(y), threads)
    env[dst] = y


class EdgeStep(_Elementwise):
    """An int8 graph edge: int8 feed -> held uint8 (+128), or held uint8 -> int8 result."""
    __slots__ = ("name", "input", "output", "to_signed")
    kind = "int8 edge"

    def __init__(self, name, input, output, to_signed):
        self.name, self.input, self.output = name, input, output
        self.to_signed = bool(to_signed)

    def describe(self):
        return f"int8 {'output' if self.to_signed else 'input'} {self.name} (+-128)"

    def bind(self, kobj, api, shapes, threads):
        shape = tuple(shapes[self.input])
        shapes[self.output] = shape
        return (_run_edge, (self.input, self.output, shape, self.to_signed)), 0


def _run_edge(env, outs, src, dst, shape, to_signed):
    dtype = np.dtype(np.int8 if to_signed else np.uint8)
    y = _out(outs, dst, shape, dtype)
    np.bitwise_xor(env[src].view(np.uint8), np.uint8(0x80), out=y.view(np.uint8))
    env[dst] = y


class QActStep(_Elementwise):
    """Relu / Clip between a DequantizeLinear and a QuantizeLinear, in integers:
    y = clamp(round_half_even(float32(x - zi) * si / so) + zo, lo, hi): the qadd kernel
    adding x to itself at half the scale (exact: halving a float32 scale only lowers its
    exponent, and the two equal halves sum to float32(x - zi) * si)."""
    __slots__ = ("name", "input", "output", "zi", "si", "zo", "so", "lo", "hi")
    kind = "int8 activation"

    def __init__(self, name, input, output, zi, si, zo, so, lo, hi):
        self.name, self.input, self.output = name, input, output
        self.zi, self.zo, self.lo, self.hi = int(zi), int(zo), int(lo), int(hi)
        self.si, self.so = float(np.float32(si)), float(np.float32(so))

    def describe(self):
        return f"int8 activation {self.name} (clamp {self.lo}..{self.hi})"

    def bind(self, kobj, api, shapes, threads):
        shape = tuple(shapes[self.input])
        shapes[self.output] = shape
        half = self.si / 2
        args = (self.zi, half, self.zi, half, self.zo, self.so, self.lo, self.hi)
        return (_run_qadd, (self.input, self.input, self.output, api, shape, args,
                            threads)), 0


class QAddStep(_Mutable):
    """c = clamp(round_half_even(((a - za) * sa + (b - zb) * sb) / sc) + zc, lo, hi)
    on uint8 tensors of one shape (QLinearAdd, or DequantizeLinear x2 -> Add -> Q)."""
    __slots__ = ("name", "a", "b", "output", "za", "sa", "zb", "sb", "zc", "sc", "lo", "hi")
    kind = "int8 add"

    def __init__(self, name, a, b, output, za, sa, zb, sb, zc, sc, lo=0, hi=255):
        self.name, self.a, self.b, self.output = name, a, b, output
        self.za, self.zb, self.zc = int(za), int(zb), int(zc)
        self.sa, self.sb, self.sc = (float(np.float32(v)) for v in (sa, sb, sc))
        self.lo, self.hi = int(lo), int(hi)

    reads = property(lambda self: [self.a, self.b])

    def rename_read(self, old, new):
        self.a = new if self.a == old else self.a
        self.b = new if self.b == old else self.b

    def describe(self):
        return f"int8 add {self.name}"

    def out_shape(self, shapes):
        return _same_shape_out(self, shapes, self.a, self.b)

    def build(self, api):
        return None

    def bind(self, kobj, api, shapes, threads):
        a, b = tuple(shapes[self.a]), tuple(shapes[self.b])
        if a != b:
            raise UnsupportedError(f"{self.describe()}: inputs {self.a!r} {list(a)} and "
                                   f"{self.b!r} {list(b)} differ; broadcasting sums are "
                                   "not supported")
        shapes[self.output] = a
        args = (self.za, self.sa, self.zb, self.sb, self.zc, self.sc, self.lo, self.hi)
        return (_run_qadd, (self.a, self.b, self.output, api, a, args, threads)), 0


def _run_qadd(env, outs, a, b, dst, api, shape, args, threads):
    y = _out(outs, dst, shape, np.uint8)
    if y.size:
        za, sa, zb, sb, zc, sc, lo, hi = args
        api.qadd_u8(_flat(env[a]), za, sa, _flat(env[b]), zb, sb, _flat(y), zc, sc, lo, hi,
                    threads)
    env[dst] = y


class DynQConvStep(_Mutable):
    """quantize_dynamic's DynamicQuantizeLinear -> ConvInteger -> Cast -> Mul -> Add:
    float32 in, float32 out; the input's uint8 scale and zero point come from its
    min / max on every run (the ONNX spec's formula), the conv runs in int8 and its
    result is float32(acc) * float32(x_scale * w_scale[o]) + bias[o]."""
    __slots__ = ("layer", "input", "output", "wscale", "wide", "wsum")
    kind = "int8 dynamic conv"

    def __init__(self, layer, input, output, wscale, wide=None):
        # wide: int16 [cout, cin] weights minus zero point when they leave int8 (uint8
        # weights): then the conv runs in numpy integers, layer.w unused
        self.layer, self.input, self.output = layer, input, output
        self.wscale = np.ascontiguousarray(wscale, np.float32)
        self.wide = None if wide is None else np.ascontiguousarray(wide, np.int16)
        self.wsum = (layer.w if wide is None else self.wide).astype(np.int64).sum(axis=1)

    name = property(lambda self: self.layer.name)
    reads = property(lambda self: [self.input])

    def rename_read(self, old, new):
        if self.input == old:
            self.input = new

    def describe(self):
        return f"int8 dynamic conv {self.name}"

    def out_shape(self, shapes):
        return _conv_out_shape(self.layer, self.layer.cout, shapes.get(self.input))

    def build(self, api):
        return None

    def bind(self, kobj, api, shapes, threads):
        out = _check_conv_input(self.layer, self.input, shapes[self.input])
        shapes[self.output] = out
        flops = 2 * out[0] * int(np.prod(out[2:])) * self.layer.cout * self.layer.cin
        return (_run_dynconv, (self, api, out, threads)), flops


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


def _run_dynconv(env, outs, step, api, out, threads):
    x = env[step.input]
    y = _out(outs, step.output, out, np.float32)
    if y.size == 0:
        env[step.output] = y
        return
    if not np.isfinite(x).all():
        raise InputError(f"{step.describe()}: input {step.input!r} holds NaN or infinity; "
                         "its dynamic quantization range is undefined")
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
        acc = np.einsum("ok,nkp->nop", step.wide.astype(np.int64),
                        q.reshape(n, q.shape[1], -1).astype(np.int64)) + bias[None, :, None]
        y.reshape(n, layer.cout, -1)[...] = (acc.astype(np.int32).astype(np.float32)
                                             * scale[None, :, None] + fbias[None, :, None])
        env[step.output] = y
        return
    chain = api.QChain([api.QLayer(layer.w, bias.astype(np.int32), scale, 0, 0, 255,
                                   fbias)], True)
    chain.run_u8(q.reshape(n, q.shape[1], -1), y.reshape(n, layer.cout, -1), threads)
    env[step.output] = y


QUANT_STEPS = (QChainStep, QuantizeStep, DequantizeStep, EdgeStep, QAddStep, QActStep,
               DynQConvStep)
