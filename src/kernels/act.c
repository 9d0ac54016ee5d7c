/* act.c — activations and softmax. */
#include "kernels/kernels.h"

#include <math.h>

void kern_swiglu_fwd(float *a, const float *g, const float *u, int64_t n) {
    for (int64_t i = 0; i < n; i++) a[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

void kern_gelu_tanh_fwd(float *y, const float *x, int64_t n) {
    const float k = 0.7978845608028654f; /* sqrt(2/pi) */
    for (int64_t i = 0; i < n; i++) {
        float v = x[i];
        y[i] = 0.5f * v * (1.0f + tanhf(k * (v + 0.044715f * v * v * v)));
    }
}

/* silu(g) = g·s with s = sigmoid(g); silu'(g) = s·(1 + g·(1 - s)). */
void kern_swiglu_bwd(float *dg, float *du, const float *da, const float *g, const float *u,
                     int64_t n) {
    for (int64_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + expf(-g[i]));
        dg[i] += da[i] * u[i] * (s * (1.0f + g[i] * (1.0f - s)));
        du[i] += da[i] * (g[i] * s);
    }
}

/* y = x·(1 + tanh(z))/2 with z = k·(x + c·x³):
 * y' = (1 + th)/2 + x·(1 - th²)·k·(1 + 3c·x²)/2. */
void kern_gelu_tanh_bwd(float *dx, const float *dy, const float *x, int64_t n) {
    const float k = 0.7978845608028654f, c = 0.044715f;
    for (int64_t i = 0; i < n; i++) {
        float v = x[i], th = tanhf(k * (v + c * v * v * v));
        float d = 0.5f * (1.0f + th) + 0.5f * v * (1.0f - th * th) * k * (1.0f + 3.0f * c * v * v);
        dx[i] += dy[i] * d;
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
