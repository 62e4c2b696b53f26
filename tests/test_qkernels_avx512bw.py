"""Every int8 path on the shapes where lanes and passes run out: the AVX-512BW path (the
AVX2 path's records and forms on zmm, 16 pixels per pass, 2 passes per panel) next to
the others, bitwise against the integer numpy reference. Paths come from
available_paths() of each kernel variant built here (test_qkernels.CASES)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import pyconv1x1
from conftest import NEUTRAL_CWD, native_only
from pyconv1x1.quant import reference as ref
from test_qkernels import CASES, IDS, QDEFAULT, QK, make_chain, run_u8
from test_qkernels import thread_small_runs  # noqa: F401  (autouse fixture)
from test_qkernels_avx2 import chain_specs, full_range, groups, has_avx2, seven_bit
from test_quant_models import CASES as MODELS, feeds, quantized  # noqa: F401  (fixture)


def extreme(rng, cout, k):
    """-128 and the other ends: most groups in the exact form, some flipped"""
    return rng.choice(np.array([-128, -127, 126, 127], np.int8), (cout, k))


WEIGHTS = (full_range, seven_bit, extreme)


def sweep():
    """(n, cin, pixels, [cout per layer], weights): every cout 1..17, every k 1..9,
    pixels 1..34 (each tail of a 16-pixel pass and of a 32-pixel panel), then long k
    and pixels past 64"""
    for i in range(34):
        couts = [1 + i % 17] + ([1 + (5 * i) % 17] if i % 2 else [])
        yield 1 + i % 3, 1 + (2 * i) % 9, 1 + i, couts, WEIGHTS[i % 3]
    yield 1, 259, 65, [17], extreme
    yield 2, 600, 97, [9, 3], full_range
    yield 1, 131, 70, [5, 40], seven_bit
    yield 1, 1023, 79, [24], full_range


def zero_points(specs, i):
    """zero points other than 0 and 128 (and the ends), narrow clamps on some layers"""
    out = []
    for j, s in enumerate(specs):
        s = list(s)
        s[3:6] = [(3, 0, 255), (77, 5, 250), (201, 0, 255), (255, 1, 254),
                  (0, 0, 255)][(i + j) % 5]
        out.append(tuple(s))
    return out


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_every_small_shape_bitwise(variant, path):
    """u8 and f32 out, and float32 in with the last layer dequantized in its epilogue
    (the fused kernels' masked stores), at 1 and 3 threads; both ends saturate, both
    forms run (on the paths with the AVX2 records)."""
    qk = QK[variant]
    rng = np.random.default_rng(51)
    ends, counts = [0, 0], np.zeros(2, int)
    for i, (n, c, p, couts, weights) in enumerate(sweep()):
        specs = zero_points(chain_specs(rng, c, couts, weights), i)
        if has_avx2(qk):
            counts += np.sum([groups(qk, s[0]) for s in specs], axis=0)
        x = rng.integers(0, 256, (n, c, p), dtype=np.uint8)
        x.flat[::7] = 255
        x.flat[3::11] = 0
        want = ref.chain(x, specs)
        last = specs[-1]
        ends[0] += int((want == last[4]).sum())
        ends[1] += int((want == last[5]).sum())
        for out_float in (False, True):
            ch = make_chain(qk, specs, out_float, path)
            assert ch.path == path
            w = want if not out_float else ref.chain(x, specs, True)
            for t in (1, 3):
                np.testing.assert_array_equal(run_u8(ch, x, out_float, t), w,
                                              err_msg=f"{(n, c, p, couts)} {out_float} {t}")
        xf = (rng.standard_normal((n, c, 1, p)) * 3).astype(np.float32)
        q = ref.chain(xf.reshape(n, c, p), specs, False, in_scale=0.02, in_zp=120)
        dq = (q.astype(np.int32) - 77).astype(np.float32) * np.float32(0.0125)
        ch = make_chain(qk, specs, False, path)
        for t in (1, 3):
            b = qk.BoundQChain(ch, xf.shape, (n, couts[-1], 1, p), (0.02, 120),
                               (0.0125, 77), t)
            np.testing.assert_array_equal(b.try_call(xf).reshape(n, couts[-1], p), dq,
                                          err_msg=f"{(n, c, p, couts)} dequantized t={t}")
    assert ends[0] > 10 and ends[1] > 10
    if has_avx2(qk):
        assert 0 < counts[0] < counts[1]


@pytest.mark.parametrize("variant,path", CASES, ids=IDS)
def test_threads_1_to_8_bitwise_on_pass_tails(variant, path):
    """Pixel counts no 16-pixel pass divides, split across 1..8 threads (tiles and
    channel blocks): the same bits every time, the reference's."""
    qk = QK[variant]
    rng = np.random.default_rng(52)
    for n, c, p, couts in [(1, 13, 211, [19, 7]), (3, 70, 17, [40]), (1, 5, 1, [130]),
                           (2, 36, 49, [9, 64, 3])]:
        specs = zero_points(chain_specs(rng, c, couts, extreme if p % 2 else full_range), p)
        x = rng.integers(0, 256, (n, c, p), dtype=np.uint8)
        want = ref.chain(x, specs)
        ch = make_chain(qk, specs, False, path)
        for t in range(1, 9):
            np.testing.assert_array_equal(run_u8(ch, x, False, t), want,
                                          err_msg=f"{(n, c, p, couts)} threads={t}")


@pytest.mark.parametrize("path", QDEFAULT.available_paths())
@pytest.mark.parametrize("name", sorted(n for n in MODELS if MODELS[n][2]))
def test_models_on_every_path_bitwise(quantized, monkeypatch, path, name):  # noqa: F811
    """Each quantized model with its int8 chains on each path (the default one
    replaced, as PYCONV1X1_INT8_PATH does at import): bitwise the default path's
    outputs at 1 and 3 threads; the session names the path and its chains take it
    (models whose int8 steps are not chains: the same outputs)."""
    from pyconv1x1.quant import kernels
    from pyconv1x1.quant.steps import QChainStep
    model = quantized(name)
    monkeypatch.setenv("PYCONV1X1_INT8_FALLBACK", "int")
    want = {t: pyconv1x1.InferenceSession(model.SerializeToString(), threads=t)
            for t in (1, 3)}
    monkeypatch.setattr(kernels(), "INT8_PATH", path)
    for t, default in want.items():
        sess = pyconv1x1.InferenceSession(model.SerializeToString(), threads=t)
        assert sess.int8_path.startswith(path)
        taken = {sess._kset.chains[id(s)].path for s in sess.program.steps
                 if isinstance(s, QChainStep)}
        # (AMX leaves chains with a k < AMX_MIN_K to the next path)
        assert taken <= {path, QDEFAULT.available_paths()[1] if path == "amx"
                         else path}, taken
        for feed in feeds(13, 2):
            for a, b in zip(sess.run(None, feed), default.run(None, feed)):
                assert a.dtype == b.dtype and np.array_equal(a, b), (name, path, t)


@native_only
def test_every_path_forced_by_environment():
    """PYCONV1X1_INT8_PATH picks each path this CPU runs, and int8_path() says so."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(pyconv1x1.__file__)))
    code = ("from pyconv1x1 import _backend; from pyconv1x1.quant import kernels; "
            "print(_backend.int8_path(), kernels().INT8_PATH)")
    paths = QDEFAULT.available_paths()
    for p in paths:
        out = subprocess.run([sys.executable, "-c", code],
                             env=dict(env, PYCONV1X1_INT8_PATH=p), capture_output=True,
                             text=True, check=True, cwd=NEUTRAL_CWD)
        assert out.stdout.split() == [p, p]
