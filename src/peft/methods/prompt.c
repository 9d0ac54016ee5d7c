/* prompt.c — prompt tuning (Lester et al., 2021; HF PEFT PROMPT_TUNING) and
 * prefix tuning (Li and Liang, 2021; HF PEFT PREFIX_TUNING): P trained rows
 * the text is read after.
 *
 *   prompt   a table (P, d) of input rows put before each sequence, at
 *            positions 0..P-1 (the text moves to P..); hook: the input rows
 *   prefix   a table (P, n_layer·2·kvd): layer l's keys at columns
 *            [2l·kvd, (2l+1)·kvd), its values after them; every query
 *            attends to the P rows first (keys not rotated, as HF's cache);
 *            the text's positions start at P; hook: attention keys/values
 *
 * With prefix_projection the table is not trained itself but computed by
 * refresh from emb (P, kvd) through tanh(emb·W1ᵀ + b1)·W2ᵀ + b2, and saved
 * as the table (a frozen buffer "prompt_embeddings"), as HF PEFT does.
 * Init: N(0, 1) (HF's RANDOM), sampled or a text's token embeddings
 * (prompt), or for prefix tuning the keys/values the base computes for
 * sampled tokens or a text (peft.c's; docs/methods.md). */
#include "core/limits.h"
#include "peft/lora.h"
#include "peft/method.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    bool prefix, proj;
    int P, d, kvd, W, H, n_layer;
    int init;                        /* 0 random, 1 sample-vocab, 2 text */
    char *text;
    int idx;                         /* the table (or the projection's first tensor) */
    float *table, *gtable;           /* prompt (P, d); prefix (P, W) */
    float *emb, *w1, *b1, *w2, *b2;  /* projection: (P, kvd), (H, kvd), (H), (W, H), (W) */
    float *gemb, *gw1, *gb1, *gw2, *gb2;
    float *hidden, *dhidden;         /* (P, H) */
    float *proj_gtable;              /* (P, W): the computed table's gradient */
} prompt;

#define S(a) ((prompt *)(a)->priv)

extern const method_ops method_prefix;

static void prompt_free(adapter *a) {
    prompt *v = S(a);
    if (!v) return;
    free(v->text);
    free(v->hidden);
    free(v->dhidden);
    free(v->proj_gtable);
    free(v);
    a->priv = NULL;
}

/* num_virtual_tokens, prompt_init, prefix_projection, encoder_hidden_size */
static int read_options(const method_config *mc, bool prefix, int n_ctx, prompt *v, peft_err *err) {
    double P = 20, H = 0;
    bool proj = false;
    int rc;
    if ((rc = method_option_float(mc, "num_virtual_tokens", 1, PEFT_MAX_VIRTUAL_TOKENS, &P, err)) ||
        (rc = method_option_bool(mc, "prefix_projection", &proj, err)) ||
        (rc = method_option_float(mc, "encoder_hidden_size", 1, 1 << 20, &H, err)))
        return rc;
    if (P != floor(P) || H != floor(H))
        return peft_fail(err, PEFT_ERR_INVALID, "--num-virtual-tokens and --encoder-hidden-size must be integers");
    if (n_ctx > 0 && P >= n_ctx)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: num_virtual_tokens must be in 1..%d, got %d", prefix ? "prefix" : "prompt",
                         n_ctx - 1, (int)P);
    char buf[PEFT_METHOD_OPTIONS_MAX];
    const char *init = method_option_get(mc, "prompt_init", buf, sizeof buf);
    int ik = 0;
    if (init && !strcmp(init, "sample-vocab")) ik = 1;
    else if (init && strcmp(init, "random")) ik = 2;
    if (proj && !prefix) return peft_fail(err, PEFT_ERR_INVALID, "--prefix-projection applies to prefix tuning only");
    if (proj && ik) return peft_fail(err, PEFT_ERR_INVALID, "prefix tuning: --prompt-init does not apply with a projection");
    if (v) {
        v->P = (int)P;
        v->proj = proj;
        v->H = (int)H;
        v->init = ik;
        if (ik == 2 && !(v->text = strdup(init))) return peft_fail(err, PEFT_ERR_NOMEM, "out of memory");
    }
    return 0;
}

