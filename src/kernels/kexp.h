/* kexp.h — a vectorizable e^x and row reductions (max, double sum) shared
 * by the kernels (activations, softmax, cross-entropy, norms). Internal to
 * src/kernels. */
#ifndef PEFT_KERNELS_KEXP_H
#define PEFT_KERNELS_KEXP_H

#include <math.h>
#include <stdint.h>

/* e^x for |x| < 88 to about 1 ulp, written so the compiler vectorizes the
 * loops that call it (libm's expf is a call per element): x = n·ln2 + r
 * with |r| <= ln2/2 (Cody-Waite split of ln2), e^r by its degree-6 Taylor
 * polynomial (error < 2e-7 relative), 2^n put straight into the exponent. */
static inline float kexp(float x) {
    x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x);
    const float n = floorf(x * 1.44269504088896341f + 0.5f);
    const float r = (x - n * 0.693145751953125f) - n * 1.428606765330187e-06f;
    float p = 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* NaN in, NaN out: the exponent of a NaN n is taken as 0 (p is NaN) */
    union { uint32_t u; float f; } sc = {.u = (uint32_t)((int32_t)(n == n ? n : 0.0f) + 127) << 23};
    return p * sc.f;
}

/* max of x[0..n) (n >= 1) in 16 lanes: exact, and vectorized. */
static inline float kmax(const float *x, int n) {
    float lane[16];
    for (int j = 0; j < 16; j++) lane[j] = x[0];
    int i = 0;
    for (; i + 16 <= n; i += 16)
        for (int j = 0; j < 16; j++) lane[j] = x[i + j] > lane[j] ? x[i + j] : lane[j];
    float m = lane[0];
    for (int j = 1; j < 16; j++) m = lane[j] > m ? lane[j] : m;
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    return m;
}

/* Σ x[0..n) in 8 double lanes combined in order (vectorized, fixed order). */
static inline double ksum_d(const float *x, int n) {
    double lane[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) lane[j] += (double)x[i + j];
    double s = 0;
    for (int j = 0; j < 8; j++) s += lane[j];
    for (; i < n; i++) s += x[i];
    return s;
}

#endif
