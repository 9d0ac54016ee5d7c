/* adalora.c — AdaLoRA (Zhang et al., ICLR 2023; HF PEFT peft_type ADALORA):
 * an SVD-shaped low-rank update whose rank budget is reallocated across the
 * adapted linears during training.
 *
 *   A (r, in)  E (r, 1)  B (out, r)   r = init_r
 *   s  = lora_alpha / (ranknum + 1e-5),  ranknum = init_r (HF keeps it fixed)
 *   y  = x·Wᵀ + b + s·((drop(x)·(E ⊙ A)ᵀ)·Bᵀ)      E scales the rows of A
 *
 * Training adds to the loss orth_reg_weight · R with
 *   R = (1/n) Σ over the n tensors A and B of ‖A·Aᵀ − I‖_F and ‖Bᵀ·B − I‖_F
 * (the Frobenius norm, not its square, as HF's AdaLoraModel.forward), and
 * after every optimizer step (HF's update_and_allocate(step), 0-based) the
 * rank allocator:
 *   step < T − tfinal   importance of every A, E, B value from the step's
 *                       gradient: I = |p·g|, Ī = β1·Ī + (1−β1)·I,
 *                       U = β2·U + (1−β2)·|I − Ī|, score = Ī·U; triplet i of
 *                       a module scores E_i's + the mean of row i of A's +
 *                       the mean of column i of B's. Budget b (triplets kept
 *                       in all): init_r·n up to tinit, then
 *                       ⌊(init − target)·(1 − (step − tinit)/(T − tfinal −
 *                       tinit))³ + target⌋ on steps ≡ 0 mod deltaT, where
 *                       every triplet at or below the (init − b)-th smallest
 *                       score gets E_i = 0 (the rank pattern);
 *   step = T − tfinal   a last mask at target_r·n from the scores so far, which
 *                       are then reset;
 *   step > T − tfinal   the rank pattern's zeros set again every step.
 * The masked E_i keep their optimizer moments and move again until the next
 * mask, as in HF.
 *
 * Saved as HF does: rank_pattern {"<module>.lora_E": [kept, ...]} in the
 * config and every tensor cut to its kept triplets (a module that keeps none
 * is left out of the file; HF writes zero-length tensors there, which load
 * here too). A loaded adapter with a rank pattern has those cut ranks; its
 * scale stays alpha / (init_r + 1e-5). Files: base_model.model.<module>.lora_A
 * / lora_B / lora_E (no ".weight"). Fresh: E = 0, A and B N(0, 0.02²). */
#include "core/limits.h"
#include "peft/lora.h"
#include "peft/method.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int layer, role, in, out;
    int r;                  /* rows held (init_r, or the kept count of a loaded pattern) */
    int idx;                /* registry index of lora_A; lora_B, lora_E follow */
    float *A, *B, *E, *gA, *gB, *gE;
    int64_t off;            /* offset of lora_A in the parameter block */
    uint8_t *keep;          /* the rank pattern of the init_r triplets (pattern_keep + k·init_r) */
} ada_mod;

typedef struct {
    int init_r, target_r, tinit, tfinal, delta_t, total_step;
    float alpha, scale, beta1, beta2, orth_w, dropout;
    double alpha_d, beta1_d, beta2_d, orth_d;   /* as given, for the config */
    int n_mods;
    ada_mod *mods;
    int *mod_of;            /* per slot: module index, or -1 */
    uint8_t *pattern_keep;  /* n_mods · init_r */
    bool has_pattern;       /* a rank pattern exists (from the file or the allocator) */
    bool cut;               /* the registry holds the pattern's kept rows only (a loaded pattern) */
    float *ipt_bar, *unc;   /* the allocator's EMAs over the parameter block */
    int64_t n_ema;
} adalora;

#define AD(a) ((adalora *)(a)->priv)

static void ada_free(adapter *a) {
    adalora *h = AD(a);
    if (!h) return;
    free(h->mods);
    free(h->mod_of);
    free(h->pattern_keep);
    free(h->ipt_bar);
    free(h->unc);
    free(h);
    a->priv = NULL;
}

/* ---- options ---------------------------------------------------------------------------- */

static int int_option(const method_config *mc, const char *key, int lo, int hi, int *out, peft_err *err) {
    double v = *out;
    int rc = method_option_float(mc, key, lo, hi, &v, err);
    if (rc) return rc;
    if (v != floor(v)) return peft_fail(err, PEFT_ERR_INVALID, "adalora: %s must be an integer, got %g", key, v);
    *out = (int)v;
    return 0;
}

/* mc into h: HF's defaults (init_r 12, target_r 8, tinit 0, tfinal 0,
 * deltaT 1, beta1 = beta2 = 0.85, orth_reg_weight 0.5, lora_alpha 8) */