static int prompt_check(const method_config *mc, peft_err *err) {
    return read_options(mc, mc->ops == &method_prefix, 0, NULL, err);
}

static int prompt_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    prompt *v = peft_calloc(1, sizeof *v, err);
    if (!v) return PEFT_ERR_NOMEM;
    a->priv = v;
    v->prefix = mc->ops == &method_prefix;
    v->d = m->cfg.d_model;
    v->n_layer = m->cfg.n_layer;
    v->kvd = m->cfg.n_kv_head * m->cfg.head_dim;
    v->W = v->n_layer * 2 * v->kvd;
    int rc = read_options(mc, v->prefix, m->cfg.n_ctx, v, err);
    if (rc) return rc;
    const int P = v->P;
    if (!v->prefix) {
        v->idx = adapter_add_tensor(a, "prompt_embeddings", 2, P, v->d, true, err);
        return v->idx < 0 ? PEFT_ERR_NOMEM : 0;
    }
    if (!v->proj) {
        v->idx = adapter_add_tensor(a, "prompt_embeddings", 2, P, v->W, true, err);
        return v->idx < 0 ? PEFT_ERR_NOMEM : 0;
    }
    /* HF PEFT: token_dim = head_dim · n_kv_head (GQA), encoder_hidden_size
     * defaults to token_dim; the MLP is trained but not saved, its output
     * table is saved. Five consecutive tensors, then the table. */
    const int d = v->kvd, H = v->H > 0 ? v->H : d, W = v->W;
    v->H = H;
    if ((v->idx = adapter_add_tensor(a, "prefix_encoder.embedding.weight", 2, P, d, false, err)) < 0 ||
        adapter_add_tensor(a, "prefix_encoder.transform.0.weight", 2, H, d, false, err) < 0 ||
        adapter_add_tensor(a, "prefix_encoder.transform.0.bias", 1, H, 1, false, err) < 0 ||
        adapter_add_tensor(a, "prefix_encoder.transform.2.weight", 2, W, H, false, err) < 0 ||
        adapter_add_tensor(a, "prefix_encoder.transform.2.bias", 1, W, 1, false, err) < 0 ||
        adapter_add_buffer(a, "prompt_embeddings", 2, P, W, true, err) < 0)
        return PEFT_ERR_NOMEM;
    /* the Trainer's rule: no weight decay on biases */
    adapter_tensor_set_group(a, v->idx + 2, PG_NO_DECAY);
    adapter_tensor_set_group(a, v->idx + 4, PG_NO_DECAY);
    v->hidden = peft_calloc((size_t)P * H, sizeof(float), err);
    v->dhidden = peft_calloc((size_t)P * H, sizeof(float), err);
    v->proj_gtable = peft_calloc((size_t)P * W, sizeof(float), err);
    return v->hidden && v->dhidden && v->proj_gtable ? 0 : PEFT_ERR_NOMEM;
}

static int prompt_wire(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    prompt *v = S(a);
    const adapter_tensor *t = &a->tensors[v->idx];
    if (!v->proj) {
        v->table = t[0].p;
        v->gtable = t[0].g;
        return 0;
    }
    v->emb = t[0].p; v->gemb = t[0].g;
    v->w1 = t[1].p; v->gw1 = t[1].g;
    v->b1 = t[2].p; v->gb1 = t[2].g;
    v->w2 = t[3].p; v->gw2 = t[3].g;
    v->b2 = t[4].p; v->gb2 = t[4].g;
    v->table = t[5].p;
    v->gtable = v->proj_gtable;
    return 0;
}

/* Prefix tuning initialised from real keys and values: the base model runs
 * P tokens (sampled ids, or an init text's tokens repeated) and its KV cache
 * rows become the table, so the prefix starts as a plausible context
 * instead of N(0, 1) noise. */
