"""Rewrite stage: unfused steps -> Program. Ordered, guarded passes; each applies only
when every condition holds, records what it did in Program.notes and, where a candidate
stays as it is, why in Program.declined:

1. drop Identity / Dropout (rename, or keep a copy when a graph output needs one)
2. fold per-channel Mul / Add / BatchNormalization into the producing conv's weights
   (and an affine step left before a conv into that conv: normalize.fold_into_next_conv)
3. fuse activations and residual Adds into the producing step's epilogue
4. take each Transpose that only moves the channel axis into the store of the chain
   before it or the gather of the chain after it (the chain then writes / reads the
   other layout; no copy), then fuse again (a residual Add after such a Transpose)
5. chain consecutive convs so a tile of pixels passes through all of them in cache
6. take a per-channel scale (squeeze-excitation's Mul) into the gather of the chain
   that reads its result: the scaled feature map is never written

What a step kind can absorb is the step's own business (program/steps.py: absorb,
fold_into_conv, fold_into_elementwise); the passes here only walk the graph.
"""
from collections import deque

from .normalize import fold_into_next_conv
from .program import Program, channel_move
from .quant.rewrite import merge_quantized


def build_program(graph, steps):
    outputs = {v.name for v in graph.outputs}
    inputs = {v.name for v in graph.inputs}
    notes, declined = [], _Declined()
    steps = _drop_copies(steps, outputs, inputs, notes, declined)
    steps = _fuse(steps, outputs, notes, declined)
    if any(s.kind == "transpose" for s in steps):
        steps = _absorb_transposes(steps, outputs, notes, declined)
        steps = _fuse(steps, outputs, notes, declined)
    steps = fold_into_next_conv(steps, outputs, notes)
    steps = _chain(steps, outputs, notes, declined)
    if any(s.kind == "scale" for s in steps):
        steps = _scale_into_gather(steps, outputs, notes, declined)
    steps = merge_quantized(steps, outputs, notes)
    steps = _toposort(steps, inputs)
    return Program(inputs=graph.inputs, outputs=graph.outputs, steps=steps,
                   opset=graph.opset, producer=graph.producer, notes=notes,
                   metadata=graph.metadata, declined=declined.reasons())


class _Declined:
    """Why each candidate step stayed as it was: the last reason per step (a step tried
    again after it absorbed another may decline anew, or merge: then it is dropped)."""

    def __init__(self):
        self.by_step = {}

    def add(self, step, text):
        self.by_step[id(step)] = text

    def drop(self, step):
        self.by_step.pop(id(step), None)

    def reasons(self):
        return list(self.by_step.values())


def _consumers(steps):
    users = {}
    for s in steps:
        for t in s.reads:
            users.setdefault(t, []).append(s)
    return users


def _drop_copies(steps, outputs, inputs, notes, declined):
    """Every pass here is linear in the number of steps: models with 16,000 chained
    Identity nodes exist (exporters leave them), and a rescan per copy took 18 s."""
    readers = {}  # tensor -> {id: step} of the kept steps that read it, kept current
    for s in steps:
        for t in s.reads:
            readers.setdefault(t, {})[id(s)] = s
    producer = {}
    kept = []
    for s in steps:
        source = s.copy_of
        if source is None:
            kept.append(s)
            producer[s.output] = s
            continue
        readers.setdefault(source, {}).pop(id(s), None)  # (a kept copy is added back)
        if s.output not in outputs:
            moved = readers.pop(s.output, {})
            for u in moved.values():
                u.rename_read(s.output, source)
            readers.setdefault(source, {}).update(moved)
            notes.append(f"dropped {s.name} (identity)")
            continue
        p = producer.get(source)
        if p is not None and source not in outputs and not readers.get(source):
            p.output = s.output
            del producer[source]
            producer[s.output] = p
            notes.append(f"dropped {s.name} (identity; producer writes {s.output!r})")
            continue
        if p is None:
            why = f"{source!r} is a graph input"
        elif source in outputs:
            why = f"{source!r} is a graph output too"
        else:
            why = f"{source!r} is also read by {_names(readers[source].values())}"
        declined.add(s, f"{s.name} (identity) kept as a copy: graph output {s.output!r} "
                        f"aliases {why}")
        readers[source][id(s)] = s
        kept.append(s)  # a graph output aliasing an input or another output: copy
        producer[s.output] = s
    return kept


