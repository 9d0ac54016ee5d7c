/* modules_to_save.c — the classification head every method's adapter may
 * carry (modules_to_save.h).
 *
 * Forward of pooled h (d) into logits (K):
 *   LAST    logits = S·h                                   S (K, d)
 *   POOLER  p = tanh(Wp·h + bp) (the base's, frozen, unless the method
 *           trains them: full fine-tuning, BitFit's bp); logits = C·p + c
 *   DENSE   p = tanh(Wd·h + bd); logits = C·p + c          all trained
 * Backward from dl (K): dC += dl ⊗ p, dc += dl, dp = Cᵀ·dl, dz = dp ⊙ (1 - p²),
 * (DENSE, or a trained pooler) dWd += dz ⊗ h, dbd += dz; dh += Wpᵀ·dz (or
 * Wdᵀ·dz, or Sᵀ·dl). */
#include "peft/modules_to_save.h"
#include "core/limits.h"
#include "peft/method.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

/* the head's tensors: names after "base_model.model." (or "base_model."
 * for prompt learning), shapes (rows, cols; cols 1: a vector) */
typedef struct {
    const char *name;
    bool labels_rows;   /* n_labels rows, else d */
    bool matrix;        /* (rows, d), else (rows) */
} head_part;

static const head_part parts_last[] = {{"score.weight", true, true}, {NULL, false, false}};
static const head_part parts_pooler[] = {{"classifier.weight", true, true}, {"classifier.bias", true, false},
                                         {NULL, false, false}};
static const head_part parts_dense[] = {{"classifier.dense.weight", false, true},
                                        {"classifier.dense.bias", false, false},
                                        {"classifier.out_proj.weight", true, true},
                                        {"classifier.out_proj.bias", true, false},
                                        {NULL, false, false}};

static const head_part *parts_of(const peft_model *m) {
    switch (m->cfg.desc->cls) {
    case ARCH_CLS_POOLER: return parts_pooler;
    case ARCH_CLS_DENSE: return parts_dense;
    case ARCH_CLS_LAST: default: return parts_last;
    }
}

/* the tensor that carries the label count */
static const char *labels_part(const peft_model *m) {
    return m->cfg.desc->cls == ARCH_CLS_DENSE ? "classifier.out_proj.weight"
           : m->cfg.desc->cls == ARCH_CLS_POOLER ? "classifier.weight"
                                                 : "score.weight";
}

int mts_head_add(adapter *a, const peft_model *m, int n_labels, peft_err *err) {
    if (n_labels <= 0) return -1;
    if (m->cfg.desc->cls == ARCH_CLS_POOLER && !m->pooler_w) {
        peft_fail(err, PEFT_ERR_UNSUPPORTED, "%s: this %s has no pooler (%s), which BertForSequenceClassification's head "
                  "reads%s", m->path, m->cfg.arch_name, m->cfg.desc->hf_pooler,
                  m->gguf ? "; llama.cpp's converter leaves it out of GGUF files: use the HF folder" : "");
        return -1;
    }
    /* HF PEFT's keys: prompt-learning models wrap the base one level less */
    const bool pl = a->ops && (a->ops->flags & METHOD_PROMPT_LEARNING);
    const int d = m->cfg.d_model;
    int first = -1;
    for (const head_part *p = parts_of(m); p->name; p++) {
        char key[128];
        snprintf(key, sizeof key, "%s%s", pl ? "base_model." : "base_model.model.", p->name);
        const int64_t rows = p->labels_rows ? n_labels : d;
        const int i = p->matrix ? adapter_add_tensor(a, key, 2, rows, d, true, err)
                                : adapter_add_tensor(a, key, 1, rows, 1, true, err);
        if (i < 0) return -1;
        if (!p->matrix) adapter_tensor_set_group(a, i, PG_NO_DECAY);   /* biases: no decay, as HF's Trainer */
        if (first < 0) first = i;
    }
    return first;
}

