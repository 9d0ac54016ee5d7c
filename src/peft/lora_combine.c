/* lora_combine.c — adapter arithmetic: several LoRA adapters of one base
 * combined into one, with the semantics of HF peft 0.21.2's
 * LoraModel.add_weighted_adapter (tuners/lora/model.py, utils/merge_utils.py).
 *
 * For adapters i with weights w_i and scales s_i, per module:
 *   linear, ties, dare_*, magnitude_prune  A' = f(A_i, sign(w_i s_i)·sqrt|w_i s_i|),
 *                                          B' = f(B_i, sqrt|w_i s_i|): A and B
 *                                          are merged separately (equal ranks)
 *   cat                                    A' = [w_i s_i A_i] stacked by rows,
 *                                          B' = [B_i] side by side, rank Σ r_i
 *   svd and *_svd                          Δ = f(s_i B_i A_i, w_i) re-factored:
 *                                          Δ = U S Vᵀ, B' = U_R S_R, A' = Vᵀ_R
 * where f is one of merge_utils' functions: task arithmetic Σ w_i T_i,
 * magnitude pruning (top-k by |x| per tensor), TIES (prune, elect the sign,
 * disjoint mean) and DARE (random mask of density d, rescaled 1/d). The
 * result has r = lora_alpha = its rank (HF writes lora_alpha = r), so its
 * scale is 1, or sqrt(r) when the first adapter uses rsLoRA (HF copies the
 * first adapter's config). Its modules: the union of the target modules on
 * the first adapter's layers, as HF's config for the new adapter says. */
#include "peft/lora.h"
#include "core/limits.h"

#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* LAPACK's divide-and-conquer SVD, from the OpenBLAS the library already
 * links (OpenBLAS exports the Fortran LAPACK symbols; no LAPACKE needed).
 * The trailing size_t is gfortran's hidden length of the CHARACTER jobz. */
extern void dgesdd_(const char *jobz, const int *m, const int *n, double *a, const int *lda, double *s, double *u,
                    const int *ldu, double *vt, const int *ldvt, double *work, const int *lwork, int *iwork,
                    int *info, size_t jobz_len);
/* QR (Householder) and its explicit Q, for the low-rank path of svd. */
extern void dgeqrf_(const int *m, const int *n, double *a, const int *lda, double *tau, double *work,
                    const int *lwork, int *info);
extern void dorgqr_(const int *m, const int *n, const int *k, double *a, const int *lda, const double *tau,
                    double *work, const int *lwork, int *info);

static const struct {
    const char *name;
    combine_type t;
} type_names[] = {
    {"linear", COMBINE_LINEAR},
    {"cat", COMBINE_CAT},
    {"svd", COMBINE_SVD},
    {"ties", COMBINE_TIES},
    {"ties_svd", COMBINE_TIES_SVD},
    {"dare_linear", COMBINE_DARE_LINEAR},
    {"dare_ties", COMBINE_DARE_TIES},
    {"dare_linear_svd", COMBINE_DARE_LINEAR_SVD},
    {"dare_ties_svd", COMBINE_DARE_TIES_SVD},
    {"magnitude_prune", COMBINE_MAGNITUDE_PRUNE},
    {"magnitude_prune_svd", COMBINE_MAGNITUDE_PRUNE_SVD},
};
#define N_TYPES ((int)(sizeof type_names / sizeof type_names[0]))
#define TYPE_LIST                                                                                          \
    "linear, cat, svd, ties, ties_svd, dare_linear, dare_ties, dare_linear_svd, dare_ties_svd, "           \
    "magnitude_prune, magnitude_prune_svd"

int combine_type_parse(const char *name, combine_type *out, peft_err *err) {
    for (int i = 0; name && i < N_TYPES; i++)
        if (strcmp(type_names[i].name, name) == 0) { *out = type_names[i].t; return 0; }
    return peft_fail(err, PEFT_ERR_INVALID, "unknown combination type \"%s\" (expected one of " TYPE_LIST ")",
                     name ? name : "(null)");
}

const char *combine_type_name(combine_type t) {
    for (int i = 0; i < N_TYPES; i++)
        if (type_names[i].t == t) return type_names[i].name;
    return "?";
}

combine_opts combine_default_opts(void) {
    combine_opts o;
    memset(&o, 0, sizeof o);
    o.type = COMBINE_SVD;   /* add_weighted_adapter's default */
    o.svd_clamp = -1;
    o.seed = 42;
    return o;
}

