"""Every tile, thread and orientation number the planner uses, in one place and one
unit each: work in FLOPs (2 per multiply-add), cache sizes in bytes, tiles in pixels.
Each number says why it is what it is (measured where it says so). Results never depend
on these: every output is summed in the same order whatever the tiling, orientation or
thread count."""
from .packing import split_rows

# -- threads: work in FLOPs ------------------------------------------------------------
SERIAL_FLOPS = 5_000_000    # below this, waking a worker costs more than it saves: measured
                            # break-even ~5 MFLOP on a 2-core VM (0.8 MFLOP ran at 0.54x)
THREAD_FLOPS = SERIAL_FLOPS // 2  # and each thread a run uses gets at least this much work:
                            # waking a worker costs the same whatever the thread count, so
                            # 16 threads need 40 MFLOP (2 threads: SERIAL_FLOPS, as before)
STREAM_FLOPS_PER_BYTE = 4   # a weight byte a run streams costs the time of ~4-5 FLOPs on
                            # one core: ~150 GF/s (v4 sgemm) over the ~29 GB/s one core
                            # streams weights at (head4096_p1_b1, 1 thread). A 1-pixel
                            # 1280 -> 1000 (2.6 MFLOP, 5 MB of weights: 0.18 ms alone)
                            # counts as 20 MFLOP and gets its second thread: 0.49x ->
                            # 1.00x onnxruntime at 2 threads. 8 vectors 512 -> 512 (4.2
                            # MFLOP, 1 MB that stays in L2) gained nothing from a second
                            # thread (38 -> 40 us), so 4, not 5 (v4 VM, session 6)

# -- tiles: bytes of cache, pixels per tile -----------------------------------------------
TILE_BUDGET_BYTES = 96 * 1024  # a tile's input (one reduction chunk of it) in L2.
                               # 32 KiB (the chunk in L1) measured +4-9% on expand_p49_b8,
                               # batch16, c3_p784_b1, c4_p196_b8 but -8% .. +6% on big256
                               # and -15% .. +3% on bottleneck in paired runs on the
                               # shared VM (v4, 1 thread): kept at 96 KiB until measured
                               # on cores of its own
MAX_TILE_PIXELS = 512          # a tile's pixels at most, however few its channels

# -- how work is cut: tasks and tiles per thread -----------------------------------------
SPLIT_TASKS_PER_THREAD = 2  # a chain with fewer tiles than this per thread runs layer by
                            # layer, its output channels cut into ranges to make tasks
SPLIT_TASKS_ONE_LAYER = 4   # and a one-layer step cut into this many per thread: smaller
                            # tasks share out better when a worker wakes late (2 threads,
                            # 2 -> 4 per thread, paired: 1 pixel 1280 -> 1000 +17%, 7x7
                            # 1024 -> 1024 +8%, 14x14 1024 -> 256 +7%, 1 pixel 4096 ->
                            # 1024 +-2%; a two-layer chain, 7x7 2048 -> 512 -> 2048, -2%)
MIN_TILES_PER_THREAD = 4    # threaded runs cut images into at least this many tiles per
                            # thread while tiles stay >= a panel (see tile_pixels)
SPLIT_BALANCE = 1.1         # fewer tiles than that whose pixels do not share out across
                            # the threads within 10% (14x14 in tiles of 64, 64, 64 and 4
                            # on 2 threads: 1.31) also cut their output channels into
                            # ranges: 1024 -> 256 at 14x14, 2 threads, went from 0.77x
                            # to 0.97x onnxruntime (v4, paired rounds, session 6).
                            # The planner asks only for one-layer steps and for chains
                            # that run split anyway: a fused chain cut into ranges runs
                            # layer by layer (unmeasured at 8-16 threads so far)

# -- batch folding: panel lanes (pixels computed, valid or padding) ------------------------
FOLD_LANE_GAIN = 0.9  # fold the batch when that needs <= 90% of the panel lanes: folded
                      # tiles copy their input and output in runs of one image's pixels
                      # (one pixel at a time for 1x1 maps and strided inputs), not whole
                      # panel rows, so a few % of lanes saved do not pay for it

