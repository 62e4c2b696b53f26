"""The int8 kernels' arithmetic in numpy, step for step (the C is pyconv1x1/_qkernels.h):
the kernel tests compare with it bitwise, and it is the kernel API (`QLayer`, `QChain`,
`quantize_f32`, `dequantize_u8`, `qadd_u8`; see `pyconv1x1.quant.kernels`) where the
compiled int8 kernels are not built, with the same results.

Activations are uint8 with a zero point (s8 activations are shifted by +128 by the
caller), weights int8, accumulators exact int32, float steps in float32:

    acc   = bias[o] + sum_k w[o, k] * x[k, p]        (input zero point folded into bias)
    u8    y = clamp(rne(float32(acc) * scale[o]) + zp, lo, hi)
    f32   y = float32(acc) * scale[o] + fbias[o]         (a multiply, then an add)
    quantize      q = clamp(rne(x / scale) + zp, 0, 255)  (NaN -> 0)
    dequantize    y = float32(q - zp) * scale
    add   c = clamp(rne((float32(a - za) * sa + float32(b - zb) * sb) / sc) + zc, lo, hi)

rne is round half to even (numpy.rint), done after clamping to [lo - zp, hi - zp] in
float (the same result as clamping after, for every float, including infinities; NaN
clamps to lo), as onnxruntime's MLAS does.
"""
import numpy as np

__all__ = ["round_clamp", "quantize", "dequantize", "accumulate", "requantize", "layer",
           "chain", "qadd", "QLayer", "QChain", "quantize_f32", "dequantize_u8",
           "qadd_u8"]

INT8_PATH = "numpy reference (int8 kernels not built)"


# -- the arithmetic ---------------------------------------------------------------------
def round_clamp(v, zp, lo=0, hi=255):
    """float32 v -> uint8: clamp to [lo - zp, hi - zp] (NaN -> lo - zp), round half to
    even, add zp."""
    v = np.asarray(v, np.float32)
    flo, fhi = np.float32(lo - zp), np.float32(hi - zp)
    v = np.where(v > flo, v, flo)
    v = np.where(v < fhi, v, fhi)
    return (np.rint(v).astype(np.int32) + zp).astype(np.uint8)


def quantize(x, scale, zp):
    """float32 x -> uint8: clamp(rne(x / scale) + zp, 0, 255)."""
    with np.errstate(all="ignore"):
        return round_clamp(np.asarray(x, np.float32) / np.float32(scale), zp)


def dequantize(q, scale, zp):
    return (np.asarray(q).astype(np.int32) - zp).astype(np.float32) * np.float32(scale)


def accumulate(w, bias, x):
    """x uint8 [n, k, p], w int8 [cout, k], bias int32 [cout] -> int32 [n, cout, p]
    (computed in int64, so a wrap would show)."""
    acc = np.einsum("ok,nkp->nop", w.astype(np.int64), x.astype(np.int64))
    acc = acc + np.asarray(bias).astype(np.int64)[None, :, None]
    assert np.all(np.abs(acc) < 2 ** 31)
    return acc.astype(np.int32)


def requantize(acc, scale, zp_out, lo, hi, fbias=None, out_float=False):
    """int32 (or integer-valued float32) acc [n, cout, p] -> uint8, or float32 when
    out_float."""
    s = np.asarray(scale, np.float32)[None, :, None]
    with np.errstate(all="ignore"):
        v = np.asarray(acc).astype(np.float32) * s
        if out_float:
            if fbias is not None:
                v = v + np.asarray(fbias, np.float32)[None, :, None]
            return v.astype(np.float32)
        return round_clamp(v, zp_out, lo, hi)


def layer(x, w, bias, scale, zp_out, lo, hi, fbias=None, out_float=False):
    """One quantized layer on uint8 [n, k, p]."""
    return requantize(accumulate(w, bias, x), scale, zp_out, lo, hi, fbias, out_float)


def chain(x, layers, out_float=False, in_scale=None, in_zp=None):
    """layers: (w, bias, scale, zp_out, lo, hi, fbias) tuples; x uint8, or float32 with
    in_scale and in_zp (quantized first)."""
    if in_scale is not None:
        x = quantize(x, in_scale, in_zp)
    for i, spec in enumerate(layers):
        x = layer(x, *spec, out_float=out_float and i == len(layers) - 1)
    return x


def qadd(a, za, sa, b, zb, sb, zc, sc, lo=0, hi=255):
    u = (a.astype(np.int32) - za).astype(np.float32) * np.float32(sa)
    v = (b.astype(np.int32) - zb).astype(np.float32) * np.float32(sb)
    with np.errstate(all="ignore"):
        return round_clamp((u + v) / np.float32(sc), zc, lo, hi)


# -- the kernel API (pyconv1x1._qkernels_*) on top of it ---------------------------------
class QLayer:
    __slots__ = ("w", "bias", "scale", "zp_out", "lo", "hi", "fbias")

    def __init__(self, w, bias, scale, zp_out, lo, hi, fbias=None):
        self.w = np.ascontiguousarray(w, np.int8)
        cout = self.w.shape[0]
        self.bias = np.ascontiguousarray(bias, np.int32).reshape(cout)
        self.scale = np.ascontiguousarray(scale, np.float32).reshape(cout)
        self.zp_out, self.lo, self.hi = int(zp_out), int(lo), int(hi)
        self.fbias = None if fbias is None else \
            np.ascontiguousarray(fbias, np.float32).reshape(cout)

    def rebias(self, bias, scale, fbias=None):
        """This layer's weights with another bias, scale and fbias."""
        return QLayer(self.w, bias, scale, self.zp_out, self.lo, self.hi, fbias)

    def spec(self):
        return (self.w, self.bias, self.scale, self.zp_out, self.lo, self.hi, self.fbias)


class QChain:
    """Layers run one after another on uint8 tensors [n, c, p]; the last one writes
    float32 when out_float, uint8 otherwise."""
    path = "reference"

    def __init__(self, layers, out_float, path=None):
        self.qlayers = list(layers)
        self.out_float = bool(out_float)
        for a, b in zip(self.qlayers, self.qlayers[1:]):
            if b.w.shape[1] != a.w.shape[0]:
                raise ValueError(f"QChain: a layer of {b.w.shape[1]} inputs follows one "
                                 f"of {a.w.shape[0]} outputs")

    def run_u8(self, x, y, threads=1):
        y[...] = chain(x, [q.spec() for q in self.qlayers], self.out_float)
        return y

    def run_f32(self, x, in_scale, in_zp, y, threads=1):
        return self.run_u8(quantize(x, in_scale, in_zp), y, threads)


def quantize_f32(x, scale, zp, out_u8, threads=1):
    out_u8[...] = quantize(x, scale, int(zp))
    return out_u8


def dequantize_u8(q, scale, zp, out_f32, threads=1):
    out_f32[...] = dequantize(q, scale, int(zp))
    return out_f32


def qadd_u8(a, za, sa, b, zb, sb, c_out, zc, sc, lo=0, hi=255, threads=1):
    c_out[...] = qadd(a, int(za), sa, b, int(zb), sb, int(zc), sc, int(lo), int(hi))
    return c_out
