/* method.c — the part of the method interface (method.h) that is the same
 * for every method: creating an adapter from a table, method options, the
 * targeted linears, and the base product a linear hook builds on. */
#include "peft/method.h"
#include "core/limits.h"
#include "peft/lora.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const method_ops *method_find(const char *name) {
    if (!name) return NULL;
    for (const method_ops *const *p = method_registry(); *p; p++) {
        if (!strcmp((*p)->name, name)) return *p;
        for (const char *const *al = (*p)->aliases; al && *al; al++)
            if (!strcmp(*al, name)) return *p;
    }
    return NULL;
}

const method_ops *method_find_peft_type(const char *peft_type) {
    if (!peft_type) return NULL;
    for (const method_ops *const *p = method_registry(); *p; p++)
        if ((*p)->peft_type && !strcmp((*p)->peft_type, peft_type)) return *p;
    return NULL;
}

int method_adapter_new(const peft_model *m, const method_config *mc, bool fresh, adapter **out, peft_err *err) {
    *out = NULL;
    const method_ops *ops = mc->ops;
    if (!ops) return peft_fail(err, PEFT_ERR_INVALID, "no method given");
    adapter *a = peft_calloc(1, sizeof *a, err);
    if (!a) return PEFT_ERR_NOMEM;
    a->ops = ops;
    a->mc = *mc;
    adapter_set_signature(a, m);
    int rc = 0, head = -1;
    if (!(a->base_model = peft_strdup(m->path, err))) { rc = PEFT_ERR_NOMEM; goto fail; }
    if ((rc = ops->create(a, m, &a->mc, err))) goto fail;
    head = mts_head_add(a, m, mc->n_labels, err);
    if (mc->n_labels > 0 && head < 0) { rc = err->code ? err->code : PEFT_ERR_NOMEM; goto fail; }
    for (int i = 0; i < a->n_tensors; i++)
        if (a->tensors[i].n <= 0) {
            rc = peft_fail(err, PEFT_ERR_INVALID, "%s: empty tensor %s", m->path, a->tensors[i].key);
            goto fail;
        }
    if ((rc = adapter_finish_alloc(a, err))) goto fail;
    if (ops->wire && (rc = ops->wire(a, m, err))) goto fail;
    if (fresh) {
        peft_rng rng;
        peft_rng_seed(&rng, mc->seed);
        if (ops->init && (rc = ops->init(a, m, &rng, err))) goto fail;
    }
    mts_head_wire(a, m, head, mc->seed);
    if ((rc = adapter_refresh(a, m, err))) goto fail;
    *out = a;
    return 0;
fail:
    adapter_free(a);
    return rc;
}

hook_kind method_lin_kind(const adapter *a, int l, model_linear_role r) {
    if (!a || !a->ops || !a->ops->lin_kind) return HOOK_NONE;
    return a->ops->lin_kind(a, l, r);
}

bool method_sub_hooked(const adapter *a, int l, int site) {
    return a && a->ops && a->ops->sub_hooked && a->ops->sub_hooked(a, l, site);
}

/* ---- options ---------------------------------------------------------------- */

const char *method_option_get(const method_config *mc, const char *key, char *buf, size_t cap) {
    const size_t kl = strlen(key);
    for (const char *p = mc->options; *p;) {
        const char *end = strchr(p, ';');
        const size_t n = end ? (size_t)(end - p) : strlen(p);
        if (n > kl && p[kl] == '=' && !strncmp(p, key, kl)) {
            const size_t vl = n - kl - 1;
            if (vl >= cap) return NULL;
            memcpy(buf, p + kl + 1, vl);
            buf[vl] = '\0';
            for (char *c = buf; *c; c++)
                if (*c == '\x1e') *c = ';';   /* method_option_add's stand-in */
            return buf;
        }
        p += n + (end ? 1 : 0);
    }
    return NULL;
}

bool method_has_option(const method_ops *ops, const char *key) {
    for (const method_option *o = ops ? ops->options : NULL; o && o->name; o++) {
        size_t i = 0;
        while (key[i] && o->name[i] && (key[i] == o->name[i] || (key[i] == '_' && o->name[i] == '-'))) i++;
        if (!key[i] && !o->name[i]) return true;
    }
    return false;
}

bool method_option_is_field(const char *name) {
    static const char *const fields[] = {"r", "alpha", "dropout", "target", "layers"};
    for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
        if (!strcmp(fields[i], name)) return true;
    return false;
}

int method_option_add(method_config *mc, const char *key, const char *value, peft_err *err) {
    const size_t used = strlen(mc->options), need = (used ? 1 : 0) + strlen(key) + 1 + strlen(value);
    if (strchr(value, '\x1e') || used + need >= sizeof mc->options)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: option %s is too long", mc->ops ? mc->ops->name : "method", key);
    char *o = mc->options + used;
    o += sprintf(o, "%s%s=", used ? ";" : "", key);
    /* a ';' inside the value is kept as \x1e (method_option_get turns it back) */
    for (const char *c = value; *c; c++) *o++ = *c == ';' ? '\x1e' : *c;
    *o = '\0';
    return 0;
}

