/* pyconv1x1 int8 kernels: u8 activations x s8 weights, int32 accumulation, fused
   requantization. Included by the rendered _qkernels_<variant>.pyx (one module per ISA
   variant); every x86 module carries all x86 paths, each compiled for its own ISA with a
   target attribute, and picks one at run time from what the CPU has (pc1q_cpu_paths):

     PC1Q_AMX         AMX tdpbusd tiles: 32 pixels x 32 channels per call, 64-deep k
                      (Sapphire Rapids and later, where Linux grants the tile state);
                      its own activation layout (see the AMX section)
     PC1Q_AVX512VNNI  vpdpbusd on zmm: 8 output channels x 32 pixels = 16 accumulators
     PC1Q_AVXVNNI     vpdpbusd on ymm (VEX, AVX-VNNI): 4 channels x 16 pixels per pass
     PC1Q_AVX2        no VNNI: u8 and s8 widened to s16 (activations split into even and
                      odd bytes by an and and a shift, weights pre-widened at packing) and
                      vpmaddwd, which sums two s16 x s16 products into an int32:
                      |255 * -128 * 2| = 65280 cannot saturate (vpmaddwd only saturates
                      for two products of -32768 * -32768), so the path is exact; and
                      vpmaddubsw (u8 x s8 -> s16 pairs, twice the multiply-adds, which
                      would saturate at 2*255*127 in general) on the groups of 4 channels
                      where no pair can saturate, some channels flipped (pc1q_mk_avx2)
     PC1Q_AVX512BW    the AVX2 path's records and forms on zmm, 8 rows x 32 pixels per
                      pass (AVX-512F + BW without VNNI: Skylake-SP/X); after the VNNI
                      paths, before avx2
     PC1Q_C           portable C (auto-vectorised); the only path off x86

   Layouts. Inside a tile activations are [C4][TP][4] bytes: for each group of 4 channels,
   each pixel's 4 channel values in one 32-bit word (the operand vpdpbusd sums), channels
   past C padded with 0. Weights are packed per block of 8 output channels as
   [K4][8][4] s8 (rows past cout and k past K zero); the AVX2 path has its own
   records per block (pc1q_mk_avx2).
   A micro-kernel computes the int32 accumulators of one block x one 32-pixel panel into
   a small buffer; the epilogue (shared C) requantizes them into the next layer's tile
   layout, into u8 NCHW or into float32 NCHW. The AVX-512 VNNI path has fused kernels
   instead (pc1q_fused): the accumulators requantized in registers, no buffer. Modules
   built for AVX-512 or AVX2 run the gather and epilogues as explicit vector code (same
   results: see "the same three with explicit vectors").

   Arithmetic (pyconv1x1/quant/reference.py is the same in numpy):
     acc   = bias[o] + sum_k w[o,k] * x[k,p]                        exact int32
     u8:   v = (float)acc * scale[o];  v = v > lo-zp ? v : lo-zp;  v = v < hi-zp ? v : hi-zp
           y = rne(v) + zp                   (clamping before rounding = clamping after)
     f32:  y = (float)acc * scale[o] + fbias[o]     two roundings, never fused (the module
           is compiled with -ffp-contract=off)
     dq:   y = (float)((int32_t)u8 - dq_zp) * dq_scale   (u8 as above: the chain's uint8
           result dequantized in the epilogue, as pc1q_dequantize_task would)
   rne(v) + zp is one float addition (pc1q_rq) in round-to-nearest-even, which the
   thread pool's fp hook sets (and turns flush-to-zero off) around every task.
   QLayer checks |bias| + 255 * sum|w| < 2^31 per channel: no accumulator wraps. */
#ifndef PC1Q_H
#define PC1Q_H

#include <stdint.h>
#include <string.h>

#define PC1Q_MR 8   /* output channels per weight block */
#define PC1Q_NR 32  /* pixels per panel */

enum { PC1Q_C = 0, PC1Q_AVX2 = 1, PC1Q_AVXVNNI = 2, PC1Q_AVX512VNNI = 3, PC1Q_AMX = 4,
       PC1Q_AVX512BW = 5, PC1Q_NPATHS = 6 };

/* the x86 paths need AVX-VNNI and AMX intrinsics: gcc >= 11 or clang >= 12 (older
   compilers build the portable path only) */
#if defined(__GNUC__) && defined(__x86_64__) && \
    ((defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11))
#define PC1Q_X86 1
#include <immintrin.h>
#include <cpuid.h>
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif
#else
#define PC1Q_X86 0
#endif
#if defined(__GNUC__) && defined(__aarch64__)
#define PC1Q_ARM 1
#else
#define PC1Q_ARM 0
#endif

/* ---- floating point state: round to nearest even, no flush-to-zero ---------------- */
static unsigned int pc1q_fp_on(void) {
#if PC1Q_X86
    unsigned int old = _mm_getcsr();
    _mm_setcsr(old & ~(0x8040u | 0x6000u));  /* FTZ, DAZ off; RC = nearest */
    return old;
#elif PC1Q_ARM
    unsigned long old, want;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(old));
    want = old & ~((1ul << 24) | (3ul << 22));  /* FZ off; RMode = nearest */
    if (want != old) __asm__ __volatile__("msr fpcr, %0" : : "r"(want));
    return (unsigned int)old;
#else
    return 0;
#endif
}
static void pc1q_fp_restore(unsigned int old) {
#if PC1Q_X86
    _mm_setcsr(old);
#elif PC1Q_ARM
    unsigned long cur;
    __asm__ __volatile__("mrs %0, fpcr" : "=r"(cur));
    if (cur != (unsigned long)old) __asm__ __volatile__("msr fpcr, %0" : : "r"((unsigned long)old));
#else
    (void)old;
#endif
}

#if PC1Q_X86
/* AMX: the CPU has AMX-TILE and AMX-INT8 (cpuid 7.0 EDX bits 24, 25) and Linux grants
   this process the tile data state (arch_prctl ARCH_REQ_XCOMP_PERM, XTILEDATA = 18);
   asked once (gcc 12's __builtin_cpu_supports does not know AMX) */
static int pc1q_amx_enable(void) {
#if defined(__linux__)
    static int state = -1;
    unsigned int a, b, c, d;
    unsigned long perm = 0;
    if (state < 0) {
        state = 0;
        if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && ((d >> 24) & 1) && ((d >> 25) & 1)
                && syscall(SYS_arch_prctl, 0x1023, 18) == 0
                && syscall(SYS_arch_prctl, 0x1022, &perm) == 0 && ((perm >> 18) & 1))
            state = 1;
    }
    return state;
#else
    return 0;
#endif
}
#endif

/* paths this CPU (and OS) can run, as a bit set of 1 << PC1Q_* */
static int pc1q_cpu_paths(void) {
    int m = 1 << PC1Q_C;
#if PC1Q_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2")) m |= 1 << PC1Q_AVX2;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("avxvnni"))
        m |= 1 << PC1Q_AVXVNNI;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
            && __builtin_cpu_supports("avx512vnni"))
        m |= 1 << PC1Q_AVX512VNNI;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
        m |= 1 << PC1Q_AVX512BW;
    if ((m & (1 << PC1Q_AVX512VNNI)) && pc1q_amx_enable()) m |= 1 << PC1Q_AMX;
#endif
    return m;
}

/* x / in_scale -> u8 and the requantization: the clamp, then round half to even.
   After the clamp |v| <= 255, so v + 1.5 * 2^23 lies where floats are the integers: the
   addition rounds v half to even, exactly, and the sum's bits are 0x4B400000 + rne(v);
   adding zp to the bits and keeping the low byte gives rne(v) + zp, in [lo, hi]. */
#define PC1Q_MAGIC 12582912.0f  /* 1.5 * 2^23, bits 0x4B400000 */
static inline uint32_t pc1q_rq(float v, float flo, float fhi, uint32_t zp) {
    uint32_t u;
    v = v > flo ? v : flo;
    v = v < fhi ? v : fhi;
    v = v + PC1Q_MAGIC;
    memcpy(&u, &v, 4);
    return (u + zp) & 0xFFu;
}

typedef struct {
    const int8_t *w8;    /* [nb][K4][8][4] */
    const int16_t *w16;  /* the AVX2 path's blocks (pc1q_mk_avx2), or NULL */
    Py_ssize_t w16_stride;  /* bytes from one block's to the next */
    const int8_t *wamx;  /* AMX: [nb32][K64][2][16][16][4], or NULL */
    Py_ssize_t k64, nb32;
    const int32_t *bias; /* [nb * 8] */
    const float *scale;  /* [nb * 8] */
    const float *fbias;  /* [nb * 8] */
    Py_ssize_t k, cout, k4, nb;
    int32_t zp, lo, hi;
    int fits;            /* every |(float)acc * scale| < 2^30: see pc1q_rq4 */
} pc1q_layer;

/* ---- micro-kernels: acc[8][32] = bias + w_block . x_panel ------------------------- */
/* x: the panel's first word of channel group 0; xs: bytes from one channel group to the
   next; w: the block's [K4][8][4] */

static void pc1q_mk_c(const uint8_t *x, Py_ssize_t xs, const int8_t *w, const int16_t *w16,
                      Py_ssize_t k4, const int32_t *bias, int32_t *acc) {
    /* each channel group's bytes split into 4 rows of 16-bit values first, so that the
       row loops are plain vector multiply-adds the compiler vectorizes */
    int16_t xv[4][PC1Q_NR];
    Py_ssize_t kk;
    int r, p, j;
    (void)w16;
    for (r = 0; r < PC1Q_MR; r++)
        for (p = 0; p < PC1Q_NR; p++) acc[r * PC1Q_NR + p] = bias[r];
    for (kk = 0; kk < k4; kk++, x += xs, w += 4 * PC1Q_MR) {
        for (j = 0; j < 4; j++)
            for (p = 0; p < PC1Q_NR; p++) xv[j][p] = x[4 * p + j];
        for (r = 0; r < PC1Q_MR; r++) {
            int32_t w0 = w[4 * r], w1 = w[4 * r + 1], w2 = w[4 * r + 2], w3 = w[4 * r + 3];
            int32_t *a = acc + r * PC1Q_NR;
            for (p = 0; p < PC1Q_NR; p++)
                a[p] += xv[0][p] * w0 + xv[1][p] * w1 + xv[2][p] * w2 + xv[3][p] * w3;
        }
    }
}

#if PC1Q_X86
#define PC1Q_T512 __attribute__((target("avx512f,avx512bw,avx512dq,avx512vnni")))
/* the AVX-512BW path (and the requantization helpers both AVX-512 paths inline) */
#define PC1Q_TBW __attribute__((target("avx512f,avx512bw")))
/* declares c<r><h> = bias[r] + row r of the block . pixels 16h .. 16h+15 (named
   variables, which compilers keep in registers; an array of them they may not) */
#define PC1Q_ACC512(x_, xs_, w_, k4_, bias_)                                               \
    __m512i c00, c01, c10, c11, c20, c21, c30, c31, c40, c41, c50, c51, c60, c61, c70, c71; \
    {                                                                                       \
        const uint8_t *xp_ = (x_);                                                          \
        const int8_t *wp_ = (w_);                                                           \
        const int32_t *bs_ = (bias_);                                                       \
        Py_ssize_t kk_, k4v_ = (k4_), xsv_ = (xs_);                                         \
        __m512i x0_, x1_, wb_;                                                              \
        c00 = c01 = _mm512_set1_epi32(bs_[0]);                                              \
        c10 = c11 = _mm512_set1_epi32(bs_[1]);                                              \
        c20 = c21 = _mm512_set1_epi32(bs_[2]);                                              \
        c30 = c31 = _mm512_set1_epi32(bs_[3]);                                              \
        c40 = c41 = _mm512_set1_epi32(bs_[4]);                                              \
        c50 = c51 = _mm512_set1_epi32(bs_[5]);                                              \
        c60 = c61 = _mm512_set1_epi32(bs_[6]);                                              \
        c70 = c71 = _mm512_set1_epi32(bs_[7]);                                              \
        for (kk_ = 0; kk_ < k4v_; kk_++, xp_ += xsv_, wp_ += 32) {                          \
            const int32_t *wd_ = (const int32_t *)wp_;                                      \
            x0_ = _mm512_loadu_si512((const void *)xp_);                                    \
            x1_ = _mm512_loadu_si512((const void *)(xp_ + 64));                             \
            PC1Q_ROW512(0, c00, c01) PC1Q_ROW512(1, c10, c11) PC1Q_ROW512(2, c20, c21)      \
            PC1Q_ROW512(3, c30, c31) PC1Q_ROW512(4, c40, c41) PC1Q_ROW512(5, c50, c51)      \
            PC1Q_ROW512(6, c60, c61) PC1Q_ROW512(7, c70, c71)                               \
        }                                                                                   \
    }
