"""Plot issue 11's shape sweep: the ratio onnxruntime / pyconv1x1 against pixels per
image, one line per thread count, one marker per batch size.

    python tools/bench.py --workloads sweep --engines pyconv1x1,onnxruntime --json sweep.json
    python tools/plot_sweep.py sweep.json docs/sweep.png

Reads the JSON that tools/bench.py writes; needs matplotlib (the `[plot]` extra)."""
import argparse
import json
import math
import re
import sys

NAME = re.compile(r"_p(\d+)_b(\d+)$")
MARKERS = {1: "o", 8: "s", 32: "^", 64: "D"}


def sweep_points(results):
    """{threads: [(pixels, batch, ratio, name)]} from bench.py's JSON results."""
    points = {}
    for run in results:
        if run.get("error"):
            continue
        for wl in run.get("workloads", []):
            m = NAME.search(wl.get("name", ""))
            ratio = wl.get("engines", {}).get("pyconv1x1", {}).get("ratio")
            if wl.get("error") or not m or ratio is None or not math.isfinite(ratio):
                continue
            points.setdefault(run["threads"], []).append(
                (int(m.group(1)), int(m.group(2)), ratio, wl["name"]))
    return points


def geomean(values):
    return math.exp(sum(math.log(v) for v in values) / len(values)) if values else math.nan


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json", help="results written by tools/bench.py --json")
    ap.add_argument("png", help="plot to write")
    args = ap.parse_args(argv)
    with open(args.json) as f:
        data = json.load(f)
    results = data["runs"] if isinstance(data, dict) else data
    points = sweep_points(results)
    if not points:
        sys.exit(f"{args.json}: no sweep workloads (names *_p<pixels>_b<batch>) with ratios")
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (threads, pts) in enumerate(sorted(points.items())):
        color = f"C{i}"
        pts.sort()
        # one line through the batch-1 cases, markers for every case
        ones = [(p, r) for p, b, r, _ in pts if b == 1]
        if ones:
            ax.plot([p for p, _ in ones], [r for _, r in ones], color=color, lw=0.8)
        for p, b, r, _ in pts:
            ax.scatter([p], [r], color=color, marker=MARKERS.get(b, "x"), s=28)
        ax.plot([], [], color=color, label=f"{threads} thread(s), geomean "
                f"{geomean([r for *_, r, _ in pts]):.2f}")
    for b, m in MARKERS.items():
        ax.scatter([], [], color="gray", marker=m, label=f"batch {b}")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("pixels per image")
    ax.set_ylabel("onnxruntime time / pyconv1x1 time")
    ax.set_title("Shape sweep: speed-up over onnxruntime (higher is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.png, dpi=110)
    print(f"plot written to {args.png}")


if __name__ == "__main__":
    main()
