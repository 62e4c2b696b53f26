#!/usr/bin/env bash
# Build pyconv1x1 for aarch64 and run its tests under qemu-user emulation, on an x86-64
# Debian/Ubuntu machine (CI runs it on every run; a developer gets the same environment).
#
#   tools/aarch64.sh                     the default suite (kernel, epilogue, op,
#                                        activation, API, bad-input and recorded-model tests)
#   tools/aarch64.sh tests/test_ops.py -k Clip    any pytest arguments instead
#   tools/aarch64.sh --shell             a shell with $PY set to the emulated Python
#
# What it does, each step cached under $PYCONV1X1_AARCH64_CACHE (default
# ~/.cache/pyconv1x1-aarch64), keyed by the versions that make it:
#   1. host tools, installed with apt-get when missing: qemu-user (qemu-aarch64), the
#      cross compiler gcc-aarch64-linux-gnu, mmdebstrap
#   2. a host Python with Cython (this one if it has Cython and setuptools, else a venv
#      in the cache): it renders the kernel template and translates .pyx to C
#   3. an arm64 Debian root (mmdebstrap --variant=extract: unpacked, nothing run) with
#      python3, its headers, Debian's numpy (headers included) and pytest
#   4. onnx and onnxruntime from their manylinux aarch64 wheels (pip download),
#      unpacked into a site directory; Debian's numpy is the one used
#   5. the package cross-compiled into build/aarch64-<key>/ (tools/aarch64_build.py)
#   6. the emulated Python runs `pyconv1x1 info` (must name the neon variant) and pytest:
#      qemu-aarch64 -L ROOT ROOT/usr/bin/python3 ...; no binfmt handler is registered
#      (they are machine-wide). PYCONV1X1_EMULATED=1 tells the tests: those that start a
#      child Python skip, saying why.
# Exit status: pytest's (5, no tests collected, is made 1), or 1 on a failed step.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)

