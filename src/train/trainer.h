/* trainer.h — the training loop: batches → forward/backward → AdamW, with
 * warmup + schedule, clipping, accumulation, periodic evaluation, metrics
 * (metrics.jsonl, loss.svg), atomic checkpoints and exact resume. */
#ifndef PEFT_TRAIN_TRAINER_H
#define PEFT_TRAIN_TRAINER_H

#include "train/graph.h"
#include "train/optim.h"

typedef enum {
    LOSS_NORM_TOKENS = 0,   /* Σ loss over the step's targets / their count (HF Trainer) */
    LOSS_NORM_MICRO         /* mean over micro-batches of each one's token mean */
} loss_norm;

typedef struct {
    int step, total_steps, epoch;
    double loss, lr, grad_norm;
    double tokens_per_s, elapsed_s, eta_s;
    bool is_eval;
    double val_loss, val_ppl;
    double val_acc;        /* classification: accuracy, else NAN */
    int64_t tokens;        /* input tokens (not padding) processed so far */
} train_progress;

typedef void (*train_progress_fn)(const train_progress *p, void *user);

typedef struct {
    int batch, seq, accum;
    int steps;             /* > 0: this many optimizer steps */
    int epochs;            /* used when steps == 0 */
    bool pack;
    optim_params opt;
    loss_norm norm;
    int eval_every;        /* 0: only at the start and the end */
    int eval_max_batches;  /* 0: the whole validation set */
    int save_every;        /* 0: no intermediate checkpoints */
    uint64_t seed;
    const char *out_dir;   /* adapter, metrics.jsonl, loss.svg, checkpoints */
    const char *resume;    /* a run folder (its latest checkpoint) or a checkpoint folder */
    /* gradient checkpointing (tg_options): keep the input of every K-th
     * layer and recompute the rest in the backward; 0: off; -1 (the
     * default): off, or on a resume the checkpoint's setting (a run that
     * needed it to fit needs it again) */
    int checkpoint_every;
    train_progress_fn progress;
    void *user;
    /* contrastive data ({"anchor","positive"}): the score scale (20, as
     * sentence-transformers' MultipleNegativesRankingLoss) and pooling
     * (TG_POOL_MEAN or TG_POOL_CLS, from the model's sentence-transformers
     * files) */
    float pair_scale;
    int pair_pool;
    /* polled after every step: non-zero ends the run with a checkpoint and
     * the adapter so far (train_result.interrupted) */
    int (*should_stop)(void *user);
    void *stop_user;
    /* the caller's JSON object describing the run (NULL: none), kept as
     * "config" in run.json of out_dir and of every checkpoint */
    const char *run_config;
} train_params;

typedef struct {
    int steps_done;
    double first_loss, last_loss;
    double val_loss_before, val_loss_after;   /* NAN without validation data */
    double val_accuracy;                       /* classification: last validation accuracy, else NAN */
    double seconds, tokens_per_s;   /* training time only: evaluation and checkpoints excluded */
    int64_t tokens;
    int checkpoint_every;   /* the setting the run trained with (0: off) */
    size_t graph_bytes;     /* the training graph's activations, gradients and scratch (tg_arena_bytes) */
    bool interrupted;       /* should_stop ended it before the last step */
    int step, total_steps;  /* the step reached, of how many */
} train_result;

/* The checkpoint folder `resume` names: a run folder's LATEST, or resume
 * itself when it holds optimizer.safetensors; PEFT_ERR_IO when neither. */
int train_checkpoint_dir(const char *resume, char *out, size_t cap, peft_err *err);

train_params train_default_params(void);
/* The trainer's parameters from the public ones (peft_train,
 * peft_train_dataset; h may be NULL); PEFT_ERR_INVALID for an unknown
 * schedule. */
int train_params_from_public(const peft_train_params *p, const peft_train_hooks *h, train_params *t, peft_err *err);

/* Trains a's parameters on train (val may be NULL). Writes the final adapter
 * to out_dir in the HF PEFT format. */
int train_run(peft_model *m, adapter *a, const data_set *train, const data_set *val,
              const train_params *p, train_result *res, peft_err *err);

/* Mean loss per target token of d in order (padding batches of batch × seq).
 * a may be NULL (the base model). */
int train_eval(peft_model *m, adapter *a, const data_set *d, int batch, int seq, int max_batches,
               double *mean_loss, int64_t *n_targets, peft_err *err);

/* The same, plus the accuracy of a classification adapter (NAN otherwise);
 * contrastive data: the MNRL loss per anchor and the fraction of anchors
 * whose best-scored candidate in their batch is their positive. p may be
 * NULL (defaults: scale 20, mean pooling). */
int train_eval_acc(peft_model *m, adapter *a, const data_set *d, int batch, int seq, int max_batches,
                   double *mean_loss, int64_t *n_targets, double *accuracy, peft_err *err);
int train_eval_pairs(peft_model *m, adapter *a, const data_set *d, int batch, int seq, int max_batches,
                     float scale, int pool, double *mean_loss, int64_t *n_targets, double *accuracy, peft_err *err);

/* The memory a run will take, before it takes it. base: what the process
 * holds now (code, libraries, tokenizer, data, the model's own copies, the
 * adapter's parameters, bf16 packs), less the part of the model's mapped
 * files already resident; weights: those files, all of which a step reads;
 * grads and optimizer: the adapter's gradients and AdamW's two moments;
 * graph: the training graph (checkpoint_every as given); eval_graph: the
 * evaluation graph, alive during an evaluation (0 without validation).
 * peak is their sum: the high-water mark of a step that evaluates. */
typedef struct {
    size_t base, weights, grads, optimizer, eval_graph, peak;
    tg_memory graph;
} train_memplan;

int train_memory_plan(peft_model *m, adapter *a, const data_set *train, const data_set *val, const train_params *p,
                      int checkpoint_every, train_memplan *out, peft_err *err);

/* The cheapest setting whose plan fits budget bytes: everything kept, or
 * gradient checkpointing of every layer (the smallest graph, and at
 * common shapes also the cheapest checkpointing). *checkpoint_every and
 * *out get the choice; PEFT_ERR_NOMEM (naming the sizes) when even the
 * smallest does not fit. */
int train_fit_memory(peft_model *m, adapter *a, const data_set *train, const data_set *val, const train_params *p,
                     size_t budget, int *checkpoint_every, train_memplan *out, peft_err *err);

#endif
