/* qdot_avxvnni.c — the int8 decoding products with AVX-VNNI (vpdpbusd on
 * 256-bit vectors, VEX-encoded: Alder Lake, Sapphire Rapids and later).
 * Built with -mavxvnni where the compiler has it; the same code as the
 * AVX2 unit (qdot_simd.h), the same results. */
#include "kernels/qdot.h"

/* PEFT_QDOT_EMULATE: tests/test_qdot_emul.c builds this file with
 * vpdpbusd replaced by a portable model, on any AVX2 CPU. */
#if (defined(__AVXVNNI__) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)) || \
    (defined(PEFT_QDOT_EMULATE) && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__))
#include <immintrin.h>

#define QD_DOT(u, s) _mm256_dpbusd_avx_epi32(_mm256_setzero_si256(), (u), (s))
#define QD_UNIT avxvnni
#include "kernels/qdot_simd.h"

bool kern_qdot_avxvnni_compiled(void) { return true; }
void kern_qdot_rows_avxvnni(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K, const kq8_row *x,
                            int T, float *out) {
    qd_rows_avxvnni(dt, w, rb, n_rows, K, x, T, out);
}
#else
bool kern_qdot_avxvnni_compiled(void) { return false; }
void kern_qdot_rows_avxvnni(peft_dtype dt, const uint8_t *w, size_t rb, int64_t n_rows, int64_t K, const kq8_row *x,
                            int T, float *out) {
    kern_qdot_rows_ref(dt, w, rb, n_rows, K, x, T, out);
}
#endif
