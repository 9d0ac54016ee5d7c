/* full.c — full fine-tuning, the baseline: every weight of the base as an
 * f32 copy (a quantized base is dequantized), trained by AdamW over all.
 *
 *   linears   y = x·W'ᵀ + b'        gW' += dyᵀ·x, gb' += Σ_rows dy, dx += dy·W'
 *   norms     the norm with w', β'   (gradients through the norm's backward)
 *   embeddings, positions (GPT-2), the head (untied), BERT's pooler when
 *   classifying (its classifier reads it; HF trains it with the rest)
 * Saved as a model, not an adapter: an HF folder (model.safetensors F32,
 * config.json and the tokenizer files copied) from an HF base, or
 * DIR/model.gguf (F32, llama.cpp's Q/K row order restored) from a GGUF base. */
#include "formats/gguf.h"
#include "formats/safetensors.h"
#include "peft/lora.h"
#include "peft/method.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    kern_weight *fw;                      /* per slot; data NULL where absent */
    float **gfw, **fb, **gfb;             /* per slot */
    float **fnw, **gfnw, **fnb, **gfnb;   /* per norm slot (adapter_norm_slot) */
    float *femb, *gfemb, *fpos, *gfpos, *fhead, *gfhead;   /* fhead NULL when tied */
    float *ftype, *gftype;   /* token-type embeddings (BERT), or NULL */
    /* registry indices (create → wire): token, position, head, type
     * embeddings, BERT's pooler weight and bias (-1: none) */
    int *idx, *nidx, eidx[6];
    bool tied;
} full;

#define S(a) ((full *)(a)->priv)

static bool learned_pos(const peft_model *m) { return m->cfg.desc->pos == ARCH_POS_LEARNED; }

/* the HF name of a global tensor ("model.embed_tokens"), as a saved model has it */
static const char *hf_global(const peft_model *m, const char *name, char *buf, size_t cap) {
    snprintf(buf, cap, "%s%s.weight", model_hf_prefix(m), name);
    return buf;
}


static void full_free(adapter *a) {
    full *v = S(a);
    if (!v) return;
    free(v->fw);
    free(v->gfw);
    free(v->fb);
    free(v->gfb);
    free(v->fnw);
    free(v->gfnw);
    free(v->fnb);
    free(v->gfnb);
    free(v->idx);
    free(v->nidx);
    free(v);
    a->priv = NULL;
}

