/* norm.c — RMSNorm and LayerNorm forward. */
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
