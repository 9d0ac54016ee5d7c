/* loha.c — LoHa (LyCORIS low-rank Hadamard product; HF PEFT peft_type LOHA):
 * per adapted linear four trained factors whose two low-rank products are
 * multiplied element-wise.
 *
 *   w1_a, w2_a (out, r)   w1_b, w2_b (r, in)   s = alpha / r
 *   P1 = w1_a·w1_b, P2 = w2_a·w2_b (out, in)
 *   ΔW = s · P1 ⊙ P2                          (rank ≤ r²)
 *   y  = x·Wᵀ + b + x·ΔWᵀ                     (the base bias untouched)
 *
 * Two ways to apply ΔW, the same function (checked against each other by the
 * tests), chosen per linear and per call by their cost:
 *   dense     form P1, P2 and ΔW (out·in) and multiply, as HF does; cheap
 *             when r² is large against out·in / (out + in);
 *   factored  ΔW = s · A'·B' with the Khatri–Rao factors
 *               A'[o, j·r+k] = w1_a[o, j]·w2_a[o, k]   (out, r²)
 *               B'[j·r+k, i] = w1_b[j, i]·w2_b[k, i]   (r², in)
 *             so y += s·(x·B'ᵀ)·A'ᵀ: a rank-r² LoRA, N·r²·(in + out) per
 *             call instead of out·in·(N + 2r); always taken when decoding
 *             one token, and for small r in training.
 *
 * Training only: rank_dropout p keeps output row o of ΔW with probability
 * 1 - p, one mask per call shared by the call's tokens, rescaled by the mask's
 * mean (HF's LoHa does this; if every row drops the term is 0 where HF would
 * divide by zero); module_dropout q skips the whole term of a call with
 * probability q (no rescaling).
 *
 * Fresh adapters: w1_a, w1_b, w2_a kaiming-uniform (a = √5) and w2_b = 0, so
 * ΔW = 0 (HF's init_weights = true; with false, w2_b is kaiming too). Files:
 * base_model.model.<module>.hada_w1_a / hada_w1_b / hada_w2_a / hada_w2_b
 * (no ".weight"). rank_pattern / alpha_pattern give a module its own r / alpha
 * by HF's rule: the first key k (in file order) for which the module's name
 * matches (.*\.)?(k)$ from its start.
 *
 * HF PEFT refuses LoHa on GPT-2's Conv1D linears, so this does too. */
#include "core/limits.h"
#include "peft/lora.h"
#include "peft/method.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    int layer, role, in, out, r;
    float alpha, scale;
    int idx;                      /* registry index of hada_w1_a; w1_b, w2_a, w2_b follow */
    float *w1a, *w1b, *w2a, *w2b;
    float *g1a, *g1b, *g2a, *g2b;
} loha_mod;

typedef struct {
    int r;
    float alpha, rank_dropout, module_dropout;
    bool init_weights;
    cJSON *rank_pattern, *alpha_pattern;   /* as given (written back as is), objects */
    int n_mods;
    loha_mod *mods;
    int *mod_of;                  /* per slot: module index, or -1 */
} loha;

#define L(a) ((loha *)(a)->priv)

static void loha_free(adapter *a) {
    loha *h = L(a);
    if (!h) return;
    cJSON_Delete(h->rank_pattern);
    cJSON_Delete(h->alpha_pattern);
    free(h->mods);
    free(h->mod_of);
    free(h);
    a->priv = NULL;
}

/* ---- rank_pattern / alpha_pattern ------------------------------------------------------ */

/* key as HF's get_pattern_key uses it: re.match(rf"(.*\.)?({key})$", name).
 * Errors start with `where` (the config file, or "loha"). */
static int compile_key(const char *key, const char *what, const char *where, pcre2_code **out, peft_err *err) {
    const size_t kl = strlen(key);
    char *src = peft_malloc(kl + 16, err);
    if (!src) return PEFT_ERR_NOMEM;
    snprintf(src, kl + 16, "(.*\\.)?(%s)$", key);
    int ec;
    PCRE2_SIZE eo;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)src, PCRE2_ZERO_TERMINATED, PCRE2_ANCHORED | PCRE2_UTF, &ec, &eo, NULL);
    free(src);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(ec, msg, sizeof msg);
        return peft_fail(err, PEFT_ERR_INVALID, "%s: %s key \"%.200s\" is not a regular expression: %s", where, what,
                         key, (const char *)msg);
    }
    *out = re;
    return 0;
}