static int new_full(adapter *a, const peft_model *m, int n_labels, int *idx, int *nidx, int *eidx, peft_err *err) {
    const int L = m->cfg.n_layer, d = m->cfg.d_model;
    char path[200], key[256];
    /* -1 marks a tensor the model does not have: a failed add must not
     * pass for one */
    bool bad = false;
    eidx[0] = adapter_add_tensor(a, hf_global(m, m->cfg.desc->hf_tok_emb, key, sizeof key), 2, m->cfg.vocab, d, true,
                                 err);
    bad |= eidx[0] < 0;
    eidx[1] = learned_pos(m) ? adapter_add_tensor(a, hf_global(m, m->cfg.desc->hf_pos_emb, key, sizeof key), 2,
                                                  m->pos_emb.rows, d, true, err)
                             : -1;
    bad |= learned_pos(m) && eidx[1] < 0;
    /* an encoder has no LM head: like a tied one, nothing to add */
    const bool no_head = m->cfg.tied || !m->lm_head.data;
    eidx[2] = no_head ? -1 : adapter_add_tensor(a, "lm_head.weight", 2, m->cfg.vocab, d, true, err);
    bad |= !no_head && eidx[2] < 0;
    eidx[3] = m->type_emb.data ? adapter_add_tensor(a, hf_global(m, m->cfg.desc->hf_type_emb, key, sizeof key), 2,
                                                    m->type_emb.rows, d, true, err)
                               : -1;
    bad |= m->type_emb.data && eidx[3] < 0;
    /* BERT's pooler: a weight of the base like any other once the head reads it */
    eidx[4] = eidx[5] = -1;
    if (n_labels > 0 && m->cfg.desc->cls == ARCH_CLS_POOLER && m->pooler_w) {
        const int64_t d = m->cfg.d_model;
        snprintf(key, sizeof key, "%s%s.weight", model_hf_prefix(m), m->cfg.desc->hf_pooler);
        bad |= (eidx[4] = adapter_add_tensor(a, key, 2, d, d, true, err)) < 0;
        if (m->pooler_b) {
            snprintf(key, sizeof key, "%s%s.bias", model_hf_prefix(m), m->cfg.desc->hf_pooler);
            bad |= (eidx[5] = adapter_add_tensor(a, key, 1, d, 1, true, err)) < 0;
            if (eidx[5] >= 0) adapter_tensor_set_group(a, eidx[5], PG_NO_DECAY);
        }
    }
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
                adapter_tensor_set_group(a, idx[2 * (l * ROLE_N_LINEAR + r) + 1], PG_NO_DECAY);
            }
        }
    for (int k = 0; k < adapter_norm_slots(m); k++) {
        const int l = k / MODEL_N_NORMS, which = k % MODEL_N_NORMS, n = model_norm_len(m, which);
        nidx[2 * k] = nidx[2 * k + 1] = -1;
        if (!adapter_base_norm_w(m, l, which)) continue;
        adapter_norm_name(m, l, which, "weight", key, sizeof key);
        nidx[2 * k] = adapter_add_tensor(a, key, 1, n, 1, true, err);
        bad |= nidx[2 * k] < 0;
        /* norm weights and biases: no decay (the Trainer's rule) */
        adapter_tensor_set_group(a, nidx[2 * k], PG_NO_DECAY);
        if (adapter_base_norm_b(m, l, which)) {
            adapter_norm_name(m, l, which, "bias", key, sizeof key);
            nidx[2 * k + 1] = adapter_add_tensor(a, key, 1, n, 1, true, err);
            bad |= nidx[2 * k + 1] < 0;
            adapter_tensor_set_group(a, nidx[2 * k + 1], PG_NO_DECAY);
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
    full *v = S(a);
    const int L = m->cfg.n_layer;
    const size_t ns = (size_t)L * ROLE_N_LINEAR + 1, nn = (size_t)adapter_norm_slots(m);
    v->fw = peft_calloc(ns, sizeof *v->fw, err);
    v->gfw = peft_calloc(ns, sizeof *v->gfw, err);
    v->fb = peft_calloc(ns, sizeof *v->fb, err);
    v->gfb = peft_calloc(ns, sizeof *v->gfb, err);
    v->fnw = peft_calloc(nn, sizeof *v->fnw, err);
    v->gfnw = peft_calloc(nn, sizeof *v->gfnw, err);
    v->fnb = peft_calloc(nn, sizeof *v->fnb, err);
    v->gfnb = peft_calloc(nn, sizeof *v->gfnb, err);
    if (!v->fw || !v->gfw || !v->fb || !v->gfb || !v->fnw || !v->gfnw || !v->fnb || !v->gfnb) return PEFT_ERR_NOMEM;
    int rc = 0;
    v->femb = a->tensors[eidx[0]].p;
    v->gfemb = a->tensors[eidx[0]].g;
    if ((rc = weight_to_f32(&m->tok_emb, v->femb))) goto bad;
    if (eidx[1] >= 0) {
        v->fpos = a->tensors[eidx[1]].p;
        v->gfpos = a->tensors[eidx[1]].g;
        if ((rc = weight_to_f32(&m->pos_emb, v->fpos))) goto bad;
    }
    if (eidx[2] >= 0) {
        v->fhead = a->tensors[eidx[2]].p;
        v->gfhead = a->tensors[eidx[2]].g;
        if ((rc = weight_to_f32(&m->lm_head, v->fhead))) goto bad;
    }
    if (eidx[3] >= 0) {
        v->ftype = a->tensors[eidx[3]].p;
        v->gftype = a->tensors[eidx[3]].g;
        if ((rc = weight_to_f32(&m->type_emb, v->ftype))) goto bad;
    }
    if (eidx[4] >= 0) {
        const size_t d = (size_t)m->cfg.d_model;
        a->head.pw = a->tensors[eidx[4]].p;
        a->head.gpw = a->tensors[eidx[4]].g;
        memcpy(a->head.pw, m->pooler_w, d * d * sizeof(float));
        if (eidx[5] >= 0) {
            a->head.pb = a->tensors[eidx[5]].p;
            a->head.gpb = a->tensors[eidx[5]].g;
            memcpy(a->head.pb, m->pooler_b, d * sizeof(float));
        }
    }
    for (int s = 0; s < L * ROLE_N_LINEAR; s++) {
        int iw = idx[2 * s], ib = idx[2 * s + 1];
        if (iw < 0) continue;
        const model_linear *lin = &m->layers[s / ROLE_N_LINEAR].lin[s % ROLE_N_LINEAR];
        kern_weight *w = &v->fw[s];
        w->dtype = PEFT_DT_F32;
        w->rows = lin->w.rows;
        w->cols = lin->w.cols;
        w->data = a->tensors[iw].p;
        w->transposed = false;
        w->bf16_fwd = w->bf16_bwd = NULL; /* trainable: never packed */
        w->bf16_bwd_nkb = 0;
        v->gfw[s] = a->tensors[iw].g;
        if ((rc = weight_to_f32(&lin->w, a->tensors[iw].p))) goto bad;
        if (ib >= 0) {
            v->fb[s] = a->tensors[ib].p;
            v->gfb[s] = a->tensors[ib].g;
            memcpy(v->fb[s], lin->b, (size_t)lin->w.rows * sizeof(float));
        }
    }
    for (int k = 0; k < adapter_norm_slots(m); k++) {
        const int iw = nidx[2 * k], ib = nidx[2 * k + 1], l = k / MODEL_N_NORMS, which = k % MODEL_N_NORMS;
        const size_t n = (size_t)model_norm_len(m, which);
        if (iw < 0) continue;
        v->fnw[k] = a->tensors[iw].p;
        v->gfnw[k] = a->tensors[iw].g;
        memcpy(v->fnw[k], adapter_base_norm_w(m, l, which), n * sizeof(float));
        if (ib >= 0) {
            v->fnb[k] = a->tensors[ib].p;
            v->gfnb[k] = a->tensors[ib].g;
            memcpy(v->fnb[k], adapter_base_norm_b(m, l, which), n * sizeof(float));
        }
    }
    return 0;
bad:
    return peft_fail(err, rc, "%s: cannot convert the base weights to f32 for full fine-tuning", m->path);
}

/* GGUF base: dir/model.gguf with the base's metadata and every tensor as
 * F32 (llama.cpp's Q/K row order restored). */
static int save_full_gguf(const adapter *a, const peft_model *m, const char *dir, peft_err *err) {
    const full *v = S(a);
    const gguf_file *g = m->gguf;
    const int n = gguf_n_tensors(g), L = m->cfg.n_layer;
    int rc = peft_mkdir_p(dir, err);
    if (rc) return rc;
    char *path = peft_path_join(dir, "model.gguf", err);
    gguf_writer *w = gguf_writer_new(err);
    float **bufs = peft_calloc((size_t)n + 1, sizeof *bufs, err);
    bool writer_err = false;
    if (!path || !w || !bufs) { rc = PEFT_ERR_NOMEM; goto done; }
    if ((rc = gguf_w_copy_kv(w, g, "general.file_type"))) {
        rc = peft_fail(err, rc, "%s: cannot copy the metadata of %s", path, m->path);
        goto done;
    }
    /* the out norm slot: output_norm, or an encoder's token_embd_norm */
    char out_norm_w[64], out_norm_b[64];
    const char *onorm = m->cfg.desc->gguf_out_norm ? m->cfg.desc->gguf_out_norm : "output_norm";
    snprintf(out_norm_w, sizeof out_norm_w, "%s.weight", onorm);
    snprintf(out_norm_b, sizeof out_norm_b, "%s.bias", onorm);
    for (int k = 0; k < n && !rc; k++) {
        const gguf_tensor *t = gguf_tensor_at(g, k);
        const float *src = NULL;
        int perm = 0;
        char nm[128];
        if (!strcmp(t->name, "token_embd.weight")) src = v->femb;
        else if (!strcmp(t->name, "position_embd.weight")) src = v->fpos;
        else if (!strcmp(t->name, "output.weight")) src = v->fhead;
        else if (!strcmp(t->name, "token_types.weight")) src = v->ftype;
        else if (!strcmp(t->name, out_norm_w)) src = v->fnw[adapter_norm_slot(L, NORM_ATTN)];
        else if (!strcmp(t->name, out_norm_b)) src = v->fnb[adapter_norm_slot(L, NORM_ATTN)];
        for (int l = 0; l < L && !src; l++) {
            for (int which = 0; which < MODEL_N_NORMS && !src; which++) {
                const char *gn = m->cfg.desc->gguf_norm[which];
                if (!gn) continue;
                snprintf(nm, sizeof nm, "blk.%d.%s.weight", l, gn);
                if (!strcmp(t->name, nm)) src = v->fnw[adapter_norm_slot(l, which)];
                snprintf(nm, sizeof nm, "blk.%d.%s.bias", l, gn);
                if (!strcmp(t->name, nm)) src = v->fnb[adapter_norm_slot(l, which)];
            }
            for (int r = 0; r < ROLE_N_LINEAR && !src; r++) {
                const int s = l * ROLE_N_LINEAR + r;
                if (!v->fw[s].data) continue;
                lora_gguf_weight_name(m, l, (model_linear_role)r, nm, sizeof nm);
                if (!strcmp(t->name, nm)) {
                    src = v->fw[s].data;
                    if (!model_gguf_permutes(m, (model_linear_role)r, &perm)) perm = 0;
                }
                size_t ln = strlen(nm);
                snprintf(nm + ln - 7, sizeof nm - (ln - 7), ".bias");
                if (!src && !strcmp(t->name, nm)) src = v->fb[s];
            }
        }
        if (!src) {
            /* not trained (llama3's rope_freqs, ...): copied as it is; a
             * previous head is replaced by the trained one below */
            if (mts_has_head(a) && !strcmp(t->name, MTS_HEAD_MODEL_KEY)) continue;
            if ((rc = gguf_w_tensor(w, t->name, t->dtype, t->ndim, t->ne, t->data, t->nbytes))) {
                writer_err = true;
                break;
            }
            continue;
        }
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) numel *= t->ne[d];
        bufs[k] = peft_malloc((size_t)numel * sizeof(float), err);
        if (!bufs[k]) { rc = PEFT_ERR_NOMEM; break; }
        if (perm) model_permute_rows(bufs[k], src, t->ne[1], (size_t)t->ne[0] * sizeof(float), perm, true);
        else memcpy(bufs[k], src, (size_t)numel * sizeof(float));
        if ((rc = gguf_w_tensor(w, t->name, PEFT_DT_F32, t->ndim, t->ne, bufs[k], (size_t)numel * sizeof(float)))) {
            writer_err = true;   /* the message is on the writer: save reports it */
            break;
        }
    }
    float *score_copy = NULL;
    if (!rc && mts_has_head(a)) {
        /* the head as score.weight (peft.c reads it back; llama.cpp ignores it) */
        const int64_t ne[2] = {m->cfg.d_model, a->mc.n_labels};
        const size_t nb = (size_t)ne[0] * (size_t)ne[1] * sizeof(float);
        score_copy = peft_malloc(nb, err);
        if (!score_copy) rc = PEFT_ERR_NOMEM;
        else {
            memcpy(score_copy, mts_head_weight(a, m), nb);
            rc = gguf_w_tensor(w, MTS_HEAD_MODEL_KEY, PEFT_DT_F32, 2, ne, score_copy, nb);
            writer_err = rc != 0;
        }
    }
    if (!rc || writer_err) rc = gguf_writer_save(w, path, err);
    free(score_copy);
done:
    gguf_writer_free(w);
    for (int k = 0; bufs && k < n; k++) free(bufs[k]);
    free(bufs);
    free(path);
    return rc;
}

