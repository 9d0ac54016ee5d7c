/* norm.c — RMSNorm and LayerNorm, forward and backward. */
#include "kernels/kernels.h"

#include <math.h>

void kern_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int T, int C,
                      float eps) {
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *yt = y + (size_t)t * C;
        double ss = 0;
        for (int i = 0; i < C; i++) ss += (double)xt[i] * xt[i];
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int i = 0; i < C; i++) yt[i] = xt[i] * r * w[i];
        if (rstd) rstd[t] = r;
    }
}

void kern_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w,
                        const float *b, int T, int C, float eps) {
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *yt = y + (size_t)t * C;
        double m = 0;
        for (int i = 0; i < C; i++) m += xt[i];
        m /= C;
        double v = 0;
        for (int i = 0; i < C; i++) { double d = xt[i] - m; v += d * d; }
        v /= C;
        float r = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
        for (int i = 0; i < C; i++) yt[i] = (xt[i] - mf) * r * w[i] + (b ? b[i] : 0.0f);
        if (mean) mean[t] = mf;
        if (rstd) rstd[t] = r;
    }
}

/* y_i = x_i·r·w_i with r = (mean(x²) + eps)^-1/2, so with g_i = dy_i·w_i:
 * dx_j = r·g_j - x_j·r³·Σ_i g_i·x_i / C, and dw_i = Σ_t dy_i·x_i·r. */
void kern_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w,
                      const float *rstd, int T, int C) {
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C, *dyt = dy + (size_t)t * C;
        float *dxt = dx + (size_t)t * C;
        const double r = rstd[t];
        double gx = 0;
        for (int i = 0; i < C; i++) gx += (double)dyt[i] * w[i] * xt[i];
        const float a = (float)r, c = (float)(r * r * r * gx / C);
        for (int i = 0; i < C; i++) dxt[i] += a * (dyt[i] * w[i]) - c * xt[i];
        if (dw)
            for (int i = 0; i < C; i++) dw[i] += dyt[i] * xt[i] * a;
    }
}

/* With xh = (x - mean)·r and g = dy·w:
 * dx = r·(g - mean(g) - xh·mean(g·xh)), dw += dy·xh, db += dy. */
void kern_layernorm_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, const float *mean, const float *rstd, int T, int C) {
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C, *dyt = dy + (size_t)t * C;
        float *dxt = dx + (size_t)t * C;
        const float m = mean[t], r = rstd[t];
        double sg = 0, sgx = 0;
        for (int i = 0; i < C; i++) {
            double g = (double)dyt[i] * w[i], xh = (double)(xt[i] - m) * r;
            sg += g;
            sgx += g * xh;
        }
        const float mg = (float)(sg / C), mgx = (float)(sgx / C);
        for (int i = 0; i < C; i++) {
            float xh = (xt[i] - m) * r;
            dxt[i] += r * (dyt[i] * w[i] - mg - xh * mgx);
        }
        if (dw)
            for (int i = 0; i < C; i++) dw[i] += dyt[i] * ((xt[i] - m) * r);
        if (db)
            for (int i = 0; i < C; i++) db[i] += dyt[i];
    }
}
