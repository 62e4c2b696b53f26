#!/usr/bin/env python
"""Export the bundled 1x1-convolution test models to ONNX.

Usage::

    python tools/export_models.py [--out models]

Requires ``torch`` (tested with 2.13.0, CPU), ``onnxscript`` (dynamo exporter),
``onnx``, ``onnxruntime`` (verification) and ``numpy``.

For every model spec below this writes, into ``--out``:

* ``<name>_torchscript.onnx``   - legacy TorchScript exporter (``dynamo=False``),
                                  weights inline (raw_data).
* ``<name>_dynamo.onnx``        - torch.export based exporter (``dynamo=True``),
  ``<name>_dynamo.onnx.data``     weights in external data beside the model
                                  (what the exporter writes by default).
* ``<stem>.inputs.npz``         - the input, key = ONNX graph input name.
* ``<stem>.outputs.npz``        - PyTorch's own output, key = ONNX graph output name.

Every model is checked against onnxruntime (max|err| / max|ref| <= 1e-5) and a
one-line summary is printed per file.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np
import onnx
import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

REL_TOL = 1e-5
INPUT_NAMES = ["input"]
OUTPUT_NAMES = ["output"]


def _reduce_64to16() -> nn.Module:
    return nn.Conv2d(64, 16, kernel_size=1)


def _expand_16to128() -> nn.Module:
    return nn.Conv2d(16, 128, kernel_size=1)


def _embed_64to32_relu() -> nn.Module:
    return nn.Sequential(nn.Conv2d(64, 32, kernel_size=1), nn.ReLU())


# name -> (module factory, input shape)
MODELS = {
    "reduce_64to16": (_reduce_64to16, (3, 64, 32, 32)),
    "expand_16to128": (_expand_16to128, (3, 16, 32, 32)),
    "embed_64to32_relu": (_embed_64to32_relu, (3, 64, 32, 32)),
}


def build(name: str) -> tuple[nn.Module, torch.Tensor]:
    factory, shape = MODELS[name]
    torch.manual_seed(0)  # weights: deterministic per model
    module = factory().eval()
    rng = np.random.default_rng(0)  # input: deterministic per model
    x = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    return module, x


def export_torchscript(module: nn.Module, x: torch.Tensor, path: str) -> None:
    with warnings.catch_warnings():
        # The TorchScript exporter is deprecated; we export with it on purpose.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (x,),
            path,
            dynamo=False,
            input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES,
        )


def export_dynamo(module: nn.Module, x: torch.Tensor, path: str) -> None:
    data_path = path + ".data"
    if os.path.exists(data_path):
        # Start from a clean external-data file.
        os.remove(data_path)
    # Export to an ONNXProgram (f=None) and save it ourselves with exactly the
    # call torch.onnx.export(..., f=path) would make (ONNXProgram.save with
    # external_data=True).  The only difference: we first drop the per-node
    # "pkg.torch.onnx.stack_trace" metadata, which embeds absolute paths of the
    # local Python installation and would make the bytes machine-dependent.
    # Everything else (other metadata_props, value_info, names) is kept as-is.
    program = torch.onnx.export(
        module,
        (x,),
        None,
        dynamo=True,
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        verbose=False,
    )
    for node in program.model.graph.all_nodes():
        node.metadata_props.pop("pkg.torch.onnx.stack_trace", None)
    # external_data=True is torch 2.13's default for export(); pass it
    # explicitly.  onnxscript/onnx_ir then write every initializer larger than
    # 256 bytes (onnx_ir.save's size_threshold_bytes default) to
    # "<file>.onnx.data"; smaller tensors (the 16- and 32-float biases) stay
    # inline as raw_data.  This mix is kept on purpose: it is what the exporter
    # naturally writes.
    program.save(path, external_data=True)


def external_info(model: onnx.ModelProto) -> tuple[int, int, set[str]]:
    """(#external initializers, #inline initializers, set of locations)."""
    n_ext = n_inl = 0
    locations: set[str] = set()
    for init in model.graph.initializer:
        if init.data_location == onnx.TensorProto.EXTERNAL:
            n_ext += 1
            for kv in init.external_data:
                if kv.key == "location":
                    locations.add(kv.value)
        else:
            n_inl += 1
    return n_ext, n_inl, locations


def value_info_str(vi: onnx.ValueInfoProto) -> str:
    dims = []
    for d in vi.type.tensor_type.shape.dim:
        dims.append(str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?"))
    return f"{vi.name}[{','.join(dims)}]"


def ort_rel_err(path: str, feeds: dict[str, np.ndarray], ref: dict[str, np.ndarray]) -> float:
    """The worst relative error of onnxruntime's outputs against `ref`, by the rule of
    pyconv1x1.testing (max|err| / max|ref|; inf for a shape or NaN mismatch)."""
    from pyconv1x1.testing import compare_outputs, run_reference

    return compare_outputs(run_reference("onnxruntime", path, feeds), ref,
                           rtol=REL_TOL).max_rel_err


def process(stem: str, path: str, x: torch.Tensor, y: torch.Tensor) -> bool:
    model = onnx.load(path, load_external_data=False)
    g = model.graph
    init_names = {i.name for i in g.initializer}
    graph_inputs = [i for i in g.input if i.name not in init_names]
    if len(graph_inputs) != 1 or len(g.output) != 1:
        raise RuntimeError(f"{path}: expected 1 input / 1 output, got "
                           f"{[i.name for i in graph_inputs]} / {[o.name for o in g.output]}")
    in_name, out_name = graph_inputs[0].name, g.output[0].name

    xs = x.numpy().astype(np.float32)
    ys = y.numpy().astype(np.float32)
    out_dir = os.path.dirname(path)
    np.savez(os.path.join(out_dir, f"{stem}.inputs.npz"), **{in_name: xs})
    np.savez(os.path.join(out_dir, f"{stem}.outputs.npz"), **{out_name: ys})

    err = ort_rel_err(path, {in_name: xs}, {out_name: ys})
    ok = err <= REL_TOL

    n_ext, n_inl, locs = external_info(model)
    size = os.path.getsize(path)
    ext = "no"
    for loc in sorted(locs):
        ext_path = os.path.join(out_dir, loc)
        ext_size = os.path.getsize(ext_path) if os.path.exists(ext_path) else -1
        size += max(ext_size, 0)
        ext = f"yes({loc}:{ext_size}B,{n_ext} ext/{n_inl} inline)"
    opset = ",".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in model.opset_import)
    print(
        f"{os.path.basename(path)}: opset {opset}; "
        f"in {value_info_str(graph_inputs[0])} out {value_info_str(g.output[0])}; "
        f"ops {[n.op_type for n in g.node]}; external {ext}; {size} B; "
        f"ort rel err {err:.2e} {'OK' if ok else 'FAIL'}"
    )
    return ok


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="models", help="output directory (default: models)")
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)

    torch.use_deterministic_algorithms(True)
    all_ok = True
    for name in MODELS:
        module, x = build(name)
        with torch.no_grad():
            y = module(x)
        for kind, exporter in (("torchscript", export_torchscript), ("dynamo", export_dynamo)):
            stem = f"{name}_{kind}"
            path = os.path.join(args.out, stem + ".onnx")
            # Re-seed so exporting cannot perturb anything downstream.
            torch.manual_seed(0)
            exporter(module, x, path)
            all_ok &= process(stem, path, x, y)
    if not all_ok:
        print("ERROR: some models exceed the onnxruntime tolerance", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
