"""Plan stage: Program -> kernels with packed weights (once per session), and per input
shape an execution plan: every tensor's shape checked, tile sizes, thread counts and
the list of tensors to free after their last use. run() only calls the bound steps."""
import numpy as np

from .errors import InputError, UnsupportedError
from .program import AddStep, AffineStep, ChainStep, CopyStep

TILE_BUDGET_BYTES = 96 * 1024  # a tile's input (one reduction chunk of it) in L2
SERIAL_FLOPS = 5_000_000    # below this, waking a worker costs more than it saves: measured
                            # break-even ~5 MFLOP on a 2-core VM (0.8 MFLOP ran at 0.54x)
THREAD_FLOPS = SERIAL_FLOPS // 2  # and each thread a run uses gets at least this much work:
                            # waking a worker costs the same whatever the thread count, so
                            # 16 threads need 40 MFLOP (2 threads: SERIAL_FLOPS, as before)
_NO_OUTS = {}


def split_rows(count, mr):
    """Balanced blocks of at most mr rows: 16 -> 6, 5, 5 (not 6, 6, 4)."""
    if count <= 0:
        return []
    nb = -(-count // mr)
    base, extra = divmod(count, nb)
    return [base + 1] * extra + [base] * (nb - extra)


def block_table(cout, k, group, mr):
    """The packed-block table of a [cout, k] weight in `group` groups: rows of (rows,
    first output channel, first input channel, offset into the packed weights)."""
    blocks, offset, cout_g = [], 0, cout // group
    for g in range(group):
        row = g * cout_g
        for rows in split_rows(cout_g, mr):
            blocks.append((rows, row, g * k, offset))
            offset += rows * k
            row += rows
    return np.array(blocks, dtype=np.intp).reshape(-1, 4)


def pack_layer(layer, mr):
    """Pack a layer's weight [cout, k] as blocks [k][rows <= mr] per group; returns
    (packed float32, blocks intp [nblocks, 4] = rows, cout0, cin0, offset). A layer
    loaded from a plan file already packed for this mr is used as it is."""
    if layer.packed is not None and layer.packed[0] == mr:
        return layer.packed[1], layer.packed[2]
    weight = layer.weight if layer.weight is not None else unpack_layer(layer)
    cout, k = weight.shape
    blocks = block_table(cout, k, layer.group, mr)
    # split_rows makes (per group) `extra` blocks of base + 1 rows, then blocks of base
    # rows: each run of equal blocks is one reshape + transpose, not one slice per block
    group = layer.group
    cout_g = cout // group
    sizes = split_rows(cout_g, mr)
    if not sizes:
        return np.zeros(0, np.float32), blocks
    w = np.asarray(weight, np.float32).reshape(group, cout_g, k)
    # written in place into one buffer: peak memory is the weight plus its packed copy
    packed = np.empty((group, cout_g * k), np.float32)
    row = 0
    for rows in dict.fromkeys(sizes):
        count = sizes.count(rows)
        part = w[:, row:row + count * rows].reshape(group, count, rows, k)
        dest = packed[:, row * k:(row + count * rows) * k].reshape(group, count, k, rows)
        np.copyto(dest, part.transpose(0, 1, 3, 2))
        row += count * rows
    return packed.reshape(-1), blocks


def pack_lanes(layer, lanes, block_rows):
    """The channel-lane packing of a layer (the kernels' lanes orientation): blocks of
    up to block_rows output channels per group (balanced, split_rows), each stored
    [k][width] with width = rows rounded up to a multiple of `lanes` and the padding
    lanes 0, plus a zero-padded bias of width floats per block. Returns (packed float32,
    bias float32, blocks intp [nblocks, 5] = rows, cout0, cin0, weight offset, bias
    offset)."""
    weight = layer.weight if layer.weight is not None else unpack_layer(layer)
    cout, k = weight.shape
    table = block_table(cout, k, layer.group, block_rows)
    widths = -(-table[:, 0] // lanes) * lanes
    boffs = np.concatenate(([0], np.cumsum(widths)[:-1])).astype(np.intp)
    woffs = boffs * k
    packed = np.zeros(int(widths.sum()) * k, np.float32)
    bias = np.zeros(int(widths.sum()), np.float32)
    w = np.asarray(weight, np.float32)
    src_bias = np.asarray(layer.bias, np.float32).reshape(-1)
    for (rows, cout0, _, _), width, woff, boff in zip(table.tolist(), widths.tolist(),
                                                      woffs.tolist(), boffs.tolist()):
        dest = packed[woff:woff + width * k].reshape(k, width)
        dest[:, :rows] = w[cout0:cout0 + rows].T
        bias[boff:boff + rows] = src_bias[cout0:cout0 + rows]
    blocks = np.column_stack([table[:, :3], woffs, boffs]).astype(np.intp)
    return packed, bias, np.ascontiguousarray(blocks.reshape(-1, 5))


def unpack_layer(layer):
    """The [cout, k] weight back from a packed layer."""
    _, packed, blocks = layer.packed
    cout, k = layer.wshape
    weight = np.zeros((cout, k), np.float32)
    for rows, cout0, _, offset in blocks.tolist():
        weight[cout0:cout0 + rows] = packed[offset:offset + rows * k].reshape(k, rows).T
    return weight


def tile_pixels(nr, max_channels, pixels, min_tiles=8, chunk=None):
    """Pixels per tile: a multiple of nr that keeps the tile's input, up to one
    reduction chunk of channels (the kernels' REDUCTION_CHUNK), in L2, and cuts an image
    into balanced tiles (at least ~min_tiles when it is big enough, so threads share
    it; see min_tiles). Results never depend on the tile: every output is summed in
    the same order whatever the tiling."""
    hot = max(1, max_channels if chunk is None else min(max_channels, chunk))
    budget = TILE_BUDGET_BYTES // (4 * hot)
    t_cache = max(nr, min(512, budget // nr * nr))
    t_split = -(-max(1, -(-pixels // min_tiles)) // nr) * nr
    t = max(nr, min(t_cache, t_split))
    tiles = max(1, -(-pixels // t))
    return max(nr, -(-(-(-pixels // tiles)) // nr) * nr)


FOLD_LANE_GAIN = 0.9  # fold the batch when that needs <= 90% of the panel lanes: folded
                      # tiles copy their input and output in runs of one image's pixels
                      # (one pixel at a time for 1x1 maps and strided inputs), not whole
                      # panel rows, so a few % of lanes saved do not pay for it


def panel_lanes(nr, pixels, tile):
    """Panel lanes (pixels computed, valid or not) of `pixels` cut into tiles of `tile`."""
    full, rest = divmod(pixels, tile)
    return full * tile + -(-rest // nr) * nr


SPLIT_TASKS_PER_THREAD = 2  # a chain with fewer tiles than this per thread runs layer by
                            # layer, its output channels cut into ranges to make tasks
MIN_TILES_PER_THREAD = 4    # threaded runs cut images into at least this many tiles per
                            # thread while tiles stay >= a panel (see tile_pixels)


def threads_for(flops, threads):
    """Threads a run of `flops` gets out of `threads`: one below SERIAL_FLOPS, and never
    so many that a thread has less than THREAD_FLOPS of work."""
    if flops < SERIAL_FLOPS:
        return 1
    return max(1, min(threads, flops // THREAD_FLOPS))


def min_tiles(nthreads):
    """Tiles an image is cut into at least (when it has panels enough): one thread wants
    the largest tiles that stay in cache (each tile streams every weight once)."""
    return 1 if nthreads <= 1 else MIN_TILES_PER_THREAD * nthreads


def choose_split(ntiles, nthreads, nblocks):
    """Output-channel ranges per tile and layer: 1 (each tile through the fused chain)
    unless the tiles are too few to keep nthreads busy; at most the widest layer's
    weight blocks."""
    want = SPLIT_TASKS_PER_THREAD * nthreads
    if nthreads <= 1 or ntiles <= 0 or ntiles >= want:
        return 1
    return max(1, min(nblocks, -(-want // ntiles)))


def choose_tiling(nr, max_channels, n, pixels, min_tiles, chunk=None):
    """(tile, folded): tiles over each image's pixels, or (folded) over the batch's
    n * pixels with images back to back, when images are small enough that folding
    fills clearly more of the panels (1x1 maps, 7x7, ... with a batch)."""
    tile = tile_pixels(nr, max_channels, pixels, min_tiles, chunk)
    if n > 1 and pixels > 0:
        tile_f = tile_pixels(nr, max_channels, n * pixels, min_tiles, chunk)
        if (panel_lanes(nr, n * pixels, tile_f)
                <= FOLD_LANE_GAIN * n * panel_lanes(nr, pixels, tile)):
            return tile_f, True
    return tile, False


# Orientation of each layer (issue 11): "pixels" (the panel micro-kernels, pixels in the
# vector lanes), or "lanes" (output channels in the lanes, pixels broadcast; the
# kernels' lanes_tile). "auto" picks per layer and shape (choose_orientation); "pixels"
# and "lanes" force one where the kernels allow it (benchmarks and tests).
ORIENTATION = "auto"
LANES_EFFICIENCY = 0.8  # the lanes kernels' speed per useful lane relative to the panel
                        # kernels' (measured, v4, 1 thread: 0.65-0.85 over 1x1 maps, 7x7
                        # and 14x14 with 256-1024 channels): lanes when their channel-lane
                        # use x this >= the panels' pixel-lane use. 7x7 (49 of 64 lanes,
                        # 0.77) and 8-vector batches (8 of 16, 0.5) run lanes; 14x14 (196
                        # of 208, 0.94) and 32-vector batches stay on pixel panels
LANES_MIN_K = 16        # shorter reductions: the lanes store (a transposition per output)
                        # costs more than the lanes it saves
MAX_LANES_LAYERS = 64   # the kernels' orientation mask has 64 bits


def pixel_lane_use(nr, lanes, mr, valid, gemv_cols):
    """Useful fraction of the lanes the pixel orientation computes on a tile of `valid`
    pixels: panels of nr, a last panel on the narrowest kernel that covers it (nr, nr/2
    and nr/4 where a panel is 4 vectors), or for valid <= gemv_cols the matrix-vector
    kernels (a block of <= mr rows per vector of `lanes`)."""
    if valid <= 0:
        return 1.0
    if valid <= gemv_cols:
        return min(1.0, mr / lanes)
    full, rest = divmod(valid, nr)
    last = 0
    if rest:
        nv = nr // lanes
        widths = [nr // 4, nr // 2] if nv == 4 else ([nr // 2] if nv % 2 == 0 else [])
        last = next((w for w in widths if rest <= w), nr)
    return valid / (full * nr + last)


def channel_lane_use(cout, group, lanes, block_rows):
    """Useful fraction of the channel lanes of a layer's lanes blocks (per group)."""
    rows = split_rows(cout // group, block_rows)
    return sum(rows) / sum(-(-r // lanes) * lanes for r in rows) if rows else 0.0


def choose_orientation(layers, kernels, valid):
    """The kernels' orientation mask for a chain whose tiles hold `valid` pixels: bit i
    set where layer i runs channels-in-lanes. Results are the same bits either way."""
    if ORIENTATION == "pixels":
        return 0
    lanes = kernels.VECTOR_LANES
    use_pix = pixel_lane_use(kernels.PANEL_WIDTH, lanes, kernels.MAX_BLOCK_ROWS, valid,
                             kernels.GEMV_COLUMNS)
    mask = 0
    for i, layer in enumerate(layers[:MAX_LANES_LAYERS]):
        if layer.k < 1:
            continue
        if ORIENTATION == "lanes" or (
                layer.k >= LANES_MIN_K and LANES_EFFICIENCY * channel_lane_use(
                    layer.cout, layer.group, lanes, kernels.LANES_BLOCK_ROWS) >= use_pix):
            mask |= 1 << i
    return mask


class KernelSet:
    """The Cython kernel objects of one program: built once per session."""

    def __init__(self, program, kernels):
        self.kernels = kernels
        self.chains = {}
        for step in program.steps:
            if isinstance(step, ChainStep):
                specs = []
                for layer in step.layers:
                    packed, blocks = pack_layer(layer, kernels.MAX_BLOCK_ROWS)
                    specs.append((packed, np.ascontiguousarray(layer.bias, np.float32),
                                  blocks, layer.cin, layer.cout, layer.k,
                                  float(layer.act.lo), float(layer.act.hi),
                                  float(layer.act.alpha), int(layer.res_mode)))
                self.chains[id(step)] = kernels.Chain(specs)

    def ensure_lanes(self, step, mask):
        """Pack the layers of `mask` for the lanes orientation (once per layer: a
        second copy of its weights, made only where a plan runs it so)."""
        chain = self.chains[id(step)]
        k = self.kernels
        for i, layer in enumerate(step.layers[:MAX_LANES_LAYERS]):
            if (mask >> i) & 1 and not chain.has_lanes(i):
                chain.set_lanes(i, *pack_lanes(layer, k.VECTOR_LANES, k.LANES_BLOCK_ROWS))


def _dims_hw(shape, spatial_rank):
    if spatial_rank == 1:
        return 1, shape[2]
    return shape[2], shape[3]


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
            if isinstance(step, ChainStep):
                call = self._chain(step, kset, shapes, nr, threads)
            elif isinstance(step, AffineStep):
                call = self._affine(step, kset, shapes, threads)
            elif isinstance(step, AddStep):
                call = self._add(step, kset, shapes, threads)
            elif isinstance(step, CopyStep):
                _check_size(shapes[step.input], step.name, step.input, shapes[step.input],
                            "Identity")
                shapes[step.output] = shapes[step.input]
                call = (_copy, (step.input, step.output))
            else:  # pragma: no cover
                raise TypeError(step)
            free = tuple(t for t in set(step.reads)
                         if last_use.get(t) == i and t not in keep
                         and t not in input_shapes)
            self.calls.append(call + (free,))
        # one fused chain from the only input to the only output: run() may call the
        # bound kernel directly once a feed of this shape has been validated
        self.direct = None
        if (len(self.calls) == 1 and self.calls[0][0] is _run_chain_plain
                and len(program.inputs) == 1 and len(program.outputs) == 1
                and self.calls[0][1][0] == program.inputs[0].name
                and self.calls[0][1][1] == program.outputs[0].name):
            self.direct = self.calls[0][1][2]
            self.direct.set_input_shape(tuple(input_shapes[program.inputs[0].name]))

    # ----------------------------------------------------------------------------
    def _chain(self, step, kset, shapes, nr, threads):
        x = shapes[step.input]
        first = step.layers[0]
        rank = first.spatial_rank + 2
        if len(x) != rank:
            raise InputError(f"Conv '{first.name}': input {step.input!r} has shape "
                             f"{list(x)}; expected rank {rank}")
        if x[1] != first.cin:
            raise InputError(f"Conv '{first.name}': input {step.input!r} has shape "
                             f"{list(x)}; expected {first.cin} channels (dim 1)")
        n = x[0]
        h, w = _dims_hw(x, first.spatial_rank)
        ho, wo, pt, pl = first.out_hw(h, w)
        if ho < 1 or wo < 1:
            if h * w == 0:
                ho, wo = max(ho, 0), max(wo, 0)
            else:
                raise InputError(f"Conv '{first.name}': input {list(x)} gives an empty "
                                 f"output {ho}x{wo}")
        out = (n, step.layers[-1].cout) + ((ho, wo) if first.spatial_rank == 2 else (wo,))
        _check_size(out, first.name, step.input, x)
        residuals = []
        flops = 0
        for layer in step.layers:
            if layer.residual is not None:
                want = (n, layer.cout) + out[2:]
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
        nthreads = threads_for(flops, threads)
        tile, folded = choose_tiling(nr, max_c, n, p, min_tiles(nthreads),
                                     kset.kernels.REDUCTION_CHUNK)
        ntiles = -(-n * p // tile) if folded else n * -(-p // tile)
        lanes = choose_orientation(step.layers, kset.kernels,
                                   min(tile, n * p if folded else p))
        kset.ensure_lanes(step, lanes)
        nblocks = max(-(-l.cout // (kset.kernels.LANES_BLOCK_ROWS if (lanes >> i) & 1
                                    else kset.kernels.MAX_BLOCK_ROWS))
                      for i, l in enumerate(step.layers))
        split = choose_split(ntiles, nthreads, nblocks)
        bound = kset.chains[id(step)].bind(out, n, h, w, ho, wo, first.strides[0],
                                           first.strides[1], pt, pl, tile, nthreads,
                                           folded, split, lanes)
        if not any(residuals):
            return (_run_chain_plain, (step.input, step.output, bound))
        return (_run_chain, (step.input, step.output, tuple(residuals), bound))

    def _affine(self, step, kset, shapes, threads):
        x = shapes[step.input]
        c = x[1] if len(x) >= 2 else 1
        size = int(np.prod(x, dtype=np.int64))
        n = x[0] if len(x) >= 2 else 1
        p = size // max(1, n * c) if n * c else 0
        scale = _vector(step.scale, c, 1.0, step, x)
        shift = _vector(step.shift, c, 0.0, step, x)
        _check_size(x, step.name, step.input, x, "step")
        shapes[step.output] = x
        if size == 0:  # (the kernel walks every image x channel row, even empty ones)
            return (_run_empty, (step.output, x))
        a = step.act
        args = (step.input, step.output, x, kset.kernels.affine_act,
                (scale, shift, n, c, p, float(a.lo), float(a.hi), float(a.alpha), threads))
        return (_run_affine, args)

    def _add(self, step, kset, shapes, threads):
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
        act = step.act
        args = (step.a, step.b, step.output, a, kset.kernels.add_act,
                (size, float(act.lo), float(act.hi), float(act.alpha), threads))
        return (_run_add, args)

    def execute(self, env, outs=None):
        """Run every step; `outs` (name -> array) receives those outputs in place."""
        outs = outs or _NO_OUTS
        for fn, args, free in self.calls:
            fn(env, outs, *args)
            for t in free:
                env.pop(t, None)
        return env


MAX_TENSOR_BYTES = None  # None: what this machine has (machine_memory); a number overrides


def tensor_byte_limit():
    """The largest tensor a plan may allocate: the process's memory (physical memory,
    or its cgroup's limit when lower). A fixed cap let a 143-byte model ask for 64 GiB
    on a 24 GiB machine, and with overcommit that ends in the OOM killer, not an error."""
    return MAX_TENSOR_BYTES if MAX_TENSOR_BYTES is not None else machine_memory()


_MACHINE_MEMORY = []


def machine_memory():
    if not _MACHINE_MEMORY:
        limits = [_cgroup_memory_limit(), _physical_memory()]
        known = [n for n in limits if n]
        _MACHINE_MEMORY.append(min(known) if known else 1 << 36)
    return _MACHINE_MEMORY[0]


def _physical_memory():
    import os
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # not a POSIX system
        return None


def _cgroup_memory_limit():
    """memory.max (cgroup v2) or memory.limit_in_bytes (v1) of this process's cgroup,
    or None when unlimited or unknown."""
    try:
        with open("/proc/self/cgroup") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    limits = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        path = path.rstrip("/")
        if controllers == "":
            names = [f"/sys/fs/cgroup{path}/memory.max", "/sys/fs/cgroup/memory.max"]
        elif "memory" in controllers.split(","):
            names = [f"/sys/fs/cgroup/memory{path}/memory.limit_in_bytes",
                     "/sys/fs/cgroup/memory/memory.limit_in_bytes"]
        else:
            continue
        for name in names:  # (inside a container the cgroup's own folder is the root)
            try:
                with open(name) as f:
                    text = f.read().strip()
            except OSError:
                continue
            if text.isdigit():
                limits.append(int(text))
            break
    return min(limits) if limits else None


def _check_size(shape, name, src, src_shape, what="Conv"):
    nbytes = 4 * int(np.prod(shape, dtype=object))
    limit = tensor_byte_limit()
    if nbytes > limit:
        raise UnsupportedError(
            f"{what} '{name}': input {src!r} {list(src_shape)} gives an output "
            f"{list(shape)} of {nbytes} bytes; the limit is {limit} bytes, the memory of "
            "this machine (physical or cgroup; pyconv1x1.plan.MAX_TENSOR_BYTES overrides)")


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


def _run_chain(env, outs, src, dst, residuals, bound):
    res = tuple(None if r is None else env[r] for r in residuals)
    y = outs.get(dst)
    env[dst] = bound(env[src], res) if y is None else bound.into(env[src], y, res)


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