typedef enum { PRUNE_NONE, PRUNE_MAGNITUDE, PRUNE_RANDOM } prune_kind;

static bool type_is_svd(combine_type t) {
    return t == COMBINE_SVD || t == COMBINE_TIES_SVD || t == COMBINE_DARE_LINEAR_SVD || t == COMBINE_DARE_TIES_SVD ||
           t == COMBINE_MAGNITUDE_PRUNE_SVD;
}
static bool type_needs_density(combine_type t) { return t != COMBINE_LINEAR && t != COMBINE_CAT && t != COMBINE_SVD; }
static bool type_is_ties(combine_type t) {
    return t == COMBINE_TIES || t == COMBINE_TIES_SVD || t == COMBINE_DARE_TIES || t == COMBINE_DARE_TIES_SVD;
}
static prune_kind type_prune(combine_type t) {
    switch (t) {
    case COMBINE_TIES: case COMBINE_TIES_SVD: case COMBINE_MAGNITUDE_PRUNE: case COMBINE_MAGNITUDE_PRUNE_SVD:
        return PRUNE_MAGNITUDE;
    case COMBINE_DARE_LINEAR: case COMBINE_DARE_TIES: case COMBINE_DARE_LINEAR_SVD: case COMBINE_DARE_TIES_SVD:
        return PRUNE_RANDOM;
    default: return PRUNE_NONE;
    }
}

/* ---- merge_utils ------------------------------------------------------------------ */

static int cmp_desc(const void *pa, const void *pb) {
    float a = *(const float *)pa, b = *(const float *)pb;
    return (a < b) - (a > b);
}

/* merge_utils.magnitude_based_pruning: keeps the k = int(density·n) values
 * largest in magnitude (ties at the threshold: the first ones, in index
 * order; torch.topk leaves that order unspecified). scratch: n floats. */
static void prune_magnitude(float *x, int64_t n, double density, float *scratch) {
    const int64_t k = (int64_t)(density * (double)n);
    if (k <= 0) { memset(x, 0, (size_t)n * sizeof *x); return; }
    for (int64_t i = 0; i < n; i++) scratch[i] = fabsf(x[i]);
    qsort(scratch, (size_t)n, sizeof *scratch, cmp_desc);
    const float thr = scratch[k - 1];
    int64_t above = 0;
    for (int64_t i = 0; i < n; i++) above += fabsf(x[i]) > thr;
    int64_t at = k - above;   /* how many values equal to thr still fit */
    for (int64_t i = 0; i < n; i++) {
        const float a = fabsf(x[i]);
        if (a > thr) continue;
        if (a == thr && at > 0) { at--; continue; }
        x[i] = 0;
    }
}

/* merge_utils.random_pruning with rescale: each value kept with probability
 * density (torch.bernoulli there; this generator here, so the masks differ
 * from HF's but have the same law), the kept ones divided by density. */
static void prune_random(float *x, int64_t n, double density, peft_rng *rng) {
    const float d = (float)density;
    for (int64_t i = 0; i < n; i++) x[i] = peft_rng_uniform(rng) < d ? x[i] / d : 0.0f;
}

static float signf(float x) { return (float)((x > 0) - (x < 0)); }

/* One merge_utils function over k task tensors t[i] (n values each, pruned
 * in place: they are the caller's copies) with weights w[i], into out (n). */
static void merge_tasks(float **t, const float *w, int k, int64_t n, const combine_opts *o, float *scratch,
                        peft_rng *rng, float *out) {
    const prune_kind pk = type_prune(o->type);
    /* prune(): density >= 1 keeps everything, without rescaling */
    if (pk != PRUNE_NONE && o->density < 1)
        for (int i = 0; i < k; i++) {
            if (pk == PRUNE_MAGNITUDE) prune_magnitude(t[i], n, o->density, scratch);
            else prune_random(t[i], n, o->density, rng);
        }
    if (!type_is_ties(o->type)) {
        for (int64_t e = 0; e < n; e++) {
            float s = 0;
            for (int i = 0; i < k; i++) s += t[i][e] * w[i];
            out[e] = s;
        }
        return;
    }
    /* TIES: the sign is elected on the unweighted (pruned) tensors, then the
     * weighted values of that sign are averaged (zeros have sign 0 and never
     * count) */
    for (int64_t e = 0; e < n; e++) {
        float sm = 0;
        for (int i = 0; i < k; i++) sm += o->sign_frequency ? signf(t[i][e]) : t[i][e];
        const float maj = sm >= 0 ? 1.0f : -1.0f;
        float s = 0, cnt = 0;
        for (int i = 0; i < k; i++)
            if (signf(t[i][e]) == maj) { s += t[i][e] * w[i]; cnt += 1; }
        out[e] = s / (cnt < 1 ? 1 : cnt);
    }
}

