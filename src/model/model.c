/* model.c — public model API: load, free, info, tokenize, logits. */
#include "model/model.h"

#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

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
        if (!cfg) rc = PEFT_ERR_NOMEM;
        else if (!has) rc = peft_fail(err, PEFT_ERR_IO, "%s: not a model folder (no config.json)", path);
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
    free(m->bf16_packs);
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
    out->rope_theta = c->desc->pos == ARCH_POS_ROPE ? c->rope_theta : 0;   /* 0: no rotary positions */
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
    peft_err_clear(&m->ctx->err);
    model_state st;
    model_state_init(&st, m->attached);
    int rc = model_forward(m, &st, ids, n_ids, out, true, &m->ctx->err);
    model_state_free(&st);
    return rc;
}

/* ---- compute precision ------------------------------------------------------ */

int peft_compute_bf16_supported(void) { return kern_bf16_supported(); }
const char *peft_compute_bf16_unit(void) { return kern_bf16_unit_name(kern_bf16_unit_detect()); }

peft_compute peft_model_compute(const peft_model *m) { return m->bf16_packs ? PEFT_COMPUTE_BF16 : PEFT_COMPUTE_F32; }

/* The frozen matrices products run against: every present linear and the
 * output head (a tied head is its own kern_weight copy of the embedding). */
static int frozen_mats(peft_model *m, kern_weight **out) {
    int n = 0;
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++)
            if (m->layers[l].lin[r].present) out[n++] = &m->layers[l].lin[r].w;
    if (m->lm_head.data) out[n++] = &m->lm_head;
    return n;
}

bool model_qkv_fusable(const model_layer *L) {
    const model_linear *q = &L->lin[ROLE_Q], *k = &L->lin[ROLE_K], *v = &L->lin[ROLE_V];
    return q->present && k->present && v->present && q->w.cols == k->w.cols && q->w.cols == v->w.cols &&
           q->w.rows % 32 == 0 && k->w.rows % 32 == 0;
}

bool model_qkv_fused(const peft_model *m, int l) {
    const model_layer *L = &m->layers[l];
    return m->bf16_packs && model_qkv_fusable(L) && L->lin[ROLE_Q].w.bf16_bwd_nkb != 0;
}

static void drop_packs(peft_model *m) {
    for (int l = 0; l < m->cfg.n_layer; l++)
        for (int r = 0; r < ROLE_N_LINEAR; r++) {
            m->layers[l].lin[r].w.bf16_fwd = m->layers[l].lin[r].w.bf16_bwd = NULL;
            m->layers[l].lin[r].w.bf16_bwd_nkb = 0;
        }
    m->lm_head.bf16_fwd = m->lm_head.bf16_bwd = NULL;
    free(m->bf16_packs);
    m->bf16_packs = NULL;
    m->bf16_bytes = 0;
}

