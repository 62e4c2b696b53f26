/* pyconv1x1's epilogue programs: a short list of element-wise ops that a conv layer (or
   an element-wise step) applies to its output block after bias and the residual-before-
   activation add, while the block is in L1. The common clamp(leaky(x)) epilogue does not
   come here: the micro-kernels apply it on their accumulators (the fast path).

   Included by the rendered kernel template after its vector helpers (pc1_vecf, pc1_veci,
   pc1_fma, pc1_max, pc1_min, pc1_select, pc1_load, pc1_store, pc1_splat): one copy per
   ISA variant, at that variant's vector width.

   Every op is computed with explicit vector code: no libm call, no scalar loop per
   element (a row's tail that is not a whole vector goes through a vector-sized buffer).
   Each op runs in one non-inlined function (pc1_post_run) whatever calls it, so that an
   output's bits do not depend on whether a panel kernel or a matrix-vector kernel (output
   channels in lanes) produced it, nor on the thread count: with -ffp-contract=fast a
   mul + add inlined in two places could be fused in one and not in the other, so every
   mul-add here is an explicit pc1_fma.

   Approximations (coefficients fitted for this file: Lawson-weighted least squares for
   near-minimax relative error, rational erf by Loeb's linearisation; errors against
   float64 measured in tests/test_epilogue.py and stated in the README):
     exp(r) on [-ln2/2, ln2/2]: 1 + r + r^2 P4(r), 2^n by exponent bits; only exp(x <= 0)
       is needed (sigmoid, tanh use exp(-|x|): no overflow), below ln(FLT_MIN) it is 0
     sigmoid(x) = 1 / (1 + e) for x >= 0, e / (1 + e) below, e = exp(-|x|)
     tanh(x) = x + x^3 P4(x^2) for |x| < 0.625, else sign(x) (1 - e) / (1 + e),
       e = exp(-2|x|)
     erf(x) = x P6(x^2) / Q4(x^2) on [-4, 4] (clamped: erf(4) is 1 in float32)
     erfc(x) = exp(-x^2) P3(x) / Q4(x) on [0.5, 10], for GELU's negative side
   NaN propagates through every op (x86 max/min keep a NaN second operand; the selects
   are arranged so a NaN takes the NaN branch), except REQUANT, whose output is a
   quantized value: NaN becomes its lower bound, as in quant/reference.py.

   REQUANT is the int8 kernels' requantization on an integer-valued float32 accumulator
   (quant/floatpath.py runs int8 chains on these kernels with it):
     v = x * scale[c]   (a float32 product: x * a is followed by a compare, never by an
                         add, so no FMA contraction can absorb its rounding)
     v = clamp(v, lo - zp, hi - zp)   (selects: NaN -> lo - zp, +-inf -> the bounds)
     v = rne(v) + zp    (round half to even by the 1.5 * 2^23 magic number: for
                         |v| < 2^22, v + 1.5 * 2^23 lies in [2^23, 2^24), where the float32
                         spacing is 1, so the add rounds v to an integer in the current
                         rounding mode (nearest even: the kernels never change it) and
                         the subtraction is exact. Op.__init__ requires |lo - zp| and
                         |hi - zp| < 2^22, so the clamped v always is; the compiler
                         flags (no -ffast-math / -fassociative-math) keep (v + M) - M.)
   which is clamp(rne(v) + zp, lo, hi) of quant/reference.py bit for bit, the result an
   integer-valued float. */
#ifndef PC1_EPILOGUE_H
#define PC1_EPILOGUE_H

#include <string.h>

#define PC1_MAX_OPS 4
#define PC1_LANES ((Py_ssize_t)(sizeof(pc1_vecf) / sizeof(float)))

