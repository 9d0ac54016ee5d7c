/* adapter.c — the method-independent part of adapters: method names, the
 * tensor registry and its one-block allocation, creation and initialisation
 * of every method but LoRA/DoRA (lora.c), derived values (DoRA norms, the
 * prefix table) and the effective-parameter accessors the forward passes
 * use. */
#include "peft/lora.h"
#include "core/limits.h"
#include "peft/method.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>

static const char *const method_names[METHOD_N] = {
    "lora", "dora", "full"};

const char *method_name(peft_method k) { return (int)k >= 0 && k < METHOD_N ? method_names[k] : "?"; }

const char *adapter_method_name(const adapter *a) {
    if (!a) return "?";
    return a->ops ? a->ops->name : method_name(a->method);
}

int method_parse(const char *name, peft_method *out) {
    for (int k = 0; k < METHOD_N; k++)
        if (!strcmp(name, method_names[k])) { *out = (peft_method)k; return 0; }
    /* aliases */
    return PEFT_ERR_INVALID;
}

bool method_mergeable(peft_method k) { return k == METHOD_LORA || k == METHOD_DORA; }

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

void adapter_free(adapter *a) {
    if (!a) return;
    if (a->ops && a->ops->free_priv) a->ops->free_priv(a);
    free(a->buffers);
    free(a->mods);
    free(a->slot);
    free(a->params);
    free(a->grads);
    free(a->base_model);
    free(a->tensors);
    free(a->fw);
    free(a->fb);
    free(a->gfb);
    free(a->fnw);
    free(a->gfnw);
    free(a->fnb);
    free(a->gfnb);
    free(a->gfw);
    free(a->dora_norms);
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

static bool is_gpt2(const peft_model *m) { return m->cfg.arch == PEFT_ARCH_GPT2; }

int adapter_layer_prefix(const peft_model *m, int l, char *buf, size_t cap) {
    return snprintf(buf, cap, is_gpt2(m) ? "transformer.h.%d" : "model.layers.%d", l) >= (int)cap ? PEFT_ERR_INVALID : 0;
}

/* HF parameter name of norm `which` of layer l (l == n_layer: final norm),
 * field "weight" or "bias". */
int adapter_norm_name(const peft_model *m, int l, int which, const char *field, char *buf, size_t cap) {
    if (l == m->cfg.n_layer)
        snprintf(buf, cap, is_gpt2(m) ? "transformer.ln_f.%s" : "model.norm.%s", field);
    else if (is_gpt2(m))
        snprintf(buf, cap, "transformer.h.%d.%s.%s", l, which ? "ln_2" : "ln_1", field);
    else
        snprintf(buf, cap, "model.layers.%d.%s.%s", l, which ? "post_attention_layernorm" : "input_layernorm", field);
    return 0;
}

static const float *base_norm_w(const peft_model *m, int l, int which) {
    if (l == m->cfg.n_layer) return m->out_norm_w;
    return which ? m->layers[l].ffn_norm_w : m->layers[l].attn_norm_w;
}
static const float *base_norm_b(const peft_model *m, int l, int which) {
    if (l == m->cfg.n_layer) return m->out_norm_b;
    return which ? m->layers[l].ffn_norm_b : m->layers[l].attn_norm_b;
}

/* ---- classification head ------------------------------------------------------ */

static int add_head(adapter *a, const peft_model *m, int n_labels, peft_err *err) {
    if (n_labels <= 0) return -1;
    /* HF PEFT's key: prompt-learning models wrap the base one level less */
    const bool pl = a->ops && (a->ops->flags & METHOD_PROMPT_LEARNING);
    int i = adapter_add_tensor(a, pl ? "base_model.score.weight" : "base_model.model.score.weight", 2, n_labels,
                               m->cfg.d_model, true, err);
    return i;
}

static void wire_head(adapter *a, const peft_model *m, int idx, uint64_t seed) {
    if (idx < 0) return;
    a->score = a->tensors[idx].p;
    a->gscore = a->tensors[idx].g;
    if (m && m->score && m->n_labels == a->tensors[idx].shape[0]) {
        /* a classifier base: start from its head (as modules_to_save copies it) */
        memcpy(a->score, m->score, (size_t)a->tensors[idx].n * sizeof(float));
        return;
    }
    /* transformers' _init_weights: N(0, initializer_range = 0.02) */
    peft_rng rng;
    peft_rng_seed(&rng, seed ^ 0x5c0e5c0eULL);
    for (int64_t k = 0; k < a->tensors[idx].n; k++) a->score[k] = 0.02f * peft_rng_normal(&rng);
}

int adapter_head_add(adapter *a, const peft_model *m, int n_labels, peft_err *err) { return add_head(a, m, n_labels, err); }
void adapter_head_wire(adapter *a, const peft_model *m, int idx, uint64_t seed) { wire_head(a, m, idx, seed); }

/* ---- creation of the non-LoRA methods ------------------------------------------ */

void adapter_kaiming_uniform(float *w, int64_t n, int fan_in, peft_rng *rng) {
    const float bound = 1.0f / sqrtf((float)fan_in);
    for (int64_t i = 0; i < n; i++) w[i] = (2.0f * peft_rng_uniform(rng) - 1.0f) * bound;
}

static int alloc_slots(adapter *a, const peft_model *m, peft_err *err) {
    const size_t ns = (size_t)m->cfg.n_layer * ROLE_N_LINEAR + 1;
    a->slot = peft_calloc(ns, sizeof *a->slot, err);
    return a->slot ? 0 : PEFT_ERR_NOMEM;
}

static int new_full(adapter *a, const peft_model *m, int *idx, int *nidx, int *eidx, peft_err *err) {
    const int L = m->cfg.n_layer, d = m->cfg.d_model;
    char path[200], key[256];
    /* -1 marks a tensor the model does not have: a failed add must not
     * pass for one */
    bool bad = false;
    eidx[0] = adapter_add_tensor(a, is_gpt2(m) ? "transformer.wte.weight" : "model.embed_tokens.weight", 2,
                                 m->cfg.vocab, d, true, err);
    bad |= eidx[0] < 0;
    eidx[1] = is_gpt2(m) ? adapter_add_tensor(a, "transformer.wpe.weight", 2, m->pos_emb.rows, d, true, err) : -1;
    bad |= is_gpt2(m) && eidx[1] < 0;
    eidx[2] = m->cfg.tied ? -1 : adapter_add_tensor(a, "lm_head.weight", 2, m->cfg.vocab, d, true, err);
    bad |= !m->cfg.tied && eidx[2] < 0;
    for (int l = 0; l < L; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++) {
            idx[2 * (l * ROLE_N_LINEAR + r)] = idx[2 * (l * ROLE_N_LINEAR + r) + 1] = -1;
            const model_linear *lin = &m->layers[l].lin[r];
            if (!lin->present) continue;
            model_linear_hf_path(m, l, (model_linear_role)r, path, sizeof path);
            snprintf(key, sizeof key, "%s.weight", path);
            idx[2 * (l * ROLE_N_LINEAR + r)] = adapter_add_tensor(a, key, 2, lin->w.rows, lin->w.cols, true, err);
            bad |= idx[2 * (l * ROLE_N_LINEAR + r)] < 0;
            if (lin->b) {
                snprintf(key, sizeof key, "%s.bias", path);
                idx[2 * (l * ROLE_N_LINEAR + r) + 1] = adapter_add_tensor(a, key, 1, lin->w.rows, 1, true, err);
                bad |= idx[2 * (l * ROLE_N_LINEAR + r) + 1] < 0;
            }
        }
    for (int l = 0; l <= L; l++)
        for (int which = 0; which < 2; which++) {
            nidx[2 * (l * 2 + which)] = nidx[2 * (l * 2 + which) + 1] = -1;
            if (l == L && which) continue;
            adapter_norm_name(m, l, which, "weight", key, sizeof key);
            nidx[2 * (l * 2 + which)] = adapter_add_tensor(a, key, 1, d, 1, true, err);
            bad |= nidx[2 * (l * 2 + which)] < 0;
            if (base_norm_b(m, l, which)) {
                adapter_norm_name(m, l, which, "bias", key, sizeof key);
                nidx[2 * (l * 2 + which) + 1] = adapter_add_tensor(a, key, 1, d, 1, true, err);
                bad |= nidx[2 * (l * 2 + which) + 1] < 0;
            }
        }
    return bad ? PEFT_ERR_NOMEM : 0;
}

/* Dequantizes all of w into dst (rows, cols) in HF (out, in) order. */
static int weight_to_f32(const kern_weight *w, float *dst) {
    for (int64_t r = 0; r < w->rows; r++) {
        int rc = kern_weight_row(w, r, dst + r * w->cols);
        if (rc) return rc;
    }
    return 0;
}

static int wire_full(adapter *a, const peft_model *m, const int *idx, const int *nidx, const int *eidx, peft_err *err) {
    const int L = m->cfg.n_layer, d = m->cfg.d_model;
    const size_t ns = (size_t)L * ROLE_N_LINEAR + 1, nn = (size_t)L * 2 + 1;
    a->fw = peft_calloc(ns, sizeof *a->fw, err);
    a->gfw = peft_calloc(ns, sizeof *a->gfw, err);
    a->fb = peft_calloc(ns, sizeof *a->fb, err);
    a->gfb = peft_calloc(ns, sizeof *a->gfb, err);
    a->fnw = peft_calloc(nn, sizeof *a->fnw, err);
    a->gfnw = peft_calloc(nn, sizeof *a->gfnw, err);
    a->fnb = peft_calloc(nn, sizeof *a->fnb, err);
    a->gfnb = peft_calloc(nn, sizeof *a->gfnb, err);
    if (!a->fw || !a->gfw || !a->fb || !a->gfb || !a->fnw || !a->gfnw || !a->fnb || !a->gfnb) return PEFT_ERR_NOMEM;
    int rc = 0;
    a->femb = a->tensors[eidx[0]].p;
    a->gfemb = a->tensors[eidx[0]].g;
    if ((rc = weight_to_f32(&m->tok_emb, a->femb))) goto bad;
    if (eidx[1] >= 0) {
        a->fpos = a->tensors[eidx[1]].p;
        a->gfpos = a->tensors[eidx[1]].g;
        if ((rc = weight_to_f32(&m->pos_emb, a->fpos))) goto bad;
    }
    if (eidx[2] >= 0) {
        a->fhead = a->tensors[eidx[2]].p;
        a->gfhead = a->tensors[eidx[2]].g;
        if ((rc = weight_to_f32(&m->lm_head, a->fhead))) goto bad;
    }
    for (int s = 0; s < L * ROLE_N_LINEAR; s++) {
        int iw = idx[2 * s], ib = idx[2 * s + 1];
        if (iw < 0) continue;
        const model_linear *lin = &m->layers[s / ROLE_N_LINEAR].lin[s % ROLE_N_LINEAR];
        kern_weight *w = &a->fw[s];
        w->dtype = PEFT_DT_F32;
        w->rows = lin->w.rows;
        w->cols = lin->w.cols;
        w->data = a->tensors[iw].p;
        w->transposed = false;
        w->bf16_fwd = w->bf16_bwd = NULL; /* trainable: never packed */
        w->bf16_bwd_nkb = 0;
        a->gfw[s] = a->tensors[iw].g;
        if ((rc = weight_to_f32(&lin->w, a->tensors[iw].p))) goto bad;
        if (ib >= 0) {
            a->fb[s] = a->tensors[ib].p;
            a->gfb[s] = a->tensors[ib].g;
            memcpy(a->fb[s], lin->b, (size_t)lin->w.rows * sizeof(float));
        }
    }
    for (int k = 0; k < L * 2 + 1; k++) {
        int iw = nidx[2 * k], ib = nidx[2 * k + 1];
        if (iw < 0) continue;
        a->fnw[k] = a->tensors[iw].p;
        a->gfnw[k] = a->tensors[iw].g;
        memcpy(a->fnw[k], base_norm_w(m, k / 2, k % 2), (size_t)d * sizeof(float));
        if (ib >= 0) {
            a->fnb[k] = a->tensors[ib].p;
            a->gfnb[k] = a->tensors[ib].g;
            memcpy(a->fnb[k], base_norm_b(m, k / 2, k % 2), (size_t)d * sizeof(float));
        }
    }
    return 0;
bad:
    return peft_fail(err, rc, "%s: cannot convert the base weights to f32 for full fine-tuning", m->path);
}

int adapter_new(const peft_model *m, const method_config *mc, adapter **out, peft_err *err) {
    *out = NULL;
    if (mc->method == METHOD_PLUGIN) return method_adapter_new(m, mc, true, out, err);
    /* Both size tensors (labels x hidden, virtual tokens x hidden [x 2 x
     * layers]); callers take them from files and flags. */
    if (mc->n_labels < 0 || mc->n_labels > PEFT_MAX_LABELS)
        return peft_fail(err, PEFT_ERR_INVALID, "%d classification labels: the limit is %d", mc->n_labels,
                         PEFT_MAX_LABELS);
    if (mc->method == METHOD_LORA || mc->method == METHOD_DORA) {
        lora_config c = mc->lora;
        c.dora = mc->method == METHOD_DORA;
        /* lora_new_head computes DoRA's norms (and magnitudes) itself */
        int rc = lora_new_head(m, &c, mc->n_labels, out, err);
        if (rc) return rc;
        (*out)->mc = *mc;
        return 0;
    }
    const int L = m->cfg.n_layer;
    adapter *a = peft_calloc(1, sizeof *a, err);
    if (!a) return PEFT_ERR_NOMEM;
    a->method = mc->method;
    a->mc = *mc;
    adapter_set_signature(a, m);
    a->base_model = peft_strdup(m->path, err);
    int *idx = peft_calloc((size_t)(L + 1) * ROLE_N_LINEAR * 2 + 8, sizeof(int), err);
    int *nidx = peft_calloc((size_t)(L + 1) * 4 + 8, sizeof(int), err);
    int eidx[3] = {-1, -1, -1};
    int rc = (!a->base_model || !idx || !nidx) ? PEFT_ERR_NOMEM : alloc_slots(a, m, err);
    if (rc) goto done;
    switch (mc->method) {
    case METHOD_FULL: rc = new_full(a, m, idx, nidx, eidx, err); break;
    default: rc = peft_fail(err, PEFT_ERR_INVALID, "unknown method %d", (int)mc->method);
    }
    if (rc) goto done;
    int head = add_head(a, m, mc->n_labels, err);
    if (mc->n_labels > 0 && head < 0) { rc = PEFT_ERR_NOMEM; goto done; }
    for (int i = 0; i < a->n_tensors; i++)
        if (a->tensors[i].n <= 0) { rc = peft_fail(err, PEFT_ERR_INVALID, "%s: empty tensor %s", m->path, a->tensors[i].key); goto done; }
    if (mc->method == METHOD_FULL && eidx[0] < 0) { rc = PEFT_ERR_NOMEM; goto done; }
    if ((rc = adapter_finish_alloc(a, err))) goto done;
    peft_rng rng;
    peft_rng_seed(&rng, mc->seed);
    switch (mc->method) {
    case METHOD_FULL: rc = wire_full(a, m, idx, nidx, eidx, err); break;
    default: break;
    }
    if (rc) goto done;
    wire_head(a, m, head, mc->seed);
    rc = adapter_refresh(a, m, err);
done:
    free(idx);
    free(nidx);
    if (rc) adapter_free(a);
    else *out = a;
    return rc;
}

/* ---- effective parameters ------------------------------------------------------- */

const kern_weight *adapter_weight(const adapter *a, const peft_model *m, int l, model_linear_role r) {
    if (a && a->fw && a->fw[l * ROLE_N_LINEAR + r].data) return &a->fw[l * ROLE_N_LINEAR + r];
    return &m->layers[l].lin[r].w;
}

const float *adapter_bias(const adapter *a, const peft_model *m, int l, model_linear_role r) {
    const int s = l * ROLE_N_LINEAR + r;
    if (a && a->ops && a->ops->lin_bias) {
        const float *b = a->ops->lin_bias(a, l, r);
        if (b) return b;
    }
    if (a && a->fb && a->fw[s].data) return a->fb[s];
    return m->layers[l].lin[r].b;
}

const float *adapter_norm_w(const adapter *a, const peft_model *m, int l, int which) {
    if (a && a->ops && a->ops->norm_param) {
        const float *w = a->ops->norm_param(a, l, which, false);
        if (w) return w;
    }
    if (a && a->fnw && a->fnw[l * 2 + which]) return a->fnw[l * 2 + which];
    return base_norm_w(m, l, which);
}

const float *adapter_norm_b(const adapter *a, const peft_model *m, int l, int which) {
    if (a && a->ops && a->ops->norm_param) {
        const float *b = a->ops->norm_param(a, l, which, true);
        if (b) return b;
    }
    if (a && a->fnb && a->fnb[l * 2 + which]) return a->fnb[l * 2 + which];
    return base_norm_b(m, l, which);
}

static const kern_weight *f32_weight(const float *p, int64_t rows, int64_t cols, kern_weight *tmp) {
    tmp->dtype = PEFT_DT_F32;
    tmp->rows = rows;
    tmp->cols = cols;
    tmp->data = p;
    tmp->transposed = false;
    tmp->bf16_fwd = tmp->bf16_bwd = NULL; /* trainable: never packed */
    tmp->bf16_bwd_nkb = 0;
    return tmp;
}

const kern_weight *adapter_tok_emb(const adapter *a, const peft_model *m, kern_weight *tmp) {
    if (a && a->femb) return f32_weight(a->femb, m->cfg.vocab, m->cfg.d_model, tmp);
    return &m->tok_emb;
}

const kern_weight *adapter_pos_emb(const adapter *a, const peft_model *m, kern_weight *tmp) {
    if (a && a->fpos) return f32_weight(a->fpos, m->pos_emb.rows, m->cfg.d_model, tmp);
    return &m->pos_emb;
}

const kern_weight *adapter_lm_head(const adapter *a, const peft_model *m, kern_weight *tmp) {
    if (a && a->fhead) return f32_weight(a->fhead, m->cfg.vocab, m->cfg.d_model, tmp);
    if (a && a->femb && m->cfg.tied) return f32_weight(a->femb, m->cfg.vocab, m->cfg.d_model, tmp);
    return &m->lm_head;
}

int adapter_n_labels(const adapter *a, const peft_model *m) {
    return a && a->mc.n_labels ? a->mc.n_labels : m->n_labels;
}

int adapter_prompt_rows(const adapter *a) { return a && a->ops && a->ops->input_rows ? a->ops->input_rows(a) : 0; }
int adapter_prefix_rows(const adapter *a) { return a && a->ops && a->ops->kv_rows ? a->ops->kv_rows(a) : 0; }

/* ---- the hooked linear, shared by the inference forward and the training graph ---- */

int adapter_linear_fwd(const adapter *a, const peft_model *m, int l, model_linear_role r, const float *x, int T,
                       float *y, int ldy, float beta, float *z, float *xs, const uint8_t *mask, float p_drop,
                       float *xd, float *xa, float *scr, int nt) {
    const kern_weight *W = adapter_weight(a, m, l, r);
    const float *bias = adapter_bias(a, m, l, r);
    const int s = l * ROLE_N_LINEAR + r, in = (int)W->cols, out = (int)W->rows;
    const lora_module *mod = a && a->slot ? a->slot[s] : NULL;
    (void)xs;
    const bool dora = mod && mod->mag;
    if (!dora) {
        int rc = kern_matmul(y, ldy, x, T, W, bias, beta, scr, nt);
        if (!rc && mod) lora_fwd(mod, x, in, T, mask, p_drop, xd, xa, y, ldy, nt);
        return rc;
    }
    /* DoRA: z = x·Wᵀ + s·(x·Aᵀ)·Bᵀ, y = c ⊙ z + b */
    int rc = kern_matmul(z, out, x, T, W, NULL, 0.0f, scr, nt);
    if (rc) return rc;
    lora_fwd(mod, x, in, T, NULL, 0.0f, NULL, xa, z, out, nt);
    for (int i = 0; i < T; i++) {
        float *yr = y + (size_t)i * ldy;
        const float *zr = z + (size_t)i * out;
        for (int j = 0; j < out; j++) {
            const float c = mod->mag[j] / mod->wnorm[j];
            yr[j] = (beta != 0.0f ? beta * yr[j] : 0.0f) + c * zr[j] + (bias ? bias[j] : 0.0f);
        }
    }
    return 0;
}

/* ---- derived values ------------------------------------------------------------------ */

int adapter_refresh(adapter *a, const peft_model *m, peft_err *err) {
    if (!a) return 0;
    if (a->cfg.dora && a->n_modules) {
        if (!a->dora_norms) {
            int64_t n = 0;
            for (int i = 0; i < a->n_modules; i++) n += a->mods[i].out;
            a->dora_norms = peft_calloc((size_t)n, sizeof(float), err);
            if (!a->dora_norms) return PEFT_ERR_NOMEM;
            int64_t off = 0;
            for (int i = 0; i < a->n_modules; i++) { a->mods[i].wnorm = a->dora_norms + off; off += a->mods[i].out; }
        }
        /* ||W_j + s·(B·A)_j|| per output row j, in double */
        int maxr = 0, maxin = 0;
        for (int i = 0; i < a->n_modules; i++) { maxr = PEFT_MAX(maxr, a->mods[i].r); maxin = PEFT_MAX(maxin, a->mods[i].in); }
        float *row = peft_malloc((size_t)maxin * sizeof(float), err);
        if (!row) return PEFT_ERR_NOMEM;
        for (int i = 0; i < a->n_modules; i++) {
            lora_module *md = &a->mods[i];
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
    }
    if (a->ops && a->ops->refresh) return a->ops->refresh(a, m, err);
    return 0;
}

void adapter_refresh_bwd(adapter *a, const peft_model *m) {
    if (a && a->ops && a->ops->refresh_bwd) a->ops->refresh_bwd(a, m);
}