/* The value of the first key of pat that matches name; *hit false when
 * none does. */
static int pattern_lookup(const cJSON *pat, const char *what, const char *name, double *val, bool *hit, peft_err *err) {
    *hit = false;
    for (const cJSON *it = pat ? pat->child : NULL; it; it = it->next) {
        pcre2_code *re = NULL;
        const int rc = compile_key(it->string, what, "loha", &re, err);
        if (rc) return rc;
        pcre2_match_data *md = pcre2_match_data_create_from_pattern(re, NULL);
        if (!md) { pcre2_code_free(re); return peft_fail(err, PEFT_ERR_NOMEM, "loha: out of memory matching %s", what); }
        const int mrc = pcre2_match(re, (PCRE2_SPTR)name, strlen(name), 0, 0, md, NULL);
        pcre2_match_data_free(md);
        pcre2_code_free(re);
        if (mrc >= 0) {
            *val = it->valuedouble;
            *hit = true;
            return 0;
        }
    }
    return 0;
}

/* Every value of pat a number in [lo, hi] (an integer with `integral`),
 * every key a regular expression. */
static int pattern_check(const cJSON *pat, const char *what, double lo, double hi, bool integral, const char *where,
                         peft_err *err) {
    for (const cJSON *it = pat->child; it; it = it->next) {
        if (!cJSON_IsNumber(it) || !isfinite(it->valuedouble) || it->valuedouble < lo || it->valuedouble > hi ||
            (integral && it->valuedouble != floor(it->valuedouble)))
            return peft_fail(err, PEFT_ERR_INVALID, "%s: %s[\"%.200s\"] must be %s in [%g, %g]", where, what,
                             it->string, integral ? "an integer" : "a number", lo, hi);
        pcre2_code *re = NULL;
        const int rc = compile_key(it->string, what, where, &re, err);
        if (rc) return rc;
        pcre2_code_free(re);
    }
    return 0;
}

/* A pattern option (JSON object text) into an object whose values are numbers
 * in [lo, hi] (integers with `integral`); NULL when absent. */
static int pattern_parse(const method_config *mc, const char *key, double lo, double hi, bool integral, cJSON **out,
                         peft_err *err) {
    *out = NULL;
    char buf[sizeof mc->options];
    const char *v = method_option_get(mc, key, buf, sizeof buf);
    if (!v) return 0;
    cJSON *o = cJSON_Parse(v);
    if (!o || !cJSON_IsObject(o)) {
        cJSON_Delete(o);
        return peft_fail(err, PEFT_ERR_INVALID, "loha: %s must be a JSON object {\"module regex\": value}, got \"%.200s\"",
                         key, v);
    }
    int rc = pattern_check(o, key, lo, hi, integral, "loha", err);
    if (rc) cJSON_Delete(o);
    else *out = o;
    return rc;
}

/* ---- creation ----------------------------------------------------------------------------- */

/* mc's r, alpha and options into h (0: the method's default, HF's r =
 * alpha = 8). */
static int loha_options_read(const method_config *mc, loha *h, peft_err *err) {
    h->r = mc->r > 0 ? mc->r : 8;
    double alpha = mc->alpha > 0 ? mc->alpha : 8, rd = 0, md = 0;
    bool init = true;
    int rc;
    if ((rc = method_option_float(mc, "alpha", 0, 1e6, &alpha, err)) ||
        (rc = method_option_float(mc, "rank_dropout", 0, 0.999, &rd, err)) ||
        (rc = method_option_float(mc, "module_dropout", 0, 1, &md, err)) ||
        (rc = method_option_bool(mc, "init_weights", &init, err)) ||
        (rc = pattern_parse(mc, "rank_pattern", 1, PEFT_MAX_RANK, true, &h->rank_pattern, err)) ||
        (rc = pattern_parse(mc, "alpha_pattern", 0, 1e6, false, &h->alpha_pattern, err)))
        return rc;
    h->alpha = (float)alpha;
    h->rank_dropout = (float)rd;
    h->module_dropout = (float)md;
    h->init_weights = init;
    if (h->r > PEFT_MAX_RANK) return peft_fail(err, PEFT_ERR_INVALID, "loha: r must be in 1..%d, got %d", PEFT_MAX_RANK, h->r);
    if (mc->dropout > 0)
        return peft_fail(err, PEFT_ERR_INVALID, "loha: LoHa has no input dropout (use rank_dropout or module_dropout)");
    return 0;
}