/* opcodes: program/epilogue.py's table holds the same numbers */
enum {
    PC1_OP_CLAMP = 1,        /* s0 = lo, s1 = hi */
    PC1_OP_PRELU = 2,        /* slope: vec[c] or s0 */
    PC1_OP_SIGMOID = 3,
    PC1_OP_HARDSIGMOID = 4,  /* clamp(s0 * x + s1, 0, 1) */
    PC1_OP_HARDSWISH = 5,    /* x * clamp(x / 6 + 1 / 2, 0, 1) */
    PC1_OP_TANH = 6,
    PC1_OP_SILU = 7,         /* x * sigmoid(x) */
    PC1_OP_GELU = 8,     /* x / 2 * (1 + erf(x / sqrt 2)) */
    PC1_OP_GELU_TANH = 9,    /* x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3))),
                                computed as x * sigmoid(2 sqrt(2 / pi) (x + 0.044715 x^3)) */
    PC1_OP_REQUANT = 10,     /* scale: vec[c] or s0; s1 = zp; s2 = lo, s3 = hi (see top) */
    PC1_OP_LAST = 10
};

typedef struct {
    int n;                          /* ops, 0: none (the layer's epilogue is min/max) */
    int op[PC1_MAX_OPS];
    const float* vec[PC1_MAX_OPS];  /* per-channel first parameter [channels], or NULL */
    float s[PC1_MAX_OPS][4];        /* scalar parameters (s0 unused with vec) */
} pc1_post_ops;

typedef unsigned int pc1_vecu __attribute__((vector_size(sizeof(pc1_vecf))));

static inline pc1_vecf pc1_abs(pc1_vecf x) {
    return (pc1_vecf)((pc1_veci)x & 0x7fffffff);
}

/* |r| with the sign of x */
static inline pc1_vecf pc1_copysign(pc1_vecf r, pc1_vecf x) {
    return (pc1_vecf)(((pc1_veci)r & 0x7fffffff) | ((pc1_veci)x & (int)0x80000000));
}

/* a / b for b in [1, 2^64] (every divisor here: 1 + e, and the rational
   approximations' denominators, are): the reciprocal estimate and one Newton step
   where the ISA has one (vdivps costs 10-20 cycles a vector, more than the rest of a
   sigmoid), a division elsewhere. Within 1 ulp of a / b. */
static inline pc1_vecf pc1_div(pc1_vecf a, pc1_vecf b) {
#if defined(__AVX512F__)
    pc1_vecf r;
    if (sizeof(pc1_vecf) == 64)
        r = (pc1_vecf)_mm512_rcp14_ps((__m512)b);
    else
        return a / b;
#elif defined(__AVX__)
    pc1_vecf r;
    if (sizeof(pc1_vecf) == 32)
        r = (pc1_vecf)_mm256_rcp_ps((__m256)b);
    else
        return a / b;
#else
    pc1_vecf r;
    if (1)
        return a / b;
#endif
    /* r' = r + r (1 - b r): the error squares (2^-14 -> 2^-28, 2^-12 -> 2^-24); then
       q = a r corrected by its residual a - b q (exact for b = 1: sigmoid saturates
       to 1.0, not 1 - 2^-24) */
    r = pc1_fma(r, r, pc1_fma(pc1_splat(1.0f), -b, r));
    pc1_vecf q = a * r;
    return pc1_fma(q, r, pc1_fma(a, -b, q));
}

/* exp(x) for x <= 0 (or NaN): 0 below ln(FLT_MIN) */
static inline pc1_vecf pc1_exp_neg(pc1_vecf x) {
    const pc1_vecf lo = pc1_splat(-87.33654475f);  /* ln(FLT_MIN): 2^n stays normal */
    const pc1_vecf magic = pc1_splat(12582912.0f);  /* 1.5 * 2^23: rounds to integer */
    pc1_vecf xc = pc1_max(lo, x);
    pc1_vecf t = pc1_fma(magic, xc, pc1_splat(1.44269504089f));
    pc1_vecf n = t - magic;
    pc1_vecf r = pc1_fma(xc, n, pc1_splat(-0.693359375f));     /* ln 2 = hi + lo */
    r = pc1_fma(r, n, pc1_splat(2.12194440e-4f));
    pc1_vecf p = pc1_splat(1.3814543e-3f);
    p = pc1_fma(pc1_splat(8.368707e-3f), p, r);
    p = pc1_fma(pc1_splat(4.166839e-2f), p, r);
    p = pc1_fma(pc1_splat(1.6666521e-1f), p, r);
    p = pc1_fma(pc1_splat(4.9999994e-1f), p, r);
    p = pc1_fma(pc1_splat(1.0f), p, r);
    p = pc1_fma(pc1_splat(1.0f), p, r);
    /* the low bits of t hold n (two's complement, |n| <= 126): 2^n = (n + 127) << 23 */
    pc1_vecu bits = ((pc1_vecu)t + (127u - 0x4B400000u)) << 23;
    pc1_vecf e = p * (pc1_vecf)bits;
    return pc1_select(x < lo, pc1_splat(0.0f), e);
}

