/* optim.c — AdamW, schedules, clipping. */
#include "train/optim.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

optim_params optim_default_params(void) {
    optim_params p = {2e-4f, 0.9f, 0.999f, 1e-8f, 0.0f, 1.0f, SCHED_COSINE, 0, 0, 0.0f, 1e-6f};
    return p;
}

int sched_parse(const char *name, sched_kind *out) {
    if (!strcmp(name, "constant")) *out = SCHED_CONSTANT;
    else if (!strcmp(name, "linear")) *out = SCHED_LINEAR;
    else if (!strcmp(name, "cosine")) *out = SCHED_COSINE;
    else return PEFT_ERR_INVALID;
    return 0;
}

const char *sched_name(sched_kind k) {
    return k == SCHED_CONSTANT ? "constant" : k == SCHED_LINEAR ? "linear" : "cosine";
}

double sched_factor(const optim_params *p, int step) {
    double f;
    if (step < p->warmup_steps) f = (double)step / (double)PEFT_MAX(1, p->warmup_steps);
    else if (p->sched == SCHED_CONSTANT) f = 1.0;
    else {
        double span = (double)PEFT_MAX(1, p->total_steps - p->warmup_steps);
        double progress = (double)(step - p->warmup_steps) / span;
        if (p->sched == SCHED_LINEAR) f = PEFT_MAX(0.0, 1.0 - progress);
        else f = PEFT_MAX(0.0, 0.5 * (1.0 + cos(M_PI * progress)));
    }
    return f;
}

float sched_lr(const optim_params *p, int step) { return (float)(p->lr * sched_factor(p, step)); }

double grad_norm(const float *g, int64_t n) {
    double s = 0;
    for (int64_t i = 0; i < n; i++) s += (double)g[i] * g[i];
    return sqrt(s);
}

void grad_clip(float *g, int64_t n, double norm, float max_norm) {
    if (max_norm <= 0) return;
    double coef = max_norm / (norm + 1e-6);
    if (coef >= 1.0) return;
    const float c = (float)coef;
    for (int64_t i = 0; i < n; i++) g[i] *= c;
}

int adamw_init(adamw_state *s, int64_t n, peft_err *err) {
    s->n = n;
    s->t = 0;
    s->m = peft_calloc((size_t)n, sizeof(float), err);
    s->v = peft_calloc((size_t)n, sizeof(float), err);
    if (!s->m || !s->v) { adamw_free(s); return PEFT_ERR_NOMEM; }
    return 0;
}

void adamw_free(adamw_state *s) {
    free(s->m);
    free(s->v);
    s->m = s->v = NULL;
}

/* The update of n values at one lr and decay; t already counts this step. */
static void adamw_span(const adamw_state *s, int64_t off, int64_t n, float *params, const float *grads, float lr,
                       float weight_decay, const optim_params *p) {
    const double bc1 = 1.0 - pow(p->beta1, (double)s->t), bc2 = 1.0 - pow(p->beta2, (double)s->t);
    const float step_size = (float)(lr / bc1), bc2_sqrt = (float)sqrt(bc2);
    const float decay = 1.0f - lr * weight_decay, b1 = p->beta1, b2 = p->beta2, eps = p->eps;
    float *m = s->m + off, *v = s->v + off, *w = params + off;
    const float *gr = grads + off;
    for (int64_t i = 0; i < n; i++) {
        const float g = gr[i];
        w[i] *= decay;
        m[i] = b1 * m[i] + (1.0f - b1) * g;
        v[i] = b2 * v[i] + (1.0f - b2) * g * g;
        const float denom = sqrtf(v[i]) / bc2_sqrt + eps;
        w[i] -= step_size * m[i] / denom;
    }
}

void adamw_step(adamw_state *s, float *params, const float *grads, float lr, const optim_params *p) {
    s->t++;
    adamw_span(s, 0, s->n, params, grads, lr, p->weight_decay, p);
}

void adamw_step_segments(adamw_state *s, float *params, const float *grads, const optim_segment *seg, int n_seg,
                         double factor, const optim_params *p) {
    s->t++;
    for (int k = 0; k < n_seg; k++)
        adamw_span(s, seg[k].off, seg[k].n, params, grads, (float)(seg[k].lr * factor), seg[k].weight_decay, p);
}
