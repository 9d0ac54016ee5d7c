/* flash_attn.c — training attention without the (T, P + T) probabilities:
 * FlashAttention-2's scheme on the CPU. One sequence of T queries over
 * L = P + T key/value rows, the first P of which (prefix tuning's rows)
 * every query sees.
 *
 * Forward, per (query head h, block of BQ queries): walk the visible key
 * blocks of BK keys with an online softmax (running max m, running sum l,
 * the output rescaled when m grows) and keep only lse = m + log l per row.
 * Backward, per query head (kv head g = h / (n_head / n_kv)): D = rowsum(dO ⊙ O),
 * then for each key block j and each query block i that sees it the
 * probabilities are recomputed, P = exp(S - lse), and
 *   dV_j += Pᵀ dO_i, dP = dO_i V_jᵀ, dS = P ⊙ (dP - D) [⊙ (1 - tanh²) under
 *   soft-capping], dQ_i += scale · dS K_j, dK_j += scale · dSᵀ Q_i.
 * Memory is O(T): tiles per thread and, in the backward, each head's own
 * dK, dV (summed per kv head in head order afterwards, so that the result
 * is the same for every thread count).
 * The tile products are single-threaded OpenBLAS sgemm calls: on the Zen
 * machine this was measured on, a 64 × 64 × 64 S = Q Kᵀ tile ran at 44–54
 * GFLOP/s through sgemm against 38–43 for a 4 × 16 register-blocked loop in
 * GCC vector extensions (B transposed per tile). OpenMP splits the items. */
#include "kernels/kernels.h"
#include "kernels/kexp.h"

#include <cblas.h>
#include <math.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* Score tiles of 64 queries × 128 keys (forward, 32 KiB) and 64 × 64
 * (backward, three of them) stay in L1/L2 next to the packed operands and
 * amortize a sgemm call. Measured on Zen 2 cores, head_dim 64: forward
 * 64 × 64 tiles ~10 % slower; backward 128 × 64 or 64 × 128 no faster;
 * taller ones waste more of the causal diagonal. */
#ifndef FLASH_BQ
#define FLASH_BQ 64
#define FLASH_BK 128
#define FLASH_BQB 64
#define FLASH_BKB 64
#endif
enum { BQ = FLASH_BQ, BK = FLASH_BK, BQB = FLASH_BQB, BKB = FLASH_BKB };

/* Which keys query t sees: [0, min(P, hi)) and [lo, hi). P: the leading
 * rows every query sees (training: the prefix; inference: o->sink); query
 * t sits at key position off + t (training: P; inference: p0). */
typedef struct {
    int P, off, L, window;
    bool bidir;
} vis_rule;

static inline void row_range(const vis_rule *r, int t, int *lo, int *hi) {
    if (r->bidir) {
        *lo = r->P;
        *hi = r->L;
        return;
    }
    const int last = r->off + t;
    *lo = r->window > 0 && last - r->window + 1 > r->P ? last - r->window + 1 : r->P;
    *hi = last + 1;
}

/* Keys of [j0, j1) that row t sees */
static inline int row_count(const vis_rule *r, int t, int j0, int j1) {
    int lo, hi;
    row_range(r, t, &lo, &hi);
    const int pre = PEFT_MIN(j1, PEFT_MIN(r->P, hi)) - j0, a = PEFT_MAX(j0, PEFT_MAX(lo, r->P)), b = PEFT_MIN(j1, hi);
    return (pre > 0 ? pre : 0) + (b > a ? b - a : 0);
}

/* 0: no row of [t0, t0 + tb) sees a key of [j0, j0 + jb); 1: every row sees
 * every key (no mask); 2: partly */
static int tile_state(const vis_rule *r, int t0, int tb, int j0, int jb) {
    int n_full = 0, n_none = 0;
    for (int t = t0; t < t0 + tb; t++) {
        const int c = row_count(r, t, j0, j0 + jb);
        n_full += c == jb;
        n_none += c == 0;
    }
    return n_none == tb ? 0 : n_full == tb ? 1 : 2;
}

/* The scores of one tile row in place: soft-capping (th keeps tanh for the
 * backward when non-NULL), then -inf on the keys row t does not see. */
static inline void score_row(float *s, float *th, int jb, float cap, const vis_rule *r, int t, int j0, bool masked) {
    if (cap > 0) {
        const float ic = 1.0f / cap;
        for (int j = 0; j < jb; j++) {
            const float x = tanhf(s[j] * ic);
            if (th) th[j] = x;
            s[j] = cap * x;
        }
    }
    if (masked) {
        int lo, hi;
        row_range(r, t, &lo, &hi);
        for (int j = 0; j < jb; j++) {
            const int key = j0 + j;
            s[j] = key < hi && (key < r->P || key >= lo) ? s[j] : -INFINITY;
        }
    }
}

