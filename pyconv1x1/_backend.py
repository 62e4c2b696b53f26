"""Pick the kernel build for this CPU at import: x86-64-v4 (AVX-512), x86-64-v3 (AVX2 +
FMA), aarch64 NEON or the generic baseline (the table: _variants.py).
PYCONV1X1_ISA=generic|v3|v4|neon forces one (tests use it).
PYCONV1X1_POOL_MOVES=0 keeps the thread pool's workers where the OS puts them (by default
a worker woken onto its caller's CPU moves off it; see _pool.h)."""
import functools
import importlib
import importlib.machinery
import os
import platform

from ._variants import AARCH64_FEATURES, ORDER as _ORDER, VARIANTS, normalize_machine
from .errors import Error

_REQUIRES = {name: row["requires"] for name, row in VARIANTS.items()}
_loaded = {}


def _import(name):
    if name not in _loaded:
        mod = importlib.import_module(f"pyconv1x1._kernels_{name}")
        if os.environ.get("PYCONV1X1_POOL_MOVES", "1").strip() == "0":
            mod.pool_set_moves(False)
        _loaded[name] = mod
    return _loaded[name]


def built_variants():
    """Variants compiled into this installation. Found by file name, without importing
    them: a variant's module init may already use instructions this CPU lacks.
    (importlib.util.find_spec would do, but costs ~0.5 ms of imports at start-up.)"""
    try:
        files = set(os.listdir(os.path.dirname(os.path.abspath(__file__))))
    except OSError:
        files = set()
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return [name for name in _ORDER
            if any(f"_kernels_{name}{suffix}" in files for suffix in suffixes)]


def _machine():
    return normalize_machine(platform.machine())


def _linux_cpu_flags(path="/proc/cpuinfo"):
    """CPU flags the kernel reports (it hides those the OS does not enable), or None:
    the `flags` line of /proc/cpuinfo on x86, `Features` on aarch64. None when the line
    is not there (qemu-user shows the host's /proc/cpuinfo): then the kernels ask the
    CPU (x86 cpuid, aarch64 getauxval(AT_HWCAP))."""
    key = "Features" if _machine() == "aarch64" else "flags"
    try:
        with open(path) as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() == key:
                    return set(value.split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cpu_features():
    """The aarch64 features recorded for the variants (asimd, asimddp, bf16, i8mm, sve)
    -> whether this CPU has them; {} on other machines."""
    if _machine() != "aarch64" or "generic" not in built_variants():
        return {}
    flags = _linux_cpu_flags()
    has = flags.__contains__ if flags is not None else _import("generic").cpu_has
    return {f: bool(has(f)) for f in AARCH64_FEATURES}


@functools.lru_cache(maxsize=None)
def runnable_variants():
    """Variants that this CPU can run, widest first. On Linux /proc/cpuinfo answers, so
    only the chosen kernel module is ever loaded; elsewhere the baseline build asks the
    CPU (__builtin_cpu_supports)."""
    built = built_variants()  # a tuple is returned below: callers cannot alter the cache
    if "generic" not in built:
        raise Error("pyconv1x1 kernels are not built; install with `pip install .`")
    flags = _linux_cpu_flags()
    if flags is None:
        generic = _import("generic")
        has = generic.cpu_has
    else:
        has = flags.__contains__
    return tuple(name for name in built if all(has(f) for f in _REQUIRES[name]))


def kernels(name=None):
    """The kernel module to use: `name`, PYCONV1X1_ISA, or the widest runnable."""
    name = name or os.environ.get("PYCONV1X1_ISA") or None
    runnable = runnable_variants()
    if name is None:
        return _import(runnable[0])
    if name not in runnable:
        raise Error(f"kernel variant {name!r} cannot run here; runnable: {runnable}")
    return _import(name)


def qkernels(name=None):
    """The int8 kernel module (_qkernels_<variant>) built with the flags of the float
    variant `kernels(name)` runs; its INT8_PATH says which int8 path it uses."""
    variant = kernels(name).__name__.rsplit("_", 1)[1]
    key = "q" + variant
    if key not in _loaded:
        _loaded[key] = importlib.import_module(f"pyconv1x1._qkernels_{variant}")
    return _loaded[key]


def int8_path(name=None):
    """The int8 path that runs ('amx', 'avx512vnni', 'avxvnni', 'avx512bw', 'avx2' or
    'c'), for kernel_variant reports and `pyconv1x1 info`."""
    return qkernels(name).INT8_PATH
