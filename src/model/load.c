/* load.c — maps the tensors of a HF folder or a GGUF file onto the model's
 * layers. Big matrices stay where they are (mmapped, stored dtype); norms and
 * biases are converted to owned f32. GGUF llama Q/K rows are put back in HF
 * order so the rest of the library sees one layout. */
#include "model/model.h"
#include "kernels/quant.h"
#include "core/limits.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A tensor from either source, shape row-major (outermost first). */
typedef struct {
    peft_dtype dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t nbytes;
} src_tensor;

static bool find_tensor(const peft_model *m, const char *name, src_tensor *out) {
    memset(out, 0, sizeof *out);
    if (m->st) {
        const st_tensor *t = st_find(m->st, name);
        if (!t || t->ndim > 4) return false;
        out->dtype = t->dtype;
        out->ndim = t->ndim;
        for (int i = 0; i < t->ndim; i++) out->shape[i] = t->shape[i];
        out->data = t->data;
        out->nbytes = t->nbytes;
        return true;
    }
    const gguf_tensor *t = gguf_find_tensor(m->gguf, name);
    if (!t) return false;
    out->dtype = t->dtype;
    out->ndim = t->ndim;
    for (int i = 0; i < t->ndim; i++) out->shape[i] = t->ne[t->ndim - 1 - i];
    out->data = t->data;
    out->nbytes = t->nbytes;
    return true;
}

int model_own(peft_model *m, void *p, peft_err *err) {
    if (m->n_owned == m->cap_owned) {
        int cap = m->cap_owned ? m->cap_owned * 2 : 64;
        void **n = realloc(m->owned, (size_t)cap * sizeof *n);
        if (!n) { free(p); return peft_fail(err, PEFT_ERR_NOMEM, "out of memory"); }
        m->owned = n;
        m->cap_owned = cap;
    }
    m->owned[m->n_owned++] = p;
    return 0;
}

/* ---- names ---------------------------------------------------------------- */

/* HF checkpoints of some families come with and without the prefix a saved
 * model has ("transformer."): the one this folder uses. */
static const char *hf_prefix(const peft_model *m) {
    const arch_desc *D = m->cfg.desc;
    char name[256];
    src_tensor t;
    if (!D->hf_prefix[0]) return "";
    snprintf(name, sizeof name, "%s%s.weight", D->hf_prefix, D->hf_tok_emb);
    return (m->st && find_tensor(m, name, &t)) ? D->hf_prefix : "";
}

const char *model_hf_prefix(const peft_model *m) { return m->cfg.desc->hf_prefix; }

const char *model_linear_name(const peft_model *m, model_linear_role r) {
    const char *s = m->cfg.desc->hf_lin[r];
    if (!s) return NULL;
    const char *dot = strchr(s, '.');
    return dot ? dot + 1 : s;
}

int model_linear_hf_path(const peft_model *m, int layer, model_linear_role r, char *buf, size_t cap) {
    const arch_desc *D = m->cfg.desc;
    if (!D->hf_lin[r]) return PEFT_ERR_INVALID;
    char lp[128];
    snprintf(lp, sizeof lp, D->hf_layer, layer);
    return snprintf(buf, cap, "%s%s.%s", model_hf_prefix(m), lp, D->hf_lin[r]) >= (int)cap ? PEFT_ERR_INVALID : 0;
}

/* ---- weights -------------------------------------------------------------- */

/* A 1-D tensor of n elements as owned f32; *out stays NULL when absent and
 * not required. */