/* With a head, config.json names transformers' *ForSequenceClassification
 * class and the labels, so the folder loads there as a classifier. */
static int classifier_config(const peft_model *m, const char *dir, int n_labels, peft_err *err) {
    char *path = peft_path_join(dir, "config.json", err);
    char *text = NULL;
    size_t len = 0;
    int rc = path ? peft_read_file(path, &text, &len, err) : PEFT_ERR_NOMEM;
    cJSON *o = rc ? NULL : cJSON_ParseWithLength(text, len);
    if (!rc && !o) rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: invalid JSON", path);
    if (!rc) {
        cJSON_DeleteItemFromObjectCaseSensitive(o, "architectures");
        cJSON *arr = cJSON_AddArrayToObject(o, "architectures");
        bool ok = arr != NULL;
        ok &= cJSON_AddItemToArray(arr, cJSON_CreateString(m->cfg.desc->cls_class));
        /* transformers pools at the last non-pad token: it needs a pad id */
        const cJSON *pad = cJSON_GetObjectItemCaseSensitive(o, "pad_token_id");
        if (!cJSON_IsNumber(pad) && m->tok) {
            int pid = bpe_pad_id(m->tok);
            if (pid < 0) pid = bpe_eos_id(m->tok);
            if (pid >= 0) {
                cJSON_DeleteItemFromObjectCaseSensitive(o, "pad_token_id");
                ok &= cJSON_AddNumberToObject(o, "pad_token_id", pid) != NULL;
            }
        }
        ok &= mts_write_class_names(o, n_labels);
        char *js = ok ? cJSON_Print(o) : NULL;
        rc = js ? peft_write_file_atomic(path, js, strlen(js), err)
                : peft_fail(err, PEFT_ERR_NOMEM, "%s: out of memory building the classifier config", path);
        free(js);
    }
    cJSON_Delete(o);
    free(text);
    free(path);
    return rc;
}