#define PC1Q_ROW512(r, a0, a1)                     \
    wb_ = _mm512_set1_epi32(wd_[r]);              \
    a0 = _mm512_dpbusd_epi32(a0, x0_, wb_);       \
    a1 = _mm512_dpbusd_epi32(a1, x1_, wb_);

PC1Q_T512
static void pc1q_mk_avx512vnni(const uint8_t *x, Py_ssize_t xs, const int8_t *w,
                               const int16_t *w16, Py_ssize_t k4, const int32_t *bias,
                               int32_t *acc) {
    (void)w16;
    PC1Q_ACC512(x, xs, w, k4, bias)
#define PC1Q_OUT(r, a0, a1)                                  \
    _mm512_storeu_si512((void *)(acc + 32 * r), a0);         \
    _mm512_storeu_si512((void *)(acc + 32 * r + 16), a1);
    PC1Q_OUT(0, c00, c01) PC1Q_OUT(1, c10, c11) PC1Q_OUT(2, c20, c21)
    PC1Q_OUT(3, c30, c31) PC1Q_OUT(4, c40, c41) PC1Q_OUT(5, c50, c51)
    PC1Q_OUT(6, c60, c61) PC1Q_OUT(7, c70, c71)
#undef PC1Q_OUT
}

/* 4 rows x 16 pixels per pass (8 of the 16 ymm accumulate), 4 passes per panel */
__attribute__((target("avx2,avxvnni")))
static void pc1q_mk_avxvnni(const uint8_t *x0, Py_ssize_t xs, const int8_t *w0,
                            const int16_t *w16, Py_ssize_t k4, const int32_t *bias,
                            int32_t *acc) {
    int rh, ph;
    (void)w16;
    for (rh = 0; rh < 2; rh++) {
        for (ph = 0; ph < 2; ph++) {
            const uint8_t *x = x0 + 64 * ph;
            const int32_t *wd = (const int32_t *)w0 + 4 * rh;
            const int32_t *bs = bias + 4 * rh;
            __m256i c00, c01, c10, c11, c20, c21, c30, c31, a, bb, b;
            Py_ssize_t kk;
            int32_t *o = acc + 4 * rh * 32 + 16 * ph;
            c00 = c01 = _mm256_set1_epi32(bs[0]);
            c10 = c11 = _mm256_set1_epi32(bs[1]);
            c20 = c21 = _mm256_set1_epi32(bs[2]);
            c30 = c31 = _mm256_set1_epi32(bs[3]);
            for (kk = 0; kk < k4; kk++, x += xs, wd += 8) {
                a = _mm256_loadu_si256((const __m256i *)x);
                bb = _mm256_loadu_si256((const __m256i *)(x + 32));
#define PC1Q_ROW(r, a0, a1)                              \
                b = _mm256_set1_epi32(wd[r]);           \
                a0 = _mm256_dpbusd_avx_epi32(a0, a, b); \
                a1 = _mm256_dpbusd_avx_epi32(a1, bb, b);
                PC1Q_ROW(0, c00, c01) PC1Q_ROW(1, c10, c11)
                PC1Q_ROW(2, c20, c21) PC1Q_ROW(3, c30, c31)
#undef PC1Q_ROW
            }
#define PC1Q_OUT(r, a0, a1)                                          \
            _mm256_storeu_si256((__m256i *)(o + 32 * r), a0);       \
            _mm256_storeu_si256((__m256i *)(o + 32 * r + 8), a1);
            PC1Q_OUT(0, c00, c01) PC1Q_OUT(1, c10, c11)
            PC1Q_OUT(2, c20, c21) PC1Q_OUT(3, c30, c31)
#undef PC1Q_OUT
        }
    }
}

/* 8 rows x 8 pixels per pass, 4 passes per panel, one ymm accumulator per row whose
   lanes are the pass's 8 pixels in order (no horizontal adds). Each group of 4 input
   channels (k4) of a block runs in one of two forms, chosen at packing (_pack_avx2 in
   _qkernels.pyx.tp); w16 is the block's record (pc1q_avx2_blk), groups in any order:

   maddubs form, 32 multiply-adds per vpmaddubsw + vpmaddwd + vpaddd: vpmaddubsw (u8 x
   s8 -> the s16 sums of the byte pairs 0 1 and 2 3) then vpmaddwd by 1 adds the two
   pairs into the int32 lane. Exact where no pair can saturate: |x0 w0 + x1 w1| <=
   255 * 128 = 32640 if |w0| + |w1| <= 128, or if w0 and w1 have opposite signs (0 <= x
   <= 255: the sum lies between 255 * w0 and 255 * w1, each of magnitude <= 255 * 128
   as no -128 is negated). To get there a group may pair its channels otherwise (0 2,
   1 3 or 0 3, 1 2: a vpshufb of the pixel words, pc1q_avx2_perm) and flip a channel
   of a pair: x -> 255 - x (xor 0xFF, the group's mask), w -> -w, its 255 * w summed
   into the block's constant corr. A group takes this form when one pairing and one
   choice of flips makes every pair of its 8 rows safe (7-bit weights: always, as is).

   exact form for the other groups: a pixel's word of 4 channels c0 c1 c2 c3, read as
   two 16-bit halves, splits with an and and a shift into (c0, c2) and (c1, c3) as s16
   pairs, the group's weights are s16 (w0, w2, w1, w3) per row, and two vpmaddwd
   against the row's two broadcast pairs sum the pixel's 4 products (vpmaddwd cannot
   saturate on these). 16 multiply-adds per vpmaddwd + vpaddd. */
typedef struct {
    int32_t nub, nflip, nperm, nex;  /* groups: maddubs form (the first as they are,
                                        then nflip with flips, then nperm paired
                                        otherwise), exact form */
    int32_t seq, pad[3];           /* the groups as they are are 0, 1, 2 ... in order */
    int32_t corr[8];               /* 255 * (sum of the flipped weights) per row */
} pc1q_avx2_blk;                   /* then nub pc1q_avx2_ub, then nex pc1q_avx2_ex */
typedef struct { int32_t g, mask, perm, pad; int32_t w[8]; } pc1q_avx2_ub;
typedef struct { int32_t g, pad; int32_t w[16]; } pc1q_avx2_ex;

/* vpshufb controls of the pairings 0 1 2 3 (unused), 0 2 1 3, 0 3 1 2 in every word */
#define PC1Q_P4(a, b, c, d) a, b, c, d, a + 4, b + 4, c + 4, d + 4, a + 8, b + 8, c + 8, \
    d + 8, a + 12, b + 12, c + 12, d + 12
static const int8_t pc1q_avx2_perm[3][32] __attribute__((aligned(32))) = {
    {PC1Q_P4(0, 1, 2, 3), PC1Q_P4(0, 1, 2, 3)},
    {PC1Q_P4(0, 2, 1, 3), PC1Q_P4(0, 2, 1, 3)},
    {PC1Q_P4(0, 3, 1, 2), PC1Q_P4(0, 3, 1, 2)}};
#undef PC1Q_P4

/* PC1Q_AVX512BW (AVX-512BW, no VNNI: Skylake-SP/X, Cascade Lake without VNNI): the same
   records and the same two forms on zmm, 8 rows x 32 pixels per pass (two vectors of
   16 pixels, 16 of the 32 zmm accumulating: a weight word broadcast once serves both),
   one pass per panel. vpshufb shuffles within 128-bit lanes, so the pairing controls
   (one lane's 16 bytes) are broadcast to the 4 lanes; the flip masks and weight words
   are broadcast as on ymm. Both paths' passes are the macros below over the vector
   width W (256: AVX2, 512: AVX-512BW; the intrinsics _mm<W>_...) and the vectors per
   pass NV (1 or 2: PC1Q_V2_<NV>(...) is the second vector's code, or nothing); a pass
   covers NV * W / 32 pixels. */
#define PC1Q_V2_1(...)
#define PC1Q_V2_2(...) __VA_ARGS__
#define PC1Q_AVX2_PERM256(i) _mm256_load_si256((const __m256i *)pc1q_avx2_perm[i])
#define PC1Q_AVX2_PERM512(i) \
    _mm512_broadcast_i32x4(_mm_load_si128((const __m128i *)pc1q_avx2_perm[i]))
#define PC1Q_AVX2_LOAD(W, p) _mm##W##_loadu_si##W((const void *)(p))
/* v (and v2: the next W / 32 pixels) = the group's words at p, flipped by the mask
   m_ and paired by the control k_ when given (PC1Q_AVX2_FLIP, PC1Q_AVX2_PAIR) */
#define PC1Q_AVX2_VLOAD(W, NV, p, OP)                                                   \
    v = OP(W, PC1Q_AVX2_LOAD(W, p));                                                    \
    PC1Q_V2_##NV(v2 = OP(W, PC1Q_AVX2_LOAD(W, (p) + W / 8));)
#define PC1Q_AVX2_ASIS(W, a) a
#define PC1Q_AVX2_FLIP(W, a) _mm##W##_xor_si##W(a, m_)
#define PC1Q_AVX2_PAIR(W, a) _mm##W##_xor_si##W(_mm##W##_shuffle_epi8(a, k_), m_)

/* declares c0 .. c7 (and d0 .. d7 for NV = 2) = bias + corr + rows 0 .. 7 of block
   record B . the NV * W / 32 pixels at x (lanes: pixels in order; d: the second
   vector's); B, ub0, ex0, lo8, one, xs and bc in scope */
#define PC1Q_AVX2_PASS(W, NV, x_)                                                       \
    __m##W##i c0, c1, c2, c3, c4, c5, c6, c7                                            \
        PC1Q_V2_##NV(, d0, d1, d2, d3, d4, d5, d6, d7);                                 \
    {                                                                                   \
        const uint8_t *x = (x_);                                                        \
        const pc1q_avx2_ub *u, *ue = ub0 + B->nub, *up = ue - B->nperm, *uf = up - B->nflip; \
        const pc1q_avx2_ex *e, *ee = ex0 + B->nex;                                      \
        __m##W##i v, xe, xo PC1Q_V2_##NV(, v2, xe2, xo2);                               \
        PC1Q_AVX2_INIT(W, NV, 0) PC1Q_AVX2_INIT(W, NV, 1) PC1Q_AVX2_INIT(W, NV, 2)      \
        PC1Q_AVX2_INIT(W, NV, 3) PC1Q_AVX2_INIT(W, NV, 4) PC1Q_AVX2_INIT(W, NV, 5)      \
        PC1Q_AVX2_INIT(W, NV, 6) PC1Q_AVX2_INIT(W, NV, 7)                               \
        if (B->seq) {  /* no index to read, no multiply */                              \
            const uint8_t *xp = x;                                                      \
            for (u = ub0; u < uf; u++, xp += xs) {                                      \
                PC1Q_AVX2_VLOAD(W, NV, xp, PC1Q_AVX2_ASIS)                              \
                PC1Q_AVX2_UROWS(W, NV)                                                  \
            }                                                                           \
        } else {                                                                        \
            for (u = ub0; u < uf; u++) {                                                \
                PC1Q_AVX2_VLOAD(W, NV, x + u->g * xs, PC1Q_AVX2_ASIS)                   \
                PC1Q_AVX2_UROWS(W, NV)                                                  \
            }                                                                           \
        }                                                                               \
        for (; u < up; u++) {                                                           \
            const __m##W##i m_ = _mm##W##_set1_epi32(u->mask);                          \
            PC1Q_AVX2_VLOAD(W, NV, x + u->g * xs, PC1Q_AVX2_FLIP)                       \
            PC1Q_AVX2_UROWS(W, NV)                                                      \
        }                                                                               \
        for (; u < ue; u++) {                                                           \
            const __m##W##i m_ = _mm##W##_set1_epi32(u->mask);                          \
            const __m##W##i k_ = PC1Q_AVX2_PERM##W(u->perm);                            \
            PC1Q_AVX2_VLOAD(W, NV, x + u->g * xs, PC1Q_AVX2_PAIR)                       \
            PC1Q_AVX2_UROWS(W, NV)                                                      \
        }                                                                               \
        for (e = ex0; e < ee; e++) {                                                    \
            PC1Q_AVX2_VLOAD(W, NV, x + e->g * xs, PC1Q_AVX2_ASIS)                       \
            xe = _mm##W##_and_si##W(v, lo8);                                            \
            xo = _mm##W##_srli_epi16(v, 8);                                             \
            PC1Q_V2_##NV(xe2 = _mm##W##_and_si##W(v2, lo8);                             \
                         xo2 = _mm##W##_srli_epi16(v2, 8);)                             \
            PC1Q_AVX2_EROWS(W, NV)                                                      \
        }                                                                               \
    }
