/* lokr.c — LoKr (LyCORIS; HF PEFT peft_type LOKR): the weight update of a
 * linear (out, in) is a Kronecker product of two small factors.
 *
 *   (c, d) = factorization(in, f), (a, b) = factorization(out, f)
 *   W1 (a, c) = lokr_w1, or lokr_w1_a (a, r) · lokr_w1_b (r, c)
 *   W2 (b, d) = lokr_w2, or lokr_w2_a (b, r) · lokr_w2_b (r, d)
 *   ΔW = s · kron(W1, W2) (out, in), s = alpha / r (also when both are full,
 *        as HF PEFT does; LyCORIS would use 1 there)
 *   y  = x·Wᵀ + b + x·ΔWᵀ
 *
 * W1 is a low-rank product only with decompose_both and r < max(a, c) / 2,
 * W2 whenever r < max(b, d) / 2; which tensors a file holds follows from
 * that rule, so loading checks it. The product is applied without forming
 * kron(W1, W2): a row x (in = c·d) viewed as X (c, d) gives
 * Y = s · W1 · X · W2ᵀ (a, b), the row of y. Fresh adapters (init_weights
 * true) start with W1 = 0 (lokr_w1 = 0, or lokr_w1_a = 0) and W2's tensors
 * kaiming-uniform (a = √5), so ΔW = 0; "lycoris" swaps the roles
 * (W2 = 0: lokr_w2, or lokr_w2_b); false draws everything.
 *
 * Training only: rank_dropout p keeps each output row of ΔW with
 * probability 1 - p, one mask per forward call shared by every token
 * (divided by its mean with rank_dropout_scale); module_dropout q skips the
 * whole term of a call with probability q. Both are drawn from the step's
 * dropout seed and the module index, so the backward redraws the forward's.
 *
 * HF PEFT 0.21.2 refuses LoKr on GPT-2's Conv1D layers; so does this file. */
#include "peft/lora.h"
#include "peft/method.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The factor pair HF PEFT's lycoris_utils.factorization returns (also used
 * by tests/test_methods.c, hence not static). */
void lokr_factorization(int dim, int factor, int *m_out, int *n_out);

enum { INIT_TRUE = 0, INIT_FALSE, INIT_LYCORIS };

typedef struct {
    int layer, role;
    int in, out, a, b, c, d;
    bool lr1, lr2;          /* W1 / W2 a low-rank product */
    int idx;                /* registry index of its first tensor */
    float *w1, *w1a, *w1b, *w2, *w2a, *w2b;
    float *g1, *g1a, *g1b, *g2, *g2a, *g2b;
} lokr_mod;

typedef struct {
    int r;
    float alpha, scale;
    bool decompose_both, rd_scale;
    int factor;
    float rank_dropout, module_dropout;
    int init;
    int n_mods;
    int *mod_of;            /* per slot: module index, or -1 */
    lokr_mod *mods;
} lokr;

#define K(a) ((lokr *)(a)->priv)

/* rows of a block of the dW1 reduction: fixed, so sums do not depend on the
 * thread count */
#define ROW_BLK 64

void lokr_factorization(int dim, int factor, int *m_out, int *n_out) {
    if (factor > 0 && dim % factor == 0) {
        *m_out = factor;
        *n_out = dim / factor;
        return;
    }
    if (factor == -1) factor = dim;
    int m = 1, n = dim;
    while (m < n) {
        int m2 = m + 1;
        while (dim % m2) m2++;
        const int n2 = dim / m2;
        if (m2 + n2 > m + n || m2 > factor) break;
        m = m2;
        n = n2;
    }
    if (m > n) {
        const int t = m;
        m = n;
        n = t;
    }
    *m_out = m;
    *n_out = n;
}

static void lokr_free(adapter *a) {
    lokr *k = K(a);
    if (!k) return;
    free(k->mod_of);
    free(k->mods);
    free(k);
    a->priv = NULL;
}

static int parse_init(const char *s, int *out) {
    if (!strcmp(s, "true") || !strcmp(s, "1")) *out = INIT_TRUE;
    else if (!strcmp(s, "false") || !strcmp(s, "0")) *out = INIT_FALSE;
    else if (!strcmp(s, "lycoris")) *out = INIT_LYCORIS;
    else return -1;
    return 0;
}

