/* optim.h — AdamW, learning-rate schedules and gradient clipping with the
 * semantics of torch.optim.AdamW, torch.nn.utils.clip_grad_norm_ and
 * transformers' get_*_schedule_with_warmup, so a run here follows the same
 * trajectory as the PyTorch reference. */
#ifndef PEFT_TRAIN_OPTIM_H
#define PEFT_TRAIN_OPTIM_H

#include "core/core.h"

typedef enum { SCHED_CONSTANT = 0, SCHED_LINEAR, SCHED_COSINE } sched_kind;

typedef struct {
    float lr, beta1, beta2, eps, weight_decay;
    float max_grad_norm;      /* <= 0: no clipping */
    sched_kind sched;
    int warmup_steps, total_steps;
    /* LoRA+ (HF peft's create_loraplus_optimizer): > 0 trains group B
     * (lora_B, 1-D LoRA tensors) at lr × ratio and LoRA on embeddings at
     * loraplus_lr_embedding; 0: off, plain AdamW groups */
    float loraplus_lr_ratio, loraplus_lr_embedding;   /* 0, 1e-6 */
} optim_params;

optim_params optim_default_params(void);
int sched_parse(const char *name, sched_kind *out);
const char *sched_name(sched_kind k);

/* Learning rate for optimizer step `step` (0-based, as the HF scheduler
 * counts: the first step of a warmup uses lr·0). */
float sched_lr(const optim_params *p, int step);
/* The schedule's factor at `step`: every parameter group's lr is its base
 * lr times it (a LambdaLR over all groups); sched_lr = lr · factor. */
double sched_factor(const optim_params *p, int step);

/* sqrt(Σ g²), accumulated in double. */
double grad_norm(const float *g, int64_t n);
/* Scales g by max/(norm + 1e-6) when that is < 1 (torch's rule). */
void grad_clip(float *g, int64_t n, double norm, float max_norm);

typedef struct {
    int64_t n;
    int64_t t;            /* steps taken */
    float *m, *v;
} adamw_state;

int adamw_init(adamw_state *s, int64_t n, peft_err *err);
void adamw_free(adamw_state *s);
/* One step: p ← p − lr·wd·p, then the bias-corrected Adam update. */
void adamw_step(adamw_state *s, float *params, const float *grads, float lr, const optim_params *p);

/* A run of the parameter vector [off, off + n) with one learning rate and
 * weight decay (torch's parameter groups, laid out as contiguous spans). */
typedef struct {
    int64_t off, n;
    double lr;             /* the group's base lr, before the schedule */
    float weight_decay;
} optim_segment;

/* One step of every segment, at lr = (float)(segment lr · factor): the
 * same arithmetic as adamw_step within each (one segment of lr p->lr and
 * decay p->weight_decay is adamw_step at sched_lr). The segments must
 * cover [0, s->n) without overlap; the moments' layout is adamw_step's. */
void adamw_step_segments(adamw_state *s, float *params, const float *grads, const optim_segment *seg, int n_seg,
                         double factor, const optim_params *p);

#endif