static int loha_check(const method_config *mc, peft_err *err) {
    loha h;
    memset(&h, 0, sizeof h);
    const int rc = loha_options_read(mc, &h, err);
    cJSON_Delete(h.rank_pattern);
    cJSON_Delete(h.alpha_pattern);
    return rc;
}

static int loha_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    loha *h = peft_calloc(1, sizeof *h, err);
    if (!h) return PEFT_ERR_NOMEM;
    a->priv = h;
    if (m->cfg.desc->hf_conv1d)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "loha: %s (%s) stores its linears as Conv1D layers; LoHa "
                                                    "takes nn.Linear layers only (HF PEFT refuses Conv1D too)", m->path,
                         m->cfg.arch_name);
    int rc = loha_options_read(mc, h, err);
    if (rc) return rc;
    const int ns = m->cfg.n_layer * ROLE_N_LINEAR;
    bool *slots = peft_calloc((size_t)ns + 1, sizeof *slots, err);
    h->mod_of = peft_malloc(((size_t)ns + 1) * sizeof *h->mod_of, err);
    h->mods = peft_calloc((size_t)ns + 1, sizeof *h->mods, err);
    if (!slots || !h->mod_of || !h->mods) { free(slots); return PEFT_ERR_NOMEM; }
    if ((rc = method_target_slots(m, mc, "loha", slots, err))) { free(slots); return rc; }
    int n = 0;
    for (int s = 0; s < ns && !rc; s++) {
        h->mod_of[s] = slots[s] ? n : -1;
        if (!slots[s]) continue;
        loha_mod *d = &h->mods[n++];
        d->layer = s / ROLE_N_LINEAR;
        d->role = s % ROLE_N_LINEAR;
        const kern_weight *w = &m->layers[d->layer].lin[d->role].w;
        d->in = (int)w->cols;
        d->out = (int)w->rows;
        char path[200], key[256];
        if (model_linear_hf_path(m, d->layer, (model_linear_role)d->role, path, sizeof path)) {
            rc = peft_fail(err, PEFT_ERR_INVALID, "loha: linear %d of layer %d has no HF name", d->role, d->layer);
            break;
        }
        double v;
        bool hit;
        d->r = h->r;
        d->alpha = h->alpha;
        if ((rc = pattern_lookup(h->rank_pattern, "rank_pattern", path, &v, &hit, err))) break;
        if (hit) d->r = (int)v;
        if ((rc = pattern_lookup(h->alpha_pattern, "alpha_pattern", path, &v, &hit, err))) break;
        if (hit) d->alpha = (float)v;
        d->scale = d->alpha / (float)d->r;
        static const char *const names[4] = {"hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b"};
        for (int t = 0; t < 4 && !rc; t++) {
            snprintf(key, sizeof key, "base_model.model.%s.%s", path, names[t]);
            const int64_t d0 = t % 2 ? d->r : d->out, d1 = t % 2 ? d->in : d->r;
            const int idx = adapter_add_tensor(a, key, 2, d0, d1, true, err);
            if (idx < 0) rc = PEFT_ERR_NOMEM;
            if (t == 0) d->idx = idx;
        }
    }
    h->n_mods = n;
    free(slots);
    return rc;
}

static int loha_wire(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    loha *h = L(a);
    for (int k = 0; k < h->n_mods; k++) {
        loha_mod *d = &h->mods[k];
        const adapter_tensor *t = &a->tensors[d->idx];
        d->w1a = t[0].p, d->w1b = t[1].p, d->w2a = t[2].p, d->w2b = t[3].p;
        d->g1a = t[0].g, d->g1b = t[1].g, d->g2a = t[2].g, d->g2b = t[3].g;
    }
    return 0;
}

