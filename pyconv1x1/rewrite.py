"""Rewrite stage: unfused steps -> Program. Ordered, guarded passes; each applies only
when every condition holds and records what it did in Program.notes:

1. drop Identity / Dropout (rename, or keep a copy when a graph output needs one)
2. fold per-channel Mul / Add / BatchNormalization into the producing conv's weights
   (and an affine step left before a conv into that conv: normalize.fold_into_next_conv)
3. fuse activations and residual Adds into the producing step's epilogue
4. chain consecutive convs so a tile of pixels passes through all of them in cache
"""
from collections import deque

import numpy as np

from .normalize import fold_into_next_conv
from .program import (RES_AFTER_ACT, RES_BEFORE_ACT, AddStep, AffineStep, ChainStep,
                      CopyStep, Program)


def build_program(graph, steps):
    outputs = {v.name for v in graph.outputs}
    inputs = {v.name for v in graph.inputs}
    notes = []
    steps = _drop_copies(steps, outputs, inputs, notes)
    steps = _fuse(steps, outputs, notes)
    steps = fold_into_next_conv(steps, outputs, notes)
    steps = _chain(steps, outputs, notes)
    steps = _toposort(steps, inputs)
    return Program(inputs=graph.inputs, outputs=graph.outputs, steps=steps,
                   opset=graph.opset, producer=graph.producer, notes=notes,
                   metadata=graph.metadata)


def _consumers(steps):
    users = {}
    for s in steps:
        for t in s.reads:
            users.setdefault(t, []).append(s)
    return users


def _rename_reads(steps, old, new):
    for s in steps:
        if isinstance(s, ChainStep):
            if s.input == old:
                s.input = new
            for layer in s.layers:
                if layer.residual == old:
                    layer.residual = new
        elif isinstance(s, AddStep):
            if s.a == old:
                s.a = new
            if s.b == old:
                s.b = new
        elif s.input == old:
            s.input = new


def _drop_copies(steps, outputs, inputs, notes):
    """Every pass here is linear in the number of steps: models with 16,000 chained
    Identity nodes exist (exporters leave them), and a rescan per copy took 18 s."""
    readers = {}  # tensor -> {id: step} of the kept steps that read it, kept current
    for s in steps:
        for t in s.reads:
            readers.setdefault(t, {})[id(s)] = s
    producer = {}
    kept = []
    for s in steps:
        if not isinstance(s, CopyStep):
            kept.append(s)
            producer[s.output] = s
            continue
        readers.setdefault(s.input, {}).pop(id(s), None)  # (a kept copy is added back)
        if s.output not in outputs:
            moved = readers.pop(s.output, {})
            for u in moved.values():
                _rename_reads((u,), s.output, s.input)
            readers.setdefault(s.input, {}).update(moved)
            notes.append(f"dropped {s.name} (identity)")
            continue
        p = producer.get(s.input)
        if p is not None and s.input not in outputs and not readers.get(s.input):
            p.output = s.output
            del producer[s.input]
            producer[s.output] = p
            notes.append(f"dropped {s.name} (identity; producer writes {s.output!r})")
            continue
        readers[s.input][id(s)] = s
        kept.append(s)  # a graph output aliasing an input or another output: copy
        producer[s.output] = s
    return kept


def _fuse(steps, outputs, notes):
    """Merge steps into their producers until none merges. A worklist in execution
    order: a step is tried once, and again only when it has absorbed another (then
    it may fuse into its own producer); rescanning from the start after every merge
    was quadratic."""
    users, producer = _consumers(steps), {s.output: s for s in steps}
    absorbed = set()
    work = deque(steps)
    while work:
        s = work.popleft()
        if id(s) in absorbed:
            continue
        p = _fuse_into_producer(s, outputs, notes, users, producer)
        if p is not None:
            absorbed.add(id(s))
            work.appendleft(p)
    return [s for s in steps if id(s) not in absorbed]


def _fuse_into_producer(s, outputs, notes, users, producer):
    """Merge step s into the step producing its input; returns that step, or None.
    Keeps `users` and `producer` up to date."""
    if isinstance(s, AddStep):
        candidates = [(s.a, s.b), (s.b, s.a)]
    elif isinstance(s, AffineStep):
        candidates = [(s.input, None)]
    else:
        return None
    for main, other in candidates:
        p = producer.get(main)
        if p is None or main in outputs or len(users.get(main, ())) != 1:
            continue
        if other == main:
            continue
        if _absorb(p, s, other, notes):
            p.output = s.output
            del users[main]
            producer.pop(main, None)
            producer[s.output] = p
            if other is not None:
                users[other] = [p if u is s else u for u in users.get(other, ())]
            return p
    return None


def _merged_name(a, b, limit=200):
    """The name of a step that absorbed another: both while short, then the first
    and the last (16,000 fused activations made names, and notes quoting them,
    quadratic in size: 1.3 GB)."""
    name = f"{a}+{b}"
    if len(name) <= limit:
        return name
    return f"{a.split('+...+')[0].split('+')[0]}+...+{b}"


