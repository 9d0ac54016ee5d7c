/* act.c — activations and softmax. */
#include "kernels/kernels.h"

#include "kernels/kexp.h"

#include <math.h>

/* tanh(z) = 1 - 2 / (e^{2z} + 1), exact at the extremes (e^{2z} → 0 or ∞). */
static inline float ktanh(float z) { return 1.0f - 2.0f / (kexp(2.0f * z) + 1.0f); }

/* Elementwise loops are split in fixed chunks: each element's arithmetic is
 * the same on any thread count. */
#define ACT_CHUNK 16384

void kern_swiglu_fwd(float *a, const float *g, const float *u, int64_t n, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < n; c += ACT_CHUNK)
        for (int64_t i = c; i < PEFT_MIN(n, c + ACT_CHUNK); i++) a[i] = g[i] / (1.0f + kexp(-g[i])) * u[i];
}

void kern_gelu_tanh_fwd(float *y, const float *x, int64_t n, int n_threads) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < n; c += ACT_CHUNK)
        for (int64_t i = c; i < PEFT_MIN(n, c + ACT_CHUNK); i++) {
            float v = x[i];
            y[i] = 0.5f * v * (1.0f + ktanh(k * (v + 0.044715f * v * v * v)));
        }
}

/* silu(g) = g·s with s = sigmoid(g); silu'(g) = s·(1 + g·(1 - s)). */
void kern_swiglu_bwd(float *dg, float *du, const float *da, const float *g, const float *u,
                     int64_t n, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < n; c += ACT_CHUNK)
        for (int64_t i = c; i < PEFT_MIN(n, c + ACT_CHUNK); i++) {
            float s = 1.0f / (1.0f + kexp(-g[i]));
            dg[i] += da[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
            du[i] += da[i] * (g[i] * s);
        }
}

/* y = x·(1 + tanh(z))/2 with z = k·(x + c·x³):
 * y' = (1 + th)/2 + x·(1 - th²)·k·(1 + 3c·x²)/2. */
void kern_gelu_tanh_bwd(float *dx, const float *dy, const float *x, int64_t n, int n_threads) {
    const float k = 0.7978845608028654f, c = 0.044715f;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t ch = 0; ch < n; ch += ACT_CHUNK)
        for (int64_t i = ch; i < PEFT_MIN(n, ch + ACT_CHUNK); i++) {
            float v = x[i], th = ktanh(k * (v + c * v * v * v));
            float d = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * k * (1.0f + 3.0f * c * v * v);
            dx[i] += dy[i] * d;
        }
}

/* Exact GELU (BERT's "gelu"): y = x·Φ(x) = x·(1 + erf(x/√2))/2;
 * y' = Φ(x) + x·φ(x), φ(x) = exp(-x²/2)/√(2π). */
void kern_gelu_erf_fwd(float *y, const float *x, int64_t n, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < n; c += ACT_CHUNK)
        for (int64_t i = c; i < PEFT_MIN(n, c + ACT_CHUNK); i++) y[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
}

void kern_gelu_erf_bwd(float *dx, const float *dy, const float *x, int64_t n, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < n; c += ACT_CHUNK)
        for (int64_t i = c; i < PEFT_MIN(n, c + ACT_CHUNK); i++) {
            const float v = x[i];
            const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
            const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
            dx[i] += dy[i] * (cdf + v * pdf);
        }
}

/* GeGLU (Gemma): a = gelu_tanh(g)·u, and its backward
 * dg += da·u·gelu'(g), du += da·gelu(g). */
void kern_geglu_tanh_fwd(float *a, const float *g, const float *u, int64_t n, int n_threads) {
    const float k = 0.7978845608028654f;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t c = 0; c < n; c += ACT_CHUNK)
        for (int64_t i = c; i < PEFT_MIN(n, c + ACT_CHUNK); i++) {
            const float v = g[i];
            a[i] = 0.5f * v * (1.0f + ktanh(k * (v + 0.044715f * v * v * v))) * u[i];
        }
}

void kern_geglu_tanh_bwd(float *dg, float *du, const float *da, const float *g, const float *u, int64_t n,
                         int n_threads) {
    const float k = 0.7978845608028654f, c = 0.044715f;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int64_t ch = 0; ch < n; ch += ACT_CHUNK)
        for (int64_t i = ch; i < PEFT_MIN(n, ch + ACT_CHUNK); i++) {
            const float v = g[i], th = ktanh(k * (v + c * v * v * v));
            const float d = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * k * (1.0f + 3.0f * c * v * v);
            dg[i] += da[i] * u[i] * d;
            du[i] += da[i] * 0.5f * v * (1.0f + th);
        }
}

void kern_softmax_rows(float *x, int T, int C) {
    for (int t = 0; t < T; t++) {
        float *r = x + (size_t)t * C, m = -INFINITY;
        for (int i = 0; i < C; i++) m = r[i] > m ? r[i] : m;
        double s = 0;
        for (int i = 0; i < C; i++) { r[i] = expf(r[i] - m); s += r[i]; }
        float inv = (float)(1.0 / s);
        for (int i = 0; i < C; i++) r[i] *= inv;
    }
}
