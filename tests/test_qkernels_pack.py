"""QLayer's packed weight layouts (pyconv1x1/_qkernels.pyx.tp): the AVX2 path's records
(_pack_avx2, typed loops) byte for byte against the numpy packer they replaced (kept here
as the reference), and the w8 / AMX layouts against their reshapes, on random weight
matrices of odd and small shapes, in every kernel variant built here; the AVX2 and AMX
layouts packed when a chain on their path (or the attribute) first needs them."""
import numpy as np
import pytest

from test_qkernels import QK, VARIANTS, rand_layer, run_u8
from pyconv1x1.quant import reference as ref

MR = 8
# -- the reference: _pack_avx2 as it was, numpy on whole arrays plus a loop per block --
_AVX2_UB = np.dtype([("g", "<i4"), ("mask", "<u4"), ("perm", "<i4"), ("pad", "<i4"),
                     ("w", "i1", (32,))])
_AVX2_EX = np.dtype([("g", "<i4"), ("pad", "<i4"), ("w", "<i2", (32,))])
_AVX2_HEAD = 64
_AVX2_PERMS = np.array([[0, 1, 2, 3], [0, 2, 1, 3], [0, 3, 1, 2]])


def ref_avx2_flips(a):
    p0, p1 = a[..., 0::2], a[..., 1::2]  # [nb][K4][8][pair]
    big = np.abs(p0) + np.abs(p1) > 128
    same = p0 * p1 > 0
    need = (big & same).any(2)
    keep = (big & ~same).any(2)
    can1 = ~(p1 == -128).any(2)
    can0 = ~(p0 == -128).any(2)
    ok = (~(need & keep) & (~need | can1 | can0)).all(2)
    flip = np.zeros(a.shape[:2] + (4,), bool)
    flip[..., 1::2] = need & can1
    flip[..., 0::2] = need & ~can1
    return ok, flip


def ref_pack_avx2(w8):
    nb, k4 = w8.shape[0], w8.shape[1]
    a = w8.astype(np.int16)
    choice = np.full((nb, k4), -1)
    flip = np.zeros((nb, k4, 4), bool)
    for j in range(len(_AVX2_PERMS) - 1, -1, -1):  # the first that fits wins
        ok, fl = ref_avx2_flips(a[..., _AVX2_PERMS[j]])
        choice[ok] = j
        flip[ok] = fl[ok]
    ub = choice >= 0
    perm = _AVX2_PERMS[np.maximum(choice, 0)]  # [nb][K4][4]
    ap = np.take_along_axis(a, np.broadcast_to(perm[:, :, None, :], a.shape), axis=3)
    flip &= ub[..., None]
    wf = np.where(flip[:, :, None, :], -ap, ap).astype(np.int8)
    corr = 255 * (ap * flip[:, :, None, :]).sum(axis=(1, 3))  # [nb][8]
    mask = (flip * (np.uint32(0xFF) << (np.arange(4, dtype=np.uint32) * 8))).sum(2)
    wex = a[..., [0, 2, 1, 3]]
    stride = _AVX2_HEAD + _AVX2_EX.itemsize * k4
    out = np.zeros((nb, stride), np.uint8)
    for b in range(nb):
        plain = (choice[b] == 0) & (mask[b] == 0)
        flips = (choice[b] == 0) & (mask[b] != 0)
        gu = np.concatenate([np.flatnonzero(plain), np.flatnonzero(flips),
                             np.flatnonzero(choice[b] > 0)])
        ge = np.flatnonzero(~ub[b])
        seq = int(np.array_equal(np.flatnonzero(plain), np.arange(plain.sum())))
        head = np.concatenate([[gu.size, flips.sum(), (choice[b] > 0).sum(), ge.size,
                                seq, 0, 0, 0], corr[b]]).astype("<i4")
        ru, re = np.zeros(gu.size, _AVX2_UB), np.zeros(ge.size, _AVX2_EX)
        ru["g"], ru["mask"], ru["perm"] = gu, mask[b, gu], choice[b, gu]
        ru["w"] = wf[b, gu].reshape(-1, 32)
        re["g"], re["w"] = ge, wex[b, ge].reshape(-1, 32)
        row = np.concatenate([head.view(np.uint8), ru.view(np.uint8), re.view(np.uint8)])
        out[b, :row.size] = row
    return out, (int(ub.sum()), nb * k4)