CACHE=${PYCONV1X1_AARCH64_CACHE:-$HOME/.cache/pyconv1x1-aarch64}
SUITE=${PYCONV1X1_AARCH64_SUITE:-bookworm}          # its python3 is 3.11
MIRROR=${PYCONV1X1_AARCH64_MIRROR:-http://deb.debian.org/debian}
# onnx 1.19: the newest whose dependencies (ml_dtypes 0.5) still run on Debian 12's
# numpy 1.24
ONNX_VERSION=${PYCONV1X1_AARCH64_ONNX:-1.19.1}
ML_DTYPES_VERSION=0.5.1
# onnxruntime 1.24: loads IR 10 / opset 24 models; 1.28 and later crash in Debian 12's
# qemu 7.2 at import, 1.16 refuses IR 10
ORT_VERSION=${PYCONV1X1_AARCH64_ORT:-1.24.4}
ARM_PACKAGES="python3 libpython3-dev python3-numpy python3-pytest libc6-dev libstdc++6"
DEFAULT_TESTS=(tests/test_kernels.py tests/test_ops.py tests/test_api.py
               tests/test_bad_input.py tests/test_models_recorded.py
               tests/test_epilogue.py tests/test_activations.py)

say() { echo "[aarch64] $*" >&2; }
die() { echo "[aarch64] FAILED: $*" >&2; exit 1; }
key() { echo "$*" | sha256sum | cut -c1-12; }
mkdir -p "$CACHE"

# ---- 1. host tools ----------------------------------------------------------------
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
if [ ${#need[@]} -gt 0 ]; then
    SUDO=; [ "$(id -u)" -eq 0 ] || SUDO=sudo
    say "installing ${need[*]}"
    $SUDO apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends \
        "${need[@]}" >/dev/null || die "apt-get install ${need[*]}"
fi

# ---- 2. host Python with Cython ---------------------------------------------------
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import Cython, setuptools; assert int(Cython.__version__[0]) >= 3" \
        2>/dev/null; then
    hv="$CACHE/host-venv-$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
    if [ ! -e "$hv/.complete" ]; then
        say "host venv with Cython: $hv"
        rm -rf "$hv"
        "$PYTHON" -m venv "$hv"
        "$hv/bin/python" -m pip install -q "Cython>=3.0" "setuptools>=77" \
            || die "pip install Cython"
        touch "$hv/.complete"
    fi
    PYTHON="$hv/bin/python"
fi

# ---- 3. the arm64 root ------------------------------------------------------------
ROOT="$CACHE/root-$SUITE-$(key "$SUITE $MIRROR $ARM_PACKAGES")"
if [ ! -e "$ROOT/.complete" ]; then
    say "arm64 $SUITE root: $ARM_PACKAGES"
    rm -rf "$ROOT" "$ROOT.tmp"
    mode=root; [ "$(id -u)" -eq 0 ] || mode=unshare
    mmdebstrap -q --variant=extract --arch=arm64 --mode=$mode \
        --include="${ARM_PACKAGES// /,}" "$SUITE" "$ROOT.tmp" "$MIRROR" \
        || die "mmdebstrap (arm64 root)"
    # extract runs no maintainer scripts: make the links update-alternatives would
    for lib in blas/libblas.so.3 lapack/liblapack.so.3; do
        ln -sf "$lib" "$ROOT.tmp/usr/lib/aarch64-linux-gnu/$(basename "$lib")"
    done
    rm -rf "$ROOT.tmp/var/cache/apt/archives"/*.deb
    mv "$ROOT.tmp" "$ROOT"
    qemu-aarch64 -L "$ROOT" "$ROOT/usr/bin/python3" -c "
import sysconfig, numpy
print(sysconfig.get_config_var('EXT_SUFFIX'))
print(numpy.get_include())" >"$ROOT/.python-info" || die "the arm64 python3 / numpy"
    touch "$ROOT/.complete"
fi
PY_ARM="$ROOT/usr/bin/python3"
PYVER=$(readlink -f "$PY_ARM" | sed 's/.*python//')                   # 3.11
EXT_SUFFIX=$(sed -n 1p "$ROOT/.python-info")
NUMPY_INCLUDE=$(sed -n 2p "$ROOT/.python-info")
qemu() { qemu-aarch64 -L "$ROOT" "$@"; }

# ---- 4. onnx and onnxruntime wheels -------------------------------------------------
SITE="$CACHE/site-py$PYVER-onnx$ONNX_VERSION-ort$ORT_VERSION-mldt$ML_DTYPES_VERSION"
if [ ! -e "$SITE/.complete" ]; then
    say "aarch64 wheels: onnx==$ONNX_VERSION onnxruntime==$ORT_VERSION"
    WHEELS="$SITE.wheels"
    mkdir -p "$WHEELS"
    "$PYTHON" -m pip download -q --dest "$WHEELS" --only-binary=:all: \
        --platform manylinux_2_28_aarch64 --platform manylinux_2_27_aarch64 \
        --platform manylinux2014_aarch64 --python-version "$PYVER" --implementation cp \
        "onnx==$ONNX_VERSION" "onnxruntime==$ORT_VERSION" "ml_dtypes==$ML_DTYPES_VERSION" \
        || die "pip download"
    rm -rf "$SITE" "$SITE.tmp"
    mkdir -p "$SITE.tmp"
    # all but numpy: Debian's is the one the package is compiled against
    for f in "$WHEELS"/*.whl; do
        case "$(basename "$f")" in numpy-*) continue ;; esac
        "$PYTHON" -m zipfile -e "$f" "$SITE.tmp/"
    done
    mv "$SITE.tmp" "$SITE"
    PYTHONPATH="$SITE" qemu "$PY_ARM" -c "import onnx, onnxruntime" \
        || die "onnx / onnxruntime do not import on the arm64 python"
    touch "$SITE/.complete"
fi

# ---- 5. cross-build -----------------------------------------------------------------
BUILD="$REPO/build/aarch64-$(basename "$ROOT" | sed 's/^root-//')"
say "cross-building into ${BUILD#"$REPO"/}"
"$PYTHON" tools/aarch64_build.py "$ROOT" "$BUILD" "$EXT_SUFFIX" "$NUMPY_INCLUDE" \
    2> >(grep -v -e "discards .const. qualifier" -e "__pyx_t_" -e "^ *|" \
             -e "In function" >&2) \
    || die "cross-build"
# the tests and models next to the built package: run from there, the source tree's
# pyconv1x1 (with x86-64 modules, if built in place) is not on the path
rm -rf "$BUILD/tests" "$BUILD/models" "$BUILD/tools"
cp -r tests models tools "$BUILD/"

# ---- 6. run -------------------------------------------------------------------------
export PYCONV1X1_EMULATED=1 PYTHONPATH="$BUILD:$SITE" PYTHONNOUSERSITE=1
unset PYCONV1X1_ISA
cd "$BUILD"
if [ "${1:-}" = "--shell" ]; then
    say "PY='qemu-aarch64 -L $ROOT $PY_ARM' (PYTHONPATH=$PYTHONPATH)"
    PY="qemu-aarch64 -L $ROOT $PY_ARM" exec "${SHELL:-bash}"
fi
info=$(qemu "$PY_ARM" -m pyconv1x1 info models/embed_64to32_relu_dynamo.onnx) \
    || die "pyconv1x1 info"
echo "$info" | grep -E "^kernels:|variant" >&2 || true
echo "$info" | grep -q "kernels: neon" || die "pyconv1x1 info does not name the neon variant"
[ $# -gt 0 ] || set -- -q -rs "${DEFAULT_TESTS[@]}"
rc=0
qemu "$PY_ARM" -m pytest -p no:cacheprovider "$@" || rc=$?
if [ "$rc" -eq 5 ]; then
    die "pytest collected no tests ($*)"
fi
[ "$rc" -eq 0 ] || die "emulated aarch64 tests: pytest exited $rc"
say "emulated aarch64 suite passed"
