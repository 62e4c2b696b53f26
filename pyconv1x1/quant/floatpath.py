"""An int8 chain run exactly on the float32 kernels, for CPUs whose int8 path is slower
than our float32 (no VNNI: the 'avx2' path ran at 0.6-0.78x of float32, the portable
'c' one at 0.12-0.26x; also where the int8 kernels are not built).

Why the results are bitwise those of the int8 path: a layer's weights w (int8) become
integer-valued float32 weights, its input the integer values x (uint8 0..255 for the
chain's first layer; for the next ones r = q - zp in [-255, 255], the previous layer's
zero point folded into this one's bias: bias' = bias + zp * sum_k w). Every product and
every partial sum, in whatever order the float kernels add them (tiles, reduction
chunks, fused multiply-adds), is then an integer of magnitude <= |bias'| + 255 * sum|w|,
and float32 holds every integer below 2^24 exactly: the float accumulator equals the
int32 one. The requantization is then the int path's float32 steps, fused into the
float kernels' store by the epilogue program's `requant` op (program/epilogue.py,
_epilogue.h): float32(acc) * scale, clamp to [lo - zp, hi - zp], round half to even (+ zp
after the chain's last layer), so one fused float chain runs every layer depth-first over
tiles with no pass and no tensor between layers. A float output: float32(acc) * scale
(affine_act with a zero shift) then + fbias, two passes over the output only.

Used only where it is exact (that bound below 2^24 in every channel of every layer) and
where the int8 path is a slow one (FAST_PATHS) and the run is not small
(FLOAT_MIN_MACS); PYCONV1X1_INT8_FALLBACK=auto (default) | int (never) | float (wherever
exact, every run: tests run both ways on one machine) chooses."""
import os

import numpy as np

from ..errors import Error
from ..plan.packing import block_table
from ..program.epilogue import Op
from ..plan.policy import choose_split, choose_tiling, min_tiles, threads_for

EXACT_LIMIT = 1 << 24  # float32 holds every integer of smaller magnitude
# the int8 paths the float kernels do not beat: with VNNI faster than float32; 'avx2'
# (no VNNI) at 1.17-1.36x of float32 (0.74x on issue 4's `tiny`) beats this path's
# 0.64-0.83x (`tiny` 0.14x; tools/bench.py --int8 --fallback, 1 thread, session 5).
# 'c' (0.14-0.27x of float32) and the numpy reference lose to it. 'avx512bw' (AVX-512
# without VNNI, against the float32 kernels' AVX-512 build v4): 1.21-1.55x (`tiny` 0.74x)
# where 'avx2' ran 0.74-0.92x and this path 0.64-0.75x (1 thread, simulated on a
# Sapphire Rapids host with PYCONV1X1_INT8_PATH).
FAST_PATHS = ("amx", "avx512vnni", "avxvnni", "avx512bw", "avx2")
# runs of fewer multiply-adds stay on the int8 path even so: there the per-call
# overheads of this path's passes dominate (issue 4's `tiny`: 0.76x of the c path)
FLOAT_MIN_MACS = 1 << 20
MODES = ("auto", "int", "float")
PATH = "float32 kernels (exact)"


def mode():
    """PYCONV1X1_INT8_FALLBACK: 'auto' (the float kernels where the int8 path is slow),
    'int' (never) or 'float' (wherever exact)."""
    m = os.environ.get("PYCONV1X1_INT8_FALLBACK") or "auto"
    if m not in MODES:
        raise Error(f"PYCONV1X1_INT8_FALLBACK={m!r}; expected one of {', '.join(MODES)}")
    return m


def float_biases(qlayers):
    """Each layer's bias for the float run (the previous layer's zero point folded in,
    as int64), or None when some partial sum could reach 2^24 (not exact in float32)."""
    biases, zp = [], 0
    for i, layer in enumerate(qlayers):
        w = layer.w  # int8: sums in int64, |w| in int16 (no int64 copy of w)
        bias = layer.bias.astype(np.int64) + (zp * w.sum(axis=1, dtype=np.int64) if i
                                              else 0)
        wabs = np.abs(w.astype(np.int16)).sum(axis=1, dtype=np.int64)
        if (np.abs(bias) + 255 * wabs).max() >= EXACT_LIMIT:
            return None
        biases.append(bias)
        zp = layer.zp_out
    return biases


def use_float(qlayers, api):
    """Whether a chain of these layers runs on the float kernels (see the module doc)."""
    m = mode()
    if m == "int":
        return False
    slow = getattr(api, "INT8_PATH", None) not in FAST_PATHS
    return (m == "float" or slow) and float_biases(qlayers) is not None


