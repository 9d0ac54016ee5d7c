/* adapter.c — the method-independent part of adapters: the tensor registry
 * and its one-block allocation, creation through the method's table,
 * derived values (the method's refresh) and the effective-parameter
 * accessors the forward passes use. */
#include "core/limits.h"
#include "peft/method.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

const char *adapter_method_name(const adapter *a) { return a && a->ops ? a->ops->name : "?"; }

/* ---- registry -------------------------------------------------------------- */

int adapter_add_tensor(adapter *a, const char *key, int ndim, int64_t d0, int64_t d1, bool saved,
                       peft_err *err) {
    if (a->n_tensors == a->cap_tensors) {
        int cap = a->cap_tensors ? a->cap_tensors * 2 : 64;
        adapter_tensor *t = realloc(a->tensors, (size_t)cap * sizeof *t);
        if (!t) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory registering adapter tensors");
        a->tensors = t;
        a->cap_tensors = cap;
    }
    adapter_tensor *t = &a->tensors[a->n_tensors];
    memset(t, 0, sizeof *t);
    snprintf(t->key, sizeof t->key, "%s", key);
    t->ndim = ndim;
    t->shape[0] = d0;
    t->shape[1] = ndim > 1 ? d1 : 1;
    t->n = d0 * (ndim > 1 ? d1 : 1);
    t->saved = saved;
    return a->n_tensors++;
}

int adapter_add_buffer(adapter *a, const char *key, int ndim, int64_t d0, int64_t d1, bool saved, peft_err *err) {
    int i = adapter_add_tensor(a, key, ndim, d0, d1, saved, err);
    if (i >= 0) a->tensors[i].frozen = true;
    return i;
}

void adapter_tensor_set_group(adapter *a, int idx, unsigned flags) {
    if (idx >= 0 && idx < a->n_tensors) a->tensors[idx].group = (uint8_t)flags;
}

int adapter_finish_alloc(adapter *a, peft_err *err) {
    int64_t n = 0, nb = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        if (a->tensors[i].frozen) nb += a->tensors[i].n;
        else n += a->tensors[i].n;
    }
    a->n_params = n;
    a->n_buffers = nb;
    a->params = peft_calloc((size_t)(n ? n : 1), sizeof(float), err);
    a->grads = peft_calloc((size_t)(n ? n : 1), sizeof(float), err);
    a->buffers = peft_calloc((size_t)(nb ? nb : 1), sizeof(float), err);
    if (!a->params || !a->grads || !a->buffers) return PEFT_ERR_NOMEM;
    int64_t off = 0, boff = 0;
    for (int i = 0; i < a->n_tensors; i++) {
        adapter_tensor *t = &a->tensors[i];
        if (t->frozen) {
            t->p = a->buffers + boff;
            t->g = NULL;
            boff += t->n;
        } else {
            t->p = a->params + off;
            t->g = a->grads + off;
            off += t->n;
        }
    }
    return 0;
}

adapter_tensor *adapter_find_tensor(const adapter *a, const char *key) {
    for (int i = 0; i < a->n_tensors; i++)
        if (!strcmp(a->tensors[i].key, key)) return &a->tensors[i];
    return NULL;
}

void adapter_retain(const adapter *a) { atomic_fetch_add(&((adapter *)a)->users, 1); }

void adapter_release(const adapter *a) {
    /* users counts the references besides the creator's: the one that
     * finds none left is the last */
    if (a && atomic_fetch_sub(&((adapter *)a)->users, 1) == 0) adapter_free((adapter *)a);
}

void adapter_free(adapter *a) {
    if (!a) return;
    if (a->ops && a->ops->free_priv) a->ops->free_priv(a);
    free(a->buffers);
    free(a->params);
    free(a->grads);
    free(a->base_model);
    free(a->tensors);
    free(a);
}

void adapter_set_signature(adapter *a, const peft_model *m) {
    a->n_layer = m->cfg.n_layer;
    a->sig_d = m->cfg.d_model;
    a->sig_kvd = m->cfg.n_kv_head * m->cfg.head_dim;
    a->sig_ff = m->cfg.d_ff;
    a->sig_vocab = m->cfg.vocab;
}

int adapter_fits(const adapter *a, const peft_model *m, peft_err *err) {
    if (!a) return 0;
    const int have[5] = {a->n_layer, a->sig_d, a->sig_kvd, a->sig_ff, a->sig_vocab};
    const int want[5] = {m->cfg.n_layer, m->cfg.d_model, m->cfg.n_kv_head * m->cfg.head_dim, m->cfg.d_ff, m->cfg.vocab};
    static const char *const what[5] = {"layers", "hidden size", "key/value width", "MLP width", "vocabulary"};
    for (int i = 0; i < 5; i++)
        if (have[i] && have[i] != want[i])
            return peft_fail(err, PEFT_ERR_SHAPE, "the %s adapter was made for a model with %s %d, %s has %d",
                             adapter_method_name(a), what[i], have[i], m->path, want[i]);
    return 0;
}

/* ---- HF names ---------------------------------------------------------------- */

