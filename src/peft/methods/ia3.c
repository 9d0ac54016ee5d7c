/* ia3.c — IA3 (Liu et al., 2022; HF PEFT peft_type IA3): a trained vector
 * per targeted linear that rescales it.
 *
 *   output modules         y = l ⊙ (x·Wᵀ + b)        l (out), saved (out, 1)
 *   feed-forward modules   y = (x ⊙ l)·Wᵀ + b        l (in),  saved (1, in)
 *
 * l starts at 1 (the identity). Defaults as HF PEFT's
 * TRANSFORMERS_MODELS_TO_IA3_TARGET_MODULES_MAPPING: llama-family k_proj,
 * v_proj, down_proj (qwen2: q_proj, v_proj, down_proj), feed-forward
 * down_proj; GPT-2 c_attn, mlp.c_proj, feed-forward mlp.c_proj.
 * Files: base_model.model.<module>.ia3_l. Merging scales W's rows (output)
 * or columns (feed-forward), and an output module's bias. */
#include "peft/lora.h"
#include "peft/method.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    uint32_t targets, ff;     /* role bits */
    int *idx;                 /* per slot: registry index of l, or -1 */
    float **l, **gl;          /* per slot */
    int ns, lowest;
    int max_dim;              /* the largest in or out of a targeted linear */
} ia3;

#define S(a) ((ia3 *)(a)->priv)

static void ia3_free(adapter *a) {
    ia3 *v = S(a);
    if (!v) return;
    free(v->idx);
    free(v->l);
    free(v->gl);
    free(v);
    a->priv = NULL;
}

static void ia3_defaults(const peft_model *m, uint32_t *targets, uint32_t *ff) {
    /* HF peft's per-model-type defaults, kept in the architecture's descriptor */
    *targets = m->cfg.desc->ia3_targets;
    *ff = m->cfg.desc->ia3_ff;
}

static int ia3_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    ia3 *v = peft_calloc(1, sizeof *v, err);
    if (!v) return PEFT_ERR_NOMEM;
    a->priv = v;
    uint32_t dt, dff;
    ia3_defaults(m, &dt, &dff);
    v->targets = mc->targets ? mc->targets : dt;
    v->ff = dff & v->targets;
    char buf[512];
    const char *ffs = method_option_get(mc, "feedforward", buf, sizeof buf);
    int rc;
    if (ffs) {
        v->ff = 0;
        if (*ffs && (rc = lora_parse_targets(m, ffs, &v->ff, err))) return rc;
    }
    if (v->ff & ~v->targets)
        return peft_fail(err, PEFT_ERR_INVALID, "IA3: feed-forward modules must be among the targets");
    if (v->targets >> ROLE_N_LINEAR)
        return peft_fail(err, PEFT_ERR_INVALID, "IA3: target bits 0x%x name no linear", (unsigned)v->targets);
    const uint64_t layers = mc->layers;
    v->ns = m->cfg.n_layer * ROLE_N_LINEAR;
    v->idx = peft_malloc(((size_t)v->ns + 1) * sizeof *v->idx, err);
    v->l = peft_calloc((size_t)v->ns + 1, sizeof *v->l, err);
    v->gl = peft_calloc((size_t)v->ns + 1, sizeof *v->gl, err);
    if (!v->idx || !v->l || !v->gl) return PEFT_ERR_NOMEM;
    int n = 0;
    v->lowest = m->cfg.n_layer;
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++) {
            const int s = l * ROLE_N_LINEAR + r;
            v->idx[s] = -1;
            if (!(v->targets & (1u << r)) || !m->layers[l].lin[r].present || !lora_layer_selected(layers, l)) continue;
            char path[200], key[256];
            model_linear_hf_path(m, l, (model_linear_role)r, path, sizeof path);
            snprintf(key, sizeof key, "base_model.model.%s.ia3_l", path);
            const kern_weight *w = &m->layers[l].lin[r].w;
            /* HF PEFT shapes: (1, in) for feed-forward modules, (out, 1) otherwise */
            const bool ffm = (v->ff >> r) & 1u;
            const int i = ffm ? adapter_add_tensor(a, key, 2, 1, w->cols, true, err)
                              : adapter_add_tensor(a, key, 2, w->rows, 1, true, err);
            if (i < 0) return PEFT_ERR_NOMEM;
            v->idx[s] = i;
            v->lowest = PEFT_MIN(v->lowest, l);
            v->max_dim = PEFT_MAX(v->max_dim, (int)PEFT_MAX(w->rows, w->cols));
            n++;
        }
    if (!n) return model_no_targets(m, "IA3", err);
    return 0;
}

static int ia3_wire(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    ia3 *v = S(a);
    for (int s = 0; s < v->ns; s++)
        if (v->idx[s] >= 0) {
            v->l[s] = a->tensors[v->idx[s]].p;
            v->gl[s] = a->tensors[v->idx[s]].g;
        }
    return 0;
}

