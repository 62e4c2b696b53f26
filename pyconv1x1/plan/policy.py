"""Every tile and thread number the planner uses, in one place and one unit each:
work in FLOPs (2 per multiply-add), cache sizes in bytes, tiles in pixels. Each number
says why it is what it is (measured where it says so). Results never depend on these:
every output is summed in the same order whatever the tiling or thread count."""

# -- threads: work in FLOPs ------------------------------------------------------------
SERIAL_FLOPS = 5_000_000    # below this, waking a worker costs more than it saves: measured
                            # break-even ~5 MFLOP on a 2-core VM (0.8 MFLOP ran at 0.54x)
THREAD_FLOPS = SERIAL_FLOPS // 2  # and each thread a run uses gets at least this much work:
                            # waking a worker costs the same whatever the thread count, so
                            # 16 threads need 40 MFLOP (2 threads: SERIAL_FLOPS, as before)

# -- tiles: bytes of cache, pixels per tile -----------------------------------------------
TILE_BUDGET_BYTES = 96 * 1024  # a tile's input (one reduction chunk of it) in L2
MAX_TILE_PIXELS = 512          # a tile's pixels at most, however few its channels

# -- how work is cut: tasks and tiles per thread -----------------------------------------
SPLIT_TASKS_PER_THREAD = 2  # a chain with fewer tiles than this per thread runs layer by
                            # layer, its output channels cut into ranges to make tasks
MIN_TILES_PER_THREAD = 4    # threaded runs cut images into at least this many tiles per
                            # thread while tiles stay >= a panel (see tile_pixels)

# -- batch folding: panel lanes (pixels computed, valid or padding) ------------------------
FOLD_LANE_GAIN = 0.9  # fold the batch when that needs <= 90% of the panel lanes: folded
                      # tiles copy their input and output in runs of one image's pixels
                      # (one pixel at a time for 1x1 maps and strided inputs), not whole
                      # panel rows, so a few % of lanes saved do not pay for it


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


