/* test_flash_attn.c — the blocked training attention (kern_flash_attn_fwd/bwd,
 * src/kernels/flash_attn.c) against the probability-storing kernels it
 * replaced (kept below as the oracle: they were checked against finite
 * differences and PyTorch), over every option combination and shapes that
 * cross the 64-row blocks; bitwise determinism over thread counts; and
 * PyTorch autograd fixtures (tools/make_kernel_fixtures.py) for causal GQA
 * with a prefix and for bidirectional attention over a padded row split in
 * segments the way the training graph calls it. Finite differences of the
 * new kernels are in test_kernels_grad.c. */
#include "formats/safetensors.h"
#include "kernels/kernels.h"
#include "kernels/kexp.h"
#include "test.h"

#include <cblas.h>
#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- the oracle: the former kern_attn_train_fwd/bwd (probabilities kept) ---- */

/* Queries are taken QB at a time: block [t0, t0 + QB) sees key rows
 * 0..P + t0 + QB - 1 only, so the products skip most of the masked upper
 * triangle (T = 256: 5/8 of the full T × L work). */
enum { QB = 64 };

/* Softmax of row r over its visible entries 0..last (less the window's
 * masked [P, first)); masked entries become 0. Soft-capping first. */
static void ref_softmax_row(float *r, int last, int L, int P, const kern_attn_opts *o) {
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

static void ref_fwd(float *out, float *probs, const float *q, int ldq, const float *k,
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
        for (int t = 0; t < tb; t++) ref_softmax_row(S + (size_t)t * L, o->bidir ? L - 1 : P + t0 + t, L, P, o);
        /* out_h (tb, hd) = A (tb, Lb) · V_g (Lb, hd) */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tb, hd, Lb, 1.0f, S, L, vh, ldkv, 0.0f,
                    out + (size_t)t0 * ldo + (size_t)h * hd, ldo);
    }
}

static size_t ref_scratch_floats(int T, int P, int n_head, int hd, int n_threads) {
    if (n_threads < 1) n_threads = 1;
    const size_t L = (size_t)(P + T > 0 ? P + T : 0);
    /* per thread: dS of one query block and its soft-capped scores; per
     * head: its dK and dV */
    return (size_t)n_threads * 2 * QB * L + (size_t)n_head * 2 * L * (size_t)hd;
}