/* The method's options (mc->options) into k, checked; alpha from
 * mc->alpha unless a file's "alpha" option says otherwise. */
static int read_options(const method_config *mc, lokr *k, peft_err *err) {
    double alpha = mc->alpha > 0 ? mc->alpha : 8.0, factor = -1, rd = 0, md = 0;
    bool both = false, rds = false;
    char buf[32];
    int rc;
    /* "alpha" is how config_read passes a file's value, 0 included */
    if ((rc = method_option_float(mc, "alpha", 0, 1e6, &alpha, err)) ||
        (rc = method_option_float(mc, "decompose_factor", -1, 1 << 20, &factor, err)) ||
        (rc = method_option_bool(mc, "decompose_both", &both, err)) ||
        (rc = method_option_float(mc, "rank_dropout", 0, 1, &rd, err)) ||
        (rc = method_option_float(mc, "module_dropout", 0, 1, &md, err)) ||
        (rc = method_option_bool(mc, "rank_dropout_scale", &rds, err)))
        return rc;
    const char *iw = method_option_get(mc, "init_weights", buf, sizeof buf);
    if (iw && parse_init(iw, &k->init))
        return peft_fail(err, PEFT_ERR_INVALID, "lokr: init_weights must be true, false or lycoris, got \"%s\"", iw);
    if (factor != floor(factor) || factor == 0)
        return peft_fail(err, PEFT_ERR_INVALID, "lokr: decompose_factor must be -1 (balanced) or an integer in "
                                                "1..%d, got %g", 1 << 20, factor);
    if (!(rd < 1.0) || !(md < 1.0))
        return peft_fail(err, PEFT_ERR_INVALID, "lokr: rank_dropout and module_dropout must be in [0, 1), got %g and %g",
                         rd, md);
    k->alpha = (float)alpha;
    k->factor = (int)factor;
    k->decompose_both = both;
    k->rank_dropout = (float)rd;
    k->module_dropout = (float)md;
    k->rd_scale = rds;
    return 0;
}

/* the CLI's usage errors, before anything is loaded */
static int lokr_check(const method_config *mc, peft_err *err) {
    lokr k;
    memset(&k, 0, sizeof k);
    return read_options(mc, &k, err);
}

