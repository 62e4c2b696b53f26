"""The int8 kernel API in numpy: integer-exact, the meaning the compiled kernels
(`_backend.qkernels()`) must match bit for bit, and what runs where they are not built.

Activations are uint8 with a zero point (an int8 tensor is held as uint8 + 128). A layer:
acc[o, p] = bias[o] + sum_k w[o, k] * x[k, p] (int32; the caller folds the input zero
point into bias), then either
  u8:  clamp(round_half_even(float32(acc) * scale[o]) + zp_out, lo, hi)
  f32: float32(acc) * scale[o] + fbias[o]
"""
import numpy as np

INT8_PATH = "numpy reference (int8 kernels not built)"


def _rint_clamp(v, zp, lo, hi):
    """clamp(round_half_even(v) + zp, lo, hi) as uint8; v float32 (inf saturates)."""
    r = np.rint(v).astype(np.float64)
    r += zp
    np.clip(r, lo, hi, out=r)
    return r.astype(np.uint8)


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

    def acc(self, x):
        """int32 accumulators [n, cout, p] of uint8 x [n, k, p]."""
        w = self.w.astype(np.int64)
        out = np.einsum("ok,nkp->nop", w, x.astype(np.int64), optimize=True)
        out += self.bias.astype(np.int64)[None, :, None]
        return out.astype(np.int32)

    def requantize(self, acc):
        v = acc.astype(np.float32) * self.scale[None, :, None]
        return _rint_clamp(v, self.zp_out, self.lo, self.hi)

    def to_float(self, acc):
        v = acc.astype(np.float32) * self.scale[None, :, None]
        if self.fbias is not None:
            v += self.fbias[None, :, None]
        return v


class QChain:
    """Layers run one after another on uint8 tensors [n, c, p]; the last one writes
    float32 when out_float, uint8 otherwise."""

    def __init__(self, layers, out_float):
        self.layers = list(layers)
        self.out_float = bool(out_float)
        for a, b in zip(self.layers, self.layers[1:]):
            if b.w.shape[1] != a.w.shape[0]:
                raise ValueError(f"QChain: a layer of {b.w.shape[1]} inputs follows one "
                                 f"of {a.w.shape[0]} outputs")

    def run_u8(self, x, y, threads=1):
        h = x
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            acc = layer.acc(h)
            if i == last and self.out_float:
                y[...] = layer.to_float(acc)
            else:
                h = layer.requantize(acc)
        if not self.out_float:
            y[...] = h
        return y

    def run_f32(self, x, in_scale, in_zp, y, threads=1):
        q = np.empty(x.shape, np.uint8)
        quantize_f32(x, in_scale, in_zp, q, threads)
        return self.run_u8(q, y, threads)


def quantize_f32(x, scale, zp, out_u8, threads=1):
    """q = clamp(round_half_even(x / scale) + zp, 0, 255), the division in float32."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        v = np.asarray(x, np.float32) / np.float32(scale)
    v = np.nan_to_num(v, nan=0.0)  # (a NaN feed quantizes to the zero point)
    out_u8[...] = _rint_clamp(v, int(zp), 0, 255)
    return out_u8


def dequantize_u8(q, scale, zp, out_f32, threads=1):
    """float32(q - zp) * scale."""
    out_f32[...] = (q.astype(np.int32) - int(zp)).astype(np.float32) * np.float32(scale)
    return out_f32


def qadd_u8(a, za, sa, b, zb, sb, c_out, zc, sc, lo, hi, threads=1):
    """c = clamp(round_half_even((float32(a-za)*sa + float32(b-zb)*sb) / sc) + zc,
    lo, hi)."""
    fa = (a.astype(np.int32) - int(za)).astype(np.float32) * np.float32(sa)
    fb = (b.astype(np.int32) - int(zb)).astype(np.float32) * np.float32(sb)
    c_out[...] = _rint_clamp((fa + fb) / np.float32(sc), int(zc), int(lo), int(hi))
    return c_out
