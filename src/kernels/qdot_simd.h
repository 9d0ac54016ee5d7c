/* qdot_simd.h — the int8 decoding products over 256-bit vectors, written
 * once for every unit: the including file defines QD_DOT(u, s), the eight
 * int32 lane sums Σ_{j<4} u[4k+j]·s[4k+j] of 32 unsigned bytes u and 32
 * signed bytes s (AVX2: vpmaddubsw then vpmaddwd with ones; AVX-VNNI and
 * AVX512-VNNI: vpdpbusd into zero; tests/test_qdot_emul.c: a portable
 * model of vpdpbusd) and QD_UNIT, the suffix of its functions' names, and
 * is compiled with AVX2, FMA and F16C. The
 * arithmetic is the one qdot.h states; kern_qdot_rows_ref is its scalar
 * form.
 *
 * Signed weights (Q8_0, Q4_0, Q5_0, Q6_K) enter as |w| and the activation
 * with w's sign (vpsignb), the unsigned ones (Q4_1, Q5_1, Q4_K, Q5_K) as
 * they are. Products never exceed 128·127, so the pair sums of vpmaddubsw
 * never saturate and every unit gives the same int32 sums.
 *
 * A weight block is decoded once for the T <= 4 activation rows. */
#include "kernels/qdot.h"

#include <immintrin.h>
#include <string.h>

#if !defined(QD_DOT) || !defined(QD_UNIT)
#error "define QD_DOT(u, s) and QD_UNIT before including qdot_simd.h"
#endif
/* Every function's name carries the unit's (QD_UNIT): one file may hold
 * several units (tests/test_qdot_emul.c). */
#define QD_CAT_(a, b) a##_##b
#define QD_CAT(a, b) QD_CAT_(a, b)
#define QD_N(name) QD_CAT(name, QD_UNIT)

#define QD_AI static inline __attribute__((always_inline))

QD_AI float QD_N(qd_half)(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

QD_AI uint32_t QD_N(qd_u32)(const uint8_t *p) {
    uint32_t v;
    memcpy(&v, p, 4);   /* x86 is little-endian, as the file */
    return v;
}

/* (l0+l4 + l2+l6) + (l1+l5 + l3+l7), as qdot.c's lanes_sum */
QD_AI float QD_N(qd_hsum)(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

QD_AI __m256i QD_N(qd_load)(const void *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* 16 bytes of nibbles as 32 bytes: the low nibbles (elements 0..15), then
 * the high ones (16..31). */
QD_AI __m256i QD_N(qd_nibbles)(const uint8_t *p) {
    const __m128i q = _mm_loadu_si128((const __m128i *)p), m = _mm_set1_epi8(15);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(q, 4), m), _mm_and_si128(q, m));
}

/* Bit j of qh as 16 in byte j (the fifth bit of Q5_0 / Q5_1). */
QD_AI __m256i QD_N(qd_bit4)(uint32_t qh) {
    const __m256i pick = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3,
                                          3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)qh), pick);
    v = _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
    return _mm256_and_si256(v, _mm256_set1_epi8(16));
}

/* Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: one 32-block at a time. */
QD_AI void QD_N(qd_row_simple)(const peft_dtype dt, const uint8_t *row, int64_t nb, const kq8_row *x, int T, float *out) {
    const bool has_min = dt == PEFT_DT_Q4_1 || dt == PEFT_DT_Q5_1, sgn = !has_min;
    const size_t bb = dt == PEFT_DT_Q8_0 ? 34 : dt == PEFT_DT_Q4_0 ? 18 : dt == PEFT_DT_Q4_1 ? 20 : dt == PEFT_DT_Q5_0 ? 22 : 24;
    __m256 acc[4];
    float msum[4];
    for (int t = 0; t < T; t++) {
        acc[t] = _mm256_setzero_ps();
        msum[t] = 0.0f;
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = row + (size_t)b * bb;
        const float dw = QD_N(qd_half)(p);
        float mn = 0.0f;
        __m256i wv;
        switch (dt) {
        case PEFT_DT_Q8_0: wv = QD_N(qd_load)(p + 2); break;
        case PEFT_DT_Q4_0: wv = _mm256_sub_epi8(QD_N(qd_nibbles)(p + 2), _mm256_set1_epi8(8)); break;
        case PEFT_DT_Q4_1: mn = QD_N(qd_half)(p + 2); wv = QD_N(qd_nibbles)(p + 4); break;
        case PEFT_DT_Q5_0:
            wv = _mm256_sub_epi8(_mm256_or_si256(QD_N(qd_nibbles)(p + 6), QD_N(qd_bit4)(QD_N(qd_u32)(p + 2))), _mm256_set1_epi8(16));
            break;
        default: mn = QD_N(qd_half)(p + 2); wv = _mm256_or_si256(QD_N(qd_nibbles)(p + 8), QD_N(qd_bit4)(QD_N(qd_u32)(p + 4))); break;
        }
        const __m256i uw = sgn ? _mm256_abs_epi8(wv) : wv;
        for (int t = 0; t < T; t++) {
            __m256i xv = QD_N(qd_load)(x[t].q + b * 32);
            if (sgn) xv = _mm256_sign_epi8(xv, wv);
            const __m256i is = QD_DOT(uw, xv);
            acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_set1_ps(dw * x[t].d[b]), acc[t]);
            if (has_min) msum[t] += mn * x[t].s[b];
        }
    }
    for (int t = 0; t < T; t++) out[t] = QD_N(qd_hsum)(acc[t]) + msum[t];
}

QD_AI void QD_N(qd_scale_min_k4)(int g, const uint8_t *s, int *sc, int *mn) {
    if (g < 4) {
        *sc = s[g] & 63;
        *mn = s[g + 4] & 63;
    } else {
        *sc = (s[g + 4] & 0xF) | ((s[g - 4] >> 6) << 4);
        *mn = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
    }
}

/* Q4_K and Q5_K: super-blocks of 8 groups of 32, each group one activation
 * block; the min terms dmin·m_g·Σx_g in eight lanes, one per group. */
QD_AI void QD_N(qd_row_k45)(const bool five, const uint8_t *row, int64_t nsb, const kq8_row *x, int T, float *out) {
    const size_t bb = five ? 176 : 144;
    const __m256i m4 = _mm256_set1_epi8(15), one = _mm256_set1_epi8(1);
    __m256 acc[4], macc[4];
    for (int t = 0; t < T; t++) acc[t] = macc[t] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *p = row + (size_t)sb * bb, *qs = p + (five ? 48 : 16);
        const float d = QD_N(qd_half)(p), dmin = QD_N(qd_half)(p + 2);
        float dsc[8], dmn[8];
        for (int g = 0; g < 8; g++) {
            int sc, mn;
            QD_N(qd_scale_min_k4)(g, p + 4, &sc, &mn);
            dsc[g] = d * (float)sc;
            dmn[g] = dmin * (float)mn;
        }
        __m256i hv = five ? QD_N(qd_load)(p + 16) : _mm256_setzero_si256();
        for (int c = 0; c < 4; c++) {
            const __m256i q = QD_N(qd_load)(qs + c * 32);
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (five) {
                /* bits 2c and 2c+1 of qh[j]; shifting two at a time keeps
                 * the neighbour byte's bits out of the two looked at */
                lo = _mm256_or_si256(lo, _mm256_slli_epi16(_mm256_and_si256(hv, one), 4));
                hi = _mm256_or_si256(hi, _mm256_slli_epi16(_mm256_and_si256(_mm256_srli_epi16(hv, 1), one), 4));
                hv = _mm256_srli_epi16(hv, 2);
            }
            const int64_t b = sb * 8 + 2 * c;
            for (int t = 0; t < T; t++) {
                const __m256i i0 = QD_DOT(lo, QD_N(qd_load)(x[t].q + b * 32));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_set1_ps(dsc[2 * c] * x[t].d[b]), acc[t]);
                const __m256i i1 = QD_DOT(hi, QD_N(qd_load)(x[t].q + (b + 1) * 32));
                acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_set1_ps(dsc[2 * c + 1] * x[t].d[b + 1]), acc[t]);
            }
        }
        const __m256 dm = _mm256_loadu_ps(dmn);
        for (int t = 0; t < T; t++) macc[t] = _mm256_fmadd_ps(dm, _mm256_loadu_ps(x[t].s + sb * 8), macc[t]);
    }
    for (int t = 0; t < T; t++) out[t] = QD_N(qd_hsum)(acc[t]) - QD_N(qd_hsum)(macc[t]);
}