static int lokr_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    lokr *k = peft_calloc(1, sizeof *k, err);
    if (!k) return PEFT_ERR_NOMEM;
    a->priv = k;
    if (m->cfg.desc->hf_conv1d)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "lokr: %s (%s) stores its linears as Conv1D layers: HF PEFT "
                                                    "refuses LoKr on Conv1D, so peft.c does too (use lora or vera)",
                         m->path, m->cfg.arch_name);
    /* r 0 / alpha 0: not given, HF PEFT's defaults (8, 8) */
    k->r = mc->r > 0 ? mc->r : 8;
    int rc;
    if ((rc = read_options(mc, k, err))) return rc;
    if (k->r < 1 || k->r > 65536) return peft_fail(err, PEFT_ERR_INVALID, "lokr: r must be in 1..65536, got %d", k->r);
    k->scale = k->alpha / (float)k->r;
    const bool both = k->decompose_both;

    const int ns = m->cfg.n_layer * ROLE_N_LINEAR;
    bool *slots = peft_calloc((size_t)ns + 1, sizeof *slots, err);
    k->mod_of = peft_malloc(((size_t)ns + 1) * sizeof *k->mod_of, err);
    if (!slots || !k->mod_of) { free(slots); return PEFT_ERR_NOMEM; }
    if ((rc = method_target_slots(m, mc, "lokr", slots, err))) { free(slots); return rc; }
    int n = 0;
    for (int s = 0; s < ns; s++) k->mod_of[s] = slots[s] ? n++ : -1;
    free(slots);
    k->n_mods = n;
    k->mods = peft_calloc((size_t)n, sizeof *k->mods, err);
    if (!k->mods) return PEFT_ERR_NOMEM;
    const int R = k->r;
    for (int s = 0; s < ns; s++) {
        if (k->mod_of[s] < 0) continue;
        lokr_mod *M = &k->mods[k->mod_of[s]];
        M->layer = s / ROLE_N_LINEAR;
        M->role = s % ROLE_N_LINEAR;
        const kern_weight *w = &m->layers[M->layer].lin[M->role].w;
        M->in = (int)w->cols;
        M->out = (int)w->rows;
        lokr_factorization(M->in, k->factor, &M->c, &M->d);
        lokr_factorization(M->out, k->factor, &M->a, &M->b);
        M->lr1 = both && R < PEFT_MAX(M->a, M->c) / 2.0;
        M->lr2 = R < PEFT_MAX(M->b, M->d) / 2.0;
        char path[200], key[256];
        if (model_linear_hf_path(m, M->layer, (model_linear_role)M->role, path, sizeof path))
            return peft_fail(err, PEFT_ERR_INVALID, "lokr: linear %d of layer %d of %s has no HF name", M->role, M->layer,
                             m->path);
        /* HF PEFT's parameter order: w1 (or w1_a, w1_b), then w2 (or w2_a, w2_b) */
        const struct { const char *suffix; int64_t r, c; bool on; } t[] = {
            {"lokr_w1", M->a, M->c, !M->lr1},  {"lokr_w1_a", M->a, R, M->lr1}, {"lokr_w1_b", R, M->c, M->lr1},
            {"lokr_w2", M->b, M->d, !M->lr2},  {"lokr_w2_a", M->b, R, M->lr2}, {"lokr_w2_b", R, M->d, M->lr2},
        };
        M->idx = -1;
        for (size_t i = 0; i < sizeof t / sizeof *t; i++) {
            if (!t[i].on) continue;
            snprintf(key, sizeof key, "base_model.model.%s.%s", path, t[i].suffix);
            const int id = adapter_add_tensor(a, key, 2, t[i].r, t[i].c, true, err);
            if (id < 0) return PEFT_ERR_NOMEM;
            if (M->idx < 0) M->idx = id;
        }
    }
    return 0;
}

static int lokr_wire(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    lokr *k = K(a);
    for (int i = 0; i < k->n_mods; i++) {
        lokr_mod *M = &k->mods[i];
        const adapter_tensor *t = &a->tensors[M->idx];
        if (M->lr1) {
            M->w1a = t[0].p, M->g1a = t[0].g;
            M->w1b = t[1].p, M->g1b = t[1].g;
            t += 2;
        } else {
            M->w1 = t[0].p, M->g1 = t[0].g;
            t += 1;
        }
        if (M->lr2) {
            M->w2a = t[0].p, M->g2a = t[0].g;
            M->w2b = t[1].p, M->g2b = t[1].g;
        } else {
            M->w2 = t[0].p, M->g2 = t[0].g;
        }
    }
    return 0;
}

/* kaiming-uniform (a = √5) on a (rows, cols) tensor, or zeros */
static void fill(float *w, int64_t rows, int64_t cols, bool zero, peft_rng *rng) {
    if (zero) memset(w, 0, (size_t)(rows * cols) * sizeof *w);
    else adapter_kaiming_uniform(w, rows * cols, (int)cols, rng);
}

static int lokr_init(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err) {
    (void)m;
    (void)err;
    lokr *k = K(a);
    const bool z1 = k->init == INIT_TRUE, z2 = k->init == INIT_LYCORIS;
    for (int i = 0; i < k->n_mods; i++) {
        lokr_mod *M = &k->mods[i];
        if (M->lr1) {
            fill(M->w1a, M->a, k->r, z1, rng);
            fill(M->w1b, k->r, M->c, false, rng);
        } else fill(M->w1, M->a, M->c, z1, rng);
        if (M->lr2) {
            fill(M->w2a, M->b, k->r, false, rng);
            fill(M->w2b, k->r, M->d, z2, rng);
        } else fill(M->w2, M->b, M->d, z2, rng);
    }
    return 0;
}

