/* vera.c — VeRA (Kopiczko et al., 2024; HF PEFT peft_type VERA): one pair of
 * frozen random matrices shared by every adapted linear, and per linear two
 * trained vectors.
 *
 *   A (r, in_max), B (out_max, r)   frozen, shared; a linear uses
 *                                   A[:, :in] and B[:out, :]
 *   λd (r), λb (out)                trained, per linear
 *   y = x·Wᵀ + b + λb ⊙ ((λd ⊙ (drop(x)·Aᵀ))·Bᵀ)
 *
 * A and B are kaiming-uniform (gain √2, fan_in = columns) draws of the
 * Mersenne Twister seeded with projection_prng_key, made exactly as torch's
 * CPU generator makes them (torch.Generator().manual_seed(key), then
 * uniform_ on A, then on B), so an adapter saved without them
 * (save_projection = false) loads with HF's matrices, and a fresh one has
 * the matrices HF would draw for the same key. λb = 0 (the adapter starts as
 * the identity) and λd = d_initial.
 * Files: base_model.vera_A / base_model.vera_B, and per linear
 * base_model.model.<module>.vera_lambda_b / vera_lambda_d. */
#include "peft/lora.h"
#include "peft/method.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int r, in_max, out_max;
    float dropout, d_initial;
    int64_t prng_key;
    bool save_projection;
    int n_mods;
    int *mod_of;              /* per slot: module index, or -1 */
    int *idx;                 /* per module: registry index of lambda_b (lambda_d follows) */
    int *layer, *role;        /* per module */
    int idx_a;                /* registry index of vera_A (vera_B follows) */
    const float *A, *B;
    float **lb, **ld, **glb, **gld;   /* per module */
} vera;

#define V(a) ((vera *)(a)->priv)

static void vera_free(adapter *a) {
    vera *v = V(a);
    if (!v) return;
    free(v->mod_of);
    free(v->idx);
    free(v->layer);
    free(v->role);
    free(v->lb);
    free(v->ld);
    free(v->glb);
    free(v->gld);
    free(v);
    a->priv = NULL;
}

static int vera_check(const method_config *mc, peft_err *err) {
    double d0, key;
    bool save;
    int rc;
    if ((rc = method_option_float(mc, "d_initial", -1e6, 1e6, &d0, err)) ||
        (rc = method_option_float(mc, "projection_prng_key", 0, 9007199254740991.0, &key, err)) ||
        (rc = method_option_bool(mc, "save_projection", &save, err)))
        return rc;
    return 0;
}