int method_option_float(const method_config *mc, const char *key, double lo, double hi, double *out, peft_err *err) {
    char buf[128];
    const char *v = method_option_get(mc, key, buf, sizeof buf);
    if (!v) return 0;
    char *end;
    double x = strtod(v, &end);
    if (end == v || *end || !isfinite(x) || x < lo || x > hi)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: %s must be a number in [%g, %g], got \"%s\"",
                         mc->ops ? mc->ops->name : "method", key, lo, hi, v);
    *out = x;
    return 0;
}

int method_option_bool(const method_config *mc, const char *key, bool *out, peft_err *err) {
    char buf[32];
    const char *v = method_option_get(mc, key, buf, sizeof buf);
    if (!v) return 0;
    if (!strcmp(v, "true") || !strcmp(v, "1") || !*v) *out = true;
    else if (!strcmp(v, "false") || !strcmp(v, "0")) *out = false;
    else
        return peft_fail(err, PEFT_ERR_INVALID, "%s: %s must be true or false, got \"%s\"",
                         mc->ops ? mc->ops->name : "method", key, v);
    return 0;
}

/* ---- targets -------------------------------------------------------------------- */

int method_parse_targets(const peft_model *m, const char *list, uint32_t *targets, peft_err *err) {
    return lora_parse_targets(m, list, targets, err);
}

int method_target_slots(const peft_model *m, const method_config *mc, const char *what, bool *slots, peft_err *err) {
    const int nl = m->cfg.n_layer;
    const uint64_t layers = mc->layers;
    if (layers && nl < 64 && (layers >> nl) != 0)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: a layer beyond the %d of %s is selected", what, nl, m->path);
    const uint32_t targets = mc->targets ? mc->targets : lora_default_targets(m);
    if (targets >> ROLE_N_LINEAR)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: target bits 0x%x name no linear", what, (unsigned)targets);
    int n = 0;
    for (int l = 0; l < nl; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++) {
            const bool on = lora_layer_selected(layers, l) && (targets & (1u << r)) && m->layers[l].lin[r].present;
            slots[l * ROLE_N_LINEAR + r] = on;
            n += on;
        }
    if (!n) return model_no_targets(m, what, err);
    return 0;
}

/* ---- the base product ------------------------------------------------------------- */

lin_call method_lin_call(const adapter *a, const peft_model *m, int l, model_linear_role r, const float *x, int N,
                         float *y, int ldy, float beta) {
    lin_call c;
    memset(&c, 0, sizeof c);
    c.m = m;
    c.l = l;
    c.r = r;
    c.W = &m->layers[l].lin[r].w;
    c.bias = adapter_bias(a, m, l, r);
    c.in = (int)c.W->cols;
    c.out = (int)c.W->rows;
    c.N = N;
    c.x = x;
    c.y = y;
    c.ldy = ldy;
    c.beta = beta;
    return c;
}

int method_base_fwd(const lin_call *c) {
    return kern_matmul(c->y, c->ldy, c->x, c->N, c->W, c->bias, c->beta, c->mm_scr, c->nt);
}

int method_base_dx(const lin_call *c, const float *dy, int lddy, float *dx) {
    return kern_matmul_dx(dx, dy, lddy, c->N, c->W, c->mm_scr, c->nt);
}

/* ---- config helpers ------------------------------------------------------------------ */

int method_write_targets(const peft_model *m, uint32_t targets, cJSON *o) {
    const char *names[ROLE_N_LINEAR * 2];
    const int n = lora_target_names(m, targets, names, ROLE_N_LINEAR * 2);
    cJSON *arr = cJSON_AddArrayToObject(o, "target_modules");
    if (!arr) return PEFT_ERR_NOMEM;
    for (int i = 0; i < n; i++)
        if (!cJSON_AddItemToArray(arr, cJSON_CreateString(names[i]))) return PEFT_ERR_NOMEM;
    return 0;
}

int method_read_number(const cJSON *o, const char *key, double dflt, double lo, double hi, double *out,
                       const char *path, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) { *out = dflt; return 0; }
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < lo || v->valuedouble > hi)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" must be a number in [%g, %g]", path, key, lo, hi);
    *out = v->valuedouble;
    return 0;
}

int method_read_bool(const cJSON *o, const char *key, bool dflt, bool *out, const char *path, peft_err *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!v || cJSON_IsNull(v)) { *out = dflt; return 0; }
    if (!cJSON_IsBool(v)) return peft_fail(err, PEFT_ERR_FORMAT, "%s: \"%s\" must be true or false", path, key);
    *out = cJSON_IsTrue(v);
    return 0;
}