static int lokr_config_write(const adapter *a, const peft_model *m, cJSON *o) {
    const lokr *k = K(a);
    uint32_t t = 0;
    for (int i = 0; i < k->n_mods; i++) t |= 1u << k->mods[i].role;
    bool ok = cJSON_AddNumberToObject(o, "r", k->r) && cJSON_AddNumberToObject(o, "alpha", k->alpha) &&
              cJSON_AddNumberToObject(o, "rank_dropout", k->rank_dropout) &&
              cJSON_AddNumberToObject(o, "module_dropout", k->module_dropout) &&
              cJSON_AddBoolToObject(o, "rank_dropout_scale", k->rd_scale) &&
              cJSON_AddBoolToObject(o, "decompose_both", k->decompose_both) &&
              cJSON_AddNumberToObject(o, "decompose_factor", k->factor) &&
              cJSON_AddBoolToObject(o, "use_effective_conv2d", false) && cJSON_AddNullToObject(o, "exclude_modules") &&
              cJSON_AddNullToObject(o, "layers_pattern") && cJSON_AddObjectToObject(o, "rank_pattern") &&
              cJSON_AddObjectToObject(o, "alpha_pattern");
    if (ok) {
        if (k->init == INIT_LYCORIS) ok = cJSON_AddStringToObject(o, "init_weights", "lycoris") != NULL;
        else ok = cJSON_AddBoolToObject(o, "init_weights", k->init == INIT_TRUE) != NULL;
    }
    return ok ? method_write_targets(m, t, o) : PEFT_ERR_NOMEM;
}

/* a key that must be absent, null or an empty object / list: what peft.c
 * does not implement */
static int need_empty(const cJSON *o, const char *key, const char *path, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v) || ((cJSON_IsObject(v) || cJSON_IsArray(v)) && !v->child)) return 0;
    return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: \"%s\" is set: per-module patterns and exclusions are not "
                                                "supported for LoKr", path, key);
}

static int lokr_config_read(const cJSON *o, const char *path, const peft_model *m, method_config *mc, peft_err *err) {
    double r, alpha, rd, md, factor;
    bool both, rds, conv;
    int rc;
    if (m->cfg.desc->hf_conv1d)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: a LoKr adapter on %s, whose linears are Conv1D layers, "
                                                    "which HF PEFT's LoKr refuses", path, m->path);
    if ((rc = method_read_number(o, "r", 8, 1, 65536, &r, path, err)) ||
        (rc = method_read_number(o, "alpha", 8, 0, 1e6, &alpha, path, err)) ||
        (rc = method_read_number(o, "rank_dropout", 0, 0, 0.999999, &rd, path, err)) ||
        (rc = method_read_number(o, "module_dropout", 0, 0, 0.999999, &md, path, err)) ||
        (rc = method_read_number(o, "decompose_factor", -1, -1, 1 << 20, &factor, path, err)) ||
        (rc = method_read_bool(o, "decompose_both", false, &both, path, err)) ||
        (rc = method_read_bool(o, "rank_dropout_scale", false, &rds, path, err)) ||
        (rc = method_read_bool(o, "use_effective_conv2d", false, &conv, path, err)) ||
        (rc = need_empty(o, "rank_pattern", path, err)) || (rc = need_empty(o, "alpha_pattern", path, err)) ||
        (rc = need_empty(o, "exclude_modules", path, err)))
        return rc;
    if (r != floor(r) || factor != floor(factor) || factor == 0)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"r\" must be a positive integer and \"decompose_factor\" -1 or a "
                                               "positive integer", path);
    const char *init = "true";
    const cJSON *iw = cJSON_GetObjectItemCaseSensitive(o, "init_weights");
    if (cJSON_IsBool(iw)) init = cJSON_IsTrue(iw) ? "true" : "false";
    else if (cJSON_IsString(iw) && !strcmp(iw->valuestring, "lycoris")) init = "lycoris";
    else if (iw && !cJSON_IsNull(iw))
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"init_weights\" must be true, false or \"lycoris\"", path);
    mc->r = (int)r;
    mc->alpha = (float)alpha;
    snprintf(mc->options, sizeof mc->options,
             "alpha=%.9g;decompose_factor=%d;decompose_both=%s;rank_dropout=%.9g;module_dropout=%.9g;"
             "rank_dropout_scale=%s;init_weights=%s",
             alpha, (int)factor, both ? "true" : "false", rd, md, rds ? "true" : "false", init);
    return adapter_json_targets(m, cJSON_GetObjectItemCaseSensitive(o, "target_modules"), &mc->targets, path, err);
}

