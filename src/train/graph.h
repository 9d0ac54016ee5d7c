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

/* How a graph keeps its activations. checkpoint_every K > 0: gradient
 * checkpointing; the forward keeps the input of every K-th layer (0, K,
 * 2K, ...) and one reusable set of K layers' activations, and the backward
 * recomputes each segment of K layers from its kept input before running
 * through it (the last segment is still in place after the forward). Loss
 * and gradients are bitwise those of K = 0 (everything kept): the recompute
 * runs the same code on the same inputs, dropout masks come from the seed.
 * K >= n_layer keeps every layer, as 0. */
typedef struct {
    int checkpoint_every;
} tg_options;

int tg_new(peft_model *m, adapter *a, int B, int T, train_graph **out, peft_err *err);
/* The same with options (NULL: the defaults, as tg_new). */
int tg_new_opts(peft_model *m, adapter *a, int B, int T, const tg_options *o, train_graph **out, peft_err *err);
void tg_free(train_graph *g);
/* Bytes the graph holds for activations, gradients and scratch: its
 * arena, the methods' kept activations and their scratch. */
size_t tg_arena_bytes(const train_graph *g);
/* What tg_arena_bytes of tg_new_opts(m, a, B, T, o) would be, without
 * allocating the activations: for a memory plan before training. Fails as
 * tg_new_opts would on the shape. */
int tg_plan_bytes(peft_model *m, adapter *a, int B, int T, const tg_options *o, size_t *bytes, peft_err *err);

/* The same, in parts (bytes; total = tg_arena_bytes): for a memory plan
 * that shows what checkpointing saves. */
typedef struct {
    int n_layer, checkpoint_every;   /* the granularity in effect (0: everything kept) */
    size_t layer;      /* one layer's activations (its input included) */
    size_t input;      /* one layer's input, B·T·d floats */
    size_t layers;     /* every layer's as kept: n_layer·layer, or with checkpointing
                          K·layer + (ceil(n_layer / K) - 1)·input */
    size_t hooks;      /* the methods' kept activations (shared like the layers') and their scratch */
    size_t shared;     /* the rest: backward buffers, the loss's logits, scratch, batch indices */
    size_t total;
} tg_memory;
int tg_plan(peft_model *m, adapter *a, int B, int T, const tg_options *o, tg_memory *out, peft_err *err);

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
