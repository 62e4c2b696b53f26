"""Describe a model: inputs, outputs, each layer after fusion with its shape,
parameters and FLOPs; for a model that cannot run, what keeps it from running (exit
2)."""
import sys

from ..errors import Error, Problem, UnsupportedError, one_line
from .common import (EXIT_OK, EXIT_USAGE, PROG, add_command, fmt_count, kernels_line,
                     open_session, print_table, shape_text)


def add_parser(sub):
    p = add_command(sub, "info", "inputs, outputs, fused layers, parameters, FLOPs",
                    __doc__)
    p.add_argument("--all-problems", action="store_true",
                   help="for a model that cannot run, one line per offending node "
                        "(default: nodes with the same op and reason share a line)")
    return p


def _op_types_by_name(model):
    """{node name: op type} from the ONNX file, or {} when it cannot be read again."""
    try:
        from .. import onnx_reader
        return {n.name: n.op_type for n in onnx_reader.load(model).nodes}
    except Exception:
        return {}


def _conv_rows(index, step, x, ops_of):
    """One row per conv of a chain step whose input has shape x (None: unknown), and
    its parameter count; shapes from the step's own arithmetic (ChainStep.geometry)."""
    at = step.geometry(x) if step.layer_shapes(x) is not None else None
    kind = f"chain[{len(step.layers)}]" if len(step.layers) > 1 else "conv"
    rows, total = [], 0
    for j, layer in enumerate(step.layers):
        params = layer.cout * layer.k + layer.bias.size
        total += params
        out = flops = None
        if at is not None:
            n, ho, wo = at[0], at[3], at[4]
            out = step.laid_out(layer.out_shape(n, ho, wo))
            flops = layer.flops(n, ho, wo)
        pads = (layer.auto_pad if layer.auto_pad not in ("NOTSET", "")
                else ",".join(str(p) for p in layer.pads))
        residual = "-"
        if layer.residual:
            when = {1: "before act", 2: "after act"}.get(layer.res_mode, "")
            residual = f"+{layer.residual}" + (f" ({when})" if when else "")
        rows.append((f"{index}" if j == 0 else "", kind if j == 0 else "",
                     ops_of(layer.names), "+".join(layer.names),
                     f"{layer.cin}->{layer.cout}",
                     layer.group, "x".join(str(s) for s in layer.strides), pads,
                     layer.act.describe() or "-", residual,
                     shape_text(out) if out else "?",
                     params, "?" if flops is None else flops))
    return rows, total


def _layer_rows(program, shapes, op_types):
    """Table rows for every step (a chain gives one row per conv) and the parameter
    total. shapes: {tensor: shape} of the session's plan at the declared input shapes
    ({} when they could not be planned: shapes and FLOPs show as '?')."""
    rows = [("#", "step", "ops", "nodes", "cin->cout", "group", "strides", "pads",
             "act", "residual", "output", "params", "FLOPs")]
    total_params = 0

    def ops_of(names):
        if not op_types:
            return "-"
        return "+".join(op_types.get(n, "?") for n in names)
    for index, step in enumerate(program.steps, 1):
        if step.layers:
            conv_rows, params = _conv_rows(index, step, shapes.get(step.input), ops_of)
            rows += conv_rows
            total_params += params
            continue
        # an element-wise step: its per-channel constants are its parameters (an int8
        # step counts its own: param_count, and names itself: title)
        params = getattr(step, "param_count", None)
        if params is None:
            params = sum(v.size for v in (getattr(step, "scale", None),
                                          getattr(step, "shift", None)) if v is not None)
        total_params += params
        act = getattr(step, "act", None)
        out = shapes.get(step.output)
        rows.append((str(index), getattr(step, "title", step.kind), ops_of(step.label.split("+")), step.label,
                     "", "", "", "", (act.describe() if act else "") or "-",
                     " + ".join(step.reads) if step.kind == "add" else "-",
                     shape_text(out) if out else "?", params, "-"))
    return rows, total_params


def _declared_shapes(session):
    """{input: declared shape with named and unknown dims set to 1, or None where the
    input has no declared shape}."""
    return {a.name: None if a.shape is None else
            tuple(d if isinstance(d, int) and d >= 0 else 1 for d in a.shape)
            for a in session.get_inputs()}


def cmd_info(args):
    try:
        session = open_session(args.model)
    except UnsupportedError as exc:
        return _info_unsupported(args.model, exc, args.all_problems)
    program = session.program
    print(f"model: {args.model}")
    print(f"producer: {program.producer or '?'}, opset {program.opset}")
    print(kernels_line(session))
    if session.int8_path:  # (and which int8 chains run exactly on the float kernels)
        from ..quant import int8_path
        print("int8 kernels: " + int8_path(program, session.kernel_variant,
                                           session._kset.chains))
    print("inputs:")
    print_table([(a.name, shape_text(a.shape), a.type) for a in session.get_inputs()])
    print("outputs:")
    print_table([(a.name, shape_text(a.shape), a.type) for a in session.get_outputs()])

    declared = _declared_shapes(session)
    plan, problem = None, None
    if None not in declared.values():
        try:
            plan = session._plan(declared)
        except Error as exc:
            problem = one_line(exc)
    at = ", ".join(f"{k}={shape_text(v)}" for k, v in declared.items())
    op_types = _op_types_by_name(args.model) if isinstance(args.model, str) else {}
    rows, params = _layer_rows(program, plan.shapes if plan else {}, op_types)
    print(f"layers after fusion ({len(program.steps)} steps, "
          f"{sum(1 for _ in program.layers())} convs; shapes and FLOPs at {at}, "
          "named dims = 1):")
    print_table(rows)
    if problem:
        print(f"(cannot plan the declared shape: {problem})")
    flops = plan.flops if plan else None
    rate = "?" if flops is None else (
        f"{flops} ({fmt_count(flops)})" if flops >= 1000 else str(flops))
    print(f"total: {params} parameters (after folding), {rate} FLOPs per run")
    if program.notes:
        print("rewrite notes:")
        for note in program.notes:
            print(f"  {note}")
    else:
        print("rewrite notes: none")
    return EXIT_OK


