/* avx512bf16.c — C (M, N) = beta·C + bias + A (M, K) · B (K, N) with A in
 * f32, B packed as bfloat16 (bf16.c) and the products summed in f32 with
 * AVX512-BF16's vdpbf16ps (Intel Cooper Lake and Sapphire Rapids, AMD Zen 4
 * and later), for CPUs without AMX.
 *
 * The pack's layout serves as it is: row k2 of a 1 KiB tile is the 16
 * column pairs (B[2·k2][n], B[2·k2 + 1][n]), exactly one zmm of 16 bf16
 * pairs, and a pair of A broadcast to all lanes multiplies it. A is rounded
 * to bf16 (kern_f32_to_bf16's rounding) as it is copied, 128 rows × 256 K at
 * a time, into the caller's scratch.
 *
 * Order of the sums: every C element starts as beta·C + bias (or zero) and
 * takes its K pairs in increasing order, one vdpbf16ps each, whatever the
 * blocking; kern_bf16_gemm_ref in bf16.c does the same one element at a time
 * with a scalar model of the instruction, and tests/test_bf16.c compares
 * the two bit for bit where the CPU has the instruction. Blocks of rows and
 * columns are shared out over threads; that changes who computes an
 * element, not how, so results do not depend on the thread count.
 *
 * Built with -mavx512f -mavx512bf16 (CMakeLists.txt, this file only) and
 * -ffp-contract=off, so that beta·C + bias stays a product and a sum as in
 * the model; run only where kern_bf16_unit_detect found the instructions. */
#include "kernels/kernels.h"

#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* PEFT_AVX512BF16_EMULATE: tests/test_bf16_emul.c builds this file over
 * portable stand-ins for the intrinsics (tests/avx512bf16_emul.h). */
#if (defined(__AVX512F__) && defined(__AVX512BF16__)) || defined(PEFT_AVX512BF16_EMULATE)
#ifndef PEFT_AVX512BF16_EMULATE
#include <immintrin.h>
#endif

/* MR × NR: the register block (16 zmm accumulators: 8 rows × 2 zmm of 16
 * columns); BR rows of A per item, KCH values of K per chunk: a 32-column
 * strip of B for one chunk is 16 KiB (L1), A's rows for it 64 KiB (L2). */
enum { MR = 8, NR = 32, BR = 128, KCH = 256 };

bool kern_avx512bf16_compiled(void) { return true; }

size_t kern_avx512bf16_scratch_floats(int n_threads) {
    return (size_t)BR * KCH / 2 * (size_t)(n_threads > 0 ? n_threads : 1);
}

/* 16 floats rounded to bf16 exactly as kern_f32_to_bf16 does (nearest,
 * ties to even; a NaN made quiet). Not vcvtne2ps2bf16, which also flushes
 * denormals: the B pack was made with kern_f32_to_bf16. */
static inline __m256i round16(__m512 x) {
    const __m512i u = _mm512_castps_si512(x), hi = _mm512_srli_epi32(u, 16);
    const __m512i bias = _mm512_add_epi32(_mm512_and_si512(hi, _mm512_set1_epi32(1)), _mm512_set1_epi32(0x7fff));
    __m512i r = _mm512_srli_epi32(_mm512_add_epi32(u, bias), 16);
    r = _mm512_mask_mov_epi32(r, _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q), _mm512_or_si512(hi, _mm512_set1_epi32(0x40)));
    return _mm512_cvtepi32_epi16(r);
}

/* Rows [m0, m0 + rows) × K values [k0, k0 + kc) of A as bf16 into buf (row
 * stride KCH); rows past M and values past K are zeros. kc is even. */
static void pack_a(uint16_t *buf, const float *A, int lda, int M, int K, int m0, int rows, int k0, int kc) {
    for (int i = 0; i < rows; i++) {
        uint16_t *dst = buf + (size_t)i * KCH;
        const int m = m0 + i, n = m < M ? PEFT_MIN(kc, K - k0) : 0;
        int k = 0;
        if (n > 0) {
            const float *src = A + (size_t)m * lda + k0;
            for (; k + 16 <= n; k += 16) _mm256_storeu_si256((__m256i *)(dst + k), round16(_mm512_loadu_ps(src + k)));
            for (; k < n; k++) dst[k] = kern_f32_to_bf16(src[k]);
        }
        for (; k < kc; k++) dst[k] = 0;
    }
}

/* An MR × NR block of C (row stride ldc): zero or load, add np pairs of K,
 * store. a: the block's first row of A pairs (row stride KCH); b0, b1: the
 * pack's tiles for its two 16-column halves at the chunk's first K. */