static void ref_bwd(float *dq, int lddq, float *dk, float *dv, int lddkv,
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

/* and the former inference kern_attention (a (T, p0 + T) score block per
 * thread) */
static void ref_attention(float *out, int ldo, const float *q, int ldq, const float *k,
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

/* ---- helpers ---------------------------------------------------------------- */

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    if (!p) abort();
    return p;
}

static void fill_normal(float *x, size_t n, peft_rng *r, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = scale * peft_rng_normal(r);
}

/* max|a - b| / max|b| over rows × cols of row strides lda, ldb; b NULL:
 * max|a| */
static double rel2(const float *a, int lda, const float *b, int ldb, int rows, int cols) {
    double d = 0, m = 0;
    if (!b) {
        for (int i = 0; i < rows; i++)
            for (int j = 0; j < cols; j++) m = fmax(m, fabs(a[(size_t)i * lda + j]));
        return m;
    }
    for (int i = 0; i < rows; i++)
        for (int j = 0; j < cols; j++) {
            const double x = a[(size_t)i * lda + j], y = b[(size_t)i * ldb + j];
            if (fabs(x - y) > d || x != x) d = x != x ? INFINITY : fabs(x - y);
            m = fmax(m, fabs(y));
        }
    return d / (m > 1e-30 ? m : 1e-30);
}

/* The log-sum-exp of row t of head h in double, straight from the definition. */
static double naive_lse(const float *q, int ldq, const float *k, int ldkv, int T, int P, int H, int KV, int hd,
                        const kern_attn_opts *o, int h, int t) {
    const int L = P + T, g = h / (H / KV);
    double m = -INFINITY, s = 0, sc[1024];
    for (int j = 0; j < L; j++) {
        const bool vis = o->bidir || j < P || (j <= P + t && (o->window <= 0 || j > P + t - o->window));
        sc[j] = -INFINITY;
        if (!vis) continue;
        double d = 0;
        for (int e = 0; e < hd; e++) d += (double)q[(size_t)t * ldq + h * hd + e] * k[(size_t)j * ldkv + g * hd + e];
        d *= o->scale;
        if (o->softcap > 0) d = o->softcap * tanh(d / o->softcap);
        sc[j] = d;
        m = fmax(m, d);
    }
    for (int j = 0; j < L; j++)
        if (sc[j] > -INFINITY) s += exp(sc[j] - m);
    return m + log(s);
}

typedef struct {
    int T, P, H, KV, hd, ldq, ldkv, lddq, lddkv;
    kern_attn_opts o;
    float *q, *k, *v, *dout;
} acase;

static acase make_case(int T, int P, int H, int KV, int hd, float cap, int window, bool bidir, float amp,
                       uint64_t seed) {
    acase c = {T, P, H, KV, hd, H * hd + 5, KV * hd + 3, H * hd + 2, KV * hd + 1,
               {1.0f / sqrtf((float)hd), cap, window, P, bidir}, NULL, NULL, NULL, NULL};
    const int L = P + T;
    peft_rng rng;
    peft_rng_seed(&rng, seed);
    c.q = falloc((size_t)T * c.ldq);
    c.k = falloc((size_t)L * c.ldkv);
    c.v = falloc((size_t)L * c.ldkv);
    c.dout = falloc((size_t)T * H * hd);
    fill_normal(c.q, (size_t)T * c.ldq, &rng, amp);
    fill_normal(c.k, (size_t)L * c.ldkv, &rng, 1.0f);
    /* a trend over the keys moves the running max from block to block */
    for (int j = 0; j < L; j++)
        for (int e = 0; e < KV * hd; e++) c.k[(size_t)j * c.ldkv + e] += amp > 1 ? 0.01f * (float)j : 0.0f;
    fill_normal(c.v, (size_t)L * c.ldkv, &rng, 1.0f);
    fill_normal(c.dout, (size_t)T * H * hd, &rng, 1.0f);
    return c;
}

static void free_case(acase *c) { free(c->q); free(c->k); free(c->v); free(c->dout); }

typedef struct {
    float *out, *lse, *dq, *dk, *dv;
} aresult;

/* The new kernels on n_threads: out, lse and the gradients, accumulated onto
 * a prefill of 0.25 that is removed (the gradients are +=). */
static aresult run_flash(const acase *c, int n_threads) {
    const int T = c->T, L = c->P + T, qd = c->H * c->hd;
    aresult r = {falloc((size_t)T * qd), falloc((size_t)c->H * T), falloc((size_t)T * c->lddq),
                 falloc((size_t)L * c->lddkv), falloc((size_t)L * c->lddkv)};
    for (size_t i = 0; i < (size_t)T * c->lddq; i++) r.dq[i] = 0.25f;
    for (size_t i = 0; i < (size_t)L * c->lddkv; i++) r.dk[i] = r.dv[i] = 0.25f;
    float *s = falloc(kern_flash_attn_scratch_floats(T, c->P, c->H, c->hd, n_threads));
    kern_flash_attn_fwd(r.out, r.lse, c->q, c->ldq, c->k, c->v, c->ldkv, T, c->P, c->H, c->KV, c->hd, &c->o,
                        n_threads);
    kern_flash_attn_bwd(r.dq, c->lddq, r.dk, r.dv, c->lddkv, c->dout, r.out, r.lse, c->q, c->ldq, c->k, c->v,
                        c->ldkv, T, c->P, c->H, c->KV, c->hd, &c->o, s, n_threads);
    for (size_t i = 0; i < (size_t)T * c->lddq; i++) r.dq[i] -= 0.25f;
    for (size_t i = 0; i < (size_t)L * c->lddkv; i++) { r.dk[i] -= 0.25f; r.dv[i] -= 0.25f; }
    free(s);
    return r;
}

static aresult run_ref(const acase *c) {
    const int T = c->T, L = c->P + T, qd = c->H * c->hd;
    aresult r = {falloc((size_t)T * qd), NULL, falloc((size_t)T * c->lddq), falloc((size_t)L * c->lddkv),
                 falloc((size_t)L * c->lddkv)};
    float *pr = falloc((size_t)c->H * T * L), *s = falloc(ref_scratch_floats(T, c->P, c->H, c->hd, 1));
    ref_fwd(r.out, pr, c->q, c->ldq, c->k, c->v, c->ldkv, T, c->P, c->H, c->KV, c->hd, &c->o, 1);
    ref_bwd(r.dq, c->lddq, r.dk, r.dv, c->lddkv, c->dout, pr, c->q, c->ldq, c->k, c->v, c->ldkv, T, c->P, c->H,
            c->KV, c->hd, &c->o, s, 1);
    free(pr); free(s);
    return r;
}

static void free_result(aresult *r) { free(r->out); free(r->lse); free(r->dq); free(r->dk); free(r->dv); }

/* ---- against the oracle ---------------------------------------------------- */

static double worst_out, worst_lse, worst_grad;

static int compare_case(int T, int P, int H, int KV, int hd, float cap, int window, bool bidir, float amp) {
    static uint64_t seed = 1;
    acase c = make_case(T, P, H, KV, hd, cap, window, bidir, amp, seed++);
    aresult f = run_flash(&c, 2), r = run_ref(&c);
    const int L = P + T, qd = H * hd, kvd = KV * hd;
    const double eo = rel2(f.out, qd, r.out, qd, T, qd);
    /* relative to the largest gradient entry of the three: with T = 1 and
     * no prefix dq and dk are 0 up to rounding */
    const double big = fmax(rel2(r.dq, c.lddq, NULL, 0, T, c.lddq),
                            fmax(rel2(r.dk, c.lddkv, NULL, 0, L, c.lddkv), rel2(r.dv, c.lddkv, NULL, 0, L, c.lddkv)));
    const double eg = fmax(rel2(f.dq, c.lddq, r.dq, c.lddq, T, c.lddq) * rel2(r.dq, c.lddq, NULL, 0, T, c.lddq),
                           fmax(rel2(f.dk, c.lddkv, r.dk, c.lddkv, L, c.lddkv) * rel2(r.dk, c.lddkv, NULL, 0, L, c.lddkv),
                                rel2(f.dv, c.lddkv, r.dv, c.lddkv, L, c.lddkv) * rel2(r.dv, c.lddkv, NULL, 0, L, c.lddkv))) /
                      big;
    double el = 0;
    for (int h = 0; h < H; h++)
        for (int t = 0; t < T; t++) {
            const double want = naive_lse(c.q, c.ldq, c.k, c.ldkv, T, P, H, KV, hd, &c.o, h, t);
            el = fmax(el, fabs(f.lse[(size_t)h * T + t] - want) / fmax(1.0, fabs(want)));
        }
    /* the padding columns of the gradients stay untouched (exactly 0 here) */
    double pad = 0;
    for (int t = 0; t < T; t++)
        for (int j = qd; j < c.lddq; j++) pad = fmax(pad, fabs(f.dq[(size_t)t * c.lddq + j]));
    for (int j = 0; j < L; j++)
        for (int e = kvd; e < c.lddkv; e++)
            pad = fmax(pad, fmax(fabs(f.dk[(size_t)j * c.lddkv + e]), fabs(f.dv[(size_t)j * c.lddkv + e])));
    worst_out = fmax(worst_out, eo);
    worst_lse = fmax(worst_lse, el);
    worst_grad = fmax(worst_grad, eg);
    const bool bad = !(eo <= 2e-5 && el <= 2e-6 && eg <= 5e-5 && pad == 0);
    if (bad)
        fprintf(stderr, "  T=%d P=%d H=%d KV=%d hd=%d cap=%g win=%d bidir=%d amp=%g: out %.2e lse %.2e grads %.2e pad %g\n",
                T, P, H, KV, hd, cap, window, bidir, amp, eo, el, eg, pad);
    free_result(&f); free_result(&r); free_case(&c);
    return bad;
}

/* T = 1, block edges (63, 64, 65), several blocks (130); no prefix, a short
 * one and one longer than a block; MHA, GQA, MQA; soft-capping; windows
 * shorter and longer than a block; causal and bidirectional; mild and sharp
 * scores (sharp ones grow along the keys, so the running max moves). */
static void flash_matches_oracle_every_option(void) {
    static const int Ts[] = {1, 2, 5, 63, 64, 65, 130}, Ps[] = {0, 3, 67}, HKV[][2] = {{4, 2}, {3, 3}, {4, 1}};
    static const int wins[] = {0, 3, 70};
    static const float caps[] = {0.0f, 1.5f}, amps[] = {1.0f, 4.0f};
    int bad = 0, n = 0;
    worst_out = worst_lse = worst_grad = 0;
    for (size_t ti = 0; ti < sizeof Ts / sizeof *Ts; ti++)
        for (size_t pi = 0; pi < sizeof Ps / sizeof *Ps; pi++)
            for (size_t hi = 0; hi < 3; hi++)
                for (int bidir = 0; bidir < 2; bidir++)
                    for (size_t wi = 0; wi < (bidir ? 1 : sizeof wins / sizeof *wins); wi++)
                        for (size_t ci = 0; ci < 2; ci++)
                            for (size_t ai = 0; ai < 2; ai++) {
                                bad += compare_case(Ts[ti], Ps[pi], HKV[hi][0], HKV[hi][1], 8, caps[ci], wins[wi],
                                                    bidir, amps[ai]);
                                n++;
                            }
    /* the real head size, and blocks of keys past a long prefix */
    bad += compare_case(200, 0, 3, 1, 64, 0.0f, 0, false, 1.0f);
    bad += compare_case(150, 70, 2, 1, 64, 0.0f, 0, true, 1.0f);
    bad += compare_case(190, 5, 2, 2, 64, 2.0f, 100, false, 4.0f);
    n += 3;
    printf("    %d cases: max rel diff out %.2e, lse %.2e, grads %.2e\n", n, worst_out, worst_lse, worst_grad);
    CHECK_EQ_INT(bad, 0);
}

/* ---- determinism ------------------------------------------------------------- */

static int same_bits(const aresult *a, const aresult *b, const acase *c) {
    const int T = c->T, L = c->P + T;
    return !memcmp(a->out, b->out, sizeof(float) * (size_t)T * c->H * c->hd) &&
           !memcmp(a->lse, b->lse, sizeof(float) * (size_t)T * c->H) &&
           !memcmp(a->dq, b->dq, sizeof(float) * (size_t)T * c->lddq) &&
           !memcmp(a->dk, b->dk, sizeof(float) * (size_t)L * c->lddkv) &&
           !memcmp(a->dv, b->dv, sizeof(float) * (size_t)L * c->lddkv);
}

/* The same bits on 1, 2, 3 and 5 threads (each query head's dK, dV is its
 * own, summed per kv head in head order). */
static void flash_identical_for_every_thread_count(void) {
    const struct { int T, P, H, KV; float cap; int win; bool bidir; } cs[] = {
        {130, 3, 6, 2, 0.0f, 0, false}, {97, 0, 4, 4, 1.5f, 20, false}, {70, 5, 4, 1, 0.0f, 0, true}, {1, 0, 4, 2, 0, 0, false}};
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        acase c = make_case(cs[i].T, cs[i].P, cs[i].H, cs[i].KV, 16, cs[i].cap, cs[i].win, cs[i].bidir, 2.0f, 77 + i);
        aresult r1 = run_flash(&c, 1);
        for (int nt = 2; nt <= 5; nt += nt == 3 ? 2 : 1) {
            aresult rn = run_flash(&c, nt);
            CHECK_MSG(same_bits(&r1, &rn, &c), "case %zu, %d threads", i, nt);
            free_result(&rn);
        }
        free_result(&r1);
        free_case(&c);
    }
}