/* ---- SVD ----------------------------------------------------------------------------- */

static int cmp_asc_d(const void *pa, const void *pb) {
    double a = *(const double *)pa, b = *(const double *)pb;
    return (a > b) - (a < b);
}

/* torch.quantile(x, q) (linear interpolation between the order statistics
 * around q·(n-1)); sorts x. */
static double quantile(double *x, int64_t n, double q) {
    qsort(x, (size_t)n, sizeof *x, cmp_asc_d);
    const double pos = q * (double)(n - 1);
    const int64_t lo = (int64_t)floor(pos), hi = (int64_t)ceil(pos);
    return x[lo] + (x[hi] - x[lo]) * (pos - (double)lo);
}

int combine_clamp_factors(float *A, int64_t na, float *B, int64_t nb, double q, peft_err *err) {
    double *dist = peft_malloc((size_t)(na + nb) * sizeof(double), err);
    if (!dist) return PEFT_ERR_NOMEM;
    /* the quantile over cat(U.flatten(), Vh.flatten()), i.e. B then A */
    for (int64_t i = 0; i < nb; i++) dist[i] = B[i];
    for (int64_t i = 0; i < na; i++) dist[nb + i] = A[i];
    const double hi = quantile(dist, na + nb, q), lo = -hi;
    free(dist);
    /* torch.clamp(x, lo, hi) is min(max(x, lo), hi): all hi when lo > hi */
    for (int64_t i = 0; i < nb; i++) B[i] = (float)fmin(fmax(B[i], lo), hi);
    for (int64_t i = 0; i < na; i++) A[i] = (float)fmin(fmax(A[i], lo), hi);
    return 0;
}

/* d (out, in), row-major, re-factored to rank R: B (out, R) = U_R·S_R,
 * A (R, in) = Vᵀ_R, then clamped to ±quantile(|values|, clamp) when clamp
 * >= 0, as _svd_generalized_task_arithmetic_weighted_adapter does. */
static int svd_factor(const float *d, int out, int in, int R, double clamp, float *A, float *B, const char *what,
                      peft_err *err) {
    /* row-major d is column-major dᵀ (in × out): dᵀ = U S Vᵀ gives
     * d = V S Uᵀ, so d's right factor (R, in) is U's first R columns as they
     * lie in memory, and its left factor (out, R) is Vᵀ read by rows. */
    const int m = in, n = out, k = PEFT_MIN(in, out);
    double *a = peft_malloc((size_t)m * n * sizeof(double), err);
    double *s = peft_malloc((size_t)k * sizeof(double), err);
    double *u = peft_malloc((size_t)m * k * sizeof(double), err);
    double *vt = peft_malloc((size_t)k * n * sizeof(double), err);
    int *iwork = peft_malloc((size_t)8 * k * sizeof(int), err);
    double *work = NULL;
    int rc = 0;
    if (!a || !s || !u || !vt || !iwork) { rc = PEFT_ERR_NOMEM; goto done; }
    for (int64_t i = 0; i < (int64_t)m * n; i++) a[i] = d[i];
    int lwork = -1, info = 0;
    double wq = 0;
    dgesdd_("S", &m, &n, a, &m, s, u, &m, vt, &k, &wq, &lwork, iwork, &info, 1);
    if (info != 0 || !(wq >= 1 && wq <= (double)INT_MAX)) {
        rc = peft_fail(err, PEFT_ERR_NUMERIC, "%s: the SVD's workspace query failed (LAPACK dgesdd info %d)", what, info);
        goto done;
    }
    lwork = (int)wq;
    work = peft_malloc((size_t)lwork * sizeof(double), err);
    if (!work) { rc = PEFT_ERR_NOMEM; goto done; }
    dgesdd_("S", &m, &n, a, &m, s, u, &m, vt, &k, work, &lwork, iwork, &info, 1);
    if (info != 0) {
        rc = peft_fail(err, PEFT_ERR_NUMERIC, "%s: the SVD did not converge (LAPACK dgesdd info %d; NaN or inf in the "
                                              "weighted delta?)", what, info);
        goto done;
    }
    const int64_t na = (int64_t)R * in, nb = (int64_t)out * R;
    /* the factors in float first: HF clamps the float32 factors */
    for (int j = 0; j < R; j++)
        for (int i = 0; i < in; i++) A[(int64_t)j * in + i] = (float)u[(int64_t)j * m + i];
    for (int o = 0; o < out; o++)
        for (int j = 0; j < R; j++) B[(int64_t)o * R + j] = (float)(vt[(int64_t)o * k + j] * s[j]);
    if (clamp >= 0) rc = combine_clamp_factors(A, na, B, nb, clamp, err);
done:
    free(a);
    free(s);
    free(u);
    free(vt);
    free(iwork);
    free(work);
    return rc;
}

