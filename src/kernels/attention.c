/* attention.c — causal grouped-query attention over a KV store (inference),
 * with the score options of kern_attn_opts (soft-capping, sliding window). */
#include "kernels/kernels.h"

#include <cblas.h>
#include <math.h>
#ifdef _OPENMP
#include <omp.h>
#endif

void kern_attention(float *out, int ldo, const float *q, int ldq, const float *k,
                    const float *v, int kv_cap, int T, int p0, int n_head, int n_kv, int hd,
                    const kern_attn_opts *o, float *scratch, int n_threads) {
    const int L = p0 + T, group = n_head / n_kv;
    const float cap = o->softcap;
    if (n_threads < 1) n_threads = 1;
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int h = 0; h < n_head; h++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *S = scratch + (size_t)tid * (size_t)T * (size_t)L;
        const float *kh = k + (size_t)(h / group) * kv_cap * hd;
        const float *vh = v + (size_t)(h / group) * kv_cap * hd;
        /* S (T, L) = scale · q_h (T, hd) · K_hᵀ (hd, L) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, L, hd, o->scale, q + (size_t)h * hd,
                    ldq, kh, hd, 0.0f, S, L);
        for (int t = 0; t < T; t++) {
            float *r = S + (size_t)t * L;
            const int last = o->bidir ? L - 1 : p0 + t; /* keys 0..last are visible, but for the window's */
            const int first = o->window > 0 && !o->bidir && last - o->window + 1 > o->sink ? last - o->window + 1 : o->sink;
            if (cap > 0)
                for (int j = 0; j <= last; j++) r[j] = cap * tanhf(r[j] / cap);
            float m = -INFINITY;
            for (int j = 0; j <= last; j++)
                if (j < o->sink || j >= first) m = r[j] > m ? r[j] : m;
            double s = 0;
            for (int j = 0; j <= last; j++) {
                r[j] = j < o->sink || j >= first ? expf(r[j] - m) : 0.0f;
                s += r[j];
            }
            float inv = (float)(1.0 / s);
            for (int j = 0; j <= last; j++) r[j] *= inv;
            for (int j = last + 1; j < L; j++) r[j] = 0.0f;
        }
        /* out_h (T, hd) = S (T, L) · V_h (L, hd) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hd, L, 1.0f, S, L, vh, hd, 0.0f,
                    out + (size_t)h * hd, ldo);
    }
}
