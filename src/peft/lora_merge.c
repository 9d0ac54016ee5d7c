/* lora_merge.c — folds an adapter into its base: W' = W + s·B·A, with
 * W (out, in), B (out, r), A (r, in), in f32, one row of W at a time.
 *
 * HF base → HF folder: config.json and the tokenizer files copied, one
 * model.safetensors holding every tensor of the base; merged weights in the
 * base tensor's float dtype (or the outtype asked for), the rest copied byte
 * for byte. GPT-2's Conv1D weights are stored (in, out), so there stored row
 * i gets column i of the delta: row_i[o] += s·Σ_k B[o,k]·A[k,i].
 *
 * GGUF base → GGUF file: every key/value copied, unmerged tensors copied byte
 * for byte, merged ones written in the outtype (lora.h: by default F16 for
 * quantized bases, whose few bits would round the delta away). The in-memory
 * llama Q/K rows are in HF order (load.c un-permutes them), so merged Q/K
 * rows are put back in llama.cpp's order on the way out. */
#include "peft/lora.h"
#include "kernels/quant.h"
#include "peft/method.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* What merging changes in one linear: the method's merge_row / merge_bias. */
typedef struct {
    int layer;
    model_linear_role role;
    const adapter *plug;
} merge_op;

/* The merged row of a non-transposed weight (output row o) or a
 * transposed one (stored row q = input q), from the base row: the method's
 * merge_row (LoRA W + s·B·A, DoRA (m / ||W + s·B·A||) ⊙ (W + s·B·A), ...). */
static void merge_row(float *row, const merge_op *op, int64_t q, bool transposed, int64_t n_cols) {
    op->plug->ops->merge_row(op->plug, op->layer, op->role, row, q, transposed, n_cols);
}

/* GGUF row index of HF row f of a Q/K matrix with n_heads heads. */
static int64_t gguf_row_of(int64_t f, int64_t rows, int n_heads) {
    const int64_t hd = rows / n_heads, half = hd / 2, h = f / hd, rem = f % hd;
    const int64_t j = rem / half, i = rem % half;
    return h * hd + 2 * i + j;
}

/* A merged row must be finite and, for F16, within its range (65504):
 * F16 would store an overflow as inf without a word. */
static int check_row(const float *row, int64_t n, peft_dtype odt, int64_t q, const char *what, peft_err *err) {
    for (int64_t i = 0; i < n; i++) {
        if (!isfinite(row[i]))
            return peft_fail(err, PEFT_ERR_NUMERIC, "%s: merged row %lld has a non-finite value", what, (long long)q);
        if (odt == PEFT_DT_F16 && fabsf(row[i]) > 65504.0f)
            return peft_fail(err, PEFT_ERR_NUMERIC,
                             "%s: merged row %lld holds %g, beyond F16's range: merge with outtype bf16 or f32", what,
                             (long long)q, (double)row[i]);
    }
    return 0;
}

/* Writes the merged weight of md into dst in dtype odt, stored the way w is
 * (transposed or not); perm_heads > 0 puts rows in GGUF Q/K order. */
static int merge_into(const kern_weight *w, const merge_op *op, peft_dtype odt, void *dst, int perm_heads,
                      const char *what, peft_err *err) {
    const int64_t n_rows = w->transposed ? w->cols : w->rows, n_cols = w->transposed ? w->rows : w->cols;
    const size_t irb = kern_dtype_row_bytes(w->dtype, n_cols), orb = kern_dtype_row_bytes(odt, n_cols);
    if (!irb || !orb)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: rows of %lld do not fit %s blocks", what,
                         (long long)n_cols, peft_dtype_name(irb ? odt : w->dtype));
    float *row = peft_malloc((size_t)n_cols * sizeof(float), err);
    if (!row) return PEFT_ERR_NOMEM;
    int rc = 0;
    for (int64_t q = 0; q < n_rows && !rc; q++) {
        rc = kern_dequant_row(w->dtype, (const char *)w->data + (size_t)q * irb, row, n_cols);
        if (rc) { rc = peft_fail(err, rc, "%s: cannot convert %s rows", what, peft_dtype_name(w->dtype)); break; }
        merge_row(row, op, q, w->transposed, n_cols);
        rc = check_row(row, n_cols, odt, q, what, err);
        if (rc) break;
        const int64_t oq = perm_heads > 0 ? gguf_row_of(q, n_rows, perm_heads) : q;
        rc = kern_quant_row(odt, row, (char *)dst + (size_t)oq * orb, n_cols);
        if (rc) rc = peft_fail(err, rc, "%s: cannot write %s rows", what, peft_dtype_name(odt));
    }
    free(row);
    return rc;
}