static int vera_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    vera *v = peft_calloc(1, sizeof *v, err);
    if (!v) return PEFT_ERR_NOMEM;
    a->priv = v;
    v->r = mc->r > 0 ? mc->r : 256;
    v->dropout = mc->dropout;
    double d0 = 0.1, key = 0;
    bool save = true;
    int rc;
    if ((rc = method_option_float(mc, "d_initial", -1e6, 1e6, &d0, err)) ||
        (rc = method_option_float(mc, "projection_prng_key", 0, 9007199254740991.0, &key, err)) ||
        (rc = method_option_bool(mc, "save_projection", &save, err)))
        return rc;
    v->d_initial = (float)d0;
    v->prng_key = (int64_t)key;
    v->save_projection = save;
    if (v->r < 1 || v->r > 65536) return peft_fail(err, PEFT_ERR_INVALID, "vera: r must be in 1..65536, got %d", v->r);
    if (!(v->dropout >= 0.0f && v->dropout < 1.0f))
        return peft_fail(err, PEFT_ERR_INVALID, "vera: dropout must be in [0, 1), got %g", (double)v->dropout);
    const int ns = m->cfg.n_layer * ROLE_N_LINEAR;
    bool *slots = peft_calloc((size_t)ns + 1, sizeof *slots, err);
    v->mod_of = peft_malloc(((size_t)ns + 1) * sizeof *v->mod_of, err);
    if (!slots || !v->mod_of) { free(slots); return PEFT_ERR_NOMEM; }
    if ((rc = method_target_slots(m, mc, "vera", slots, err))) { free(slots); return rc; }
    int n = 0;
    for (int s = 0; s < ns; s++) {
        v->mod_of[s] = slots[s] ? n++ : -1;
        if (!slots[s]) continue;
        const kern_weight *w = &m->layers[s / ROLE_N_LINEAR].lin[s % ROLE_N_LINEAR].w;
        v->in_max = PEFT_MAX(v->in_max, (int)w->cols);
        v->out_max = PEFT_MAX(v->out_max, (int)w->rows);
    }
    v->n_mods = n;
    v->idx = peft_calloc((size_t)n, sizeof *v->idx, err);
    v->layer = peft_calloc((size_t)n, sizeof *v->layer, err);
    v->role = peft_calloc((size_t)n, sizeof *v->role, err);
    v->lb = peft_calloc((size_t)n, sizeof *v->lb, err);
    v->ld = peft_calloc((size_t)n, sizeof *v->ld, err);
    v->glb = peft_calloc((size_t)n, sizeof *v->glb, err);
    v->gld = peft_calloc((size_t)n, sizeof *v->gld, err);
    if (!v->idx || !v->layer || !v->role || !v->lb || !v->ld || !v->glb || !v->gld) { free(slots); return PEFT_ERR_NOMEM; }
    /* the shared pair first, then per module lambda_b, lambda_d */
    v->idx_a = adapter_add_buffer(a, "base_model.vera_A", 2, v->r, v->in_max, save, err);
    if (v->idx_a < 0 || adapter_add_buffer(a, "base_model.vera_B", 2, v->out_max, v->r, save, err) < 0) {
        free(slots);
        return PEFT_ERR_NOMEM;
    }
    for (int s = 0; s < ns && !rc; s++) {
        const int k = v->mod_of[s];
        if (k < 0) continue;
        v->layer[k] = s / ROLE_N_LINEAR;
        v->role[k] = s % ROLE_N_LINEAR;
        char path[200], key[256];
        if (model_linear_hf_path(m, v->layer[k], (model_linear_role)v->role[k], path, sizeof path)) { rc = PEFT_ERR_INVALID; break; }
        const int64_t out = m->layers[v->layer[k]].lin[v->role[k]].w.rows;
        snprintf(key, sizeof key, "base_model.model.%s.vera_lambda_b", path);
        v->idx[k] = adapter_add_tensor(a, key, 1, out, 1, true, err);
        snprintf(key, sizeof key, "base_model.model.%s.vera_lambda_d", path);
        if (v->idx[k] < 0 || adapter_add_tensor(a, key, 1, v->r, 1, true, err) < 0) rc = PEFT_ERR_NOMEM;
    }
    free(slots);
    return rc;
}

/* ---- torch's CPU generator: MT19937 (Matsumoto and Nishimura, 1998) ---------- */

typedef struct {
    uint32_t s[624];
    int i;
} mt19937;

static void mt_seed(mt19937 *g, uint32_t seed) {
    g->s[0] = seed;
    for (int k = 1; k < 624; k++) g->s[k] = 1812433253u * (g->s[k - 1] ^ (g->s[k - 1] >> 30)) + (uint32_t)k;
    g->i = 624;
}

static uint32_t mt_next(mt19937 *g) {
    if (g->i >= 624) {
        for (int k = 0; k < 624; k++) {
            const uint32_t y = (g->s[k] & 0x80000000u) | (g->s[(k + 1) % 624] & 0x7fffffffu);
            g->s[k] = g->s[(k + 397) % 624] ^ (y >> 1) ^ ((y & 1u) ? 0x9908b0dfu : 0u);
        }
        g->i = 0;
    }
    uint32_t y = g->s[g->i++];
    y ^= y >> 11;
    y ^= (y << 7) & 0x9d2c5680u;
    y ^= (y << 15) & 0xefc60000u;
    return y ^ (y >> 18);
}

/* HF's _kaiming_init (gain √2, fan_in = cols) through torch's uniform_:
 * 24 random bits of one draw per value, scaled in double, rounded to f32. */
static void kaiming_torch(float *w, int64_t rows, int64_t cols, mt19937 *g) {
    const float b = (float)(sqrt(3.0) * (sqrt(2.0) / sqrt((double)cols)));
    const double lo = -(double)b, width = (double)(b - (-b));
    for (int64_t i = 0; i < rows * cols; i++)
        w[i] = (float)((double)(mt_next(g) & 0xffffffu) * (1.0 / 16777216.0) * width + lo);
}

