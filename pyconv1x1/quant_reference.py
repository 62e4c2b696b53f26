"""The int8 kernels' arithmetic in numpy, step for step (the C is pyconv1x1/_qkernels.h):
the kernel tests compare with it bitwise, and model code may use it as the meaning of a
quantized step.

Activations are uint8 with a zero point (s8 activations are shifted by +128 by the
caller), weights int8, accumulators exact int32, float steps in float32:

    acc   = bias[o] + sum_k w[o, k] * x[k, p]
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

__all__ = ["round_clamp", "quantize", "dequantize", "layer", "chain", "qadd"]


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
    acc = acc + bias.astype(np.int64)[None, :, None]
    assert np.all(np.abs(acc) < 2 ** 31)
    return acc.astype(np.int32)


def layer(x, w, bias, scale, zp_out, lo, hi, fbias=None, out_float=False):
    """One quantized layer on uint8 [n, k, p]."""
    acc = accumulate(w, bias, x).astype(np.float32)
    s = np.asarray(scale, np.float32)[None, :, None]
    with np.errstate(all="ignore"):
        v = acc * s
        if out_float:
            fb = (np.zeros(w.shape[0], np.float32) if fbias is None
                  else np.asarray(fbias, np.float32))
            return (v + fb[None, :, None]).astype(np.float32)
        return round_clamp(v, zp_out, lo, hi)


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