/* The linears the adapter changes, in slot order; *n_ops set. */
static merge_op *collect_ops(const adapter *a, const peft_model *m, int *n_ops, peft_err *err) {
    const int ns = m->cfg.n_layer * ROLE_N_LINEAR;
    merge_op *ops = peft_calloc((size_t)ns + 1, sizeof *ops, err);
    int n = 0;
    for (int s = 0; ops && s < ns; s++) {
        const bool plug = a->ops && a->ops->merge_touches &&
                          a->ops->merge_touches(a, s / ROLE_N_LINEAR, (model_linear_role)(s % ROLE_N_LINEAR));
        if (!plug) continue;
        ops[n].plug = a;
        ops[n].layer = s / ROLE_N_LINEAR;
        ops[n].role = (model_linear_role)(s % ROLE_N_LINEAR);
        n++;
    }
    *n_ops = n;
    return ops;
}

/* A method may change the bias too (IA3's output scale applies after it). */
static bool scales_bias(const merge_op *op) { return op->plug && op->plug->ops->merge_bias; }

/* The merged bias from the base's (n values). */
static void merged_bias(const merge_op *op, float *b, int64_t n) {
    op->plug->ops->merge_bias(op->plug, op->layer, op->role, b, (int)n);
}

static int check_fit(const adapter *a, const peft_model *m, const char *out_path, peft_err *err) {
    if (!a->ops || !a->ops->merge_row)
        return peft_fail(err, PEFT_ERR_UNSUPPORTED,
                         "%s: a %s adapter cannot be merged into the base (merging works for lora, dora, ia3, vera); use "
                         "it with --adapter instead", out_path, adapter_method_name(a));
    if (mts_has_head(a))
        return peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: the adapter has a classification head, which a merged causal-LM "
                                                    "model cannot hold", out_path);
    if (strcmp(out_path, m->path) == 0)
        return peft_fail(err, PEFT_ERR_INVALID, "%s: the merged model cannot overwrite its base", out_path);
    const lora_state *ls = lora_of(a);
    for (int i = 0; ls && i < ls->n_modules; i++) {
        const lora_module *md = &ls->mods[i];
        if (md->layer < 0 || md->layer >= m->cfg.n_layer || !m->layers[md->layer].lin[md->role].present ||
            m->layers[md->layer].lin[md->role].w.rows != md->out || m->layers[md->layer].lin[md->role].w.cols != md->in)
            return peft_fail(err, PEFT_ERR_SHAPE, "%s: adapter module %d (layer %d) does not fit %s", out_path, i,
                             md->layer, m->path);
    }
    return 0;
}

/* ---- HF ---------------------------------------------------------------------- */


