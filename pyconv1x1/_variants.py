"""The kernel variants, one row each: read by setup.py (what to build, with which flags
and register tile), _backend.py (CPU features needed, order of preference), the CLI
(description) and the tests. Plain data with no imports: setup.py loads this file before
the package is built.

    arch      the machine the variant is built for (platform.machine(), arm64 spelled
              aarch64); None: every machine
    flags     compile flags on top of the common ones
    shape     (vector lanes, vectors per micro-kernel row NV, max rows MR_MAX): the
              micro-kernel holds MR_MAX x NV accumulators, NR = lanes * NV pixels
    requires  CPU features it needs, as Linux /proc/cpuinfo spells them (`flags` on
              x86-64, `Features` on aarch64); one missing: the variant is not used
    fma_by_element (optional) the micro-kernel loads the weights of 4 (2) rows as one
              vector and multiplies by lane (aarch64 fmla by element) instead of one
              broadcast per row
"""

VARIANTS = {
    # 6 x 4 = 24 of the 32 zmm
    "v4": dict(arch="x86_64",
               flags=["-march=x86-64-v4", "-mprefer-vector-width=512"],
               shape=(16, 4, 6),
               requires=("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd",
                         "avx2", "fma"),
               description="x86-64-v4, AVX-512"),
    # 6 x 2 = 12 of the 16 ymm
    "v3": dict(arch="x86_64",
               flags=["-march=x86-64-v3", "-mtune=znver3"],
               shape=(8, 2, 6),
               requires=("avx2", "fma", "bmi2"),
               description="x86-64-v3, AVX2+FMA"),
    # 6 x 4 = 24 of the 32 NEON q registers; with the 4 pixel vectors and 2 weight
    # vectors (fmla by element) 30 are live in the inner loop, none spilled.
    # -march pins plain ARMv8-A: a distro default of a later architecture must not
    # leak instructions the `asimd` check does not cover
    "neon": dict(arch="aarch64",
                 flags=["-march=armv8-a+simd"],
                 shape=(4, 4, 6),
                 requires=("asimd",),
                 fma_by_element=True,  # weights: 1 load per 4 rows, fmla v.s[lane]
                 description="aarch64 NEON, 6x16 tile"),
    # 4 x 2 = 8 of the 16 xmm (SSE2) or of the 32 NEON registers
    "generic": dict(arch=None, flags=[], shape=(4, 2, 4), requires=(),
                    description="portable baseline build"),
}

# preference when several run: the first runnable one wins
ORDER = tuple(VARIANTS)

# aarch64 CPU features read and recorded for later variants (sdot int8 kernels need
# asimddp; bf16, i8mm and sve kernels may follow)
AARCH64_FEATURES = ("asimd", "asimddp", "bf16", "i8mm", "sve")


def normalize_machine(machine):
    """platform.machine() as the `arch` column spells it."""
    m = machine.lower()
    return {"amd64": "x86_64", "x64": "x86_64", "arm64": "aarch64"}.get(m, m)