static int full_save(const adapter *a, const peft_model *m, const char *dir, peft_err *err) {
    const full *v = S(a);
    if (!strcmp(dir, m->path)) return peft_fail(err, PEFT_ERR_INVALID, "%s: the fine-tuned model cannot overwrite its base", dir);
    if (m->gguf) return save_full_gguf(a, m, dir, err);
    if (strcmp(m->source, "hf") != 0)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: cannot save a fully fine-tuned %s model", dir, m->source);
    int rc = peft_mkdir_p(dir, err);
    if (rc) return rc;
    int n = 0;
    for (int i = 0; i < a->n_tensors; i++) n += a->tensors[i].saved;
    st_write_tensor *t = peft_calloc((size_t)n + 3, sizeof *t, err);
    float **tmp = peft_calloc((size_t)n + 1, sizeof *tmp, err);
    char *st_path = peft_path_join(dir, "model.safetensors", err);
    if (!t || !tmp || !st_path) { rc = PEFT_ERR_NOMEM; goto done; }
    int k = 0;
    for (int i = 0; i < a->n_tensors && !rc; i++) {
        const adapter_tensor *at = &a->tensors[i];
        if (!at->saved) continue;
        st_write_tensor *w = &t[k];
        /* the head under transformers' *ForSequenceClassification name */
        w->name = mts_is_head(a, at->p) ? mts_model_key(a, at->p) : at->key;
        w->dtype = PEFT_DT_F32;
        w->ndim = at->ndim;
        w->shape[0] = at->shape[0];
        w->shape[1] = at->shape[1];
        w->data = at->p;
        /* GPT-2's Conv1D stores (in, out): transpose back */
        if (m->cfg.desc->hf_conv1d && at->ndim == 2 && v->fw) {
            for (int s = 0; s < m->cfg.n_layer * ROLE_N_LINEAR; s++)
                if (v->fw[s].data == at->p && m->layers[s / ROLE_N_LINEAR].lin[s % ROLE_N_LINEAR].w.transposed) {
                    const int64_t R = at->shape[0], C = at->shape[1];
                    tmp[k] = peft_malloc((size_t)(R * C) * sizeof(float), err);
                    if (!tmp[k]) { rc = PEFT_ERR_NOMEM; break; }
                    for (int64_t r = 0; r < R; r++)
                        for (int64_t c = 0; c < C; c++) tmp[k][c * R + r] = at->p[r * C + c];
                    w->shape[0] = C;
                    w->shape[1] = R;
                    w->data = tmp[k];
                }
        }
        /* a (1 + w) RMSNorm (Gemma): HF stores w, the adapter holds 1 + w */
        bool is_norm_w = false;
        for (int s = 0; m->cfg.desc->norm_plus_one && s < adapter_norm_slots(m) && !is_norm_w; s++)
            is_norm_w = v->fnw[s] && v->fnw[s] == at->p;
        if (is_norm_w && !rc) {
            tmp[k] = peft_malloc((size_t)at->n * sizeof(float), err);
            if (!tmp[k]) { rc = PEFT_ERR_NOMEM; break; }
            for (int64_t e = 0; e < at->n; e++) tmp[k][e] = at->p[e] - 1.0f;
            w->data = tmp[k];
        }
        k++;
    }
    /* BERT's pooler, which its classifier reads: kept as the base has it
     * when it is not among the trained tensors (no head) */
    char pw[160], pb[160];
    if (!rc && m->pooler_w && m->cfg.desc->hf_pooler && !a->head.pw) {
        const int64_t d = m->cfg.d_model;
        snprintf(pw, sizeof pw, "%s%s.weight", model_hf_prefix(m), m->cfg.desc->hf_pooler);
        snprintf(pb, sizeof pb, "%s%s.bias", model_hf_prefix(m), m->cfg.desc->hf_pooler);
        t[k++] = (st_write_tensor){pw, PEFT_DT_F32, 2, {d, d}, m->pooler_w};
        if (m->pooler_b) t[k++] = (st_write_tensor){pb, PEFT_DT_F32, 1, {d}, m->pooler_b};
    }
    static const char *const meta[] = {"format", "pt", NULL};
    if (!rc) rc = st_write(st_path, t, k, meta, err);
    static const char *const files[] = {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
                                        "special_tokens_map.json", "vocab.json", "merges.txt", "tokenizer.model",
                                        "chat_template.jinja", NULL};
    for (int i = 0; files[i] && !rc; i++) rc = peft_copy_file_if_exists(m->path, dir, files[i], err);
    if (!rc && mts_has_head(a)) rc = classifier_config(m, dir, a->mc.n_labels, err);
done:
    for (int i = 0; tmp && i < n; i++) free(tmp[i]);
    free(tmp);
    free(t);
    free(st_path);
    return rc;
}