def _names(steps, shown=3):
    names = [s.label for s in steps]
    return ", ".join(names[:shown]) + (f" and {len(names) - shown} more"
                                       if len(names) > shown else "")


def _fuse(steps, outputs, notes, declined):
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
        p = _fuse_into_producer(s, outputs, notes, users, producer, declined)
        if p is not None:
            absorbed.add(id(s))
            declined.drop(s)
            work.appendleft(p)
    return [s for s in steps if id(s) not in absorbed]


def _fuse_into_producer(s, outputs, notes, users, producer, declined):
    """Merge step s into the step producing its input; returns that step, or None
    (then `declined` says why). Keeps `users` and `producer` up to date."""
    why = []
    for main, other in s.fuse_candidates():
        p = producer.get(main)
        if p is None:
            why.append(f"{main!r} is a graph input")
            continue
        if main in outputs:
            why.append(f"{main!r} is a graph output")
            continue
        readers = users.get(main, ())
        if len(readers) != 1:
            why.append(f"{main!r} is also read by "
                       f"{_names(u for u in readers if u is not s)}")
            continue
        if other == main:
            why.append(f"it adds {main!r} to itself")
            continue
        reason = p.absorb(s, other, notes)
        if reason is None:
            p.output = s.output
            del users[main]
            producer.pop(main, None)
            producer[s.output] = p
            if other is not None:
                users[other] = [p if u is s else u for u in users.get(other, ())]
            return p
        why.append(f"into {p.label}: {reason}")
    if why:
        declined.add(s, f"{s.describe()} not fused: {'; '.join(dict.fromkeys(why))}")
    return None


def _absorb_transposes(steps, outputs, notes, declined):
    """A Transpose t that only moves the channel axis becomes the layout of the chain
    that produces its input (the chain's store) or of the one chain that reads its
    output (the chain's gather); else it stays, a copy, and `declined` says why."""
    users, producer = _consumers(steps), {s.output: s for s in steps}
    gone = set()
    for t in steps:
        if t.kind != "transpose":
            continue
        move, rank = channel_move(t.perm), len(t.perm)
        why = []
        p = producer.get(t.input)
        readers = users.get(t.input, ())
        if p is None or not p.layers:
            why.append(f"{t.input!r} is not computed by a conv chain")
        elif t.input in outputs:
            why.append(f"{t.input!r} is a graph output")
        elif len(readers) != 1:
            why.append(f"{t.input!r} is also read by "
                       f"{_names(u for u in readers if u is not t)}")
        elif p.layers[-1].spatial_rank + 2 != rank:
            why.append(f"{p.label} writes rank {p.layers[-1].spatial_rank + 2}")
        elif any(l.residual for l in p.layers):
            why.append(f"{p.label} adds a residual in its present layout")
        elif move != "swap" and (move == "last") == p.out_last:
            why.append(f"{p.label} already writes that layout")
        else:
            p.out_last = not p.out_last
            notes.append(f"took transpose {t.name} into the store of conv "
                         f"{p.layers[-1].names[0]} (writes "
                         f"{'channels-last' if p.out_last else 'NCHW'})")
            _bypass(t, p, users, producer, gone)
            continue
        readers = users.get(t.output, ())
        d = readers[0] if len(readers) == 1 else None
        if t.output in outputs:
            why.append(f"{t.output!r} is a graph output")
        elif d is None or not d.layers or d.input != t.output or t.output in d.reads[1:]:
            why.append(f"{t.output!r} is not read by one conv chain alone")
        elif d.layers[0].spatial_rank + 2 != rank:
            why.append(f"{d.label} reads rank {d.layers[0].spatial_rank + 2}")
        elif move != "swap" and (move == "first") == d.in_last:
            why.append(f"{d.label} already reads that layout")
        else:
            d.in_last = not d.in_last
            d.input = t.input
            users.setdefault(t.input, []).append(d)
            users[t.input] = [u for u in users[t.input] if u is not t]
            del users[t.output]
            gone.add(id(t))
            notes.append(f"took transpose {t.name} into the gather of conv "
                         f"{d.layers[0].names[0]} (reads "
                         f"{'channels-last' if d.in_last else 'NCHW'})")
            continue
        declined.add(t, f"{t.describe()} kept: {'; '.join(why)}")
    return [s for s in steps if id(s) not in gone]