#define PC1Q_AVX2_INIT(W, NV, r)                                                        \
    c##r = _mm##W##_set1_epi32(bc[r]);                                                  \
    PC1Q_V2_##NV(d##r = c##r;)
#define PC1Q_AVX2_UROW(W, NV, r)                                                        \
    {                                                                                   \
        const __m##W##i w_ = _mm##W##_set1_epi32(u->w[r]);                              \
        c##r = _mm##W##_add_epi32(c##r, _mm##W##_madd_epi16(                            \
                   _mm##W##_maddubs_epi16(v, w_), one));                                \
        PC1Q_V2_##NV(d##r = _mm##W##_add_epi32(d##r, _mm##W##_madd_epi16(               \
                         _mm##W##_maddubs_epi16(v2, w_), one));)                        \
    }
#define PC1Q_AVX2_UROWS(W, NV)                                                          \
    PC1Q_AVX2_UROW(W, NV, 0) PC1Q_AVX2_UROW(W, NV, 1) PC1Q_AVX2_UROW(W, NV, 2)          \
    PC1Q_AVX2_UROW(W, NV, 3) PC1Q_AVX2_UROW(W, NV, 4) PC1Q_AVX2_UROW(W, NV, 5)          \
    PC1Q_AVX2_UROW(W, NV, 6) PC1Q_AVX2_UROW(W, NV, 7)
#define PC1Q_AVX2_EROW(W, NV, r)                                                        \
    {                                                                                   \
        const __m##W##i w0_ = _mm##W##_set1_epi32(e->w[2 * r]);                         \
        const __m##W##i w1_ = _mm##W##_set1_epi32(e->w[2 * r + 1]);                     \
        c##r = _mm##W##_add_epi32(c##r, _mm##W##_madd_epi16(xe, w0_));                  \
        c##r = _mm##W##_add_epi32(c##r, _mm##W##_madd_epi16(xo, w1_));                  \
        PC1Q_V2_##NV(d##r = _mm##W##_add_epi32(d##r, _mm##W##_madd_epi16(xe2, w0_));    \
                     d##r = _mm##W##_add_epi32(d##r, _mm##W##_madd_epi16(xo2, w1_));)   \
    }
#define PC1Q_AVX2_EROWS(W, NV)                                                          \
    PC1Q_AVX2_EROW(W, NV, 0) PC1Q_AVX2_EROW(W, NV, 1) PC1Q_AVX2_EROW(W, NV, 2)          \
    PC1Q_AVX2_EROW(W, NV, 3) PC1Q_AVX2_EROW(W, NV, 4) PC1Q_AVX2_EROW(W, NV, 5)          \
    PC1Q_AVX2_EROW(W, NV, 6) PC1Q_AVX2_EROW(W, NV, 7)
/* the block record's parts; w16: the block's record */
#define PC1Q_AVX2_DECL(W, w16_)                                                         \
    const pc1q_avx2_blk *B = (const pc1q_avx2_blk *)(w16_);                             \
    const pc1q_avx2_ub *ub0 = (const pc1q_avx2_ub *)(B + 1);                            \
    const pc1q_avx2_ex *ex0 = (const pc1q_avx2_ex *)(ub0 + B->nub);                     \
    const __m##W##i lo8 = _mm##W##_set1_epi16(0x00FF), one = _mm##W##_set1_epi16(1);   \
    int32_t bc[8] __attribute__((aligned(32)));

/* bc = bias + corr, once per call: the passes broadcast it from memory (a load each,
   where a broadcast of a computed scalar takes two shuffle-port uops) */
#define PC1Q_AVX2_BIAS(bias_)                                                           \
    _mm256_store_si256((__m256i *)bc,                                                   \
        _mm256_add_epi32(_mm256_loadu_si256((const __m256i *)(bias_)),                  \
                         _mm256_loadu_si256((const __m256i *)B->corr)));
/* pixels per pass; row r's accumulators stored at o (row stride PC1Q_NR) */
#define PC1Q_AVX2_PX(W, NV) (NV * W / 32)
#define PC1Q_AVX2_ST(W, NV, o, r)                                                       \
    _mm##W##_storeu_si##W((void *)((o) + r * PC1Q_NR), c##r);                           \
    PC1Q_V2_##NV(_mm##W##_storeu_si##W((void *)((o) + r * PC1Q_NR + W / 32), d##r);)

/* the micro-kernel of width W, NV vectors per pass (target T) */
#define PC1Q_AVX2_MK(W, NV, T, name)                                                    \
T static void name(const uint8_t *x0, Py_ssize_t xs, const int8_t *w8,                  \
                   const int16_t *w16, Py_ssize_t k4, const int32_t *bias,              \
                   int32_t *acc) {                                                      \
    PC1Q_AVX2_DECL(W, w16)                                                              \
    int pq;                                                                             \
    (void)w8;                                                                           \
    (void)k4;                                                                           \
    PC1Q_AVX2_BIAS(bias)                                                                \
    for (pq = 0; pq < PC1Q_NR / PC1Q_AVX2_PX(W, NV); pq++) {                            \
        int32_t *out = acc + PC1Q_AVX2_PX(W, NV) * pq;                                  \
        PC1Q_AVX2_PASS(W, NV, x0 + 4 * PC1Q_AVX2_PX(W, NV) * pq)                        \
        PC1Q_AVX2_ST(W, NV, out, 0) PC1Q_AVX2_ST(W, NV, out, 1)                         \
        PC1Q_AVX2_ST(W, NV, out, 2) PC1Q_AVX2_ST(W, NV, out, 3)                         \
        PC1Q_AVX2_ST(W, NV, out, 4) PC1Q_AVX2_ST(W, NV, out, 5)                         \
        PC1Q_AVX2_ST(W, NV, out, 6) PC1Q_AVX2_ST(W, NV, out, 7)                         \
    }                                                                                   \
}
#define PC1Q_T256 __attribute__((target("avx2")))
PC1Q_AVX2_MK(256, 1, PC1Q_T256, pc1q_mk_avx2)
PC1Q_AVX2_MK(512, 2, PC1Q_TBW, pc1q_mk_avx512bw)
#endif

typedef void (*pc1q_mk_fn)(const uint8_t *, Py_ssize_t, const int8_t *, const int16_t *,
                           Py_ssize_t, const int32_t *, int32_t *);

static pc1q_mk_fn pc1q_kernel(int path) {
#if PC1Q_X86
    if (path == PC1Q_AVX512VNNI) return pc1q_mk_avx512vnni;
    if (path == PC1Q_AVXVNNI) return pc1q_mk_avxvnni;
    if (path == PC1Q_AVX2) return pc1q_mk_avx2;
    if (path == PC1Q_AVX512BW) return pc1q_mk_avx512bw;
#endif
    (void)path;
    return pc1q_mk_c;
}

/* which paths were compiled into this module */
static int pc1q_built_paths(void) {
#if PC1Q_X86
    return (1 << PC1Q_C) | (1 << PC1Q_AVX2) | (1 << PC1Q_AVXVNNI) | (1 << PC1Q_AVX512VNNI)
           | (1 << PC1Q_AMX) | (1 << PC1Q_AVX512BW);
#else
    return 1 << PC1Q_C;
#endif
}

/* ---- gather: NCHW pixels p0 .. p0+valid of one image -> tile [C4][np*32][4] -------- */
static void pc1q_gather_u8(const uint8_t *x, Py_ssize_t c, Py_ssize_t P, Py_ssize_t p0,
                           Py_ssize_t valid, Py_ssize_t width, uint8_t *t) {
    Py_ssize_t g, p, c4 = (c + 3) / 4;
    for (g = 0; g < c4; g++) {
        uint32_t *o = (uint32_t *)(t + 4 * g * width);
        const uint8_t *a = x + 4 * g * P + p0;
        if (4 * g + 4 <= c) {
            const uint8_t *b = a + P, *cc = b + P, *d = cc + P;
            for (p = 0; p < valid; p++)
                o[p] = (uint32_t)a[p] | ((uint32_t)b[p] << 8) | ((uint32_t)cc[p] << 16)
                       | ((uint32_t)d[p] << 24);
        } else {
            Py_ssize_t j, left = c - 4 * g;
            for (p = 0; p < valid; p++) {
                uint32_t v = 0;
                for (j = 0; j < left; j++) v |= (uint32_t)a[j * P + p] << (8 * j);
                o[p] = v;
            }
        }
        for (p = valid; p < width; p++) o[p] = 0;
    }
}

static inline void pc1q_quantize_run(const float *x, uint8_t *q, Py_ssize_t m,
                                     float scale, int32_t zp) {
    Py_ssize_t i;
    float flo = (float)(0 - zp), fhi = (float)(255 - zp);
    uint32_t uzp = (uint32_t)zp;
    for (i = 0; i < m; i++) q[i] = (uint8_t)pc1q_rq(x[i] / scale, flo, fhi, uzp);
}

/* the same from float32 NCHW, quantized on the way (q goes through `row`, 4 x width) */
static void pc1q_gather_f32_c(const float *x, Py_ssize_t c, Py_ssize_t P, Py_ssize_t p0,
                            Py_ssize_t valid, Py_ssize_t width, float scale, int32_t zp,
                            uint8_t *row, uint8_t *t) {
    Py_ssize_t g, p, j, c4 = (c + 3) / 4;
    for (g = 0; g < c4; g++) {
        uint32_t *o = (uint32_t *)(t + 4 * g * width);
        Py_ssize_t left = c - 4 * g;
        if (left > 4) left = 4;
        for (j = 0; j < left; j++)
            pc1q_quantize_run(x + (4 * g + j) * P + p0, row + j * width, valid, scale, zp);
        for (; j < 4; j++) memset(row + j * width, 0, (size_t)valid);
        for (p = 0; p < valid; p++)
            o[p] = (uint32_t)row[p] | ((uint32_t)row[width + p] << 8)
                   | ((uint32_t)row[2 * width + p] << 16) | ((uint32_t)row[3 * width + p] << 24);
        for (p = valid; p < width; p++) o[p] = 0;
    }
}

/* ---- epilogues of one block x one panel -------------------------------------------- */
/* into the next layer's tile: groups 2b and 2b+1 (the second only if the layer has it) */
static void pc1q_epi_tile_c(const pc1q_layer *L, Py_ssize_t b, const int32_t *acc,
                          uint8_t *t, Py_ssize_t width, Py_ssize_t pan) {
    int gi, j, p;
    Py_ssize_t c4 = (L->cout + 3) / 4;
    float flo = (float)(L->lo - L->zp), fhi = (float)(L->hi - L->zp);
    uint32_t uzp = (uint32_t)L->zp;
    for (gi = 0; gi < 2 && 2 * b + gi < c4; gi++) {
        uint32_t *o = (uint32_t *)(t + 4 * (2 * b + gi) * width) + pan * PC1Q_NR;
        uint32_t word[PC1Q_NR];
        for (p = 0; p < PC1Q_NR; p++) word[p] = 0;
        for (j = 0; j < 4; j++) {
            const int32_t *a = acc + (4 * gi + j) * PC1Q_NR;
            float s = L->scale[8 * b + 4 * gi + j];
            for (p = 0; p < PC1Q_NR; p++)
                word[p] |= pc1q_rq((float)a[p] * s, flo, fhi, uzp) << (8 * j);
        }
        for (p = 0; p < PC1Q_NR; p++) o[p] = word[p];
    }
}

/* out_float of a run whose uint8 result is dequantized in the epilogue (y float32) */
#define PC1Q_OUT_DQ 2