/* ---- the hook ------------------------------------------------------------------------ */

static hook_kind lokr_kind(const adapter *a, int l, model_linear_role r) {
    return K(a)->mod_of[l * ROLE_N_LINEAR + r] >= 0 ? HOOK_ADD : HOOK_NONE;
}

/* Nothing is kept: the backward recomputes U = W1·X (N·a·d floats, as much
 * as a row of the input per token and module) instead of holding it for
 * every module through the whole forward. */
static size_t lokr_act_bytes(const adapter *a, int l, model_linear_role r, int N) {
    (void)a, (void)l, (void)r, (void)N;
    return 0;
}

/* scratch of one call, the backward's (the larger):
 *   W1, W2 (formed), dW1, dW2 (a·c + b·d each), the row mask (out),
 *   G masked or compacted (N, out), H and U (N·a, d) each, the dW1 partial
 *   sums (blocks of ROW_BLK rows, a·c each) */
static size_t mod_scratch(const lokr_mod *M, int N) {
    const size_t ac = (size_t)M->a * M->c, bd = (size_t)M->b * M->d, nb = ((size_t)N + ROW_BLK - 1) / ROW_BLK;
    return 2 * (ac + bd) + (size_t)M->out + (size_t)N * M->out + 2 * (size_t)N * M->a * M->d + nb * ac;
}

static size_t lokr_scratch(const adapter *a, const peft_model *m, int N) {
    (void)m;
    const lokr *k = K(a);
    size_t s = 0;
    for (int i = 0; i < k->n_mods; i++) s = PEFT_MAX(s, mod_scratch(&k->mods[i], N));
    return s;
}

/* C (m, n) = A (m, r) · B (r, n) */
static void product(const float *A, const float *B, int m, int r, int n, float *C) {
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, r, 1.0f, A, r, B, n, 0.0f, C, n);
}

typedef struct {
    const float *W1, *W2;   /* (a, c), (b, d) */
    float *dW1, *dW2;       /* (a, c), (b, d) */
    float *keep;            /* (out): the row mask with its scale, or NULL */
    float *G, *H, *U, *part;
} lokr_ws;

/* The call's view of the scratch, W1 and W2 formed where they are products,
 * and the call's dropout draw: false when module dropout skips the call. */
static bool lokr_begin(const lokr *k, const lokr_mod *M, int mi, const lin_call *c, lokr_ws *w) {
    const size_t ac = (size_t)M->a * M->c, bd = (size_t)M->b * M->d, N = (size_t)c->N;
    float *p = c->scr;
    float *W1 = p, *W2 = W1 + ac;
    w->dW1 = W2 + bd;
    w->dW2 = w->dW1 + ac;
    w->keep = w->dW2 + bd;
    w->G = w->keep + M->out;
    w->H = w->G + N * M->out;
    w->U = w->H + N * M->a * M->d;
    w->part = w->U + N * M->a * M->d;
    if (M->lr1) product(M->w1a, M->w1b, M->a, k->r, M->c, W1);
    if (M->lr2) product(M->w2a, M->w2b, M->b, k->r, M->d, W2);
    w->W1 = M->lr1 ? W1 : M->w1;
    w->W2 = M->lr2 ? W2 : M->w2;
    const bool drop = c->train && (k->rank_dropout > 0 || k->module_dropout > 0);
    if (!drop) {
        w->keep = NULL;
        return true;
    }
    peft_rng rng;
    peft_rng_seed(&rng, c->seed * 1000003ULL + 7919ULL * (uint64_t)mi + 1);
    /* HF PEFT: the term is added when rand() > module_dropout */
    if (k->module_dropout > 0 && peft_rng_uniform(&rng) < k->module_dropout) return false;
    if (!(k->rank_dropout > 0)) {
        w->keep = NULL;
        return true;
    }
    int kept = 0;
    for (int o = 0; o < M->out; o++) {
        w->keep[o] = peft_rng_uniform(&rng) >= k->rank_dropout ? 1.0f : 0.0f;
        kept += w->keep[o] != 0.0f;
    }
    /* divided by the mask's mean (an all-zero mask stays zero) */
    if (k->rd_scale && kept)
        for (int o = 0; o < M->out; o++) w->keep[o] *= (float)M->out / (float)kept;
    return true;
}

