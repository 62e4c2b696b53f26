"""Cross-build pyconv1x1 for aarch64 (run by tools/aarch64.sh, on the host's Python).

Renders the kernel template for every variant setup.py builds on aarch64 (the table in
pyconv1x1/_variants.py), translates the .pyx to C here with Cython against the arm64
root's numpy .pxd, and compiles each module with the cross compiler against the root's
Python and numpy headers (--sysroot). Writes a copy of the package with the .so files
into OUT/pyconv1x1; the source tree gets only the rendered .pyx files (ignored by git).

    python tools/aarch64_build.py ROOT OUT EXT_SUFFIX NUMPY_INCLUDE [CC]
"""
import importlib.util
import os
import shutil
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_setup():
    spec = importlib.util.spec_from_file_location("pyconv1x1_setup",
                                                  os.path.join(REPO, "setup.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # setup() runs only as __main__
    return mod


def newer(src, dst):
    return not os.path.exists(dst) or os.path.getmtime(src) > os.path.getmtime(dst)


def main(root, out, ext_suffix, numpy_include, cc="aarch64-linux-gnu-gcc"):
    from Cython.Build import cythonize
    from setuptools import Extension

    st = load_setup()
    built = st.variants(machine="aarch64", probe=False)
    os.chdir(REPO)  # cythonize wants source paths relative to the project
    pyx = {"_fastrun": os.path.join("pyconv1x1", "_fastrun.pyx")}
    flags = {"_fastrun": []}
    for name, (vflags, shape) in built.items():
        pyx[f"_kernels_{name}"] = st.render_kernels(name, shape)
        flags[f"_kernels_{name}"] = vflags + st.THREAD_FLAGS
        pyx[f"_qkernels_{name}"] = st.render_qkernels(name)
        flags[f"_qkernels_{name}"] = vflags + st.THREAD_FLAGS + st.QFLAGS
    cbuild = os.path.join(out, "c")
    # Debian's numpy .pxd (the headers the C is compiled against), before the host's
    numpy_pxd_dir = os.path.dirname(os.path.dirname(os.path.dirname(
        numpy_include)))  # .../dist-packages/numpy/core/include -> .../dist-packages
    exts = [Extension(f"pyconv1x1.{mod}", [src]) for mod, src in pyx.items()]
    cythonize(exts, compiler_directives=st.CYTHON_DIRECTIVES, build_dir=cbuild,
              include_path=[numpy_pxd_dir, REPO], quiet=True)

    pkg = os.path.join(out, "pyconv1x1")
    os.makedirs(pkg, exist_ok=True)
    src_pkg = os.path.join(REPO, "pyconv1x1")
    for f in os.listdir(src_pkg):
        src = os.path.join(src_pkg, f)
        if f.endswith((".py", ".pxd", ".h")):
            shutil.copy2(src, os.path.join(pkg, f))
        elif os.path.isfile(os.path.join(src, "__init__.py")):  # a subpackage
            shutil.rmtree(os.path.join(pkg, f), ignore_errors=True)
            shutil.copytree(src, os.path.join(pkg, f),
                            ignore=shutil.ignore_patterns("__pycache__"))
    for f in os.listdir(pkg):  # a module that became a package (or went) must not shadow
        if f.endswith(".py") and not os.path.exists(os.path.join(src_pkg, f)):
            os.remove(os.path.join(pkg, f))
    pyver = "python" + ext_suffix.split("-")[1][0] + "." + ext_suffix.split("-")[1][1:]
    pyinc = [os.path.join(root, "usr", "include", pyver),  # Python.h
             os.path.join(root, "usr", "include", "aarch64-linux-gnu", pyver)]  # pyconfig.h
    for mod, src in pyx.items():
        c_file = os.path.join(cbuild, src[:-len(".pyx")] + ".c")
        so = os.path.join(pkg, mod + ext_suffix)
        if not newer(c_file, so):
            continue
        cmd = ([cc, f"--sysroot={root}", "-shared", "-fPIC", "-g0"] + st.BASE_FLAGS
               + flags[mod] + [f"-I{d}" for d in pyinc]
               + [f"-I{numpy_include}", f"-I{os.path.join(REPO, 'pyconv1x1')}",
                  "-DNPY_NO_DEPRECATED_API=NPY_1_7_API_VERSION", c_file, "-o", so])
        print("  CC", os.path.relpath(so, out), " ".join(flags[mod]), flush=True)
        subprocess.run(cmd, check=True)
    stale = [f for f in os.listdir(pkg) if f.endswith(".so")
             and f.split(".")[0] not in pyx]
    for f in stale:  # a variant no longer in the table
        os.remove(os.path.join(pkg, f))
    print("built for aarch64:", ", ".join(sorted(pyx)))


if __name__ == "__main__":
    main(*sys.argv[1:])
