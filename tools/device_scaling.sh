#!/bin/sh
# Issue 11's multi-core table in one go, for the device machine (16 cores, numpy,
# Cython, onnx and onnxruntime installed, no network, no pip): builds in place, runs the
# shape sweep and the issue-4 workloads at 1, 2, 4, 8 and 16 threads against
# onnxruntime, and prints tools/scaling.py's table and verdicts. About 5 minutes.
#     sh tools/device_scaling.sh [OUTDIR]     (OUTDIR: $OUT or /tmp)
set -e
OUTDIR=${1:-${OUT:-/tmp}}
THREADS=${THREADS:-1,2,4,8,16}
python3 setup.py build_ext --inplace -j "$(nproc)" > "$OUTDIR/build.log" 2>&1 \
    || { tail -30 "$OUTDIR/build.log"; exit 1; }
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -c "import pyconv1x1, onnxruntime, numpy; print('pyconv1x1', pyconv1x1.__file__, 'onnxruntime', onnxruntime.__version__, 'numpy', numpy.__version__)"
lscpu | grep -E "Model name|^CPU\(s\)|Thread|L2|L3" || true
for set in sweep all; do
    python3 tools/bench.py --workloads $set --engines pyconv1x1,onnxruntime \
        --threads "$THREADS" --quick --json "$OUTDIR/scaling_$set.json" \
        > "$OUTDIR/bench_$set.log" 2>&1 || { tail -30 "$OUTDIR/bench_$set.log"; exit 1; }
    echo "== $set"
    python3 tools/scaling.py "$OUTDIR/scaling_$set.json" --markdown || true
done