static int ada_options_read(const method_config *mc, adalora *h, peft_err *err) {
    h->init_r = 12;
    h->target_r = 8;
    h->tinit = 0;
    h->tfinal = 0;
    h->delta_t = 1;
    h->total_step = 0;
    double b1 = 0.85, b2 = 0.85, ow = 0.5, alpha = isnan(mc->alpha) || mc->alpha <= 0 ? 8 : mc->alpha;
    int rc;
    if ((rc = int_option(mc, "init_r", 1, PEFT_MAX_RANK, &h->init_r, err)) ||
        (rc = int_option(mc, "target_r", 0, PEFT_MAX_RANK, &h->target_r, err)) ||
        (rc = int_option(mc, "tinit", 0, 1 << 30, &h->tinit, err)) ||
        (rc = int_option(mc, "tfinal", 0, 1 << 30, &h->tfinal, err)) ||
        (rc = int_option(mc, "deltaT", 1, 1 << 30, &h->delta_t, err)) ||
        (rc = int_option(mc, "total_step", 0, 1 << 30, &h->total_step, err)) ||
        (rc = method_option_float(mc, "adalora_beta1", 0, 1, &b1, err)) ||
        (rc = method_option_float(mc, "adalora_beta2", 0, 1, &b2, err)) ||
        (rc = method_option_float(mc, "orth_reg_weight", 0, 1e6, &ow, err)) ||
        (rc = method_option_float(mc, "alpha", 0, 1e6, &alpha, err)))
        return rc;
    if (!(b1 > 0 && b1 < 1) || !(b2 > 0 && b2 < 1))
        return peft_fail(err, PEFT_ERR_INVALID, "adalora: beta1 and beta2 must be in (0, 1), got %g and %g", b1, b2);
    if (h->target_r > h->init_r)
        return peft_fail(err, PEFT_ERR_INVALID, "adalora: target_r (%d) is larger than init_r (%d): the budget only "
                                                "shrinks", h->target_r, h->init_r);
    /* mc->r is ignored, as HF ignores r (its rank is init_r); the CLI refuses --r for adalora */
    if (mc->dropout < 0 || mc->dropout >= 1)
        return peft_fail(err, PEFT_ERR_INVALID, "adalora: dropout must be in [0, 1), got %g", (double)mc->dropout);
    h->alpha_d = alpha, h->beta1_d = b1, h->beta2_d = b2, h->orth_d = ow;
    h->beta1 = (float)b1;
    h->beta2 = (float)b2;
    h->orth_w = (float)ow;
    h->alpha = (float)alpha;
    /* HF: scaling (lora_alpha, or r when alpha is 0) / (ranknum + 1e-5) in f32 */
    const float rn = (float)h->init_r + 1e-5f;
    h->scale = (h->alpha > 0 ? h->alpha : (float)h->init_r) / rn;
    h->dropout = mc->dropout;
    return 0;
}

static int ada_check(const method_config *mc, peft_err *err) {
    adalora h;
    memset(&h, 0, sizeof h);
    return ada_options_read(mc, &h, err);
}

/* The run's schedule against T steps: HF requires a budgeting phase. */
static int schedule_check(const adalora *h, int total, peft_err *err) {
    if (total <= 0) return peft_fail(err, PEFT_ERR_INVALID, "adalora: the run has no steps");
    if ((int64_t)h->tinit + h->tfinal >= total)
        return peft_fail(err, PEFT_ERR_INVALID, "adalora: tinit (%d) + tfinal (%d) must be less than the run's %d steps "
                                                "(no step would reallocate ranks); lower them or train longer",
                         h->tinit, h->tfinal, total);
    return 0;
}

/* ---- the rank pattern: {"<module>.lora_E": [kept, ...]} in configs ---------------------------------
 * A loaded pattern reaches create as the option kept=<hex>: the kept bits of
 * every module (in slot order, init_r each; a module the pattern does not
 * name keeps all), four to a hex digit, most significant first. */

/* The adapted slots of m for targets and layers, in order; their count. */
static int module_slots(const peft_model *m, const method_config *mc, int *slot_of, peft_err *err) {
    const int ns = m->cfg.n_layer * ROLE_N_LINEAR;
    bool *slots = peft_calloc((size_t)ns + 1, sizeof *slots, err);
    if (!slots) return -PEFT_ERR_NOMEM;
    int rc = method_target_slots(m, mc, "adalora", slots, err), n = 0;
    for (int s = 0; !rc && s < ns; s++)
        if (slots[s]) slot_of[n++] = s;
    free(slots);
    return rc ? -rc : n;
}

static int pattern_to_bits(const peft_model *m, const cJSON *pat, const int *slot_of, int n, int init_r, uint8_t *keep,
                           const char *where, peft_err *err) {
    memset(keep, 1, (size_t)n * init_r);
    for (const cJSON *it = pat->child; it; it = it->next) {
        if (!cJSON_IsArray(it) || cJSON_GetArraySize(it) != init_r)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: rank_pattern[\"%.200s\"] must be a list of init_r = %d booleans",
                             where, it->string, init_r);
        int hit = -1;
        for (int k = 0; k < n && hit < 0; k++) {
            char path[256];
            if (model_linear_hf_path(m, slot_of[k] / ROLE_N_LINEAR, (model_linear_role)(slot_of[k] % ROLE_N_LINEAR), path,
                                     sizeof path))
                continue;
            const size_t pl = strlen(path);
            /* the adapter name is dropped when saved; a file that kept it says "<module>.lora_E.default" */
            if (!strncmp(it->string, path, pl) &&
                (!strcmp(it->string + pl, ".lora_E") || !strcmp(it->string + pl, ".lora_E.default")))
                hit = k;
        }
        if (hit < 0)
            return peft_fail(err, PEFT_ERR_FORMAT, "%s: rank_pattern key \"%.200s\" names no adapted module of %s", where,
                             it->string, m->path);
        int i = 0;
        for (const cJSON *b = it->child; b; b = b->next, i++) {
            if (!cJSON_IsBool(b))
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: rank_pattern[\"%.200s\"] holds a value that is not a boolean",
                                 where, it->string);
            keep[(size_t)hit * init_r + i] = cJSON_IsTrue(b);
        }
    }
    return 0;
}

static int bits_from_hex(const char *hex, uint8_t *keep, size_t nbits, peft_err *err) {
    if (strlen(hex) != (nbits + 3) / 4)
        return peft_fail(err, PEFT_ERR_INVALID, "adalora: the rank pattern holds %zu bits, this model's modules need %zu",
                         strlen(hex) * 4, nbits);
    for (size_t b = 0; b < nbits; b++) {
        const char c = hex[b / 4];
        const int v = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (v < 0) return peft_fail(err, PEFT_ERR_INVALID, "adalora: the rank pattern option is not hexadecimal");
        keep[b] = (uint8_t)((v >> (3 - b % 4)) & 1);
    }
    return 0;
}

