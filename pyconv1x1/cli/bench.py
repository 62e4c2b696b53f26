"""Time session.run after a warm-up: p50, p90, p99, min, mean, GF/s and the process's
peak memory (RSS); optionally beside onnxruntime with the same thread count, runs
interleaved in blocks (pyconv1x1._timing). A progress bar on stderr when it is a
terminal."""
import os
import sys
import time

from ..errors import one_line
from .common import (EXIT_OK, CliError, add_command, add_input_args, add_threads_arg,
                     fmt_count, non_negative_int, open_session, positive_float,
                     positive_int, print_header, print_table, shape_text)
from .data import Progress, feeds_for, print_defaulted


def add_parser(sub):
    p = add_command(sub, "bench", "time session.run after a warm-up", __doc__)
    add_input_args(p)
    add_threads_arg(p)
    p.add_argument("--warmup", type=non_negative_int, default=3, metavar="K",
                   help="untimed runs first (default 3)")
    how = p.add_mutually_exclusive_group()
    how.add_argument("--repeat", type=positive_int, default=None, metavar="R",
                     help="timed runs per engine")
    how.add_argument("--seconds", type=positive_float, default=1.0, metavar="S",
                     help="measure for about S seconds per engine (default 1)")
    p.add_argument("--compare", choices=["onnxruntime"], default=None,
                   help="also time onnxruntime with the same intra_op_num_threads")
    p.add_argument("--json", metavar="FILE", default=None,
                   help="write the statistics and every timing to FILE (JSON)")
    p.add_argument("--plot", metavar="FILE.png", default=None,
                   help="plot the median per run with p10-p90 error bars and the target "
                        "line (needs matplotlib: pip install 'pyconv1x1[plot]')")
    p.add_argument("--target-ms", type=positive_float, default=None, metavar="MS",
                   help="the target line of --plot (default: onnxruntime's median with "
                        "--compare onnxruntime, else none)")
    return p


def _peak_rss():
    """The process's peak resident memory in bytes, or None where unknown."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # macOS: bytes; Linux: KiB


def _check_plot_available():
    try:
        import matplotlib  # noqa: F401
    except ImportError as exc:
        raise CliError(f"--plot needs matplotlib, which cannot be imported ({exc}): "
                       "pip install 'pyconv1x1[plot]'") from None


def _plot(path, model, stats, target_ms, target_label):
    """Median per call of each engine, with error bars from p10 to p90, and the target
    line. Returns the legend's labels."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = list(stats)
    p50 = [stats[n]["p50_ms"] for n in names]
    lower = [stats[n]["p50_ms"] - stats[n]["p10_ms"] for n in names]
    upper = [stats[n]["p90_ms"] - stats[n]["p50_ms"] for n in names]
    fig, ax = plt.subplots(figsize=(6, 4))
    bars = ax.bar(names, p50, yerr=[lower, upper], capsize=8, color="#4c72b0",
                  ecolor="black", label="median per call (error bars: p10 to p90)")
    for bar, name in zip(bars, names):
        ax.annotate(f"{stats[name]['p50_ms']:.4g} ms", (bar.get_x() + bar.get_width() / 2,
                    bar.get_height()), ha="center", va="bottom", fontsize=8,
                    xytext=(0, 2), textcoords="offset points")
    if target_ms is not None:
        ax.axhline(target_ms, color="#c44e52", linestyle="--",
                   label=f"target: {target_label} ({target_ms:.4g} ms)")
    ax.set_ylabel("time per run (ms)")
    ax.set_title(f"{os.path.basename(model)}: time per run", fontsize=10)
    ax.set_ylim(bottom=0)
    legend = ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    try:
        fig.savefig(path, dpi=120)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot write the plot {path!r}: {one_line(exc)}") from None
    finally:
        plt.close(fig)
    return [t.get_text() for t in legend.get_texts()]