/* into u8 or f32 NCHW rows (y: the image's output, pixel p0 of the panel) */
static void pc1q_epi_out_c(const pc1q_layer *L, Py_ssize_t b, const int32_t *acc, void *y,
                         int out_float, Py_ssize_t P, Py_ssize_t p0, Py_ssize_t n,
                         float dqs, int32_t dqz) {
    int r;
    Py_ssize_t p;
    float flo = (float)(L->lo - L->zp), fhi = (float)(L->hi - L->zp);
    uint32_t uzp = (uint32_t)L->zp;
    for (r = 0; r < PC1Q_MR && 8 * b + r < L->cout; r++) {
        Py_ssize_t o = 8 * b + r;
        const int32_t *a = acc + r * PC1Q_NR;
        float s = L->scale[o];
        if (out_float == PC1Q_OUT_DQ) {
            float *yr = (float *)y + o * P + p0;
            for (p = 0; p < n; p++)
                yr[p] = (float)((int32_t)pc1q_rq((float)a[p] * s, flo, fhi, uzp) - dqz) * dqs;
        } else if (out_float) {
            float *yr = (float *)y + o * P + p0, fb = L->fbias[o];
            for (p = 0; p < n; p++) yr[p] = (float)a[p] * s + fb;
        } else {
            uint8_t *yr = (uint8_t *)y + o * P + p0;
            for (p = 0; p < n; p++) yr[p] = (uint8_t)pc1q_rq((float)a[p] * s, flo, fhi, uzp);
        }
    }
}

/* ---- the same three with explicit vectors, in modules built for AVX-512 or AVX2 -----
   Same results, bit for bit:
   - a requantization clamps v = (float)acc * scale to [lo - zp, hi - zp] as pc1q_rq does
     (max and min with the bound second: NaN never occurs here, and a clamped value is the
     bound), then rounds half to even with vcvtps2dq (the rounding mode the pool's fp hook
     sets; |v| <= 255 fits) where pc1q_rq adds 1.5 * 2^23: the same integer. Four rows'
     integers in [-255, 255] pack to 16-bit (exact), + zp (exact, in [0, 255]), pack to
     bytes (exact) and one in-lane byte shuffle turns [row][4 pixels] into the tile's
     [pixel][4 rows] words.
   - the dequantizing store rounds with vroundps (nearest even) and adds zp - dq_zp as a
     float: integers below 2^9, exact, so (float)(q - dq_zp) is the same value.
   - the gather quantizes x as pc1q_quantize_run does (a multiply, chunks of 16 pixels
   with a half-integer within PC1Q_QEPS done again with the division). */
#define PC1Q_QEPS (1.0f / 4096)
#if PC1Q_X86 && defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512DQ__)
#define PC1Q_VEC 16
typedef __m512 pc1q_vf;
typedef __m512i pc1q_vi;
#define pc1q_set1f _mm512_set1_ps
#define pc1q_set1i _mm512_set1_epi32
#define pc1q_mulf _mm512_mul_ps
#define pc1q_divf _mm512_div_ps
#define pc1q_addf _mm512_add_ps
#define pc1q_maxf _mm512_max_ps
#define pc1q_minf _mm512_min_ps
#define pc1q_cvtif _mm512_cvtepi32_ps
#define pc1q_cvtfi _mm512_cvtps_epi32
#define pc1q_roundf(v) _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define pc1q_loadi(p) _mm512_loadu_si512((const void *)(p))
#define pc1q_storei(p, v) _mm512_storeu_si512((void *)(p), v)
#define pc1q_set1b _mm512_set1_epi8
#define pc1q_maxb _mm512_max_epu8
#define pc1q_minb _mm512_min_epu8
static inline pc1q_vi pc1q_pack4(pc1q_vi r0, pc1q_vi r1, pc1q_vi r2, pc1q_vi r3,
                                 pc1q_vi zp16) {
    const __m512i tr = _mm512_set4_epi32(0x0F0B0703, 0x0E0A0602, 0x0D090501, 0x0C080400);
    __m512i a = _mm512_adds_epi16(_mm512_packs_epi32(r0, r1), zp16);
    __m512i b = _mm512_adds_epi16(_mm512_packs_epi32(r2, r3), zp16);
    return _mm512_shuffle_epi8(_mm512_packus_epi16(a, b), tr);
}
/* lanes 0 .. n-1 (n <= 16) */
#define PC1Q_MASK(n) ((__mmask16)((n) >= 16 ? 0xFFFF : (1u << (n)) - 1))
/* the first n of 16 floats, the others 0 */
static inline pc1q_vf pc1q_loadf_n(const float *p, Py_ssize_t n) {
    return _mm512_maskz_loadu_ps(PC1Q_MASK(n), p);
}
static inline void pc1q_storef_n(float *p, pc1q_vf v, Py_ssize_t n) {
    _mm512_mask_storeu_ps(p, PC1Q_MASK(n), v);
}
static inline pc1q_vi pc1q_keep_n(pc1q_vi v, Py_ssize_t n) {
    return _mm512_maskz_mov_epi32(PC1Q_MASK(n), v);
}
/* dist: the largest |c - rne(c)| so far per lane (c finite; vrangeps: the larger
   magnitude, sign cleared); near: whether some lane came within PC1Q_QEPS of a
   half-integer (or is one) */
static inline pc1q_vf pc1q_dist(pc1q_vf dist, pc1q_vf c) {
    return _mm512_range_ps(dist, _mm512_reduce_ps(c, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                           0x0B);
}
static inline int pc1q_near(pc1q_vf dist) {
    return _mm512_cmp_ps_mask(dist, _mm512_set1_ps(0.5f - PC1Q_QEPS), _CMP_GE_OQ) != 0;
}
#elif PC1Q_X86 && defined(__AVX2__)
#define PC1Q_VEC 8
typedef __m256 pc1q_vf;
typedef __m256i pc1q_vi;
#define pc1q_set1f _mm256_set1_ps
#define pc1q_set1i _mm256_set1_epi32
#define pc1q_mulf _mm256_mul_ps
#define pc1q_divf _mm256_div_ps
#define pc1q_addf _mm256_add_ps
#define pc1q_maxf _mm256_max_ps
#define pc1q_minf _mm256_min_ps
#define pc1q_cvtif _mm256_cvtepi32_ps
#define pc1q_cvtfi _mm256_cvtps_epi32
#define pc1q_roundf(v) _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)
#define pc1q_loadi(p) _mm256_loadu_si256((const __m256i *)(p))
#define pc1q_storei(p, v) _mm256_storeu_si256((__m256i *)(p), v)
#define pc1q_set1b _mm256_set1_epi8
#define pc1q_maxb _mm256_max_epu8
#define pc1q_minb _mm256_min_epu8
static inline pc1q_vi pc1q_pack4(pc1q_vi r0, pc1q_vi r1, pc1q_vi r2, pc1q_vi r3,
                                 pc1q_vi zp16) {
    const __m256i tr = _mm256_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
                                        0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    __m256i a = _mm256_adds_epi16(_mm256_packs_epi32(r0, r1), zp16);
    __m256i b = _mm256_adds_epi16(_mm256_packs_epi32(r2, r3), zp16);
    return _mm256_shuffle_epi8(_mm256_packus_epi16(a, b), tr);
}
/* all-ones in lanes 0 .. n-1 (n <= 8) */
static inline __m256i pc1q_lanes(Py_ssize_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32((int)(n > 8 ? 8 : n)),
                              _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
static inline pc1q_vf pc1q_loadf_n(const float *p, Py_ssize_t n) {
    return n >= 8 ? _mm256_loadu_ps(p) : _mm256_maskload_ps(p, pc1q_lanes(n));
}
static inline void pc1q_storef_n(float *p, pc1q_vf v, Py_ssize_t n) {
    if (n >= 8) _mm256_storeu_ps(p, v);
    else _mm256_maskstore_ps(p, pc1q_lanes(n), v);
}
static inline pc1q_vi pc1q_keep_n(pc1q_vi v, Py_ssize_t n) {
    return n >= 8 ? v : _mm256_and_si256(v, pc1q_lanes(n));
}
static inline pc1q_vf pc1q_dist(pc1q_vf dist, pc1q_vf c) {
    __m256 d = _mm256_sub_ps(c, pc1q_roundf(c));
    return _mm256_max_ps(dist, _mm256_andnot_ps(_mm256_set1_ps(-0.0f), d));
}
static inline int pc1q_near(pc1q_vf dist) {
    return _mm256_movemask_ps(_mm256_cmp_ps(dist, _mm256_set1_ps(0.5f - PC1Q_QEPS),
                                            _CMP_GE_OQ)) != 0;
}
#endif

#ifdef PC1Q_VEC
/* float32 NCHW pixels p0 .. p0+valid -> tile words, quantized (see above) */
static void pc1q_gather_f32(const float *x, Py_ssize_t c, Py_ssize_t P, Py_ssize_t p0,
                            Py_ssize_t valid, Py_ssize_t width, float scale, int32_t zp,
                            uint8_t *row, uint8_t *t) {
    const float r = 1.0f / scale;
    const int fast = r >= 1.1754944e-38f && r <= 3.4028235e+38f;  /* normal: see above */
    const pc1q_vf vr = pc1q_set1f(r), vs = pc1q_set1f(scale);
    const pc1q_vf flo = pc1q_set1f((float)(0 - zp)), fhi = pc1q_set1f((float)(255 - zp));
    const pc1q_vi zp16 = pc1q_set1i(zp * 0x10001);  /* zp in each 16-bit half */
    const pc1q_vi nzp = pc1q_set1i(-zp);
    Py_ssize_t g, p, j, c4 = (c + 3) / 4, n;
    (void)row;
    for (g = 0; g < c4; g++) {
        uint32_t *o = (uint32_t *)(t + 4 * g * width);
        const float *xg = x + 4 * g * P + p0;
        Py_ssize_t left = c - 4 * g;
        if (left > 4) left = 4;
        for (p = 0; p < valid; p += PC1Q_VEC) {
            pc1q_vf z[4], dist = pc1q_set1f(0.0f);
            pc1q_vi ri[4], w;
            n = valid - p;
            for (j = 0; j < left; j++) {
                pc1q_vf v = pc1q_loadf_n(xg + j * P + p, n);
                z[j] = pc1q_minf(pc1q_maxf(fast ? pc1q_mulf(v, vr) : pc1q_divf(v, vs), flo), fhi);
                dist = pc1q_dist(dist, z[j]);  /* clamped: never NaN */
            }
            if (fast && pc1q_near(dist))
                for (j = 0; j < left; j++)
                    z[j] = pc1q_minf(pc1q_maxf(pc1q_divf(pc1q_loadf_n(xg + j * P + p, n), vs),
                                               flo), fhi);
            for (j = 0; j < left; j++) ri[j] = pc1q_cvtfi(z[j]);
            for (; j < 4; j++) ri[j] = nzp;  /* channels past c: 0 */
            w = pc1q_pack4(ri[0], ri[1], ri[2], ri[3], zp16);
            pc1q_storei(o + p, n >= PC1Q_VEC ? w : pc1q_keep_n(w, n));
        }
        for (; p < width; p++) o[p] = 0;
    }
}

/* acc rows 4j .. 4j+3 of `a` (row stride PC1Q_NR), pixels q .. q+PC1Q_VEC -> words.
   fits (the layer's L->fits: QLayer checked (|bias| + 255 sum|w|) * scale < 2^29 in
   every channel): v rounds to an int32 without the float clamp, and the clamp is done
   on the result instead: saturating to int16, + zp saturating, to u8 saturating, then
   max lo / min hi on the bytes; every step is monotonic and exact on [lo - zp, hi - zp],
   so this is clamp(rne(v), lo - zp, hi - zp) + zp as well. */
static inline pc1q_vi pc1q_rq4(const int32_t *a, const float *s, pc1q_vf flo, pc1q_vf fhi,
                               pc1q_vi zp16, int fits, pc1q_vi blo, pc1q_vi bhi) {
    pc1q_vi ri[4];
    int j;
    if (fits) {
        for (j = 0; j < 4; j++)
            ri[j] = pc1q_cvtfi(pc1q_mulf(pc1q_cvtif(pc1q_loadi(a + j * PC1Q_NR)),
                                         pc1q_set1f(s[j])));
        return pc1q_minb(pc1q_maxb(pc1q_pack4(ri[0], ri[1], ri[2], ri[3], zp16), blo), bhi);
    }
    for (j = 0; j < 4; j++) {
        pc1q_vf v = pc1q_mulf(pc1q_cvtif(pc1q_loadi(a + j * PC1Q_NR)), pc1q_set1f(s[j]));
        ri[j] = pc1q_cvtfi(pc1q_minf(pc1q_maxf(v, flo), fhi));
    }
    return pc1q_pack4(ri[0], ri[1], ri[2], ri[3], zp16);
}

static void pc1q_epi_tile(const pc1q_layer *L, Py_ssize_t b, const int32_t *acc,
                          uint8_t *t, Py_ssize_t width, Py_ssize_t pan) {
    int gi, q;
    Py_ssize_t c4 = (L->cout + 3) / 4;
    const pc1q_vf flo = pc1q_set1f((float)(L->lo - L->zp)), fhi = pc1q_set1f((float)(L->hi - L->zp));
    const pc1q_vi zp16 = pc1q_set1i(L->zp * 0x10001);
    const pc1q_vi blo = pc1q_set1b((char)L->lo), bhi = pc1q_set1b((char)L->hi);
    for (gi = 0; gi < 2 && 2 * b + gi < c4; gi++) {
        uint32_t *o = (uint32_t *)(t + 4 * (2 * b + gi) * width) + pan * PC1Q_NR;
        for (q = 0; q < PC1Q_NR; q += PC1Q_VEC)
            pc1q_storei(o + q, pc1q_rq4(acc + 4 * gi * PC1Q_NR + q, L->scale + 8 * b + 4 * gi,
                                        flo, fhi, zp16, L->fits, blo, bhi));
    }
}

static void pc1q_epi_out(const pc1q_layer *L, Py_ssize_t b, const int32_t *acc, void *y,
                         int out_float, Py_ssize_t P, Py_ssize_t p0, Py_ssize_t n,
                         float dqs, int32_t dqz) {
    int r;
    Py_ssize_t p;
    const pc1q_vf flo = pc1q_set1f((float)(L->lo - L->zp)), fhi = pc1q_set1f((float)(L->hi - L->zp));
    const pc1q_vf shift = pc1q_set1f((float)(L->zp - dqz)), vdq = pc1q_set1f(dqs);
    if (out_float != PC1Q_OUT_DQ) {
        pc1q_epi_out_c(L, b, acc, y, out_float, P, p0, n, dqs, dqz);
        return;
    }
    for (r = 0; r < PC1Q_MR && 8 * b + r < L->cout; r++) {
        const int32_t *a = acc + r * PC1Q_NR;
        const pc1q_vf s = pc1q_set1f(L->scale[8 * b + r]);
        float *yr = (float *)y + (8 * b + r) * P + p0;
        for (p = 0; p < n; p += PC1Q_VEC) {
            pc1q_vf v = pc1q_mulf(pc1q_cvtif(pc1q_loadi(a + p)), s);
            v = pc1q_roundf(pc1q_minf(pc1q_maxf(v, flo), fhi));
            pc1q_storef_n(yr + p, pc1q_mulf(pc1q_addf(v, shift), vdq), n - p);
        }
    }
}
#else
#define pc1q_gather_f32 pc1q_gather_f32_c
#define pc1q_epi_tile pc1q_epi_tile_c
#define pc1q_epi_out pc1q_epi_out_c
#endif

/* ---- fused micro-kernels: the accumulators requantized in registers ---------------
   (AVX-512 VNNI; other paths run a micro-kernel into acc, then an epilogue above). The
   arithmetic is pc1q_rq4's and the vector dequantizing store's, bit for bit. */
typedef void (*pc1q_mkt_fn)(const pc1q_layer *, Py_ssize_t, const uint8_t *, Py_ssize_t,
                            uint8_t *, Py_ssize_t, Py_ssize_t);
typedef void (*pc1q_mkd_fn)(const pc1q_layer *, Py_ssize_t, const uint8_t *, Py_ssize_t,
                            float *, Py_ssize_t, Py_ssize_t, float, int32_t);
#if PC1Q_X86
/* requantization constants and steps of one vector width W (512 or 256; target T):
   pc1q_q<W>_row: one row's accumulators rounded (clamped first unless the layer fits);
   pc1q_q<W>_words: four rows' pixels -> tile words (pc1q_rq4; the byte clamp is a no-op
   where the float clamp ran) */
static const uint8_t pc1q_tr_bytes[64] __attribute__((aligned(64))) = {
    0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13,
    2, 6, 10, 14, 3, 7, 11, 15, 0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15,
    0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15};
#define PC1Q_QDEFS(W, T)                                                                  \
typedef struct {                                                                          \
    __m##W flo, fhi, shift, vdq;                                                          \
    __m##W##i zp16, blo, bhi, tr;                                                         \
    int fits;                                                                             \
} pc1q_q##W;                                                                              \
T static inline void pc1q_q##W##_init(pc1q_q##W *Q, const pc1q_layer *L, float dqs,       \
                                      int32_t dqz, float shift0) {                        \
    Q->flo = _mm##W##_set1_ps((float)(L->lo - L->zp));                                    \
    Q->fhi = _mm##W##_set1_ps((float)(L->hi - L->zp));                                    \
    Q->shift = _mm##W##_set1_ps(shift0 + (float)(L->zp - dqz));                           \
    Q->vdq = _mm##W##_set1_ps(dqs);                                                       \
    Q->zp16 = _mm##W##_set1_epi32(L->zp * 0x10001);                                       \
    Q->blo = _mm##W##_set1_epi8((char)L->lo);                                             \
    Q->bhi = _mm##W##_set1_epi8((char)L->hi);                                             \
    Q->tr = _mm##W##_load_si##W((const void *)pc1q_tr_bytes);                             \
    Q->fits = L->fits;                                                                    \
}                                                                                         \
T static inline __m##W##i pc1q_q##W##_row(const pc1q_q##W *Q, __m##W##i a, float s) {     \
    __m##W v = _mm##W##_mul_ps(_mm##W##_cvtepi32_ps(a), _mm##W##_set1_ps(s));             \
    if (!Q->fits) v = _mm##W##_min_ps(_mm##W##_max_ps(v, Q->flo), Q->fhi);                \
    return _mm##W##_cvtps_epi32(v);                                                       \
}                                                                                         \
T static inline __m##W##i pc1q_q##W##_words(const pc1q_q##W *Q, __m##W##i a0,             \
                                            __m##W##i a1, __m##W##i a2, __m##W##i a3,     \
                                            const float *s) {                             \
    __m##W##i lo = _mm##W##_packs_epi32(pc1q_q##W##_row(Q, a0, s[0]),                     \
                                        pc1q_q##W##_row(Q, a1, s[1]));                    \
    __m##W##i hi = _mm##W##_packs_epi32(pc1q_q##W##_row(Q, a2, s[2]),                     \
                                        pc1q_q##W##_row(Q, a3, s[3]));                    \
    lo = _mm##W##_packus_epi16(_mm##W##_adds_epi16(lo, Q->zp16),                          \
                               _mm##W##_adds_epi16(hi, Q->zp16));                         \
    lo = _mm##W##_shuffle_epi8(lo, Q->tr);                                                \
    return _mm##W##_min_epu8(_mm##W##_max_epu8(lo, Q->blo), Q->bhi);                      \
}
PC1Q_QDEFS(512, PC1Q_TBW)