/* ---- creation ---------------------------------------------------------------------------- */

static int ada_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    adalora *h = peft_calloc(1, sizeof *h, err);
    if (!h) return PEFT_ERR_NOMEM;
    a->priv = h;
    int rc = ada_options_read(mc, h, err);
    if (rc) return rc;
    const int ns = m->cfg.n_layer * ROLE_N_LINEAR;
    int *slot_of = peft_malloc(((size_t)ns + 1) * sizeof *slot_of, err);
    h->mod_of = peft_malloc(((size_t)ns + 1) * sizeof *h->mod_of, err);
    h->mods = peft_calloc((size_t)ns + 1, sizeof *h->mods, err);
    if (!slot_of || !h->mod_of || !h->mods) { free(slot_of); return PEFT_ERR_NOMEM; }
    const int n = module_slots(m, mc, slot_of, err);
    if (n < 0) { free(slot_of); return -n; }
    for (int s = 0; s < ns; s++) h->mod_of[s] = -1;
    for (int k = 0; k < n; k++) {
        ada_mod *d = &h->mods[k];
        d->layer = slot_of[k] / ROLE_N_LINEAR;
        d->role = slot_of[k] % ROLE_N_LINEAR;
        const kern_weight *w = &m->layers[d->layer].lin[d->role].w;
        d->in = (int)w->cols;
        d->out = (int)w->rows;
    }
    free(slot_of);
    h->n_mods = n;
    h->pattern_keep = peft_malloc((size_t)n * (size_t)h->init_r + 1, err);
    if (!h->pattern_keep) return PEFT_ERR_NOMEM;
    memset(h->pattern_keep, 1, (size_t)n * (size_t)h->init_r);
    for (int k = 0; k < n; k++) h->mods[k].keep = h->pattern_keep + (size_t)k * h->init_r;
    /* a loaded adapter's rank pattern (config_read's kept=<hex>): the tensors are cut to it */
    char *buf = peft_malloc(sizeof mc->options, err);
    if (!buf) return PEFT_ERR_NOMEM;
    const char *hex = method_option_get(mc, "kept", buf, sizeof mc->options);
    if (hex) {
        rc = bits_from_hex(hex, h->pattern_keep, (size_t)n * h->init_r, err);
        h->has_pattern = h->cut = true;
    }
    free(buf);
    if (rc) return rc;
    for (int k = 0; k < n && !rc; k++) {
        ada_mod *d = &h->mods[k];
        d->r = h->init_r;
        if (h->cut) {
            d->r = 0;
            for (int i = 0; i < h->init_r; i++) d->r += d->keep[i];
        }
        d->idx = -1;
        if (d->r == 0) continue;   /* kept nothing: no tensors, no hook */
        h->mod_of[d->layer * ROLE_N_LINEAR + d->role] = k;
        char path[200], key[256];
        if (model_linear_hf_path(m, d->layer, (model_linear_role)d->role, path, sizeof path))
            return peft_fail(err, PEFT_ERR_INVALID, "adalora: linear %d of layer %d has no HF name", d->role, d->layer);
        static const char *const names[3] = {"lora_A", "lora_B", "lora_E"};
        for (int t = 0; t < 3 && !rc; t++) {
            snprintf(key, sizeof key, "base_model.model.%s.%s", path, names[t]);
            const int64_t d0 = t == 1 ? d->out : d->r, d1 = t == 0 ? d->in : t == 1 ? d->r : 1;
            const int idx = adapter_add_tensor(a, key, 2, d0, d1, true, err);
            if (idx < 0) rc = PEFT_ERR_NOMEM;
            if (t == 0) d->idx = idx;
        }
    }
    return rc;
}

static int ada_wire(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    adalora *h = AD(a);
    for (int k = 0; k < h->n_mods; k++) {
        ada_mod *d = &h->mods[k];
        if (d->idx < 0) continue;
        const adapter_tensor *t = &a->tensors[d->idx];
        d->A = t[0].p, d->B = t[1].p, d->E = t[2].p;
        d->gA = t[0].g, d->gB = t[1].g, d->gE = t[2].g;
        d->off = t[0].p - a->params;
    }
    return 0;
}

static int ada_init(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err) {
    (void)m;
    (void)err;
    adalora *h = AD(a);
    for (int k = 0; k < h->n_mods; k++) {
        const ada_mod *d = &h->mods[k];
        if (d->idx < 0) continue;
        for (int64_t i = 0; i < (int64_t)d->r * d->in; i++) d->A[i] = 0.02f * peft_rng_normal(rng);
        for (int64_t i = 0; i < (int64_t)d->out * d->r; i++) d->B[i] = 0.02f * peft_rng_normal(rng);
        memset(d->E, 0, (size_t)d->r * sizeof(float));
    }
    return 0;
}

/* ---- adapter_config.json ------------------------------------------------------------------ */

static int ada_pattern_json(const adapter *a, const peft_model *m, cJSON *o) {
    const adalora *h = AD(a);
    if (!h->has_pattern) return cJSON_AddNullToObject(o, "rank_pattern") ? 0 : PEFT_ERR_NOMEM;
    cJSON *rp = cJSON_AddObjectToObject(o, "rank_pattern");
    if (!rp) return PEFT_ERR_NOMEM;
    for (int k = 0; k < h->n_mods; k++) {
        const ada_mod *d = &h->mods[k];
        char path[256], key[300];
        model_linear_hf_path(m, d->layer, (model_linear_role)d->role, path, sizeof path);
        snprintf(key, sizeof key, "%s.lora_E", path);
        cJSON *arr = cJSON_AddArrayToObject(rp, key);
        if (!arr) return PEFT_ERR_NOMEM;
        for (int i = 0; i < h->init_r; i++)
            if (!cJSON_AddItemToArray(arr, cJSON_CreateBool(d->keep[i]))) return PEFT_ERR_NOMEM;
    }
    return 0;
}