/* Q6_K: 6-bit weights minus 32, a signed scale per 16 (lanes 0-3 and 4-7
 * of a unit take the two scales of its halves). */
QD_AI void QD_N(qd_row_q6k)(const uint8_t *row, int64_t nsb, const kq8_row *x, int T, float *out) {
    const __m256i m4 = _mm256_set1_epi8(15), three = _mm256_set1_epi8(3), o32 = _mm256_set1_epi8(32);
    __m256 acc[4];
    for (int t = 0; t < T; t++) acc[t] = _mm256_setzero_ps();
    for (int64_t sb = 0; sb < nsb; sb++) {
        const uint8_t *p = row + (size_t)sb * 210;
        const int8_t *sc = (const int8_t *)(p + 192);
        const float d = QD_N(qd_half)(p + 208);
        float dsc[16];
        for (int i = 0; i < 16; i++) dsc[i] = d * (float)sc[i];
        for (int h = 0; h < 2; h++) {
            const __m256i l0 = QD_N(qd_load)(p + h * 64), l1 = QD_N(qd_load)(p + h * 64 + 32);
            __m256i qh = QD_N(qd_load)(p + 128 + h * 32);
            for (int s = 0; s < 4; s++) {
                const __m256i src = (s & 1) ? l1 : l0;
                const __m256i low = s < 2 ? _mm256_and_si256(src, m4) : _mm256_and_si256(_mm256_srli_epi16(src, 4), m4);
                const __m256i high = _mm256_slli_epi16(_mm256_and_si256(qh, three), 4);
                qh = _mm256_srli_epi16(qh, 2);
                const __m256i wv = _mm256_sub_epi8(_mm256_or_si256(low, high), o32), uw = _mm256_abs_epi8(wv);
                const int64_t b = sb * 8 + h * 4 + s;
                const int g = h * 8 + s * 2;
                for (int t = 0; t < T; t++) {
                    const __m256i is = QD_DOT(uw, _mm256_sign_epi8(QD_N(qd_load)(x[t].q + b * 32), wv));
                    const float dx = x[t].d[b];
                    const __m256 f = _mm256_set_m128(_mm_set1_ps(dsc[g + 1] * dx), _mm_set1_ps(dsc[g] * dx));
                    acc[t] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), f, acc[t]);
                }
            }
        }
    }
    for (int t = 0; t < T; t++) out[t] = QD_N(qd_hsum)(acc[t]);
}

static void QD_N(qd_rows)(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K, const kq8_row *x, int T,
                    float *out) {
    switch (dt) {
#define QD_SIMPLE(D) \
    case D: for (int64_t n = 0; n < n_rows; n++) QD_N(qd_row_simple)(D, w + (size_t)n * rb, K / 32, x, T, out + n * T); break;
    QD_SIMPLE(PEFT_DT_Q8_0)
    QD_SIMPLE(PEFT_DT_Q4_0)
    QD_SIMPLE(PEFT_DT_Q4_1)
    QD_SIMPLE(PEFT_DT_Q5_0)
    QD_SIMPLE(PEFT_DT_Q5_1)
#undef QD_SIMPLE
    case PEFT_DT_Q4_K:
        for (int64_t n = 0; n < n_rows; n++) QD_N(qd_row_k45)(false, w + (size_t)n * rb, K / 256, x, T, out + n * T);
        break;
    case PEFT_DT_Q5_K:
        for (int64_t n = 0; n < n_rows; n++) QD_N(qd_row_k45)(true, w + (size_t)n * rb, K / 256, x, T, out + n * T);
        break;
    case PEFT_DT_Q6_K:
        for (int64_t n = 0; n < n_rows; n++) QD_N(qd_row_q6k)(w + (size_t)n * rb, K / 256, x, T, out + n * T);
        break;
    default: break;
    }
}
