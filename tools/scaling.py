"""Thread scaling from a `tools/bench.py --json` run: issue 11's multi-core table.

    python tools/bench.py --workloads sweep --engines pyconv1x1,onnxruntime \\
        --threads 1,2,4,8,16 --quick --json scaling.json
    python tools/scaling.py scaling.json [--markdown]

For every workload and thread count T it prints onnxruntime / pyconv1x1 (paired per
round by bench.py) and pyconv1x1's parallel efficiency, t(1) / (T * t(T)) from the
median per-call times, and checks the 16-core targets of issue 11 at the largest thread
count in the file: every case >= 1.0x onnxruntime, and every layer of >= 50 MFLOP at
>= 70% parallel efficiency. Needs the 1-thread run in the same file for efficiencies.
"""
import argparse
import json
import math
import sys

TARGET_RATIO = 1.0
TARGET_EFFICIENCY = 0.70
BIG_FLOPS = 50e6


def load(path):
    """{name: {threads: (ratio, ms, flops)}} and the machine line of a bench json."""
    with open(path) as f:
        return load_data(json.load(f))


def load_data(data):
    """load() of the json's parsed contents."""
    table = {}
    for run in data.get("runs", []):
        t = run["threads"]
        for wl in run.get("workloads") or []:
            ours = wl["engines"].get("pyconv1x1") or {}
            if ours.get("error") or ours.get("ms") is None:
                continue
            table.setdefault(wl["name"], {})[t] = (ours.get("ratio"), ours["ms"],
                                                   wl.get("flops") or 0.0)
    return table, data.get("machine", {})


def efficiency(row, t):
    if 1 not in row or t not in row or not row[t][1]:
        return None
    return row[1][1] / (t * row[t][1])


def rows(table):
    threads = sorted({t for row in table.values() for t in row})
    out = []
    for name, row in table.items():
        flops = next(iter(row.values()))[2]
        cells = []
        for t in threads:
            ratio = row.get(t, (None,))[0]
            cells.append((ratio, efficiency(row, t)))
        out.append((name, flops, cells))
    return threads, out


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


def report(table, machine, markdown=False):
    threads, out = rows(table)
    head = ["case", "MFLOP"] + [f"t={t} ort/x" for t in threads] + \
        [f"t={t} eff" for t in threads if t > 1]
    lines = []
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|---|" + "---:|" * (len(head) - 1))
    else:
        lines.append("  ".join(f"{h:>11}" if i else f"{h:<18}" for i, h in enumerate(head)))
    for name, flops, cells in out:
        vals = [name, f"{flops / 1e6:.1f}"] + [fmt(r, ".2f") for r, _ in cells] + \
            [fmt(e, ".0%") for t, (_, e) in zip(threads, cells) if t > 1]
        if markdown:
            lines.append("| " + " | ".join(vals) + " |")
        else:
            lines.append("  ".join(f"{v:>11}" if i else f"{v:<18}"
                                   for i, v in enumerate(vals)))
    for ti, t in enumerate(threads):
        ratios = [c[ti][0] for _, _, c in out if c[ti][0]]
        if ratios:
            g = math.exp(sum(math.log(r) for r in ratios) / len(ratios))
            lines.append(f"t={t}: geomean ort/ours {g:.2f}, min {min(ratios):.2f} "
                         f"over {len(ratios)} cases")
    verdicts = []
    if threads:
        top = threads[-1]
        ti = threads.index(top)
        low = [(n, round(c[ti][0], 2)) for n, _, c in out
               if c[ti][0] is not None and c[ti][0] < TARGET_RATIO]
        verdicts.append((not low, f"every case >= {TARGET_RATIO}x onnxruntime at "
                         f"{top} threads" + (f" (below: {low})" if low else "")))
        if top > 1:
            weak = [(n, round(c[ti][1], 2)) for n, f, c in out
                    if f >= BIG_FLOPS and c[ti][1] is not None
                    and c[ti][1] < TARGET_EFFICIENCY]
            verdicts.append((not weak, f"layers >= {BIG_FLOPS / 1e6:.0f} MFLOP at >= "
                             f"{TARGET_EFFICIENCY:.0%} parallel efficiency at {top} "
                             "threads" + (f" (below: {weak})" if weak else "")))
    cores = machine.get("cores")
    lines.append(f"machine: {machine.get('cpu', '?')}, {cores} cores"
                 + ("" if not cores or not threads or cores >= threads[-1]
                    else f" (fewer than {threads[-1]} threads: oversubscribed)"))
    for ok, text in verdicts:
        lines.append(f"  {'PASS' if ok else 'MISS'}  {text}")
    return "\n".join(lines), all(ok for ok, _ in verdicts)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("json", help="a tools/bench.py --json file")
    ap.add_argument("--markdown", action="store_true", help="a Markdown table")
    args = ap.parse_args(argv)
    table, machine = load(args.json)
    if not table:
        print(f"{args.json}: no pyconv1x1 timings", file=sys.stderr)
        return 2
    text, _ = report(table, machine, args.markdown)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
