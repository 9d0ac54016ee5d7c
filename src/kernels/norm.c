/* norm.c — RMSNorm and LayerNorm, forward and backward.
 *
 * Rows are independent: OpenMP splits them (each row's arithmetic is the
 * same on any thread count). Row sums run in 8 double lanes combined in
 * order, which vectorizes. The weight and bias gradients (BitFit, full
 * fine-tuning) are sums over rows: when they are asked for, rows run in
 * order on one thread. */
#include "kernels/kernels.h"
#include "kernels/kexp.h"

#include <math.h>

/* rows per thread below which threads cost more than they save */
#define NORM_PAR_ELEMS 32768

/* Σ a_i·b_i·c_i (c may be NULL) in 8 double lanes */
static inline double dot3(const float *a, const float *b, const float *c, int n) {
    double lane[8] = {0};
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) lane[j] += (double)a[i + j] * b[i + j] * (c ? c[i + j] : 1.0f);
    double s = 0;
    for (int j = 0; j < 8; j++) s += lane[j];
    for (; i < n; i++) s += (double)a[i] * b[i] * (c ? c[i] : 1.0f);
    return s;
}

void kern_rmsnorm_fwd(float *y, float *rstd, const float *x, const float *w, int T, int C,
                      float eps, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if ((int64_t)T * C > NORM_PAR_ELEMS)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *yt = y + (size_t)t * C;
        const double ss = dot3(xt, xt, NULL, C);
        float r = (float)(1.0 / sqrt(ss / C + eps));
        for (int i = 0; i < C; i++) yt[i] = xt[i] * r * w[i];
        if (rstd) rstd[t] = r;
    }
}

void kern_layernorm_fwd(float *y, float *mean, float *rstd, const float *x, const float *w,
                        const float *b, int T, int C, float eps, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if ((int64_t)T * C > NORM_PAR_ELEMS)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C;
        float *yt = y + (size_t)t * C;
        const double m = ksum_d(xt, C) / C;
        double lane[8] = {0}, v = 0;
        int i = 0;
        for (; i + 8 <= C; i += 8)
            for (int j = 0; j < 8; j++) { const double d = xt[i + j] - m; lane[j] += d * d; }
        for (int j = 0; j < 8; j++) v += lane[j];
        for (; i < C; i++) { const double d = xt[i] - m; v += d * d; }
        v /= C;
        float r = (float)(1.0 / sqrt(v + eps)), mf = (float)m;
        for (int k = 0; k < C; k++) yt[k] = (xt[k] - mf) * r * w[k] + (b ? b[k] : 0.0f);
        if (mean) mean[t] = mf;
        if (rstd) rstd[t] = r;
    }
}

/* y_i = x_i·r·w_i with r = (mean(x²) + eps)^-1/2, so with g_i = dy_i·w_i:
 * dx_j = r·g_j - x_j·r³·Σ_i g_i·x_i / C, and dw_i = Σ_t dy_i·x_i·r. */
void kern_rmsnorm_bwd(float *dx, float *dw, const float *dy, const float *x, const float *w,
                      const float *rstd, int T, int C, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (!dw && (int64_t)T * C > NORM_PAR_ELEMS)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C, *dyt = dy + (size_t)t * C;
        float *dxt = dx + (size_t)t * C;
        const double r = rstd[t];
        const double gx = dot3(dyt, w, xt, C);
        const float a = (float)r, c = (float)(r * r * r * gx / C);
        for (int i = 0; i < C; i++) dxt[i] += a * (dyt[i] * w[i]) - c * xt[i];
        if (dw)
            for (int i = 0; i < C; i++) dw[i] += dyt[i] * xt[i] * a;
    }
}

/* With xh = (x - mean)·r and g = dy·w:
 * dx = r·(g - mean(g) - xh·mean(g·xh)), dw += dy·xh, db += dy. */
void kern_layernorm_bwd(float *dx, float *dw, float *db, const float *dy, const float *x,
                        const float *w, const float *mean, const float *rstd, int T, int C, int n_threads) {
#pragma omp parallel for num_threads(n_threads) schedule(static) if (!dw && !db && (int64_t)T * C > NORM_PAR_ELEMS)
    for (int t = 0; t < T; t++) {
        const float *xt = x + (size_t)t * C, *dyt = dy + (size_t)t * C;
        float *dxt = dx + (size_t)t * C;
        const float m = mean[t], r = rstd[t];
        double l1[8] = {0}, l2[8] = {0}, sg = 0, sgx = 0;
        int i = 0;
        for (; i + 8 <= C; i += 8)
            for (int j = 0; j < 8; j++) {
                const double g = (double)dyt[i + j] * w[i + j], xh = (double)(xt[i + j] - m) * r;
                l1[j] += g;
                l2[j] += g * xh;
            }
        for (int j = 0; j < 8; j++) { sg += l1[j]; sgx += l2[j]; }
        for (; i < C; i++) {
            const double g = (double)dyt[i] * w[i], xh = (double)(xt[i] - m) * r;
            sg += g;
            sgx += g * xh;
        }
        const float mg = (float)(sg / C), mgx = (float)(sgx / C);
        for (int k = 0; k < C; k++) {
            float xh = (xt[k] - m) * r;
            dxt[k] += r * (dyt[k] * w[k] - mg - xh * mgx);
        }
        if (dw)
            for (int k = 0; k < C; k++) dw[k] += dyt[k] * ((xt[k] - m) * r);
        if (db)
            for (int k = 0; k < C; k++) db[k] += dyt[k];
    }
}
