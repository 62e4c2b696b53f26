"""Check stage: ir.Graph -> list of unfused program steps in topological order.

Every tensor must be defined once and before use, the graph must be acyclic, every op
supported. Unsupported nodes are collected and reported all at once."""
from collections import deque

from .errors import ONNX_EXTRA_HINT, ModelError, Problem, UnsupportedError
from .normalize import edge_type_problems
from .ops import PATTERN_DOMAIN, REGISTRY, Context, Refused
from .patterns import fuse_patterns
from .quant import DOMAIN as QUANT_DOMAIN, lower_quantized, quantized_edges

MIN_OPSET = 7


def _bind_quantized(node, ctx):
    return node.attrs["step"]


BUILTIN_NEWEST_OPSET = 23  # every op we bind has its semantics unchanged up to here


def newest_opset(needed=0):
    """The newest opset the installed onnx knows. onnx is imported (~0.2 s) only when a
    model asks for an opset newer than BUILTIN_NEWEST_OPSET."""
    if needed <= BUILTIN_NEWEST_OPSET:
        return BUILTIN_NEWEST_OPSET
    try:
        from onnx import defs
        return max(int(defs.onnx_opset_version()), BUILTIN_NEWEST_OPSET)
    except Exception:  # onnx missing or broken: what we know ourselves
        return BUILTIN_NEWEST_OPSET


def _onnx_installed():
    import importlib.util
    try:
        return importlib.util.find_spec("onnx") is not None
    except (ImportError, ValueError):
        return False


def topological_order(graph):
    """Node indices in an order where every input is produced first; ModelError on a
    tensor defined twice, used undefined, or a cycle."""
    producer = {}
    defined = set(graph.constants)
    for v in graph.inputs:
        defined.add(v.name)
    for i, n in enumerate(graph.nodes):
        for o in n.outputs:
            if not o:
                continue
            if o in producer or o in defined:
                where = (f"node '{graph.nodes[producer[o]].name}'" if o in producer
                         else "a graph input or initializer")
                raise ModelError(f"tensor {o!r} is produced by {n.label()} and also by "
                                 f"{where}; every tensor must be defined once")
            producer[o] = i
    indegree = [0] * len(graph.nodes)
    users = {}
    for i, n in enumerate(graph.nodes):
        deps = set()
        for t in n.inputs:
            if not t:
                continue
            if t in producer:
                deps.add(producer[t])
            elif t not in defined:
                raise ModelError(f"{n.label()} reads tensor {t!r}, which no node, input or "
                                 "initializer defines")
        for d in deps:
            users.setdefault(d, []).append(i)
        indegree[i] = len(deps)
    ready = deque(i for i, d in enumerate(indegree) if d == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users.get(i, ()):
            indegree[u] -= 1
            if indegree[u] == 0:
                ready.append(u)
    if len(order) != len(graph.nodes):
        stuck = [graph.nodes[i].name for i, d in enumerate(indegree) if d > 0]
        raise ModelError(f"the graph has a cycle through nodes {stuck[:10]}")
    for v in graph.outputs:
        if v.name not in producer and v.name not in defined:
            raise ModelError(f"graph output {v.name!r} is not produced by any node")
    return order


def lower(graph):
    """Check the graph and bind every node; returns (steps, shapes) in topological
    order. Raises UnsupportedError listing every node it cannot run."""
    newest = newest_opset(graph.opset)
    problems = []
    if not MIN_OPSET <= graph.opset <= max(newest, MIN_OPSET):
        problem = f"opset {graph.opset}: supported opsets are {MIN_OPSET} to {newest}"
        if graph.opset > newest == BUILTIN_NEWEST_OPSET and not _onnx_installed():
            problem += (f" (opsets above {BUILTIN_NEWEST_OPSET} are checked against the "
                        "onnx package's schemas; it is not installed: "
                        f"{ONNX_EXTRA_HINT})")
        problems.append(Problem("", "", problem))
    problems.extend(edge_type_problems(graph, quantized_edges(graph)))
    order = topological_order(graph)
    graph = fuse_patterns(graph)  # (after the checks of the graph as the model has it)
    order = topological_order(graph)
    shapes = {v.name: v.shape for v in graph.inputs}
    for name, arr in graph.constants.items():
        shapes[name] = tuple(arr.shape)
    used = {t for n in graph.nodes for t in n.inputs if t}
    used.update(v.name for v in graph.outputs)
    ctx = Context(graph.constants, shapes, graph.opset, used)
    steps = []
    for i in order:
        node = graph.nodes[i]
        refuse = lambda reason: problems.append(  # noqa: E731
            Problem(node.op_type, node.name, reason))
        if node.domain == QUANT_DOMAIN:  # made by quant.lower_quantized: the step
            binder = _bind_quantized     # is built already
        elif node.domain not in ("", "ai.onnx", PATTERN_DOMAIN):
            refuse(f"domain {node.domain!r} is not supported")
            continue
        else:  # (a pattern node, made by patterns.fuse_patterns: its own registry key)
            binder = REGISTRY.get(node.op_type if node.domain != PATTERN_DOMAIN
                                  else f"{PATTERN_DOMAIN}:{node.op_type}")
        if binder is None:
            refuse(f"op {node.op_type} is not supported (supported: "
                   f"{', '.join(sorted(k for k in REGISTRY if ':' not in k))})")
            continue
        try:
            step = binder(node, ctx)
        except Refused as why:
            refuse(str(why))
            continue
        folded = [t for t in step.reads if t in graph.constants]
        if folded:
            refuse(f"computes on constant {folded[0]!r}; {node.op_type} is not folded "
                   "at load (see fold.FOLDERS for the ops that are)")
            continue
        for o in node.outputs:
            shapes.setdefault(o, None)
        try:
            shapes[step.output] = step.out_shape(shapes)
        except UnsupportedError as exc:
            problems.extend(exc.problems or [Problem("", "", str(exc))])
            continue
        steps.append(step)
    if problems:
        head = f"{len(problems)} problem(s) keep this model from running:"
        raise UnsupportedError("\n  ".join([head] + [str(p) for p in problems]),
                               problems=problems)
    for v in graph.outputs:
        if v.name in graph.constants:
            raise UnsupportedError(f"graph output {v.name!r} is a constant; constant "
                                   "outputs are not supported")
    return steps, shapes


def unsupported_report(graph):
    """(problems, conv_count, conv1x1_count) without raising: for `pyconv1x1 info`.
    problems: one line each (see unsupported_problems for the records)."""
    problems, convs, ones = unsupported_problems(graph)
    return [str(p) for p in problems], convs, ones


def unsupported_problems(graph):
    """(problems, conv_count, conv1x1_count) without raising; problems: Problem records
    (op, node, reason), as UnsupportedError.problems holds them (group them by op and
    reason without parsing text)."""
    from .fold import fold_constants
    problems = []
    convs = ones = 0
    for n in graph.nodes:
        if n.op_type == "Conv":
            convs += 1
            w = graph.constants.get(n.inputs[1]) if len(n.inputs) > 1 else None
            if w is not None and w.ndim >= 3 and all(k == 1 for k in w.shape[2:]):
                ones += 1
    try:
        lower(fold_constants(lower_quantized(graph)[0])[0])
    except UnsupportedError as exc:
        problems = exc.problems or [Problem("", "", str(exc))]
    except ModelError as exc:
        problems = [Problem("", "", str(exc))]
    return problems, convs, ones
