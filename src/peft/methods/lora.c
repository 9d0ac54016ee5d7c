/* lora.c (methods) — LoRA and DoRA: their tables, options and hooks. The
 * rest of the LoRA family is in its own files: peft/lora.c (targets,
 * allocation, init), lora_compute.c (the low-rank products), lora_io.c (HF
 * PEFT's LORA format), lora_export.c (llama.cpp's GGUF LoRA),
 * lora_combine.c (add_weighted_adapter). Its state is a lora_state
 * (peft/lora.h) behind adapter.priv, which those files reach by lora_of.
 *
 *   LoRA  y = x·Wᵀ + b + s·(drop(x)·Aᵀ)·Bᵀ                        HOOK_ADD
 *   DoRA  z = x·Wᵀ + s·(x·Aᵀ)·Bᵀ;  y = (m / ‖W + s·B·A‖) ⊙ z + b   HOOK_REPLACE
 *         the row norm a constant of the backward (HF PEFT detaches it)
 * A (r, in), B (out, r), s = α/r (α/√r with rsLoRA), m (out). */
#include "peft/lora.h"
#include "peft/method.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define S(a) ((lora_state *)(a)->priv)

#define METHOD_HELP_TARGET_MODULES                                                                                  \
    "HF target_modules by module name, e.g. model.layers.3.self_attn.q_proj,... or @FILE (its \"target_modules\")"
#define METHOD_HELP_RANK_PATTERN "per-module ranks, HF rank_pattern: NAME=R,... or @FILE (its \"rank_pattern\")"
#define METHOD_HELP_ALPHA_PATTERN "per-module alphas, HF alpha_pattern: NAME=A,... or @FILE (its \"alpha_pattern\")"


lora_state *lora_of(const adapter *a) {
    return a && (a->ops == &method_lora || a->ops == &method_dora) ? (lora_state *)a->priv : NULL;
}

bool adapter_is_plain_lora(const adapter *a) { return a && a->ops == &method_lora; }

static const lora_module *mod_at(const adapter *a, int l, model_linear_role r) {
    return S(a) && S(a)->slot ? S(a)->slot[l * ROLE_N_LINEAR + r] : NULL;
}

static hook_kind lora_kind(const adapter *a, int l, model_linear_role r) {
    const lora_module *md = mod_at(a, l, r);
    return !md ? HOOK_NONE : md->mag ? HOOK_REPLACE : HOOK_ADD;
}

/* kept: xa = drop(x)·Aᵀ (N, r); with dropout its mask (N, in bytes); DoRA:
 * z (N, out), the output before the per-row scale */
static size_t lora_act_bytes(const adapter *a, int l, model_linear_role r, int N) {
    const lora_module *md = mod_at(a, l, r);
    size_t n = (size_t)N * md->r * sizeof(float);
    if (md->mag) n += (size_t)N * md->out * sizeof(float);
    if (S(a)->cfg.dropout > 0) n += (size_t)N * md->in;
    return n;
}

/* scratch: the dropped input (N, in), dxa (N, r), DoRA's dz (N, out) */
static size_t lora_scratch(const adapter *a, const peft_model *m, int N) {
    (void)m;
    size_t in = 0, out = 0, r = 0;
    for (int i = 0; i < S(a)->n_modules; i++) {
        in = PEFT_MAX(in, (size_t)S(a)->mods[i].in);
        out = PEFT_MAX(out, (size_t)S(a)->mods[i].out);
        r = PEFT_MAX(r, (size_t)S(a)->mods[i].r);
    }
    return (size_t)N * (in + out + r);
}

typedef struct {
    float *xa, *z, *xd, *dxa, *dz;
    uint8_t *mask;
} lora_bufs;

static lora_bufs bufs_of(const adapter *a, const lora_module *md, const lin_call *c) {
    lora_bufs b;
    const size_t N = (size_t)c->N;
    size_t in = 0, out = 0;
    for (int i = 0; i < S(a)->n_modules; i++) {
        in = PEFT_MAX(in, (size_t)S(a)->mods[i].in);
        out = PEFT_MAX(out, (size_t)S(a)->mods[i].out);
    }
    b.xa = (float *)c->act;
    b.z = md->mag ? b.xa + N * md->r : NULL;
    b.mask = S(a)->cfg.dropout > 0 && c->train && !md->mag ? (uint8_t *)((md->mag ? b.z + N * md->out : b.xa + N * md->r))
                                                        : NULL;
    b.xd = c->scr;
    b.dz = c->scr + N * in;
    b.dxa = b.dz + N * out;
    return b;
}