static int loha_init(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err) {
    (void)m;
    (void)err;
    loha *h = L(a);
    for (int k = 0; k < h->n_mods; k++) {
        const loha_mod *d = &h->mods[k];
        const int64_t ra = (int64_t)d->out * d->r, rb = (int64_t)d->r * d->in;
        adapter_kaiming_uniform(d->w1a, ra, d->r, rng);
        adapter_kaiming_uniform(d->w1b, rb, d->in, rng);
        adapter_kaiming_uniform(d->w2a, ra, d->r, rng);
        if (h->init_weights) memset(d->w2b, 0, (size_t)rb * sizeof(float));
        else adapter_kaiming_uniform(d->w2b, rb, d->in, rng);
    }
    return 0;
}

/* ---- adapter_config.json -------------------------------------------------------------------- */

static int loha_config_write(const adapter *a, const peft_model *m, cJSON *o) {
    const loha *h = L(a);
    uint32_t t = 0;
    for (int k = 0; k < h->n_mods; k++) t |= 1u << h->mods[k].role;
    cJSON *rp = h->rank_pattern ? cJSON_Duplicate(h->rank_pattern, true) : cJSON_CreateObject();
    cJSON *ap = h->alpha_pattern ? cJSON_Duplicate(h->alpha_pattern, true) : cJSON_CreateObject();
    bool ok = rp && ap && cJSON_AddItemToObject(o, "rank_pattern", rp);
    if (!ok) cJSON_Delete(rp);
    ok = ok && cJSON_AddItemToObject(o, "alpha_pattern", ap);
    if (!ok) cJSON_Delete(ap);
    ok = ok && cJSON_AddNumberToObject(o, "r", h->r) && cJSON_AddNumberToObject(o, "alpha", h->alpha) &&
         cJSON_AddNumberToObject(o, "rank_dropout", h->rank_dropout) &&
         cJSON_AddNumberToObject(o, "module_dropout", h->module_dropout) &&
         cJSON_AddBoolToObject(o, "use_effective_conv2d", false) && cJSON_AddNullToObject(o, "exclude_modules") &&
         cJSON_AddBoolToObject(o, "init_weights", h->init_weights) && cJSON_AddNullToObject(o, "layers_pattern");
    return ok ? method_write_targets(m, t, o) : PEFT_ERR_NOMEM;
}

/* Appends ";key=value" to mc->options. */
static int add_option(method_config *mc, const char *key, const char *value, const char *path, peft_err *err) {
    const size_t len = strlen(mc->options);
    if (strchr(value, ';') ||
        snprintf(mc->options + len, sizeof mc->options - len, "%s%s=%s", len ? ";" : "", key, value) >=
            (int)(sizeof mc->options - len))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: \"%s\" is longer than %zu bytes or holds ';'", path, key,
                         sizeof mc->options / 2);
    return 0;
}

static int loha_config_read(const cJSON *o, const char *path, const peft_model *m, method_config *mc, peft_err *err) {
    double r, alpha, rd, md;
    bool init, conv;
    int rc;
    if ((rc = method_read_number(o, "r", 8, 1, PEFT_MAX_RANK, &r, path, err)) ||
        (rc = method_read_number(o, "alpha", 8, 0, 1e6, &alpha, path, err)) ||
        (rc = method_read_number(o, "rank_dropout", 0, 0, 0.999, &rd, path, err)) ||
        (rc = method_read_number(o, "module_dropout", 0, 0, 1, &md, path, err)) ||
        (rc = method_read_bool(o, "init_weights", true, &init, path, err)) ||
        (rc = method_read_bool(o, "use_effective_conv2d", false, &conv, path, err)))
        return rc;
    if (r != floor(r)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"r\" must be an integer", path);
    const cJSON *ex = cJSON_GetObjectItemCaseSensitive(o, "exclude_modules");
    if (ex && !cJSON_IsNull(ex) && !(cJSON_IsArray(ex) && !ex->child) && !(cJSON_IsString(ex) && !*ex->valuestring))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: \"exclude_modules\" is not supported (use target_modules and "
                                                    "layers_to_transform)", path);
    const cJSON *lp = cJSON_GetObjectItemCaseSensitive(o, "layers_pattern");
    if (lp && !cJSON_IsNull(lp) && !(cJSON_IsArray(lp) && !lp->child))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: \"layers_pattern\" is not supported", path);
    mc->r = (int)r;
    mc->alpha = (float)alpha;
    char v[64];
    snprintf(v, sizeof v, "%.9g", alpha);   /* alpha 0 is a value here, not "the default" */
    if ((rc = add_option(mc, "alpha", v, path, err))) return rc;
    snprintf(v, sizeof v, "%.9g", rd);
    if ((rc = add_option(mc, "rank_dropout", v, path, err))) return rc;
    snprintf(v, sizeof v, "%.9g", md);
    if ((rc = add_option(mc, "module_dropout", v, path, err))) return rc;
    if ((rc = add_option(mc, "init_weights", init ? "true" : "false", path, err))) return rc;
    static const char *const pats[2] = {"rank_pattern", "alpha_pattern"};
    for (int i = 0; i < 2; i++) {
        const cJSON *p = cJSON_GetObjectItemCaseSensitive(o, pats[i]);
        if (!p || cJSON_IsNull(p)) continue;
        if (!cJSON_IsObject(p)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" must be an object", path, pats[i]);
        if (!p->child) continue;
        if ((rc = pattern_check(p, pats[i], i ? 0 : 1, i ? 1e6 : PEFT_MAX_RANK, i == 0, path, err))) return rc;
        char *s = cJSON_PrintUnformatted(p);
        if (!s) return peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory reading \"%s\"", path, pats[i]);
        rc = add_option(mc, pats[i], s, path, err);
        free(s);
        if (rc) return rc;
    }
    return adapter_json_targets(m, cJSON_GetObjectItemCaseSensitive(o, "target_modules"), &mc->targets, path, err);
}