def ref_w8(w):
    cout, k = w.shape
    k4, nb = -(-k // 4), -(-cout // MR)
    wp = np.zeros((nb * MR, k4 * 4), np.int8)
    wp[:cout, :k] = w
    return np.ascontiguousarray(wp.reshape(nb, MR, k4, 4).transpose(0, 2, 1, 3))


def ref_wamx(w):
    cout, k = w.shape
    k64, nb32 = -(-k // 64), -(-cout // 32)
    wa = np.zeros((nb32 * 32, k64 * 64), np.int8)
    wa[:cout, :k] = w
    return np.ascontiguousarray(
        wa.reshape(nb32, 2, 16, k64, 16, 4).transpose(0, 3, 1, 4, 2, 5))


# -- weights --------------------------------------------------------------------------
A, B = 127, -127
QUADS = np.array([(A, A, A, A), (A, B, A, B), (A, B, B, A), (A, A, B, B), (-128, 0, 0, -128),
                  (-127, -128, -1, -128), (100, 29, -127, -2), (64, 64, -64, -64),
                  (-128, -128, -128, -128), (0, 0, 0, 0), (127, 1, -1, -127),
                  (3, 0, 5, 0), (1, 127, 127, 1), (-100, -60, 5, 3)], np.int8)


def quads(rng, cout, k):
    """groups from QUADS (flips, the other pairings, the exact form), channels shuffled
    within the group (flips at every position), a few rows from elsewhere"""
    k4 = -(-k // 4)
    q = QUADS[rng.integers(0, len(QUADS), (cout, k4))]
    q = np.take_along_axis(q, rng.permuted(np.tile(np.arange(4), (cout, k4, 1)), axis=2),
                           axis=2)
    w = q.reshape(cout, 4 * k4)[:, :k].copy()
    if cout > 2:
        w[rng.integers(0, cout)] = rng.integers(-128, 128, k)
    return w


def block_quads(rng, cout, k):
    """every row of a block of MR rows the same group pattern (more maddubs groups with
    flips and pairings than quads())"""
    w = quads(rng, -(-cout // MR), k)
    return np.repeat(w, MR, axis=0)[:cout] * rng.choice([1, -1], (cout, 1)).astype(np.int8)


WEIGHTS = {
    "full_range": lambda r, o, k: r.integers(-128, 128, (o, k)).astype(np.int8),
    "seven_bit": lambda r, o, k: r.integers(-64, 65, (o, k)).astype(np.int8),
    "zero": lambda r, o, k: np.zeros((o, k), np.int8),
    "minus128": lambda r, o, k: r.choice(np.array([-128, -128, -1, 0, 127], np.int8),
                                         (o, k)),
    "normal": lambda r, o, k: np.where(r.random((o, k)) < 0.05, -128, (
        r.standard_normal((o, k)) * 45).clip(-128, 127)).astype(np.int8),
    "sparse_big": lambda r, o, k: np.where(r.random((o, k)) < 0.1, r.integers(
        -128, 128, (o, k)), r.integers(-20, 21, (o, k))).astype(np.int8),
    "quads": quads,
    "block_quads": block_quads,
}
# (cout, k): k < 4, cout < MR, neither a multiple of the blocks
SHAPES = [(1, 1), (1, 3), (3, 2), (7, 5), (8, 4), (8, 8), (9, 13), (16, 64), (17, 67),
          (33, 9), (5, 130), (40, 300)]


def layer(qk, w):
    return qk.QLayer(w, np.zeros(w.shape[0], np.int32), np.ones(w.shape[0], np.float32),
                     0, 0, 255)


@pytest.mark.parametrize("variant", VARIANTS)
def test_avx2_records_are_the_reference_bytes(variant):
    """_pack_avx2 == the numpy packer, byte for byte, with the same group counts; the
    cases cover every record kind and flips at every byte of the mask."""
    qk = QK[variant]
    rng = np.random.default_rng(31)
    seen = {"flip": 0, "perm1": 0, "perm2": 0, "exact": 0, "not_seq": 0}
    mask_bytes = np.zeros(4, int)
    for name, weights in WEIGHTS.items():
        for cout, k in SHAPES:
            for _ in range(3):
                w = weights(rng, cout, k)
                w8 = ref_w8(w)
                want, wg = ref_pack_avx2(w8)
                got, gg = qk._pack_avx2(w8)
                assert got.dtype == np.uint8 and got.shape == want.shape
                assert gg == wg, (name, cout, k)
                np.testing.assert_array_equal(got, want, err_msg=f"{name} {cout}x{k}")
                head = want[:, :32].view("<i4")
                seen["flip"] += int(head[:, 1].sum())
                seen["exact"] += int(head[:, 3].sum())
                seen["not_seq"] += int((head[:, 4] == 0).sum())
                for b in range(want.shape[0]):
                    ub = want[b, 64:64 + 48 * head[b, 0]].reshape(-1, 48)
                    perm = ub[:, 8:12].copy().view("<i4")[:, 0]
                    seen["perm1"] += int((perm == 1).sum())
                    seen["perm2"] += int((perm == 2).sum())
                    mask_bytes += (ub[:, 4:8] == 0xFF).sum(0)
    assert min(seen.values()) > 10, seen
    assert mask_bytes.min() > 10, mask_bytes


@pytest.mark.parametrize("variant", VARIANTS)
def test_pack_avx2_refuses_other_arrays(variant):
    qk = QK[variant]
    w8 = ref_w8(np.ones((9, 5), np.int8))
    for bad in (w8.astype(np.int16), w8[:, :, :4], w8.transpose(1, 0, 2, 3), w8[0], [1]):
        with pytest.raises(ValueError, match="w8"):
            qk._pack_avx2(bad)
    out, g = qk._pack_avx2(ref_w8(np.ones((9, 5), np.int8))[:, :0].copy())
    assert out.shape == (2, 64) and g == (0, 0)


@pytest.mark.parametrize("variant", VARIANTS)
def test_layer_layouts_packed_when_needed(variant):
    """QLayer's w8 / w16 / wamx are the reference layouts (None where the module has no
    such path), also through a rebias copy made before they were packed, whose chains
    on every path match the numpy reference."""
    qk = QK[variant]
    paths = qk.available_paths()
    rng = np.random.default_rng(32)
    for cout, k in [(1, 1), (9, 13), (33, 70), (40, 130)]:
        w, bias, scale, zp, lo, hi, fbias = rand_layer(rng, k, cout)
        base = layer(qk, w)
        copies = [base.rebias(bias, scale, fbias) for _ in paths]
        x = rng.integers(0, 256, (2, k, 19), dtype=np.uint8)
        want = ref.chain(x, [(w, bias, scale, 0, 0, 255, fbias)], True)
        for q, path in zip(copies, paths):  # the chain packs what its path needs
            got = run_u8(qk.QChain([q], True, path=path), x, True, 2)
            np.testing.assert_array_equal(got, want, err_msg=f"{cout}x{k} {path}")
        for q in [base] + copies:
            np.testing.assert_array_equal(q.w8, ref_w8(w))
            if "avx2" in paths:
                np.testing.assert_array_equal(q.w16, ref_pack_avx2(ref_w8(w))[0])
                assert q.w16 is base.w16 and q.avx2_groups == ref_pack_avx2(ref_w8(w))[1]
            else:
                assert q.w16 is None and q.avx2_groups is None
            if "amx" in paths:
                np.testing.assert_array_equal(q.wamx, ref_wamx(w))
                assert q.wamx is base.wamx
            else:
                assert q.wamx is None