def _absorb(p, s, other, notes):
    """Try to merge step s (reading p's output) into p; True if done."""
    if isinstance(p, ChainStep) and len(p.layers) == 1:
        layer = p.layers[0]
        if isinstance(s, AffineStep):
            if s.scale is not None or s.shift is not None:
                if not layer.act.is_identity or layer.residual is not None:
                    return False
                scale = _expand(s.scale, layer.cout, 1.0)
                shift = _expand(s.shift, layer.cout, 0.0)
                if scale is None or shift is None:
                    return False
                with np.errstate(over="ignore", invalid="ignore"):  # inf, as in float32
                    w = layer.weight.astype(np.float64) * scale[:, None]
                    b = layer.bias.astype(np.float64) * scale + shift
                    layer.weight = w.astype(np.float32)
                    layer.bias = b.astype(np.float32)
                notes.append(f"folded {s.name} into conv {layer.names[0]}")
            if not s.act.is_identity:
                if layer.res_mode == RES_AFTER_ACT:
                    return False
                act = layer.act.then(s.act)
                if act is None:
                    return False
                layer.act = act
                notes.append(f"fused {s.name} ({s.act.describe()}) into conv "
                             f"{layer.names[0]}")
            layer.names.append(s.name)
            return True
        if isinstance(s, AddStep) and layer.residual is None:
            layer.residual = other
            layer.res_mode = RES_BEFORE_ACT if layer.act.is_identity else RES_AFTER_ACT
            layer.names.append(s.name)
            notes.append(f"fused residual {s.name} into conv {layer.names[0]}")
            return True
        return False
    if isinstance(p, (AffineStep, AddStep)) and isinstance(s, AffineStep):
        if s.scale is None and s.shift is None:
            act = p.act.then(s.act)
            if act is None:
                return False
            notes.append(f"fused {s.name} into {p.name.split('+')[0]}")
            p.act = act
            p.name = _merged_name(p.name, s.name)
            return True
        if isinstance(p, AffineStep) and p.act.is_identity and s.act.is_identity:
            c = max(_len(p.scale), _len(p.shift), _len(s.scale), _len(s.shift))
            if any(n not in (0, 1, c) for n in (_len(p.scale), _len(p.shift),
                                                 _len(s.scale), _len(s.shift))):
                return False
            s1, b1 = _expand(p.scale, c, 1.0), _expand(p.shift, c, 0.0)
            s2, b2 = _expand(s.scale, c, 1.0), _expand(s.shift, c, 0.0)
            with np.errstate(over="ignore", invalid="ignore"):
                p.scale = (s1 * s2).astype(np.float32)
                p.shift = (b1 * s2 + b2).astype(np.float32)
            p.name = _merged_name(p.name, s.name)
            return True
    return False


def _len(v):
    return 0 if v is None else v.size


def _expand(v, c, default):
    if v is None:
        return np.full(c, default, np.float64)
    if v.size == 1:
        return np.full(c, float(v[0]), np.float64)
    if v.size != c:
        return None
    return v.astype(np.float64)


def _chain(steps, outputs, notes):
    users = _consumers(steps)
    merged = set()
    for s in steps:
        if not isinstance(s, ChainStep) or id(s) in merged:
            continue
        while True:
            t = s.output
            nxt = [u for u in users.get(t, ()) if isinstance(u, ChainStep)]
            if (t in outputs or len(users.get(t, ())) != 1 or len(nxt) != 1
                    or nxt[0].input != t or nxt[0] is s):
                break
            d = nxt[0]
            first = d.layers[0]
            if not first.keeps_pixels or first.residual == t or len(d.layers) != 1:
                break
            if first.spatial_rank != s.layers[0].spatial_rank:
                break
            s.layers.extend(d.layers)
            s.output = d.output
            merged.add(id(d))
            del users[t]
            for r in d.reads[1:]:  # residuals the merged layer reads: now read by s
                users[r] = [s if u is d else u for u in users.get(r, ())]
            notes.append(f"chained {first.names[0]} after {s.layers[-2].names[0]}")
    return [s for s in steps if id(s) not in merged]


def _toposort(steps, inputs):
    """Kahn's algorithm, stable: fused steps may now read tensors produced later."""
    produced = {s.output: i for i, s in enumerate(steps)}
    indeg = [0] * len(steps)
    users = [[] for _ in steps]
    for i, s in enumerate(steps):
        deps = {produced[t] for t in s.reads if t in produced}
        indeg[i] = len(deps)
        for d in deps:
            users[d].append(i)
    ready = deque(i for i in range(len(steps)) if indeg[i] == 0)
    order = []
    while ready:
        i = ready.popleft()
        order.append(steps[i])
        for u in users[i]:
            indeg[u] -= 1
            if indeg[u] == 0:
                ready.append(u)
    if len(order) != len(steps):
        raise RuntimeError("pyconv1x1 internal error: rewrite made a cycle")
    return order