static int merge_hf(const adapter *a, const peft_model *m, const char *out_dir, int outtype, merge_summary *sum,
                    peft_err *err) {
    static const char *const files[] = {"config.json",       "generation_config.json", "tokenizer.json",
                                        "tokenizer_config.json", "special_tokens_map.json", "vocab.json",
                                        "merges.txt",        "tokenizer.model",        "chat_template.jinja"};
    int rc = peft_mkdir_p(out_dir, err);
    if (rc) return rc;
    const int n = st_count(m->st);
    st_write_tensor *t = peft_calloc((size_t)(n ? n : 1), sizeof *t, err);
    void **bufs = peft_calloc((size_t)(n ? n : 1), sizeof *bufs, err);
    const merge_op **by_tensor = peft_calloc((size_t)(n ? n : 1), sizeof *by_tensor, err);
    const merge_op **bias_of = peft_calloc((size_t)(n ? n : 1), sizeof *bias_of, err);
    int n_ops = 0;
    merge_op *ops = collect_ops(a, m, &n_ops, err);
    char *st_path = peft_path_join(out_dir, "model.safetensors", err);
    if (!t || !bufs || !by_tensor || !bias_of || !ops || !st_path) { rc = PEFT_ERR_NOMEM; goto done; }
    /* Which stored tensor each op changes (GPT-2 files may lack the
     * "transformer." prefix), and the biases a method scales. */
    for (int i = 0; i < n_ops; i++) {
        const merge_op *op = &ops[i];
        char path[256], name[300];
        model_linear_hf_path(m, op->layer, op->role, path, sizeof path);
        snprintf(name, sizeof name, "%s.weight", path);
        const st_tensor *st = st_find(m->st, name);
        if (!st && strncmp(name, "transformer.", 12) == 0) st = st_find(m->st, name + 12);
        const bool lin_ok = st && st->data == m->layers[op->layer].lin[op->role].w.data;
        if (!lin_ok) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: no stored tensor %s for adapter module %d", m->path, name, i);
            goto done;
        }
        snprintf(name, sizeof name, "%s.bias", path);
        const st_tensor *sb = scales_bias(op) ? st_find(m->st, name) : NULL;
        if (!sb && scales_bias(op) && strncmp(name, "transformer.", 12) == 0) sb = st_find(m->st, name + 12);
        for (int k = 0; k < n; k++) {
            if (st_at(m->st, k) == st) by_tensor[k] = op;
            if (sb && st_at(m->st, k) == sb) bias_of[k] = op;
        }
    }
    for (int k = 0; k < n && !rc; k++) {
        const st_tensor *s = st_at(m->st, k);
        st_write_tensor *w = &t[k];
        w->name = s->name;
        w->dtype = s->dtype;
        w->ndim = s->ndim;
        for (int d = 0; d < s->ndim; d++) w->shape[d] = s->shape[d];
        w->data = s->data;
        if (bias_of[k]) {
            /* l ⊙ b in the stored dtype */
            const merge_op *op = bias_of[k];
            const int64_t nb = st_numel(s);
            float *tmp = peft_malloc((size_t)nb * sizeof(float), err);
            bufs[k] = peft_malloc(s->nbytes ? s->nbytes : 1, err);
            if (!tmp || !bufs[k]) { free(tmp); rc = PEFT_ERR_NOMEM; break; }
            rc = kern_dequant_row(s->dtype, s->data, tmp, nb);
            if (!rc) merged_bias(op, tmp, nb);
            if (!rc) rc = kern_quant_row(s->dtype, tmp, bufs[k], nb);
            free(tmp);
            if (rc) { rc = peft_fail(err, rc, "%s: cannot scale %s", m->path, s->name); break; }
            w->data = bufs[k];
            continue;
        }
        const merge_op *md = by_tensor[k];
        if (!md) continue;
        const kern_weight *kw = &m->layers[md->layer].lin[md->role].w;
        if (s->dtype != PEFT_DT_F32 && s->dtype != PEFT_DT_F16 && s->dtype != PEFT_DT_BF16) {
            rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: %s has dtype %s; merging needs F32, F16 or BF16", m->path,
                           s->name, peft_dtype_name(s->dtype));
            break;
        }
        /* outtype was checked to be a float type (or keep/default) */
        const peft_dtype odt = outtype >= 0 ? (peft_dtype)outtype : s->dtype;
        const size_t nbytes = (size_t)st_numel(s) * kern_dtype_block_bytes(odt);
        bufs[k] = peft_malloc(nbytes ? nbytes : 1, err);
        if (!bufs[k]) { rc = PEFT_ERR_NOMEM; break; }
        char what[400];
        snprintf(what, sizeof what, "%s: %s", m->path, s->name);
        rc = merge_into(kw, md, odt, bufs[k], 0, what, err);
        w->data = bufs[k];
        w->dtype = odt;
        sum->n_changed++;
        sum->n_by_dtype[odt]++;
    }
    if (!rc) {
        static const char *const meta[] = {"format", "pt", NULL};
        rc = st_write(st_path, t, n, meta, err);
    }
    /* The weights first: a save that fails on them leaves the folder's old
     * config and tokenizer beside its old weights, not new ones. */
    if (!rc && peft_is_dir(m->path))
        for (size_t i = 0; i < sizeof files / sizeof files[0] && !rc; i++) rc = peft_copy_file_if_exists(m->path, out_dir, files[i], err);