def _pack(w, mr):
    """w [cout, k] -> the float kernels' packed blocks (plan.packing's layout, group 1)."""
    cout, k = w.shape
    blocks = block_table(cout, k, 1, mr)
    packed = np.empty(cout * k, np.float32)
    for rows, cout0, _, off in blocks.tolist():
        packed[off:off + rows * k] = w[cout0:cout0 + rows].T.reshape(-1)
    return packed, blocks


class FloatQChain:
    """QChain's run_u8 / run_f32 on the float kernels `fk`, bitwise equal to it: ONE
    fused float chain (depth-first over tiles, like a float ChainStep) whose layers
    requantize in their epilogue program (program/epilogue.py's `requant` op). layers:
    the step's QConvLayer records (w, bias, scale, zp_out, lo, hi, fbias)."""
    path = PATH

    def __init__(self, qlayers, out_float, api, fk, small=None):
        biases = float_biases(qlayers)
        if biases is None:
            raise ValueError("these int8 layers are not exact in float32 (2^24)")
        self.api, self.fk, self.out_float = api, fk, bool(out_float)
        self.small = small  # the int8 QChain that runs runs of < FLOAT_MIN_MACS
        self.cin, self.cout = qlayers[0].cin, qlayers[-1].cout
        last = qlayers[-1]
        specs = []
        for i, (layer, bias) in enumerate(zip(qlayers, biases)):
            scale = np.ascontiguousarray(layer.scale, np.float32)
            if layer is last and self.out_float:
                post = ()  # float32(acc): scale and fbias after (see run_u8)
            else:
                # inner layers hand on q - zp (the zero point is in the next one's
                # bias); the last adds it
                zp = layer.zp_out if layer is last else 0
                post = (Op("requant", (scale, zp, layer.lo - layer.zp_out + zp,
                                       layer.hi - layer.zp_out + zp)).kernel(),)
            packed, blocks = _pack(layer.w.astype(np.float32), fk.MAX_BLOCK_ROWS)
            specs.append((packed, bias.astype(np.float32), blocks, layer.cin, layer.cout,
                          layer.cin, -np.inf, np.inf, 1.0, 0, post))
        self.chain = fk.Chain(specs)
        self.last_scale = np.ascontiguousarray(last.scale, np.float32)
        self.fbias = None if last.fbias is None else last.fbias[None, :, None]
        self.nblocks = max(-(-l.cout // fk.MAX_BLOCK_ROWS) for l in qlayers)
        self.max_c = max(max(l.cin, l.cout) for l in qlayers)
        self.macs = sum(l.cin * l.cout for l in qlayers)  # per pixel
        self._bound = {}

    def _bind(self, n, p, threads):
        key = (n, p, threads)
        bound = self._bound.get(key)
        if bound is None:
            fk = self.fk
            nthreads = threads_for(2 * n * p * self.macs, threads)
            tile, folded = choose_tiling(fk.PANEL_WIDTH, self.max_c, n, p,
                                         min_tiles(nthreads), fk.REDUCTION_CHUNK)
            ntiles = -(-n * p // tile) if folded else n * -(-p // tile)
            split = choose_split(ntiles, nthreads, self.nblocks)
            bound = self.chain.bind((n, self.cout, p), n, 1, p, 1, p, 1, 1, 0, 0, tile,
                                    nthreads, folded, split)
            if len(self._bound) > 8:
                self._bound.clear()
            self._bound[key] = bound
        return bound

    def run_u8(self, x, y, threads=1):
        """x uint8 [n, cin, p] -> y [n, cout, p] (float32 when out_float, else uint8).
        A float output: float32(acc) * scale in the float kernels' affine_act with a zero
        shift (a fused multiply-add of 0 rounds as the plain product does), + fbias in
        numpy (a separate add, as the int path)."""
        n, _, p = x.shape
        if self.small is not None and n * p * self.macs < FLOAT_MIN_MACS:
            return self.small.run_u8(x, y, threads)
        bound = self._bind(n, p, threads)
        h = x.astype(np.float32)
        if self.out_float:
            bound.into(h, y)
            self.fk.affine_act(y, y, self.last_scale, np.zeros_like(self.last_scale), n,
                               self.cout, p, -np.inf, np.inf, 1.0, threads)
            if self.fbias is not None:
                np.add(y, self.fbias, out=y)
            return y
        np.copyto(y, bound(h), casting="unsafe")  # integers in [lo, hi]
        return y

    def run_f32(self, x, in_scale, in_zp, y, threads=1):
        """x float32, quantized first as the int8 path does it."""
        if self.small is not None and x.shape[0] * x.shape[2] * self.macs < FLOAT_MIN_MACS:
            return self.small.run_f32(x, in_scale, in_zp, y, threads)
        q = np.empty(x.shape, np.uint8)
        self.api.quantize_f32(x, in_scale, in_zp, q, threads)
        return self.run_u8(q, y, threads)