/* ---- the hook ----------------------------------------------------------------------------------- */

static hook_kind loha_kind(const adapter *a, int l, model_linear_role r) {
    return L(a)->mod_of[l * ROLE_N_LINEAR + r] >= 0 ? HOOK_ADD : HOOK_NONE;
}

static const loha_mod *mod_at(const adapter *a, int l, model_linear_role r) {
    return &L(a)->mods[L(a)->mod_of[l * ROLE_N_LINEAR + r]];
}

/* Whether N rows go the factored way: its flops, r²·(in + out)·(N + 1),
 * against the dense way's out·in·(N + 2r). */
static bool factored(const loha_mod *d, int N) {
    const double r2 = (double)d->r * d->r;
    return r2 * (d->in + d->out) * (N + 1.0) < (double)d->in * d->out * (N + 2.0 * d->r);
}

static bool has_dropout(const loha *h) { return h->rank_dropout > 0 || h->module_dropout > 0; }

/* kept (floats): with dropout, [0] whether the module ran and [1, 1 + out)
 * the row scale; then, factored, T = x·B'ᵀ (N, r²) */
static size_t act_floats(const loha *h, const loha_mod *d, int N) {
    return (has_dropout(h) ? 1 + (size_t)d->out : 0) + (factored(d, N) ? (size_t)N * d->r * d->r : 0);
}

static size_t loha_act_bytes(const adapter *a, int l, model_linear_role r, int N) {
    return act_floats(L(a), mod_at(a, l, r), N) * sizeof(float);
}

/* Floats of scratch of one module's backward (the forward needs less):
 * dense P1, P2, ΔW / gW (out·in each); factored A', dA' (out·r²), B', dB'ᵀ
 * (r²·in), U (N·r²); with rank dropout the masked dy (N·out). */
static size_t mod_scratch(const loha *h, const loha_mod *d, int N) {
    const size_t r2 = (size_t)d->r * d->r;
    const size_t base = factored(d, N) ? 2 * r2 * ((size_t)d->out + d->in) + (size_t)N * r2 : 3 * (size_t)d->out * d->in;
    return base + (h->rank_dropout > 0 ? (size_t)N * d->out : 0);
}

static size_t loha_scratch(const adapter *a, const peft_model *m, int N) {
    (void)m;
    const loha *h = L(a);
    size_t s = 0;
    for (int k = 0; k < h->n_mods; k++) s = PEFT_MAX(s, mod_scratch(h, &h->mods[k], N));
    return s;
}

/* A'[o, j·r+k] = w1_a[o, j]·w2_a[o, k]  (out, r²) */
static void form_a(const loha_mod *d, float *A) {
    const int r = d->r, r2 = r * r;
    for (int o = 0; o < d->out; o++) {
        const float *a1 = d->w1a + (size_t)o * r, *a2 = d->w2a + (size_t)o * r;
        float *row = A + (size_t)o * r2;
        for (int j = 0; j < r; j++)
            for (int k = 0; k < r; k++) row[j * r + k] = a1[j] * a2[k];
    }
}