static int prefix_from_tokens(prompt *v, const peft_model *m, const int32_t *ids, peft_err *err) {
    const int P = v->P, hd = m->cfg.head_dim, nkv = m->cfg.n_kv_head, kvd = v->kvd;
    model_state st;
    model_state_init(&st, NULL);
    int rc = model_forward(m, &st, ids, P, NULL, false, err);
    const model_kv *kv = &st.seq.kv;
    for (int l = 0; !rc && l < v->n_layer; l++)
        for (int p = 0; p < P; p++)
            for (int g = 0; g < nkv; g++) {
                const size_t src = (size_t)l * nkv * kv->cap * hd + ((size_t)g * kv->cap + p) * hd;
                float *row = v->table + (size_t)p * v->W;
                memcpy(row + (size_t)(2 * l) * kvd + (size_t)g * hd, kv->k + src, (size_t)hd * sizeof(float));
                memcpy(row + (size_t)(2 * l + 1) * kvd + (size_t)g * hd, kv->v + src, (size_t)hd * sizeof(float));
            }
    model_state_free(&st);
    return rc;
}

static int prompt_init(adapter *a, const peft_model *m, peft_rng *rng, peft_err *err) {
    prompt *v = S(a);
    const int P = v->P;
    if (v->proj) {
        const int H = v->H, td = v->kvd;
        for (int64_t k = 0; k < (int64_t)P * td; k++) v->emb[k] = peft_rng_normal(rng);
        adapter_kaiming_uniform(v->w1, (int64_t)H * td, td, rng);
        adapter_kaiming_uniform(v->b1, H, td, rng);
        adapter_kaiming_uniform(v->w2, (int64_t)v->W * H, H, rng);
        adapter_kaiming_uniform(v->b2, v->W, H, rng);
        return 0;
    }
    if (!v->init) {
        /* nn.Embedding's default: N(0, 1) */
        for (int64_t k = 0; k < a->tensors[v->idx].n; k++) v->table[k] = peft_rng_normal(rng);
        return 0;
    }
    /* sampled ids, or the init text's tokens repeated to fill P (HF PEFT's TEXT init) */
    const char *what = v->prefix ? "prefix tuning" : "prompt tuning";
    int32_t *txt = NULL, *ids = peft_malloc((size_t)P * sizeof *ids, err);
    int n = 0, rc = ids ? 0 : PEFT_ERR_NOMEM;
    if (!rc && v->init == 2) {
        if (!m->tok) rc = peft_fail(err, PEFT_ERR_INVALID, "%s: --prompt-init needs a text and a tokenizer", what);
        else rc = bpe_encode(m->tok, v->text, strlen(v->text), true, false, &txt, &n, err);
        if (!rc && n == 0) rc = peft_fail(err, PEFT_ERR_INVALID, "%s: the init text has no tokens", what);
    }
    for (int p = 0; !rc && p < P; p++)
        ids[p] = v->init == 2 ? txt[p % n] : (int32_t)((int64_t)(peft_rng_uniform(rng) * m->cfg.vocab) % m->cfg.vocab);
    if (!rc && v->prefix) rc = prefix_from_tokens(v, m, ids, err);
    for (int p = 0; !rc && !v->prefix && p < P; p++) {
        rc = kern_weight_row(&m->tok_emb, ids[p], v->table + (size_t)p * v->d);
        if (rc) rc = peft_fail(err, rc, "prompt tuning: token %d of the init has no embedding row", ids[p]);
    }
    free(ids);
    free(txt);
    return rc;
}

/* hidden = tanh(emb·W1ᵀ + b1); table = hidden·W2ᵀ + b2 */
static int prompt_refresh(adapter *a, const peft_model *m, peft_err *err) {
    (void)m;
    (void)err;
    prompt *v = S(a);
    if (!v->proj) return 0;
    const int P = v->P, d = v->kvd, H = v->H, W = v->W;
    for (int p = 0; p < P; p++) {
        memcpy(v->hidden + (size_t)p * H, v->b1, (size_t)H * sizeof(float));
        memcpy(v->table + (size_t)p * W, v->b2, (size_t)W * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, P, H, d, 1.0f, v->emb, d, v->w1, d, 1.0f, v->hidden, H);
    for (int64_t k = 0; k < (int64_t)P * H; k++) v->hidden[k] = tanhf(v->hidden[k]);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, P, W, H, 1.0f, v->hidden, H, v->w2, H, 1.0f, v->table, W);
    return 0;
}