static int lora_hook_fwd(const adapter *a, const lin_call *c) {
    const lora_module *md = mod_at(a, c->l, c->r);
    lora_bufs b = bufs_of(a, md, c);
    const int N = c->N;
    if (!md->mag) {
        /* the graph did y = beta·y + x·Wᵀ + b; the dropout mask is drawn per
         * module from the step's seed */
        const float p = b.mask ? S(a)->cfg.dropout : 0.0f;
        if (b.mask) {
            peft_rng rng;
            peft_rng_seed(&rng, c->seed * 1000003ULL + (uint64_t)(md - S(a)->mods));
            for (size_t k = 0; k < (size_t)N * md->in; k++) b.mask[k] = peft_rng_uniform(&rng) >= p;
        }
        lora_fwd(md, c->x, c->in, N, b.mask, p, b.xd, b.xa, c->y, c->ldy, c->nt);
        return 0;
    }
    /* DoRA: z = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, y = beta·y + (m / ‖W + sBA‖) ⊙ z + b */
    int rc = kern_matmul(b.z, md->out, c->x, N, c->W, NULL, 0.0f, c->mm_scr, c->nt);
    if (rc) return rc;
    lora_fwd(md, c->x, c->in, N, NULL, 0.0f, NULL, b.xa, b.z, md->out, c->nt);
    for (int i = 0; i < N; i++) {
        float *yr = c->y + (size_t)i * c->ldy;
        const float *zr = b.z + (size_t)i * md->out;
        for (int j = 0; j < md->out; j++) {
            const float cj = md->mag[j] / md->wnorm[j];
            yr[j] = (c->beta != 0.0f ? c->beta * yr[j] : 0.0f) + cj * zr[j] + (c->bias ? c->bias[j] : 0.0f);
        }
    }
    return 0;
}

static int lora_hook_bwd(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx) {
    const lora_module *md = mod_at(a, c->l, c->r);
    lora_bufs b = bufs_of(a, md, c);
    const int N = c->N, out = md->out;
    if (!md->mag) {
        lora_bwd(md, c->x, c->in, N, b.mask, b.mask ? S(a)->cfg.dropout : 0.0f, b.xd, b.xa, dy, lddy, b.dxa, dx, c->in,
                 c->nt);
        return 0;
    }
    /* DoRA: dz = c ⊙ dy; gm += Σ dy ⊙ z / ‖W + sBA‖; then the base and LoRA backward from dz */
    for (int i = 0; i < N; i++) {
        const float *dr = dy + (size_t)i * lddy, *zr = b.z + (size_t)i * out;
        float *o = b.dz + (size_t)i * out;
        for (int j = 0; j < out; j++) {
            md->gmag[j] += dr[j] * zr[j] * (1.0f / md->wnorm[j]);
            o[j] = md->mag[j] / md->wnorm[j] * dr[j];
        }
    }
    int rc = dx ? kern_matmul_dx(dx, b.dz, out, N, c->W, c->mm_scr, c->nt) : 0;
    if (!rc) lora_bwd(md, c->x, c->in, N, NULL, 0.0f, NULL, b.xa, b.dz, out, b.dxa, dx, c->in, c->nt);
    return rc;
}

static int lora_lowest(const adapter *a, const peft_model *m) {
    int lo = m->cfg.n_layer;
    for (int i = 0; i < S(a)->n_modules; i++) lo = PEFT_MIN(lo, S(a)->mods[i].layer);
    return lo;
}

/* ---- DoRA's row norms ‖W_j + s·(B·A)_j‖, in double --------------------------------------- */

