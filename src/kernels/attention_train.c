/* attention_train.c — causal grouped-query attention for training: forward
 * that keeps the probabilities, and its backward. One sequence of T queries
 * over L = P + T key/value rows, the first P of which (a prefix, for prefix
 * tuning) every query sees.
 *
 * Per head h with kv head g = h / (n_head / n_kv):
 *   S = scale · Q_h K_gᵀ (T, L), A = softmax over the visible keys, O_h = A V_g
 * Backward:
 *   dV_g += Aᵀ dO_h, dA = dO_h V_gᵀ, dS = A ⊙ (dA - rowsum(dA ⊙ A)),
 *   dQ_h += scale · dS K_g, dK_g += scale · dSᵀ Q_h.
 * BLAS runs single-threaded inside; OpenMP splits heads. */
#include "kernels/kernels.h"

#include <cblas.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

void kern_attn_train_fwd(float *out, float *probs, const float *q, int ldq, const float *k,
                         const float *v, int ldkv, int T, int P, int n_head, int n_kv, int hd,
                         float scale, int n_threads) {
    const int L = P + T, group = n_head / n_kv, ldo = n_head * hd;
    if (T <= 0) return;
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int h = 0; h < n_head; h++) {
        float *S = probs + (size_t)h * T * L;
        const float *kh = k + (size_t)(h / group) * hd, *vh = v + (size_t)(h / group) * hd;
        /* S (T, L) = scale · q_h (T, hd) · K_gᵀ (hd, L) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, hd, scale, q + (size_t)h * hd,
                    ldq, kh, ldkv, 0.0f, S, L);
        for (int t = 0; t < T; t++) {
            float *r = S + (size_t)t * L;
            const int last = P + t; /* key rows 0..last are visible */
            float m = -INFINITY;
            for (int j = 0; j <= last; j++) m = r[j] > m ? r[j] : m;
            double s = 0;
            for (int j = 0; j <= last; j++) { r[j] = expf(r[j] - m); s += r[j]; }
            const float inv = (float)(1.0 / s);
            for (int j = 0; j <= last; j++) r[j] *= inv;
            for (int j = last + 1; j < L; j++) r[j] = 0.0f;
        }
        /* out_h (T, hd) = A (T, L) · V_g (L, hd) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, L, 1.0f, S, L, vh, ldkv,
                    0.0f, out + (size_t)h * hd, ldo);
    }
}

size_t kern_attn_train_scratch_floats(int T, int P, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    return (size_t)n_threads * (size_t)(T > 0 ? T : 0) * (size_t)(P + T > 0 ? P + T : 0);
}

void kern_attn_train_bwd(float *dq, int lddq, float *dk, float *dv, int lddkv,
                         const float *dout, const float *probs, const float *q, int ldq,
                         const float *k, const float *v, int ldkv, int T, int P, int n_head,
                         int n_kv, int hd, float scale, float *scratch, int n_threads) {
    const int L = P + T, group = n_head / n_kv, ldo = n_head * hd;
    if (T <= 0) return;
    if (n_threads < 1) n_threads = 1;
    /* One kv head per iteration: its query heads run in order inside, so
     * dk/dv of a kv head are summed in a fixed order by one thread. */
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int g = 0; g < n_kv; g++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *dS = scratch + (size_t)tid * (size_t)T * L;
        const float *kg = k + (size_t)g * hd, *vg = v + (size_t)g * hd;
        float *dkg = dk + (size_t)g * hd, *dvg = dv + (size_t)g * hd;
        for (int h = g * group; h < (g + 1) * group; h++) {
            const float *A = probs + (size_t)h * T * L, *doh = dout + (size_t)h * hd;
            const float *qh = q + (size_t)h * hd;
            /* dV_g (L, hd) += Aᵀ (L, T) · dO_h (T, hd) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, hd, T, 1.0f, A, L, doh, ldo,
                        1.0f, dvg, lddkv);
            /* dA (T, L) = dO_h (T, hd) · V_gᵀ (hd, L) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, hd, 1.0f, doh, ldo, vg,
                        ldkv, 0.0f, dS, L);
            for (int t = 0; t < T; t++) {
                float *r = dS + (size_t)t * L;
                const float *a = A + (size_t)t * L;
                const int last = P + t;
                double dot = 0;
                for (int j = 0; j <= last; j++) dot += (double)r[j] * a[j];
                const float d = (float)dot;
                for (int j = 0; j <= last; j++) r[j] = a[j] * (r[j] - d);
                for (int j = last + 1; j < L; j++) r[j] = 0.0f;
            }
            /* dQ_h (T, hd) += scale · dS (T, L) · K_g (L, hd) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, L, scale, dS, L, kg,
                        ldkv, 1.0f, dq + (size_t)h * hd, lddq);
            /* dK_g (L, hd) += scale · dSᵀ (L, T) · Q_h (T, hd) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, L, hd, T, scale, dS, L, qh, ldq,
                        1.0f, dkg, lddkv);
        }
    }
}
