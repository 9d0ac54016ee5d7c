/* amx.c — C (M, N) = beta·C + bias + A (M, K) · B (K, N) with A in f32, B
 * packed as bfloat16 (bf16.c) and the products summed in f32 on the AMX
 * tile unit (tdpbf16ps). A is rounded to bfloat16 (nearest even) as it is
 * packed, 128 rows × 2048 columns at a time, into the caller's scratch.
 *
 * Work is cut into blocks of 128 rows of C (and groups of columns when
 * there are fewer row blocks than threads); each C element is produced by
 * one block walking K in the same order, so results do not depend on the
 * thread count. Inside an item, a 32 × 32 block of C
 * lives in four tiles while K streams through two A and two B tiles. */
#include "kernels/kernels.h"

#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AMX_TILE__) && defined(__AMX_BF16__) && defined(__AVX512BF16__) && defined(__AVX512F__)
#include <immintrin.h>

enum { BM = 128, BN = 256, KC = 2048 };

bool kern_amx_compiled(void) { return true; }

size_t kern_amx_scratch_floats(int n_threads) {
    return (size_t)BM * KC / 2 * (size_t)(n_threads > 0 ? n_threads : 1);
}

typedef struct {
    uint8_t palette, start_row, reserved[14];
    uint16_t colsb[16];
    uint8_t rows[16];
} tile_config;

static void config_tiles(void) {
    tile_config c;
    memset(&c, 0, sizeof c);
    c.palette = 1;
    for (int i = 0; i < 8; i++) { c.colsb[i] = 64; c.rows[i] = 16; }
    _tile_loadconfig(&c);
}

/* Rows [m0, m0 + R) × columns [k0, k0 + kc) of A as bf16 tiles into buf
 * ([R/16][kc/32][16][32]); rows past M and columns past K are zeros. */
static void pack_a(uint16_t *buf, const float *A, int lda, int M, int K, int m0, int R, int k0, int kc) {
    const int nk = kc / 32, rows = PEFT_MIN(R, (M - m0 + 31) / 32 * 32); /* the micro-kernel reads 32s */
    for (int i = 0; i < rows; i++) {
        const int m = m0 + i;
        for (int kb = 0; kb < nk; kb++) {
            uint16_t *dst = buf + ((size_t)(i >> 4) * nk + kb) * 512 + (size_t)(i & 15) * 32;
            const int k = k0 + kb * 32;
            if (m >= M || k >= K) { memset(dst, 0, 64); continue; }
            const float *src = A + (size_t)m * lda + k;
            __m512 lo, hi;
            if (k + 32 <= K) {
                lo = _mm512_loadu_ps(src);
                hi = _mm512_loadu_ps(src + 16);
            } else {
                const int left = K - k;
                lo = _mm512_maskz_loadu_ps((__mmask16)(left >= 16 ? 0xffff : (1u << left) - 1), src);
                hi = _mm512_maskz_loadu_ps((__mmask16)(left <= 16 ? 0 : (1u << (left - 16)) - 1), src + 16);
            }
            __m512bh v = _mm512_cvtne2ps_pbh(hi, lo);
            _mm512_storeu_si512(dst, (__m512i)v);
        }
    }
}

/* One 32 × 32 block of C (row stride ldc floats): zero or load, add nk
 * K-steps of 32, store. a: the block's first A tile (the second 16 rows at
 * a + a_step); b: its first B tile (the second 16 columns at b + b_step). */