/* From the table's gradient dT (P, W): gW2 += dTᵀ·hidden, gb2 += colsum dT,
 * dh = dT·W2 ⊙ (1 - hidden²), gW1 += dhᵀ·emb, gb1 += colsum dh,
 * gemb += dh·W1; dT is cleared for the next pass. */
static void prompt_refresh_bwd(adapter *a, const peft_model *m) {
    (void)m;
    prompt *v = S(a);
    if (!v->proj) return;
    const int P = v->P, d = v->kvd, H = v->H, W = v->W;
    float *dh = v->dhidden, *gt = v->proj_gtable;
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, W, H, P, 1.0f, gt, W, v->hidden, H, 1.0f, v->gw2, H);
    for (int p = 0; p < P; p++)
        for (int k = 0; k < W; k++) v->gb2[k] += gt[(size_t)p * W + k];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, P, H, W, 1.0f, gt, W, v->w2, H, 0.0f, dh, H);
    for (int64_t k = 0; k < (int64_t)P * H; k++) dh[k] *= 1.0f - v->hidden[k] * v->hidden[k];
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, H, d, P, 1.0f, dh, H, v->emb, d, 1.0f, v->gw1, d);
    for (int p = 0; p < P; p++)
        for (int k = 0; k < H; k++) v->gb1[k] += dh[(size_t)p * H + k];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, P, d, H, 1.0f, dh, H, v->w1, d, 1.0f, v->gemb, d);
    memset(gt, 0, (size_t)P * W * sizeof(float));
}

/* ---- hooks ----------------------------------------------------------------------------- */

static int prompt_input_rows(const adapter *a) { return S(a)->prefix ? 0 : S(a)->P; }
static const float *prompt_input_row(const adapter *a, int p) { return S(a)->table + (size_t)p * S(a)->d; }
static float *prompt_input_grad(adapter *a, int p) { return S(a)->gtable + (size_t)p * S(a)->d; }

static int prefix_kv_rows(const adapter *a) { return S(a)->prefix ? S(a)->P : 0; }

static void prefix_kv_row(const adapter *a, int l, int p, const float **k, const float **vv) {
    const prompt *v = S(a);
    const float *row = v->table + (size_t)p * v->W;
    *k = row + (size_t)(2 * l) * v->kvd;
    *vv = row + (size_t)(2 * l + 1) * v->kvd;
}

static void prefix_kv_grad(adapter *a, int l, int p, float **gk, float **gv) {
    const prompt *v = S(a);
    float *row = v->gtable + (size_t)p * v->W;
    *gk = row + (size_t)(2 * l) * v->kvd;
    *gv = row + (size_t)(2 * l + 1) * v->kvd;
}

static int prompt_lowest(const adapter *a, const peft_model *m) {
    (void)a;
    (void)m;
    return 0;
}

/* ---- config ------------------------------------------------------------------------------ */

static int prompt_config_write(const adapter *a, const peft_model *m, cJSON *o) {
    const prompt *v = S(a);
    const model_config *c = &m->cfg;
    bool ok = cJSON_AddNumberToObject(o, "num_virtual_tokens", v->P) && cJSON_AddNumberToObject(o, "num_layers", c->n_layer) &&
              cJSON_AddNumberToObject(o, "num_transformer_submodules", 1);
    if (!v->prefix) {
        ok = ok && cJSON_AddNumberToObject(o, "token_dim", c->d_model) &&
             cJSON_AddNumberToObject(o, "num_attention_heads", c->n_head) &&
             cJSON_AddStringToObject(o, "prompt_tuning_init", v->init == 2 ? "TEXT" : v->init == 1 ? "SAMPLE_VOCAB" : "RANDOM") &&
             cJSON_AddNullToObject(o, "prompt_tuning_init_text") && cJSON_AddNullToObject(o, "tokenizer_name_or_path");
    } else {
        /* HF PEFT's GQA convention: token_dim = head_dim · n_kv_head */
        ok = ok && cJSON_AddNumberToObject(o, "token_dim", v->kvd) &&
             cJSON_AddNumberToObject(o, "num_attention_heads", c->n_kv_head) &&
             cJSON_AddNumberToObject(o, "encoder_hidden_size", v->H > 0 ? v->H : v->kvd) &&
             cJSON_AddBoolToObject(o, "prefix_projection", v->proj);
    }
    return ok ? 0 : PEFT_ERR_NOMEM;
}