/* svd of Δ = P·Q without forming Δ, where P = [w_q s_q B_q] (out, K) and
 * Q = [A_q] stacked (K, in), K = Σ r_q ≤ min(out, in): P = Q1·R1,
 * Qᵀ = Q2·R2 (QR), R1·R2ᵀ = Uc·S·Vcᵀ (K × K), so Δ = (Q1·Uc)·S·(Q2·Vc)ᵀ.
 * The same singular values and vectors as the full SVD (up to signs), at
 * O((out + in)·K²) instead of O(out·in·min(out, in)): on a 576-wide
 * model about 100x faster. Used when the merge is a plain weighted sum. */
static int svd_factor_lowrank(const lora_module *const *src, const double *w, int k, int out, int in, int R,
                              double clamp, float *A, float *B, const char *what, peft_err *err) {
    int K = 0;
    for (int q = 0; q < k; q++) K += src[q]->r;
    double *p = peft_malloc((size_t)out * K * sizeof(double), err);     /* column-major (out, K) */
    double *qt = peft_malloc((size_t)in * K * sizeof(double), err);     /* column-major (in, K) */
    double *tau1 = peft_malloc((size_t)K * sizeof(double), err), *tau2 = peft_malloc((size_t)K * sizeof(double), err);
    double *c = peft_malloc((size_t)K * K * sizeof(double), err);
    double *s = peft_malloc((size_t)K * sizeof(double), err), *uc = peft_malloc((size_t)K * K * sizeof(double), err);
    double *vct = peft_malloc((size_t)K * K * sizeof(double), err);
    int *iwork = peft_malloc((size_t)8 * K * sizeof(int), err);
    const int lwork = 64 * K + 4 * K * K + 8 * K + 64;
    double *work = peft_malloc((size_t)lwork * sizeof(double), err);
    int rc = 0, info = 0;
    if (!p || !qt || !tau1 || !tau2 || !c || !s || !uc || !vct || !iwork || !work) { rc = PEFT_ERR_NOMEM; goto done; }
    int off = 0;
    for (int q = 0; q < k; q++) {
        const lora_module *im = src[q];
        const double f = w[q] * im->scale;
        for (int j = 0; j < im->r; j++) {
            for (int o = 0; o < out; o++) p[o + (int64_t)(off + j) * out] = f * im->B[(int64_t)o * im->r + j];
            for (int i = 0; i < in; i++) qt[i + (int64_t)(off + j) * in] = im->A[(int64_t)j * in + i];
        }
        off += im->r;
    }
    dgeqrf_(&out, &K, p, &out, tau1, work, &lwork, &info);
    if (!info) dgeqrf_(&in, &K, qt, &in, tau2, work, &lwork, &info);
    /* c = R1·R2ᵀ, both upper triangular (K, K) in the tops of p and qt */
    for (int a = 0; a < K && !info; a++)
        for (int b = 0; b < K; b++) {
            double t = 0;
            for (int j = a > b ? a : b; j < K; j++) t += p[a + (int64_t)j * out] * qt[b + (int64_t)j * in];
            c[a + (int64_t)b * K] = t;
        }
    if (!info) dorgqr_(&out, &K, &K, p, &out, tau1, work, &lwork, &info);
    if (!info) dorgqr_(&in, &K, &K, qt, &in, tau2, work, &lwork, &info);
    if (info) { rc = peft_fail(err, PEFT_ERR_NUMERIC, "%s: QR of the stacked factors failed (LAPACK info %d)", what, info); goto done; }
    dgesdd_("S", &K, &K, c, &K, s, uc, &K, vct, &K, work, &lwork, iwork, &info, 1);
    if (info) {
        rc = peft_fail(err, PEFT_ERR_NUMERIC, "%s: the SVD did not converge (LAPACK dgesdd info %d; NaN or inf in the "
                                              "adapters?)", what, info);
        goto done;
    }
    /* B = Q1·Uc[:, :R]·S_R (out, R), A = (Q2·Vc[:, :R])ᵀ (R, in) */
    for (int o = 0; o < out; o++)
        for (int j = 0; j < R; j++) {
            double t = 0;
            for (int a = 0; a < K; a++) t += p[o + (int64_t)a * out] * uc[a + (int64_t)j * K];
            B[(int64_t)o * R + j] = (float)(t * s[j]);
        }
    for (int j = 0; j < R; j++)
        for (int i = 0; i < in; i++) {
            double t = 0;
            for (int b = 0; b < K; b++) t += qt[i + (int64_t)b * in] * vct[j + (int64_t)b * K];
            A[(int64_t)j * in + i] = (float)t;
        }
    if (clamp >= 0) rc = combine_clamp_factors(A, (int64_t)R * in, B, (int64_t)out * R, clamp, err);
done:
    free(p);
    free(qt);
    free(tau1);
    free(tau2);
    free(c);
    free(s);
    free(uc);
    free(vct);
    free(iwork);
    free(work);
    return rc;
}