static int ada_config_write(const adapter *a, const peft_model *m, cJSON *o) {
    const adalora *h = AD(a);
    uint32_t t = 0;
    for (int k = 0; k < h->n_mods; k++) t |= 1u << h->mods[k].role;
    /* HF refuses a config without a budgeting phase: an adapter that never
     * trained here names the shortest schedule that has one */
    const int total = h->total_step > h->tinit + h->tfinal ? h->total_step : h->tinit + h->tfinal + 1;
    bool ok = cJSON_AddObjectToObject(o, "alpha_pattern") && cJSON_AddNumberToObject(o, "beta1", h->beta1_d) &&
              cJSON_AddNumberToObject(o, "beta2", h->beta2_d) && cJSON_AddStringToObject(o, "bias", "none") &&
              cJSON_AddNumberToObject(o, "deltaT", h->delta_t) &&
              cJSON_AddBoolToObject(o, "fan_in_fan_out", m->cfg.desc->hf_conv1d) &&
              cJSON_AddBoolToObject(o, "init_lora_weights", true) && cJSON_AddNumberToObject(o, "init_r", h->init_r) &&
              cJSON_AddNullToObject(o, "layers_pattern") && cJSON_AddNumberToObject(o, "lora_alpha", h->alpha_d) &&
              cJSON_AddNumberToObject(o, "lora_dropout", h->dropout) &&
              cJSON_AddNumberToObject(o, "orth_reg_weight", h->orth_d) && cJSON_AddNumberToObject(o, "r", 8) &&
              cJSON_AddNumberToObject(o, "target_r", h->target_r) && cJSON_AddNumberToObject(o, "tfinal", h->tfinal) &&
              cJSON_AddNumberToObject(o, "tinit", h->tinit) && cJSON_AddNumberToObject(o, "total_step", total) &&
              cJSON_AddBoolToObject(o, "use_dora", false) && cJSON_AddBoolToObject(o, "use_rslora", false);
    if (!ok || ada_pattern_json(a, m, o)) return PEFT_ERR_NOMEM;
    return method_write_targets(m, t, o);
}

/* config key into option opt (NULL: the same name) */
static int num_option(method_config *mc, const cJSON *o, const char *key, const char *opt, double dflt, double lo,
                      double hi, bool integral, const char *path, peft_err *err) {
    double v;
    int rc = method_read_number(o, key, dflt, lo, hi, &v, path, err);
    if (rc) return rc;
    if (integral && v != floor(v)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" must be an integer", path, key);
    char s[64];
    snprintf(s, sizeof s, "%.17g", v);
    return method_option_add(mc, opt ? opt : key, s, err);
}

static int ada_config_read(const cJSON *o, const char *path, const peft_model *m, method_config *mc, peft_err *err) {
    int rc;
    bool b;
    if ((rc = num_option(mc, o, "init_r", NULL, 12, 1, PEFT_MAX_RANK, true, path, err)) ||
        (rc = num_option(mc, o, "target_r", NULL, 8, 0, PEFT_MAX_RANK, true, path, err)) ||
        (rc = num_option(mc, o, "tinit", NULL, 0, 0, 1 << 30, true, path, err)) ||
        (rc = num_option(mc, o, "tfinal", NULL, 0, 0, 1 << 30, true, path, err)) ||
        (rc = num_option(mc, o, "deltaT", NULL, 1, 1, 1 << 30, true, path, err)) ||
        (rc = num_option(mc, o, "total_step", NULL, 0, 0, 1 << 30, true, path, err)) ||
        (rc = num_option(mc, o, "beta1", "adalora_beta1", 0.85, 0, 1, false, path, err)) ||
        (rc = num_option(mc, o, "beta2", "adalora_beta2", 0.85, 0, 1, false, path, err)) ||
        (rc = num_option(mc, o, "orth_reg_weight", NULL, 0.5, 0, 1e6, false, path, err)) ||
        (rc = num_option(mc, o, "lora_alpha", "alpha", 8, 0, 1e6, false, path, err)))
        return rc;
    double dr;
    if ((rc = method_read_number(o, "lora_dropout", 0, 0, 0.999, &dr, path, err))) return rc;
    mc->dropout = (float)dr;
    if ((rc = method_read_bool(o, "use_dora", false, &b, path, err))) return rc;
    if (b) return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: AdaLoRA with use_dora does not exist (HF refuses it)", path);
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(o, "layers_pattern");
    if (lp && !cJSON_IsNull(lp) && !(cJSON_IsArray(lp) && !lp->child))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: \"layers_pattern\" is not supported", path);
    if ((rc = adapter_json_targets(m, cJSON_GetObjectItemCaseSensitive(o, "target_modules"), &mc->targets, path, err)))
        return rc;
    const cJSON *rp = cJSON_GetObjectItemCaseSensitive(o, "rank_pattern");
    if (!rp || cJSON_IsNull(rp)) return 0;
    if (!cJSON_IsObject(rp)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"rank_pattern\" must be an object", path);
    if (!rp->child) return 0;
    /* the modules in create's order need the layers, which adapter_load reads after this */
    method_config t = *mc;
    const cJSON *lt = cJSON_GetObjectItemCaseSensitive(o, "layers_to_transform");
    for (const cJSON *it = cJSON_IsArray(lt) ? lt->child : cJSON_IsNumber(lt) ? lt : NULL; it;
         it = cJSON_IsArray(lt) ? it->next : NULL)
        if (cJSON_IsNumber(it) && it->valuedouble >= 0 && it->valuedouble < PEFT_MIN(m->cfg.n_layer, 64))
            t.layers |= (uint64_t)1 << (int)it->valuedouble;
    char v2[64];
    const int init_r = method_option_get(mc, "init_r", v2, sizeof v2) ? atoi(v2) : 12;
    const int ns = m->cfg.n_layer * ROLE_N_LINEAR;
    int *slot_of = peft_malloc(((size_t)ns + 1) * sizeof *slot_of, err);
    if (!slot_of) return PEFT_ERR_NOMEM;
    const int n = module_slots(m, &t, slot_of, err);
    const size_t nbits = n > 0 ? (size_t)n * init_r : 0;
    uint8_t *keep = n > 0 ? peft_malloc(nbits + 1, err) : NULL;
    char *hex = n > 0 ? peft_malloc(nbits / 4 + 2, err) : NULL;
    rc = n < 0 ? -n : !keep || !hex ? PEFT_ERR_NOMEM : pattern_to_bits(m, rp, slot_of, n, init_r, keep, path, err);
    if (!rc) {
        const size_t nh = (nbits + 3) / 4;
        for (size_t q = 0; q < nh; q++) {
            int v = 0;
            for (int b = 0; b < 4; b++) v = v << 1 | (q * 4 + b < nbits ? keep[q * 4 + b] : 0);
            hex[q] = "0123456789abcdef"[v];
        }
        hex[nh] = '\0';
        if (method_option_add(mc, "kept", hex, err))
            rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: \"rank_pattern\" (%zu modules x init_r %d) is larger than "
                                                      "peft.c's method options hold", path, (size_t)n, init_r);
    }
    free(slot_of);
    free(keep);
    free(hex);
    return rc;
}