static int dora_refresh(adapter *a, const peft_model *m, peft_err *err) {
    if (!S(a)->n_modules) return 0;
    if (!S(a)->dora_norms) {
        int64_t n = 0;
        for (int i = 0; i < S(a)->n_modules; i++) n += S(a)->mods[i].out;
        S(a)->dora_norms = peft_calloc((size_t)n, sizeof(float), err);
        if (!S(a)->dora_norms) return PEFT_ERR_NOMEM;
        int64_t off = 0;
        for (int i = 0; i < S(a)->n_modules; i++) {
            S(a)->mods[i].wnorm = S(a)->dora_norms + off;
            off += S(a)->mods[i].out;
        }
    }
    int maxin = 0;
    for (int i = 0; i < S(a)->n_modules; i++) maxin = PEFT_MAX(maxin, S(a)->mods[i].in);
    float *row = peft_malloc((size_t)maxin * sizeof(float), err);
    if (!row) return PEFT_ERR_NOMEM;
    for (int i = 0; i < S(a)->n_modules; i++) {
        lora_module *md = &S(a)->mods[i];
        const kern_weight *w = &m->layers[md->layer].lin[md->role].w;
        for (int j = 0; j < md->out; j++) {
            int rc = kern_weight_row(w, j, row);
            if (rc) { free(row); return peft_fail(err, rc, "%s: DoRA cannot read a base weight row", m->path); }
            /* row += s · B_j · A */
            cblas_sgemv(CblasRowMajor, CblasTrans, md->r, md->in, md->scale, md->A, md->in, md->B + (size_t)j * md->r, 1,
                        1.0f, row, 1);
            double s = 0;
            for (int k = 0; k < md->in; k++) s += (double)row[k] * row[k];
            md->wnorm[j] = (float)sqrt(s);
        }
    }
    free(row);
    return 0;
}

/* ---- merge: W + s·B·A, DoRA then scales each output row by m / ‖W + s·B·A‖ ------------------ */

static bool lora_touches(const adapter *a, int l, model_linear_role r) { return mod_at(a, l, r) != NULL; }

static void lora_merge_row(const adapter *a, int l, model_linear_role r, float *row, int64_t q, bool transposed,
                           int64_t n_cols) {
    const lora_module *md = mod_at(a, l, r);
    const int R = md->r, in = md->in;
    if (!transposed) {
        /* output row q: row += s·Σ_k B[q,k]·A[k,·] */
        for (int k = 0; k < R; k++) {
            const float cf = md->scale * md->B[(size_t)q * R + k];
            if (cf == 0.0f) continue;
            const float *Ak = md->A + (size_t)k * in;
            for (int i = 0; i < in; i++) row[i] += cf * Ak[i];
        }
        if (md->mag)
            for (int64_t i = 0; i < n_cols; i++) row[i] *= md->mag[q] / md->wnorm[q];
        return;
    }
    /* GPT-2's Conv1D stores (in, out): stored row q is input q, row[o] += s·Σ_k B[o,k]·A[k,q] */
    for (int64_t o = 0; o < n_cols; o++) {
        const float *Bo = md->B + (size_t)o * R;
        float acc = 0.0f;
        for (int k = 0; k < R; k++) acc += Bo[k] * md->A[(size_t)k * in + q];
        row[o] += md->scale * acc;
        if (md->mag) row[o] *= md->mag[o] / md->wnorm[o];
    }
}

/* ---- the method: options, config, creation ---------------------------------------------------------- */

static void lora_free(adapter *a) {
    lora_state *st = S(a);
    if (!st) return;
    free(st->mods);
    free(st->slot);
    free(st->dora_norms);
    free(st);
    a->priv = NULL;
}

/* lora_config from mc: the generic fields (0 / NAN: LoRA's defaults) and
 * the options rslora, init */
static int config_of(const method_config *mc, bool dora, lora_config *c, peft_err *err) {
    *c = lora_default_config();
    if (mc->r > 0) c->r = mc->r;
    if (!isnan(mc->alpha)) c->alpha = mc->alpha;
    c->dropout = mc->dropout;
    c->targets = mc->targets;
    c->layers = mc->layers;
    c->seed = mc->seed;
    c->dora = dora;
    int rc = method_option_bool(mc, "rslora", &c->rslora, err);
    if (rc) return rc;
    char buf[32];
    const char *init = method_option_get(mc, "init", buf, sizeof buf);
    if (!init || !strcmp(init, "kaiming") || !strcmp(init, "true")) c->init = LORA_INIT_KAIMING;
    else if (!strcmp(init, "gaussian")) c->init = LORA_INIT_GAUSSIAN;
    else if (!strcmp(init, "false")) c->init = LORA_INIT_ZERO_B_RANDOM_BOTH;   /* HF init_lora_weights=False */
    else
        return peft_fail(err, PEFT_ERR_INVALID, "%s: init must be kaiming or gaussian, got \"%s\"", dora ? "dora" : "lora",
                         init);
    return 0;
}

