/* matvec.c — y = x·Wᵀ for a handful of rows of x (token-by-token decoding).
 *
 * With T <= KERN_MATVEC_MAX_T the GEMM tile path would convert every weight
 * to f32 only to use it once or twice. Here each output row of W is dotted
 * with the T input rows straight from its stored blocks: Q8_0, Q4_0 and
 * Q4_1 are decoded in registers (AVX2 when the build targets it, portable C
 * otherwise); other types convert one row into a small per-thread buffer.
 * A weight with q8_act set takes matvec_q8.c's products on 8-bit x instead
 * where its dtype has them.
 * Each output element is computed by one thread with the same instruction
 * sequence, so results do not depend on the thread count. */
#include "kernels/kernels.h"
#include "kernels/qdot.h"
#include "kernels/quant.h"

#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#if defined(__AVX2__) || defined(__F16C__) || defined(__AVX512F__)
#include <immintrin.h>
#endif

/* A block's f16 scale: the F16C instruction when the build targets it (one
 * per block, on the decode hot path), the portable conversion otherwise. */
static inline float half_at(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
#ifdef __F16C__
    return _cvtsh_ss(h);
#else
    return peft_f16_to_f32(h);
#endif
}

#ifdef __AVX2__
static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}
#endif

/* acc[t] += Σ_k W[row, k]·x[t, k] for one quantized row of nb blocks of 32.
 * xsum (T, nb) holds per-block sums of x (Q4_1's offset term). */
static void row_dot_q(peft_dtype dt, const uint8_t *row, int64_t nb, const float *x, int64_t K,
                      int T, const float *xsum, float *acc) {
#if defined(__AVX512F__)
    /* a block's 32 weights as two vectors of 16 */
    __m512 vacc[KERN_MATVEC_MAX_T];
    float macc[KERN_MATVEC_MAX_T];
    for (int t = 0; t < T; t++) { vacc[t] = _mm512_setzero_ps(); macc[t] = 0; }
    const __m128i m4 = _mm_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; b++) {
        __m512 w0, w1;
        float mn = 0;
        if (dt == PEFT_DT_Q8_0) {
            const uint8_t *p = row + b * 34;
            __m512 d = _mm512_set1_ps(half_at(p));
            w0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 2)))));
            w1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + 18)))));
        } else {
            const bool q41 = dt == PEFT_DT_Q4_1;
            const uint8_t *p = row + b * (q41 ? 20 : 18);
            __m512 d = _mm512_set1_ps(half_at(p));
            if (q41) mn = half_at(p + 2);
            __m128i q = _mm_loadu_si128((const __m128i *)(p + (q41 ? 4 : 2)));
            __m128i lo = _mm_and_si128(q, m4), hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
            if (!q41) { /* Q4_0 stores q + 8 */
                const __m128i e8 = _mm_set1_epi8(8);
                lo = _mm_sub_epi8(lo, e8);
                hi = _mm_sub_epi8(hi, e8);
            }
            w0 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(lo)));
            w1 = _mm512_mul_ps(d, _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(hi)));
        }
        for (int t = 0; t < T; t++) {
            const float *xb = x + (size_t)t * K + b * 32;
            vacc[t] = _mm512_fmadd_ps(w1, _mm512_loadu_ps(xb + 16), _mm512_fmadd_ps(w0, _mm512_loadu_ps(xb), vacc[t]));
            if (dt == PEFT_DT_Q4_1) macc[t] += mn * xsum[(size_t)t * nb + b];
        }
    }
    for (int t = 0; t < T; t++) acc[t] += _mm512_reduce_add_ps(vacc[t]) + macc[t];
#elif defined(__AVX2__)
    __m256 vacc[KERN_MATVEC_MAX_T];
    float macc[KERN_MATVEC_MAX_T];
    for (int t = 0; t < T; t++) { vacc[t] = _mm256_setzero_ps(); macc[t] = 0; }
    const __m128i m4 = _mm_set1_epi8(0x0f);
    for (int64_t b = 0; b < nb; b++) {
        __m256 w0, w1, w2, w3;
        float mn = 0;
        if (dt == PEFT_DT_Q8_0) {
            const uint8_t *p = row + b * 34;
            __m256 d = _mm256_set1_ps(half_at(p));
            __m128i q0 = _mm_loadu_si128((const __m128i *)(p + 2)), q1 = _mm_loadu_si128((const __m128i *)(p + 18));
            w0 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q0)));
            w1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q0, 8))));
            w2 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q1)));
            w3 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(q1, 8))));
        } else {
            const bool q41 = dt == PEFT_DT_Q4_1;
            const uint8_t *p = row + b * (q41 ? 20 : 18);
            __m256 d = _mm256_set1_ps(half_at(p));
            if (q41) mn = half_at(p + 2);
            __m128i q = _mm_loadu_si128((const __m128i *)(p + (q41 ? 4 : 2)));
            __m128i lo = _mm_and_si128(q, m4), hi = _mm_and_si128(_mm_srli_epi16(q, 4), m4);
            if (!q41) { /* Q4_0 stores q + 8 */
                const __m128i e8 = _mm_set1_epi8(8);
                lo = _mm_sub_epi8(lo, e8);
                hi = _mm_sub_epi8(hi, e8);
            }
            w0 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(lo)));
            w1 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(lo, 8))));
            w2 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(hi)));
            w3 = _mm256_mul_ps(d, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_srli_si128(hi, 8))));
        }
        for (int t = 0; t < T; t++) {
            const float *xb = x + (size_t)t * K + b * 32;
            __m256 a = vacc[t];
            a = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xb), a);
            a = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xb + 8), a);
            a = _mm256_fmadd_ps(w2, _mm256_loadu_ps(xb + 16), a);
            a = _mm256_fmadd_ps(w3, _mm256_loadu_ps(xb + 24), a);
            vacc[t] = a;
            if (dt == PEFT_DT_Q4_1) macc[t] += mn * xsum[(size_t)t * nb + b];
        }
    }
    for (int t = 0; t < T; t++) acc[t] += hsum8(vacc[t]) + macc[t];
