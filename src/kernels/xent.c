/* xent.c — fused softmax cross-entropy: loss and logit gradient in one pass
 * over each row, so the (T, V) probabilities never exist apart from the
 * gradient (which may overwrite the logits). */
#include "kernels/kernels.h"
#include "kernels/kexp.h"

#include <math.h>

/* Rows are summed in XENT_CHUNKS fixed contiguous chunks, then the chunk sums
 * in order: the loss does not depend on the thread count. */
#define XENT_CHUNKS 64

int kern_xent_fwd_bwd(double *loss_sum, int *n_counted, float *dlogits, const float *logits,
                      const int32_t *targets, int T, int V, float grad_scale, int n_threads) {
    int counted = 0;
    for (int t = 0; t < T; t++) {
        if (targets[t] == -100) continue;
        if (targets[t] < 0 || targets[t] >= V) return PEFT_ERR_INVALID;
        counted++;
    }
    double part[XENT_CHUNKS] = {0};
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int c = 0; c < XENT_CHUNKS; c++) {
        const int t0 = (int)((int64_t)T * c / XENT_CHUNKS);
        const int t1 = (int)((int64_t)T * (c + 1) / XENT_CHUNKS);
        double acc = 0;
        for (int t = t0; t < t1; t++) {
            const float *x = logits + (size_t)t * V;
            float *d = dlogits + (size_t)t * V;
            const int32_t y = targets[t];
            if (y == -100) {
                for (int i = 0; i < V; i++) d[i] = 0.0f;
                continue;
            }
            float m = kmax(x, V);
            const float xy = x[y];
            /* d may alias x: each x[i] is read before d[i] is written */
            /* exps first (a vectorized map), then their sum */
            for (int i = 0; i < V; i++) d[i] = kexp(x[i] - m);
            const double s = ksum_d(d, V);
            acc += (double)m + log(s) - (double)xy;
            const float k = (float)((double)grad_scale / s);
            for (int i = 0; i < V; i++) d[i] *= k;
            d[y] -= grad_scale;
        }
        part[c] = acc;
    }
    double total = 0;
    for (int c = 0; c < XENT_CHUNKS; c++) total += part[c];
    *loss_sum = total;
    *n_counted = counted;
    return 0;
}
