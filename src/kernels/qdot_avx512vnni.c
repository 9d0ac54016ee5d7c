/* qdot_avx512vnni.c — the int8 decoding products with AVX512-VNNI
 * (vpdpbusd, here on 256-bit vectors through AVX512-VL: Ice Lake,
 * Cascade Lake, Zen 4 and later). 256 bits keep the lane layout, hence the
 * results, of the other units (qdot_simd.h); decoding is bound by reading
 * the weights, not by the width of the products. Built with -mavx512vnni
 * -mavx512vl where the compiler has them. */
#include "kernels/qdot.h"

/* PEFT_QDOT_EMULATE: tests/test_qdot_emul.c builds this file with
 * vpdpbusd replaced by a portable model, on any AVX2 CPU. */
#if (defined(__AVX512VNNI__) && defined(__AVX512VL__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)) || \
    (defined(PEFT_QDOT_EMULATE) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#include <immintrin.h>

#define QD_DOT(u, s) _mm256_dpbusd_epi32(_mm256_setzero_si256(), (u), (s))
#define QD_UNIT avx512vnni
#include "kernels/qdot_simd.h"

bool kern_qdot_avx512vnni_compiled(void) { return true; }
void kern_qdot_rows_avx512vnni(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K,
                               const kq8_row *x, int T, float *out) {
    qd_rows_avx512vnni(dt, w, rb, n_rows, K, x, T, out);
}
#else
bool kern_qdot_avx512vnni_compiled(void) { return false; }
void kern_qdot_rows_avx512vnni(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K,
                               const kq8_row *x, int T, float *out) {
    kern_qdot_rows_ref(dt, w, rb, n_rows, K, x, T, out);
}
#endif
