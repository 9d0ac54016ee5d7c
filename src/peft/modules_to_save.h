/* modules_to_save.h — modules of the base an adapter trains and saves
 * whole, HF PEFT's modules_to_save. peft.c has one: the sequence-
 * classification head `score` (n_labels, d) of *ForSequenceClassification,
 * which an adapter of any method may carry. The training graph, merging,
 * export and the methods reach it only through these functions
 * (modules_to_save.c); its tensor is an ordinary trainable tensor of the
 * adapter's registry, so saving, loading, checkpoints and gradient checks
 * see it as they see the method's. */
#ifndef PEFT_MODULES_TO_SAVE_H
#define PEFT_MODULES_TO_SAVE_H

#include "model/model.h"

#include <cjson/cJSON.h>

struct adapter;

/* An adapter's head (adapter.head); w NULL: none. */
typedef struct {
    float *w, *g;          /* (n_labels, d) in params / grads */
    int n_labels;
} mts_head;

/* Registers the head tensor of n_labels rows (none when n_labels <= 0:
 * -1) under HF PEFT's key, after the method's tensors; its registry index,
 * or -1 on failure with err set. */
int mts_head_add(struct adapter *a, const peft_model *m, int n_labels, peft_err *err);
/* After allocation: points a->head at tensor idx (idx < 0: nothing) and
 * gives it its initial value (a classifier base's own head, else
 * transformers' N(0, 0.02) from seed). A loaded adapter's values are read
 * over it afterwards. */
void mts_head_wire(struct adapter *a, const peft_model *m, int idx, uint64_t seed);

/* Whether a carries a head. */
bool mts_has_head(const struct adapter *a);
/* Whether tensor p of a's registry is the head's. */
bool mts_is_head(const struct adapter *a, const float *p);
/* The head a classifies with: a's, else m's own (a fine-tuned classifier
 * loaded as the base), else NULL; and the gradient a accumulates (NULL:
 * not trained). */
const float *mts_head_weight(const struct adapter *a, const peft_model *m);
float *mts_head_grad(struct adapter *a);
/* Classification labels of a (its head) on m, else m's own head, else 0. */
int adapter_n_labels(const struct adapter *a, const peft_model *m);

/* ---- files --------------------------------------------------------------- */

/* The stored names: HF PEFT's adapter keys (prompt-learning models wrap
 * the base one level less) and transformers' model key. */
#define MTS_HEAD_KEY "base_model.model.score.weight"
#define MTS_HEAD_KEY_PROMPT "base_model.score.weight"
#define MTS_HEAD_MODEL_KEY "score.weight"
/* Whether a tensor name of an adapter file is the head's. */
bool mts_is_head_key(const char *name);
/* adapter_config.json: modules_to_save (["score"] or null), num_labels. */
bool mts_config_write(const struct adapter *a, cJSON *o);
/* "SEQ_CLS" with a head, else "CAUSAL_LM". */
const char *mts_task_type(const struct adapter *a);
/* The head's label count from an adapter file's tensors (0: no head), its
 * shape checked against m before anything is sized by it. */
int mts_labels_of_file(const st_archive *st, const char *st_path, const peft_model *m, int *n_labels, peft_err *err);
/* A *ForSequenceClassification config.json's class names: id2label and
 * label2id as transformers writes them (LABEL_0 ...), replacing any. */
bool mts_write_class_names(cJSON *o, int n_labels);

#endif