/* U (N·a, d): U_n = W1 · X_n for every row n, X_n = x_n viewed (c, d) */
static void w1_times_x(const lokr_mod *M, const float *W1, const float *x, int N, float *U, int nt) {
    const int a = M->a, c = M->c, d = M->d, in = M->in;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        const float *xn = x + (size_t)n * in;
        for (int i1 = 0; i1 < a; i1++) {
            float *u = U + ((size_t)n * a + i1) * d;
            memset(u, 0, (size_t)d * sizeof *u);
            for (int j1 = 0; j1 < c; j1++) {
                const float wv = W1[(size_t)i1 * c + j1];
                if (wv == 0.0f) continue;
                const float *xr = xn + (size_t)j1 * d;
                for (int j2 = 0; j2 < d; j2++) u[j2] += wv * xr[j2];
            }
        }
    }
}

/* y_n += s · W1 · X_n · W2ᵀ, for all rows at once:
 *   U (N·a, d) = W1·X_n per row      (a·c·d per row)
 *   Y (N·a, b) = s · U · W2ᵀ         one GEMM over N·a rows, straight into y
 *                                    when its rows are contiguous and unmasked */
static int lokr_fwd(const adapter *a, const lin_call *c) {
    const lokr *k = K(a);
    const int mi = k->mod_of[c->l * ROLE_N_LINEAR + c->r], N = c->N;
    const lokr_mod *M = &k->mods[mi];
    lokr_ws w;
    if (!lokr_begin(k, M, mi, c, &w)) return 0;
    w1_times_x(M, w.W1, c->x, N, w.U, c->nt);
    const int out = M->out;
    if (c->ldy == out && !w.keep) {
        kern_gemm_rows(false, true, N * M->a, M->b, M->d, k->scale, w.U, M->d, w.W2, M->d, 1.0f, c->y, M->b, c->nt);
        return 0;
    }
    float *Y = w.G;
    kern_gemm_rows(false, true, N * M->a, M->b, M->d, k->scale, w.U, M->d, w.W2, M->d, 0.0f, Y, M->b, c->nt);
    for (int n = 0; n < N; n++) {
        float *yr = c->y + (size_t)n * c->ldy;
        const float *sr = Y + (size_t)n * out;
        if (w.keep)
            for (int o = 0; o < out; o++) yr[o] += sr[o] * w.keep[o];
        else
            for (int o = 0; o < out; o++) yr[o] += sr[o];
    }
    return 0;
}

/* gW += dW, or through a low-rank product W = A (m, r) · B (r, n):
 * gA += dW·Bᵀ, gB += Aᵀ·dW */
static void grad_into(const float *dW, int m, int n, int r, float *g, const float *A, const float *B, float *gA,
                      float *gB) {
    if (g) {
        for (size_t i = 0; i < (size_t)m * n; i++) g[i] += dW[i];
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m, r, n, 1.0f, dW, n, B, n, 1.0f, gA, r);
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, r, n, m, 1.0f, A, r, dW, n, 1.0f, gB, n);
}

/* G_n = dy_n viewed (a, b) (times the row mask):
 *   H (N·a, d)  = G · W2                   one GEMM
 *   U (N·a, d)  = W1 · X_n per row         recomputed
 *   dW2 (b, d)  = s · Σ_n G_nᵀ · U_n       one GEMM over the N·a rows
 *   dW1 (a, c)  = s · Σ_n H_n · X_nᵀ       per row, summed in fixed blocks
 *   dx_n       += s · W1ᵀ · H_n            (c, d) per row */