def _write_json(path, data):
    import json
    try:
        with open(path, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
    except OSError as exc:
        raise CliError(f"cannot write {path!r}: {exc.strerror or exc}") from None


def _engines(args, session, feeds):
    """[(name, zero-argument callable)]: pyconv1x1, and onnxruntime with --compare."""
    engines = [("pyconv1x1", lambda: session.run(None, feeds))]
    if args.compare == "onnxruntime":
        from ..testing.reference import ort_session
        ort_sess = ort_session(args.model, session.threads, "--compare onnxruntime")

        def run_ort():
            ort_sess.run(None, feeds)
        try:
            run_ort()
        except Exception as exc:
            raise CliError(f"onnxruntime cannot run {args.model!r}: "
                           f"{one_line(exc)}") from None
        engines.append(("onnxruntime", run_ort))
    return engines


def cmd_bench(args):
    from .._timing import Rounds, timed
    if args.plot:
        _check_plot_available()  # before minutes of timing, not after
    rss_start = _peak_rss()
    session = open_session(args.model, args.threads)
    feeds, origin = feeds_for(args, session)
    session.run(None, feeds)  # checks the feed before anything is timed
    flops = session.flops({k: v.shape for k, v in feeds.items()})
    engines = _engines(args, session, feeds)
    warm = {}
    for name, fn in engines:
        times = []
        timed(fn, max(1, args.warmup), times)
        warm[name] = min(times)
    # interleave: alternate blocks of about 50 ms so drift and noise hit both engines,
    # each started once the other engine's threads have gone idle
    slowest = max(warm.values())
    block = int(min(20, max(1, 0.05 / max(slowest, 1e-9))))
    if args.repeat is not None:
        block = min(block, max(1, args.repeat // 4))
    rounds = Rounds(engines, settle_s=0.2 if len(engines) > 1 else None)
    # progress: by runs with --repeat, else by tenths of a second of the planned time
    if args.repeat is not None:
        progress = Progress(args.repeat * len(engines), "bench runs")
    else:
        progress = Progress(int(args.seconds * len(engines) * 10), "bench (0.1 s)")
    try:
        _bench_loop(rounds, block, args, progress)
    finally:
        progress.close()
    _bench_report(args, session, feeds, origin, flops, block, rounds, rss_start)
    return EXIT_OK


def _bench_loop(rounds, block, args, progress):
    """Rounds of one block per engine until each has --repeat runs, or until about
    --seconds per engine have passed (and each has 3 runs)."""
    start = time.perf_counter()
    times = rounds.times
    while True:
        if args.repeat is not None:
            rounds.round({name: min(block, args.repeat - len(t))
                          for name, t in times.items()})
            progress.update(sum(len(t) for t in times.values()))
            if all(len(t) >= args.repeat for t in times.values()):
                break
        else:
            rounds.round({name: block for name in times})
            elapsed = time.perf_counter() - start
            progress.update(min(progress.total, int(elapsed * 10)))
            if (elapsed >= args.seconds * len(times)
                    and all(len(t) >= 3 for t in times.values())):
                break


def _bench_report(args, session, feeds, origin, flops, block, rounds, rss_start):
    from .._timing import percentiles_ms
    print_header(args, session)
    shapes = ", ".join(f"{k}={shape_text(v.shape)}" for k, v in feeds.items())
    print(f"input: {shapes} ({origin}); {fmt_count(flops)} FLOPs per run; "
          f"warm-up {args.warmup}, interleaved blocks of {block}")
    print_defaulted(args)
    rows = [("engine", "runs", "p50 ms", "p90 ms", "p99 ms", "min ms", "mean ms", "GF/s")]
    stats = {}
    for name, t in rounds.times.items():
        pct = percentiles_ms(t)
        p50 = pct["p50_ms"]
        rate = flops / p50 / 1e6 if flops and p50 > 0 else None
        stats[name] = {"runs": len(t), **pct, "min_ms": min(t) * 1e3,
                       "mean_ms": sum(t) / len(t) * 1e3, "gflops": rate}
        s = stats[name]
        rows.append((name, len(t), f"{p50:.4f}", f"{s['p90_ms']:.4f}",
                     f"{s['p99_ms']:.4f}", f"{s['min_ms']:.4f}", f"{s['mean_ms']:.4f}",
                     "-" if rate is None else f"{rate:.2f}"))
    print_table(rows)
    ratio = None
    paired = rounds.ratio("onnxruntime", "pyconv1x1") if "onnxruntime" in stats else None
    if paired is not None:
        # blocks timed next to each other: the host's drift cancels out of each ratio
        ratio = paired.median
        print(f"ratio onnxruntime/pyconv1x1 (median over {paired.rounds} rounds of the two "
              f"engines' blocks): {ratio:.2f}x "
              f"({'faster' if ratio >= 1 else 'slower'} than onnxruntime)")
    peak = _peak_rss()
    if peak is not None:
        before = f" ({rss_start / 2**20:.1f} MiB before the session)" if rss_start else ""
        print(f"peak memory (RSS of this process): {peak / 2**20:.1f} MiB{before}")
    target_ms, target_label = args.target_ms, "--target-ms"
    if target_ms is None and "onnxruntime" in stats:
        target_ms, target_label = stats["onnxruntime"]["p50_ms"], "onnxruntime median"
    if args.json:
        _write_json(args.json, {
            "model": args.model, "kernel_variant": session.kernel_variant,
            "threads": session.threads,
            "inputs": {k: list(v.shape) for k, v in feeds.items()}, "input_origin": origin,
            "defaulted_dims": list(getattr(args, "defaulted_dims", None) or []),
            "flops_per_run": flops, "warmup": args.warmup, "block": block,
            "engines": stats,
            "times_ms": {n: [x * 1e3 for x in t] for n, t in rounds.times.items()},
            "ratio_onnxruntime_over_pyconv1x1": ratio,
            "peak_rss_bytes": peak, "rss_before_session_bytes": rss_start,
            "target_ms": target_ms})
        print(f"wrote {args.json}")
    if args.plot:
        _plot(args.plot, args.model, stats, target_ms, target_label)
        print(f"wrote {args.plot}")