/* one row's 16 accumulators -> float32, the uint8 result dequantized; m: lanes stored */
PC1Q_TBW static inline void pc1q_q512_dq(const pc1q_q512 *Q, __m512i a, float s, float *y,
                                          __mmask16 m) {
    __m512 v = _mm512_mul_ps(_mm512_cvtepi32_ps(a), _mm512_set1_ps(s));
    v = _mm512_min_ps(_mm512_max_ps(v, Q->flo), Q->fhi);
    v = _mm512_roundscale_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm512_mask_storeu_ps(y, m, _mm512_mul_ps(_mm512_add_ps(v, Q->shift), Q->vdq));
}

/* block b x one panel (x: its first word) -> the next tile's words, groups 2b, 2b+1 */
PC1Q_T512
static void pc1q_mkt_avx512vnni(const pc1q_layer *L, Py_ssize_t b, const uint8_t *x,
                                Py_ssize_t xs, uint8_t *t, Py_ssize_t width, Py_ssize_t pan) {
    const float *s = L->scale + 8 * b;
    uint32_t *o = (uint32_t *)(t + 8 * b * width) + pan * PC1Q_NR;
    pc1q_q512 Q;
    pc1q_q512_init(&Q, L, 1.0f, 0, 0.0f);
    PC1Q_ACC512(x, xs, L->w8 + b * L->k4 * 32, L->k4, L->bias + 8 * b)
    _mm512_storeu_si512((void *)o, pc1q_q512_words(&Q, c00, c10, c20, c30, s));
    _mm512_storeu_si512((void *)(o + 16), pc1q_q512_words(&Q, c01, c11, c21, c31, s));
    if (8 * b + 4 < L->cout) {  /* group 2b + 1 */
        o += width;
        _mm512_storeu_si512((void *)o, pc1q_q512_words(&Q, c40, c50, c60, c70, s + 4));
        _mm512_storeu_si512((void *)(o + 16), pc1q_q512_words(&Q, c41, c51, c61, c71, s + 4));
    }
}

/* block b x one panel -> float32 rows (y: row 8b, the panel's first pixel; n pixels),
   the uint8 result dequantized */
PC1Q_T512
static void pc1q_mkd_avx512vnni(const pc1q_layer *L, Py_ssize_t b, const uint8_t *x,
                                Py_ssize_t xs, float *y, Py_ssize_t P, Py_ssize_t n,
                                float dqs, int32_t dqz) {
    const __mmask16 m0 = (__mmask16)(n >= 16 ? 0xFFFF : (1u << n) - 1);
    const __mmask16 m1 = (__mmask16)(n >= 32 ? 0xFFFF : n <= 16 ? 0 : (1u << (n - 16)) - 1);
    const float *s = L->scale + 8 * b;
    Py_ssize_t rows = L->cout - 8 * b;
    pc1q_q512 Q;
    pc1q_q512_init(&Q, L, dqs, dqz, 0.0f);
    PC1Q_ACC512(x, xs, L->w8 + b * L->k4 * 32, L->k4, L->bias + 8 * b)
#define PC1Q_DQROW(r, a0, a1)                                        \
    if (r < rows) {                                                  \
        pc1q_q512_dq(&Q, a0, s[r], y + r * P, m0);                   \
        pc1q_q512_dq(&Q, a1, s[r], y + r * P + 16, m1);              \
    }
    PC1Q_DQROW(0, c00, c01) PC1Q_DQROW(1, c10, c11) PC1Q_DQROW(2, c20, c21)
    PC1Q_DQROW(3, c30, c31) PC1Q_DQROW(4, c40, c41) PC1Q_DQROW(5, c50, c51)
    PC1Q_DQROW(6, c60, c61) PC1Q_DQROW(7, c70, c71)
#undef PC1Q_DQROW
}

/* the AVX2 and AVX-512BW paths' fused kernels: pc1q_mk_avx2's passes (8 rows x 8 or 32
   pixels), each pass's accumulators requantized in registers (pc1q_rq4's and the vector
   dequantizing store's arithmetic, bit for bit) */
PC1Q_QDEFS(256, PC1Q_T256)

/* one row's 8 accumulators -> float32, the uint8 result dequantized; n: lanes stored */
PC1Q_T256 static inline void pc1q_q256_dq(const pc1q_q256 *Q, __m256i a, float s, float *y,
                                          Py_ssize_t n) {
    /* rne(v) + zp - dq_zp as (v + (1.5 * 2^23 + zp - dq_zp)) - 1.5 * 2^23: |v| <= 255
       and |zp - dq_zp| <= 255 keep the sum in [2^23, 2^24), where floats are the
       integers, so the addition rounds v half to even (the pool's rounding mode) and
       the subtraction is exact: the same float as vroundps then + (zp - dq_zp) */
    __m256 v = _mm256_mul_ps(_mm256_cvtepi32_ps(a), _mm256_set1_ps(s));
    v = _mm256_min_ps(_mm256_max_ps(v, Q->flo), Q->fhi);
    v = _mm256_sub_ps(_mm256_add_ps(v, Q->shift), _mm256_set1_ps(PC1Q_MAGIC));
    v = _mm256_mul_ps(v, Q->vdq);
    if (n >= 8)
        _mm256_storeu_ps(y, v);
    else
        _mm256_maskstore_ps(y, _mm256_cmpgt_epi32(_mm256_set1_epi32((int)n),
                                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)), v);
}

