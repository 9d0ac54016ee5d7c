/* graph.h — the training forward and backward of a frozen model with a
 * trainable adapter (any method), over one batch of B sequences of T tokens.
 * Activations live in one arena sized once from (B, T); the backward
 * produces input gradients through frozen weights (dX = dY·W, no weight
 * gradients) and the adapter's parameter gradients, accumulated into the adapter's
 * grads block. */
#ifndef PEFT_TRAIN_GRAPH_H
#define PEFT_TRAIN_GRAPH_H

#include "peft/adapter.h"
#include "train/data.h"

typedef struct train_graph train_graph;

int tg_new(peft_model *m, adapter *a, int B, int T, train_graph **out, peft_err *err);
void tg_free(train_graph *g);
/* Bytes of the activation arena (for reporting memory). */
size_t tg_arena_bytes(const train_graph *g);

/* Runs the batch (b->B == B, 2 <= b->T <= the T the graph was built for). Causal-LM loss: *loss_sum = Σ over counted targets of
 * -log p(target), *n_targets = their count. With backward, a->grads +=
 * ∂(grad_scale · loss_sum)/∂params. dropout_seed picks the dropout masks
 * (ignored when the adapter's dropout is 0). */
int tg_run(train_graph *g, const data_batch *b, bool backward, float grad_scale,
           uint64_t dropout_seed, double *loss_sum, int *n_targets, peft_err *err);

/* Seconds spent in each phase over every tg_run so far (for benchmarks):
 * frozen-linear forward (with the adapter hooks), attention forward, loss
 * (head products and softmax), linear backward, attention backward, and
 * the rest (embeddings, norms, activations, RoPE, copies). */
enum { TG_PH_LIN_FWD, TG_PH_ATTN_FWD, TG_PH_LOSS, TG_PH_LIN_BWD, TG_PH_ATTN_BWD, TG_PH_OTHER, TG_N_PHASES };
void tg_phase_seconds(const train_graph *g, double out[TG_N_PHASES]);

/* Token types (B·T, the batch's layout) for the next tg_run on a model
 * with token-type embeddings (BERT pairs); NULL (the default): all 0. The
 * array must live until that run, which forgets it. */
void tg_set_types(train_graph *g, const int32_t *types);

/* Classification adapters: the (B, n_labels) logits of the last tg_run;
 * a contrastive batch (data_batch.n_cols > 1): its (anchors, candidates)
 * scores, scale · cos; NULL otherwise. tg_class_width: the row length. */
const float *tg_class_logits(const train_graph *g);
int tg_class_width(const train_graph *g);

/* Contrastive batches (rows column by column, data.h): each row's
 * embedding is its hidden states pooled (TG_POOL_MEAN over its real tokens,
 * or TG_POOL_CLS: the first), the score scale · cos, and the loss
 * sentence-transformers' MultipleNegativesRankingLoss (the sum over anchors
 * of the cross-entropy against its own positive, in-batch negatives).
 * Defaults: 20, mean. PEFT_ERR_INVALID for a scale outside (0, 1e4). */
enum { TG_POOL_MEAN = 0, TG_POOL_CLS = 1 };
int tg_set_pairs(train_graph *g, float scale, int pool);

#endif