static int get_vec(peft_model *m, const char *name, int64_t n, bool required, float **out,
                   peft_err *err) {
    *out = NULL;
    src_tensor t;
    if (!find_tensor(m, name, &t)) {
        if (required) return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing tensor %s", m->path, name);
        return 0;
    }
    int64_t numel = 1;
    for (int i = 0; i < t.ndim; i++) numel *= t.shape[i];
    if (numel != n)
        return peft_fail(err, PEFT_ERR_SHAPE, "%s: tensor %s has %lld elements, expected %lld", m->path,
                         name, (long long)numel, (long long)n);
    if (!kern_dtype_is_float_convertible(t.dtype) || kern_dtype_row_bytes(t.dtype, n) == 0)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: tensor %s has unsupported dtype %s", m->path, name,
                         peft_dtype_name(t.dtype));
    float *v = peft_malloc((size_t)n * sizeof(float), err);
    if (!v) return PEFT_ERR_NOMEM;
    int rc = kern_dequant_row(t.dtype, t.data, v, n);
    if (!rc) rc = model_own(m, v, err);
    else { free(v); return peft_fail(err, rc, "%s: cannot convert tensor %s", m->path, name); }
    *out = v;
    return rc;
}

/* A matrix for y = x·Wᵀ with `rows` outputs and `cols` inputs. Accepts
 * (rows, cols), or (cols, rows) when conv1d (GPT-2 HF). */
static int get_mat(peft_model *m, const char *name, int64_t rows, int64_t cols, bool conv1d,
                   bool required, kern_weight *w, peft_err *err) {
    memset(w, 0, sizeof *w);
    src_tensor t;
    if (!find_tensor(m, name, &t)) {
        if (required) return peft_fail(err, PEFT_ERR_FORMAT, "%s: missing tensor %s", m->path, name);
        return 1;
    }
    int64_t r = conv1d ? cols : rows, c = conv1d ? rows : cols;
    if (t.ndim != 2 || t.shape[0] != r || t.shape[1] != c)
        return peft_fail(err, PEFT_ERR_SHAPE, "%s: tensor %s has shape [%lld, %lld], expected [%lld, %lld]",
                         m->path, name, (long long)t.shape[0], (long long)(t.ndim > 1 ? t.shape[1] : 0),
                         (long long)r, (long long)c);
    if (!kern_dtype_is_float_convertible(t.dtype))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: tensor %s has unsupported dtype %s", m->path, name,
                         peft_dtype_name(t.dtype));
    size_t rb = kern_dtype_row_bytes(t.dtype, t.shape[1]);
    if (rb == 0 || rb * (size_t)t.shape[0] != t.nbytes)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: tensor %s: %zu bytes do not hold %lld x %lld %s", m->path,
                         name, t.nbytes, (long long)t.shape[0], (long long)t.shape[1], peft_dtype_name(t.dtype));
    if (conv1d && peft_dtype_elem_size(t.dtype) == 0)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: tensor %s: transposed quantized weights are not supported",
                         m->path, name);
    w->dtype = t.dtype;
    w->rows = rows;
    w->cols = cols;
    w->data = t.data;
    w->transposed = conv1d;
    return 0;
}

bool model_gguf_permutes(const peft_model *m, model_linear_role r, int *n_heads) {
    if (!m->cfg.desc->gguf_permute_qk) return false;
    if (r == ROLE_Q) { *n_heads = m->cfg.n_head; return true; }
    if (r == ROLE_K) { *n_heads = m->cfg.n_kv_head; return true; }
    return false;
}

void model_permute_rows(void *dst, const void *src, int64_t rows, size_t row_bytes, int n_heads, bool to_gguf) {
    const int64_t hd = rows / n_heads, half = hd / 2;
    for (int64_t h = 0; h < n_heads; h++)
        for (int64_t j = 0; j < 2; j++)
            for (int64_t i = 0; i < half; i++) {
                const int64_t g = h * hd + 2 * i + j, f = h * hd + j * half + i;
                const int64_t d = to_gguf ? g : f, s = to_gguf ? f : g;
                memcpy((char *)dst + (size_t)d * row_bytes, (const char *)src + (size_t)s * row_bytes, row_bytes);
            }
}

/* Puts a GGUF Q/K weight (and its bias) back in HF row order, copying the
 * rows in their stored dtype (a quantized tensor stays quantized). */