/* the same for 16 lanes (y: lanes 0 .. n-1 stored, none where n <= 0) */
PC1Q_TBW static inline void pc1q_q512_dqn(const pc1q_q512 *Q, __m512i a, float s, float *y,
                                          Py_ssize_t n) {
    pc1q_q512_dq(Q, a, s, y, (__mmask16)(n >= 16 ? 0xFFFF : n <= 0 ? 0 : (1u << n) - 1));
}
#define pc1q_q256_dqn pc1q_q256_dq
/* the shift0 of pc1q_q<W>_init for a dequantizing run */
#define PC1Q_DQ_SHIFT256 PC1Q_MAGIC  /* see pc1q_q256_dq */
#define PC1Q_DQ_SHIFT512 0.0f

/* the fused kernels of width W, NV vectors per pass (pc1q_mkt_avx512vnni,
   pc1q_mkd_avx512vnni):
   mkt: block b x one panel -> the next tile's words, groups 2b, 2b+1;
   mkd: block b x one panel -> float32 rows (y: row 8b, the panel's first pixel; n
   pixels), the uint8 result dequantized; passes past n skipped */
#define PC1Q_AVX2_FUSED(W, NV, T, mkt, mkd)                                             \
T static void mkt(const pc1q_layer *L, Py_ssize_t b, const uint8_t *x0,                 \
                  Py_ssize_t xs, uint8_t *t, Py_ssize_t width, Py_ssize_t pan) {        \
    PC1Q_AVX2_DECL(W, (const char *)L->w16 + b * L->w16_stride)                         \
    const int32_t *bias = L->bias + 8 * b;                                              \
    const float *s = L->scale + 8 * b;                                                  \
    uint32_t *o = (uint32_t *)(t + 8 * b * width) + pan * PC1Q_NR, *op;                 \
    int two = 8 * b + 4 < L->cout, pq;                                                  \
    pc1q_q##W Q;                                                                        \
    pc1q_q##W##_init(&Q, L, 1.0f, 0, 0.0f);                                             \
    PC1Q_AVX2_BIAS(bias)                                                                \
    for (pq = 0; pq < PC1Q_NR / PC1Q_AVX2_PX(W, NV); pq++) {                            \
        PC1Q_AVX2_PASS(W, NV, x0 + 4 * PC1Q_AVX2_PX(W, NV) * pq)                        \
        op = o + PC1Q_AVX2_PX(W, NV) * pq;                                              \
        PC1Q_AVX2_WORDS(W, op, c0, c1, c2, c3, s)                                       \
        PC1Q_V2_##NV(PC1Q_AVX2_WORDS(W, op + W / 32, d0, d1, d2, d3, s))                \
        if (two) {  /* group 2b + 1 */                                                  \
            PC1Q_AVX2_WORDS(W, op + width, c4, c5, c6, c7, s + 4)                       \
            PC1Q_V2_##NV(PC1Q_AVX2_WORDS(W, op + width + W / 32, d4, d5, d6, d7, s + 4)) \
        }                                                                               \
    }                                                                                   \
}                                                                                       \
T static void mkd(const pc1q_layer *L, Py_ssize_t b, const uint8_t *x0,                 \
                  Py_ssize_t xs, float *y, Py_ssize_t P, Py_ssize_t n,                  \
                  float dqs, int32_t dqz) {                                             \
    PC1Q_AVX2_DECL(W, (const char *)L->w16 + b * L->w16_stride)                         \
    const int32_t *bias = L->bias + 8 * b;                                              \
    const float *s = L->scale + 8 * b;                                                  \
    Py_ssize_t rows = L->cout - 8 * b, pq;                                              \
    pc1q_q##W Q;                                                                        \
    pc1q_q##W##_init(&Q, L, dqs, dqz, PC1Q_DQ_SHIFT##W);                                \
    PC1Q_AVX2_BIAS(bias)                                                                \
    for (pq = 0; PC1Q_AVX2_PX(W, NV) * pq < n; pq++) {                                  \
        Py_ssize_t m = n - PC1Q_AVX2_PX(W, NV) * pq;                                    \
        float *yp = y + PC1Q_AVX2_PX(W, NV) * pq;                                       \
        PC1Q_AVX2_PASS(W, NV, x0 + 4 * PC1Q_AVX2_PX(W, NV) * pq)                        \
        PC1Q_AVX2_DQROW(W, NV, 0) PC1Q_AVX2_DQROW(W, NV, 1)                             \
        PC1Q_AVX2_DQROW(W, NV, 2) PC1Q_AVX2_DQROW(W, NV, 3)                             \
        PC1Q_AVX2_DQROW(W, NV, 4) PC1Q_AVX2_DQROW(W, NV, 5)                             \
        PC1Q_AVX2_DQROW(W, NV, 6) PC1Q_AVX2_DQROW(W, NV, 7)                             \
    }                                                                                   \
}
/* four rows' accumulators a0 .. a3 -> tile words at o */
#define PC1Q_AVX2_WORDS(W, o, a0, a1, a2, a3, s)                                        \
    _mm##W##_storeu_si##W((void *)(o), pc1q_q##W##_words(&Q, a0, a1, a2, a3, s));
#define PC1Q_AVX2_DQROW(W, NV, r)                                                       \
    if (r < rows) {                                                                     \
        pc1q_q##W##_dqn(&Q, c##r, s[r], yp + r * P, m);                                 \
        PC1Q_V2_##NV(pc1q_q##W##_dqn(&Q, d##r, s[r], yp + r * P + W / 32, m - W / 32);) \
    }
PC1Q_AVX2_FUSED(256, 1, PC1Q_T256, pc1q_mkt_avx2, pc1q_mkd_avx2)
PC1Q_AVX2_FUSED(512, 2, PC1Q_TBW, pc1q_mkt_avx512bw, pc1q_mkd_avx512bw)
#endif

/* the path's fused kernels, or NULL (its micro-kernel and the epilogues above run) */
static void pc1q_fused(int path, pc1q_mkt_fn *mkt, pc1q_mkd_fn *mkd) {
    *mkt = NULL;
    *mkd = NULL;
#if PC1Q_X86
    if (path == PC1Q_AVX512VNNI) {
        *mkt = pc1q_mkt_avx512vnni;
        *mkd = pc1q_mkd_avx512vnni;
    } else if (path == PC1Q_AVX2) {
        *mkt = pc1q_mkt_avx2;
        *mkd = pc1q_mkd_avx2;
    } else if (path == PC1Q_AVX512BW) {
        *mkt = pc1q_mkt_avx512bw;
        *mkd = pc1q_mkd_avx512bw;
    }
#endif
    (void)path;
}

/* ---- a chain run ------------------------------------------------------------------- */
typedef struct {
    const pc1q_layer *layers;
    int nlayers, out_float, in_float;  /* out_float: 0 u8, 1 f32, PC1Q_OUT_DQ */
    pc1q_mk_fn mk;
    pc1q_mkt_fn mkt;        /* fused kernels of the path, or NULL */
    pc1q_mkd_fn mkd;
    Py_ssize_t n, c, P, cout;
    Py_ssize_t tile, tiles_per_image, nsplit;  /* nsplit > 1: single layer, blocks split */
    const void *x;
    void *y;
    float in_scale;
    int32_t in_zp;
    float dq_scale;         /* out_float == PC1Q_OUT_DQ: y = (u8 - dq_zp) * dq_scale */
    int32_t dq_zp;
    uint8_t *scratch;
    Py_ssize_t per_thread;  /* bytes */
    Py_ssize_t max_c4;
    Py_ssize_t cpp;         /* bytes per pixel of a tile's activations (fused runs) */
    /* layered runs only */
    int layer;
    uint8_t *bufs[2];       /* [ntiles][stride] each */
    Py_ssize_t stride;      /* 4 * max_c4 * tile */
    void (*gv)(const uint8_t *, Py_ssize_t, const int8_t *, Py_ssize_t, const int32_t *,
               int, int32_t *);  /* matrix-vector runs (pc1q_gv_layer_task) */
} pc1q_run;

static void pc1q_layer_tile(const pc1q_run *R, const pc1q_layer *L, const uint8_t *a,
                            uint8_t *b, Py_ssize_t width, Py_ssize_t b0, Py_ssize_t b1,
                            int32_t *acc, Py_ssize_t img, Py_ssize_t p0, Py_ssize_t valid) {
    Py_ssize_t blk, pan, npan = width / PC1Q_NR, xs = 4 * width;
    for (blk = b0; blk < b1; blk++) {
        const int8_t *w = L->w8 ? L->w8 + blk * L->k4 * 32 : NULL;
        const int16_t *w16 = L->w16 ? (const int16_t *)((const char *)L->w16
                                                       + blk * L->w16_stride) : NULL;
        for (pan = 0; pan < npan; pan++) {
            if (b != NULL && R->mkt != NULL) {
                R->mkt(L, blk, a + pan * 4 * PC1Q_NR, xs, b, width, pan);
                continue;
            }
            if (b == NULL && R->mkd != NULL && R->out_float == PC1Q_OUT_DQ) {
                Py_ssize_t m = valid - pan * PC1Q_NR;
                R->mkd(L, blk, a + pan * 4 * PC1Q_NR, xs,
                       (float *)R->y + (img * R->cout + 8 * blk) * R->P + p0 + pan * PC1Q_NR,
                       R->P, m > PC1Q_NR ? PC1Q_NR : m, R->dq_scale, R->dq_zp);
                continue;
            }
            R->mk(a + pan * 4 * PC1Q_NR, xs, w, w16, L->k4, L->bias + 8 * blk, acc);
            if (b != NULL) {
                pc1q_epi_tile(L, blk, acc, b, width, pan);
            } else {
                Py_ssize_t m = valid - pan * PC1Q_NR;
                char *y = (char *)R->y + img * R->cout * R->P * (R->out_float ? 4 : 1);
                if (m > PC1Q_NR) m = PC1Q_NR;
                pc1q_epi_out(L, blk, acc, y, R->out_float, R->P, p0 + pan * PC1Q_NR, m,
                             R->dq_scale, R->dq_zp);
            }
        }
    }
}

/* tile t: its image, first pixel, valid pixels; returns its width (whole panels) */
static Py_ssize_t pc1q_tile(const pc1q_run *R, Py_ssize_t t, Py_ssize_t *img,
                            Py_ssize_t *p0, Py_ssize_t *valid) {
    *img = t / R->tiles_per_image;
    *p0 = (t - *img * R->tiles_per_image) * R->tile;
    *valid = R->P - *p0;
    if (*valid > R->tile) *valid = R->tile;
    return (*valid + PC1Q_NR - 1) / PC1Q_NR * PC1Q_NR;
}

static void pc1q_gather(const pc1q_run *R, Py_ssize_t img, Py_ssize_t p0, Py_ssize_t valid,
                        Py_ssize_t width, uint8_t *row, uint8_t *a) {
    if (R->in_float)
        pc1q_gather_f32((const float *)R->x + img * R->c * R->P, R->c, R->P, p0, valid,
                        width, R->in_scale, R->in_zp, row, a);
    else
        pc1q_gather_u8((const uint8_t *)R->x + img * R->c * R->P, R->c, R->P, p0, valid,
                       width, a);
}

/* fused: task = tile x part; the tile goes through every layer in the worker's scratch
   (part > 0 only for a single layer split into nsplit block ranges) */
static void pc1q_chain_task(void *ctx, Py_ssize_t task, int worker) {
    const pc1q_run *R = (const pc1q_run *)ctx;
    Py_ssize_t t = task / R->nsplit, part = task - t * R->nsplit;
    Py_ssize_t img, p0, valid, width, li, b0, b1;
    uint8_t *s = R->scratch + worker * R->per_thread;
    int32_t *acc = (int32_t *)s;
    uint8_t *row = s + 4 * PC1Q_MR * PC1Q_NR, *a, *b, *sw;
    width = pc1q_tile(R, t, &img, &p0, &valid);
    a = row + 4 * R->tile;
    b = a + R->cpp * R->tile;
    pc1q_gather(R, img, p0, valid, width, row, a);
    for (li = 0; li < R->nlayers; li++) {
        const pc1q_layer *L = R->layers + li;
        int last = li == R->nlayers - 1;
        b0 = 0;
        b1 = L->nb;
        if (last && R->nsplit > 1) {
            b0 = part * L->nb / R->nsplit;
            b1 = (part + 1) * L->nb / R->nsplit;
        }
        pc1q_layer_tile(R, L, a, last ? NULL : b, width, b0, b1, acc, img, p0, valid);
        sw = a; a = b; b = sw;
    }
}

