"""Bounded fuzzing in CI (tools/fuzz.py runs the same longer): mutated models must end in
a pyconv1x1.Error or a run with float32 outputs; never another exception, a crash or a
hang. Cases run in a worker subprocess so that a segfault fails the test with the case
that caused it instead of killing the test run."""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO

FUZZ_PATH = os.path.join(REPO, "tools", "fuzz.py")
CASES_PER_FAMILY = 200       # 1000 cases in all: a few seconds
SEED = 20260101


@pytest.fixture(scope="module")
def fuzz():
    spec = importlib.util.spec_from_file_location("pyconv1x1_fuzz", FUZZ_PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _env():
    import pyconv1x1
    env = dict(os.environ)
    env["PYTHONPATH"] = os.path.dirname(os.path.dirname(os.path.abspath(pyconv1x1.__file__)))
    env["OMP_NUM_THREADS"] = "2"
    return env


@pytest.mark.parametrize("family", ["bytes", "dims", "attrs", "graph", "external"])
def test_fuzz_family(fuzz, family, tmp_path):
    report = fuzz.fuzz(CASES_PER_FAMILY, SEED, families=(family,), case_timeout=60,
                       env=_env(), cwd=str(tmp_path))
    assert report.ok, "\n" + report.summary()
    counts = report.counts
    assert sum(counts.values()) == CASES_PER_FAMILY, counts
    refused = sum(v for k, v in counts.items() if k.startswith(("load:", "run:")))
    assert refused > 0, counts                 # the mutations do break models
    assert counts["ran"] > 0, counts           # and some still run


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
    r = subprocess.run([sys.executable, FUZZ_PATH, "--iterations", "20", "--seed", "5"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "seed 5: 20 cases" in r.stdout
    r = subprocess.run([sys.executable, FUZZ_PATH, "--seed", "5", "--replay", "7"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("case 7: ") and "outcome:" in r.stdout
    r = subprocess.run([sys.executable, FUZZ_PATH, "--families", "nope"],
                       cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "unknown families" in r.stderr