/* ---- PyTorch autograd fixtures -------------------------------------------- */

static const float *fx(const st_archive *a, const char *name, size_t n) {
    const st_tensor *t = st_find(a, name);
    if (!t || (size_t)st_numel(t) != n) {
        fprintf(stderr, "  fixture tensor %s missing or wrong size\n", name);
        return NULL;
    }
    return t->data;
}

static double rel1(const char *what, const float *a, const float *b, size_t n) {
    const double r = rel2(a, (int)n, b, (int)n, 1, (int)n);
    printf("    torch %-22s rel = %.2e\n", what, r);
    return r;
}

/* causal GQA with a prefix over two query blocks: T=66 P=2 H=4 KV=2 hd=4 */
static void flash_matches_torch_causal_gqa(void) {
    const char *path = "tests/fixtures/kernels/flash_attn.safetensors";
    if (!peft_file_exists(path)) TEST_FAIL("%s missing (tools/make_kernel_fixtures.py)", path);
    st_archive *a = NULL;
    peft_err err = {0};
    if (st_open(path, &a, &err)) TEST_FAIL("%s", err.msg);
    const int T = 66, P = 2, H = 4, KV = 2, hd = 4, L = P + T, qd = H * hd, kvd = KV * hd;
    const float *q = fx(a, "causal.q", (size_t)T * qd), *k = fx(a, "causal.k", (size_t)L * kvd),
                *v = fx(a, "causal.v", (size_t)L * kvd), *dout = fx(a, "causal.dout", (size_t)T * qd),
                *out = fx(a, "causal.out", (size_t)T * qd), *lse = fx(a, "causal.lse", (size_t)H * T),
                *dq = fx(a, "causal.dq", (size_t)T * qd), *dk = fx(a, "causal.dk", (size_t)L * kvd),
                *dv = fx(a, "causal.dv", (size_t)L * kvd);
    CHECK(q && k && v && dout && out && lse && dq && dk && dv);
    if (q && k && v && dout && out && lse && dq && dk && dv) {
        float *o = falloc((size_t)T * qd), *ls = falloc((size_t)H * T), *gq = falloc((size_t)T * qd),
              *gk = falloc((size_t)L * kvd), *gv = falloc((size_t)L * kvd),
              *s = falloc(kern_flash_attn_scratch_floats(T, P, H, hd, 2));
        const kern_attn_opts ao = {1.0f / sqrtf((float)hd), 0, 0, P, false};
        kern_flash_attn_fwd(o, ls, q, qd, k, v, kvd, T, P, H, KV, hd, &ao, 2);
        kern_flash_attn_bwd(gq, qd, gk, gv, kvd, dout, o, ls, q, qd, k, v, kvd, T, P, H, KV, hd, &ao, s, 2);
        const double tol = 2e-6;
        CHECK(rel1("causal out", o, out, (size_t)T * qd) <= tol);
        CHECK(rel1("causal lse", ls, lse, (size_t)H * T) <= tol);
        CHECK(rel1("causal dq", gq, dq, (size_t)T * qd) <= tol);
        CHECK(rel1("causal dk", gk, dk, (size_t)L * kvd) <= tol);
        CHECK(rel1("causal dv", gv, dv, (size_t)L * kvd) <= tol);
        free(o); free(ls); free(gq); free(gk); free(gv); free(s);
    }
    st_close(a);
}