static int unpermute_linear(peft_model *m, model_linear *lin, int n_heads, peft_err *err) {
    kern_weight *w = &lin->w;
    size_t rb = kern_dtype_row_bytes(w->dtype, w->cols);
    char *dst = peft_malloc(rb * (size_t)w->rows, err);
    if (!dst) return PEFT_ERR_NOMEM;
    model_permute_rows(dst, w->data, w->rows, rb, n_heads, false);
    w->data = dst;
    int rc = model_own(m, dst, err);
    if (rc || !lin->b) return rc;
    float *b = peft_malloc((size_t)w->rows * sizeof(float), err);
    if (!b) return PEFT_ERR_NOMEM;
    model_permute_rows(b, lin->b, w->rows, sizeof(float), n_heads, false);
    lin->b = b; /* the old bias stays owned by the model until it is freed */
    return model_own(m, b, err);
}

static void linear_dims(const model_config *c, model_linear_role r, int64_t *out, int64_t *in) {
    const int64_t d = c->d_model, qd = (int64_t)c->n_head * c->head_dim, kvd = (int64_t)c->n_kv_head * c->head_dim;
    switch (r) {
    case ROLE_Q: *out = qd; *in = d; break;
    case ROLE_K: case ROLE_V: *out = kvd; *in = d; break;
    case ROLE_QKV: *out = qd + 2 * kvd; *in = d; break;
    case ROLE_O: *out = d; *in = qd; break;
    case ROLE_GATE: *out = c->d_ff; *in = d; break;
    case ROLE_UP: *out = c->desc->fused_gate_up ? 2 * (int64_t)c->d_ff : c->d_ff; *in = d; break;
    case ROLE_DOWN: default: *out = d; *in = c->d_ff; break;
    }
}

int model_no_targets(const peft_model *m, const char *what, peft_err *err) {
    const arch_desc *D = m->cfg.desc;
    if (!D->lora_targets)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: %s (%s) has no default target modules (HF peft has none for %s): "
                         "pass --target, from %s", what, m->path, D->name, D->name, D->target_help);
    return peft_fail(err, PEFT_ERR_INVALID, "%s: no linear layer of %s is targeted", what, m->path);
}

int model_norm_len(const peft_model *m, int which) {
    return which == NORM_Q || which == NORM_K ? m->cfg.head_dim : m->cfg.d_model;
}

static int load_layers(peft_model *m, bool gguf, const char *pfx, peft_err *err) {
    const model_config *c = &m->cfg;
    const arch_desc *D = c->desc;
    char name[320], lp[200];
    int rc;
    m->layers = peft_calloc((size_t)c->n_layer, sizeof *m->layers, err);
    if (!m->layers) return PEFT_ERR_NOMEM;
    for (int l = 0; l < c->n_layer; l++) {
        model_layer *L = &m->layers[l];
        if (gguf) snprintf(lp, sizeof lp, "blk.%d", l);
        else {
            char fmt[160];
            snprintf(fmt, sizeof fmt, "%s%s", pfx, D->hf_layer);
            snprintf(lp, sizeof lp, fmt, l);
        }
        for (int which = 0; which < MODEL_N_NORMS; which++) {
            const char *nn = gguf ? D->gguf_norm[which] : D->hf_norm[which];
            if (!D->hf_norm[which]) continue;
            const int64_t n = model_norm_len(m, which);
            snprintf(name, sizeof name, "%s.%s.weight", lp, nn);
            if ((rc = get_vec(m, name, n, true, &L->norm_w[which], err))) return rc;
            if (D->norm_plus_one && !gguf)
                for (int64_t i = 0; i < n; i++) L->norm_w[which][i] += 1.0f;
            if (D->norm_bias) {
                snprintf(name, sizeof name, "%s.%s.bias", lp, nn);
                if ((rc = get_vec(m, name, n, true, &L->norm_b[which], err))) return rc;
            }
        }
        for (int r = 0; r < ROLE_N_LINEAR; r++) {
            if (!D->hf_lin[r]) continue;
            const char *ln = gguf ? D->gguf_lin[r] : D->hf_lin[r];
            int64_t out, in;
            linear_dims(c, (model_linear_role)r, &out, &in);
            model_linear *lin = &L->lin[r];
            snprintf(name, sizeof name, "%s.%s.weight", lp, ln);
            rc = get_mat(m, name, out, in, D->hf_conv1d && !gguf, true, &lin->w, err);
            if (rc) return rc;
            lin->present = true;
            snprintf(name, sizeof name, "%s.%s.bias", lp, ln);
            if ((rc = get_vec(m, name, out, D->lin_bias, &lin->b, err))) return rc;
        }
        for (int r = 0, nh; gguf && r < ROLE_N_LINEAR; r++)
            if (model_gguf_permutes(m, (model_linear_role)r, &nh) && (rc = unpermute_linear(m, &L->lin[r], nh, err)))
                return rc;
    }
    return 0;
}

