/* qdot_avx2.c — the int8 decoding products with AVX2 (vpmaddubsw +
 * vpmaddwd), and the activation quantizer every unit uses. Built with
 * -mavx2 -mfma -mf16c where the compiler has them (CMakeLists.txt); run
 * only where the CPU has them (kern_qdot_unit_best). */
#include "kernels/qdot.h"

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>

static inline __m256i qd_dot_avx2(__m256i u, __m256i s) {
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}
#define QD_DOT(u, s) qd_dot_avx2((u), (s))
#define QD_UNIT avx2
#include "kernels/qdot_simd.h"

/* a constant expression: clang requires one for the rounding mode */
#define QDOT_ROUND (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)

bool kern_qdot_avx2_compiled(void) { return true; }

void kern_qdot_rows_avx2(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K, const kq8_row *x,
                         int T, float *out) {
    qd_rows_avx2(dt, w, rb, n_rows, K, x, T, out);
}

static inline float hmax8(__m256 v) {
    __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    s = _mm_max_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

/* The same q, d and s as kern_qdot_quantize_ref for finite x: the maximum
 * is exact, the block sum is added in the reference's order, and vroundps
 * rounds to nearest even as nearbyintf does. */
void kern_qdot_quantize_avx2(const float *x, int64_t K, int8_t *q, float *d, float *s) {
    const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
    const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int64_t b = 0; b < K / 32; b++) {
        const float *xb = x + b * 32;
        const __m256 v0 = _mm256_loadu_ps(xb), v1 = _mm256_loadu_ps(xb + 8), v2 = _mm256_loadu_ps(xb + 16),
                     v3 = _mm256_loadu_ps(xb + 24);
        const __m256 am = _mm256_max_ps(_mm256_max_ps(_mm256_and_ps(v0, abs_mask), _mm256_and_ps(v1, abs_mask)),
                                        _mm256_max_ps(_mm256_and_ps(v2, abs_mask), _mm256_and_ps(v3, abs_mask)));
        const float amax = hmax8(am);
        s[b] = qd_hsum_avx2(_mm256_add_ps(_mm256_add_ps(v0, v1), _mm256_add_ps(v2, v3)));
        d[b] = amax / 127.0f;
        const __m256 id = _mm256_set1_ps(amax > 0.0f ? 127.0f / amax : 0.0f);
        const __m256i i0 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v0, id), QDOT_ROUND));
        const __m256i i1 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v1, id), QDOT_ROUND));
        const __m256i i2 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v2, id), QDOT_ROUND));
        const __m256i i3 = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v3, id), QDOT_ROUND));
        /* the packs work per 128-bit half: put the 4-byte groups back in order */
        const __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(i0, i1), _mm256_packs_epi32(i2, i3));
        _mm256_storeu_si256((__m256i *)(q + b * 32), _mm256_permutevar8x32_epi32(p, order));
    }
}
#else
bool kern_qdot_avx2_compiled(void) { return false; }
void kern_qdot_rows_avx2(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K, const kq8_row *x,
                         int T, float *out) {
    kern_qdot_rows_ref(dt, w, rb, n_rows, K, x, T, out);
}
void kern_qdot_quantize_avx2(const float *x, int64_t K, int8_t *q, float *d, float *s) {
    kern_qdot_quantize_ref(x, K, q, d, s);
}
#endif