static int vera_wire(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    vera *v = V(a);
    v->A = a->tensors[v->idx_a].p;
    v->B = a->tensors[v->idx_a + 1].p;
    /* the projections from the key; a file that holds them overwrites these */
    mt19937 *g = malloc(sizeof *g);
    if (!g) return peft_fail(err, PEFT_ERR_NOMEM, "vera: out of memory");
    mt_seed(g, (uint32_t)(v->prng_key & 0xffffffff));
    kaiming_torch(a->tensors[v->idx_a].p, v->r, v->in_max, g);
    kaiming_torch(a->tensors[v->idx_a + 1].p, v->out_max, v->r, g);
    free(g);
    for (int k = 0; k < v->n_mods; k++) {
        v->lb[k] = a->tensors[v->idx[k]].p;
        v->glb[k] = a->tensors[v->idx[k]].g;
        v->ld[k] = a->tensors[v->idx[k] + 1].p;
        v->gld[k] = a->tensors[v->idx[k] + 1].g;
    }
    return 0;
}

static int vera_init(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err) {
    (void)m;
    (void)err;
    (void)rng;
    vera *v = V(a);
    for (int k = 0; k < v->n_mods; k++) {
        memset(v->lb[k], 0, (size_t)a->tensors[v->idx[k]].n * sizeof(float));
        for (int j = 0; j < v->r; j++) v->ld[k][j] = v->d_initial;
    }
    return 0;
}

static int vera_config_write(const adapter *a, const peft_model *m, cJSON *o) {
    const vera *v = V(a);
    uint32_t t = 0;
    for (int k = 0; k < v->n_mods; k++) t |= 1u << v->role[k];
    bool ok = cJSON_AddNumberToObject(o, "r", v->r) && cJSON_AddNumberToObject(o, "vera_dropout", v->dropout) &&
              cJSON_AddNumberToObject(o, "d_initial", v->d_initial) &&
              cJSON_AddNumberToObject(o, "projection_prng_key", (double)v->prng_key) &&
              cJSON_AddBoolToObject(o, "save_projection", v->save_projection) &&
              cJSON_AddStringToObject(o, "bias", "none") && cJSON_AddBoolToObject(o, "init_weights", true) &&
              cJSON_AddBoolToObject(o, "fan_in_fan_out", m->cfg.desc->hf_conv1d);
    return ok ? method_write_targets(m, t, o) : PEFT_ERR_NOMEM;
}

static int vera_config_read(const cJSON *o, const char *path, const peft_model *m, method_config *mc, peft_err *err) {
    double r, drop, d0, key;
    bool save;
    int rc;
    if ((rc = method_read_number(o, "r", 256, 1, 65536, &r, path, err)) ||
        (rc = method_read_number(o, "vera_dropout", 0, 0, 0.999999, &drop, path, err)) ||
        (rc = method_read_number(o, "d_initial", 0.1, -1e6, 1e6, &d0, path, err)) ||
        (rc = method_read_number(o, "projection_prng_key", 0, 0, 9007199254740991.0, &key, path, err)) ||
        (rc = method_read_bool(o, "save_projection", true, &save, path, err)))
        return rc;
    const cJSON *b = cJSON_GetObjectItemCaseSensitive(o, "bias");
    if (cJSON_IsString(b) && strcmp(b->valuestring, "none"))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: bias \"%s\" is not supported (none)", path, b->valuestring);
    mc->r = (int)r;
    mc->dropout = (float)drop;
    snprintf(mc->options, sizeof mc->options, "d_initial=%.9g;projection_prng_key=%.17g;save_projection=%s", d0, key,
             save ? "true" : "false");
    if ((rc = adapter_json_targets(m, cJSON_GetObjectItemCaseSensitive(o, "target_modules"), &mc->targets, path, err)))
        return rc;
    return 0;
}

/* ---- the hook ------------------------------------------------------------------------ */

static hook_kind vera_kind(const adapter *a, int l, model_linear_role r) {
    return V(a)->mod_of[l * ROLE_N_LINEAR + r] >= 0 ? HOOK_ADD : HOOK_NONE;
}

/* kept: t = drop(x)·Aᵀ (N, r), then the dropout mask (N, in bytes) */
static size_t vera_act_bytes(const adapter *a, int l, model_linear_role r, int N) {
    const vera *v = V(a);
    (void)l;
    (void)r;
    return (size_t)N * v->r * sizeof(float) + (v->dropout > 0 ? (size_t)N * v->in_max : 0);
}

