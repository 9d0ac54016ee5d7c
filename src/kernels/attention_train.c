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
 * With soft-capping (S = c·tanh(S₀/c)) dS₀ = dS ⊙ (1 - (S/c)²), S₀
 * recomputed block by block in the backward (the probabilities alone do not
 * give it back); a sliding window masks keys more than `window` back,
 * the prefix rows staying visible.
 * BLAS runs single-threaded inside; OpenMP splits heads. */
#include "kernels/kernels.h"
#include "kernels/kexp.h"

#include <cblas.h>
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Queries are taken QB at a time: block [t0, t0 + QB) sees key rows
 * 0..P + t0 + QB - 1 only, so the products skip most of the masked upper
 * triangle (T = 256: 5/8 of the full T × L work). */
enum { QB = 64 };

/* Softmax of row r over its visible entries 0..last (less the window's
 * masked [P, first)); masked entries become 0. Soft-capping first. */
static void softmax_row(float *r, int last, int L, int P, const kern_attn_opts *o) {
    const int first = o->window > 0 && !o->bidir && last - o->window + 1 > P ? last - o->window + 1 : P;
    if (o->softcap > 0)
        for (int j = 0; j <= last; j++) r[j] = o->softcap * tanhf(r[j] / o->softcap);
    if (first > P) {
        /* the window: [0, P) and [first, last] visible */
        float m = -INFINITY;
        for (int j = 0; j <= last; j++)
            if (j < P || j >= first) m = r[j] > m ? r[j] : m;
        double s = 0;
        for (int j = 0; j <= last; j++) {
            r[j] = j < P || j >= first ? expf(r[j] - m) : 0.0f;
            s += r[j];
        }
        const float inv = (float)(1.0 / s);
        for (int j = 0; j <= last; j++) r[j] *= inv;
    } else {
        const float m = kmax(r, last + 1);
        for (int j = 0; j <= last; j++) r[j] = kexp(r[j] - m);
        const float inv = (float)(1.0 / ksum_d(r, last + 1));
        for (int j = 0; j <= last; j++) r[j] *= inv;
    }
    for (int j = last + 1; j < L; j++) r[j] = 0.0f;
}

