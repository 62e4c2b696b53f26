"""Check stage: ir.Graph -> list of unfused program steps in topological order.

Every tensor must be defined once and before use, the graph must be acyclic, every op
supported. Unsupported nodes are collected and reported all at once."""
from collections import deque

from .errors import ONNX_EXTRA_HINT, ModelError, UnsupportedError
from .normalize import edge_type_problems
from .ops import REGISTRY, Context, Refused
from .program import AddStep, ChainStep

MIN_OPSET = 7


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


def _out_shape(step, shapes):
    """Symbolic shape of a step's output (ints, names or None per dim), or None."""
    if isinstance(step, ChainStep):
        x = shapes.get(step.input)
        layer = step.layers[0]
        if x is None:
            return (None, layer.cout) + (None,) * layer.spatial_rank
        if layer.spatial_rank == 1:
            h, w = 1, x[2]
        else:
            h, w = x[2], x[3]
        if isinstance(h, int) and isinstance(w, int):
            ho, wo, _, _ = layer.out_hw(h, w)
            if ho < 1 or wo < 1:
                raise ModelError(f"Conv '{layer.name}': input {list(x)} gives an empty "
                                 f"output ({ho}x{wo})")
        else:
            ho = h if layer.keeps_pixels else None
            wo = w if layer.keeps_pixels else None
        dims = (ho, wo) if layer.spatial_rank == 2 else (wo,)
        return (x[0], layer.cout) + dims
    if isinstance(step, AddStep):
        a, b = shapes.get(step.a), shapes.get(step.b)
        if a is None or b is None:
            return a or b
        if len(a) != len(b) or any(isinstance(x, int) and isinstance(y, int) and x != y
                                   for x, y in zip(a, b)):
            raise UnsupportedError(f"Add '{step.name}': inputs {list(a)} and {list(b)} "
                                   "broadcast; only same-shape tensor sums run")
        return tuple(x if isinstance(x, int) else y for x, y in zip(a, b))
    return shapes.get(step.input)


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
        problems.append(problem)
    problems.extend(edge_type_problems(graph))
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
        if node.domain not in ("", "ai.onnx"):
            problems.append(f"{node.label()}: domain {node.domain!r} is not supported")
            continue
        binder = REGISTRY.get(node.op_type)
        if binder is None:
            problems.append(f"{node.label()}: op {node.op_type} is not supported "
                            f"(supported: {', '.join(sorted(REGISTRY))})")
            continue
        try:
            step = binder(node, ctx)
        except Refused as why:
            problems.append(f"{node.label()}: {why}")
            continue
        folded = [t for t in step.reads if t in graph.constants]
        if folded:
            problems.append(f"{node.label()}: computes on constant {folded[0]!r}; "
                            "constant folding is not supported")
            continue
        for o in node.outputs:
            shapes.setdefault(o, None)
        try:
            shapes[step.output] = _out_shape(step, shapes)
        except UnsupportedError as exc:
            problems.append(str(exc))
            continue
        steps.append(step)
    if problems:
        head = f"{len(problems)} problem(s) keep this model from running:"
        raise UnsupportedError("\n  ".join([head] + problems))
    for v in graph.outputs:
        if v.name in graph.constants:
            raise UnsupportedError(f"graph output {v.name!r} is a constant; constant "
                                   "outputs are not supported")
    return steps, shapes


def unsupported_report(graph):
    """(problems, conv_count, conv1x1_count) without raising: for `pyconv1x1 info`."""
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
        lower(fold_constants(graph)[0])
    except UnsupportedError as exc:
        problems = str(exc).split("\n  ")[1:] or [str(exc)]
    except ModelError as exc:
        problems = [str(exc)]
    return problems, convs, ones