static int lokr_bwd(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx) {
    const lokr *k = K(a);
    const int mi = k->mod_of[c->l * ROLE_N_LINEAR + c->r], N = c->N;
    const lokr_mod *M = &k->mods[mi];
    lokr_ws w;
    if (!lokr_begin(k, M, mi, c, &w)) return 0;
    const int A_ = M->a, B_ = M->b, C_ = M->c, D_ = M->d, in = M->in, out = M->out, nt = c->nt;
    const float s = k->scale;
    const float *G = dy;
    if (lddy != out || w.keep) {
        for (int n = 0; n < N; n++) {
            const float *dr = dy + (size_t)n * lddy;
            float *gr = w.G + (size_t)n * out;
            if (w.keep)
                for (int o = 0; o < out; o++) gr[o] = dr[o] * w.keep[o];
            else
                memcpy(gr, dr, (size_t)out * sizeof *gr);
        }
        G = w.G;
    }
    kern_gemm_rows(false, false, N * A_, D_, B_, 1.0f, G, B_, w.W2, D_, 0.0f, w.H, D_, nt);
    w1_times_x(M, w.W1, c->x, N, w.U, nt);
    kern_gemm_rows(true, false, B_, D_, N * A_, s, G, B_, w.U, D_, 0.0f, w.dW2, D_, nt);
    grad_into(w.dW2, B_, D_, k->r, M->g2, M->w2a, M->w2b, M->g2a, M->g2b);

    const int nb = (N + ROW_BLK - 1) / ROW_BLK;
    const size_t ac = (size_t)A_ * C_;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bi = 0; bi < nb; bi++) {
        float *P = w.part + (size_t)bi * ac;
        memset(P, 0, ac * sizeof *P);
        const int n1 = PEFT_MIN(N, (bi + 1) * ROW_BLK);
        for (int n = bi * ROW_BLK; n < n1; n++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, A_, C_, D_, 1.0f, w.H + (size_t)n * A_ * D_, D_,
                        c->x + (size_t)n * in, D_, 1.0f, P, C_);
    }
    memset(w.dW1, 0, ac * sizeof *w.dW1);
    for (int bi = 0; bi < nb; bi++)
        for (size_t i = 0; i < ac; i++) w.dW1[i] += w.part[(size_t)bi * ac + i];
    for (size_t i = 0; i < ac; i++) w.dW1[i] *= s;
    grad_into(w.dW1, A_, C_, k->r, M->g1, M->w1a, M->w1b, M->g1a, M->g1b);

    if (!dx) return 0;
    const float *W1 = w.W1, *H = w.H;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int n = 0; n < N; n++) {
        float *dxn = dx + (size_t)n * in;
        const float *hn = H + (size_t)n * A_ * D_;
        for (int j1 = 0; j1 < C_; j1++) {
            float *dr = dxn + (size_t)j1 * D_;
            for (int i1 = 0; i1 < A_; i1++) {
                const float wv = s * W1[(size_t)i1 * C_ + j1];
                if (wv == 0.0f) continue;
                const float *hr = hn + (size_t)i1 * D_;
                for (int j2 = 0; j2 < D_; j2++) dr[j2] += wv * hr[j2];
            }
        }
    }
    return 0;
}

static int lokr_lowest(const adapter *a, const peft_model *m) {
    (void)m;
    const lokr *k = K(a);
    int lo = a->n_layer;
    for (int i = 0; i < k->n_mods; i++) lo = PEFT_MIN(lo, k->mods[i].layer);
    return lo;
}

/* ---- merge: W' = W + s · kron(W1, W2) --------------------------------------------------- */

static bool lokr_touches(const adapter *a, int l, model_linear_role r) { return lokr_kind(a, l, r) == HOOK_ADD; }

/* W1[i, j] (or W2's), from the tensor or its low-rank product */
static float w1_at(const lokr *k, const lokr_mod *M, int i, int j) {
    if (!M->lr1) return M->w1[(size_t)i * M->c + j];
    float acc = 0;
    for (int q = 0; q < k->r; q++) acc += M->w1a[(size_t)i * k->r + q] * M->w1b[(size_t)q * M->c + j];
    return acc;
}

static float w2_at(const lokr *k, const lokr_mod *M, int i, int j) {
    if (!M->lr2) return M->w2[(size_t)i * M->d + j];
    float acc = 0;
    for (int q = 0; q < k->r; q++) acc += M->w2a[(size_t)i * k->r + q] * M->w2b[(size_t)q * M->d + j];
    return acc;
}