/* ---- the hook --------------------------------------------------------------------------------- */

static hook_kind ada_kind(const adapter *a, int l, model_linear_role r) {
    return AD(a)->mod_of[l * ROLE_N_LINEAR + r] >= 0 ? HOOK_ADD : HOOK_NONE;
}

static const ada_mod *mod_at(const adapter *a, int l, model_linear_role r) {
    return &AD(a)->mods[AD(a)->mod_of[l * ROLE_N_LINEAR + r]];
}

static bool drops(const adapter *a, const lin_call *c) { return AD(a)->dropout > 0 && c->train; }

/* kept: T = drop(x)·(E⊙A)ᵀ (N, r); with dropout the mask (N·in bytes) */
static size_t ada_act_bytes(const adapter *a, int l, model_linear_role r, int N) {
    const ada_mod *d = mod_at(a, l, r);
    return (size_t)N * d->r * sizeof(float) + (AD(a)->dropout > 0 ? (size_t)N * d->in : 0);
}

/* scratch: E⊙A (r·in), its gradient (r·in), U (N·r), the dropped input (N·in) */
static size_t ada_scratch(const adapter *a, const peft_model *m, int N) {
    (void)m;
    const adalora *h = AD(a);
    size_t s = 0;
    for (int k = 0; k < h->n_mods; k++) {
        const ada_mod *d = &h->mods[k];
        s = PEFT_MAX(s, 2 * (size_t)d->r * d->in + (size_t)N * d->r + (size_t)N * d->in);
    }
    return s;
}

static void form_ea(const ada_mod *d, float *EA) {
    for (int i = 0; i < d->r; i++)
        for (int j = 0; j < d->in; j++) EA[(size_t)i * d->in + j] = d->A[(size_t)i * d->in + j] * d->E[i];
}

/* the dropped input into xd: x ⊙ mask / (1 − p) */
static void dropped(const adalora *h, const ada_mod *d, const lin_call *c, const uint8_t *mask, float *xd) {
    const float sc = 1.0f / (1.0f - h->dropout);
    for (size_t q = 0; q < (size_t)c->N * d->in; q++) xd[q] = mask[q] ? c->x[q] * sc : 0.0f;
}

static int ada_fwd(const adapter *a, const lin_call *c) {
    const adalora *h = AD(a);
    const ada_mod *d = mod_at(a, c->l, c->r);
    const int N = c->N, in = c->in, r = d->r;
    float *T = c->act, *EA = c->scr, *xd = EA + 2 * (size_t)r * in + (size_t)N * r;
    const float *x = c->x;
    if (drops(a, c)) {
        uint8_t *mask = (uint8_t *)(T + (size_t)N * r);
        peft_rng rng;
        peft_rng_seed(&rng, c->seed * 1000003ULL + (uint64_t)(d - h->mods));
        for (size_t q = 0; q < (size_t)N * in; q++) mask[q] = peft_rng_uniform(&rng) >= h->dropout;
        dropped(h, d, c, mask, xd);
        x = xd;
    }
    form_ea(d, EA);
    /* T = x·(E⊙A)ᵀ;  y += s·T·Bᵀ */
    kern_gemm_rows(false, true, N, r, in, 1.0f, x, in, EA, in, 0.0f, T, r, c->nt);
    kern_gemm_rows(false, true, N, c->out, r, h->scale, T, r, d->B, r, 1.0f, c->y, c->ldy, c->nt);
    return 0;
}

/* U = s·dy·B (N, r);  gB += s·dyᵀ·T;  G = Uᵀ·x (the gradient of E⊙A, r×in);
 * gA += E ⊙ G (row-wise);  gE_i += Σ_j A_ij·G_ij;  dx += drop'(U·(E⊙A)) */