static int load_globals(peft_model *m, bool gguf, const char *pfx, peft_err *err) {
    const model_config *c = &m->cfg;
    const arch_desc *D = c->desc;
    char name[256];
    int rc;
    if (gguf) snprintf(name, sizeof name, "token_embd.weight");
    else snprintf(name, sizeof name, "%s%s.weight", pfx, D->hf_tok_emb);
    if ((rc = get_mat(m, name, c->vocab, c->d_model, false, true, &m->tok_emb, err))) return rc;
    if (D->pos == ARCH_POS_LEARNED) {
        if (gguf) snprintf(name, sizeof name, "position_embd.weight");
        else snprintf(name, sizeof name, "%s%s.weight", pfx, D->hf_pos_emb);
        if ((rc = get_mat(m, name, (int64_t)c->n_ctx + c->pos_offset, c->d_model, false, true, &m->pos_emb, err)))
            return rc;
    }
    if (D->hf_type_emb && c->n_types > 0) {
        if (gguf) snprintf(name, sizeof name, "token_types.weight");
        else snprintf(name, sizeof name, "%s%s.weight", pfx, D->hf_type_emb);
        if ((rc = get_mat(m, name, c->n_types, c->d_model, false, true, &m->type_emb, err))) return rc;
    }
    char base[200];
    if (gguf) snprintf(base, sizeof base, "%s", D->gguf_out_norm ? D->gguf_out_norm : "output_norm");
    else snprintf(base, sizeof base, "%s%s", pfx, D->hf_out_norm);
    snprintf(name, sizeof name, "%s.weight", base);
    if ((rc = get_vec(m, name, c->d_model, true, &m->out_norm_w, err))) return rc;
    if (D->norm_plus_one && !gguf)
        for (int i = 0; i < c->d_model; i++) m->out_norm_w[i] += 1.0f;
    if (D->norm_bias) {
        snprintf(name, sizeof name, "%s.bias", base);
        if ((rc = get_vec(m, name, c->d_model, true, &m->out_norm_b, err))) return rc;
    }
    if (D->encoder) {
        /* no LM head; BERT's pooler feeds its classifier, and a classifier
         * base's own head is where a new adapter's starts */
        if (D->hf_pooler && !gguf) {
            snprintf(name, sizeof name, "%s%s.weight", pfx, D->hf_pooler);
            if ((rc = get_vec(m, name, (int64_t)c->d_model * c->d_model, false, &m->pooler_w, err))) return rc;
            snprintf(name, sizeof name, "%s%s.bias", pfx, D->hf_pooler);
            if ((rc = get_vec(m, name, c->d_model, false, &m->pooler_b, err))) return rc;
        }
        src_tensor ct;
        const bool dense = D->cls == ARCH_CLS_DENSE;
        const char *cw = dense ? "classifier.out_proj.weight" : "classifier.weight";
        const char *cb = dense ? "classifier.out_proj.bias" : "classifier.bias";
        if (!gguf && find_tensor(m, cw, &ct) && ct.ndim == 2 && ct.shape[1] == c->d_model && ct.shape[0] >= 1 &&
            ct.shape[0] <= PEFT_MAX_LABELS) {
            m->n_labels = (int)ct.shape[0];
            if ((rc = get_vec(m, cw, ct.shape[0] * c->d_model, true, &m->score, err)) ||
                (rc = get_vec(m, cb, ct.shape[0], true, &m->score_b, err)))
                return rc;
            if (dense && ((rc = get_vec(m, "classifier.dense.weight", (int64_t)c->d_model * c->d_model, true, &m->cls_dw,
                                        err)) ||
                          (rc = get_vec(m, "classifier.dense.bias", c->d_model, true, &m->cls_db, err))))
                return rc;
        }
        return 0;
    }
    snprintf(name, sizeof name, "%s.weight", gguf ? "output" : D->hf_lm_head);
    rc = get_mat(m, name, c->vocab, c->d_model, false, false, &m->lm_head, err);
    if (rc < 0) return rc;
    if (rc == 1 || c->tied) m->lm_head = m->tok_emb; /* tied (or a tied checkpoint that stores a copy) */
    /* a sequence-classification head (transformers' *ForSequenceClassification
     * `score`, as full fine-tuning with labels saves it) */
    src_tensor st;
    if (find_tensor(m, "score.weight", &st)) {
        int64_t numel = 1;
        for (int i = 0; i < st.ndim; i++) numel *= st.shape[i];
        if (numel % c->d_model != 0 || numel / c->d_model < 1 || numel / c->d_model > PEFT_MAX_LABELS)
            return peft_fail(err, PEFT_ERR_SHAPE, "%s: score.weight has %lld elements, not n_labels x %d with n_labels "
                             "in 1..%d", m->path, (long long)numel, c->d_model, PEFT_MAX_LABELS);
        m->n_labels = (int)(numel / c->d_model);
        if ((rc = get_vec(m, "score.weight", numel, true, &m->score, err))) return rc;
    }
    return 0;
}