/* An encoder row of 66 positions, 45 tokens then 21 padding: the training
 * graph attends within segments (the padding is its own segment), so the
 * kernel runs on [0, 45) and [45, 66); torch uses the block-diagonal mask.
 * H=KV=2 hd=4. */
static void flash_matches_torch_bidirectional_padded(void) {
    const char *path = "tests/fixtures/kernels/flash_attn.safetensors";
    if (!peft_file_exists(path)) TEST_FAIL("%s missing (tools/make_kernel_fixtures.py)", path);
    st_archive *a = NULL;
    peft_err err = {0};
    if (st_open(path, &a, &err)) TEST_FAIL("%s", err.msg);
    const int T = 66, NV = 45, H = 2, KV = 2, hd = 4, d = H * hd;
    const float *q = fx(a, "bidir.q", (size_t)T * d), *k = fx(a, "bidir.k", (size_t)T * d),
                *v = fx(a, "bidir.v", (size_t)T * d), *dout = fx(a, "bidir.dout", (size_t)T * d),
                *out = fx(a, "bidir.out", (size_t)T * d), *dq = fx(a, "bidir.dq", (size_t)T * d),
                *dk = fx(a, "bidir.dk", (size_t)T * d), *dv = fx(a, "bidir.dv", (size_t)T * d);
    CHECK(q && k && v && dout && out && dq && dk && dv);
    if (q && k && v && dout && out && dq && dk && dv) {
        float *o = falloc((size_t)T * d), *ls = falloc((size_t)H * T), *gq = falloc((size_t)T * d),
              *gk = falloc((size_t)T * d), *gv = falloc((size_t)T * d),
              *s = falloc(kern_flash_attn_scratch_floats(T, 0, H, hd, 2));
        const kern_attn_opts ao = {1.0f / sqrtf((float)hd), 0, 0, 0, true};
        const int seg[3] = {0, NV, T};
        for (int i = 0; i < 2; i++) {
            const int s0 = seg[i], n = seg[i + 1] - s0;
            const size_t off = (size_t)s0 * d;
            kern_flash_attn_fwd(o + off, ls, q + off, d, k + off, v + off, d, n, 0, H, KV, hd, &ao, 2);
            kern_flash_attn_bwd(gq + off, d, gk + off, gv + off, d, dout + off, o + off, ls, q + off, d, k + off,
                                v + off, d, n, 0, H, KV, hd, &ao, s, 2);
        }
        const double tol = 2e-6;
        CHECK(rel1("bidir out", o, out, (size_t)T * d) <= tol);
        CHECK(rel1("bidir dq", gq, dq, (size_t)T * d) <= tol);
        CHECK(rel1("bidir dk", gk, dk, (size_t)T * d) <= tol);
        CHECK(rel1("bidir dv", gv, dv, (size_t)T * d) <= tol);
        free(o); free(ls); free(gq); free(gk); free(gv); free(s);
    }
    st_close(a);
}