static void lokr_merge_row(const adapter *a, int l, model_linear_role r, float *row, int64_t q, bool transposed,
                           int64_t n_cols) {
    const lokr *k = K(a);
    const lokr_mod *M = &k->mods[k->mod_of[l * ROLE_N_LINEAR + r]];
    if (!transposed) {
        /* output row q = (i1, i2): ΔW[q, j1·d + j2] = s·W1[i1, j1]·W2[i2, j2] */
        const int i1 = (int)(q / M->b), i2 = (int)(q % M->b);
        for (int j1 = 0; j1 < M->c; j1++) {
            const float w1 = k->scale * w1_at(k, M, i1, j1);
            if (w1 == 0.0f) continue;
            for (int j2 = 0; j2 < M->d && (int64_t)j1 * M->d + j2 < n_cols; j2++)
                row[(size_t)j1 * M->d + j2] += w1 * w2_at(k, M, i2, j2);
        }
        return;
    }
    /* input column q = (j1, j2) of every output o = (i1, i2) */
    const int j1 = (int)(q / M->d), j2 = (int)(q % M->d);
    for (int64_t o = 0; o < n_cols; o++)
        row[o] += k->scale * w1_at(k, M, (int)(o / M->b), j1) * w2_at(k, M, (int)(o % M->b), j2);
}

static void lokr_describe(const adapter *a, char *buf, size_t cap) {
    const lokr *k = K(a);
    int low1 = 0, low2 = 0;
    for (int i = 0; i < k->n_mods; i++) {
        low1 += k->mods[i].lr1;
        low2 += k->mods[i].lr2;
    }
    const lokr_mod *M = k->n_mods ? &k->mods[0] : NULL;
    snprintf(buf, cap, "r=%d alpha=%g (scale %g) on %d modules, W1 low-rank on %d, W2 on %d%s%s; first %dx%d -> kron(%dx%d, %dx%d)",
             k->r, (double)k->alpha, (double)k->scale, k->n_mods, low1, low2, k->rank_dropout > 0 ? ", rank dropout" : "",
             k->module_dropout > 0 ? ", module dropout" : "", M ? M->out : 0, M ? M->in : 0, M ? M->a : 0,
             M ? M->c : 0, M ? M->b : 0, M ? M->d : 0);
}

static const method_option lokr_options[] = {
    {"r", "N", "rank (default 8)"},
    {"alpha", "A", "alpha, the scale is alpha/r (default 8)"},
    {"target", "LIST", METHOD_HELP_TARGET},
    {"layers", "LIST", METHOD_HELP_LAYERS},
    {"decompose-both", NULL, "W1 a low-rank product too (when r < max(a, c) / 2)"},
    {"decompose-factor", "F", "the Kronecker split: (F, dim / F) when F divides dim, -1 balanced (-1)"},
    {"rank-dropout", "P", "training: drop output rows of ΔW with probability P per call (0)"},
    {"module-dropout", "P", "training: skip the whole term with probability P per call (0)"},
    {"rank-dropout-scale", NULL, "divide the rank-dropout mask by its mean"},
    {"init-weights", "true|false|lycoris", "fresh init: W1 = 0 (true), W2 = 0 (lycoris), all random (false)"},
    {NULL, NULL, NULL},
};

const method_ops method_lokr = {
    .name = "lokr",
    .peft_type = "LOKR",
    .summary = "LoKr: ΔW = (alpha/r)·kron(W1, W2), each factor full or a rank-r product",
    .options = lokr_options,
    .check = lokr_check,
    .create = lokr_create,
    .wire = lokr_wire,
    .init = lokr_init,
    .free_priv = lokr_free,
    .config_write = lokr_config_write,
    .config_read = lokr_config_read,
    .lin_kind = lokr_kind,
    .lin_act_bytes = lokr_act_bytes,
    .scratch_floats = lokr_scratch,
    .lin_fwd = lokr_fwd,
    .lin_bwd = lokr_bwd,
    .lowest_layer = lokr_lowest,
    .merge_touches = lokr_touches,
    .merge_row = lokr_merge_row,
    .describe = lokr_describe,
};