/* Whether the low-rank path can give rank R: R ≤ K = Σ r_q ≤ min(out, in). */
static bool svd_rank_fits(const lora_module *const *src, int k, int R, int out, int in) {
    int K = 0;
    for (int q = 0; q < k; q++) K += src[q]->r;
    return R <= K && K <= out && K <= in;
}

/* ---- checks and the combination ------------------------------------------------------ */

/* "adapter DIR" or "adapter #i" for messages, into buf. */
static const char *in_name(const char *const *names, int i, char *buf, size_t cap) {
    if (names && names[i]) snprintf(buf, cap, "%s", names[i]);
    else snprintf(buf, cap, "adapter #%d", i + 1);
    return buf;
}

/* The module of a at slot s (layer · ROLE_N_LINEAR + role), from a->mods. */
static const lora_module *module_at(const adapter *a, int s) {
    const lora_state *ls = lora_of(a);
    for (int i = 0; i < ls->n_modules; i++)
        if (ls->mods[i].layer * ROLE_N_LINEAR + (int)ls->mods[i].role == s) return &ls->mods[i];
    return NULL;
}

/* The rank HF sizes the new adapter with: r, or the largest of its
 * rank_pattern (here: the modules' ranks). */
static int config_rank(const adapter *a) {
    const lora_state *ls = lora_of(a);
    int r = ls->cfg.r;
    for (int i = 0; i < ls->n_modules; i++) r = ls->mods[i].r > r ? ls->mods[i].r : r;
    return r;
}

static int check_opts(const combine_opts *o, int n, const double *w, const char *const *names, peft_err *err) {
    char nb[512];
    if (n < 1) return peft_fail(err, PEFT_ERR_INVALID, "combine: no adapters given");
    for (int i = 0; i < n; i++)
        if (!isfinite(w[i]))
            return peft_fail(err, PEFT_ERR_INVALID, "combine: the weight of %s is %g, not a finite number",
                             in_name(names, i, nb, sizeof nb), w[i]);
    if ((int)o->type < 0 || o->type >= COMBINE_N)
        return peft_fail(err, PEFT_ERR_INVALID, "combine: unknown combination type %d", (int)o->type);
    if (o->density != 0 && !(o->density > 0 && o->density <= 1))
        return peft_fail(err, PEFT_ERR_INVALID, "combine: density must be in (0, 1], got %g", o->density);
    if (n > 1 && type_needs_density(o->type) && o->density == 0)
        return peft_fail(err, PEFT_ERR_INVALID, "combine: %s needs a density in (0, 1] (the fraction of values kept)",
                         combine_type_name(o->type));
    if (o->svd_rank < 0 || o->svd_rank > PEFT_MAX_RANK)
        return peft_fail(err, PEFT_ERR_INVALID, "combine: svd rank must be in 1..%d (0: the largest input rank), got %d",
                         PEFT_MAX_RANK, o->svd_rank);
    if (isnan(o->svd_clamp) || o->svd_clamp > 1)
        return peft_fail(err, PEFT_ERR_INVALID, "combine: svd clamp must be a quantile in [0, 1] (negative: none), got %g",
                         o->svd_clamp);
    return 0;
}

/* Two base_model_name_or_path values name one base: equal, or the same
 * file or folder here ("models/x.gguf" and its absolute path). */
static bool same_base(const char *a, const char *b) {
    if (strcmp(a, b) == 0) return true;
    char *ra = realpath(a, NULL), *rb = realpath(b, NULL);
    const bool same = ra && rb && strcmp(ra, rb) == 0;
    free(ra);
    free(rb);
    return same;
}