int peft_model_set_compute(peft_model *m, peft_compute c) {
    peft_err *err = &m->ctx->err;
    peft_err_clear(err);
    if (c != PEFT_COMPUTE_F32 && c != PEFT_COMPUTE_BF16 && c != PEFT_COMPUTE_AUTO)
        return peft_fail(err, PEFT_ERR_INVALID, "unknown compute precision %d", (int)c);
    const bool ok = kern_bf16_supported();
    if (c == PEFT_COMPUTE_BF16 && !ok)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                         "bf16 compute needs a CPU with AVX512-BF16 (Intel Cooper Lake, Sapphire Rapids or later, "
                         "AMD Zen 4 or later; AMX-BF16 is used where present) and a build that has the kernels; "
                         "this one has not: use f32");
    if (c == PEFT_COMPUTE_F32 || (c == PEFT_COMPUTE_AUTO && !ok)) {
        drop_packs(m);
        return 0;
    }
    if (m->bf16_packs) return 0;
    kern_weight **ws = peft_malloc(sizeof *ws * ((size_t)m->cfg.n_layer * ROLE_N_LINEAR + 1), err);
    if (!ws) return PEFT_ERR_NOMEM;
    const int n = frozen_mats(m, ws);
    /* Layout: each weight's forward pack, and its backward pack, except
     * that q, k and v of a layer (one input) share one backward pack over
     * their concatenated outputs, each weight's bf16_bwd a view into it:
     * the training backward then runs one product for the three
     * (model_qkv_fused). Their forward packs follow each other, which makes
     * them one pack over the concatenated outputs as well. */
    size_t total = 0, maxlen = 0;
    for (int i = 0; i < n; i++) {
        total += 2 * kern_bf16_pack_elems(ws[i]->rows, ws[i]->cols);
        maxlen = PEFT_MAX(maxlen, (size_t)PEFT_MAX(ws[i]->rows, ws[i]->cols));
    }
    m->bf16_packs = peft_malloc(total * sizeof(uint16_t), err);
    const int nt = m->ctx->n_threads > 0 ? m->ctx->n_threads : 1;
    float *rows = m->bf16_packs ? peft_malloc(maxlen * (size_t)nt * sizeof(float), err) : NULL;
    if (!rows) {
        free(ws);
        free(m->bf16_packs);
        m->bf16_packs = NULL;
        return peft_fail(err, PEFT_ERR_NOMEM, "%s: no memory for the bf16 copies of the weights (%.0f MiB)", m->path,
                         (double)total * 2 / 1048576.0);
    }
    /* the packing jobs, layer by layer: ws[i], whose backward goes into a
     * shared pack at row k_off[i] when k_off[i] >= 0 */
    int64_t *k_off = peft_malloc(sizeof *k_off * (size_t)n, err);
    if (!k_off) {
        free(rows);
        free(ws);
        drop_packs(m);
        return PEFT_ERR_NOMEM;
    }
    size_t off = 0;
    int nj = 0;
    for (int l = 0; l < m->cfg.n_layer; l++) {
        model_layer *L = &m->layers[l];
        int r0 = 0;
        if (model_qkv_fusable(L)) {
            kern_weight *q = &L->lin[ROLE_Q].w, *k = &L->lin[ROLE_K].w, *v = &L->lin[ROLE_V].w;
            const int64_t K = q->rows + k->rows + v->rows, nkb = (K + 31) / 32;
            uint16_t *shared = m->bf16_packs + off;
            off += kern_bf16_pack_elems(K, q->cols);
            memset(shared, 0, kern_bf16_pack_elems(K, q->cols) * sizeof(uint16_t));
            int64_t row = 0;
            for (int r = ROLE_Q; r <= ROLE_V; r++) {
                kern_weight *w = &L->lin[r].w;
                w->bf16_fwd = m->bf16_packs + off;
                off += kern_bf16_pack_elems(w->cols, w->rows);
                w->bf16_bwd = shared + (size_t)(row / 32) * 512;
                w->bf16_bwd_nkb = (int)nkb;
                ws[nj] = w;
                k_off[nj++] = row;
                row += w->rows;
            }
            r0 = ROLE_V + 1;
        }
        for (int r = r0; r < ROLE_N_LINEAR; r++)
            if (L->lin[r].present) {
                ws[nj] = &L->lin[r].w;
                k_off[nj++] = -1;
            }
    }
    if (m->lm_head.data) {
        ws[nj] = &m->lm_head;
        k_off[nj++] = -1;
    }
    for (int i = 0; i < nj; i++) {
        if (k_off[i] >= 0) continue;
        ws[i]->bf16_fwd = m->bf16_packs + off;
        off += kern_bf16_pack_elems(ws[i]->cols, ws[i]->rows);
        ws[i]->bf16_bwd = m->bf16_packs + off;
        ws[i]->bf16_bwd_nkb = 0;
        off += kern_bf16_pack_elems(ws[i]->rows, ws[i]->cols);
    }
    int status = 0;
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1) reduction(min : status)
    for (int i = 0; i < nj; i++) {
        int tid = 0;
#ifdef _OPENMP
        tid = omp_get_thread_num();
#endif
        float *rb = rows + (size_t)tid * maxlen;
        kern_weight *w = ws[i];
        int rc;
        if (k_off[i] < 0) {
            rc = kern_bf16_pack_weight(w, (uint16_t *)w->bf16_fwd, (uint16_t *)w->bf16_bwd, rb);
        } else {
            /* the shared backward pack starts k_off rows before this view */
            uint16_t *base = (uint16_t *)w->bf16_bwd - (size_t)(k_off[i] / 32) * 512;
            rc = kern_bf16_pack_weight(w, (uint16_t *)w->bf16_fwd, NULL, rb);
            if (!rc) rc = kern_bf16_pack_weight_at(w, base, k_off[i], w->bf16_bwd_nkb, rb);
        }
        if (rc) status = rc;
    }
    free(k_off);
    free(rows);
    free(ws);
    if (status) {
        drop_packs(m);
        return peft_fail(err, status, "%s: cannot convert the weights to bf16 (%s)", m->path, peft_status_name(status));
    }
    m->bf16_bytes = total * sizeof(uint16_t);
    peft_log(m->ctx, PEFT_LOG_INFO, "%s: bf16 compute on %s (%.0f MiB of bf16 weight copies)", m->path,
             kern_bf16_unit_name(kern_bf16_unit_detect()), (double)m->bf16_bytes / 1048576.0);
    return 0;
}

size_t model_mapped_bytes(const peft_model *m, size_t *resident) {
    size_t total = 0, res = 0, n;
    if (m->gguf) {
        const void *b = gguf_map_base(m->gguf, &n);
        total += n;
        if (resident && b) res += peft_mapping_rss(b);
    }
    for (int i = 0; i < st_map_count(m->st); i++) {
        const void *b = st_map_base(m->st, i, &n);
        total += n;
        if (resident && b) res += peft_mapping_rss(b);
    }
    if (resident) *resident = res;
    return total;
}