void mts_head_wire(adapter *a, const peft_model *m, int idx, uint64_t seed) {
    if (idx < 0) return;
    const head_part *parts = parts_of(m);
    float **slots[4][2] = {{NULL, NULL}};
    switch (m->cfg.desc->cls) {
    case ARCH_CLS_POOLER:
        slots[0][0] = &a->head.w, slots[0][1] = &a->head.g, slots[1][0] = &a->head.b, slots[1][1] = &a->head.gb;
        break;
    case ARCH_CLS_DENSE:
        slots[0][0] = &a->head.dw, slots[0][1] = &a->head.gdw, slots[1][0] = &a->head.db, slots[1][1] = &a->head.gdb;
        slots[2][0] = &a->head.w, slots[2][1] = &a->head.g, slots[3][0] = &a->head.b, slots[3][1] = &a->head.gb;
        break;
    case ARCH_CLS_LAST: default: slots[0][0] = &a->head.w, slots[0][1] = &a->head.g; break;
    }
    peft_rng rng;
    peft_rng_seed(&rng, seed ^ 0x5c0e5c0eULL);
    for (int k = 0; parts[k].name; k++) {
        const adapter_tensor *t = &a->tensors[idx + k];
        *slots[k][0] = t->p;
        *slots[k][1] = t->g;
        if (parts[k].labels_rows && parts[k].matrix) a->head.n_labels = (int)t->shape[0];
        /* transformers' _init_weights: weights N(0, initializer_range = 0.02), biases 0 */
        for (int64_t e = 0; e < t->n; e++) t->p[e] = parts[k].matrix ? 0.02f * peft_rng_normal(&rng) : 0.0f;
    }
    /* a classifier base: start from its head (as modules_to_save copies it) */
    if (m && m->score && m->n_labels == a->head.n_labels) {
        const size_t d = (size_t)m->cfg.d_model;
        memcpy(a->head.w, m->score, (size_t)a->head.n_labels * d * sizeof(float));
        if (a->head.b && m->score_b) memcpy(a->head.b, m->score_b, (size_t)a->head.n_labels * sizeof(float));
        if (a->head.dw && m->cls_dw) memcpy(a->head.dw, m->cls_dw, d * d * sizeof(float));
        if (a->head.db && m->cls_db) memcpy(a->head.db, m->cls_db, d * sizeof(float));
    }
}

bool mts_has_head(const adapter *a) { return a && a->head.w; }

bool mts_is_head(const adapter *a, const float *p) {
    return a && p && (p == a->head.w || p == a->head.b || p == a->head.dw || p == a->head.db);
}

const float *mts_head_weight(const adapter *a, const peft_model *m) {
    return a && a->head.w ? a->head.w : m->score;
}

float *mts_head_grad(adapter *a) { return a && a->head.w ? a->head.g : NULL; }

int adapter_n_labels(const adapter *a, const peft_model *m) {
    return a && a->mc.n_labels ? a->mc.n_labels : m->n_labels;
}

int mts_pool_row(const peft_model *m, int last) { return m->cfg.desc->cls == ARCH_CLS_LAST ? last : 0; }

/* y (rows) = W (rows, d)·x + b */
static void affine(float *y, const float *W, const float *b, const float *x, int rows, int d) {
    for (int k = 0; k < rows; k++) {
        double s = b ? b[k] : 0;
        for (int j = 0; j < d; j++) s += (double)W[(size_t)k * d + j] * x[j];
        y[k] = (float)s;
    }
}

void mts_head_fwd(const adapter *a, const peft_model *m, const float *h, float *logits, float *scratch) {
    const int d = m->cfg.d_model, K = adapter_n_labels(a, m);
    const bool own = a && a->head.w;
    const float *W = own ? a->head.w : m->score, *b = own ? a->head.b : m->score_b;
    switch (m->cfg.desc->cls) {
    case ARCH_CLS_POOLER:
    case ARCH_CLS_DENSE: {
        const bool dense = m->cfg.desc->cls == ARCH_CLS_DENSE;
        const float *pw = a && a->head.pw ? a->head.pw : m->pooler_w, *pb = a && a->head.pb ? a->head.pb : m->pooler_b;
        float *p = scratch;
        affine(p, dense ? (own ? a->head.dw : m->cls_dw) : pw, dense ? (own ? a->head.db : m->cls_db) : pb, h, d, d);
        for (int j = 0; j < d; j++) p[j] = tanhf(p[j]);
        affine(logits, W, b, p, K, d);
        break;
    }
    case ARCH_CLS_LAST:
    default: affine(logits, W, NULL, h, K, d); break;
    }
}

void mts_head_bwd(adapter *a, const peft_model *m, const float *h, const float *dl, float *dh, float *scratch) {
    const int d = m->cfg.d_model, K = adapter_n_labels(a, m);
    const bool own = a && a->head.w;
    const float *W = own ? a->head.w : m->score;
    float *gW = own ? a->head.g : NULL, *gb = own ? a->head.gb : NULL;
    if (m->cfg.desc->cls == ARCH_CLS_LAST) {
        for (int k = 0; k < K; k++)
            for (int j = 0; j < d; j++) {
                if (gW) gW[(size_t)k * d + j] += dl[k] * h[j];
                dh[j] += dl[k] * W[(size_t)k * d + j];
            }
        return;
    }
    const bool dense = m->cfg.desc->cls == ARCH_CLS_DENSE;
    const float *p = scratch, *Wd = dense ? (own ? a->head.dw : m->cls_dw) : a && a->head.pw ? a->head.pw : m->pooler_w;
    /* the dense layer's gradients: RoBERTa's head, or a trained pooler */
    float *gdw = dense ? (own ? a->head.gdw : NULL) : a ? a->head.gpw : NULL;
    float *gdb = dense ? (own ? a->head.gdb : NULL) : a ? a->head.gpb : NULL;
    float *dz = scratch + d;
    for (int j = 0; j < d; j++) dz[j] = 0;
    for (int k = 0; k < K; k++) {
        if (gb) gb[k] += dl[k];
        for (int j = 0; j < d; j++) {
            if (gW) gW[(size_t)k * d + j] += dl[k] * p[j];
            dz[j] += dl[k] * W[(size_t)k * d + j];
        }
    }
    for (int j = 0; j < d; j++) dz[j] *= 1.0f - p[j] * p[j];
    for (int i = 0; i < d; i++) {
        if (gdb) gdb[i] += dz[i];
        for (int j = 0; j < d; j++) {
            if (gdw) gdw[(size_t)i * d + j] += dz[i] * h[j];
            dh[j] += dz[i] * Wd[(size_t)i * d + j];
        }
    }
}