/* Parameter count and a dtype histogram of all stored tensors. */
static void summarize(peft_model *m) {
    int counts[PEFT_DT_COUNT + 1] = {0};
    int64_t total = 0;
    int n = m->st ? st_count(m->st) : gguf_n_tensors(m->gguf);
    for (int i = 0; i < n; i++) {
        int64_t numel = 1;
        peft_dtype dt;
        if (m->st) {
            const st_tensor *t = st_at(m->st, i);
            for (int k = 0; k < t->ndim; k++) numel *= t->shape[k];
            dt = t->dtype;
        } else {
            const gguf_tensor *t = gguf_tensor_at(m->gguf, i);
            for (int k = 0; k < t->ndim; k++) numel *= t->ne[k];
            dt = t->dtype;
        }
        total += numel;
        counts[(unsigned)dt <= PEFT_DT_COUNT ? dt : PEFT_DT_COUNT]++;
    }
    m->n_params = total;
    size_t o = 0;
    m->dtype_summary[0] = 0;
    for (int t = 0; t < PEFT_DT_COUNT; t++)
        if (counts[t] && o < sizeof m->dtype_summary)
            o += (size_t)snprintf(m->dtype_summary + o, sizeof m->dtype_summary - o, "%s%s x %d",
                                  o ? ", " : "", peft_dtype_name((peft_dtype)t), counts[t]);
}

int model_load_hf(peft_model *m, peft_err *err) {
    char *cfg_path = peft_path_join(m->path, "config.json", err);
    if (!cfg_path) return PEFT_ERR_NOMEM;
    int rc = model_config_from_hf_json(cfg_path, &m->cfg, err);
    free(cfg_path);
    if (rc) return rc;
    if ((rc = st_open(m->path, &m->st, err))) return rc;
    const char *pfx = hf_prefix(m);
    if ((rc = load_globals(m, false, pfx, err)) || (rc = load_layers(m, false, pfx, err))) return rc;
    char *tok_path = peft_path_join(m->path, "tokenizer.json", err);
    if (!tok_path) return PEFT_ERR_NOMEM;
    if (peft_file_exists(tok_path)) rc = bpe_load_json(tok_path, &m->tok, err);
    free(tok_path);
    if (rc) return rc;
    snprintf(m->source, sizeof m->source, "hf");
    summarize(m);
    return model_finish_load(m, err);
}