static int full_create(adapter *a, const peft_model *m, const method_config *mc, peft_err *err) {
    full *v = peft_calloc(1, sizeof *v, err);
    if (!v) return PEFT_ERR_NOMEM;
    a->priv = v;
    const int L = m->cfg.n_layer;
    v->tied = m->cfg.tied;
    v->idx = peft_malloc(((size_t)L + 1) * ROLE_N_LINEAR * 2 * sizeof *v->idx, err);
    v->nidx = peft_malloc((size_t)adapter_norm_slots(m) * 2 * sizeof *v->nidx, err);
    if (!v->idx || !v->nidx) return PEFT_ERR_NOMEM;
    return new_full(a, m, mc->n_labels, v->idx, v->nidx, v->eidx, err);
}

/* wire and init are one step: the copies start as the base's values */
static int full_wire(adapter *a, const peft_model *m, peft_err *err) {
    full *v = S(a);
    return wire_full(a, m, v->idx, v->nidx, v->eidx, err);
}

static hook_kind full_kind(const adapter *a, int l, model_linear_role r) {
    return S(a)->fw[l * ROLE_N_LINEAR + r].data ? HOOK_REPLACE : HOOK_NONE;
}

static int full_fwd(const adapter *a, const lin_call *c) {
    const full *v = S(a);
    const int s = c->l * ROLE_N_LINEAR + c->r;
    return kern_matmul(c->y, c->ldy, c->x, c->N, &v->fw[s], v->fb[s], c->beta, c->mm_scr, c->nt);
}