/* The options target_modules, rank_pattern, alpha_pattern (lora_pattern.c)
 * as parsed patterns; an empty spec is an empty pattern. */
typedef struct {
    lora_pattern tm, rp, ap;
} lora_patterns;

static void patterns_free(lora_patterns *p) {
    lora_pattern_free(&p->tm);
    lora_pattern_free(&p->rp);
    lora_pattern_free(&p->ap);
}

static int patterns_of(const method_config *mc, lora_patterns *p, peft_err *err) {
    memset(p, 0, sizeof *p);
    static const char *const keys[3] = {"target_modules", "rank_pattern", "alpha_pattern"};
    lora_pattern *dst[3] = {&p->tm, &p->rp, &p->ap};
    char buf[PEFT_METHOD_OPTIONS_MAX];
    for (int i = 0; i < 3; i++) {
        const char *spec = method_option_get(mc, keys[i], buf, sizeof buf);
        int rc = lora_pattern_parse(spec, keys[i], i == 0, dst[i], err);
        if (rc) { patterns_free(p); return rc; }
    }
    if (p->tm.n && mc->targets) {
        patterns_free(p);
        return peft_fail(err, PEFT_ERR_INVALID, "%s: give --target (kinds) or --target-modules (names), not both",
                         mc->ops ? mc->ops->name : "lora");
    }
    return 0;
}

static int lora_check(const method_config *mc, peft_err *err) {
    lora_config c;
    bool use_dora = false;
    lora_patterns pat;
    int rc = config_of(mc, mc->ops == &method_dora, &c, err);
    if (!rc) rc = method_option_bool(mc, "use_dora", &use_dora, err);
    if (!rc && !(rc = patterns_of(mc, &pat, err))) patterns_free(&pat);
    return rc;
}

/* --use-dora: lora becomes dora */
static const method_ops *lora_resolve(const method_config *mc) {
    bool use_dora = false;
    peft_err e = {0};
    return !method_option_bool(mc, "use_dora", &use_dora, &e) && use_dora ? &method_dora : &method_lora;
}

/* slot_r (from lora_plan) narrowed to the modules target_modules names (in
 * the layers selected), ranks from rank_pattern, alphas (NAN: the
 * config's) from alpha_pattern. An entry that matches no targeted module is
 * an error: a misspelt name would otherwise change nothing, silently. */
