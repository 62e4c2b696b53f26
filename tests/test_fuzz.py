"""Bounded fuzzing in CI (tools/fuzz.py runs the same longer): mutated models must end in
a pyconv1x1.Error or a run with float32 outputs; never another exception, a crash or a
hang. Cases run in a worker subprocess so that a segfault fails the test with the case
that caused it instead of killing the test run."""
import os
import subprocess
import sys

import pytest

from conftest import REPO, load_tool

FUZZ_PATH = os.path.join(REPO, "tools", "fuzz.py")
CASES_PER_FAMILY = 200       # 1200 cases in all: a few seconds
SEED = 20260101


@pytest.fixture(scope="module")
def fuzz():
    return load_tool("fuzz")


def _env():
    import pyconv1x1
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))
    env["OMP_NUM_THREADS"] = "2"
    return env


@pytest.mark.parametrize("family", ["bytes", "dims", "attrs", "graph", "external", "pc1"])
def test_fuzz_family(fuzz, family, tmp_path):
    report = fuzz.fuzz(CASES_PER_FAMILY, SEED, families=(family,), case_timeout=60,
                       env=_env(), cwd=str(tmp_path))
    assert report.ok, "\n" + report.summary()
    counts = report.counts
    assert sum(counts.values()) == CASES_PER_FAMILY, counts
    refused = sum(v for k, v in counts.items() if k.startswith(("load:", "run:")))
    assert refused > 0, counts                 # the mutations do break models
    assert counts["ran"] > 0, counts           # and some still run


def test_live_plan_edits(fuzz, tmp_path):
    """A plan's file rewritten, truncated or replaced (or its bytearray edited) under a
    live session: no crash, and the session's results do not change."""
    report = fuzz.fuzz(30, SEED, families=("pc1live",), case_timeout=60, env=_env(),
                       cwd=str(tmp_path))
    assert report.ok, "\n" + report.summary()
    assert sum(report.counts.values()) == 30 and report.counts["ran"] > 0, report.counts


def test_plans_are_taken_apart_and_rebuilt_exactly(fuzz):
    """The pc1 family edits a plan's parts and rebuilds the file with its checksum
    recomputed: an unedited plan must come back byte for byte (else every mutation would
    stop at the checksum instead of reaching the structural checks), and load and run."""
    import numpy as np
    import pyconv1x1
    seeds = fuzz.Seeds()
    assert len(seeds.plans) >= 4, sorted(seeds.plans)
    for name, data in seeds.plans.items():
        assert fuzz.Plan(data).tobytes() == data, name
        sess = pyconv1x1.InferenceSession(data, threads=1)
        feeds = fuzz._feed(fuzz.random.Random(0), sess, np)
        assert fuzz._run_session(fuzz.random.Random(0), sess, np, pyconv1x1) == "ran", name
        assert feeds is not None


def test_per_family_figures(fuzz, tmp_path):
    report = fuzz.fuzz(24, SEED, families=("dims", "pc1"), case_timeout=60, env=_env(),
                       cwd=str(tmp_path))
    per_family = {f: sum(c.values()) for f, c in report.by_family.items()}
    assert sum(per_family.values()) == 24 and set(per_family) == {"dims", "pc1"}
    assert per_family == {f: sum(fuzz.case_family(SEED, i, ("dims", "pc1")) == f
                                 for i in range(24)) for f in per_family}
    table = "\n".join(report.family_table())
    assert "pc1" in table and "findings" in table


def test_sanitizer_check_refuses_an_uninstrumented_build(fuzz):
    """--sanitize fuzzes only a build that has every variant the CPU runs, its thread pool and the
    sanitizers: the ordinary build, without the runtime preloaded, is refused."""
    import pyconv1x1
    parent = os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))
    variants, problems = fuzz.check_sanitized(parent, _env())
    assert "generic" in variants
    assert any("runtime is not loaded" in p for p in problems), problems
    for v in variants:
        assert any(f"variant {v} is not instrumented" in p for p in problems), problems


def test_a_crash_is_caught_and_blamed_on_its_case(fuzz, tmp_path):
    env = _env()
    env["PYCONV1X1_FUZZ_SELFTEST_CRASH"] = "3"
    report = fuzz.fuzz(6, SEED, families=("dims",), case_timeout=60, env=env,
                       cwd=str(tmp_path))
    assert not report.ok
    assert [(f["case"], f["kind"]) for f in report.failures] == [(3, "crash")]
    assert sum(report.counts.values()) == 6     # the fuzzing went on after the crash
    assert f"--seed {SEED} --replay 3" in report.summary()


def test_a_hang_is_caught_and_blamed_on_its_case(fuzz, tmp_path):
    env = _env()
    env["PYCONV1X1_FUZZ_SELFTEST_HANG"] = "1"
    report = fuzz.fuzz(3, SEED, families=("attrs",), case_timeout=3, env=env,
                       cwd=str(tmp_path))
    assert [(f["case"], f["kind"]) for f in report.failures] == [(1, "hang")]
    assert sum(report.counts.values()) == 3


def test_cases_are_reproducible(fuzz, tmp_path):
    seeds = fuzz.Seeds()
    descriptions = []
    for attempt in range(2):
        work = tmp_path / f"w{attempt}"
        work.mkdir()
        descriptions.append([fuzz.run_case(seeds, SEED, i, str(work), load=False)[1]
                             for i in range(40)])
    assert descriptions[0] == descriptions[1]


def test_command_line(tmp_path):
    # the .onnx families (the plan families have tests of their own above)
    onnx_families = "bytes,dims,attrs,graph,external"
    r = subprocess.run([sys.executable, FUZZ_PATH, "--iterations", "20", "--seed", "5",
                        "--families", onnx_families],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "seed 5: 20 cases" in r.stdout
    r = subprocess.run([sys.executable, FUZZ_PATH, "--seed", "5", "--replay", "7",
                        "--families", onnx_families],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("case 7: ") and "outcome:" in r.stdout
    r = subprocess.run([sys.executable, FUZZ_PATH, "--families", "nope"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown families" in r.stderr