/* ---- files ------------------------------------------------------------------ */

bool mts_is_head_key(const char *name) {
    const char *s = !strncmp(name, "base_model.model.", 17) ? name + 17 : !strncmp(name, "base_model.", 11) ? name + 11 : NULL;
    if (!s) return false;
    static const head_part *const all[] = {parts_last, parts_pooler, parts_dense};
    for (int k = 0; k < 3; k++)
        for (const head_part *p = all[k]; p->name; p++)
            if (!strcmp(s, p->name)) return true;
    return false;
}

const char *mts_model_key(const adapter *a, const float *p) {
    if (!mts_is_head(a, p)) return NULL;
    for (int i = 0; i < a->n_tensors; i++)
        if (a->tensors[i].p == p) {
            const char *k = a->tensors[i].key;
            return !strncmp(k, "base_model.model.", 17) ? k + 17 : !strncmp(k, "base_model.", 11) ? k + 11 : k;
        }
    return NULL;
}

bool mts_config_write(const adapter *a, cJSON *o) {
    if (!mts_has_head(a)) return cJSON_AddNullToObject(o, "modules_to_save") != NULL;
    cJSON *ms = cJSON_AddArrayToObject(o, "modules_to_save");
    /* HF peft's SEQ_CLS default: whichever of the two the model has */
    bool ok = ms && cJSON_AddItemToArray(ms, cJSON_CreateString("classifier")) &&
              cJSON_AddItemToArray(ms, cJSON_CreateString("score"));
    return ok && cJSON_AddNumberToObject(o, "num_labels", a->head.n_labels) != NULL;
}

const char *mts_task_type(const adapter *a, const peft_model *m) {
    return mts_has_head(a) ? "SEQ_CLS" : m->cfg.desc->encoder ? "FEATURE_EXTRACTION" : "CAUSAL_LM";
}

int mts_labels_of_file(const st_archive *st, const char *st_path, const peft_model *m, int *n_labels, peft_err *err) {
    *n_labels = 0;
    char k1[128], k2[128];
    snprintf(k1, sizeof k1, "base_model.model.%s", labels_part(m));
    snprintf(k2, sizeof k2, "base_model.%s", labels_part(m));
    const st_tensor *head = st_find(st, k1);
    if (!head) head = st_find(st, k2);
    if (!head) return 0;
    /* it sizes what the adapter allocates: a [4000000, 0] head holds no
     * bytes but would ask for 4M x hidden floats */
    if (head->ndim != 2 || head->shape[1] != m->cfg.d_model || head->shape[0] < 1 || head->shape[0] > PEFT_MAX_LABELS)
        return peft_fail(err, PEFT_ERR_SHAPE, "%s: %s has shape [%lld, %lld], expected [n_labels, %d] with n_labels in "
                         "1..%d", st_path, head->name, (long long)(head->ndim > 0 ? head->shape[0] : 0),
                         (long long)(head->ndim > 1 ? head->shape[1] : 0), m->cfg.d_model, PEFT_MAX_LABELS);
    *n_labels = (int)head->shape[0];
    return 0;
}

bool mts_write_class_names(cJSON *o, int n_labels) {
    cJSON_DeleteItemFromObjectCaseSensitive(o, "id2label");
    cJSON_DeleteItemFromObjectCaseSensitive(o, "label2id");
    cJSON *i2l = cJSON_AddObjectToObject(o, "id2label"), *l2i = cJSON_AddObjectToObject(o, "label2id");
    bool ok = i2l && l2i;
    for (int k = 0; ok && k < n_labels; k++) {
        char key[32], val[32];
        snprintf(key, sizeof key, "%d", k);
        snprintf(val, sizeof val, "LABEL_%d", k);
        ok &= cJSON_AddStringToObject(i2l, key, val) != NULL;
        ok &= cJSON_AddNumberToObject(l2i, val, k) != NULL;
    }
    return ok;
}
