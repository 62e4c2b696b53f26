"""tools/scaling.py: ratios and parallel efficiencies from bench.py's JSON, and the
16-core targets of issue 11 checked at the largest thread count in the file."""
import json

import pytest

from conftest import load_tool

scaling = load_tool("scaling")


def _wl(name, flops, ratio, ms, error=None):
    return dict(name=name, flops=flops,
                engines={"pyconv1x1": {"ratio": ratio, "ms": ms, "error": error}})


def _data(big_ms16=0.1, small_ratio16=1.2):
    return {"machine": {"cpu": "test", "cores": 16}, "runs": [
        {"threads": 1, "workloads": [_wl("big", 100e6, 1.1, 1.6), _wl("small", 1e6, 2.0, 0.01),
                                      _wl("broken", 1e6, None, None, error="boom")]},
        {"threads": 2, "error": "failed"},
        {"threads": 16, "workloads": [_wl("big", 100e6, 1.3, big_ms16),
                                       _wl("small", 1e6, small_ratio16, 0.01)]},
    ]}


def test_efficiency_and_targets(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_data()))
    table, machine = scaling.load(str(path))
    assert sorted(table) == ["big", "small"]  # the failed run and the error left out
    assert scaling.efficiency(table["big"], 16) == pytest.approx(1.6 / (16 * 0.1))
    assert scaling.efficiency(table["small"], 2) is None
    text, ok = scaling.report(table, machine)
    assert ok and "PASS  every case" in text and "PASS  layers >= 50 MFLOP" in text
    # 1.6 / (16 * 0.2) = 50% < 70% on a 100 MFLOP layer; a case below onnxruntime
    text, ok = scaling.report(*scaling.load_data(_data(big_ms16=0.2, small_ratio16=0.9)))
    assert not ok
    assert "MISS  every case >= 1.0x onnxruntime at 16 threads (below: [('small', 0.9)])" \
        in text
    assert "MISS  layers >= 50 MFLOP" in text and "('big', 0.5)" in text


def test_markdown_and_cli(tmp_path, capsys):
    path = tmp_path / "s.json"
    path.write_text(json.dumps(_data()))
    assert scaling.main([str(path), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "| case | MFLOP | t=1 ort/x | t=16 ort/x | t=16 eff |" in out
    assert "| big | 100.0 | 1.10 | 1.30 | 100% |" in out
    empty = tmp_path / "e.json"
    empty.write_text(json.dumps({"runs": []}))
    assert scaling.main([str(empty)]) == 2