/* layered (few tiles, several layers): one job gathers every tile into bufs[0], then one
   job per layer runs tiles x block ranges from bufs[layer % 2] into the other buffer
   (or the output); a block's channel groups are its own, so the ranges never share */
static void pc1q_split_gather_task(void *ctx, Py_ssize_t t, int worker) {
    const pc1q_run *R = (const pc1q_run *)ctx;
    Py_ssize_t img, p0, valid, width = pc1q_tile(R, t, &img, &p0, &valid);
    uint8_t *row = R->scratch + worker * R->per_thread + 4 * PC1Q_MR * PC1Q_NR;
    pc1q_gather(R, img, p0, valid, width, row, R->bufs[0] + t * R->stride);
}

static void pc1q_split_layer_task(void *ctx, Py_ssize_t task, int worker) {
    const pc1q_run *R = (const pc1q_run *)ctx;
    const pc1q_layer *L = R->layers + R->layer;
    Py_ssize_t t = task / R->nsplit, part = task - t * R->nsplit;
    Py_ssize_t img, p0, valid, width = pc1q_tile(R, t, &img, &p0, &valid);
    Py_ssize_t b0 = part * L->nb / R->nsplit, b1 = (part + 1) * L->nb / R->nsplit;
    int32_t *acc = (int32_t *)(R->scratch + worker * R->per_thread);
    uint8_t *in = R->bufs[R->layer % 2] + t * R->stride;
    uint8_t *out = R->layer == R->nlayers - 1 ? NULL
                   : R->bufs[(R->layer + 1) % 2] + t * R->stride;
    pc1q_layer_tile(R, L, in, out, width, b0, b1, acc, img, p0, valid);
}

/* ---- int8 matrix-vector: runs of at most PC1Q_GV_MAXPX pixels in all ----------------
   (the VNNI paths; a panel kernel would use 1 of its 32 pixel lanes). Output channels in
   the lanes: for each group of 4 input channels, a pixel's word of 4 u8 broadcast and one
   ymm vpdpbusd against the block's 32 bytes of w8 ([K4][8][4]: 8 channels x 4), so the
   weights are read once, in order, for up to 4 pixels (more pixels: a block's weights
   again, from cache, for each further 4). The activations are [K4][np4][4] bytes (np4:
   the n * P pixels rounded up to a multiple of 4; pixel j = img * P + p in word j of
   each group, the others 0), in bufs[0] and bufs[1]; one job per layer, tasks = block
   ranges (nsplit), each requantizing into the other buffer or the output. Same int32 sums as the panel kernels (integer adds in
   another order) and the same requantization (pc1q_rq, as pc1q_epi_out_c): bit for bit. */
#define PC1Q_GV_MAXPX 16
/* acc[j * 8 + r] = bias[r] + row r of the block . pixel j, j < np <= 4 (x: 4 words per
   group of 4 input channels, xs bytes from one group to the next) */
typedef void (*pc1q_gv_fn)(const uint8_t *, Py_ssize_t, const int8_t *, Py_ssize_t,
                           const int32_t *, int, int32_t *);
#if PC1Q_X86
#define PC1Q_GV_W(i) _mm256_loadu_si256((const __m256i *)(w + 32 * (i)))
#define PC1Q_GV_X(i, j) _mm256_set1_epi32(xd[xw * (i) + (j)])
#define PC1Q_GV(T, name, DP)                                                              \
T static void name(const uint8_t *x, Py_ssize_t xs, const int8_t *w, Py_ssize_t k4,      \
                   const int32_t *bias, int np, int32_t *acc) {                           \
    const int32_t *xd = (const int32_t *)x;                                               \
    const Py_ssize_t xw = xs / 4;                                                         \
    const __m256i z = _mm256_setzero_si256();                                             \
    __m256i a0 = _mm256_loadu_si256((const __m256i *)bias), a1 = z, a2 = z, a3 = z;       \
    __m256i b0 = z, b1 = z, b2 = z, b3 = z, wv, wu;                                       \
    Py_ssize_t kk = 0;                                                                    \
    if (np == 1) {  /* 4 groups per step, 4 chains */                                     \
        for (; kk + 4 <= k4; kk += 4, w += 128, xd += 4 * xw) {                               \
            a0 = DP(a0, PC1Q_GV_X(0, 0), PC1Q_GV_W(0));                                   \
            a1 = DP(a1, PC1Q_GV_X(1, 0), PC1Q_GV_W(1));                                   \
            a2 = DP(a2, PC1Q_GV_X(2, 0), PC1Q_GV_W(2));                                   \
            a3 = DP(a3, PC1Q_GV_X(3, 0), PC1Q_GV_W(3));                                   \
        }                                                                                 \
        for (; kk < k4; kk++, w += 32, xd += xw) a0 = DP(a0, PC1Q_GV_X(0, 0), PC1Q_GV_W(0)); \
        a0 = _mm256_add_epi32(_mm256_add_epi32(a0, a1), _mm256_add_epi32(a2, a3));       \
        _mm256_storeu_si256((__m256i *)acc, a0);                                          \
        return;                                                                           \
    }                                                                                     \
    /* 2 to 4 pixels: each weight load serves 4 pixel words, 2 groups per step */         \
    a1 = a2 = a3 = a0;  /* the bias, once per pixel */                                    \
    {                                                                                     \
        __m256i c0 = z, c1 = z, c2 = z, c3 = z;                                           \
        for (; kk + 2 <= k4; kk += 2, w += 64, xd += 2 * xw) {                                 \
            wv = PC1Q_GV_W(0);                                                            \
            wu = PC1Q_GV_W(1);                                                            \
            a0 = DP(a0, PC1Q_GV_X(0, 0), wv); c0 = DP(c0, PC1Q_GV_X(1, 0), wu);           \
            a1 = DP(a1, PC1Q_GV_X(0, 1), wv); c1 = DP(c1, PC1Q_GV_X(1, 1), wu);           \
            a2 = DP(a2, PC1Q_GV_X(0, 2), wv); c2 = DP(c2, PC1Q_GV_X(1, 2), wu);           \
            a3 = DP(a3, PC1Q_GV_X(0, 3), wv); c3 = DP(c3, PC1Q_GV_X(1, 3), wu);           \
        }                                                                                 \
        if (kk < k4) {                                                                    \
            wv = PC1Q_GV_W(0);                                                            \
            a0 = DP(a0, PC1Q_GV_X(0, 0), wv); a1 = DP(a1, PC1Q_GV_X(0, 1), wv);           \
            a2 = DP(a2, PC1Q_GV_X(0, 2), wv); a3 = DP(a3, PC1Q_GV_X(0, 3), wv);           \
        }                                                                                 \
        b0 = _mm256_add_epi32(a0, c0); b1 = _mm256_add_epi32(a1, c1);                     \
        b2 = _mm256_add_epi32(a2, c2); b3 = _mm256_add_epi32(a3, c3);                     \
    }                                                                                     \
    _mm256_storeu_si256((__m256i *)acc, b0);                                              \
    _mm256_storeu_si256((__m256i *)(acc + 8), b1);                                        \
    if (np > 2) _mm256_storeu_si256((__m256i *)(acc + 16), b2);                           \
    if (np > 3) _mm256_storeu_si256((__m256i *)(acc + 24), b3);                           \
}
PC1Q_GV(__attribute__((target("avx512f,avx512vl,avx512vnni"))), pc1q_gv_avx512vnni,
        _mm256_dpbusd_epi32)
PC1Q_GV(__attribute__((target("avx2,avxvnni"))), pc1q_gv_avxvnni, _mm256_dpbusd_avx_epi32)
#undef PC1Q_GV
#undef PC1Q_GV_W
#undef PC1Q_GV_X
#endif

/* the path's matrix-vector kernel, or NULL (the run stays on the panel kernels) */
static pc1q_gv_fn pc1q_gv_kernel(int path) {
#if PC1Q_X86
    if (path == PC1Q_AVX512VNNI || path == PC1Q_AMX) return pc1q_gv_avx512vnni;
    if (path == PC1Q_AVXVNNI) return pc1q_gv_avxvnni;
#endif
    (void)path;
    return NULL;
}

/* words per group of 4 channels in bufs: the run's pixels rounded up to 4 */
#define PC1Q_GV_NP4(R) (((R)->n * (R)->P + 3) & ~(Py_ssize_t)3)

/* the run's n * P pixels -> bufs[0] ([c4][np4] words; bufs zeroed by the caller) */
static void pc1q_gv_gather_task(void *ctx, Py_ssize_t t, int worker) {
    const pc1q_run *R = (const pc1q_run *)ctx;
    Py_ssize_t img, ch, p, j, gs = 4 * PC1Q_GV_NP4(R);
    uint8_t q[64], *o = R->bufs[0];  /* (64: the vectorized quantize loop's width) */
    (void)t;
    (void)worker;
    for (img = 0; img < R->n; img++)
        for (ch = 0; ch < R->c; ch++) {
            Py_ssize_t off = (img * R->c + ch) * R->P;
            if (R->in_float)
                pc1q_quantize_run((const float *)R->x + off, q, R->P, R->in_scale, R->in_zp);
            else
                memcpy(q, (const uint8_t *)R->x + off, (size_t)R->P);
            for (p = 0; p < R->P; p++) {
                j = img * R->P + p;
                o[gs * (ch >> 2) + 4 * j + (ch & 3)] = q[p];
            }
        }
}

/* layer R->layer, block range `task` of nsplit: bufs[layer % 2] -> the other or y */
static void pc1q_gv_layer_task(void *ctx, Py_ssize_t task, int worker) {
    const pc1q_run *R = (const pc1q_run *)ctx;
    const pc1q_layer *L = R->layers + R->layer;
    Py_ssize_t b0 = task * L->nb / R->nsplit, b1 = (task + 1) * L->nb / R->nsplit, blk;
    const uint8_t *in = R->bufs[R->layer % 2];
    uint8_t *out = R->layer == R->nlayers - 1 ? NULL : R->bufs[(R->layer + 1) % 2];
    int np = (int)(R->n * R->P), j, r, rows;
    Py_ssize_t gs = 4 * PC1Q_GV_NP4(R);
    const float *s;
    float flo = (float)(L->lo - L->zp), fhi = (float)(L->hi - L->zp);
    uint32_t uzp = (uint32_t)L->zp;
    int32_t acc[PC1Q_GV_MAXPX * PC1Q_MR];
    (void)worker;
    for (blk = b0; blk < b1; blk++) {
        for (j = 0; j < np; j += 4)
            R->gv(in + 4 * j, gs, L->w8 + blk * L->k4 * 32, L->k4, L->bias + 8 * blk,
                  np - j < 4 ? np - j : 4, acc + 8 * j);
        rows = L->cout - 8 * blk < PC1Q_MR ? (int)(L->cout - 8 * blk) : PC1Q_MR;
        s = L->scale + 8 * blk;
        for (j = 0; j < np; j++) {
            const int32_t *a = acc + j * PC1Q_MR;
            Py_ssize_t img = j / R->P;
            Py_ssize_t yo = (img * R->cout + 8 * blk) * R->P + (j - img * R->P);
            if (out != NULL) {
                uint8_t *ob = out + gs * 2 * blk + 4 * j;
                for (r = 0; r < rows; r++)
                    ob[gs * (r >> 2) + (r & 3)] =
                        (uint8_t)pc1q_rq((float)a[r] * s[r], flo, fhi, uzp);
            } else if (R->out_float == PC1Q_OUT_DQ) {
                float *yf = (float *)R->y + yo;
                for (r = 0; r < rows; r++)
                    yf[r * R->P] = (float)((int32_t)pc1q_rq((float)a[r] * s[r], flo, fhi, uzp)
                                           - R->dq_zp) * R->dq_scale;
            } else if (R->out_float) {
                float *yf = (float *)R->y + yo;
                const float *fb = L->fbias + 8 * blk;
                for (r = 0; r < rows; r++) yf[r * R->P] = (float)a[r] * s[r] + fb[r];
            } else {
                uint8_t *yu = (uint8_t *)R->y + yo;
                for (r = 0; r < rows; r++)
                    yu[r * R->P] = (uint8_t)pc1q_rq((float)a[r] * s[r], flo, fhi, uzp);
            }
        }
    }
}