/* B'[j·r+k, i] = w1_b[j, i]·w2_b[k, i]  (r², in) */
static void form_b(const loha_mod *d, float *B) {
    const int r = d->r, in = d->in;
    for (int j = 0; j < r; j++)
        for (int k = 0; k < r; k++) {
            const float *b1 = d->w1b + (size_t)j * in, *b2 = d->w2b + (size_t)k * in;
            float *row = B + (size_t)(j * r + k) * in;
            for (int i = 0; i < in; i++) row[i] = b1[i] * b2[i];
        }
}

/* P1 = w1_a·w1_b, P2 = w2_a·w2_b  (out, in) */
static void form_p(const loha_mod *d, float *P1, float *P2, int nt) {
    kern_gemm_rows(false, false, d->out, d->in, d->r, 1.0f, d->w1a, d->r, d->w1b, d->in, 0.0f, P1, d->in, nt);
    kern_gemm_rows(false, false, d->out, d->in, d->r, 1.0f, d->w2a, d->r, d->w2b, d->in, 0.0f, P2, d->in, nt);
}

/* This call's dropout draw into keep[-1] (the module runs) and keep[0, out)
 * (the row scale): one stream per call and module, from the step's seed. */
static void draw_dropout(const loha *h, const loha_mod *d, const lin_call *c, float *kept) {
    peft_rng rng;
    peft_rng_seed(&rng, c->seed * 1000003ULL + (uint64_t)(d - h->mods));
    kept[0] = !(h->module_dropout > 0 && peft_rng_uniform(&rng) < h->module_dropout);
    float *keep = kept + 1;
    int n = 0;
    for (int o = 0; o < d->out; o++) {
        const bool on = !(h->rank_dropout > 0) || peft_rng_uniform(&rng) >= h->rank_dropout;
        keep[o] = on;
        n += on;
    }
    /* divided by the mask's mean, as HF's LoHa; no row kept: the term is 0 */
    const float sc = n ? (float)d->out / (float)n : 0.0f;
    for (int o = 0; o < d->out; o++) keep[o] *= sc;
}

static int loha_fwd(const adapter *a, const lin_call *c) {
    const loha *h = L(a);
    const loha_mod *d = mod_at(a, c->l, c->r);
    const int N = c->N, in = c->in, out = c->out, r2 = d->r * d->r;
    float *act = c->act;
    const float *keep = NULL;
    if (has_dropout(h)) {
        if (c->train) {
            draw_dropout(h, d, c, act);
            if (act[0] == 0.0f) return 0;   /* module dropout: the base output alone */
            if (h->rank_dropout > 0) keep = act + 1;
        }
        act += 1 + out;
    }
    if (factored(d, N)) {
        float *A = c->scr, *B = A + (size_t)out * r2, *T = act;
        form_a(d, A);
        form_b(d, B);
        if (keep)
            for (int o = 0; o < out; o++)
                for (int q = 0; q < r2; q++) A[(size_t)o * r2 + q] *= keep[o];
        /* T (N, r²) = x·B'ᵀ;  y += s·T·A'ᵀ */
        kern_gemm_rows(false, true, N, r2, in, 1.0f, c->x, in, B, in, 0.0f, T, r2, c->nt);
        kern_gemm_rows(false, true, N, out, r2, d->scale, T, r2, A, r2, 1.0f, c->y, c->ldy, c->nt);
        return 0;
    }
    float *P1 = c->scr, *P2 = P1 + (size_t)out * in;
    form_p(d, P1, P2, c->nt);
    /* ΔW (in P1) = s·P1 ⊙ P2, rows scaled by the rank-dropout mask;  y += x·ΔWᵀ */
    for (int o = 0; o < out; o++) {
        const float sc = d->scale * (keep ? keep[o] : 1.0f);
        float *p1 = P1 + (size_t)o * in;
        const float *p2 = P2 + (size_t)o * in;
        for (int i = 0; i < in; i++) p1[i] *= sc * p2[i];
    }
    kern_gemm_rows(false, true, N, out, in, 1.0f, c->x, in, P1, in, 1.0f, c->y, c->ldy, c->nt);
    return 0;
}