static inline pc1_vecf pc1_sigmoid(pc1_vecf x) {
    pc1_vecf e = pc1_exp_neg(-pc1_abs(x));
    pc1_vecf s = pc1_div(pc1_splat(1.0f), pc1_splat(1.0f) + e);
    return pc1_select(x < 0, e * s, s);
}

static inline pc1_vecf pc1_tanh(pc1_vecf x) {
    pc1_vecf a = pc1_abs(x);
    pc1_vecf z = x * x;
    pc1_vecf p = pc1_splat(-5.704952e-3f);
    p = pc1_fma(pc1_splat(2.0639062e-2f), p, z);
    p = pc1_fma(pc1_splat(-5.3739708e-2f), p, z);
    p = pc1_fma(pc1_splat(1.3331442e-1f), p, z);
    p = pc1_fma(pc1_splat(-3.333328e-1f), p, z);
    pc1_vecf small = pc1_fma(x, p, z * x);
    pc1_vecf e = pc1_exp_neg(pc1_splat(-2.0f) * a);
    pc1_vecf big = pc1_copysign(pc1_div(pc1_splat(1.0f) - e, pc1_splat(1.0f) + e), x);
    return pc1_select(a < pc1_splat(0.625f), small, big);
}

static inline pc1_vecf pc1_erf(pc1_vecf x) {
    pc1_vecf xc = pc1_min(pc1_splat(4.0f), pc1_max(pc1_splat(-4.0f), x));
    pc1_vecf t = xc * xc;
    pc1_vecf p = pc1_splat(1.9110638e-08f);
    p = pc1_fma(pc1_splat(-1.9423208e-06f), p, t);
    p = pc1_fma(pc1_splat(1.4729075e-04f), p, t);
    p = pc1_fma(pc1_splat(3.9907638e-03f), p, t);
    p = pc1_fma(pc1_splat(5.1525492e-02f), p, t);
    p = pc1_fma(pc1_splat(2.0712985e-01f), p, t);
    p = pc1_fma(pc1_splat(1.1283791e+00f), p, t);
    pc1_vecf q = pc1_splat(1.0211581e-03f);
    q = pc1_fma(pc1_splat(1.4958462e-02f), q, t);
    q = pc1_fma(pc1_splat(1.1797265e-01f), q, t);
    q = pc1_fma(pc1_splat(5.168953e-01f), q, t);
    q = pc1_fma(pc1_splat(1.0f), q, t);
    pc1_vecf r = pc1_div(xc * p, q);
    return pc1_min(pc1_splat(1.0f), pc1_max(pc1_splat(-1.0f), r));
}

/* 1 + erf(x / sqrt 2) = 2 Phi(x), the GELU gate: below x = -sqrt 2 / 2 as
   erfc(|z|) = exp(-z^2) R(|z|), R = P3 / Q4 fitted on [0.5, 10] (1 + erf would cancel:
   one ulp of erf near -1 is 6e-8 against 1 + erf = 2.7e-3 at x = -3) */