/* scratch: u or du (N, r), v or dv (N, out_max) twice, the dropped input (N, in_max) */
static size_t vera_scratch(const adapter *a, const peft_model *m, int N) {
    (void)m;
    const vera *v = V(a);
    return (size_t)N * (2 * (size_t)v->r + 2 * (size_t)v->out_max + (v->dropout > 0 ? (size_t)v->in_max : 0));
}

/* drop(x): x itself, or with a mask x ⊙ mask / (1 - p) into xd */
static const float *vera_dropped(const vera *v, const lin_call *c, const uint8_t *mask, float *xd) {
    if (!mask) return c->x;
    const float keep = 1.0f / (1.0f - v->dropout);
    for (size_t i = 0; i < (size_t)c->N * c->in; i++) xd[i] = mask[i] ? c->x[i] * keep : 0.0f;
    return xd;
}

static int vera_fwd(const adapter *a, const lin_call *c) {
    const vera *v = V(a);
    const int k = v->mod_of[c->l * ROLE_N_LINEAR + c->r], N = c->N, r = v->r, in = c->in, out = c->out;
    float *t = (float *)c->act, *u = c->scr, *vv = u + (size_t)N * r, *xd = vv + 2 * (size_t)N * v->out_max;
    uint8_t *mask = NULL;
    if (v->dropout > 0 && c->train && c->act) {
        mask = (uint8_t *)(t + (size_t)N * r);
        peft_rng rng;
        peft_rng_seed(&rng, c->seed * 1000003ULL + (uint64_t)k);
        for (size_t i = 0; i < (size_t)N * in; i++) mask[i] = peft_rng_uniform(&rng) >= v->dropout;
    }
    const float *x = vera_dropped(v, c, mask, xd);
    /* t (N, r) = drop(x) (N, in) · A[:, :in]ᵀ */
    kern_gemm_rows(false, true, N, r, in, 1.0f, x, in, v->A, v->in_max, 0.0f, t, r, c->nt);
    /* u = t ⊙ λd;  vv (N, out) = u · B[:out]ᵀ;  y += λb ⊙ vv */
    const float *ld = v->ld[k], *lb = v->lb[k];
    for (int i = 0; i < N; i++)
        for (int j = 0; j < r; j++) u[(size_t)i * r + j] = t[(size_t)i * r + j] * ld[j];
    kern_gemm_rows(false, true, N, out, r, 1.0f, u, r, v->B, r, 0.0f, vv, out, c->nt);
    for (int i = 0; i < N; i++) {
        float *yr = c->y + (size_t)i * c->ldy;
        const float *vr = vv + (size_t)i * out;
        for (int j = 0; j < out; j++) yr[j] += lb[j] * vr[j];
    }
    return 0;
}

static int vera_bwd(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx) {
    const vera *v = V(a);
    const int k = v->mod_of[c->l * ROLE_N_LINEAR + c->r], N = c->N, r = v->r, in = c->in, out = c->out;
    const float *t = (const float *)c->act;
    const uint8_t *mask = v->dropout > 0 && c->train ? (const uint8_t *)(t + (size_t)N * r) : NULL;
    float *u = c->scr, *vv = u + (size_t)N * r, *dv = vv + (size_t)N * v->out_max, *xd = dv + (size_t)N * v->out_max;
    const float *ld = v->ld[k], *lb = v->lb[k];
    float *gld = v->gld[k], *glb = v->glb[k];
    /* vv = (t ⊙ λd)·Bᵀ again; gλb += Σ_i dy ⊙ vv; dv = dy ⊙ λb */
    for (int i = 0; i < N; i++)
        for (int j = 0; j < r; j++) u[(size_t)i * r + j] = t[(size_t)i * r + j] * ld[j];
    kern_gemm_rows(false, true, N, out, r, 1.0f, u, r, v->B, r, 0.0f, vv, out, c->nt);
    for (int i = 0; i < N; i++) {
        const float *dr = dy + (size_t)i * lddy, *vr = vv + (size_t)i * out;
        float *dvr = dv + (size_t)i * out;
        for (int j = 0; j < out; j++) {
            glb[j] += dr[j] * vr[j];
            dvr[j] = dr[j] * lb[j];
        }
    }
    /* du (N, r) = dv · B[:out];  gλd += Σ_i du ⊙ t;  dt = du ⊙ λd (in u) */
    float *du = u;
    kern_gemm_rows(false, false, N, r, out, 1.0f, dv, out, v->B, r, 0.0f, du, r, c->nt);
    for (int i = 0; i < N; i++)
        for (int j = 0; j < r; j++) {
            gld[j] += du[(size_t)i * r + j] * t[(size_t)i * r + j];
            du[(size_t)i * r + j] *= ld[j];
        }
    if (!dx) return 0;
    /* dx += drop'(dt · A[:, :in]) */
    if (!mask) {
        kern_gemm_rows(false, false, N, in, r, 1.0f, du, r, v->A, v->in_max, 1.0f, dx, in, c->nt);
        return 0;
    }
    kern_gemm_rows(false, false, N, in, r, 1.0f, du, r, v->A, v->in_max, 0.0f, xd, in, c->nt);
    const float keep = 1.0f / (1.0f - v->dropout);
    for (size_t i = 0; i < (size_t)N * in; i++)
        if (mask[i]) dx[i] += xd[i] * keep;
    return 0;
}