/* dy (N, out) → with rank dropout G = dy ⊙ keep (the mask is a constant);
 * then every gradient below uses G:
 *   dense:     dx += G·ΔW;  gW = Gᵀ·x;  dP1 = s·gW ⊙ P2;  dP2 = s·gW ⊙ P1;
 *              dw1_a += dP1·w1_bᵀ, dw1_b += w1_aᵀ·dP1 (w2 likewise with dP2)
 *   factored:  U = G·A' (N, r²);  dx += s·U·B';  dB'ᵀ = s·xᵀ·U (in, r²);
 *              dA' = s·Gᵀ·T (out, r²); then through the Khatri–Rao products
 *              dw1_a[o, j] += Σ_k dA'[o, jr+k]·w2_a[o, k]  (and the other three) */
static int loha_bwd(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx) {
    const loha *h = L(a);
    const loha_mod *d = mod_at(a, c->l, c->r);
    const int N = c->N, in = c->in, out = c->out, r = d->r, r2 = r * r;
    const float *act = c->act;
    const float *keep = NULL;
    if (has_dropout(h)) {
        if (c->train) {
            if (act[0] == 0.0f) return 0;
            if (h->rank_dropout > 0) keep = act + 1;
        }
        act += 1 + out;
    }
    const bool fac = factored(d, N);
    float *scr = c->scr;
    const float *G = dy;
    int ldg = lddy;
    if (keep) {
        float *Gm = scr + mod_scratch(h, d, N) - (size_t)N * out;
        for (int n = 0; n < N; n++)
            for (int o = 0; o < out; o++) Gm[(size_t)n * out + o] = dy[(size_t)n * lddy + o] * keep[o];
        G = Gm;
        ldg = out;
    }
    if (fac) {
        float *A = scr, *dA = A + (size_t)out * r2, *B = dA + (size_t)out * r2, *dBt = B + (size_t)r2 * in,
              *U = dBt + (size_t)r2 * in;
        const float *T = act;
        form_a(d, A);
        form_b(d, B);
        kern_gemm_rows(false, false, N, r2, out, 1.0f, G, ldg, A, r2, 0.0f, U, r2, c->nt);
        if (dx) kern_gemm_rows(false, false, N, in, r2, d->scale, U, r2, B, in, 1.0f, dx, in, c->nt);
        kern_gemm_rows(true, false, in, r2, N, d->scale, c->x, in, U, r2, 0.0f, dBt, r2, c->nt);
        kern_gemm_rows(true, false, out, r2, N, d->scale, G, ldg, T, r2, 0.0f, dA, r2, c->nt);
        for (int o = 0; o < out; o++) {
            const float *row = dA + (size_t)o * r2, *a1 = d->w1a + (size_t)o * r, *a2 = d->w2a + (size_t)o * r;
            float *g1 = d->g1a + (size_t)o * r, *g2 = d->g2a + (size_t)o * r;
            for (int j = 0; j < r; j++)
                for (int k = 0; k < r; k++) {
                    g1[j] += row[j * r + k] * a2[k];
                    g2[k] += row[j * r + k] * a1[j];
                }
        }
        for (int i = 0; i < in; i++) {
            const float *row = dBt + (size_t)i * r2;
            for (int j = 0; j < r; j++) {
                const float b1 = d->w1b[(size_t)j * in + i];
                float acc = 0.0f;
                for (int k = 0; k < r; k++) {
                    acc += row[j * r + k] * d->w2b[(size_t)k * in + i];
                    d->g2b[(size_t)k * in + i] += row[j * r + k] * b1;
                }
                d->g1b[(size_t)j * in + i] += acc;
            }
        }
        return 0;
    }
    float *P1 = scr, *P2 = P1 + (size_t)out * in, *D = P2 + (size_t)out * in;
    form_p(d, P1, P2, c->nt);
    if (dx) {
        for (size_t q = 0; q < (size_t)out * in; q++) D[q] = d->scale * P1[q] * P2[q];
        kern_gemm_rows(false, false, N, in, out, 1.0f, G, ldg, D, in, 1.0f, dx, in, c->nt);
    }
    /* gW (out, in) = Gᵀ·x, then dP1 = s·gW ⊙ P2 (over P2) and dP2 = s·gW ⊙ P1 (over P1) */
    kern_gemm_rows(true, false, out, in, N, 1.0f, G, ldg, c->x, in, 0.0f, D, in, c->nt);
    for (size_t q = 0; q < (size_t)out * in; q++) {
        const float g = d->scale * D[q], p1 = P1[q];
        P1[q] = g * P2[q];
        P2[q] = g * p1;
    }
    const float *dP1 = P1, *dP2 = P2;
    kern_gemm_rows(false, true, out, r, in, 1.0f, dP1, in, d->w1b, in, 1.0f, d->g1a, r, c->nt);
    kern_gemm_rows(true, false, r, in, out, 1.0f, d->w1a, r, dP1, in, 1.0f, d->g1b, in, c->nt);
    kern_gemm_rows(false, true, out, r, in, 1.0f, dP2, in, d->w2b, in, 1.0f, d->g2a, r, c->nt);
    kern_gemm_rows(true, false, r, in, out, 1.0f, d->w2a, r, dP2, in, 1.0f, d->g2b, in, c->nt);
    return 0;
}