def _bypass(t, p, users, producer, gone):
    """Step p now writes what step t (its only reader) wrote: drop t."""
    del users[t.input]
    del producer[t.input]
    p.output = t.output
    producer[t.output] = p
    gone.add(id(t))


def _scale_into_gather(steps, outputs, notes, declined):
    users = _consumers(steps)
    gone = set()
    for s in steps:
        if s.kind != "scale":
            continue
        readers = users.get(s.output, ())
        d = readers[0] if len(readers) == 1 else None
        if s.output in outputs:
            why = f"{s.output!r} is a graph output"
        elif d is None or not d.layers or d.input != s.output or s.output in d.reads[1:]:
            why = f"{s.output!r} is not read by one conv chain alone"
        elif d.in_last or d.in_scale:
            why = f"{d.label} reads channels-last" if d.in_last else "already scaled"
        else:
            d.input, d.in_scale = s.input, s.gate
            gone.add(id(s))
            notes.append(f"took scale {s.name} into the gather of conv "
                         f"{d.layers[0].names[0]}")
            continue
        declined.add(s, f"{s.describe()} kept (one pass): {why}")
    return [s for s in steps if id(s) not in gone]


def _chain(steps, outputs, notes, declined):
    users = _consumers(steps)
    merged = set()
    for s in steps:
        if not s.layers or id(s) in merged:
            continue
        while True:
            t = s.output
            readers = users.get(t, ())
            nxt = [u for u in readers if u.layers and u.input == t and u is not s]
            if len(nxt) != 1:
                for d in nxt:
                    _decline_chain(declined, s, d, f"{t!r} is also read by "
                                   f"{_names(u for u in readers if u is not d)}")
                break
            d = nxt[0]
            first = d.layers[0]
            why = None
            if t in outputs:
                why = f"{t!r} is a graph output"
            elif len(readers) != 1:
                why = f"{t!r} is also read by {_names(u for u in readers if u is not d)}"
            elif len(d.layers) != 1:
                why = "it is already chained"
            elif not first.keeps_pixels:
                why = "its strides or pads change the pixel grid"
            elif first.residual == t:
                why = f"it also adds {t!r} as a residual"
            elif first.spatial_rank != s.layers[0].spatial_rank:
                why = "the two convs differ in spatial rank"
            elif s.out_last != d.out_last and any(l.residual for l in s.layers):
                why = "the first adds a residual in the other layout"
            if why is not None:
                _decline_chain(declined, s, d, why)
                break
            s.layers.extend(d.layers)
            s.output = d.output
            s.out_last = d.out_last
            merged.add(id(d))
            del users[t]
            for r in d.reads[1:]:  # residuals the merged layer reads: now read by s
                users[r] = [s if u is d else u for u in users.get(r, ())]
            notes.append(f"chained {first.names[0]} after {s.layers[-2].names[0]}")
    return [s for s in steps if id(s) not in merged]


def _decline_chain(declined, s, d, why):
    declined.add(d, f"conv {d.layers[0].names[0]} not chained after conv "
                    f"{s.layers[-1].names[0]}: {why}")


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