static int ada_bwd(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx) {
    const adalora *h = AD(a);
    const ada_mod *d = mod_at(a, c->l, c->r);
    const int N = c->N, in = c->in, out = c->out, r = d->r;
    const float *T = c->act;
    float *EA = c->scr, *G = EA + (size_t)r * in, *U = G + (size_t)r * in, *xd = U + (size_t)N * r;
    const uint8_t *mask = drops(a, c) ? (const uint8_t *)(T + (size_t)N * r) : NULL;
    const float *x = c->x;
    if (mask) {
        dropped(h, d, c, mask, xd);
        x = xd;
    }
    form_ea(d, EA);
    kern_gemm_rows(false, false, N, r, out, h->scale, dy, lddy, d->B, r, 0.0f, U, r, c->nt);
    kern_gemm_rows(true, false, out, r, N, h->scale, dy, lddy, T, r, 1.0f, d->gB, r, c->nt);
    kern_gemm_rows(true, false, r, in, N, 1.0f, U, r, x, in, 0.0f, G, in, c->nt);
    for (int i = 0; i < r; i++) {
        const float *gi = G + (size_t)i * in, *ai = d->A + (size_t)i * in;
        float *gai = d->gA + (size_t)i * in;
        double acc = 0;
        for (int j = 0; j < in; j++) {
            gai[j] += d->E[i] * gi[j];
            acc += (double)ai[j] * gi[j];
        }
        d->gE[i] += (float)acc;
    }
    if (!dx) return 0;
    if (!mask) {
        kern_gemm_rows(false, false, N, in, r, 1.0f, U, r, EA, in, 1.0f, dx, in, c->nt);
        return 0;
    }
    /* through the dropout: xd (free now) takes U·(E⊙A), then its kept entries scaled */
    kern_gemm_rows(false, false, N, in, r, 1.0f, U, r, EA, in, 0.0f, xd, in, c->nt);
    const float sc = 1.0f / (1.0f - h->dropout);
    for (size_t q = 0; q < (size_t)N * in; q++)
        if (mask[q]) dx[q] += xd[q] * sc;
    return 0;
}

static int ada_lowest(const adapter *a, const peft_model *m) {
    (void)m;
    const adalora *h = AD(a);
    int lo = a->n_layer;
    for (int k = 0; k < h->n_mods; k++)
        if (h->mods[k].idx >= 0) lo = PEFT_MIN(lo, h->mods[k].layer);
    return lo;
}

/* ---- training: the orthogonal regulariser and the rank allocator --------------------------------- */

/* ‖P·Pᵀ − I‖_F of P (n, k) (rows: A), or with `cols` ‖Pᵀ·P − I‖_F (B),
 * adding c·d‖·‖/dP = c·2·(C − I)·P / ‖·‖ (rows) or c·2·P·(C − I) / ‖·‖ to g */
static double orth_term(const float *P, float *g, int n, int k, bool cols, double c, double *M) {
    const int q = cols ? k : n;   /* C is q × q */
    for (int i = 0; i < q; i++)
        for (int j = 0; j < q; j++) {
            double s = 0;
            if (cols)
                for (int t = 0; t < n; t++) s += (double)P[(size_t)t * k + i] * P[(size_t)t * k + j];
            else
                for (int t = 0; t < k; t++) s += (double)P[(size_t)i * k + t] * P[(size_t)j * k + t];
            M[(size_t)i * q + j] = s - (i == j);
        }
    double f = 0;
    for (size_t t = 0; t < (size_t)q * q; t++) f += M[t] * M[t];
    f = sqrt(f);
    if (!(f > 0)) return f;   /* exactly orthogonal: torch's norm backward gives 0 there */
    const double cf = 2.0 * c / f;
    if (!cols) {
        /* A (n, k): dA = cf·M·A */
        for (int i = 0; i < n; i++)
            for (int t = 0; t < k; t++) {
                double s = 0;
                for (int j = 0; j < n; j++) s += M[(size_t)i * n + j] * P[(size_t)j * k + t];
                g[(size_t)i * k + t] += (float)(cf * s);
            }
    } else {
        /* B (n, k): dB = cf·B·M */
        for (int t = 0; t < n; t++)
            for (int i = 0; i < k; i++) {
                double s = 0;
                for (int j = 0; j < k; j++) s += (double)P[(size_t)t * k + j] * M[(size_t)j * k + i];
                g[(size_t)t * k + i] += (float)(cf * s);
            }
    }
    return f;
}

static int ada_extra_loss(adapter *a, const peft_model *m, double *loss, peft_err *err) {
    (void)m;
    const adalora *h = AD(a);
    *loss = 0;
    int n = 0, rmax = 0;
    for (int k = 0; k < h->n_mods; k++)
        if (h->mods[k].idx >= 0) n += 2, rmax = PEFT_MAX(rmax, h->mods[k].r);
    if (!n || h->orth_w == 0) return 0;
    double *M = peft_malloc((size_t)rmax * rmax * sizeof(double), err);
    if (!M) return PEFT_ERR_NOMEM;
    const double c = (double)h->orth_w / n;
    double R = 0;
    for (int k = 0; k < h->n_mods; k++) {
        const ada_mod *d = &h->mods[k];
        if (d->idx < 0) continue;
        R += orth_term(d->A, d->gA, d->r, d->in, false, c, M);
        R += orth_term(d->B, d->gB, d->out, d->r, true, c, M);
    }
    free(M);
    *loss = (double)h->orth_w * (R / n);
    return 0;
}

static int ada_train_check(const adapter *a, peft_err *err) {
    if (AD(a)->cut)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "adalora: this adapter's ranks are already allocated (its config has "
                                                   "a rank_pattern and its tensors are cut to it); training it again is "
                                                   "not supported: train a fresh AdaLoRA adapter, or a LoRA one from it");
    return 0;
}

static int ada_train_begin(adapter *a, const peft_model *m, int total, int start_step, peft_err *err) {
    (void)m;
    adalora *h = AD(a);
    int rc = schedule_check(h, total, err);
    if (rc) return rc;
    if (start_step > 0)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "adalora: resuming is not supported (the rank allocator's importance "
                                                   "scores are not in checkpoints); start the run again");
    h->total_step = total;
    free(h->ipt_bar);
    free(h->unc);
    h->n_ema = a->n_params;
    h->ipt_bar = peft_calloc((size_t)a->n_params + 1, sizeof(float), err);
    h->unc = peft_calloc((size_t)a->n_params + 1, sizeof(float), err);
    return h->ipt_bar && h->unc ? 0 : PEFT_ERR_NOMEM;
}