static int loha_lowest(const adapter *a, const peft_model *m) {
    (void)m;
    const loha *h = L(a);
    int lo = a->n_layer;
    for (int k = 0; k < h->n_mods; k++) lo = PEFT_MIN(lo, h->mods[k].layer);
    return lo;
}

/* ---- merge: W' = W + ΔW ----------------------------------------------------------------------------- */

static bool loha_touches(const adapter *a, int l, model_linear_role r) { return loha_kind(a, l, r) == HOOK_ADD; }

/* ΔW[o, i] */
static float delta_at(const loha_mod *d, int64_t o, int64_t i) {
    float p1 = 0.0f, p2 = 0.0f;
    for (int j = 0; j < d->r; j++) {
        p1 += d->w1a[(size_t)o * d->r + j] * d->w1b[(size_t)j * d->in + i];
        p2 += d->w2a[(size_t)o * d->r + j] * d->w2b[(size_t)j * d->in + i];
    }
    return d->scale * p1 * p2;
}

static void loha_merge_row(const adapter *a, int l, model_linear_role r, float *row, int64_t q, bool transposed,
                           int64_t n_cols) {
    const loha_mod *d = mod_at(a, l, r);
    for (int64_t k = 0; k < n_cols; k++) row[k] += transposed ? delta_at(d, k, q) : delta_at(d, q, k);
}

static void loha_describe(const adapter *a, char *buf, size_t cap) {
    const loha *h = L(a);
    int64_t n = 0;
    for (int k = 0; k < h->n_mods; k++) n += 2 * (int64_t)h->mods[k].r * (h->mods[k].in + h->mods[k].out);
    snprintf(buf, cap, "r=%d alpha=%g scale=%g rank_dropout=%g module_dropout=%g on %d modules, %lld parameters%s", h->r,
             (double)h->alpha, (double)(h->alpha / (float)h->r), (double)h->rank_dropout, (double)h->module_dropout,
             h->n_mods, (long long)n, h->rank_pattern || h->alpha_pattern ? " (rank/alpha patterns)" : "");
}

static const method_option loha_options[] = {
    {"r", "N", "rank (default 8)"},
    {"alpha", "A", "alpha, the scale is alpha/r (default 8)"},
    {"target", "LIST", METHOD_HELP_TARGET},
    {"layers", "LIST", METHOD_HELP_LAYERS},
    {"rank-dropout", "P", "training: drop each output row of ΔW with probability P per call, rescaled (0)"},
    {"module-dropout", "P", "training: skip the adapter of a linear with probability P per call (0)"},
    {NULL, NULL, NULL},
};

const method_ops method_loha = {
    .name = "loha",
    .peft_type = "LOHA",
    .summary = "LoHa: ΔW = alpha/r · (w1_a·w1_b) ⊙ (w2_a·w2_b), four rank-r factors per linear (r 8, alpha 8)",
    .options = loha_options,
    .check = loha_check,
    .create = loha_create,
    .wire = loha_wire,
    .init = loha_init,
    .free_priv = loha_free,
    .config_write = loha_config_write,
    .config_read = loha_config_read,
    .lin_kind = loha_kind,
    .lin_act_bytes = loha_act_bytes,
    .scratch_floats = loha_scratch,
    .lin_fwd = loha_fwd,
    .lin_bwd = loha_bwd,
    .lowest_layer = loha_lowest,
    .merge_touches = loha_touches,
    .merge_row = loha_merge_row,
    .describe = loha_describe,
};