done:
    if (bufs)
        for (int k = 0; k < n; k++) free(bufs[k]);
    free(bufs);
    free(t);
    free(by_tensor);
    free(bias_of);
    free(ops);
    free(st_path);
    return rc;
}

/* ---- GGUF -------------------------------------------------------------------- */

static bool is_float_type(peft_dtype t) { return t == PEFT_DT_F32 || t == PEFT_DT_F16 || t == PEFT_DT_BF16; }

/* The type a changed GGUF tensor of type base with rows of cols is written in. */
static peft_dtype gguf_out_type(peft_dtype base, int outtype, int64_t cols) {
    peft_dtype odt = outtype >= 0              ? (peft_dtype)outtype
                     : outtype == MERGE_OUT_KEEP ? base
                     : is_float_type(base)       ? base
                                                 : MERGE_DEFAULT_QUANT_OUT;
    if (!kern_dtype_can_quantize(odt) || kern_dtype_row_bytes(odt, cols) == 0) odt = PEFT_DT_F16;
    return odt;
}

static int merge_gguf(const adapter *a, const peft_model *m, const char *out_path, int outtype, merge_summary *sum,
                      peft_err *err) {
    const gguf_file *g = m->gguf;
    const int n = gguf_n_tensors(g);
    void **bufs = peft_calloc((size_t)(n ? n : 1), sizeof *bufs, err);
    const merge_op **by_tensor = peft_calloc((size_t)(n ? n : 1), sizeof *by_tensor, err);
    const merge_op **bias_of = peft_calloc((size_t)(n ? n : 1), sizeof *bias_of, err);
    int n_ops = 0;
    merge_op *ops = collect_ops(a, m, &n_ops, err);
    gguf_writer *w = gguf_writer_new(err);
    int rc = 0;
    bool writer_err = false;   /* rc came from a gguf_w_* call: the message is on w */
    if (!bufs || !by_tensor || !bias_of || !ops || !w) { rc = PEFT_ERR_NOMEM; goto done; }
    for (int i = 0; i < n_ops; i++) {
        const merge_op *op = &ops[i];
        char name[96];
        lora_gguf_weight_name(m, op->layer, op->role, name, sizeof name);
        const gguf_tensor *gt = gguf_find_tensor(g, name);
        if (!gt) {
            rc = peft_fail(err, PEFT_ERR_FORMAT, "%s: no tensor %s for adapter module %d", m->path, name, i);
            goto done;
        }
        const gguf_tensor *gb = NULL;
        if (scales_bias(op)) {
            size_t L = strlen(name);
            if (L > 7) snprintf(name + L - 7, sizeof name - (L - 7), ".bias");
            gb = gguf_find_tensor(g, name);
        }
        for (int k = 0; k < n; k++) {
            if (gguf_tensor_at(g, k) == gt) by_tensor[k] = op;
            if (gb && gguf_tensor_at(g, k) == gb) bias_of[k] = op;
        }
    }
    if ((rc = gguf_w_copy_kv(w, g, NULL))) {
        rc = peft_fail(err, rc, "%s: cannot copy the metadata of %s", out_path, m->path);
        goto done;
    }
    for (int k = 0; k < n && !rc; k++) {
        const gguf_tensor *t = gguf_tensor_at(g, k);
        const merge_op *md = by_tensor[k];
        if (t->dtype == PEFT_DT_COUNT) {
            rc = peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: tensor %s has ggml type %u, which cannot be copied",
                           m->path, t->name, t->ggml_type);
            break;
        }
        if (bias_of[k] && t->dtype == PEFT_DT_F32) {
            /* l ⊙ b (GGUF biases are F32) */
            const int64_t nb = (int64_t)(t->nbytes / sizeof(float));
            float *bb = peft_malloc(t->nbytes ? t->nbytes : 1, err);
            if (!bb) { rc = PEFT_ERR_NOMEM; break; }
            bufs[k] = bb;
            memcpy(bb, t->data, t->nbytes);
            merged_bias(bias_of[k], bb, nb);
            rc = gguf_w_tensor(w, t->name, t->dtype, t->ndim, t->ne, bb, t->nbytes);
            writer_err = rc != 0;
            continue;
        }
        if (!md) {
            rc = gguf_w_tensor(w, t->name, t->dtype, t->ndim, t->ne, t->data, t->nbytes);
            writer_err = rc != 0;
            continue;
        }
        const kern_weight *kw = &m->layers[md->layer].lin[md->role].w;
        const peft_dtype odt = gguf_out_type(t->dtype, outtype, kw->cols);
        sum->n_changed++;
        sum->n_by_dtype[odt]++;
        const size_t nbytes = kern_dtype_row_bytes(odt, kw->cols) * (size_t)kw->rows;
        bufs[k] = peft_malloc(nbytes ? nbytes : 1, err);
        if (!bufs[k]) { rc = PEFT_ERR_NOMEM; break; }
        int n_heads = 0;
        if (!model_gguf_permutes(m, md->role, &n_heads)) n_heads = 0;
        char what[400];
        snprintf(what, sizeof what, "%s: %s", m->path, t->name);
        rc = merge_into(kw, md, odt, bufs[k], n_heads, what, err);
        if (!rc) {
            rc = gguf_w_tensor(w, t->name, odt, t->ndim, t->ne, bufs[k], nbytes);
            writer_err = rc != 0;
        }
    }
    /* A failed gguf_w_* call keeps its message on the writer; save reports
     * it (without writing anything). */
    if (!rc || writer_err) rc = gguf_writer_save(w, out_path, err);