int adapter_layer_prefix(const peft_model *m, int l, char *buf, size_t cap) {
    char lp[160];
    snprintf(lp, sizeof lp, m->cfg.desc->hf_layer, l);
    return snprintf(buf, cap, "%s%s", model_hf_prefix(m), lp) >= (int)cap ? PEFT_ERR_INVALID : 0;
}

/* HF parameter name of norm `which` of layer l (l == n_layer: final norm),
 * field "weight" or "bias". */
int adapter_norm_name(const peft_model *m, int l, int which, const char *field, char *buf, size_t cap) {
    const arch_desc *D = m->cfg.desc;
    if (l == m->cfg.n_layer) return snprintf(buf, cap, "%s%s.%s", model_hf_prefix(m), D->hf_out_norm, field) >= (int)cap;
    char lp[200];
    if (adapter_layer_prefix(m, l, lp, sizeof lp)) return PEFT_ERR_INVALID;
    return snprintf(buf, cap, "%s.%s.%s", lp, D->hf_norm[which], field) >= (int)cap ? PEFT_ERR_INVALID : 0;
}

const float *adapter_base_norm_w(const peft_model *m, int l, int which) {
    if (l == m->cfg.n_layer) return which == NORM_ATTN ? m->out_norm_w : NULL;
    return m->layers[l].norm_w[which];
}
const float *adapter_base_norm_b(const peft_model *m, int l, int which) {
    if (l == m->cfg.n_layer) return which == NORM_ATTN ? m->out_norm_b : NULL;
    return m->layers[l].norm_b[which];
}

/* ---- creation --------------------------------------------------------------------- */

void adapter_kaiming_uniform(float *w, int64_t n, int fan_in, peft_rng *rng) {
    const float bound = 1.0f / sqrtf((float)fan_in);
    for (int64_t i = 0; i < n; i++) w[i] = (2.0f * peft_rng_uniform(rng) - 1.0f) * bound;
}

int adapter_new(const peft_model *m, const method_config *mc, adapter **out, peft_err *err) {
    *out = NULL;
    /* Sizes tensors (labels x hidden); callers take it from files and flags. */
    if (mc->n_labels < 0 || mc->n_labels > PEFT_MAX_LABELS)
        return peft_fail(err, PEFT_ERR_INVALID, "%d classification labels: the limit is %d", mc->n_labels,
                         PEFT_MAX_LABELS);
    return method_adapter_new(m, mc, true, out, err);
}

/* ---- effective parameters ------------------------------------------------------- */

const kern_weight *adapter_weight(const adapter *a, const peft_model *m, int l, model_linear_role r) {
    (void)a;   /* methods that replace the weight hook the linear (HOOK_REPLACE) */
    return &m->layers[l].lin[r].w;
}

const float *adapter_bias(const adapter *a, const peft_model *m, int l, model_linear_role r) {
    if (a && a->ops && a->ops->lin_bias) {
        const float *b = a->ops->lin_bias(a, l, r);
        if (b) return b;
    }
    return m->layers[l].lin[r].b;
}

const float *adapter_norm_w(const adapter *a, const peft_model *m, int l, int which) {
    if (a && a->ops && a->ops->norm_param) {
        const float *w = a->ops->norm_param(a, l, which, false);
        if (w) return w;
    }
    return adapter_base_norm_w(m, l, which);
}

const float *adapter_norm_b(const adapter *a, const peft_model *m, int l, int which) {
    if (a && a->ops && a->ops->norm_param) {
        const float *b = a->ops->norm_param(a, l, which, true);
        if (b) return b;
    }
    return adapter_base_norm_b(m, l, which);
}

static const kern_weight *method_emb(const adapter *a, const peft_model *m, int which, kern_weight *tmp) {
    return a && a->ops && a->ops->emb_weight ? a->ops->emb_weight(a, m, which, tmp) : NULL;
}

const kern_weight *adapter_tok_emb(const adapter *a, const peft_model *m, kern_weight *tmp) {
    const kern_weight *w = method_emb(a, m, 0, tmp);
    return w ? w : &m->tok_emb;
}

const kern_weight *adapter_pos_emb(const adapter *a, const peft_model *m, kern_weight *tmp) {
    const kern_weight *w = method_emb(a, m, 1, tmp);
    return w ? w : &m->pos_emb;
}

const kern_weight *adapter_lm_head(const adapter *a, const peft_model *m, kern_weight *tmp) {
    const kern_weight *w = method_emb(a, m, 2, tmp);
    return w ? w : &m->lm_head;
}

int adapter_prompt_rows(const adapter *a) { return a && a->ops && a->ops->input_rows ? a->ops->input_rows(a) : 0; }
int adapter_prefix_rows(const adapter *a) { return a && a->ops && a->ops->kv_rows ? a->ops->kv_rows(a) : 0; }

/* ---- derived values ------------------------------------------------------------------ */

int adapter_refresh(adapter *a, const peft_model *m, peft_err *err) {
    if (!a) return 0;
    if (a->ops && a->ops->refresh) return a->ops->refresh(a, m, err);
    return 0;
}

void adapter_refresh_bwd(adapter *a, const peft_model *m) {
    if (a && a->ops && a->ops->refresh_bwd) a->ops->refresh_bwd(a, m);
}
