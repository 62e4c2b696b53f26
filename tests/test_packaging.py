"""Packaging: numpy is the only run-time requirement. Without onnx installed (its import
blocked in a subprocess) .onnx files still load and run, and each feature that needs
onnx says which extra to install."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import pyconv1x1

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "models"
PACKAGE_PARENT = str(Path(pyconv1x1.__file__).resolve().parents[1])
BLOCK_ONNX = (
    "import builtins, importlib.abc, sys\n"
    "class _NoOnnx(importlib.abc.MetaPathFinder):\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'onnx' or name.startswith(('onnx.', 'google.protobuf')):\n"
    "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
    "        return None\n"
    "sys.meta_path.insert(0, _NoOnnx())\n"
    "import importlib.util\n"
    "_real_find_spec = importlib.util.find_spec\n"
    "def _find_spec(name, *a, **k):\n"
    "    if name == 'onnx' or name.startswith('onnx.'):\n"
    "        return None\n"
    "    return _real_find_spec(name, *a, **k)\n"
    "importlib.util.find_spec = _find_spec\n"
    "for m in [m for m in sys.modules if m == 'onnx' or m.startswith('onnx.')]:\n"
    "    del sys.modules[m]\n")


def _python(code, cwd):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_PARENT, env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-c", BLOCK_ONNX + code], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_onnx_model_runs_without_onnx(tmp_path):
    model = MODELS / "embed_64to32_relu_dynamo.onnx"  # (external data too)
    x = dict(np.load(MODELS / "embed_64to32_relu_dynamo.inputs.npz"))["input"]
    np.save(tmp_path / "x.npy", x)
    code = (
        "import numpy as np, pyconv1x1\n"
        "try:\n"
        "    import onnx\n"
        "    raise SystemExit('onnx import was not blocked')\n"
        "except ImportError:\n"
        "    pass\n"
        f"s = pyconv1x1.InferenceSession({str(model)!r})\n"
        f"y = s.run(None, {{'input': np.load('x.npy')}})[0]\n"
        "np.save('y.npy', y)\n"
        "print(s.get_modelmeta().producer_name)\n"
        "assert 'onnx' not in sys.modules\n")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "pytorch"
    want = pyconv1x1.InferenceSession(str(model)).run(None, {"input": x})[0]
    assert np.array_equal(np.load(tmp_path / "y.npy"), want)


def test_features_needing_onnx_name_the_extra(tmp_path):
    model = MODELS / "embed_64to32_relu_torchscript.onnx"
    code = (
        "import pyconv1x1\n"
        "from pyconv1x1 import cli, check\n"
        "from pyconv1x1.errors import UnsupportedError\n"
        "from pyconv1x1.ir import Graph\n"
        f"code = cli.main(['validate', {str(model)!r}, '--against', 'reference'])\n"
        "assert code == 2, code\n"
        "g = Graph(nodes=(), inputs=(), outputs=(), constants={}, value_info={}, opset=99)\n"
        "try:\n"
        "    check.lower(g)\n"
        "    raise SystemExit('opset 99 accepted')\n"
        "except UnsupportedError as exc:\n"
        "    print('opset:', exc)\n"
        "from pyconv1x1.testing import torch_export as testing\n"
        "try:\n"
        "    testing._export(None, None, (), 'm.onnx', 'dynamo', ['x'], ['y'], None, None,"
        " None)\n"
        "    raise SystemExit('exported without onnx')\n"
        "except UnsupportedError as exc:\n"
        "    print('export:', exc)\n")
    proc = _python(code, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "needs the onnx package" in err[0] \
        and "pip install 'pyconv1x1[onnx]'" in err[0], proc.stderr
    assert "opset 99" in proc.stdout and "pyconv1x1[onnx]" in proc.stdout, proc.stdout
    export = next(line for line in proc.stdout.splitlines() if line.startswith("export:"))
    assert "torch.onnx.export" in export and "pyconv1x1[onnx]" in export


def test_metadata_declares_numpy_alone():
    text = (ROOT / "pyproject.toml").read_text()
    assert 'dependencies = ["numpy>=1.23"]' in text
    for extra in ("onnx", "test", "plot"):
        assert f"\n{extra} = [" in text, extra
    test_line = next(line for line in text.splitlines() if line.startswith("test = "))
    assert "onnx" in test_line and "onnxruntime" in test_line


def test_installed_package_ships_no_sources():
    """An installed copy (CI tests the one `pip install .` made) holds the compiled
    extensions and Python modules, not the generated C (4.6 MB) nor Cython sources."""
    folder = Path(pyconv1x1.__file__).resolve().parent
    if folder == ROOT / "pyconv1x1":
        import pytest
        pytest.skip("testing the in-place build: the source tree is not an installation")
    shipped = sorted(p.name for p in folder.iterdir()
                     if p.name.endswith((".c", ".pyx", ".pyx.tp", ".pxd", ".h")))
    assert shipped == []
    assert any(p.name.startswith("_kernels_generic") for p in folder.iterdir())


def test_installed_package_has_every_subpackage():
    """Each package folder of the source tree is installed (CI tests the installed copy)."""
    folder = Path(pyconv1x1.__file__).resolve().parent
    source = ROOT / "pyconv1x1"
    expected = sorted(str(p.parent.relative_to(source)) for p in source.rglob("__init__.py"))
    assert "quant" in expected and "program" in expected
    installed = sorted(str(p.parent.relative_to(folder)) for p in folder.rglob("__init__.py"))
    assert installed == expected


def test_exclude_package_data_covers_the_sources():
    text = (ROOT / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.exclude-package-data]", 1)[1]
    line = next(li for li in section.splitlines() if li.startswith("pyconv1x1 = "))
    for pattern in ("*.c", "*.pyx", "*.pyx.tp", "*.pxd", "*.h"):
        assert f'"{pattern}"' in line, pattern
