"""tools/soak.py's plumbing, at a tiny size (the soak itself runs outside the suite):
each phase runs, compares its results and reports its figures."""
import pytest

from conftest import load_tool


@pytest.fixture(scope="module")
def soak():
    return load_tool("soak")


def test_runs_phase(soak):
    res = soak.soak_runs(300, samples=10)
    assert res.ok, res.errors
    assert res.calls == 300 and len(res.rss) >= 10
    assert all(rss > 0 for _, rss in res.rss)


def test_cycles_phase_counts_sessions_left_to_the_gc(soak):
    import gc
    enabled = gc.isenabled()
    res = soak.soak_cycles(4, samples=4)
    assert gc.isenabled() == enabled       # the phase turns the collector back on
    assert res.ok, res.errors
    assert res.calls == 8
    notes = "\n".join(res.notes)
    for form in ("onnx", "pc1"):
        assert f"{form}: " in notes and "/4 dropped sessions not freed" in notes


def test_concurrent_phase_without_eviction(soak):
    """Fewer shapes than the plan cache holds: every result must match the serial run
    (the evicting configuration is the soak's own job)."""
    res = soak.soak_concurrent(1.0, 3, nshapes=soak.PLAN_CACHE // 2)
    assert res.ok, (res.mismatches, res.errors, res.notes)
    assert res.calls > 0


def test_shapes_exceed_the_plan_cache(soak):
    shapes = soak.shapes_for_concurrency(soak.PLAN_CACHE + 12)
    assert len(set(shapes)) > soak.PLAN_CACHE
    from pyconv1x1 import session
    assert soak.PLAN_CACHE == session.PLAN_CACHE_SIZE