#else
    for (int64_t b = 0; b < nb; b++) {
        float w[32], mn = 0;
        if (dt == PEFT_DT_Q8_0) {
            const uint8_t *p = row + b * 34;
            float d = half_at(p);
            for (int j = 0; j < 32; j++) w[j] = d * (float)(int8_t)p[2 + j];
        } else {
            const bool q41 = dt == PEFT_DT_Q4_1;
            const uint8_t *p = row + b * (q41 ? 20 : 18), *qs = p + (q41 ? 4 : 2);
            float d = half_at(p);
            int off = q41 ? 0 : 8;
            if (q41) mn = half_at(p + 2);
            for (int j = 0; j < 16; j++) {
                w[j] = d * (float)((qs[j] & 15) - off);
                w[j + 16] = d * (float)((qs[j] >> 4) - off);
            }
        }
        for (int t = 0; t < T; t++) {
            const float *xb = x + (size_t)t * K + b * 32;
            float s = 0;
            for (int j = 0; j < 32; j++) s += w[j] * xb[j];
            acc[t] += s + mn * xsum[(size_t)t * nb + b];
        }
    }
#endif
}

static float dot_f32(const float *a, const float *b, int64_t n) {
#ifdef __AVX2__
    __m256 s0 = _mm256_setzero_ps(), s1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        s0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), s0);
        s1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), s1);
    }
    float s = hsum8(_mm256_add_ps(s0, s1));
#else
    float s = 0;
    int64_t i = 0;
#endif
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

size_t kern_matvec_scratch_floats(int64_t K, int n_threads) {
    /* a converted row per thread, plus the block sums of x; or the 8-bit x */
    return PEFT_MAX((size_t)K * (size_t)(n_threads > 0 ? n_threads : 1) + (size_t)KERN_MATVEC_MAX_T * (size_t)(K / 32 + 1),
                    kern_matvec_q8_scratch_floats(K));
}

/* The 8-bit path's unit for w, or NONE (the f32 products). */
static kern_qdot_unit q8_unit(const kern_weight *w) {
    if (!w->q8_act || w->transposed || !kern_qdot_type(w->dtype) || w->cols % kern_dtype_block_elems(w->dtype))
        return KERN_QDOT_NONE;
    return kern_qdot_unit_best();
}

bool kern_matvec_takes(const kern_weight *w, int T) {
    if (w->transposed) return false;
    return T <= KERN_MATVEC_MAX_T || (T <= KERN_MATVEC_Q8_MAX_T && q8_unit(w) != KERN_QDOT_NONE);
}

int kern_matvec(float *y, int ldy, const float *x, int T, const kern_weight *w, const float *bias,
                float beta, float *scratch, int n_threads) {
    const int64_t K = w->cols, N = w->rows;
    const peft_dtype dt = w->dtype;
    const kern_qdot_unit u = q8_unit(w);
    if (u != KERN_QDOT_NONE && T <= KERN_MATVEC_Q8_MAX_T)
        return kern_matvec_q8(u, y, ldy, x, T, w, bias, beta, scratch, n_threads);
    if (T > KERN_MATVEC_MAX_T || w->transposed) return PEFT_ERR_INVALID;
    const bool fused = dt == PEFT_DT_Q8_0 || dt == PEFT_DT_Q4_0 || dt == PEFT_DT_Q4_1;
    if (fused && K % 32) return PEFT_ERR_SHAPE;
    if (n_threads < 1) n_threads = 1;
    const int64_t nb = K / 32;
    float *xsum = scratch + (size_t)K * (size_t)n_threads;
    if (dt == PEFT_DT_Q4_1)
        for (int t = 0; t < T; t++)
            for (int64_t b = 0; b < nb; b++) {
                float s = 0;
                for (int j = 0; j < 32; j++) s += x[(size_t)t * K + b * 32 + j];
                xsum[(size_t)t * nb + b] = s;
            }
    const size_t rb = kern_dtype_row_bytes(dt, K);
    int status = 0;
    /* Fixed chunks of rows: the split does not depend on n_threads. */
    const int64_t chunk = 64, n_chunks = (N + chunk - 1) / chunk;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1) reduction(min : status)
    for (int64_t c = 0; c < n_chunks; c++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *rowbuf = scratch + (size_t)tid * (size_t)K;
        for (int64_t n = c * chunk; n < PEFT_MIN(N, (c + 1) * chunk); n++) {
            float acc[KERN_MATVEC_MAX_T] = {0};
            const uint8_t *row = (const uint8_t *)w->data + (size_t)n * rb;
            if (fused) row_dot_q(dt, row, nb, x, K, T, xsum, acc);
            else {
                const float *wr = (const float *)row;
                if (dt != PEFT_DT_F32) {
                    int rc = kern_dequant_row(dt, row, rowbuf, K);
                    if (rc) { status = rc; break; }
                    wr = rowbuf;
                }
                for (int t = 0; t < T; t++) acc[t] = dot_f32(wr, x + (size_t)t * K, K);
            }
            for (int t = 0; t < T; t++) {
                float *yy = y + (size_t)t * ldy + n;
                *yy = (beta == 0.0f ? 0.0f : beta * *yy) + acc[t] + (bias ? bias[n] : 0.0f);
            }
        }
    }
    return status;
}