void kern_attn_train_fwd(float *out, float *probs, const float *q, int ldq, const float *k,
                         const float *v, int ldkv, int T, int P, int n_head, int n_kv, int hd,
                         const kern_attn_opts *o, int n_threads) {
    const int L = P + T, group = n_head / n_kv, ldo = n_head * hd;
    if (T <= 0) return;
    if (n_threads < 1) n_threads = 1;
    const int n_qb = (T + QB - 1) / QB;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
    for (int item = 0; item < n_head * n_qb; item++) {
        const int h = item / n_qb, t0 = (item % n_qb) * QB, tb = PEFT_MIN(QB, T - t0), Lb = o->bidir ? L : P + t0 + tb;
        float *S = probs + (size_t)h * T * L + (size_t)t0 * L;
        const float *kh = k + (size_t)(h / group) * hd, *vh = v + (size_t)(h / group) * hd;
        /* S (tb, Lb) = scale · q_h (tb, hd) · K_gᵀ (hd, Lb) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, Lb, hd, o->scale, q + (size_t)t0 * ldq + (size_t)h * hd,
                    ldq, kh, ldkv, 0.0f, S, L);
        for (int t = 0; t < tb; t++) softmax_row(S + (size_t)t * L, o->bidir ? L - 1 : P + t0 + t, L, P, o);
        /* out_h (tb, hd) = A (tb, Lb) · V_g (Lb, hd) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, hd, Lb, 1.0f, S, L, vh, ldkv, 0.0f,
                    out + (size_t)t0 * ldo + (size_t)h * hd, ldo);
    }
}

size_t kern_attn_train_scratch_floats(int T, int P, int n_head, int hd, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    const size_t L = (size_t)(P + T > 0 ? P + T : 0);
    /* per thread: dS of one query block and its soft-capped scores; per
     * head: its dK and dV */
    return (size_t)n_threads * 2 * QB * L + (size_t)n_head * 2 * L * (size_t)hd;
}

void kern_attn_train_bwd(float *dq, int lddq, float *dk, float *dv, int lddkv,
                         const float *dout, const float *probs, const float *q, int ldq,
                         const float *k, const float *v, int ldkv, int T, int P, int n_head,
                         int n_kv, int hd, const kern_attn_opts *o, float *scratch, int n_threads) {
    const int L = P + T, group = n_head / n_kv, ldo = n_head * hd;
    if (T <= 0) return;
    if (n_threads < 1) n_threads = 1;
    const float scale = o->scale, cap = o->softcap;
    float *part = scratch + (size_t)n_threads * 2 * QB * L; /* (n_head, 2, L, hd): dK_h, dV_h */
    memset(part, 0, (size_t)n_head * 2 * L * hd * sizeof(float));
    /* One query head per item, its blocks in order: dQ_h and the head's own
     * dK_h, dV_h; then each kv head sums its group's parts in head order.
     * Every sum has a fixed order: the result does not depend on n_threads. */
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
    for (int h = 0; h < n_head; h++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *dS = scratch + (size_t)tid * 2 * QB * L, *S0 = dS + (size_t)QB * L;
        const float *kg = k + (size_t)(h / group) * hd, *vg = v + (size_t)(h / group) * hd;
        float *dkh = part + (size_t)h * 2 * L * hd, *dvh = dkh + (size_t)L * hd;
        for (int t0 = 0; t0 < T; t0 += QB) {
            const int tb = PEFT_MIN(QB, T - t0), Lb = o->bidir ? L : P + t0 + tb;
            const float *A = probs + (size_t)h * T * L + (size_t)t0 * L, *doh = dout + (size_t)t0 * ldo + (size_t)h * hd;
            const float *qh = q + (size_t)t0 * ldq + (size_t)h * hd;
            /* dV_h (Lb, hd) += Aᵀ (Lb, tb) · dO_h (tb, hd) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Lb, hd, tb, 1.0f, A, L, doh, ldo, 1.0f, dvh, hd);
            /* dA (tb, Lb) = dO_h (tb, hd) · V_gᵀ (hd, Lb) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, Lb, hd, 1.0f, doh, ldo, vg, ldkv, 0.0f, dS, Lb);
            /* the scores before soft-capping, for its derivative */
            if (cap > 0)
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, Lb, hd, scale, qh, ldq, kg, ldkv, 0.0f, S0, Lb);
            for (int t = 0; t < tb; t++) {
                float *r = dS + (size_t)t * Lb;
                const float *a = A + (size_t)t * L;
                const int last = o->bidir ? L - 1 : P + t0 + t;
                double dot = 0;
                for (int j = 0; j <= last; j++) dot += (double)r[j] * a[j];
                const float d = (float)dot;
                for (int j = 0; j <= last; j++) r[j] = a[j] * (r[j] - d);
                if (cap > 0)
                    for (int j = 0; j <= last; j++) {
                        const float th = tanhf(S0[(size_t)t * Lb + j] / cap);
                        r[j] *= 1.0f - th * th;
                    }
                for (int j = last + 1; j < Lb; j++) r[j] = 0.0f;
            }
            /* dQ_h (tb, hd) += scale · dS (tb, Lb) · K_g (Lb, hd) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, hd, Lb, scale, dS, Lb, kg, ldkv, 1.0f,
                        dq + (size_t)t0 * lddq + (size_t)h * hd, lddq);
            /* dK_h (Lb, hd) += scale · dSᵀ (Lb, tb) · Q_h (tb, hd) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, Lb, hd, tb, scale, dS, Lb, qh, ldq, 1.0f, dkh, hd);
        }
    }
    /* dK_g, dV_g += Σ over the group's heads, in order */
#pragma omp parallel for num_threads(n_threads) schedule(static)
    for (int j = 0; j < L; j++)
        for (int g = 0; g < n_kv; g++) {
            float *dkr = dk + (size_t)j * lddkv + (size_t)g * hd, *dvr = dv + (size_t)j * lddkv + (size_t)g * hd;
            for (int h = g * group; h < (g + 1) * group; h++) {
                const float *pk = part + (size_t)h * 2 * L * hd + (size_t)j * hd, *pv = pk + (size_t)L * hd;
                for (int e = 0; e < hd; e++) {
                    dkr[e] += pk[e];
                    dvr[e] += pv[e];
                }
            }
        }
}
