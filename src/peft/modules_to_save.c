/* modules_to_save.c — the classification head every method's adapter may
 * carry (modules_to_save.h). */
#include "peft/modules_to_save.h"
#include "core/limits.h"
#include "peft/method.h"

#include <stdio.h>
#include <string.h>

int mts_head_add(adapter *a, const peft_model *m, int n_labels, peft_err *err) {
    if (n_labels <= 0) return -1;
    /* HF PEFT's key: prompt-learning models wrap the base one level less */
    const bool pl = a->ops && (a->ops->flags & METHOD_PROMPT_LEARNING);
    return adapter_add_tensor(a, pl ? MTS_HEAD_KEY_PROMPT : MTS_HEAD_KEY, 2, n_labels, m->cfg.d_model, true, err);
}

void mts_head_wire(adapter *a, const peft_model *m, int idx, uint64_t seed) {
    if (idx < 0) return;
    const adapter_tensor *t = &a->tensors[idx];
    a->head.w = t->p;
    a->head.g = t->g;
    a->head.n_labels = (int)t->shape[0];
    if (m && m->score && m->n_labels == t->shape[0]) {
        /* a classifier base: start from its head (as modules_to_save copies it) */
        memcpy(a->head.w, m->score, (size_t)t->n * sizeof(float));
        return;
    }
    /* transformers' _init_weights: N(0, initializer_range = 0.02) */
    peft_rng rng;
    peft_rng_seed(&rng, seed ^ 0x5c0e5c0eULL);
    for (int64_t k = 0; k < t->n; k++) a->head.w[k] = 0.02f * peft_rng_normal(&rng);
}

bool mts_has_head(const adapter *a) { return a && a->head.w; }

bool mts_is_head(const adapter *a, const float *p) { return a && a->head.w && p == a->head.w; }

const float *mts_head_weight(const adapter *a, const peft_model *m) {
    return a && a->head.w ? a->head.w : m->score;
}

float *mts_head_grad(adapter *a) { return a && a->head.w ? a->head.g : NULL; }

int adapter_n_labels(const adapter *a, const peft_model *m) {
    return a && a->mc.n_labels ? a->mc.n_labels : m->n_labels;
}

/* ---- files ------------------------------------------------------------------ */

bool mts_is_head_key(const char *name) { return !strcmp(name, MTS_HEAD_KEY) || !strcmp(name, MTS_HEAD_KEY_PROMPT); }

bool mts_config_write(const adapter *a, cJSON *o) {
    if (!mts_has_head(a)) return cJSON_AddNullToObject(o, "modules_to_save") != NULL;
    cJSON *ms = cJSON_AddArrayToObject(o, "modules_to_save");
    bool ok = ms && cJSON_AddItemToArray(ms, cJSON_CreateString("score"));
    return ok && cJSON_AddNumberToObject(o, "num_labels", a->head.n_labels) != NULL;
}

const char *mts_task_type(const adapter *a) { return mts_has_head(a) ? "SEQ_CLS" : "CAUSAL_LM"; }

int mts_labels_of_file(const st_archive *st, const char *st_path, const peft_model *m, int *n_labels, peft_err *err) {
    *n_labels = 0;
    const st_tensor *head = st_find(st, MTS_HEAD_KEY);
    if (!head) head = st_find(st, MTS_HEAD_KEY_PROMPT);
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
