"""pyconv1x1._timing, the timing helper of `pyconv1x1 bench` and tools/bench.py:
interleaved rounds, paired ratios, percentiles. No timed asserts: fake clocks and
counted calls."""
import numpy as np
import pytest

from pyconv1x1 import _timing
from pyconv1x1._timing import Rounds, paired_ratio, percentiles_ms

from conftest import load_tool


def test_percentiles_match_numpy():
    times = list(np.random.default_rng(0).exponential(1e-3, 37))
    got = percentiles_ms(times)
    want = np.percentile(np.asarray(times) * 1e3, [10, 50, 90, 99])
    assert [got[k] for k in ("p10_ms", "p50_ms", "p90_ms", "p99_ms")] == \
        pytest.approx(list(want), rel=1e-12)
    assert percentiles_ms([2e-3]) == {"p10_ms": 2.0, "p50_ms": 2.0, "p90_ms": 2.0,
                                      "p99_ms": 2.0}


def test_paired_ratio_pairs_rounds_and_skips_gaps():
    assert paired_ratio([2.0, None, 6.0, 8.0], [1.0, 1.0, None, 2.0]).median == 3.0
    r = paired_ratio([1.0, 2.0, 3.0, 4.0, 5.0], [1.0] * 5)
    assert (r.median, r.q1, r.q3, r.rounds) == (3.0, 2.0, 4.0, 5)
    assert paired_ratio([None, 1.0], [1.0, 0.0]) is None


def test_rounds_interleave_rotate_and_count(monkeypatch):
    calls = []
    settles = []
    monkeypatch.setattr(_timing, "settle", lambda s: settles.append(s))
    engines = {name: (lambda name=name: calls.append(name)) for name in "abc"}
    rounds = Rounds(engines, settle_s=0.3, rotate=True)
    for _ in range(3):
        rounds.round({"a": 2, "b": 1, "c": 0})
    # each round: one block per engine with a count, the order turning by one engine
    assert calls == ["a", "a", "b", "b", "a", "a", "a", "a", "b"]
    assert settles == [0.3] * 6
    assert [len(rounds.times[n]) for n in "abc"] == [6, 3, 0]
    assert rounds.blocks["c"] == [None, None, None]
    assert all(b is not None for b in rounds.blocks["a"] + rounds.blocks["b"])
    assert rounds.ratio("a", "b").rounds == 3


def test_rounds_keep_going_drops_a_failing_engine():
    state = {"n": 0}

    def flaky():
        state["n"] += 1
        if state["n"] == 3:
            raise RuntimeError("engine broke")
    rounds = Rounds({"ok": lambda: None, "flaky": flaky}, keep_going=True)
    for _ in range(4):
        rounds.round({"ok": 1, "flaky": 1})
    assert isinstance(rounds.failed["flaky"], RuntimeError)
    assert len(rounds.times["ok"]) == 4 and len(rounds.times["flaky"]) == 2
    assert rounds.blocks["flaky"][2:] == [None, None]
    strict = Rounds({"bad": lambda: 1 / 0})  # keep_going=False: the error propagates
    with pytest.raises(ZeroDivisionError):
        strict.round({"bad": 1})


def test_tools_bench_uses_the_package_timing_and_rule(monkeypatch):
    bench = load_tool("bench")

    class Workload:
        x = np.ones((1, 4, 2, 2), np.float32)

    class Fake:
        def __init__(self, wl, threads, scale=1.0):
            self.scale = scale
            self.variant = "fake"

        def __call__(self):
            return Workload.x * self.scale

    class Ours(Fake):
        def __init__(self, wl, threads):
            super().__init__(wl, threads, 1.0 + 2e-6)

    class Broken(Fake):
        def __call__(self):
            raise RuntimeError("no kernel")
    monkeypatch.setattr(bench, "ENGINE_CLASSES", {"pyconv1x1": Ours, "onnxruntime": Fake,
                                                  "torch": Broken})
    cfg = {"rounds": 3, "block_s": 1e-4, "min_reps": 1, "max_reps": 5, "settle_s": 0.0,
           "idle_s": 0.001, "gap_s": 0.0}
    res = bench.bench_workload(Workload(), ["pyconv1x1", "onnxruntime", "torch"], 1, cfg)
    ours = res["pyconv1x1"]
    assert ours["error"] is None and ours["max_rel_err"] == pytest.approx(2e-6, rel=5e-2)
    assert ours["ratio"] > 0 and ours["ratio_q1"] <= ours["ratio"] <= ours["ratio_q3"]
    assert ours["samples"] == 3 * ours["reps"] and ours["ms"] > 0
    assert res["onnxruntime"]["ratio"] == 1.0 and res["onnxruntime"]["time_vs_ours"] > 0
    assert "no kernel" in res["torch"]["error"]
