"""Build pyconv1x1's Cython kernels.

One kernel template (the parts in pyconv1x1/_kernels/: common types and vector helpers,
micro-kernels, the chain driver, the Python API, element-wise kernels) is rendered once
per ISA variant and compiled with that variant's flags, so one wheel runs on any x86-64 and uses the widest
vectors the CPU has (the variant is chosen at import, see pyconv1x1/_backend.py):

    generic  baseline flags (any CPU of the architecture)
    v3       -march=x86-64-v3 (AVX2 + FMA)          x86-64 only
    v4       -march=x86-64-v4 (AVX-512 F/BW/DQ/VL)  x86-64 only
    neon     -march=armv8-a+simd, a 6x16 tile       aarch64 only

The variants (flags, register tile, CPU features) are one table, pyconv1x1/_variants.py.
tools/aarch64.sh cross-builds the aarch64 variants with the helpers here (importing this
file does not run setup()).

Threads come from the kernels' own worker pool (pyconv1x1/_pool.h, pthreads), not
OpenMP: it survives fork() and never spins whatever another library set (see _pool.h).
The run() fast path (pyconv1x1/_fastrun.pyx) is built once, with baseline flags.
"""
import os
import platform
import shutil
import sys
import tempfile
import warnings

from Cython import Tempita
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
PKG = os.path.join(HERE, "pyconv1x1")
# the float kernel template, in parts rendered as one text per variant (in this order:
# later parts use the types and inline functions of earlier ones)
KERNEL_PARTS = ("common", "micro", "chain", "api", "elementwise")
TEMPLATE_DIR = os.path.join(PKG, "_kernels")


def _load_variants_table():
    """pyconv1x1/_variants.py, loaded by path: the package itself is not built yet."""
    namespace = {}
    path = os.path.join(PKG, "_variants.py")
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), namespace)
    return namespace


_TABLE = _load_variants_table()
# variant -> row (arch, flags, shape = (vector lanes, vectors per row NV, max rows MR_MAX),
# requires, description), see pyconv1x1/_variants.py
VARIANTS = _TABLE["VARIANTS"]
MACHINE = _TABLE["normalize_machine"](platform.machine())
IS_MSVC = sys.platform == "win32"
CYTHON_DIRECTIVES = {
    "language_level": 3,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "initializedcheck": False,
    "nonecheck": False,
}


def _compiler_accepts(flags, code):
    """True if the default C compiler compiles `code` with `flags`. Compile only: the
    question is whether it takes the flags, and a probe link would miss LDFLAGS (a
    sanitizer build passes -fsanitize in both and would lose every variant)."""
    from setuptools._distutils.ccompiler import new_compiler
    from setuptools._distutils.sysconfig import customize_compiler

    cc = new_compiler()
    customize_compiler(cc)
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(code)
        with open(os.devnull, "w") as devnull:
            old_out, old_err = os.dup(1), os.dup(2)
            os.dup2(devnull.fileno(), 1)
            os.dup2(devnull.fileno(), 2)
            try:
                cc.compile([src], output_dir=tmp, extra_postargs=list(flags))
            finally:
                os.dup2(old_out, 1)
                os.dup2(old_err, 2)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def variants(machine=MACHINE, probe=True):
    """The ISA variants to build for `machine`, name -> (flags, shape): those of its
    architecture that the compiler accepts (probe=False: all of them, for a cross build
    whose compiler is not the default one)."""
    if IS_MSVC or os.environ.get("PYCONV1X1_GENERIC_ONLY"):
        return {"generic": ([], VARIANTS["generic"]["shape"])}
    out = {}
    for name, row in VARIANTS.items():
        if row["arch"] not in (None, machine):
            continue
        flags, shape = row["flags"], row["shape"]
        if not flags or not probe or _compiler_accepts(flags, "int main(void){return 0;}"):
            out[name] = (flags, shape)
        else:
            warnings.warn(f"pyconv1x1: compiler rejects {flags}; variant {name} not built")
    return out


def render_kernels(name, shape):
    lanes, nv, mr_max = shape
    parts = []
    for part in KERNEL_PARTS:
        with open(os.path.join(TEMPLATE_DIR, f"{part}.pyx.tp")) as f:
            parts.append(f.read())
    template = Tempita.Template("\n".join(parts), name=TEMPLATE_DIR)
    by_element = bool(VARIANTS[name].get("fma_by_element"))
    text = template.substitute(VARIANT=name, NR=lanes * nv, LANES=lanes, NV=nv,
                               MR_MAX=mr_max, MRS=list(range(1, mr_max + 1)),
                               BY_ELEMENT=by_element)
    out = os.path.join(PKG, f"_kernels_{name}.pyx")
    rel = os.path.join("pyconv1x1", f"_kernels_{name}.pyx")  # setuptools wants relative
    header = f"# GENERATED by setup.py from _kernels/*.pyx.tp (variant {name}); do not edit.\n"
    text = header + text
    old = open(out).read() if os.path.exists(out) else None
    if old != text:  # keep mtimes stable so rebuilds stay incremental
        with open(out, "w") as f:
            f.write(text)
    return rel


QTEMPLATE = os.path.join(PKG, "_qkernels.pyx.tp")


def render_qkernels(name):
    """The int8 kernel module of variant `name` (_qkernels.pyx.tp; compute in
    _qkernels.h, every x86 path built with its own target attribute)."""
    with open(QTEMPLATE) as f:
        template = Tempita.Template(f.read(), name=QTEMPLATE)
    text = (f"# GENERATED by setup.py from _qkernels.pyx.tp (variant {name}); do not "
            "edit.\n" + template.substitute(VARIANT=name))
    out = os.path.join(PKG, f"_qkernels_{name}.pyx")
    old = open(out).read() if os.path.exists(out) else None
    if old != text:
        with open(out, "w") as f:
            f.write(text)
    return os.path.join("pyconv1x1", f"_qkernels_{name}.pyx")


# the int8 modules: their float steps (requantization, dequantization) are specified
# as separate multiply and add, never fused
QFLAGS = ["-ffp-contract=off"]

# compile flags of every module (gcc, clang), and of the kernel modules' threads
BASE_FLAGS = ["-O3", "-ffp-contract=fast", "-fno-math-errno", "-fno-trapping-math",
              "-fno-semantic-interposition"]
THREAD_FLAGS = ["-pthread"]


def extensions():
    import numpy

    if IS_MSVC:
        base, threads = ["/O2"], []
    else:
        base, threads = BASE_FLAGS, THREAD_FLAGS
    exts = [Extension("pyconv1x1._fastrun", [os.path.join("pyconv1x1", "_fastrun.pyx")],
                      extra_compile_args=base)]
    for name, (flags, shape) in variants().items():
        src = render_kernels(name, shape)
        exts.append(Extension(
            f"pyconv1x1._kernels_{name}",
            [src],
            include_dirs=[numpy.get_include()],
            depends=[os.path.join("pyconv1x1", h) for h in ("_pool.h", "_epilogue.h")],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=base + flags + threads,
            extra_link_args=threads,
        ))
        exts.append(Extension(
            f"pyconv1x1._qkernels_{name}",
            [render_qkernels(name)],
            include_dirs=[numpy.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=base + flags + threads + ([] if IS_MSVC else QFLAGS),
            extra_link_args=threads,
        ))
    return exts


if __name__ == "__main__":  # also under pip: setuptools' build backend runs it so
    setup(
        ext_modules=cythonize(extensions(), compiler_directives=CYTHON_DIRECTIVES),
        cmdclass={"build_ext": build_ext},
    )