static int full_bwd(adapter *a, const lin_call *c, const float *dy, int lddy, float *dx) {
    const full *v = S(a);
    const int s = c->l * ROLE_N_LINEAR + c->r, N = c->N, in = c->in, out = c->out;
    if (v->gfb[s])
        for (int i = 0; i < N; i++)
            for (int j = 0; j < out; j++) v->gfb[s][j] += dy[(size_t)i * lddy + j];
    /* gW (out, in) += dyᵀ·x */
    kern_gemm_rows(true, false, out, in, N, 1.0f, dy, lddy, c->x, in, 1.0f, v->gfw[s], in, c->nt);
    return dx ? kern_matmul_dx(dx, dy, lddy, N, &v->fw[s], c->mm_scr, c->nt) : 0;
}

static const float *full_norm_param(const adapter *a, int l, int which, bool bias) {
    return bias ? S(a)->fnb[adapter_norm_slot(l, which)] : S(a)->fnw[adapter_norm_slot(l, which)];
}

static float *full_norm_grad(adapter *a, int l, int which, bool bias) {
    return bias ? S(a)->gfnb[adapter_norm_slot(l, which)] : S(a)->gfnw[adapter_norm_slot(l, which)];
}

static const kern_weight *f32_weight(const float *p, int64_t rows, int64_t cols, kern_weight *tmp) {
    memset(tmp, 0, sizeof *tmp);   /* trainable: never packed */
    tmp->dtype = PEFT_DT_F32;
    tmp->rows = rows;
    tmp->cols = cols;
    tmp->data = p;
    return tmp;
}