def _conv_kernel_shapes(graph):
    """Kernel shape of every Conv node (None when it cannot be known statically): from
    the kernel_shape attribute, the constant weight, or the shape a ConstantOfShape
    weight is built from (as in the onnx package's 'light' test models)."""
    producers = {o: n for n in graph.nodes for o in n.outputs if o}
    out = []
    for node in graph.nodes:
        if node.op_type != "Conv":
            continue
        kernel = None
        attr = node.attrs.get("kernel_shape")
        try:
            if attr is not None:
                kernel = tuple(int(k) for k in attr)
        except (TypeError, ValueError):
            kernel = None
        if kernel is None and len(node.inputs) > 1:
            w = node.inputs[1]
            if w in graph.constants:
                kernel = tuple(int(d) for d in graph.constants[w].shape[2:])
            elif w in producers and producers[w].op_type == "ConstantOfShape":
                src = producers[w].inputs[0] if producers[w].inputs else ""
                if src in graph.constants:
                    kernel = tuple(int(d) for d in graph.constants[src].reshape(-1)[2:])
        out.append(kernel)
    return out


_ONNX_TYPE_NAMES = {"float32": "float", "float64": "double"}


def _onnx_type(elem_type):
    return f"tensor({_ONNX_TYPE_NAMES.get(elem_type, elem_type)})"


def _group_problems(problems, shown=6):
    """Problem records with the same op and reason on one line, naming the first
    nodes; a problem that names no node on its own line."""
    groups = {}
    for p in problems:
        groups.setdefault((p.op, p.reason) if p.op else (None, str(p)), []).append(p.node)
    lines = []
    for (op, reason), names in groups.items():
        if op is None:
            lines.append(reason)
        elif len(names) == 1:
            lines.append(f"{op} '{names[0]}': {reason}")
        else:
            listed = ", ".join(f"'{n}'" for n in names[:shown])
            more = f" and {len(names) - shown} more" if len(names) > shown else ""
            lines.append(f"{op} {listed}{more} ({len(names)} nodes): {reason}")
    return lines


def _info_unsupported(model, exc, verbose=False):
    """What `info` can tell about a model that does not run here; exit 2."""
    import collections

    from .. import check, onnx_reader
    try:
        graph = onnx_reader.load(model)
    except UnsupportedError:  # refused while parsing (e.g. sparse initializers)
        raise exc from None
    problems, n_conv, n_ones = check.unsupported_problems(graph)
    if not problems:  # refused after the check stage: the session's own records
        problems = exc.problems or [Problem("", "", line.strip()) for line in
                                    str(exc).splitlines()[1:]] or [Problem("", "", str(exc))]
    print(f"model: {model}")
    print(f"producer: {graph.producer or '?'}, opset {graph.opset}")
    print("inputs:")
    rows = [(v.name, shape_text(v.shape), _onnx_type(v.elem_type)) for v in graph.inputs]
    print_table(rows or [("(none)",)])
    print("outputs:")
    rows = [(v.name, shape_text(v.shape), _onnx_type(v.elem_type)) for v in graph.outputs]
    print_table(rows or [("(none)",)])
    counts = collections.Counter(n.op_type for n in graph.nodes)
    print(f"ops ({len(graph.nodes)} nodes): "
          + ", ".join(f"{op} {c}" for op, c in counts.most_common()))
    kernels = _conv_kernel_shapes(graph)
    by_kernel = collections.Counter("x".join(map(str, k)) if k is not None else "unknown"
                                    for k in kernels)
    ones = sum(1 for k in kernels if k is not None and all(d == 1 for d in k))
    ones = max(ones, n_ones)
    detail = ", ".join(f"{k}: {c}" for k, c in sorted(by_kernel.items(),
                                                      key=lambda kv: -kv[1]))
    print(f"Conv nodes: {max(n_conv, len(kernels))}, of which 1x1: {ones}"
          + (f" (kernels {detail})" if detail else ""))
    print(f"cannot run this model: {len(problems)} problem(s):")
    for line in (map(str, problems) if verbose else _group_problems(problems)):
        print(f"  {line}")
    sys.stdout.flush()
    print(f"{PROG}: error: {model} cannot run here: {len(problems)} problem(s), listed "
          "above", file=sys.stderr)
    return EXIT_USAGE
