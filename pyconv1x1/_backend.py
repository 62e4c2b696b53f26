"""Pick the kernel build for this CPU at import: x86-64-v4 (AVX-512), x86-64-v3 (AVX2 +
FMA) or the generic baseline. PYCONV1X1_ISA=generic|v3|v4 forces one (tests use it)."""
import importlib
import importlib.util
import os

from .errors import Error

_ORDER = ("v4", "v3", "generic")
_REQUIRES = {
    "v4": ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd", "avx2", "fma"),
    "v3": ("avx2", "fma", "bmi2"),
    "generic": (),
}
_loaded = {}


def _import(name):
    if name not in _loaded:
        _loaded[name] = importlib.import_module(f"pyconv1x1._kernels_{name}")
    return _loaded[name]


def built_variants():
    """Variants compiled into this installation. Found without importing them: a
    variant's module init may already use instructions this CPU lacks."""
    return [name for name in _ORDER
            if importlib.util.find_spec(f"pyconv1x1._kernels_{name}") is not None]


def runnable_variants():
    """Variants that this CPU can run, widest first."""
    try:
        generic = _import("generic")
    except ImportError as exc:  # the package was not built
        raise Error("pyconv1x1 kernels are not built; install with `pip install .` "
                    f"({exc})") from None
    out = []
    for name in built_variants():
        if all(generic.cpu_has(f) for f in _REQUIRES[name]):
            out.append(name)
    return out


def kernels(name=None):
    """The kernel module to use: `name`, PYCONV1X1_ISA, or the widest runnable."""
    name = name or os.environ.get("PYCONV1X1_ISA") or None
    runnable = runnable_variants()
    if name is None:
        return _import(runnable[0])
    if name not in runnable:
        raise Error(f"kernel variant {name!r} cannot run here; runnable: {runnable}")
    return _import(name)