static int ia3_init(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err) {
    (void)m;
    (void)rng;
    (void)err;
    const ia3 *v = S(a);
    for (int s = 0; s < v->ns; s++)
        if (v->idx[s] >= 0)
            for (int64_t k = 0; k < a->tensors[v->idx[s]].n; k++) v->l[s][k] = 1.0f;   /* identity */
    return 0;
}

static int ia3_config_write(const adapter *a, const peft_model *m, cJSON *o) {
    const ia3 *v = S(a);
    int rc = method_write_targets(m, v->targets, o);
    if (rc) return rc;
    /* feedforward_modules: the same names as a second list */
    cJSON *tmp = cJSON_CreateObject();
    if (!tmp || method_write_targets(m, v->ff, tmp)) { cJSON_Delete(tmp); return PEFT_ERR_NOMEM; }
    cJSON *ffl = cJSON_DetachItemFromObject(tmp, "target_modules");
    cJSON_Delete(tmp);
    if (!ffl || !cJSON_AddItemToObject(o, "feedforward_modules", ffl)) { cJSON_Delete(ffl); return PEFT_ERR_NOMEM; }
    bool ok = cJSON_AddBoolToObject(o, "fan_in_fan_out", m->cfg.desc->hf_conv1d) &&
              cJSON_AddBoolToObject(o, "init_ia3_weights", true);
    return ok ? 0 : PEFT_ERR_NOMEM;
}

static int ia3_config_read(const cJSON *o, const char *path, const peft_model *m, method_config *mc, peft_err *err) {
    uint32_t t = 0, ff = 0;
    int rc;
    if ((rc = adapter_json_targets(m, cJSON_GetObjectItemCaseSensitive(o, "target_modules"), &t, path, err)) ||
        (rc = adapter_json_targets(m, cJSON_GetObjectItemCaseSensitive(o, "feedforward_modules"), &ff, path, err)))
        return rc;
    if (!t) ia3_defaults(m, &t, &ff);
    if (ff & ~t) return peft_fail(err, PEFT_ERR_FORMAT, "%s: feedforward_modules must be among target_modules", path);
    mc->targets = t;
    /* the feed-forward set as names, through the option the CLI uses */
    const char *names[ROLE_N_LINEAR * 2];
    const int n = lora_target_names(m, ff, names, ROLE_N_LINEAR * 2);
    size_t used = (size_t)snprintf(mc->options, sizeof mc->options, "feedforward=");
    for (int i = 0; i < n && used < sizeof mc->options; i++)
        used += (size_t)snprintf(mc->options + used, sizeof mc->options - used, "%s%s", i ? "," : "", names[i]);
    return 0;
}

/* ---- the hook ------------------------------------------------------------------------ */

static hook_kind ia3_kind(const adapter *a, int l, model_linear_role r) {
    return S(a)->idx[l * ROLE_N_LINEAR + r] >= 0 ? HOOK_REPLACE : HOOK_NONE;
}

static bool is_ff(const adapter *a, model_linear_role r) { return (S(a)->ff >> r) & 1u; }

/* kept: an output module's z = x·Wᵀ + b (N, out); feed-forward: nothing */
static size_t ia3_act_bytes(const adapter *a, int l, model_linear_role r, int N) {
    (void)l;
    return is_ff(a, r) ? 0 : (size_t)N * (size_t)S(a)->max_dim * sizeof(float);
}

/* scratch: the scaled input or gradient (N, max(in, out)) */
static size_t ia3_scratch(const adapter *a, const peft_model *m, int N) {
    (void)m;
    return (size_t)N * (size_t)S(a)->max_dim;
}

static int ia3_fwd(const adapter *a, const lin_call *c) {
    const float *lv = S(a)->l[c->l * ROLE_N_LINEAR + c->r];
    const int N = c->N, in = c->in, out = c->out;
    if (is_ff(a, c->r)) {
        /* xs (N, in) = x ⊙ l;  y = beta·y + xs·Wᵀ + b */
        float *xs = c->scr;
        for (int i = 0; i < N; i++)
            for (int k = 0; k < in; k++) xs[(size_t)i * in + k] = c->x[(size_t)i * in + k] * lv[k];
        return kern_matmul(c->y, c->ldy, xs, N, c->W, c->bias, c->beta, c->mm_scr, c->nt);
    }
    /* z (N, out) = x·Wᵀ + b (kept, or scratch at inference);  y = beta·y + l ⊙ z */
    float *z = c->act ? (float *)c->act : c->scr;
    int rc = kern_matmul(z, out, c->x, N, c->W, c->bias, 0.0f, c->mm_scr, c->nt);
    if (rc) return rc;
    for (int i = 0; i < N; i++) {
        float *yr = c->y + (size_t)i * c->ldy;
        const float *zr = z + (size_t)i * out;
        for (int j = 0; j < out; j++) yr[j] = (c->beta != 0.0f ? c->beta * yr[j] : 0.0f) + lv[j] * zr[j];
    }
    return 0;
}