/* The forward over L key rows (kv head g's rows at k + g·kvh, row stride
 * ldkv), queries at positions off..off + T - 1; lse may be NULL. */
static void flash_fwd(float *out, int ldo, float *lse, const float *q, int ldq, const float *k, const float *v,
                      int ldkv, size_t kvh, int T, int L, int off, int sink, int n_head, int n_kv, int hd,
                      const kern_attn_opts *o, int n_threads) {
    const int group = n_head / n_kv;
    if (T <= 0) return;
    if (n_threads < 1) n_threads = 1;
    const vis_rule vr = {sink, off, L, o->window, o->bidir};
    const int n_qb = (T + BQ - 1) / BQ;
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
    for (int item = 0; item < n_head * n_qb; item++) {
        const int h = item / n_qb, t0 = (item % n_qb) * BQ, tb = PEFT_MIN(BQ, T - t0);
        const int kend = o->bidir ? L : off + t0 + tb;
        const float *qh = q + (size_t)t0 * ldq + (size_t)h * hd;
        const float *kg = k + (size_t)(h / group) * kvh, *vg = v + (size_t)(h / group) * kvh;
        float *oh = out + (size_t)t0 * ldo + (size_t)h * hd;
        float S[BQ * BK], m[BQ], l[BQ];
        for (int t = 0; t < tb; t++) {
            m[t] = -INFINITY;
            l[t] = 0.0f;
            memset(oh + (size_t)t * ldo, 0, (size_t)hd * sizeof(float));
        }
        for (int j0 = 0; j0 < kend; j0 += BK) {
            const int jb = PEFT_MIN(BK, kend - j0), st = tile_state(&vr, t0, tb, j0, jb);
            if (st == 0) continue;
            /* S (tb, jb) = scale · Q_i K_jᵀ */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, jb, hd, o->scale, qh, ldq,
                        kg + (size_t)j0 * ldkv, ldkv, 0.0f, S, BK);
            for (int t = 0; t < tb; t++) {
                float *s = S + (size_t)t * BK;
                score_row(s, NULL, jb, o->softcap, &vr, t0 + t, j0, st == 2);
                const float mx = kmax(s, jb);
                if (mx == -INFINITY) { /* this row sees none of the block */
                    memset(s, 0, (size_t)jb * sizeof(float));
                    continue;
                }
                const float mn = mx > m[t] ? mx : m[t];
                for (int j = 0; j < jb; j++) s[j] = s[j] == -INFINITY ? 0.0f : kexp(s[j] - mn);
                const float sum = (float)ksum_d(s, jb);
                if (mn != m[t]) {
                    const float c = m[t] == -INFINITY ? 0.0f : kexp(m[t] - mn);
                    float *orow = oh + (size_t)t * ldo;
                    for (int e = 0; e < hd; e++) orow[e] *= c;
                    l[t] *= c;
                    m[t] = mn;
                }
                l[t] += sum;
            }
            /* O_i (tb, hd) += P (tb, jb) · V_j (jb, hd) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, hd, jb, 1.0f, S, BK, vg + (size_t)j0 * ldkv,
                        ldkv, 1.0f, oh, ldo);
        }
        for (int t = 0; t < tb; t++) {
            /* every row sees at least its own key: l > 0 */
            const float inv = 1.0f / l[t];
            float *orow = oh + (size_t)t * ldo;
            for (int e = 0; e < hd; e++) orow[e] *= inv;
            if (lse) lse[(size_t)h * T + t0 + t] = m[t] + logf(l[t]);
        }
    }
}

void kern_flash_attn_fwd(float *out, float *lse, const float *q, int ldq, const float *k, const float *v, int ldkv,
                         int T, int P, int n_head, int n_kv, int hd, const kern_attn_opts *o, int n_threads) {
    flash_fwd(out, n_head * hd, lse, q, ldq, k, v, ldkv, (size_t)hd, T, P + T, P, P, n_head, n_kv, hd, o, n_threads);
}

/* Inference over the KV store (n_kv, kv_cap, hd): the same forward, the
 * sink rows o->sink, queries at p0.. (kernels.h) */
void kern_attention(float *out, int ldo, const float *q, int ldq, const float *k, const float *v, int kv_cap, int T,
                    int p0, int n_head, int n_kv, int hd, const kern_attn_opts *o, int n_threads) {
    flash_fwd(out, ldo, NULL, q, ldq, k, v, hd, (size_t)kv_cap * hd, T, p0 + T, p0, o->sink, n_head, n_kv, hd, o,
              n_threads);
}

size_t kern_flash_attn_scratch_floats(int T, int P, int n_head, int hd, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    const size_t L = (size_t)(P + T > 0 ? P + T : 0);
    /* per thread: P, dP and tanh tiles and D of one head; per head: its dK, dV */
    return (size_t)n_threads * (3 * BQB * BKB + (size_t)(T > 0 ? T : 0)) + (size_t)n_head * 2 * L * (size_t)hd;
}