/* HF's budget_schedule: the triplets kept after step s and whether s masks */
static int budget_at(const adalora *h, int init_bgt, int target_bgt, int s, bool *mask) {
    if (s <= h->tinit) { *mask = false; return init_bgt; }
    if (s > h->total_step - h->tfinal) { *mask = true; return target_bgt; }
    const double mul = 1.0 - (double)(s - h->tinit) / (double)(h->total_step - h->tfinal - h->tinit);
    *mask = s % h->delta_t == 0;
    return (int)((double)(init_bgt - target_bgt) * (mul * mul * mul) + target_bgt);
}

static void update_ipt(adapter *a, adalora *h) {
    const float b1 = h->beta1, c1 = (float)(1.0 - (double)h->beta1), b2 = h->beta2, c2 = (float)(1.0 - (double)h->beta2);
    for (int k = 0; k < h->n_mods; k++) {
        const ada_mod *d = &h->mods[k];
        if (d->idx < 0) continue;
        const int64_t n = (int64_t)d->r * d->in + (int64_t)d->out * d->r + d->r;
        for (int64_t q = d->off; q < d->off + n; q++) {
            const float ipt = fabsf(a->params[q] * a->grads[q]);
            const float bar = b1 * h->ipt_bar[q] + c1 * ipt;
            h->ipt_bar[q] = bar;
            h->unc[q] = b2 * h->unc[q] + c2 * fabsf(ipt - bar);
        }
    }
}

static int cmp_float(const void *x, const void *y) {
    const float a = *(const float *)x, b = *(const float *)y;
    return (a > b) - (a < b);
}

/* HF's mask_to_budget: every triplet scoring at or below the (init − budget)-th
 * smallest score is masked (E_i = 0) and the rank pattern records it */
static int mask_to_budget(adalora *h, int init_bgt, int budget, peft_err *err) {
    const int kth = init_bgt - budget;
    if (kth <= 0) return 0;
    float *score = peft_malloc((size_t)init_bgt * 2 * sizeof(float) + 1, err);
    if (!score) return PEFT_ERR_NOMEM;
    float *sorted = score + init_bgt;
    int t = 0;
    for (int k = 0; k < h->n_mods; k++) {
        const ada_mod *d = &h->mods[k];
        if (d->idx < 0) continue;
        const float *sa = h->ipt_bar + d->off, *ua = h->unc + d->off;
        const int64_t ob = (int64_t)d->r * d->in, oe = ob + (int64_t)d->out * d->r;
        for (int i = 0; i < d->r; i++) {
            /* torch: mean over a row of A, a column of B of the element scores (f32), then E + (A + B) */
            double sa_i = 0, sb_i = 0;
            for (int j = 0; j < d->in; j++) sa_i += (double)(sa[(size_t)i * d->in + j] * ua[(size_t)i * d->in + j]);
            for (int o = 0; o < d->out; o++) {
                const int64_t q = ob + (int64_t)o * d->r + i;
                sb_i += (double)(sa[q] * ua[q]);
            }
            const float ma = (float)(sa_i / d->in), mb = (float)(sb_i / d->out);
            score[t++] = sa[oe + i] * ua[oe + i] + (ma + mb);
        }
    }
    memcpy(sorted, score, (size_t)t * sizeof(float));
    qsort(sorted, (size_t)t, sizeof(float), cmp_float);
    const float thr = sorted[kth - 1];
    t = 0;
    for (int k = 0; k < h->n_mods; k++) {
        ada_mod *d = &h->mods[k];
        if (d->idx < 0) continue;
        for (int i = 0; i < d->r; i++, t++) {
            d->keep[i] = !(score[t] <= thr);
            if (!d->keep[i]) d->E[i] = 0.0f;
        }
    }
    h->has_pattern = true;
    free(score);
    return 0;
}

static int ada_step_end(adapter *a, const peft_model *m, int s, int total, peft_err *err) {
    (void)m;
    adalora *h = AD(a);
    if (!h->ipt_bar || total != h->total_step)
        return peft_fail(err, PEFT_ERR_INVALID, "adalora: step %d of a run the method was not started for", s);
    int init_bgt = 0;
    for (int k = 0; k < h->n_mods; k++) init_bgt += h->mods[k].idx >= 0 ? h->mods[k].r : 0;
    const int target_bgt = h->target_r * h->n_mods, fin = h->total_step - h->tfinal;
    if (s < fin) {
        update_ipt(a, h);
        bool mask;
        const int b = budget_at(h, init_bgt, target_bgt, s, &mask);
        return mask ? mask_to_budget(h, init_bgt, b, err) : 0;
    }
    if (s == fin) {
        int rc = mask_to_budget(h, init_bgt, target_bgt, err);
        memset(h->ipt_bar, 0, (size_t)h->n_ema * sizeof(float));
        memset(h->unc, 0, (size_t)h->n_ema * sizeof(float));
        return rc;
    }
    for (int k = 0; h->has_pattern && k < h->n_mods; k++)
        for (int i = 0; i < h->mods[k].r; i++)
            if (!h->mods[k].keep[i]) h->mods[k].E[i] = 0.0f;
    return 0;
}

/* ---- saving: cut to the rank pattern, as HF's save_pretrained ---------------------------------------- */