static int vera_lowest(const adapter *a, const peft_model *m) {
    (void)m;
    const vera *v = V(a);
    int lo = a->n_layer;
    for (int k = 0; k < v->n_mods; k++) lo = PEFT_MIN(lo, v->layer[k]);
    return lo;
}

/* ---- merge: ΔW[o, i] = λb[o] · Σ_k B[o, k] λd[k] A[k, i] ------------------------------------ */

static bool vera_touches(const adapter *a, int l, model_linear_role r) { return vera_kind(a, l, r) == HOOK_ADD; }

static void vera_merge_row(const adapter *a, int l, model_linear_role r, float *row, int64_t q, bool transposed,
                           int64_t n_cols) {
    const vera *v = V(a);
    const int k = v->mod_of[l * ROLE_N_LINEAR + r], R = v->r;
    const float *ld = v->ld[k], *lb = v->lb[k];
    if (!transposed) {
        /* output row q */
        for (int j = 0; j < R; j++) {
            const float cf = lb[q] * v->B[(size_t)q * R + j] * ld[j];
            if (cf == 0.0f) continue;
            const float *Aj = v->A + (size_t)j * v->in_max;
            for (int64_t i = 0; i < n_cols; i++) row[i] += cf * Aj[i];
        }
        return;
    }
    /* input column q of every output o */
    for (int64_t o = 0; o < n_cols; o++) {
        float acc = 0.0f;
        for (int j = 0; j < R; j++) acc += v->B[(size_t)o * R + j] * ld[j] * v->A[(size_t)j * v->in_max + q];
        row[o] += lb[o] * acc;
    }
}

static void vera_describe(const adapter *a, char *buf, size_t cap) {
    const vera *v = V(a);
    snprintf(buf, cap, "r=%d d_initial=%g dropout=%g on %d modules (shared A %d x %d, B %d x %d frozen)", v->r,
             (double)v->d_initial, (double)v->dropout, v->n_mods, v->r, v->in_max, v->out_max, v->r);
}

static const method_option vera_options[] = {
    {"r", "N", "rank (default 256)"},
    {"dropout", "P", METHOD_HELP_DROPOUT},
    {"target", "LIST", METHOD_HELP_TARGET},
    {"layers", "LIST", METHOD_HELP_LAYERS},
    {"d-initial", "D", "initial value of every λd (0.1)"},
    {"projection-prng-key", "N", "seed of the shared random matrices, drawn as torch draws them (0)"},
    {"save-projection", "BOOL", "save the shared matrices in the adapter (true; false: regenerated from the key)"},
    {NULL, NULL, NULL},
};

const method_ops method_vera = {
    .name = "vera",
    .peft_type = "VERA",
    .summary = "VeRA: shared frozen random A, B; trained vectors λd (r), λb (out) per linear",
    .options = vera_options,
    .check = vera_check,
    .create = vera_create,
    .wire = vera_wire,
    .init = vera_init,
    .free_priv = vera_free,
    .config_write = vera_config_write,
    .config_read = vera_config_read,
    .lin_kind = vera_kind,
    .lin_act_bytes = vera_act_bytes,
    .scratch_floats = vera_scratch,
    .lin_fwd = vera_fwd,
    .lin_bwd = vera_bwd,
    .lowest_layer = vera_lowest,
    .merge_touches = vera_touches,
    .merge_row = vera_merge_row,
    .describe = vera_describe,
};