static void block(float *c, int ldc, bool zero, const uint16_t *a, const uint16_t *b0, const uint16_t *b1, int np) {
    __m512 acc[MR][2];
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        acc[i][0] = zero ? _mm512_setzero_ps() : _mm512_loadu_ps(c + (size_t)i * ldc);
        acc[i][1] = zero ? _mm512_setzero_ps() : _mm512_loadu_ps(c + (size_t)i * ldc + 16);
    }
    for (int p = 0; p < np; p++) {
        /* a column block's tiles follow each other along K: its pair rows
         * are contiguous, 32 bf16 each */
        const size_t bo = (size_t)p * 32;
        const __m512bh x0 = (__m512bh)_mm512_loadu_si512(b0 + bo), x1 = (__m512bh)_mm512_loadu_si512(b1 + bo);
#pragma GCC unroll 8
        for (int i = 0; i < MR; i++) {
            int32_t pair;
            memcpy(&pair, a + (size_t)i * KCH + 2 * (size_t)p, sizeof pair);
            const __m512bh ai = (__m512bh)_mm512_set1_epi32(pair);
            acc[i][0] = _mm512_dpbf16_ps(acc[i][0], ai, x0);
            acc[i][1] = _mm512_dpbf16_ps(acc[i][1], ai, x1);
        }
    }
#pragma GCC unroll 8
    for (int i = 0; i < MR; i++) {
        _mm512_storeu_ps(c + (size_t)i * ldc, acc[i][0]);
        _mm512_storeu_ps(c + (size_t)i * ldc + 16, acc[i][1]);
    }
}

int kern_avx512bf16_gemm(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                         const float *bias, float beta, float *scratch, int n_threads) {
    if (M <= 0 || N <= 0) return 0;
    if (n_threads < 1) n_threads = 1;
    const bool acc = bias || beta != 0.0f;
    /* Items: BR rows × a group of 32-column strips; groups only when there
     * are fewer row blocks than threads. Depends on the shapes and thread
     * count only, and only decides who computes an element. */
    const int n_rb = (M + BR - 1) / BR, n_st = (N + NR - 1) / NR;
    const int n_cg = PEFT_MIN(n_st, PEFT_MAX(1, (n_threads + n_rb - 1) / n_rb));
    const int spg = (n_st + n_cg - 1) / n_cg;
    const size_t cstep = (size_t)nkb * 512; /* one 16-column block of the pack */
#pragma omp parallel num_threads(n_threads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        uint16_t *abuf = (uint16_t *)(scratch + (size_t)tid * (BR * KCH / 2));
        float tmp[MR * NR];
#pragma omp for schedule(static) nowait
        for (int item = 0; item < n_rb * n_cg; item++) {
            const int m0 = (item / n_cg) * BR, s0 = (item % n_cg) * spg, s1 = PEFT_MIN(n_st, s0 + spg);
            if (s0 >= s1) continue;
            const int mb = PEFT_MIN(BR, M - m0), n0 = s0 * NR, nb = PEFT_MIN(N, s1 * NR) - n0;
            /* the sums' starting values, as kern_bf16_gemm_ref makes them */
            if (bias || (acc && beta != 1.0f) || K <= 0) /* K = 0: the zeros of an empty sum */
                for (int i = 0; i < mb; i++) {
                    float *cr = C + (size_t)(m0 + i) * ldc + n0;
                    for (int j = 0; j < nb; j++) {
                        float v = beta == 0.0f ? 0.0f : beta == 1.0f ? cr[j] : beta * cr[j];
                        if (bias) v = v + bias[n0 + j];
                        cr[j] = v;
                    }
                }
            const int rows8 = (mb + MR - 1) / MR * MR;
            for (int k0 = 0; k0 < K; k0 += KCH) {
                const int np = (PEFT_MIN(KCH, K - k0) + 1) / 2;
                const bool zero = !acc && k0 == 0;
                pack_a(abuf, A, lda, M, K, m0, rows8, k0, 2 * np);
                for (int s = s0; s < s1; s++) {
                    const uint16_t *b0 = Bp + (size_t)(2 * s) * cstep + (size_t)(k0 / 32) * 512, *b1 = b0 + cstep;
                    const int cols = PEFT_MIN(NR, N - s * NR);
                    for (int i0 = 0; i0 < mb; i0 += MR) {
                        const int rows = PEFT_MIN(MR, mb - i0);
                        float *c = C + (size_t)(m0 + i0) * ldc + (size_t)s * NR;
                        const uint16_t *a = abuf + (size_t)i0 * KCH;
                        if (rows == MR && cols == NR) {
                            block(c, ldc, zero, a, b0, b1, np);
                            continue;
                        }
                        /* an edge block goes through a full MR × NR copy */
                        memset(tmp, 0, sizeof tmp);
                        if (!zero)
                            for (int i = 0; i < rows; i++) memcpy(tmp + i * NR, c + (size_t)i * ldc, (size_t)cols * sizeof(float));
                        block(tmp, NR, zero, a, b0, b1, np);
                        for (int i = 0; i < rows; i++) memcpy(c + (size_t)i * ldc, tmp + i * NR, (size_t)cols * sizeof(float));
                    }
                }
            }
        }
    }
    return 0;
}

#else /* the compiler cannot target AVX512-BF16 */

bool kern_avx512bf16_compiled(void) { return false; }
size_t kern_avx512bf16_scratch_floats(int n_threads) { (void)n_threads; return 0; }
int kern_avx512bf16_gemm(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                         const float *bias, float beta, float *scratch, int n_threads) {
    (void)C; (void)ldc; (void)A; (void)lda; (void)M; (void)K; (void)N; (void)Bp; (void)nkb; (void)bias; (void)beta;
    (void)scratch; (void)n_threads;
    return PEFT_ERR_UNSUPPORTED;
}

#endif