static int check_inputs(const peft_model *m, const adapter *const *in, int n, const char *const *names,
                        peft_err *err) {
    char nb[512], nb2[512];
    for (int i = 0; i < n; i++) {
        const adapter *a = in[i];
        in_name(names, i, nb, sizeof nb);
        if (!a) return peft_fail(err, PEFT_ERR_INVALID, "combine: %s is NULL", nb);
        if (lora_of(a) && !adapter_is_plain_lora(a))
            return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                             "combine: %s is a DoRA adapter; only LoRA adapters combine (HF peft's "
                             "add_weighted_adapter sums the A and B matrices and would silently re-initialise the "
                             "magnitude vectors)", nb);
        if (!adapter_is_plain_lora(a))
            return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                             "combine: %s is an adapter of method %s; only LoRA adapters combine (HF peft's "
                             "add_weighted_adapter is a LoRA method)", nb, adapter_method_name(a));
        if (mts_has_head(a))
            return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                             "combine: %s has a classification head (modules_to_save); only the LoRA matrices "
                             "combine", nb);
        if (lora_of(a)->n_modules < 1) return peft_fail(err, PEFT_ERR_INVALID, "combine: %s has no LoRA modules", nb);
        int rc = adapter_fits(a, m, err);
        if (rc) return rc;
        const char *b0 = in[0]->base_model ? in[0]->base_model : m->path;
        const char *bi = a->base_model ? a->base_model : m->path;
        if (i > 0 && !same_base(b0, bi))
            return peft_fail(err, PEFT_ERR_INVALID,
                             "combine: %s was made for base model \"%s\" but %s for \"%s\"; adapters of different "
                             "bases do not combine", in_name(names, 0, nb2, sizeof nb2), b0, nb, bi);
    }
    return 0;
}