void kern_flash_attn_bwd(float *dq, int lddq, float *dk, float *dv, int lddkv, const float *dout, const float *out,
                         const float *lse, const float *q, int ldq, const float *k, const float *v, int ldkv, int T,
                         int P, int n_head, int n_kv, int hd, const kern_attn_opts *o, float *scratch,
                         int n_threads) {
    const int L = P + T, group = n_head / n_kv, ldo = n_head * hd;
    if (T <= 0) return;
    if (n_threads < 1) n_threads = 1;
    const float scale = o->scale, cap = o->softcap;
    const vis_rule vr = {P, P, L, o->window, o->bidir};
    const size_t per_thread = 3 * BQB * BKB + (size_t)T;
    float *part = scratch + (size_t)n_threads * per_thread; /* (n_head, 2, L, hd): dK_h, dV_h */
    memset(part, 0, (size_t)n_head * 2 * L * hd * sizeof(float));
#pragma omp parallel for num_threads(n_threads) schedule(dynamic, 1)
    for (int h = 0; h < n_head; h++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *Pt = scratch + (size_t)tid * per_thread, *dP = Pt + BQB * BKB, *th = dP + BQB * BKB, *D = th + BQB * BKB;
        const float *kg = k + (size_t)(h / group) * hd, *vg = v + (size_t)(h / group) * hd;
        const float *lh = lse + (size_t)h * T;
        float *dkh = part + (size_t)h * 2 * L * hd, *dvh = dkh + (size_t)L * hd;
        for (int t = 0; t < T; t++) {
            const float *a = dout + (size_t)t * ldo + (size_t)h * hd, *b = out + (size_t)t * ldo + (size_t)h * hd;
            double s = 0;
            for (int e = 0; e < hd; e++) s += (double)a[e] * b[e];
            D[t] = (float)s;
        }
        for (int j0 = 0; j0 < L; j0 += BKB) {
            const int jb = PEFT_MIN(BKB, L - j0);
            /* causal: query blocks before the one holding key j0 see none of it */
            const int tfirst = o->bidir || j0 < P ? 0 : (j0 - P) / BQB * BQB;
            for (int t0 = tfirst; t0 < T; t0 += BQB) {
                const int tb = PEFT_MIN(BQB, T - t0), st = tile_state(&vr, t0, tb, j0, jb);
                if (st == 0) {
                    if (j0 >= P && !o->bidir && t0 > j0 - P) break; /* the window has passed this block */
                    continue;
                }
                const float *qi = q + (size_t)t0 * ldq + (size_t)h * hd, *doi = dout + (size_t)t0 * ldo + (size_t)h * hd;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, jb, hd, scale, qi, ldq,
                            kg + (size_t)j0 * ldkv, ldkv, 0.0f, Pt, BKB);
                for (int t = 0; t < tb; t++) {
                    float *s = Pt + (size_t)t * BKB;
                    score_row(s, cap > 0 ? th + (size_t)t * BKB : NULL, jb, cap, &vr, t0 + t, j0, st == 2);
                    const float ls = lh[t0 + t];
                    for (int j = 0; j < jb; j++) s[j] = s[j] == -INFINITY ? 0.0f : kexp(s[j] - ls);
                }
                /* dV_j (jb, hd) += Pᵀ (jb, tb) · dO_i (tb, hd) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, jb, hd, tb, 1.0f, Pt, BKB, doi, ldo, 1.0f,
                            dvh + (size_t)j0 * hd, hd);
                /* dP (tb, jb) = dO_i (tb, hd) · V_jᵀ (hd, jb) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tb, jb, hd, 1.0f, doi, ldo,
                            vg + (size_t)j0 * ldkv, ldkv, 0.0f, dP, BKB);
                for (int t = 0; t < tb; t++) {
                    float *r = dP + (size_t)t * BKB;
                    const float *p = Pt + (size_t)t * BKB, d = D[t0 + t];
                    for (int j = 0; j < jb; j++) r[j] = p[j] * (r[j] - d);
                    if (cap > 0) {
                        const float *x = th + (size_t)t * BKB;
                        for (int j = 0; j < jb; j++) r[j] *= 1.0f - x[j] * x[j];
                    }
                }
                /* dQ_i (tb, hd) += scale · dS (tb, jb) · K_j (jb, hd) */
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, hd, jb, scale, dP, BKB,
                            kg + (size_t)j0 * ldkv, ldkv, 1.0f, dq + (size_t)t0 * lddq + (size_t)h * hd, lddq);
                /* dK_j (jb, hd) += scale · dSᵀ (jb, tb) · Q_i (tb, hd) */
                cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, jb, hd, tb, scale, dP, BKB, qi, ldq, 1.0f,
                            dkh + (size_t)j0 * hd, hd);
            }
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