static inline pc1_vecf pc1_gelu_gate(pc1_vecf x) {
    pc1_vecf z = x * pc1_splat(0.70710678f);
    /* the tail from x itself, z^2 = x^2 / 2 exactly as hi + lo: the rounding of z or of
       z^2 would be magnified by the exponent (a relative 1e-5 at x = -11) */
    pc1_vecf xc = pc1_max(pc1_splat(-14.2f), x);  /* erfc(10) = 2e-45: 0 in float32 */
    pc1_vecf hi = xc * xc;
    pc1_vecf lo = pc1_fma(-hi, xc, xc);
    pc1_vecf ac = pc1_abs(xc) * pc1_splat(0.70710678f);
    pc1_vecf p = pc1_splat(0.12525553f);
    p = pc1_fma(pc1_splat(0.54753375f), p, ac);
    p = pc1_fma(pc1_splat(1.1013589f), p, ac);
    p = pc1_fma(pc1_splat(0.99983746f), p, ac);
    pc1_vecf q = pc1_splat(0.22201851f);
    q = pc1_fma(pc1_splat(0.9701921f), q, ac);
    q = pc1_fma(pc1_splat(2.0669773f), q, ac);
    q = pc1_fma(pc1_splat(2.228399f), q, ac);
    q = pc1_fma(pc1_splat(1.0f), q, ac);
    pc1_vecf tail = pc1_exp_neg(pc1_splat(-0.5f) * hi) *
        (pc1_splat(1.0f) - pc1_splat(0.5f) * lo) * pc1_div(p, q);
    return pc1_select(z < pc1_splat(-0.5f), tail, pc1_splat(1.0f) + pc1_erf(z));
}

static inline pc1_vecf pc1_hardsigmoid(pc1_vecf x, pc1_vecf alpha, pc1_vecf beta) {
    return pc1_min(pc1_splat(1.0f), pc1_max(pc1_splat(0.0f), pc1_fma(beta, alpha, x)));
}

/* requantization (see top): a = scale, b = zp, c = lo, d = hi */
static inline pc1_vecf pc1_requant(pc1_vecf x, pc1_vecf a, pc1_vecf b, pc1_vecf c,
                                   pc1_vecf d) {
    const pc1_vecf magic = pc1_splat(12582912.0f);  /* 1.5 * 2^23 */
    pc1_vecf v = x * a;
    pc1_vecf flo = c - b, fhi = d - b;  /* integers below 2^22: exact */
    v = pc1_select(v > flo, v, flo);   /* NaN compares false: lo - zp */
    v = pc1_select(v < fhi, v, fhi);
    v = (v + magic) - magic;
    return v + b;
}

/* one op on one vector; a, b, c, d: the op's parameters (per lane) */
static inline pc1_vecf pc1_post_op(int op, pc1_vecf x, pc1_vecf a, pc1_vecf b,
                                   pc1_vecf c, pc1_vecf d) {
    switch (op) {
    case PC1_OP_CLAMP:
        return pc1_min(b, pc1_max(a, x));
    case PC1_OP_PRELU:
        return pc1_select(x < 0, x * a, x);
    case PC1_OP_SIGMOID:
        return pc1_sigmoid(x);
    case PC1_OP_HARDSIGMOID:
        return pc1_hardsigmoid(x, a, b);
    case PC1_OP_HARDSWISH:  /* (x + 3) / 6: no cancellation near x = -3 */
        return x * pc1_min(pc1_splat(1.0f), pc1_max(pc1_splat(0.0f),
                                                    (x + pc1_splat(3.0f)) * pc1_splat(1.0f / 6.0f)));
    case PC1_OP_TANH:
        return pc1_tanh(x);
    case PC1_OP_SILU:
        return x * pc1_sigmoid(x);
    case PC1_OP_GELU:
        return pc1_splat(0.5f) * x * pc1_gelu_gate(x);
    case PC1_OP_GELU_TANH: {  /* (1 + tanh(u)) / 2 = sigmoid(2u): no cancellation */
        pc1_vecf u = pc1_fma(pc1_splat(1.5957691216f), pc1_splat(0.0713548163f), x * x);
        return x * pc1_sigmoid(x * u);
    }
    case PC1_OP_REQUANT:
        return pc1_requant(x, a, b, c, d);
    default:
        return x;
    }
}