static int apply_patterns(const peft_model *m, const lora_config *c, const lora_patterns *p, int *slot_r,
                          float *slot_alpha, uint32_t *targets, peft_err *err) {
    const int nl = m->cfg.n_layer;
    int n_used = p->tm.n + p->rp.n + p->ap.n;
    bool *used = peft_calloc((size_t)(n_used ? n_used : 1), sizeof *used, err);
    if (!used) return PEFT_ERR_NOMEM;
    bool *u_tm = used, *u_rp = used + p->tm.n, *u_ap = used + p->tm.n + p->rp.n;
    int rc = 0, n = 0;
    *targets = 0;
    for (int l = 0; l < nl && !rc; l++)
        for (int r = 0; r < ROLE_N_LINEAR && !rc; r++) {
            const int s = l * ROLE_N_LINEAR + r;
            slot_alpha[s] = NAN;
            char path[256];
            if (!m->layers[l].lin[r].present || model_linear_hf_path(m, l, (model_linear_role)r, path, sizeof path)) {
                slot_r[s] = 0;
                continue;
            }
            if (p->tm.n) {
                const int i = lora_layer_selected(c->layers, l) ? lora_pattern_find(&p->tm, path) : -1;
                slot_r[s] = i >= 0 ? c->r : 0;
                if (i >= 0) u_tm[i] = true;
            }
            if (slot_r[s] <= 0) continue;
            int i = lora_pattern_find(&p->rp, path);
            if (i >= 0) {
                const double v = p->rp.it[i].v;
                if (v != floor(v) || v < 1 || v > PEFT_MAX_RANK) {
                    rc = peft_fail(err, PEFT_ERR_INVALID, "rank_pattern: \"%s\" gives rank %g (an integer in 1..%d)",
                                   p->rp.it[i].key, v, PEFT_MAX_RANK);
                    break;
                }
                slot_r[s] = (int)v;
                u_rp[i] = true;
            }
            i = lora_pattern_find(&p->ap, path);
            if (i >= 0) {
                const double v = p->ap.it[i].v;
                if (!(v >= 0 && v <= 1e6)) {
                    rc = peft_fail(err, PEFT_ERR_INVALID, "alpha_pattern: \"%s\" gives alpha %g (in [0, 1e6])",
                                   p->ap.it[i].key, v);
                    break;
                }
                slot_alpha[s] = (float)v;
                u_ap[i] = true;
            }
            *targets |= 1u << r;
            n++;
        }
    static const char *const what[3] = {"target_modules", "rank_pattern", "alpha_pattern"};
    const lora_pattern *pats[3] = {&p->tm, &p->rp, &p->ap};
    const bool *us[3] = {u_tm, u_rp, u_ap};
    for (int k = 0; k < 3 && !rc; k++)
        for (int i = 0; i < pats[k]->n; i++)
            if (!us[k][i]) {
                rc = peft_fail(err, PEFT_ERR_INVALID, "%s: \"%s\" matches no %s module of %s", what[k], pats[k]->it[i].key,
                               k == 0 ? "linear" : "targeted", m->path);
                break;
            }
    free(used);
    if (!rc && n == 0) rc = model_no_targets(m, "LoRA", err);
    return rc;
}

static int lora_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    lora_config c, planned;
    lora_patterns pat;
    int *slot_r = NULL;
    float *slot_alpha = NULL;
    int rc = config_of(mc, a->ops == &method_dora, &c, err);
    if (rc || (rc = patterns_of(mc, &pat, err))) return rc;
    rc = lora_plan(m, &c, &planned, &slot_r, err);
    const bool any = pat.tm.n || pat.rp.n || pat.ap.n;
    if (!rc && any) {
        slot_alpha = peft_calloc((size_t)PEFT_MAX(1, m->cfg.n_layer * ROLE_N_LINEAR), sizeof *slot_alpha, err);
        rc = slot_alpha ? apply_patterns(m, &planned, &pat, slot_r, slot_alpha, &planned.targets, err) : PEFT_ERR_NOMEM;
    }
    if (!rc) rc = lora_setup(a, m, &planned, slot_r, err);
    if (!rc && slot_alpha) {
        lora_state *st = S(a);
        for (int i = 0; i < st->n_modules; i++) {
            const float al = slot_alpha[st->mods[i].layer * ROLE_N_LINEAR + st->mods[i].role];
            if (!isnan(al)) lora_module_set_alpha(&st->mods[i], &planned, al);
        }
        a->mc.targets = planned.targets;
    }
    patterns_free(&pat);
    free(slot_alpha);
    free(slot_r);
    return rc;
}

static int lora_wire_ops(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    lora_wire(a);
    return 0;
}

/* A DoRA file may say lora_dropout > 0: its forward ignores it (as merged
 * inference does), training would not be HF's */
static int lora_train_check(const adapter *a, peft_err *err) {
    const lora_state *st = S(a);
    if (st->cfg.dora && st->cfg.dropout > 0)
        return peft_fail(err, PEFT_ERR_INVALID, "DoRA with dropout (%g) cannot be trained here; set lora_dropout to 0",
                         (double)st->cfg.dropout);
    return 0;
}