static int prompt_config_read(const cJSON *o, const char *path, const peft_model *m, method_config *mc, peft_err *err) {
    int P, nl, subs, rc;
    /* absent: the default, which the saved table's shape must then match */
    if ((rc = peft_json_get_int(o, "num_virtual_tokens", 20, false, 1, PEFT_MAX_VIRTUAL_TOKENS, &P, path, err)) ||
        (rc = peft_json_get_int(o, "num_layers", m->cfg.n_layer, false, 1, PEFT_MAX_LAYERS, &nl, path, err)) ||
        (rc = peft_json_get_int(o, "num_transformer_submodules", 1, false, 1, 2, &subs, path, err)))
        return rc;
    if (nl != m->cfg.n_layer)
        return peft_fail(err, PEFT_ERR_SHAPE, "%s: made for %d layers, %s has %d", path, nl, m->path, m->cfg.n_layer);
    if (subs != 1)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: num_transformer_submodules != 1 (encoder-decoder) is not supported",
                         path);
    /* the saved table is loaded as is; a projection is not re-created */
    snprintf(mc->options, sizeof mc->options, "num_virtual_tokens=%d", P);
    return 0;
}

static void prompt_describe(const adapter *a, char *buf, size_t cap) {
    const prompt *v = S(a);
    snprintf(buf, cap, "%d virtual tokens%s", v->P, v->proj ? " (with a projection)" : "");
}

static const method_option prompt_options[] = {
    {"num-virtual-tokens", "N", "virtual tokens (default 20)"},
    {"prompt-init", "I", "random (default) | sample-vocab | any other text: its tokens' embeddings (prefix: their keys/values)"},
    {NULL, NULL, NULL},
};

static const method_option prefix_options[] = {
    {"num-virtual-tokens", "N", "virtual tokens (default 20)"},
    {"prompt-init", "I", "random (default) | sample-vocab | any other text: its tokens' embeddings (prefix: their keys/values)"},
    {"prefix-projection", NULL, "reparametrise the prefix through an MLP (tanh) while training"},
    {"encoder-hidden-size", "N", "the projection's hidden size (default: the key/value width)"},
    {NULL, NULL, NULL},
};

static const char *const prompt_aliases[] = {"prompt-tuning", "prompt_tuning", NULL};
static const char *const prefix_aliases[] = {"prefix-tuning", "prefix_tuning", NULL};

#define PROMPT_OPS                                                                                                   \
    .flags = METHOD_PROMPT_LEARNING, .check = prompt_check, .create = prompt_create, .wire = prompt_wire,           \
    .init = prompt_init, .free_priv = prompt_free, .config_write = prompt_config_write,                              \
    .config_read = prompt_config_read, .refresh = prompt_refresh, .refresh_bwd = prompt_refresh_bwd,                 \
    .lowest_layer = prompt_lowest, .describe = prompt_describe

const method_ops method_prompt = {
    .name = "prompt",
    .aliases = prompt_aliases,
    .peft_type = "PROMPT_TUNING",
    .summary = "prompt tuning: P trained input rows before the text",
    .options = prompt_options,
    .input_rows = prompt_input_rows,
    .input_row = prompt_input_row,
    .input_grad = prompt_input_grad,
    PROMPT_OPS,
};

const method_ops method_prefix = {
    .name = "prefix",
    .aliases = prefix_aliases,
    .peft_type = "PREFIX_TUNING",
    .summary = "prefix tuning: P trained key/value rows in every layer's attention",
    .options = prefix_options,
    .kv_rows = prefix_kv_rows,
    .kv_row = prefix_kv_row,
    .kv_grad = prefix_kv_grad,
    PROMPT_OPS,
};
