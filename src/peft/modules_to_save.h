/* modules_to_save.h — modules of the base an adapter trains and saves
 * whole, HF PEFT's modules_to_save. peft.c has one: the sequence-
 * classification head of *ForSequenceClassification, which an adapter of
 * any method may carry, in the form the architecture's descriptor names
 * (arch_cls): decoders' `score` (n_labels, d) on the last token, BERT's
 * `classifier` (+ bias) on its frozen pooler, RoBERTa's `classifier.dense`
 * + `classifier.out_proj` on the first token. The training graph, merging,
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
    float *b, *gb;         /* (n_labels) bias (encoders), or NULL */
    float *dw, *gdw, *db, *gdb;   /* RoBERTa's classifier.dense (d, d) and its bias (d), or NULL */
    /* BERT's pooler (d, d) and bias (d) where the method trains them (full
     * fine-tuning both, BitFit the bias: its tensors, set by its wire), else
     * NULL: the base's, frozen */
    float *pw, *gpw, *pb, *gpb;
    int n_labels;
} mts_head;

/* Registers the head's tensors (n_labels rows; none when n_labels <= 0:
 * -1) under HF PEFT's keys, after the method's tensors, one after another;
 * the registry index of the first, or -1 on failure with err set. */
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
/* The row of sequence b the head reads: encoders pool the first (BERT's
 * [CLS], or prompt tuning's first virtual token, as HF), decoders the last
 * non-padding one (last). */
int mts_pool_row(const peft_model *m, int last);
/* logits (n_labels) of pooled hidden state h (d); scratch (2·d). With
 * dlogits (backward): the head's gradients += (when trained) and dh (d) +=
 * ∂/∂h; the forward must have run on the same h and scratch just before. */
void mts_head_fwd(const struct adapter *a, const peft_model *m, const float *h, float *logits, float *scratch);
void mts_head_bwd(struct adapter *a, const peft_model *m, const float *h, const float *dlogits, float *dh,
                  float *scratch);
/* Classification labels of a (its head) on m, else m's own head, else 0. */
int adapter_n_labels(const struct adapter *a, const peft_model *m);

/* ---- files --------------------------------------------------------------- */

/* The stored names: HF PEFT's adapter keys (prompt-learning models wrap
 * the base one level less) and transformers' model key. */
#define MTS_HEAD_KEY "base_model.model.score.weight"
#define MTS_HEAD_KEY_PROMPT "base_model.score.weight"
#define MTS_HEAD_MODEL_KEY "score.weight"
/* The model key a head tensor of a is saved under in a full model (the
 * adapter key without HF PEFT's wrapping), or NULL when p is not a head
 * tensor. */
const char *mts_model_key(const struct adapter *a, const float *p);
/* Whether a tensor name of an adapter file is the head's. */
bool mts_is_head_key(const char *name);
/* adapter_config.json: modules_to_save (["classifier", "score"] as HF
 * peft's SEQ_CLS default, or null), num_labels. */
bool mts_config_write(const struct adapter *a, cJSON *o);
/* "SEQ_CLS" with a head, "FEATURE_EXTRACTION" for an encoder without one
 * (sentence embeddings), else "CAUSAL_LM". */
const char *mts_task_type(const struct adapter *a, const peft_model *m);
/* The head's label count from an adapter file's tensors (0: no head), its
 * shape checked against m before anything is sized by it. */
int mts_labels_of_file(const st_archive *st, const char *st_path, const peft_model *m, int *n_labels, peft_err *err);
/* A *ForSequenceClassification config.json's class names: id2label and
 * label2id as transformers writes them (LABEL_0 ...), replacing any. */
bool mts_write_class_names(cJSON *o, int n_labels);

#endif