static void lora_describe(const adapter *a, char *buf, size_t cap) {
    const lora_state *st = S(a);
    int rlo = st->cfg.r, rhi = st->cfg.r, n_own = 0;
    for (int i = 0; i < st->n_modules; i++) {
        rlo = PEFT_MIN(rlo, st->mods[i].r);
        rhi = PEFT_MAX(rhi, st->mods[i].r);
        n_own += st->mods[i].r != st->cfg.r || st->mods[i].alpha != st->cfg.alpha;
    }
    char pat[96] = "";
    if (n_own) snprintf(pat, sizeof pat, " (%d with their own rank or alpha; ranks %d..%d)", n_own, rlo, rhi);
    snprintf(buf, cap, "r=%d alpha=%g%s scale=%g dropout=%g on %d modules%s", st->cfg.r, (double)st->cfg.alpha,
             st->cfg.rslora ? " (rsLoRA)" : "", (double)lora_scale(&st->cfg), (double)st->cfg.dropout, st->n_modules, pat);
}

static const method_option lora_options[] = {
    {"r", "N", "rank (default 8)"},
    {"alpha", "A", "alpha, the scale is alpha/r (default 16)"},
    {"dropout", "P", METHOD_HELP_DROPOUT},
    {"target", "LIST", METHOD_HELP_TARGET},
    {"layers", "LIST", METHOD_HELP_LAYERS},
    {"rslora", NULL, "scale by alpha/sqrt(r) instead of alpha/r"},
    {"use-dora", NULL, "the same as --method dora"},
    {"init", "NAME", "kaiming (default, B = 0) | gaussian"},
    {"target-modules", "SPEC", METHOD_HELP_TARGET_MODULES},
    {"rank-pattern", "SPEC", METHOD_HELP_RANK_PATTERN},
    {"alpha-pattern", "SPEC", METHOD_HELP_ALPHA_PATTERN},
    {"loraplus-lr-ratio", "R", "LoRA+: lora_B (and DoRA's magnitude) at lr x R (HF loraplus_lr_ratio; default 0 = off)"},
    {"loraplus-lr-embedding", "LR", "LoRA+: lr of LoRA on embedding layers (default 1e-6)"},
    {NULL, NULL, NULL},
};

/* DoRA: no dropout (HF PEFT recomputes the base output on the dropped input) */
static const method_option dora_options[] = {
    {"r", "N", "rank (default 8)"},
    {"alpha", "A", "alpha, the scale is alpha/r (default 16)"},
    {"target", "LIST", METHOD_HELP_TARGET},
    {"layers", "LIST", METHOD_HELP_LAYERS},
    {"rslora", NULL, "scale by alpha/sqrt(r) instead of alpha/r"},
    {"use-dora", NULL, "the same as --method dora"},
    {"init", "NAME", "kaiming (default, B = 0) | gaussian"},
    {"target-modules", "SPEC", METHOD_HELP_TARGET_MODULES},
    {"rank-pattern", "SPEC", METHOD_HELP_RANK_PATTERN},
    {"alpha-pattern", "SPEC", METHOD_HELP_ALPHA_PATTERN},
    {"loraplus-lr-ratio", "R", "LoRA+: lora_B (and DoRA's magnitude) at lr x R (HF loraplus_lr_ratio; default 0 = off)"},
    {"loraplus-lr-embedding", "LR", "LoRA+: lr of LoRA on embedding layers (default 1e-6)"},
    {NULL, NULL, NULL},
};

#define LORA_OPS                                                                                                     \
    .peft_type = "LORA", .check = lora_check, .create = lora_create, .wire = lora_wire_ops,                        \
    .init = lora_init_values, .free_priv = lora_free, .config_write = lora_config_write, .load = lora_load_st,      \
    .train_check = lora_train_check, .describe = lora_describe, .lin_kind = lora_kind,                            \
    .lin_act_bytes = lora_act_bytes, .scratch_floats = lora_scratch, .lin_fwd = lora_hook_fwd,                   \
    .lin_bwd = lora_hook_bwd, .lowest_layer = lora_lowest, .merge_touches = lora_touches, .merge_row = lora_merge_row

const method_ops method_lora = {
    .name = "lora",
    .summary = "LoRA: low-rank A, B per targeted linear (rsLoRA: --rslora)",
    .options = lora_options,
    .resolve = lora_resolve,
    .export_gguf = lora_export_gguf,
    LORA_OPS,
};

const method_ops method_dora = {
    .name = "dora",
    .summary = "DoRA: LoRA plus a magnitude per output row",
    .options = dora_options,
    .refresh = dora_refresh,
    LORA_OPS,
};