# -- orientation (issue 11): which micro-kernel runs a layer ----------------------------
# Orientation of each layer: "pixels" (the panel micro-kernels, pixels in the
# vector lanes), or "lanes" (output channels in the lanes, pixels broadcast; the
# kernels' lanes_tile). "auto" picks per layer and shape (choose_orientation); "pixels"
# and "lanes" force one where the kernels allow it (benchmarks and tests).
ORIENTATION = "auto"
LANES_EFFICIENCY = 0.97  # lanes when channel-lane use x this >= the panels' pixel-lane
                        # use over the image's tiles (tiles_lane_use). Since the lanes
                        # kernels prefetch their next weights, read a chain's input image
                        # in place and transpose a whole tile at once, 14x14 (196 pixels:
                        # 3 panels and a narrow one, use 0.94) runs 5-13% faster channels-in-lanes
                        # (1024 -> 256, 1 thread, paired), while full panels (use 1.0:
                        # 1024 -> 1024 at 28x28) stay 7% faster on pixels.
                        # Measured before those changes, with 0.9 (v4, 1 thread, one layer C -> C, both
                        # orientations paired; best-of-21 GF/s pixels / lanes, C = 1024 |
                        # 256): 1 vector 13 / 14 | 14 / 25; 8 vectors 48 / 66 | 41 / 63;
                        # 16 vectors 90 / 86 | 65 / 70; 32 vectors 95 / 98 | 73 / 70; 5x5
                        # 103 / 109 | 90 / 103; 7x7 108 / 117 | 109 / 117; 8x8 99 / 118 |
                        # 159 / 137; 10x10 107 / 104 | 131 / 144; 14x14 43 / 43 | 154 / 144.
                        # Break-even: a tile that fills its panel kernels (use 1.0: 8x8,
                        # 32 vectors, 14x14's 0.94) runs as fast or faster on pixel panels;
                        # at use <= 0.78 (7x7: 49 of 64 lanes, 10x10, 5x5, 1-8 vectors)
                        # channels in the lanes win by 5-80%
LANES_MIN_K = 16        # shorter reductions: the lanes store (a transposition per output)
                        # costs more than the lanes it saves
# (No weight-size limit for few pixels any more: with the lanes kernels prefetching the
# next chunk of weights, 1 pixel, 4096 -> 1024 (16 MiB streamed) and 1280 -> 1000 run
# 9-10% faster channels-in-lanes than on the matrix-vector kernels: paired medians of
# 25 rounds, v4, 1 thread.)
MAX_LANES_LAYERS = 64   # the kernels' orientation mask has 64 bits
LANES_UNFOLD_MIN_K = 256  # a batch of images of half a panel to one whose layers would all run
                        # channels-in-lanes on per-image tiles, with reductions this long,
                        # is not folded (prefer_lanes_per_image). Measured (v4, 1 thread,
                        # paired): 8 x 320 x 7x7 -> 1280 6-21% faster per image in lanes
                        # than folded on pixel panels; 32 x 128 x 7x7 -> 256 -> 128 (k
                        # 128) 12% slower, so it stays folded; 8 x 256 x 14x14 (over a
                        # panel per image) 22% slower, so only images of half a panel
                        # up to one unfold