done:
    gguf_writer_free(w);
    if (bufs)
        for (int k = 0; k < n; k++) free(bufs[k]);
    free(bufs);
    free(by_tensor);
    free(bias_of);
    free(ops);
    return rc;
}

int lora_merge_outtype_parse(const char *name, int *outtype, peft_err *err) {
    static const struct { const char *name; int t; } tab[] = {
        {"default", MERGE_OUT_DEFAULT}, {"keep", MERGE_OUT_KEEP}, {"f32", PEFT_DT_F32},   {"f16", PEFT_DT_F16},
        {"bf16", PEFT_DT_BF16},         {"q8_0", PEFT_DT_Q8_0},   {"q5_1", PEFT_DT_Q5_1}, {"q5_0", PEFT_DT_Q5_0},
        {"q4_1", PEFT_DT_Q4_1},         {"q4_0", PEFT_DT_Q4_0}};
    for (size_t i = 0; name && i < sizeof tab / sizeof tab[0]; i++)
        if (strcasecmp(name, tab[i].name) == 0) { *outtype = tab[i].t; return 0; }
    return peft_fail(err, PEFT_ERR_INVALID,
                     "outtype \"%s\" is not one of default, keep, f32, f16, bf16, q8_0, q5_1, q5_0, q4_1, q4_0",
                     name ? name : "(null)");
}

int lora_merge_save_as(const adapter *a, const peft_model *m, const char *out_path, int outtype,
                       merge_summary *sum, peft_err *err) {
    merge_summary local;
    if (!sum) sum = &local;
    memset(sum, 0, sizeof *sum);
    if (outtype != MERGE_OUT_DEFAULT && outtype != MERGE_OUT_KEEP && !(outtype >= 0 && outtype < PEFT_DT_COUNT &&
                                                                       kern_dtype_can_quantize((peft_dtype)outtype)))
        return peft_fail(err, PEFT_ERR_INVALID, "%s: merge output type %d is not one kern_quant_row writes", out_path,
                         outtype);
    int rc = check_fit(a, m, out_path, err);
    if (rc) return rc;
    if (m->st) {
        if (outtype >= 0 && !is_float_type((peft_dtype)outtype))
            return peft_fail(err, PEFT_ERR_INVALID,
                             "%s: a merged HF folder (safetensors) holds F32, F16 or BF16 tensors, not %s: choose "
                             "one of those, or merge into a GGUF base",
                             out_path, peft_dtype_name((peft_dtype)outtype));
        return merge_hf(a, m, out_path, outtype, sum, err);
    }
    if (m->gguf) return merge_gguf(a, m, out_path, outtype, sum, err);
    return peft_fail(err, PEFT_ERR_INVALID, "%s: the base model has no weights file", m->path);
}

int lora_merge_save(const adapter *a, const peft_model *m, const char *out_path, peft_err *err) {
    return lora_merge_save_as(a, m, out_path, MERGE_OUT_DEFAULT, NULL, err);
}