static int ada_save(const adapter *a, const peft_model *m, const char *dir, peft_err *err) {
    const adalora *h = AD(a);
    char *js = adapter_config_json(a, m, err);
    if (!js) return err->code ? err->code : PEFT_ERR_NOMEM;
    if (h->cut || !h->has_pattern) {
        const int rc = adapter_write_folder(a, m, dir, js, err);
        free(js);
        return rc;
    }
    /* a view of a whose A, B, E hold the kept triplets only */
    adapter v;
    memcpy(&v, a, sizeof v);
    adapter_tensor *tt = peft_malloc((size_t)a->n_tensors * sizeof *tt + 1, err);
    float *buf = peft_malloc((size_t)a->n_params * sizeof(float) + 1, err);
    int rc = tt && buf ? 0 : PEFT_ERR_NOMEM;
    if (!rc) {
        memcpy(tt, a->tensors, (size_t)a->n_tensors * sizeof *tt);
        float *w = buf;
        for (int k = 0; k < h->n_mods; k++) {
            const ada_mod *d = &h->mods[k];
            if (d->idx < 0) continue;
            int kept = 0;
            for (int i = 0; i < d->r; i++) kept += d->keep[i];
            adapter_tensor *t = &tt[d->idx];
            if (!kept) {
                t[0].saved = t[1].saved = t[2].saved = false;
                continue;
            }
            t[0].p = w;
            for (int i = 0; i < d->r; i++)
                if (d->keep[i]) memcpy(w, d->A + (size_t)i * d->in, (size_t)d->in * sizeof(float)), w += d->in;
            t[1].p = w;
            for (int o = 0; o < d->out; o++)
                for (int i = 0; i < d->r; i++)
                    if (d->keep[i]) *w++ = d->B[(size_t)o * d->r + i];
            t[2].p = w;
            for (int i = 0; i < d->r; i++)
                if (d->keep[i]) *w++ = d->E[i];
            t[0].shape[0] = kept, t[0].n = (int64_t)kept * d->in;
            t[1].shape[1] = kept, t[1].n = (int64_t)d->out * kept;
            t[2].shape[0] = kept, t[2].n = kept;
        }
        v.tensors = tt;
        rc = adapter_write_folder(&v, m, dir, js, err);
    }
    free(tt);
    free(buf);
    free(js);
    return rc;
}

/* ---- merge: W + s·B·(E⊙A) --------------------------------------------------------------------------- */

static bool ada_touches(const adapter *a, int l, model_linear_role r) { return ada_kind(a, l, r) == HOOK_ADD; }

static void ada_merge_row(const adapter *a, int l, model_linear_role r, float *row, int64_t q, bool transposed,
                          int64_t n_cols) {
    const adalora *h = AD(a);
    const ada_mod *d = mod_at(a, l, r);
    for (int64_t c = 0; c < n_cols; c++) {
        const int64_t o = transposed ? c : q, i = transposed ? q : c;
        float acc = 0.0f;
        for (int k = 0; k < d->r; k++) acc += d->B[(size_t)o * d->r + k] * d->E[k] * d->A[(size_t)k * d->in + i];
        row[c] += h->scale * acc;
    }
}

static void ada_describe(const adapter *a, char *buf, size_t cap) {
    const adalora *h = AD(a);
    int kept = 0, held = 0;
    for (int k = 0; k < h->n_mods; k++)
        for (int i = 0; i < (h->mods[k].idx >= 0 ? h->mods[k].r : 0); i++) held++, kept += h->mods[k].keep[i] || h->cut;
    snprintf(buf, cap, "init_r=%d target_r=%d alpha=%g scale=%g tinit=%d tfinal=%d deltaT=%d orth_reg_weight=%g on %d "
                       "modules (%d of %d triplets kept)",
             h->init_r, h->target_r, (double)h->alpha, (double)h->scale, h->tinit, h->tfinal, h->delta_t,
             (double)h->orth_w, h->n_mods, kept, held);
}

static const method_option ada_options[] = {
    {"init-r", "N", "AdaLoRA: the rank every module starts with (default 12)"},
    {"target-r", "N", "AdaLoRA: the average rank left at the end (default 8)"},
    {"tinit", "N", "AdaLoRA: steps before the budget starts to shrink (default 0)"},
    {"tfinal", "N", "AdaLoRA: steps at the end with the final ranks fixed (default 0)"},
    {"deltaT", "N", "AdaLoRA: steps between two reallocations (default 1)"},
    /* HF's beta1 / beta2; --beta1 / --beta2 are AdamW's */
    {"adalora-beta1", "B", "AdaLoRA: EMA factor of the importance scores (HF beta1, default 0.85)"},
    {"adalora-beta2", "B", "AdaLoRA: EMA factor of their uncertainty (HF beta2, default 0.85)"},
    {"orth-reg-weight", "W", "AdaLoRA: weight of the orthogonality regulariser (default 0.5)"},
    {"alpha", "A", "lora_alpha: the scale is alpha/init_r (AdaLoRA default 8)"},
    {"dropout", "P", METHOD_HELP_DROPOUT},
    {"target", "LIST", METHOD_HELP_TARGET},
    {"layers", "LIST", METHOD_HELP_LAYERS},
    {NULL, NULL, NULL},
};

const method_ops method_adalora = {
    .name = "adalora",
    .peft_type = "ADALORA",
    .summary = "AdaLoRA: ΔW = B·(E⊙A)·alpha/init_r, ranks reallocated from init_r to target_r by importance",
    .options = ada_options,
    .check = ada_check,
    .create = ada_create,
    .wire = ada_wire,
    .init = ada_init,
    .free_priv = ada_free,
    .config_write = ada_config_write,
    .config_read = ada_config_read,
    .train_check = ada_train_check,
    .save = ada_save,
    .lin_kind = ada_kind,
    .lin_act_bytes = ada_act_bytes,
    .scratch_floats = ada_scratch,
    .lin_fwd = ada_fwd,
    .lin_bwd = ada_bwd,
    .lowest_layer = ada_lowest,
    .merge_touches = ada_touches,
    .merge_row = ada_merge_row,
    .describe = ada_describe,
    .train_begin = ada_train_begin,
    .extra_loss = ada_extra_loss,
    .step_end = ada_step_end,
};