#if PC1Q_X86
/* ---- AMX ---------------------------------------------------------------------------
   tdpbusd: C[16 x 16] int32 += A[16 x 64] u8 . B[16 x 16 x 4] s8, A's rows pixels (64
   channels each), B's columns output channels. Tile activations are [C64][width][64]
   bytes (pixel-major within a group of 64 channels, the A tile rows); weights
   [nb32][K64][2][16][16][4]; one call: 32 pixels x 32 channels in tiles 0-3 (A in 4-5,
   B in 6-7), stored as acc[32 pixels][32 channels]; the bias is added in the epilogue
   (the same int32 sum). Channels past K are zero in the weights, so whatever bytes the
   activations hold there add 0. Per thread: acc and its transpose (8 KiB), a row, two
   tiles. */
typedef struct {
    uint8_t palette_id, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} pc1q_tilecfg;

/* tiles 0-7: 16 rows of 64 bytes. A static object: gcc 12 does not see that
   ldtilecfg reads its operand and drops the stores into a local one */
static const pc1q_tilecfg pc1q_amx_cfg = {
    1, 0, {0}, {64, 64, 64, 64, 64, 64, 64, 64}, {16, 16, 16, 16, 16, 16, 16, 16}};

__attribute__((target("amx-tile,amx-int8")))
static void pc1q_amx_config(void) { _tile_loadconfig(&pc1q_amx_cfg); }

__attribute__((target("amx-tile,amx-int8")))
static void pc1q_amx_release(void) { _tile_release(); }

__attribute__((target("amx-tile,amx-int8")))
static void pc1q_amx_block(const uint8_t *x, Py_ssize_t xs, const int8_t *w, Py_ssize_t k64,
                           int32_t *acc) {
    Py_ssize_t kk;
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
    for (kk = 0; kk < k64; kk++, x += xs, w += 2048) {
        _tile_loadd(4, x, 64);
        _tile_loadd(5, x + 1024, 64);
        _tile_loadd(6, w, 64);
        _tile_loadd(7, w + 1024, 64);
        _tile_dpbusd(0, 4, 6);
        _tile_dpbusd(1, 4, 7);
        _tile_dpbusd(2, 5, 6);
        _tile_dpbusd(3, 5, 7);
    }
    _tile_stored(0, acc, 128);
    _tile_stored(1, acc + 16, 128);
    _tile_stored(2, acc + 512, 128);
    _tile_stored(3, acc + 528, 128);
}

/* dst[j][i] = src[i][j] for a 16 x 16 block of 32-bit words (rows ss and ds words
   apart): unpack 32-bit, unpack 64-bit, then two 128-bit lane shuffles */
__attribute__((target("avx512f")))
static void pc1q_tr16(const int32_t *src, Py_ssize_t ss, int32_t *dst, Py_ssize_t ds) {
    __m512i r[16], t[16], u0, u1, u2, u3;
    int i, q;
    for (i = 0; i < 16; i++) r[i] = _mm512_loadu_si512((const void *)(src + i * ss));
    for (i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* r[4i + q], 128-bit lane L: column 4L + q of rows 4i .. 4i+3 */
    for (i = 0; i < 4; i++) {
        r[4 * i] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
        r[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
        r[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
    }
    for (q = 0; q < 4; q++) {
        u0 = _mm512_shuffle_i32x4(r[q], r[4 + q], 0x44);
        u1 = _mm512_shuffle_i32x4(r[q], r[4 + q], 0xEE);
        u2 = _mm512_shuffle_i32x4(r[8 + q], r[12 + q], 0x44);
        u3 = _mm512_shuffle_i32x4(r[8 + q], r[12 + q], 0xEE);
        _mm512_storeu_si512((void *)(dst + q * ds), _mm512_shuffle_i32x4(u0, u2, 0x88));
        _mm512_storeu_si512((void *)(dst + (4 + q) * ds), _mm512_shuffle_i32x4(u0, u2, 0xDD));
        _mm512_storeu_si512((void *)(dst + (8 + q) * ds), _mm512_shuffle_i32x4(u1, u3, 0x88));
        _mm512_storeu_si512((void *)(dst + (12 + q) * ds), _mm512_shuffle_i32x4(u1, u3, 0xDD));
    }
}

/* NCHW pixels p0 .. p0+valid -> [C64][width][64]: the [C4][width][4] gather into tmp,
   then 16 x 16 word transposes (groups past C4 read whatever tmp holds: their weights
   are zero) */
static void pc1q_amx_gather(const pc1q_run *R, Py_ssize_t img, Py_ssize_t p0,
                            Py_ssize_t valid, Py_ssize_t width, uint8_t *row, uint8_t *t,
                            uint8_t *tmp) {
    Py_ssize_t g, p, c64 = (R->c + 63) / 64;
    pc1q_gather(R, img, p0, valid, width, row, tmp);
    for (g = 0; g < c64; g++)
        for (p = 0; p < width; p += 16)
            pc1q_tr16((const int32_t *)tmp + 16 * g * width + p, width,
                      (int32_t *)t + (g * width + p) * 16, 16);
}

/* acc[32 pixels][32 channels] of block blk, panel pan -> the next tile, or NCHW out */
static void pc1q_amx_epi(const pc1q_run *R, const pc1q_layer *L, Py_ssize_t blk,
                         const int32_t *acc, uint8_t *t, Py_ssize_t width, Py_ssize_t pan,
                         Py_ssize_t img, Py_ssize_t p0, Py_ssize_t valid) {
    float flo = (float)(L->lo - L->zp), fhi = (float)(L->hi - L->zp);
    uint32_t uzp = (uint32_t)L->zp;
    const int32_t *bias = L->bias + 32 * blk;
    const float *scale = L->scale + 32 * blk;
    Py_ssize_t p, j;
    if (t != NULL) {
        uint8_t *o = t + (blk / 2) * width * 64 + pan * 32 * 64 + (blk % 2) * 32;
        for (p = 0; p < 32; p++)
            for (j = 0; j < 32; j++)
                o[p * 64 + j] = (uint8_t)pc1q_rq((float)(acc[p * 32 + j] + bias[j]) * scale[j],
                                                 flo, fhi, uzp);
    } else {  /* transposed to [32 channels][32 pixels] (in acc + 1024), then rows */
        Py_ssize_t m = valid - pan * 32, jn = L->cout - 32 * blk;
        Py_ssize_t first = img * R->cout * R->P + 32 * blk * R->P + p0 + pan * 32;
        int32_t *at = (int32_t *)acc + 1024;
        pc1q_tr16(acc, 32, at, 32);
        pc1q_tr16(acc + 16, 32, at + 512, 32);
        pc1q_tr16(acc + 512, 32, at + 16, 32);
        pc1q_tr16(acc + 528, 32, at + 528, 32);
        if (m > 32) m = 32;
        if (jn > 32) jn = 32;
        for (j = 0; j < jn; j++) {
            const int32_t *a = at + 32 * j;
            int32_t bj = bias[j];
            float sj = scale[j];
            if (R->out_float == PC1Q_OUT_DQ) {
                float *y = (float *)R->y + first + j * R->P;
                for (p = 0; p < m; p++)
                    y[p] = (float)((int32_t)pc1q_rq((float)(a[p] + bj) * sj, flo, fhi, uzp)
                                   - R->dq_zp) * R->dq_scale;
            } else if (R->out_float) {
                float *y = (float *)R->y + first + j * R->P, fb = L->fbias[32 * blk + j];
                for (p = 0; p < m; p++) y[p] = (float)(a[p] + bj) * sj + fb;
            } else {
                uint8_t *y = (uint8_t *)R->y + first + j * R->P;
                for (p = 0; p < m; p++)
                    y[p] = (uint8_t)pc1q_rq((float)(a[p] + bj) * sj, flo, fhi, uzp);
            }
        }
    }
}

/* the fused chain task of the AMX path (pc1q_chain_task's shape) */
static void pc1q_amx_chain_task(void *ctx, Py_ssize_t task, int worker) {
    const pc1q_run *R = (const pc1q_run *)ctx;
    Py_ssize_t t = task / R->nsplit, part = task - t * R->nsplit;
    Py_ssize_t img, p0, valid, width, li, b0, b1, blk, pan, npan;
    uint8_t *s = R->scratch + worker * R->per_thread;
    int32_t *acc = (int32_t *)s;
    uint8_t *row = s + 2 * 4 * 32 * 32, *a, *b, *sw;
    width = pc1q_tile(R, t, &img, &p0, &valid);
    npan = width / 32;
    a = row + 4 * R->tile;
    b = a + R->cpp * R->tile;
    pc1q_amx_gather(R, img, p0, valid, width, row, a, b);
    pc1q_amx_config();
    for (li = 0; li < R->nlayers; li++) {
        const pc1q_layer *L = R->layers + li;
        int last = li == R->nlayers - 1;
        b0 = 0;
        b1 = L->nb32;
        if (last && R->nsplit > 1) {
            b0 = part * L->nb32 / R->nsplit;
            b1 = (part + 1) * L->nb32 / R->nsplit;
        }
        for (blk = b0; blk < b1; blk++)
            for (pan = 0; pan < npan; pan++) {
                pc1q_amx_block(a + pan * 32 * 64, width * 64, L->wamx + blk * L->k64 * 2048,
                               L->k64, acc);
                pc1q_amx_epi(R, L, blk, acc, last ? NULL : b, width, pan, img, p0, valid);
            }
        sw = a; a = b; b = sw;
    }
    pc1q_amx_release();
}
#else
/* no AMX here: never run (available_paths() does not offer it) */
static void pc1q_amx_chain_task(void *ctx, Py_ssize_t task, int worker) {
    (void)ctx; (void)task; (void)worker;
}
#endif

/* ---- elementwise helpers ----------------------------------------------------------- */
#define PC1Q_ELEMS_PER_TASK 65536
typedef struct {
    const void *a, *b;
    void *y;
    Py_ssize_t size;
    float sa, sb, sc, flo, fhi;
    int32_t za, zb, zc;
} pc1q_elem;

static void pc1q_quantize_task(void *ctx, Py_ssize_t t, int worker) {
    const pc1q_elem *E = (const pc1q_elem *)ctx;
    Py_ssize_t i0 = t * PC1Q_ELEMS_PER_TASK, m = E->size - i0;
    (void)worker;
    if (m > PC1Q_ELEMS_PER_TASK) m = PC1Q_ELEMS_PER_TASK;
    pc1q_quantize_run((const float *)E->a + i0, (uint8_t *)E->y + i0, m, E->sa, E->za);
}

static void pc1q_dequantize_task(void *ctx, Py_ssize_t t, int worker) {
    const pc1q_elem *E = (const pc1q_elem *)ctx;
    Py_ssize_t i, i0 = t * PC1Q_ELEMS_PER_TASK, m = E->size - i0;
    const uint8_t *q = (const uint8_t *)E->a + i0;
    float *y = (float *)E->y + i0;
    (void)worker;
    if (m > PC1Q_ELEMS_PER_TASK) m = PC1Q_ELEMS_PER_TASK;
    for (i = 0; i < m; i++) y[i] = (float)((int32_t)q[i] - E->za) * E->sa;
}

/* c = clamp(rne(((float)(a - za) * sa + (float)(b - zb) * sb) / sc) + zc, lo, hi) */
static void pc1q_add_task(void *ctx, Py_ssize_t t, int worker) {
    const pc1q_elem *E = (const pc1q_elem *)ctx;
    Py_ssize_t i, i0 = t * PC1Q_ELEMS_PER_TASK, m = E->size - i0;
    const uint8_t *a = (const uint8_t *)E->a + i0, *b = (const uint8_t *)E->b + i0;
    uint8_t *y = (uint8_t *)E->y + i0;
    (void)worker;
    if (m > PC1Q_ELEMS_PER_TASK) m = PC1Q_ELEMS_PER_TASK;
    for (i = 0; i < m; i++) {
        float u = (float)((int32_t)a[i] - E->za) * E->sa;
        float v = (float)((int32_t)b[i] - E->zb) * E->sb;
        y[i] = (uint8_t)pc1q_rq((u + v) / E->sc, E->flo, E->fhi, (uint32_t)E->zc);
    }
}

#endif