static void block32(float *c, int ldc, bool zero, const uint16_t *a, size_t a_step, const uint16_t *b, size_t b_step,
                    int nk) {
    const size_t ls = (size_t)ldc * sizeof(float);
    if (zero) {
        _tile_zero(0); _tile_zero(1); _tile_zero(2); _tile_zero(3);
    } else {
        _tile_loadd(0, c, ls);
        _tile_loadd(1, c + 16, ls);
        _tile_loadd(2, c + (size_t)16 * ldc, ls);
        _tile_loadd(3, c + (size_t)16 * ldc + 16, ls);
    }
    for (int k = 0; k < nk; k++) {
        _tile_loadd(4, a + (size_t)k * 512, 64);
        _tile_loadd(6, b + (size_t)k * 512, 64);
        _tile_loadd(5, a + a_step + (size_t)k * 512, 64);
        _tile_loadd(7, b + b_step + (size_t)k * 512, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
    }
    _tile_stored(0, c, ls);
    _tile_stored(1, c + 16, ls);
    _tile_stored(2, c + (size_t)16 * ldc, ls);
    _tile_stored(3, c + (size_t)16 * ldc + 16, ls);
}

int kern_amx_bf16_gemm(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                       const float *bias, float beta, float *scratch, int n_threads) {
    if (M <= 0 || N <= 0) return 0;
    const int Kp = (K + 31) / 32 * 32;
    const bool acc = bias || beta != 0.0f;
    /* K in equal chunks of at most KC (the A buffer is sized for BM × KC) */
    const int n_kch = (Kp + KC - 1) / KC, kcs = ((Kp + n_kch - 1) / n_kch + 31) / 32 * 32;
    if (n_threads < 1) n_threads = 1;
    /* An item is a block of R rows × a group of columns. R: as many rows as
     * the per-thread A buffer holds for one K chunk (BM · KC bf16), split
     * evenly over a multiple of the threads; A is packed (rounded to bf16)
     * once per item and K chunk and stays in L2. Column groups only when
     * there are fewer row blocks than threads (each thread then reads its
     * share of B once). Inside an item: panels of 256 columns (B's panel in L2), rows
     * in 32s (A's slice in L1). The cut changes which thread computes a C
     * element, not its arithmetic. */
    const int r_lim = PEFT_MAX(32, (BM * KC / kcs) / 32 * 32);
    int n_rsb = (M + r_lim - 1) / r_lim;
    if (n_rsb > 1) n_rsb = (n_rsb + n_threads - 1) / n_threads * n_threads; /* balanced */
    const int R = ((M + n_rsb - 1) / n_rsb + 31) / 32 * 32;
    const int n_pn = (N + BN - 1) / BN;
    const int n_cg = PEFT_MIN(n_pn, PEFT_MAX(1, (n_threads + n_rsb - 1) / n_rsb));
    const int cg = (n_pn + n_cg - 1) / n_cg * BN;
#pragma omp parallel num_threads(n_threads)
    {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        uint16_t *abuf = (uint16_t *)(scratch + (size_t)tid * (BM * KC / 2));
        float tmp[32 * 32];
        config_tiles();
#pragma omp for schedule(static) nowait
        for (int item = 0; item < n_rsb * n_cg; item++) {
            const int m0 = (item / n_cg) * R, n0 = (item % n_cg) * cg;
            if (n0 >= N || m0 >= M) continue;
            const int mb = PEFT_MIN(R, M - m0), nb = PEFT_MIN(cg, N - n0);
            if (bias || (acc && beta != 1.0f))
                for (int i = 0; i < mb; i++) {
                    float *cr = C + (size_t)(m0 + i) * ldc + n0;
                    for (int j = 0; j < nb; j++) cr[j] = (beta == 0.0f ? 0.0f : beta * cr[j]) + (bias ? bias[n0 + j] : 0.0f);
                }
            for (int k0 = 0; k0 < Kp; k0 += kcs) {
                const int kc = PEFT_MIN(kcs, Kp - k0), nk = kc / 32;
                const bool zero = !acc && k0 == 0;
                pack_a(abuf, A, lda, M, K, m0, R, k0, kc);
                for (int p0 = 0; p0 < nb; p0 += BN)
                for (int i0 = 0; i0 < mb; i0 += 32) {
                    const uint16_t *a = abuf + (size_t)(i0 >> 4) * nk * 512;
                    const int rows = PEFT_MIN(32, mb - i0);
                    for (int j0 = p0; j0 < PEFT_MIN(nb, p0 + BN); j0 += 32) {
                        const uint16_t *b = Bp + ((size_t)((n0 + j0) >> 4) * nkb + (size_t)(k0 / 32)) * 512;
                        const size_t b_step = (size_t)nkb * 512;
                        const int cols = PEFT_MIN(32, nb - j0);
                        float *c = C + (size_t)(m0 + i0) * ldc + n0 + j0;
                        if (rows == 32 && cols == 32) {
                            block32(c, ldc, zero, a, (size_t)nk * 512, b, b_step, nk);
                            continue;
                        }
                        /* an edge block goes through a full 32 × 32 copy */
                        memset(tmp, 0, sizeof tmp);
                        if (!zero)
                            for (int i = 0; i < rows; i++) memcpy(tmp + i * 32, c + (size_t)i * ldc, (size_t)cols * sizeof(float));
                        block32(tmp, 32, zero, a, (size_t)nk * 512, b, b_step, nk);
                        for (int i = 0; i < rows; i++) memcpy(c + (size_t)i * ldc, tmp + i * 32, (size_t)cols * sizeof(float));
                    }
                }
            }
        }
        _tile_release();
    }
    return 0;
}

#else /* no AMX in this build */

bool kern_amx_compiled(void) { return false; }
size_t kern_amx_scratch_floats(int n_threads) { (void)n_threads; return 0; }
int kern_amx_bf16_gemm(float *C, int ldc, const float *A, int lda, int M, int K, int N, const uint16_t *Bp, int nkb,
                       const float *bias, float beta, float *scratch, int n_threads) {
    (void)C; (void)ldc; (void)A; (void)lda; (void)M; (void)K; (void)N; (void)Bp; (void)nkb; (void)bias; (void)beta;
    (void)scratch; (void)n_threads;
    return PEFT_ERR_UNSUPPORTED;
}

#endif
