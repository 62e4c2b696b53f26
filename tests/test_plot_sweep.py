"""tools/plot_sweep.py: the sweep's points come from bench.py's JSON by workload name."""
import json

import pytest

from conftest import load_tool

plot_sweep = load_tool("plot_sweep")


def _results():
    wl = lambda name, ratio, **extra: dict(name=name, engines={"pyconv1x1": {"ratio": ratio}},
                                           **extra)
    return [
        {"threads": 1, "workloads": [wl("head_p1_b1", 1.25), wl("vec_p1_b8", 0.5),
                                      wl("c2_p3136_b8", 2.0), wl("big256", 1.1),
                                      wl("tiny_p9_b1", None), wl("x_p4_b1", 3.0, error="boom")]},
        {"threads": 2, "error": "failed"},
        {"threads": 4, "workloads": [wl("head_p1_b1", 0.8)]},
    ]


def test_points_by_thread_count_from_names():
    points = plot_sweep.sweep_points(_results())
    assert sorted(points) == [1, 4]  # the failed run left out
    assert sorted(points[1]) == [(1, 1, 1.25, "head_p1_b1"), (1, 8, 0.5, "vec_p1_b8"),
                                 (3136, 8, 2.0, "c2_p3136_b8")]
    assert points[4] == [(1, 1, 0.8, "head_p1_b1")]
    assert plot_sweep.geomean([0.5, 2.0]) == pytest.approx(1.0)


def test_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    src, png = tmp_path / "sweep.json", tmp_path / "sweep.png"
    src.write_text(json.dumps({"machine": {}, "runs": _results()}))
    plot_sweep.main([str(src), str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_no_sweep_workloads_is_an_error(tmp_path):
    src = tmp_path / "other.json"
    src.write_text(json.dumps({"runs": [{"threads": 1, "workloads": []}]}))
    with pytest.raises(SystemExit, match="no sweep workloads"):
        plot_sweep.main([str(src), str(tmp_path / "x.png")])