static const kern_weight *full_emb(const adapter *a, const peft_model *m, int which, kern_weight *tmp) {
    const full *v = S(a);
    if (which == 3) return v->ftype ? f32_weight(v->ftype, m->type_emb.rows, m->cfg.d_model, tmp) : NULL;
    const float *p = which == 0 ? v->femb : which == 1 ? v->fpos : v->fhead ? v->fhead : v->tied ? v->femb : NULL;
    if (!p) return NULL;
    return f32_weight(p, which == 1 ? m->pos_emb.rows : m->cfg.vocab, m->cfg.d_model, tmp);
}

static float *full_emb_grad(adapter *a, int which) {
    const full *v = S(a);
    if (which == 3) return v->gftype;
    return which == 0 ? v->gfemb : which == 1 ? v->gfpos : v->gfhead ? v->gfhead : v->tied ? v->gfemb : NULL;
}

static int full_lowest(const adapter *a, const peft_model *m) {
    (void)a;
    (void)m;
    return 0;
}

static void full_describe(const adapter *a, char *buf, size_t cap) {
    int n = 0;   /* the head (1 to 4 tensors) apart */
    for (int i = 0; i < a->n_tensors; i++) n += !mts_is_head(a, a->tensors[i].p);
    snprintf(buf, cap, "%d tensors, every weight of the base", n);
}

const method_ops method_full = {
    .name = "full",
    .summary = "full fine-tuning: every weight as an f32 copy (the baseline); saved as a model",
    .flags = METHOD_SAVES_MODEL,
    .create = full_create,
    .wire = full_wire,
    .free_priv = full_free,
    .save = full_save,
    .lin_kind = full_kind,
    .lin_fwd = full_fwd,
    .lin_bwd = full_bwd,
    .norm_param = full_norm_param,
    .norm_grad = full_norm_grad,
    .emb_weight = full_emb,
    .emb_grad = full_emb_grad,
    .lowest_layer = full_lowest,
    .describe = full_describe,
};