/* ---- inference over a KV store ---------------------------------------------- */

/* kern_attention (now the blocked forward) against the former inference
 * kernel: a prompt after p0 cached positions, decode steps (T = 1), sink
 * rows under a window, soft-capping, bidirectional. */
static void inference_attention_matches_oracle(void) {
    const struct { int T, p0, sink, win; float cap; bool bidir; } cs[] = {
        {70, 0, 0, 0, 0.0f, false}, {5, 130, 0, 0, 0.0f, false}, {1, 200, 0, 0, 0.0f, false},
        {1, 200, 3, 50, 0.0f, false}, {40, 90, 4, 33, 1.5f, false}, {66, 0, 0, 0, 0.0f, true},
        {3, 10, 10, 2, 0.0f, false}};
    const int H = 4, KV = 2, hd = 16, qd = H * hd, ldq = qd + 3, ldo = qd + 1;
    double worst = 0;
    for (size_t i = 0; i < sizeof cs / sizeof *cs; i++) {
        const int T = cs[i].T, L = cs[i].p0 + T, cap = L + 7;
        peft_rng rng;
        peft_rng_seed(&rng, 500 + i);
        float *q = falloc((size_t)T * ldq), *k = falloc((size_t)KV * cap * hd), *v = falloc((size_t)KV * cap * hd);
        fill_normal(q, (size_t)T * ldq, &rng, 2.0f);
        fill_normal(k, (size_t)KV * cap * hd, &rng, 1.0f);
        fill_normal(v, (size_t)KV * cap * hd, &rng, 1.0f);
        float *o1 = falloc((size_t)T * ldo), *o2 = falloc((size_t)T * ldo), *s = falloc((size_t)2 * T * L);
        const kern_attn_opts o = {1.0f / sqrtf((float)hd), cs[i].cap, cs[i].win, cs[i].sink, cs[i].bidir};
        ref_attention(o1, ldo, q, ldq, k, v, cap, T, cs[i].p0, H, KV, hd, &o, s, 2);
        kern_attention(o2, ldo, q, ldq, k, v, cap, T, cs[i].p0, H, KV, hd, &o, 2);
        const double d = rel2(o2, ldo, o1, ldo, T, qd);
        if (!(d <= 2e-6)) fprintf(stderr, "  case %zu: rel %.2e\n", i, d);
        worst = fmax(worst, d);
        free(q); free(k); free(v); free(o1); free(o2); free(s);
    }
    printf("    inference attention vs the former kernel: max rel diff %.2e\n", worst);
    CHECK(worst <= 2e-6);
}

int main(void) {
    TEST_RUN(flash_matches_oracle_every_option);
    TEST_RUN(flash_identical_for_every_thread_count);
    TEST_RUN(flash_matches_torch_causal_gqa);
    TEST_RUN(flash_matches_torch_bidirectional_padded);
    TEST_RUN(inference_attention_matches_oracle);
    TEST_MAIN_END();
}