static int ia3_bwd(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx) {
    const int s = c->l * ROLE_N_LINEAR + c->r, N = c->N, in = c->in, out = c->out;
    const float *lv = S(a)->l[s];
    float *gl = S(a)->gl[s];
    if (is_ff(a, c->r)) {
        /* t (N, in) = dy·W;  gl += Σ_i t ⊙ x;  dx += t ⊙ l */
        float *t = c->scr;
        memset(t, 0, (size_t)N * in * sizeof(float));
        int rc = kern_matmul_dx(t, dy, lddy, N, c->W, c->mm_scr, c->nt);
        if (rc) return rc;
        for (int i = 0; i < N; i++) {
            const float *tr = t + (size_t)i * in, *xr = c->x + (size_t)i * in;
            for (int k = 0; k < in; k++) gl[k] += tr[k] * xr[k];
            if (dx)
                for (int k = 0; k < in; k++) dx[(size_t)i * in + k] += tr[k] * lv[k];
        }
        return 0;
    }
    /* gl += Σ_i dy ⊙ z;  dz = l ⊙ dy;  dx += dz·W */
    const float *z = (const float *)c->act;
    float *dz = c->scr;
    for (int i = 0; i < N; i++) {
        const float *dr = dy + (size_t)i * lddy, *zr = z + (size_t)i * out;
        float *o = dz + (size_t)i * out;
        for (int j = 0; j < out; j++) {
            gl[j] += dr[j] * zr[j];
            o[j] = lv[j] * dr[j];
        }
    }
    return dx ? kern_matmul_dx(dx, dz, out, N, c->W, c->mm_scr, c->nt) : 0;
}

static int ia3_lowest(const adapter *a, const peft_model *m) {
    (void)m;
    return S(a)->lowest;
}

/* ---- merge: l ⊙ W per output row, or W ⊙ l per input column ------------------------- */

static bool ia3_touches(const adapter *a, int l, model_linear_role r) { return ia3_kind(a, l, r) != HOOK_NONE; }

static void ia3_merge_row(const adapter *a, int l, model_linear_role r, float *row, int64_t q, bool transposed,
                          int64_t n_cols) {
    const float *lv = S(a)->l[l * ROLE_N_LINEAR + r];
    if (is_ff(a, r) == transposed) /* one factor for the whole row */
        for (int64_t i = 0; i < n_cols; i++) row[i] *= lv[q];
    else
        for (int64_t i = 0; i < n_cols; i++) row[i] *= lv[i];
}

/* an output module's scale applies after the bias */
static void ia3_merge_bias(const adapter *a, int l, model_linear_role r, float *b, int n) {
    if (is_ff(a, r)) return;
    const float *lv = S(a)->l[l * ROLE_N_LINEAR + r];
    for (int j = 0; j < n; j++) b[j] *= lv[j];
}

static void ia3_describe(const adapter *a, char *buf, size_t cap) {
    const ia3 *v = S(a);
    int n = 0, nf = 0;
    for (int s = 0; s < v->ns; s++)
        if (v->idx[s] >= 0) {
            n++;
            nf += (v->ff >> (s % ROLE_N_LINEAR)) & 1u;
        }
    snprintf(buf, cap, "%d scaled modules (%d feed-forward: input scaled)", n, nf);
}

static const method_option ia3_options[] = {
    {"target", "LIST", METHOD_HELP_TARGET},
    {"layers", "LIST", METHOD_HELP_LAYERS},
    {"feedforward", "MODULES", "modules whose input is scaled (default: the architecture's, down_proj / mlp.c_proj)"},
    {NULL, NULL, NULL},
};

const method_ops method_ia3 = {
    .name = "ia3",
    .peft_type = "IA3",
    .summary = "IA3: a trained vector rescaling each targeted linear's output (or input: feed-forward)",
    .options = ia3_options,
    .create = ia3_create,
    .wire = ia3_wire,
    .init = ia3_init,
    .free_priv = ia3_free,
    .config_write = ia3_config_write,
    .config_read = ia3_config_read,
    .lin_kind = ia3_kind,
    .lin_act_bytes = ia3_act_bytes,
    .scratch_floats = ia3_scratch,
    .lin_fwd = ia3_fwd,
    .lin_bwd = ia3_bwd,
    .lowest_layer = ia3_lowest,
    .merge_touches = ia3_touches,
    .merge_row = ia3_merge_row,
    .merge_bias = ia3_merge_bias,
    .describe = ia3_describe,
};
