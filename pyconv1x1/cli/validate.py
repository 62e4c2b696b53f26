"""Compare the model's outputs with a reference (exit 1 on mismatch):
  recorded     <stem>.inputs.npz / <stem>.outputs.npz beside the model
  onnxruntime  onnxruntime on the same input
  reference    onnx's ReferenceEvaluator (needs the onnx package)
  torch        the ONNX graph REBUILT WITH TORCH OPS (conv2d, relu,
               ...), node by node: it checks pyconv1x1 against
               PyTorch's kernels, not against your own nn.Module. For
               that, export and compare in Python with
               pyconv1x1.testing.assert_matches_torch(module, x)
  source       (a .pc1 plan) pyconv1x1 on the --source .onnx
A compiled .pc1 plan is checked against its recorded outputs, or,
with --source MODEL.onnx, against any reference run on that model.
A value passes when |a - b| <= atol + rtol * max|reference| (the
rule of pyconv1x1.testing.compare_outputs)."""
import argparse
import os

from ..errors import Error, one_line
from .common import (EXIT_MISMATCH, EXIT_OK, CliError, add_command, add_input_args,
                     add_threads_arg, non_negative_float, open_session, print_table,
                     shape_text)
from .data import feeds_for, print_defaulted, read_npz

AGAINST = ["recorded", "onnxruntime", "reference", "torch", "source"]


def add_parser(sub):
    p = add_command(sub, "validate", "compare outputs with a reference", __doc__,
                    formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--against", required=True, choices=AGAINST)
    p.add_argument("--source", metavar="MODEL.onnx", default=None,
                   help="for a .pc1 plan: the .onnx it was compiled from, which the "
                        "reference runs")
    add_input_args(p)
    p.add_argument("--rtol", type=non_negative_float, default=1e-5,
                   help="relative tolerance, times max|reference| (default 1e-5)")
    p.add_argument("--atol", type=non_negative_float, default=None,
                   help="absolute tolerance (default 0; rtol where the reference is "
                        "all zeros)")
    add_threads_arg(p)
    return p


def _stem(model):
    """Where recorded files sit: the model path without its .onnx (or .pc1) suffix."""
    root, ext = os.path.splitext(model)
    return root if ext.lower() in (".onnx", ".pc1") else model


def _is_plan(path):
    from .. import planfile
    return planfile.is_plan(path)


def _reference_model(args):
    """The ONNX file the reference runs: MODEL, or --source for a compiled plan."""
    plan = _is_plan(args.model)
    if args.source is not None:
        if not plan:
            raise CliError(f"--source names the .onnx a compiled plan was made from; "
                           f"{args.model!r} is not a .pc1 plan")
        if _is_plan(args.source):
            raise CliError(f"--source {args.source!r} is a compiled plan; give the .onnx "
                           "the plan was compiled from")
        return args.source
    if plan and args.against not in ("recorded",):
        raise CliError(f"{args.model!r} is a compiled plan: --against {args.against} "
                       "runs the ONNX model, so give the .onnx it was compiled from with "
                       "--source MODEL.onnx")
    return args.model


def _recorded_stem(args):
    """Where the recorded inputs/outputs are: beside MODEL, else (for a plan) beside
    its --source."""
    stem = _stem(args.model)
    if not os.path.isfile(stem + ".inputs.npz") and args.source is not None:
        other = _stem(args.source)
        if os.path.isfile(other + ".inputs.npz"):
            return other
    return stem


def _recorded(args, session):
    """(feeds, origin, reference outputs, description) of --against recorded."""
    if args.input or args.shape or args.dim:
        raise CliError("--input, --shape and --dim cannot be used with --against "
                       "recorded: the recorded outputs belong to the recorded inputs")
    stem = _recorded_stem(args)
    in_path, out_path = stem + ".inputs.npz", stem + ".outputs.npz"
    feeds = read_npz(in_path, "recorded inputs")
    names = [a.name for a in session.get_inputs()]
    if sorted(feeds) != sorted(names):
        raise CliError(f"recorded inputs {in_path!r} have keys {sorted(feeds)}; the "
                       f"model's inputs are {names}")
    return (feeds, f"recorded, {in_path}", read_npz(out_path, "recorded outputs"),
            f"recorded outputs {out_path}")


def _against_text(args, ref_model):
    from ..testing.reference import REFERENCES
    text = REFERENCES[args.against]
    if ref_model != args.model:
        text += f" ({ref_model})"
    return text


def cmd_validate(args):
    from ..testing.compare import compare
    from ..testing.reference import run_reference
    session = open_session(args.model, args.threads)
    if args.against == "source" and args.source is None:
        raise CliError("--against source compares a compiled plan with the .onnx it was "
                       "compiled from: give it with --source MODEL.onnx")
    ref_model = _reference_model(args)
    if args.against == "recorded":
        feeds, origin, reference, against = _recorded(args, session)
    else:
        feeds, origin = feeds_for(args, session)
        reference, against = None, _against_text(args, ref_model)
    try:
        outputs = session.run(None, feeds)
    except Error as exc:
        raise CliError(f"{args.model!r} cannot run input {origin}: {one_line(exc)}") \
            from None
    if reference is None:
        reference = run_reference(args.against, ref_model, feeds, session.threads,
                                  label=f"--against {args.against}")

    atol = "0 (rtol on an all-zero reference)" if args.atol is None else f"{args.atol:g}"
    print(f"model: {args.model}")
    print(f"against: {against}; input {origin}; rtol {args.rtol:g}, atol {atol}")
    print_defaulted(args)
    rows = [("output", "shape", "max abs err", "rel err", "result")]
    failed = 0
    for arg, arr in zip(session.get_outputs(), outputs):
        ref = reference.get(arg.name)
        if ref is None:
            rows.append((arg.name, shape_text(arr.shape), "-", "-",
                         "FAIL (no reference value)"))
            failed += 1
            continue
        if tuple(ref.shape) != tuple(arr.shape):
            rows.append((arg.name, shape_text(arr.shape), "-", "-",
                         f"FAIL (reference shape {shape_text(ref.shape)})"))
            failed += 1
            continue
        err, rel, ok = compare(arr, ref, args.rtol, args.atol)
        failed += not ok
        rows.append((arg.name, shape_text(arr.shape), f"{err:.3g}", f"{rel:.3g}",
                     "ok" if ok else "FAIL"))
    print_table(rows)
    total = len(outputs)
    if failed:
        print(f"MISMATCH: {failed} of {total} output(s) outside tolerance")
        return EXIT_MISMATCH
    print(f"ok: all {total} output(s) within tolerance")
    return EXIT_OK
