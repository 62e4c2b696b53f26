"""Plan stage: Program -> kernels with packed weights (once per session), and per input
shape an execution plan: every tensor's shape checked, tile sizes, thread counts and
the list of tensors to free after their last use. run() only calls the bound steps.

policy.py holds every tile and thread number, packing.py the weight layout; this module
binds each step kind to its kernel (BINDERS, KERNEL_BUILDERS: keyed by Step.kind)."""
import numpy as np

from .. import resources
from ..errors import InputError, UnsupportedError
from ..program import IDENTITY
from . import policy  # noqa: F401  (policy.ORIENTATION: tests and benchmarks force one)
from .packing import (block_table, pack_lanes, pack_layer, split_rows,  # noqa: F401
                      unpack_layer)
from .policy import (FOLD_LANE_GAIN, MAX_TILE_PIXELS, MIN_TILES_PER_THREAD,  # noqa: F401
                     SERIAL_FLOPS, SPLIT_BALANCE, SPLIT_TASKS_ONE_LAYER, SPLIT_TASKS_PER_THREAD,
                     STREAM_FLOPS_PER_BYTE,
                     THREAD_FLOPS,
                     TILE_BUDGET_BYTES, LANES_EFFICIENCY,
                     LANES_MIN_K,
                     MAX_LANES_LAYERS, channel_lane_use, choose_orientation,
                     tiles_lane_use, prefer_lanes_per_image, LANES_UNFOLD_MIN_K,
                     choose_split, choose_tiling, min_tiles, panel_lanes, split_makespan,
                     pixel_lane_use, threads_for, tile_pixels, tile_sizes)

_NO_OUTS = {}


class KernelSet:
    """The Cython kernel objects of one program: built once per session."""

    def __init__(self, program, kernels):
        self.kernels = kernels
        self.chains = {}  # id(step) -> the step's prepared kernel object
        for step in program.steps:
            build = KERNEL_BUILDERS.get(step.kind)
            if build is not None:
                self.chains[id(step)] = build(step, kernels)

    def ensure_lanes(self, step, mask):
        """Pack the layers of `mask` for the lanes orientation (once per layer: a
        second copy of its weights, made only where a plan runs it so)."""
        chain = self.chains[id(step)]
        k = self.kernels
        for i, layer in enumerate(step.layers[:MAX_LANES_LAYERS]):
            if (mask >> i) & 1 and not chain.has_lanes(i):
                chain.set_lanes(i, *pack_lanes(layer, k.VECTOR_LANES, k.LANES_BLOCK_ROWS))


def _chain_kernel(step, kernels):
    specs = []
    for layer in step.layers:
        packed, blocks = pack_layer(layer, kernels.MAX_BLOCK_ROWS)
        specs.append((packed, np.ascontiguousarray(layer.bias, np.float32),
                      blocks, layer.cin, layer.cout, layer.k)
                     + layer.act.kernel_args() + (int(layer.res_mode), layer.act.kernel_ops()))
    return kernels.Chain(specs)


def check_conv_input(first, src, x, last=False):
    """InputError unless shape x has the rank and channels conv layer `first` reads
    (float and int8 chains alike; last: channels-last, the channels are x[-1])."""
    rank = first.spatial_rank + 2
    if len(x) != rank:
        raise InputError(f"Conv '{first.name}': input {src!r} has shape {list(x)}; "
                         f"expected rank {rank}")
    if x[-1 if last else 1] != first.cin:
        raise InputError(f"Conv '{first.name}': input {src!r} has shape {list(x)}; "
                         f"expected {first.cin} channels (dim {rank - 1 if last else 1})")


KERNEL_BUILDERS = {"chain": _chain_kernel}  # step kinds with per-session kernel objects
# bound call function -> f(args, input shape): the DirectChain run()'s fast path calls
# for a plan that is only that call, or None (the float chain's is its BoundChain)
DIRECT_BINDERS = {}  # step call -> (args, input shape) -> the object run() calls directly