/* op on nvec whole vectors at y (a, b per lane). Not inlined: the one copy of each op's
   arithmetic, for rows of pixels and for output channels in lanes alike (see top). */
__attribute__((noinline))
static void pc1_post_run(int op, float* y, Py_ssize_t nvec, pc1_vecf a, pc1_vecf b,
                         pc1_vecf c, pc1_vecf d) {
    Py_ssize_t j;
    switch (op) {
#define PC1_POST_CASE(OP) \
    case OP: \
        for (j = 0; j < nvec; j++) \
            pc1_store(y + j * PC1_LANES, pc1_post_op(OP, pc1_load(y + j * PC1_LANES), a, b, c, d)); \
        break;
    PC1_POST_CASE(PC1_OP_CLAMP)
    PC1_POST_CASE(PC1_OP_PRELU)
    PC1_POST_CASE(PC1_OP_SIGMOID)
    PC1_POST_CASE(PC1_OP_HARDSIGMOID)
    PC1_POST_CASE(PC1_OP_HARDSWISH)
    PC1_POST_CASE(PC1_OP_TANH)
    PC1_POST_CASE(PC1_OP_SILU)
    PC1_POST_CASE(PC1_OP_GELU)
    PC1_POST_CASE(PC1_OP_GELU_TANH)
    PC1_POST_CASE(PC1_OP_REQUANT)
#undef PC1_POST_CASE
    default:
        break;
    }
}

/* the op list over rows c0 .. c0 + rows - 1 (channels modulo nchan when nchan > 0) of
   npix pixels each, row i at y + i * ldy */
static void pc1_post_rows(const pc1_post_ops* P, Py_ssize_t c0, Py_ssize_t rows,
                          float* y, Py_ssize_t ldy, Py_ssize_t npix, Py_ssize_t nchan) {
    Py_ssize_t i, full = npix / PC1_LANES, tail = npix - full * PC1_LANES, c;
    int k;
    float buf[sizeof(pc1_vecf) / sizeof(float)];
    for (i = 0; i < rows; i++) {
        float* row = y + i * ldy;
        c = nchan > 0 ? (c0 + i) % nchan : c0 + i;
        if (tail) {
            memset(buf, 0, sizeof buf);
            memcpy(buf, row + full * PC1_LANES, tail * sizeof(float));
        }
        for (k = 0; k < P->n; k++) {
            pc1_vecf a = pc1_splat(P->vec[k] ? P->vec[k][c] : P->s[k][0]);
            pc1_vecf b = pc1_splat(P->s[k][1]), cc = pc1_splat(P->s[k][2]);
            pc1_vecf d = pc1_splat(P->s[k][3]);
            pc1_post_run(P->op[k], row, full, a, b, cc, d);
            if (tail)
                pc1_post_run(P->op[k], buf, 1, a, b, cc, d);
        }
        if (tail)
            memcpy(row + full * PC1_LANES, buf, tail * sizeof(float));
    }
}

/* the op list on one vector whose lane i is channel c0 + i (i < rows): the
   matrix-vector kernels' block of output channels */
static inline pc1_vecf pc1_post_lanes(const pc1_post_ops* P, Py_ssize_t c0,
                                      Py_ssize_t rows, pc1_vecf v) {
    float buf[sizeof(pc1_vecf) / sizeof(float)], pa[sizeof(pc1_vecf) / sizeof(float)];
    Py_ssize_t i;
    int k;
    pc1_store(buf, v);
    for (k = 0; k < P->n; k++) {
        for (i = 0; i < PC1_LANES; i++)
            pa[i] = P->vec[k] ? (i < rows ? P->vec[k][c0 + i] : 0.0f) : P->s[k][0];
        pc1_post_run(P->op[k], buf, 1, pc1_load(pa), pc1_splat(P->s[k][1]),
                     pc1_splat(P->s[k][2]), pc1_splat(P->s[k][3]));
    }
    return pc1_load(buf);
}

#endif
