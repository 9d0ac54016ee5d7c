/* model.c — public model API: load, free, info, tokenize, logits. */
#include "model/model.h"

#include <stdlib.h>
#include <string.h>

static bool ends_with(const char *s, const char *suffix) {
    size_t a = strlen(s), b = strlen(suffix);
    return a >= b && strcmp(s + a - b, suffix) == 0;
}

peft_model *peft_model_load(peft_ctx *ctx, const char *path) {
    peft_err *err = &ctx->err;
    peft_err_clear(err);
    peft_model *m = peft_calloc(1, sizeof *m, err);
    if (!m) return NULL;
    m->ctx = ctx;
    m->path = peft_strdup(path, err);
    if (!m->path) { free(m); return NULL; }
    int rc;
    if (peft_is_dir(path)) {
        char *cfg = peft_path_join(path, "config.json", err);
        bool has = cfg && peft_file_exists(cfg);
        free(cfg);
        if (!has) rc = peft_fail(err, PEFT_ERR_IO, "%s: not a model folder (no config.json)", path);
        else rc = model_load_hf(m, err);
    } else if (ends_with(path, ".gguf") || peft_file_exists(path)) {
        rc = model_load_gguf(m, err);
    } else {
        rc = peft_fail(err, PEFT_ERR_IO, "%s: no such file or folder", path);
    }
    if (rc) {
        peft_model_free(m);
        return NULL;
    }
    peft_log(ctx, PEFT_LOG_INFO, "loaded %s: %s, %d layers, d=%d, %lld params (%s)", path, m->cfg.arch_name,
             m->cfg.n_layer, m->cfg.d_model, (long long)m->n_params, m->dtype_summary);
    return m;
}

void peft_model_free(peft_model *m) {
    if (!m) return;
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->rope_cos);
    free(m->rope_sin);
    free(m->kv.k);
    free(m->kv.v);
    free(m->ws);
    bpe_free(m->tok);
    st_close(m->st);
    gguf_close(m->gguf);
    free(m->path);
    free(m);
}

int peft_model_get_info(const peft_model *m, peft_model_info *out) {
    const model_config *c = &m->cfg;
    memset(out, 0, sizeof *out);
    out->arch = c->arch;
    out->arch_name = c->arch_name;
    out->n_layer = c->n_layer;
    out->d_model = c->d_model;
    out->n_head = c->n_head;
    out->n_kv_head = c->n_kv_head;
    out->head_dim = c->head_dim;
    out->d_ff = c->d_ff;
    out->vocab = c->vocab;
    out->n_ctx = c->n_ctx;
    out->norm_eps = c->norm_eps;
    out->rope_theta = c->rope_theta;
    out->tied_embeddings = c->tied || m->lm_head.data == m->tok_emb.data;
    out->n_params = m->n_params;
    out->source = m->source;
    out->dtype_summary = m->dtype_summary;
    out->tokenizer = m->tok ? bpe_describe(m->tok) : "none";
    out->n_tensors = m->st ? st_count(m->st) : gguf_n_tensors(m->gguf);
    return 0;
}

int peft_model_tensor_info(const peft_model *m, int i, peft_tensor_info *out) {
    memset(out, 0, sizeof *out);
    if (m->st) {
        if (i < 0 || i >= st_count(m->st)) return PEFT_ERR_INVALID;
        const st_tensor *t = st_at(m->st, i);
        out->name = t->name;
        out->dtype = t->dtype;
        out->ndim = t->ndim;
        for (int k = 0; k < t->ndim; k++) out->shape[k] = t->shape[k];
        out->nbytes = t->nbytes;
        return 0;
    }
    if (i < 0 || i >= gguf_n_tensors(m->gguf)) return PEFT_ERR_INVALID;
    const gguf_tensor *t = gguf_tensor_at(m->gguf, i);
    out->name = t->name;
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    for (int k = 0; k < t->ndim; k++) out->shape[k] = t->ne[t->ndim - 1 - k];
    out->nbytes = t->nbytes;
    return 0;
}

static int need_tok(peft_model *m) {
    if (m->tok) return 0;
    return peft_fail(&m->ctx->err, PEFT_ERR_INVALID, "%s: the model has no tokenizer", m->path);
}

int peft_tokenize(peft_model *m, const char *text, int add_bos, int special, int32_t **ids,
                  int *n_ids) {
    int rc = need_tok(m);
    if (rc) return rc;
    return bpe_encode(m->tok, text, strlen(text), add_bos != 0, special != 0, ids, n_ids, &m->ctx->err);
}

int peft_token_to_piece(const peft_model *m, int32_t id, char *buf, int cap) {
    if (!m->tok) return PEFT_ERR_INVALID;
    return bpe_token_bytes(m->tok, id, buf, cap);
}

int peft_token_eos(const peft_model *m) { return m->tok ? bpe_eos_id(m->tok) : -1; }
int peft_token_bos(const peft_model *m) { return m->tok ? bpe_bos_id(m->tok) : -1; }

int peft_model_logits(peft_model *m, const int32_t *ids, int n_ids, float *out) {
    model_reset(m);
    int rc = model_forward(m, ids, n_ids, out, true, &m->ctx->err);
    model_reset(m);
    return rc;
}