class ShapePlan:
    """Execution plan for one set of input shapes."""

    def __init__(self, program, kset, input_shapes, threads):
        self.shapes = dict(input_shapes)
        self.calls = []
        self.flops = 0
        shapes = self.shapes
        last_use = {}
        for i, step in enumerate(program.steps):
            for t in step.reads:
                last_use[t] = i
        keep = {v.name for v in program.outputs}
        nr = kset.kernels.PANEL_WIDTH
        for i, step in enumerate(program.steps):
            call = BINDERS[step.kind](self, step, kset, shapes, nr, threads)
            free = tuple(t for t in set(step.reads)
                         if last_use.get(t) == i and t not in keep
                         and t not in input_shapes)
            self.calls.append(call + (free,))
        # one fused chain from the only input to the only output: run() may call the
        # bound kernel directly once a feed of this shape has been validated
        self.direct = None
        if (len(self.calls) == 1 and len(program.inputs) == 1
                and len(program.outputs) == 1
                and self.calls[0][1][0] == program.inputs[0].name
                and self.calls[0][1][1] == program.outputs[0].name):
            fn, args = self.calls[0][:2]
            in_shape = tuple(input_shapes[program.inputs[0].name])
            if fn in DIRECT_BINDERS:
                self.direct = DIRECT_BINDERS[fn](args, in_shape)

    # ----------------------------------------------------------------------------
    def _chain(self, step, kset, shapes, nr, threads):
        x = shapes[step.input]
        first = step.layers[0]
        check_conv_input(first, step.input, x, step.in_last)
        n, h, w, ho, wo, pt, pl = step.geometry(x)
        if ho < 1 or wo < 1:
            if h * w == 0:
                ho, wo = max(ho, 0), max(wo, 0)
            else:
                raise InputError(f"Conv '{first.name}': input {list(x)} gives an empty "
                                 f"output {ho}x{wo}")
        out = step.laid_out(step.layers[-1].out_shape(n, ho, wo))
        _check_size(out, first.name, step.input, x)
        residuals = []
        flops = 0
        for layer in step.layers:
            if layer.residual is not None:
                want = step.laid_out((n, layer.cout) + (ho, wo)[2 - first.spatial_rank:])
                got = shapes[layer.residual]
                if tuple(got) != want:
                    raise UnsupportedError(
                        f"Add in '{layer.name}': residual {layer.residual!r} has shape "
                        f"{list(got)}, the conv output {list(want)}; broadcasting tensor "
                        "sums are not supported")
            residuals.append(layer.residual)
            flops += layer.flops(n, ho, wo)
        self.flops += flops
        shapes[step.output] = out
        p = ho * wo
        max_c = max(max(l.cin, l.cout) for l in step.layers)
        nthreads = threads_for(flops, threads,
                               sum(4 * l.cout * l.k for l in step.layers))
        tile, folded = choose_tiling(nr, max_c, n, p, min_tiles(nthreads),
                                     kset.kernels.REDUCTION_CHUNK)
        if folded and not (step.in_last or step.out_last):
            tile_u = tile_pixels(nr, max_c, p, min_tiles(nthreads),
                                 kset.kernels.REDUCTION_CHUNK)
            if prefer_lanes_per_image(step.layers, kset.kernels, p, tile_u):
                tile, folded = tile_u, False
        if (step.in_last or step.out_last) and not folded:
            # channels-last: the batch's pixels are rows of one matrix [n * p, c]
            tile, folded = tile_pixels(nr, max_c, n * p, min_tiles(nthreads),
                                       kset.kernels.REDUCTION_CHUNK), True
        ntiles = -(-n * p // tile) if folded else n * -(-p // tile)
        lanes = choose_orientation(step.layers, kset.kernels,
                                   min(tile, n * p if folded else p),
                                   n * p if folded else p)
        kset.ensure_lanes(step, lanes)
        nblocks = max(-(-l.cout // (kset.kernels.LANES_BLOCK_ROWS if (lanes >> i) & 1
                                    else kset.kernels.MAX_BLOCK_ROWS))
                      for i, l in enumerate(step.layers))
        # uneven few tiles: cut into channel ranges where that keeps the fusion (one
        # layer) or it is gone anyway (too few tiles: split already); see SPLIT_BALANCE
        few = (ntiles < MIN_TILES_PER_THREAD * nthreads
               and (len(step.layers) == 1
                    or ntiles < SPLIT_TASKS_PER_THREAD * nthreads))
        split = choose_split(ntiles, nthreads, nblocks,
                             tile_sizes(n, p, tile, folded) if few else None,
                             SPLIT_TASKS_ONE_LAYER if len(step.layers) == 1
                             else SPLIT_TASKS_PER_THREAD)
        bound = kset.chains[id(step)].bind(out, n, h, w, ho, wo, first.strides[0],
                                           first.strides[1], pt, pl, tile, nthreads,
                                           folded, split, step.in_last, step.out_last,
                                           lanes)
        if step.in_scale:
            from ..program.steps import scales
            s = shapes[step.in_scale]
            if not scales(s, x):
                raise InputError(f"Mul before conv '{first.name}': input {step.input!r} "
                                 f"{list(x)} and scale {step.in_scale!r} {list(s)}: the "
                                 "scale must be [N or 1, C, 1, ...]")
            return (_run_chain_scaled, (step.input, step.output, tuple(residuals), bound,
                                        step.in_scale, (n, x[1])))
        if not any(residuals):
            return (_run_chain_plain, (step.input, step.output, bound))
        return (_run_chain, (step.input, step.output, tuple(residuals), bound))

    def _affine(self, step, kset, shapes, nr, threads):
        x = shapes[step.input]
        c = x[1] if len(x) >= 2 else 1
        size = int(np.prod(x, dtype=np.int64))
        n = x[0] if len(x) >= 2 else 1
        if step.last and len(x) >= 2:  # channels-last: rows of c values, one per pixel
            c, n = x[-1], size // max(1, x[-1])
        p = size // max(1, n * c) if n * c else 0
        scale = _vector(step.scale, c, 1.0, step, x)
        shift = _vector(step.shift, c, 0.0, step, x)
        _check_size(x, step.name, step.input, x, "step")
        shapes[step.output] = x
        if size == 0:  # (the kernel walks every image x channel row, even empty ones)
            return (_run_empty, (step.output, x))
        _check_channels(step, c, x)
        args = (step.input, step.output, x, kset.kernels.affine_act,
                (scale, shift, n, c, p) + step.act.kernel_args()
                + (threads, step.act.kernel_ops()))
        return (_run_affine, args)

    def _add(self, step, kset, shapes, nr, threads):
        a, b = shapes[step.a], shapes[step.b]
        if tuple(a) != tuple(b):
            raise UnsupportedError(f"Add '{step.name}': inputs {step.a!r} {list(a)} and "
                                   f"{step.b!r} {list(b)} differ; broadcasting tensor sums"
                                   " are not supported")
        _check_size(a, step.name, step.a, a, "Add")
        shapes[step.output] = a
        size = int(np.prod(a, dtype=np.int64))
        if size == 0:
            return (_run_empty, (step.output, a))
        n = a[0] if len(a) >= 2 else 1
        c = a[1] if len(a) >= 2 else 1
        _check_channels(step, c, a)
        args = (step.a, step.b, step.output, a, kset.kernels.add_act,
                (size,) + step.act.kernel_args()
                + (threads, step.act.kernel_ops(), c, size // max(1, n * c)))
        return (_run_add, args)

    def _copy(self, step, kset, shapes, nr, threads):
        _check_size(shapes[step.input], step.name, step.input, shapes[step.input],
                    "Identity")
        shapes[step.output] = shapes[step.input]
        return (_copy, (step.input, step.output))

    def _transpose(self, step, kset, shapes, nr, threads):
        x = shapes[step.input]
        if len(x) != len(step.perm):
            raise InputError(f"Transpose '{step.name}': input {step.input!r} has shape "
                             f"{list(x)}; expected rank {len(step.perm)}")
        shapes[step.output] = tuple(x[i] for i in step.perm)
        return (_run_transpose, (step.input, step.output, step.perm))

    def _mean(self, step, kset, shapes, nr, threads):
        x = shapes[step.input]
        if len(x) < 3:
            raise InputError(f"'{step.name}': input {step.input!r} has shape {list(x)}; "
                             "expected [N, C, ...] with pixels")
        n, c = x[0], x[1]
        p = int(np.prod(x[2:], dtype=np.int64))
        shapes[step.output] = out = step.out_shape(shapes)
        return (_run_mean, (step.input, step.output, out, (n * c, p)))

    def _scale(self, step, kset, shapes, nr, threads):
        x, s = shapes[step.input], shapes[step.gate]
        from ..program.steps import scales
        if not scales(s, x):
            raise InputError(f"Mul '{step.name}': input {step.input!r} {list(x)} and "
                             f"gate {step.gate!r} {list(s)}: the gate must be "
                             "[N or 1, C, 1, ...]")
        shapes[step.output] = x
        size = int(np.prod(x, dtype=np.int64))
        if size == 0:
            return (_run_empty, (step.output, x))
        rows = x[0] * x[1]
        args = (step.input, step.gate, step.output, x, (x[0], x[1]),
                kset.kernels.affine_act,
                (np.zeros(rows, np.float32), 1, rows, size // rows)
                + IDENTITY.kernel_args() + (threads,))
        return (_run_scale, args)

    def execute(self, env, outs=None):
        """Run every step; `outs` (name -> array) receives those outputs in place."""
        outs = outs or _NO_OUTS
        for fn, args, free in self.calls:
            fn(env, outs, *args)
            for t in free:
                env.pop(t, None)
        return env


MAX_TENSOR_BYTES = None  # None: what this machine has (machine_memory); a number overrides


machine_memory = resources.machine_memory
_cgroup_memory_limit = resources.cgroup_memory_limit
_physical_memory = resources.physical_memory


def tensor_byte_limit():
    """The largest tensor a plan may allocate: the process's memory (physical memory,
    or its cgroup's limit when lower). A fixed cap let a 143-byte model ask for 64 GiB
    on a 24 GiB machine, and with overcommit that ends in the OOM killer, not an error."""
    return MAX_TENSOR_BYTES if MAX_TENSOR_BYTES is not None else machine_memory()


# step kind -> ShapePlan method binding it for one input shape: (call, args)
BINDERS = {"chain": ShapePlan._chain, "affine": ShapePlan._affine, "add": ShapePlan._add,
           "copy": ShapePlan._copy}
BINDERS.update(transpose=ShapePlan._transpose, mean=ShapePlan._mean,
               scale=ShapePlan._scale)


def _check_size(shape, name, src, src_shape, what="Conv"):
    nbytes = 4 * int(np.prod(shape, dtype=object))
    limit = tensor_byte_limit()
    if nbytes > limit:
        raise UnsupportedError(
            f"{what} '{name}': input {src!r} {list(src_shape)} gives an output "
            f"{list(shape)} of {nbytes} bytes; the limit is {limit} bytes, the memory of "
            "this machine (physical or cgroup; pyconv1x1.plan.MAX_TENSOR_BYTES overrides)")


def _check_channels(step, c, shape):
    """A per-channel epilogue parameter (PRelu slope) must match the tensor's channels."""
    why = step.act.why_not_for(c, f"the input of shape {list(shape)}")
    if why is not None:
        raise InputError(f"'{step.name}': {why}")


def _vector(v, c, default, step, shape):
    if v is None:
        return np.full(c, default, np.float32)
    if v.size == 1:
        return np.full(c, v.reshape(-1)[0], np.float32)
    if v.size != c:
        raise InputError(f"'{step.name}': input {step.input!r} has shape {list(shape)}; "
                         f"the per-channel constant has {v.size} values")
    return np.ascontiguousarray(v, np.float32)


def _run_chain_plain(env, outs, src, dst, bound):
    y = outs.get(dst)
    env[dst] = bound(env[src]) if y is None else bound.into(env[src], y)


def _direct_chain(args, in_shape):
    """The float chain's bound kernel, for run()'s direct call (see ShapePlan.direct)."""
    bound = args[2]
    bound.set_input_shape(in_shape)
    return bound


DIRECT_BINDERS[_run_chain_plain] = _direct_chain


def _run_chain(env, outs, src, dst, residuals, bound):
    res = tuple(None if r is None else env[r] for r in residuals)
    y = outs.get(dst)
    env[dst] = bound(env[src], res) if y is None else bound.into(env[src], y, res)


def _run_chain_scaled(env, outs, src, dst, residuals, bound, scale, nc):
    res = tuple(None if r is None else env[r] for r in residuals)
    s = _per_image(env[scale], nc)
    y = outs.get(dst)
    env[dst] = bound(env[src], res, s) if y is None else bound.into(env[src], y, res, s)


def _per_image(s, nc):
    """A scale [N or 1, C, 1, ...] as a C-contiguous float32 [N * C] vector."""
    return np.ascontiguousarray(np.broadcast_to(s.reshape(s.shape[0], nc[1]), nc),
                                np.float32).reshape(-1)


def _run_affine(env, outs, src, dst, shape, fn, args):
    y = outs.get(dst)
    if y is None:
        y = np.empty(shape, np.float32)
    fn(env[src], y, *args)
    env[dst] = y


def _run_add(env, outs, a, b, dst, shape, fn, args):
    y = outs.get(dst)
    if y is None:
        y = np.empty(shape, np.float32)
    fn(env[a], env[b], y, *args)
    env[dst] = y


def _run_empty(env, outs, dst, shape):
    """A step whose output has no elements: nothing to compute, whatever the batch."""
    y = outs.get(dst)
    env[dst] = np.empty(shape, np.float32) if y is None else y


def _copy(env, outs, src, dst):
    y = outs.get(dst)
    if y is None:
        env[dst] = env[src].copy()
    else:
        np.copyto(y, env[src])
        env[dst] = y



def _result(outs, dst, shape):
    y = outs.get(dst)
    return np.empty(shape, np.float32) if y is None else y


def _run_transpose(env, outs, src, dst, perm):
    """A Transpose no chain absorbed: one copy."""
    x = env[src].transpose(perm)
    y = _result(outs, dst, x.shape)
    np.copyto(y, x)
    env[dst] = y


def _run_mean(env, outs, src, dst, shape, rows):
    """Row sums in float32 by numpy's pairwise summation over each contiguous row: a
    fixed order, so the same bits whatever the session's thread count."""
    x = env[src].reshape(rows)
    y = _result(outs, dst, shape)
    if rows[1] == 0:
        y.fill(np.nan)  # (as onnxruntime: the mean of nothing)
    else:
        np.divide(x.sum(axis=1, dtype=np.float32), np.float32(rows[1]),
                  out=y.reshape(rows[0]))
    env[dst] = y


def _run_scale(env, outs, src, scale, dst, shape, nc, fn, args):
    """y[n, c, :] = x[n, c, :] * s[n, c]: the affine kernel over n * c rows (one pass)."""
    s = _per_image(env[scale], nc)
    y = _result(outs, dst, shape)
    fn(env[src], y, s, *args)
    env[dst] = y


def _register_quantized():
    """The int8 step kinds (quant.steps) bind and build their own kernels."""
    from ..quant.steps import (BINDERS as quant_binders, DIRECT_BINDERS as quant_direct,
                               KERNEL_BUILDERS as quant_builders)
    BINDERS.update(quant_binders)
    KERNEL_BUILDERS.update(quant_builders)
    DIRECT_BINDERS.update(quant_direct)


_register_quantized()