int lora_combine(const peft_model *m, const adapter *const *in, const double *w, int n, const char *const *names,
                 const combine_opts *opts, adapter **out, peft_err *err) {
    *out = NULL;
    char nb[512], nb2[512], path[200];
    int rc = check_opts(opts, n, w, names, err);
    if (rc) return rc;
    if ((rc = check_inputs(m, in, n, names, err))) return rc;
    combine_opts o = *opts;
    /* add_weighted_adapter: "if there is only one adapter, we can only use
     * linear merging" */
    if (n == 1) o.type = COMBINE_LINEAR;
    const bool svd = type_is_svd(o.type);
    const int nl = m->cfg.n_layer, ns = nl * ROLE_N_LINEAR;

    /* the new rank, by _check_add_weighted_adapter's rules */
    int new_rank = 0;
    if (o.type == COMBINE_CAT) {
        for (int i = 0; i < n; i++) {
            new_rank += config_rank(in[i]);
            if (new_rank > PEFT_MAX_RANK)
                return peft_fail(err, PEFT_ERR_INVALID, "combine: cat: the summed rank exceeds %d", PEFT_MAX_RANK);
        }
    } else if (svd) {
        for (int i = 0; i < n; i++) new_rank = config_rank(in[i]) > new_rank ? config_rank(in[i]) : new_rank;
        if (o.svd_rank > 0) new_rank = o.svd_rank;
    } else {
        new_rank = config_rank(in[0]);
        for (int i = 1; i < n; i++)
            if (config_rank(in[i]) != new_rank)
                return peft_fail(err, PEFT_ERR_SHAPE,
                                 "combine: %s needs adapters of one rank (HF peft: \"All adapters must have the same r "
                                 "value\"), but %s has r = %d and %s has r = %d; use cat or svd",
                                 combine_type_name(o.type), in_name(names, 0, nb, sizeof nb), new_rank,
                                 in_name(names, i, nb2, sizeof nb2), config_rank(in[i]));
        for (int i = 0; i < n; i++)
            for (int j = 0; j < lora_of(in[i])->n_modules; j++)
                if (lora_of(in[i])->mods[j].r != new_rank) {
                    model_linear_hf_path(m, lora_of(in[i])->mods[j].layer, lora_of(in[i])->mods[j].role, path, sizeof path);
                    return peft_fail(err, PEFT_ERR_SHAPE,
                                     "combine: %s needs one rank in every module, but %s has rank %d at %s (r = %d "
                                     "elsewhere); use cat or svd", combine_type_name(o.type),
                                     in_name(names, i, nb, sizeof nb), lora_of(in[i])->mods[j].r, path, new_rank);
                }
    }

    /* The result's modules: the union of the target modules, on the first
     * adapter's layers (HF copies its layers_to_transform). */
    uint32_t roles = 0;
    for (int i = 0; i < n; i++)
        for (int j = 0; j < lora_of(in[i])->n_modules; j++) roles |= 1u << lora_of(in[i])->mods[j].role;
    const uint64_t layers = lora_of(in[0])->cfg.layers;
    int *slot_r = peft_calloc((size_t)(ns ? ns : 1), sizeof *slot_r, err);
    if (!slot_r) return PEFT_ERR_NOMEM;
    for (int s = 0; s < ns && !rc; s++) {
        const int l = s / ROLE_N_LINEAR, r = s % ROLE_N_LINEAR;
        if (!(roles & (1u << r)) || !lora_layer_selected(layers, l) || !m->layers[l].lin[r].present) continue;
        model_linear_hf_path(m, l, (model_linear_role)r, path, sizeof path);
        int have = 0;
        for (int i = 0; i < n; i++) have += module_at(in[i], s) != NULL;
        if (!have) {
            rc = peft_fail(err, PEFT_ERR_INVALID,
                           "combine: the result targets %s (the union of the target modules on the layers of %s, as "
                           "HF peft's add_weighted_adapter makes it) but no input adapter has a module there",
                           path, in_name(names, 0, nb, sizeof nb));
            break;
        }
        const model_linear *lin = &m->layers[l].lin[r];
        const int k = (int)PEFT_MIN(lin->w.rows, lin->w.cols);
        if (svd && new_rank > k) {
            rc = peft_fail(err, PEFT_ERR_INVALID, "combine: svd rank %d is larger than %s allows (%lld x %lld: at most %d)",
                           new_rank, path, (long long)lin->w.rows, (long long)lin->w.cols, k);
            break;
        }
        slot_r[s] = new_rank;
    }
    for (int i = 0; i < n && !rc; i++)
        for (int j = 0; j < lora_of(in[i])->n_modules; j++) {
            const lora_module *md = &lora_of(in[i])->mods[j];
            if (slot_r[md->layer * ROLE_N_LINEAR + md->role] > 0) continue;
            model_linear_hf_path(m, md->layer, md->role, path, sizeof path);
            rc = peft_fail(err, PEFT_ERR_INVALID,
                           "combine: %s adapts %s, which is not on the layers of %s (the first adapter, whose "
                           "layers_to_transform the result takes, as in HF peft, which would drop the module); "
                           "put an adapter that covers every layer first",
                           in_name(names, i, nb, sizeof nb), path, in_name(names, 0, nb2, sizeof nb2));
            break;
        }
    if (rc) { free(slot_r); return rc; }

    lora_config cfg = lora_of(in[0])->cfg;   /* HF: replace(config of adapters[0], r, lora_alpha, target_modules) */
    cfg.r = new_rank;
    cfg.alpha = (float)new_rank;
    cfg.targets = roles;
    cfg.dora = false;
    adapter *a = NULL;
    rc = lora_alloc(m, &cfg, slot_r, 0, &a, err);
    free(slot_r);
    if (rc) return rc;
    a->base_model = peft_strdup(in[0]->base_model ? in[0]->base_model : m->path, err);
    if (!a->base_model) { adapter_free(a); return PEFT_ERR_NOMEM; }

    /* scratch for the largest module: k task tensors, a merged delta, the
     * magnitude pruning's sort buffer */
    int64_t big = 0;
    lora_state *out_ls = lora_of(a);
    for (int j = 0; j < out_ls->n_modules; j++) {
        const lora_module *md = &out_ls->mods[j];
        int64_t e = svd ? (int64_t)md->out * md->in : (int64_t)(md->in > md->out ? md->in : md->out) * new_rank;
        big = e > big ? e : big;
    }
    float *tasks = peft_malloc((size_t)n * big * sizeof(float), err);
    float *merged = peft_malloc((size_t)big * sizeof(float), err);
    float *scratch = peft_malloc((size_t)big * sizeof(float), err);
    float **tp = peft_malloc((size_t)n * sizeof *tp, err);
    float *wt = peft_malloc((size_t)n * sizeof *wt, err);
    const lora_module **srcs = peft_malloc((size_t)n * sizeof *srcs, err);
    double *wks = peft_malloc((size_t)n * sizeof *wks, err);
    if (!tasks || !merged || !scratch || !tp || !wt || !srcs || !wks) rc = PEFT_ERR_NOMEM;
    peft_rng rng;
    peft_rng_seed(&rng, o.seed);
    /* the merge of the deltas is Σ w_i Δ_i (no pruning, no sign election):
     * Δ has rank ≤ Σ r_i and the low-rank SVD applies */
    const bool plain_sum = o.type == COMBINE_SVD ||
                           ((o.type == COMBINE_DARE_LINEAR_SVD || o.type == COMBINE_MAGNITUDE_PRUNE_SVD) && o.density >= 1);
    for (int j = 0; j < out_ls->n_modules && !rc; j++) {
        lora_module *md = &out_ls->mods[j];
        const int s = md->layer * ROLE_N_LINEAR + (int)md->role;
        model_linear_hf_path(m, md->layer, md->role, path, sizeof path);
        int k = 0;
        for (int i = 0; i < n; i++) {
            const lora_module *im = module_at(in[i], s);
            if (!im) continue;
            srcs[k] = im;
            wks[k] = w[i];
            k++;
        }
        if (o.type == COMBINE_CAT) {
            /* A rows [off, off + r_i) = A_i · w_i · s_i, B columns likewise;
             * the rest of the new rank stays zero */
            int off = 0;
            for (int q = 0; q < k; q++) {
                const lora_module *im = srcs[q];
                const float f = (float)(wks[q] * im->scale);
                for (int64_t e = 0; e < (int64_t)im->r * md->in; e++) md->A[(int64_t)off * md->in + e] = im->A[e] * f;
                for (int o2 = 0; o2 < md->out; o2++)
                    memcpy(md->B + (int64_t)o2 * md->r + off, im->B + (int64_t)o2 * im->r, (size_t)im->r * sizeof(float));
                off += im->r;
            }
        } else if (!svd) {
            /* A and B merged apart, sqrt(|w·s|) on each, the sign on A */
            const int64_t nA = (int64_t)new_rank * md->in, nB = (int64_t)md->out * new_rank;
            for (int side = 0; side < 2; side++) {
                const int64_t ne = side ? nB : nA;
                for (int q = 0; q < k; q++) {
                    const double ws = wks[q] * srcs[q]->scale, sq = sqrt(fabs(ws));
                    wt[q] = (float)(side == 0 && ws < 0 ? -sq : sq);
                    tp[q] = tasks + (int64_t)q * big;
                    memcpy(tp[q], side ? srcs[q]->B : srcs[q]->A, (size_t)ne * sizeof(float));
                }
                merge_tasks(tp, wt, k, ne, &o, scratch, &rng, side ? md->B : md->A);
            }
        } else if (plain_sum && svd_rank_fits(srcs, k, new_rank, md->out, md->in)) {
            rc = svd_factor_lowrank(srcs, wks, k, md->out, md->in, new_rank, o.svd_clamp, md->A, md->B, path, err);
        } else {
            /* Δ_i = s_i · B_i · A_i (get_delta_weight), merged, re-factored */
            const int64_t ne = (int64_t)md->out * md->in;
            for (int q = 0; q < k; q++) {
                const lora_module *im = srcs[q];
                tp[q] = tasks + (int64_t)q * big;
                cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, md->out, md->in, im->r, 1.0f, im->B, im->r,
                            im->A, md->in, 0.0f, tp[q], md->in);
                const float sc = im->scale;
                for (int64_t e = 0; e < ne; e++) tp[q][e] *= sc;
                wt[q] = (float)wks[q];
            }
            merge_tasks(tp, wt, k, ne, &o, scratch, &rng, merged);
            rc = svd_factor(merged, md->out, md->in, new_rank, o.svd_clamp, md->A, md->B, path, err);
        }
    }
    free(srcs);
    free(wks);
    free(tasks);
    free(merged);
    free(scratch);
    free(tp);
    free(wt);
    if (!rc) rc = adapter_refresh(a, m, err);
    if (rc) { adapter_free(a); return rc; }
    *out = a;
    return 0;
}

/* ---- public API (peft.h) ---------------------------------------------------------------- */

peft_combine_params peft_combine_default_params(void) {
    peft_combine_params p;
    memset(&p, 0, sizeof p);
    p.svd_clamp = -1;
    p.seed = 42;
    return p;
}

peft_adapter *peft_adapter_combine(peft_model *m, const peft_adapter *const *adapters, const double *weights, int n,
                                   const peft_combine_params *p) {
    return peft_adapter_combine_named(m, adapters, weights, NULL, n, p);
}