int model_load_gguf(peft_model *m, peft_err *err) {
    int rc = gguf_open(m->path, &m->gguf, err);
    if (rc) return rc;
    if ((rc = model_config_from_gguf(m->gguf, &m->cfg, err))) return rc;
    if ((rc = load_globals(m, true, "", err)) || (rc = load_layers(m, true, "", err))) return rc;
    if (gguf_find_key(m->gguf, "tokenizer.ggml.model") >= 0 && (rc = bpe_load_gguf(m->gguf, &m->tok, err)))
        return rc;
    snprintf(m->source, sizeof m->source, "gguf");
    summarize(m);
    return model_finish_load(m, err);
}

int model_finish_load(peft_model *m, peft_err *err) {
    model_config *c = &m->cfg;
    /* Every id the tokenizer can produce indexes the embedding table. */
    if (m->tok && bpe_vocab_size(m->tok) > c->vocab)
        return peft_fail(err, PEFT_ERR_FORMAT, "%s: the tokenizer has token ids up to %d but the model has only %d "
                         "embeddings (vocab_size)", m->path, bpe_vocab_size(m->tok) - 1, c->vocab);
    if (c->desc->pos != ARCH_POS_ROPE) return 0;
    const int half = c->rope_dim / 2;
    float inv_freq[512];
    if (half > 512) return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: head size %d too large", m->path, c->head_dim);
    for (int i = 0; i < half; i++) inv_freq[i] = (float)pow((double)c->rope_theta, -2.0 * i / c->rope_dim);
    if (c->rope_factor > 0) {
        /* llama3: long wavelengths slowed by `factor`, short ones kept, a
         * smooth blend between. */
        const double lo = c->rope_orig_ctx / c->rope_low_freq, hi = c->rope_orig_ctx / c->rope_high_freq;
        for (int i = 0; i < half; i++) {
            double f = inv_freq[i], wl = 2 * M_PI / f;
            if (wl > lo) f /= c->rope_factor;
            else if (wl >= hi) {
                double s = (c->rope_orig_ctx / wl - c->rope_low_freq) / (c->rope_high_freq - c->rope_low_freq);
                f = (1 - s) * f / c->rope_factor + s * f;
            }
            inv_freq[i] = (float)f;
        }
    }
    if (m->gguf) {
        /* llama.cpp stores llama3 scaling as per-frequency divisors. */
        src_tensor t;
        if (find_tensor(m, "rope_freqs.weight", &t)) {
            float f[512];
            /* The byte size, not just shape[0]: a [half, 0] tensor has shape[0]
             * == half and no bytes at all. */
            if (t.dtype != PEFT_DT_F32 || t.ndim != 1 || t.shape[0] != half || t.nbytes != (size_t)half * sizeof(float))
                return peft_fail(err, PEFT_ERR_FORMAT, "%s: rope_freqs.weight must be F32 [%d] (%zu bytes)", m->path,
                                 half, (size_t)half * sizeof(float));
            memcpy(f, t.data, (size_t)half * sizeof(float));
            for (int i = 0; i < half; i++) {
                if (!(isfinite(f[i]) && f[i] > 0))
                    return peft_fail(err, PEFT_ERR_FORMAT, "%s: rope_freqs.weight[%d] = %g is not a positive divisor",
                                     m->path, i, (double)f[i]);
                inv_freq[i] /= f[i];
            }
        }
    }
    size_t n = (size_t)c->n_ctx * half;
    m->rope_cos = peft_malloc(n * sizeof(float), err);
    m->rope_sin = peft_malloc(n * sizeof(float), err);
    if (!m->rope_cos || !m->rope_sin) return PEFT_ERR_NOMEM;
    kern_rope_table(m->rope_cos, m->rope_sin, c->n_ctx, half, inv_freq);
    return 0;
}
