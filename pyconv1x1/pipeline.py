"""Load pipeline: a model (path, bytes, onnx.ModelProto) or a compiled .pc1 plan ->
Program. A plan is read once, validated and used with numpy alone (no onnx import); a
model is parsed (onnx_reader), checked and bound (check) and rewritten (rewrite)."""
from . import planfile


def load_program(model, base_dir=None):
    """Parse, check and rewrite: model -> Program (or read a compiled plan)."""
    if planfile.is_plan(model):
        return planfile.load(model)
    return program_from_model(model, base_dir)


def program_from_model(model, base_dir=None):
    """The .onnx path of load_program: parse -> quantized ops -> fold constants ->
    check -> rewrite."""
    from . import check, fold, onnx_reader, rewrite
    from .quant import lower_quantized
    # quantized ops first (they read the int8 weights that folding would dequantize)
    graph, quant_notes = lower_quantized(onnx_reader.load(model, base_dir=base_dir))
    graph, folded = fold.fold_constants(graph)
    steps, _ = check.lower(graph)
    program = rewrite.build_program(graph, steps)
    program.notes[:0] = quant_notes + folded
    return program