def tile_pixels(nr, max_channels, pixels, min_tiles=8, chunk=None):
    """Pixels per tile: a multiple of nr that keeps the tile's input, up to one
    reduction chunk of channels (the kernels' REDUCTION_CHUNK), in L2, and cuts an image
    into balanced tiles (at least ~min_tiles when it is big enough, so threads share
    it; see min_tiles). Results never depend on the tile: every output is summed in
    the same order whatever the tiling."""
    hot = max(1, max_channels if chunk is None else min(max_channels, chunk))
    budget = TILE_BUDGET_BYTES // (4 * hot)
    t_cache = max(nr, min(MAX_TILE_PIXELS, budget // nr * nr))
    t_split = -(-max(1, -(-pixels // min_tiles)) // nr) * nr
    t = max(nr, min(t_cache, t_split))
    tiles = max(1, -(-pixels // t))
    return max(nr, -(-(-(-pixels // tiles)) // nr) * nr)


def panel_lanes(nr, pixels, tile):
    """Panel lanes (pixels computed, valid or not) of `pixels` cut into tiles of `tile`."""
    full, rest = divmod(pixels, tile)
    return full * tile + -(-rest // nr) * nr


def threads_for(flops, threads, weight_bytes=0):
    """Threads a run of `flops` that reads `weight_bytes` of weights gets out of
    `threads`: its work is the larger of its FLOPs and STREAM_FLOPS_PER_BYTE per weight
    byte (few pixels: the weights' streaming is the run's time); one thread below
    SERIAL_FLOPS of work, and never so many that a thread has less than THREAD_FLOPS."""
    work = max(flops, STREAM_FLOPS_PER_BYTE * weight_bytes)
    if work < SERIAL_FLOPS:
        return 1
    return max(1, min(threads, work // THREAD_FLOPS))


def min_tiles(nthreads):
    """Tiles an image is cut into at least (when it has panels enough): one thread wants
    the largest tiles that stay in cache (each tile streams every weight once)."""
    return 1 if nthreads <= 1 else MIN_TILES_PER_THREAD * nthreads


def split_makespan(sizes, split, nthreads):
    """The busiest thread's pixels over the mean when tiles of these pixel counts, each
    cut into `split` equal tasks in order, go to whichever thread is free first (the
    pool's threads take the next task as they finish one)."""
    loads = [0.0] * nthreads
    for size in sizes:
        for _ in range(split):
            i = loads.index(min(loads))
            loads[i] += size / split
    total = sum(loads)
    return max(loads) * nthreads / total if total else 1.0


def choose_split(ntiles, nthreads, nblocks, sizes=None, per_thread=SPLIT_TASKS_PER_THREAD):
    """Output-channel ranges per tile and layer: 1 (each tile through the fused chain)
    unless the tiles are too few to make per_thread tasks per thread, or (sizes: the
    tiles' pixel counts, when given) they are fewer than MIN_TILES_PER_THREAD per thread
    and do not share out within SPLIT_BALANCE; at most the widest layer's weight
    blocks."""
    want = per_thread * nthreads
    if nthreads <= 1 or ntiles <= 0:
        return 1
    split = 1 if ntiles >= want else max(1, min(nblocks, -(-want // ntiles)))
    if sizes is not None and ntiles < MIN_TILES_PER_THREAD * nthreads:
        while (split < nblocks
               and split_makespan(sizes, split, nthreads) > SPLIT_BALANCE):
            split += 1
    return split


def tile_sizes(n, pixels, tile, folded):
    """Valid pixels of each tile of a run (choose_tiling's tiles), in task order."""
    if folded:
        total = n * pixels
        return [min(tile, total - q) for q in range(0, total, tile)]
    return [min(tile, pixels - q) for q in range(0, pixels, tile)] * n


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


def tiles_lane_use(nr, lanes, mr, pixels, tile, gemv_cols):
    """pixel_lane_use over every tile of `pixels` cut into tiles of `tile`: the useful
    fraction of all the lanes the pixel orientation computes (196 pixels in tiles of 128:
    128 + 64 + a narrow kernel for the last 4)."""
    if pixels <= 0 or tile <= 0:  # an empty image (or batch)
        return 1.0
    full, rest = divmod(pixels, tile)
    computed = full * tile / pixel_lane_use(nr, lanes, mr, tile, gemv_cols)
    if rest:
        computed += rest / pixel_lane_use(nr, lanes, mr, rest, gemv_cols)
    return pixels / computed


def channel_lane_use(cout, group, lanes, block_rows):
    """Useful fraction of the channel lanes of a layer's lanes blocks (per group)."""
    rows = split_rows(cout // group, block_rows)
    return sum(rows) / sum(-(-r // lanes) * lanes for r in rows) if rows else 0.0


def choose_orientation(layers, kernels, valid, pixels=None):
    """The kernels' orientation mask for a chain whose tiles hold `valid` pixels (and
    `pixels`, when given, the pixels those tiles cut: their last tile may hold fewer):
    bit i set where layer i runs channels-in-lanes. Results are the same bits either
    way."""
    if ORIENTATION == "pixels":
        return 0
    lanes = kernels.VECTOR_LANES
    if pixels is None:
        use_pix = pixel_lane_use(kernels.PANEL_WIDTH, lanes, kernels.MAX_BLOCK_ROWS,
                                 valid, kernels.GEMV_COLUMNS)
    else:
        use_pix = tiles_lane_use(kernels.PANEL_WIDTH, lanes, kernels.MAX_BLOCK_ROWS,
                                 pixels, valid, kernels.GEMV_COLUMNS)
    mask = 0
    for i, layer in enumerate(layers[:MAX_LANES_LAYERS]):
        if layer.k < 1:
            continue
        if ORIENTATION == "lanes" or (
                layer.k >= LANES_MIN_K
                and LANES_EFFICIENCY * channel_lane_use(
                    layer.cout, layer.group, lanes, kernels.LANES_BLOCK_ROWS) >= use_pix):
            mask |= 1 << i
    return mask


def prefer_lanes_per_image(layers, kernels, pixels, tile):
    """Whether a batch that choose_tiling folds should run per-image tiles of `tile`
    instead: images of half a panel or more but less than one (7x7 on AVX-512) whose
    layers all run channels-in-lanes on them (choose_orientation) with reductions of at least LANES_UNFOLD_MIN_K, where the
    channel lanes are full whatever the pixel count and folding only adds copies."""
    if (ORIENTATION == "pixels"
            or not kernels.PANEL_WIDTH // 2 <= pixels < kernels.PANEL_WIDTH
            or not 0 < len(layers) <= MAX_LANES_LAYERS
            or any(layer.k < LANES_UNFOLD_MIN_K for layer in layers)):
        return False
    mask = choose_orientation(layers, kernels, min(tile, pixels), pixels)
    return mask == (1 << len(layers)) - 1
